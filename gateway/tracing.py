"""Contact tracing over stays: F1 (met the case), F2 (met an F1), venue exposure.

Two stays are in contact when they are at the same site, in the same zone
when both zones are known, on the same trip when both are on a vehicle trip,
and overlap inside the trace window by at least the threshold: the
``threshold_s`` argument, else the site's own, else its category's. The
threshold applies to each pair of stays, not to a person's sum. A vehicle
stay outside every trip (``trip_id`` None) meets everyone on that vehicle at
the same time.

``total_overlap_s`` of a person is the sum over their contacts, so meeting two
cases (or one case twice) for an hour counts two hours: it is exposure, not
presence.

How a level (the case's stays, or every F1's) is matched, without per-pair
work in Python:

* Each site has a *lookback* ``L``: the length of its ``LONG_STAYS + 1``-th
  longest stay, one short walk down the index ``stays_place_len (site_id,
  end_s − start_s, end_s, start_s)``. A stay no longer than ``L`` that meets
  a probe [s, e) starts in [s − L, e). The at most ``LONG_STAYS`` longer ones
  (a month at a hospital) are read apart, through ``stays_place_len``; so one
  resident does not make every visit to a clinic read the clinic's month.
* Probes are merged per (site, zone, trip) into disjoint spans. Each span is
  read from the covering index ``stays_place_cover (site_id, zone_id,
  start_s, ...)`` zone by zone: its own zone and '', or (a probe without a
  zone) every zone of the site; only stays of trips that can meet, long
  enough and ending late enough for the threshold, come back.
* That read returns one row, each column one ``group_concat`` of all the stays
  found, so 200,000 stays cross into Python as a few strings, not as 200,000
  tuples; numpy parses the integers and codes the subjects.
* numpy expands every probe's range of candidates into pairs, filters them
  and sums each person's exposure. A person's :class:`Contact` objects are
  made when their ``contacts`` are first read: an F2 can hold millions of
  pairs, and a caller ranking people needs none of them.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from itertools import pairwise, repeat
from typing import Any, overload

import aiosqlite
import numpy as np
from numpy.typing import NDArray

from gateway.stays import (
    CERTAINTY,
    START_AS_END,
    Stay,
    default_rules,
    parse_category,
    site_threshold,
)

logger = logging.getLogger(__name__)

I64 = NDArray[np.int64]

_RANK = {rule: rank for rank, rule in enumerate(CERTAINTY)}
_WEAKEST = len(CERTAINTY) - 1
assert _WEAKEST < 8, "a certainty rank is packed into 3 bits"
LONG_STAYS = 32
"""Per site, this many longest stays are read apart, so they do not set the lookback."""
_NO_TRIP = -(2**63)
_TRIP = f"ifnull(t.trip_id, {_NO_TRIP})"  # numpy columns hold no None
# Pairs expanded at once: bounds the memory of a big F2 (a few arrays of 8 bytes each).
_CHUNK_PAIRS = 1 << 22


@dataclass(frozen=True, slots=True)
class Contact:
    """One overlap between a stay of ``via`` (the case, or an F1) and a stay of ``subject``."""

    subject: str
    site_id: str
    zone_id: str
    trip_id: int | None
    start_s: int
    end_s: int
    overlap_s: int
    via: str
    certainty: str


@dataclass(frozen=True, slots=True)
class Exposed:
    """One person on a trace list (level 1 = F1, 2 = F2), with all their contacts.

    ``contacts`` are in time order (then place, then via).
    """

    subject: str
    level: int
    total_overlap_s: int
    contacts: Sequence[Contact]


@dataclass(frozen=True, slots=True)
class TraceResult:
    """F1 and F2 of one index case (F0) over a window, most exposed first."""

    index: str
    since_s: int
    until_s: int
    f1: tuple[Exposed, ...]
    f2: tuple[Exposed, ...]


async def trace(
    db: aiosqlite.Connection,
    subject: str,
    *,
    since_s: int,
    until_s: int,
    levels: int = 2,
    threshold_s: int | None = None,
) -> TraceResult:
    """F1 (and with ``levels=2`` F2) of ``subject`` from their stays in [since_s, until_s).

    Overlaps are counted inside the window only. F2 starts from every stay of
    every F1 in the window and leaves out the case and the F1s.
    """
    if levels not in (1, 2):
        raise ValueError(f"levels must be 1 or 2, not {levels}")
    window = (since_s, until_s)
    cases = await _probes(db, [subject], window)
    f1 = await _level(db, cases, {subject}, threshold_s, level=1)
    f2: tuple[Exposed, ...] = ()
    if levels == 2 and f1:
        f1_subjects = [e.subject for e in f1]
        probes = await _probes(db, f1_subjects, window)
        f2 = await _level(db, probes, {subject, *f1_subjects}, threshold_s, level=2)
    logger.info("trace: %d stays of the case, %d F1, %d F2", len(cases), len(f1), len(f2))
    return TraceResult(subject, since_s, until_s, f1, f2)


async def venue_exposure(
    db: aiosqlite.Connection, site_id: str, *, from_s: int, until_s: int, margin_s: int = 3600
) -> list[Stay]:
    """Every stay at ``site_id`` present at any moment of [from_s − margin, until_s + margin]."""
    low, high = from_s - margin_s, until_s + margin_s
    longest = await _fetch(
        db, "SELECT max(end_s - start_s) FROM stays WHERE site_id = ?", (site_id,)
    )
    zones = await _zones_at(db, [site_id])
    rows = await _fetch(
        db,
        "SELECT t.subject, t.site_id, t.zone_id, t.trip_id, t.start_s, t.end_s, t.start_rule, "
        "t.end_rule, t.entry_id, t.exit_id FROM json_each(?) j CROSS JOIN stays t "
        "WHERE t.site_id = ? AND t.zone_id = j.value AND t.start_s >= ? AND t.start_s <= ? "
        "AND t.end_s >= ? ORDER BY t.start_s, t.subject, t.end_s",
        (json.dumps(zones.get(site_id, [])), site_id, low - int(longest[0][0] or 0), high, low),
    )
    return [Stay(*row) for row in rows]


async def _zones_at(db: aiosqlite.Connection, sites: Iterable[str]) -> dict[str, list[str]]:
    """The zones of the stays at each of ``sites`` ('' included when there are such)."""
    found: dict[str, list[str]] = {}
    for site, zone in await _fetch(db, _ZONES_AT, (json.dumps(sorted(set(sites))),)):
        found.setdefault(site, []).append(zone)
    return found


def stay_rank(start_rule: str, end_rule: str) -> int:
    """Certainty rank of a stay (0 = both ends observed), the weaker of its two ends."""
    start = _RANK.get(START_AS_END.get(start_rule, ""), _WEAKEST)
    return max(start, _RANK.get(end_rule, _WEAKEST))


async def _fetch(db: aiosqlite.Connection, sql: str, params: Sequence[object]) -> list[Any]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


def _rank_sql(column: str, ranks: dict[str, int]) -> str:
    whens = " ".join(f"WHEN '{rule}' THEN {rank}" for rule, rank in ranks.items())
    return f"CASE {column} {whens} ELSE {_WEAKEST} END"


_START_RANK = {start: _RANK[end] for start, end in START_AS_END.items()}
_STAY_RANK = f"max({_rank_sql('t.start_rule', _START_RANK)}, {_rank_sql('t.end_rule', _RANK)})"

_PROBES = f"""
SELECT t.subject, t.site_id, t.zone_id, {_TRIP}, max(t.start_s, ?2), min(t.end_s, ?3),
       {_STAY_RANK}
FROM json_each(?1) j CROSS JOIN stays t
WHERE t.subject = j.value AND t.start_s < ?3 AND t.end_s > ?2
"""

# Per site: its threshold and its lookback (NULL: at most LONG_STAYS stays, all read apart).
_SITE_FACTS = """
SELECT j.value, s.category, s.threshold_s,
       (SELECT end_s - start_s FROM stays WHERE site_id = j.value
        ORDER BY end_s - start_s DESC LIMIT 1 OFFSET ?2)
FROM json_each(?1) j LEFT JOIN sites s ON s.site_id = j.value
"""

# Stays no longer than the lookback in one zone of a site starting inside a span, along
# stays_place_cover, every column from the index; the reads [read, site, zone, low, high,
# earliest probe start, lookback, trip, threshold] in the outer loop, as a table: the
# filters on each stay then compare columns, not JSON paths (five times faster). A stay
# shorter than the threshold, or ending too early, or starting too late to overlap a
# probe by as much, meets nobody. People to leave out (the case, the F1s) are dropped in
# numpy: cheaper than a lookup per stay here. One row comes back: each column as one
# string (see _Packed.of), since a big F2 finds 200,000 stays and making a Python
# tuple of each, then numpy arrays of those, cost more than the search itself.
_CANDIDATES = f"""
WITH r AS MATERIALIZED (
    SELECT value ->> 0 AS read, value ->> 1 AS site, value ->> 2 AS zone, value ->> 3 AS low,
           value ->> 4 AS high, value ->> 5 AS first, value ->> 6 AS lookback,
           value ->> 7 AS trip, value ->> 8 AS threshold
    FROM json_each(?1)
)
SELECT count(*), group_concat(r.read * 8 + {_STAY_RANK}), group_concat(t.id),
       group_concat(t.start_s), group_concat(t.end_s), group_concat({_TRIP}),
       group_concat(length(CAST(t.subject AS BLOB))), CAST(group_concat(t.subject, '') AS BLOB)
FROM r CROSS JOIN stays t
WHERE t.site_id = r.site AND t.zone_id = r.zone AND t.start_s >= r.low
  AND t.start_s <= r.high - r.threshold AND t.end_s >= r.first + r.threshold
  AND t.end_s - t.start_s BETWEEN r.threshold AND r.lookback
  AND (r.trip IS NULL OR t.trip_id IS NULL OR t.trip_id = r.trip)
"""

# Every zone of the stays at each site ('' included), one seek each along stays_place_cover.
_ZONES_AT = """
WITH RECURSIVE z (site, zone) AS (
    SELECT j.value, (SELECT min(zone_id) FROM stays WHERE site_id = j.value)
    FROM json_each(?1) j
    UNION ALL
    SELECT site, (SELECT min(zone_id) FROM stays WHERE site_id = z.site AND zone_id > z.zone)
    FROM z WHERE zone IS NOT NULL
)
SELECT site, zone FROM z WHERE zone IS NOT NULL
"""

# The stays longer than the lookback of a site [site, lookback, low, high], at most
# LONG_STAYS per site: the top of stays_place_len, whose times skip those outside the
# window; the table only for the others' remaining columns.
_LONG_CANDIDATES = f"""
SELECT j.key, t.id, t.start_s, t.end_s, t.subject, t.zone_id, {_TRIP}, {_STAY_RANK}
FROM json_each(?1) j CROSS JOIN stays t INDEXED BY stays_place_len
WHERE t.site_id = j.value ->> 0 AND t.end_s - t.start_s > j.value ->> 1
  AND t.start_s < j.value ->> 3 AND t.end_s > j.value ->> 2
"""


class _Codes:
    """Small integers for the strings of one level (subjects, sites, zones), '' being 0."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}
        self.names: list[str] = [""]

    def codes(self, names: Sequence[str]) -> I64:
        """The code of each name, giving new names the next codes."""
        index = self.index
        new = [name for name in dict.fromkeys(names) if name not in index]
        index.update(zip(new, range(len(self.names), len(self.names) + len(new)), strict=True))
        self.names.extend(new)
        return np.fromiter(map(self.index.__getitem__, names), np.int64, len(names))

    def packed(self, text: bytes, lengths: I64) -> I64:
        """The code of each name of ``text`` (UTF-8, end to end), each ``lengths`` bytes long."""
        width = int(lengths[0]) if len(lengths) else 0
        # Subject keys are all as long: numpy finds the distinct ones, many times faster
        # than a dict. (Not with NUL, which the S dtype strips from the end of a name.)
        if width and (lengths == width).all() and text.isascii() and b"\0" not in text:
            names, inverse = _distinct(np.frombuffer(text, dtype=f"S{width}"))
            return self.codes(names.astype(np.str_).tolist())[inverse]
        bounds = [0, *np.cumsum(lengths).tolist()]
        return self.codes([text[a:b].decode() for a, b in pairwise(bounds)])

    def order(self) -> I64:
        """For each code, the rank of its name in sorted order."""
        ranks = np.empty(len(self.names), dtype=np.int64)
        # Fixed-width unicode sorts by code point like str, and far faster than objects.
        ranks[np.argsort(np.array(self.names, dtype=np.str_), kind="stable")] = np.arange(
            len(self.names)
        )
        return ranks


def _distinct(names: NDArray[np.bytes_]) -> tuple[NDArray[np.bytes_], I64]:
    """The distinct ``names`` and the index of each name among them (as ``np.unique``, in
    another order): by a hash of each first, as sorting integers is several times faster
    than sorting strings; the names are then compared with those their hashes chose."""
    width = names.dtype.itemsize
    padded = np.zeros((len(names), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = names.view(np.uint8).reshape(len(names), width)
    hashed = np.zeros(len(names), dtype=np.uint64)
    for word in padded.view(np.uint64).T:  # FNV-style mixing, 8 bytes at a time
        hashed = (hashed ^ word) * np.uint64(0x100000001B3)
        hashed ^= hashed >> np.uint64(29)
    # np.unique would sort stably (to return first indexes), and a third slower.
    order = np.argsort(hashed)
    new = np.ones(len(order), dtype=np.bool_)
    new[1:] = hashed[order[1:]] != hashed[order[:-1]]
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    distinct = names[order[new]]
    if (distinct[inverse] == names).all():
        return distinct, inverse
    distinct, inverse = np.unique(names, return_inverse=True)  # two names, one hash
    return distinct, inverse.reshape(-1)


@dataclass(slots=True)
class _Level:
    """The strings of one level, coded."""

    subjects: _Codes
    sites: _Codes
    zones: _Codes


@dataclass(frozen=True, slots=True)
class _Stays:
    """Stays as numpy columns (probes: clipped to the window; candidates: as stored)."""

    subject: I64
    site: I64
    zone: I64
    trip: I64
    start: I64
    end: I64
    rank: I64

    @classmethod
    def of(cls, level: _Level, rows: Sequence[Sequence[Any]]) -> _Stays:
        """From rows (subject, site, zone, trip, start, end, rank)."""
        return cls.of_columns(level, *_columns(rows, 7))

    @classmethod
    def of_columns(
        cls, level: _Level, subject: Any, site: Any, zone: Any, trip: Any, *times: Any
    ) -> _Stays:
        """From columns; ``site`` as codes already if it is an array."""
        start, end, rank = (np.array(col, dtype=np.int64) for col in times)
        return cls(
            level.subjects.codes(subject),
            site if isinstance(site, np.ndarray) else level.sites.codes(site),
            level.zones.codes(zone),
            np.array(trip, dtype=np.int64),
            start,
            end,
            rank,
        )

    def take(self, which: I64) -> _Stays:
        return _Stays(*(getattr(self, f.name)[which] for f in fields(self)))


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True)) if rows else [()] * width


@dataclass(frozen=True, slots=True)
class _Packed:
    """The rows of a query as numpy columns: integers, then subjects coded."""

    ints: list[I64]
    subject: I64

    @classmethod
    def of(cls, rows: list[Any], subjects: _Codes) -> _Packed:
        """From the one row of a query: (count, integer columns each as one comma-separated
        ``group_concat``, the subjects' byte lengths likewise, the subjects end to end as a
        blob); all its columns aggregate the same rows in the same order."""
        ((count, *ints, lengths, text),) = rows
        cols = [np.fromstring(col or "", dtype=np.int64, sep=",") for col in (*ints, lengths)]
        if any(len(col) != count for col in cols) or len(text or b"") != cols[-1].sum():
            raise RuntimeError(f"{count} packed rows read as {[len(c) for c in cols]}")
        return cls(cols[:-1], subjects.packed(text or b"", cols[-1]))


async def _probes(
    db: aiosqlite.Connection, subjects: Sequence[str], window: tuple[int, int]
) -> list[Any]:
    """Stays of ``subjects`` meeting the window, clipped to it: (subject, site, zone, trip,
    start, end, rank)."""
    return await _fetch(db, _PROBES, (json.dumps(list(subjects)), *window))


@dataclass(frozen=True, slots=True)
class _SiteFacts:
    """Per site code: contact threshold and lookback (longer stays are read apart)."""

    threshold: I64
    lookback: I64


async def _site_facts(
    db: aiosqlite.Connection, level: _Level, threshold_s: int | None
) -> _SiteFacts:
    sites = level.sites.names
    rows = await _fetch(db, _SITE_FACTS, (json.dumps(sites), LONG_STAYS))
    threshold = np.zeros(len(sites), dtype=np.int64)
    lookback = np.zeros(len(sites), dtype=np.int64)
    for site, category, own, back in rows:
        code = level.sites.index[site]
        if threshold_s is not None:
            threshold[code] = threshold_s
        elif category is None:
            threshold[code] = default_rules(site).threshold_s
        else:
            threshold[code] = site_threshold(parse_category(category), own)
        lookback[code] = max(int(back or 0), 0)
    return _SiteFacts(np.maximum(threshold, 1), lookback)


async def _level(
    db: aiosqlite.Connection,
    rows: list[Any],
    excluded: set[str],
    threshold_s: int | None,
    *,
    level: int,
) -> tuple[Exposed, ...]:
    """Everyone not ``excluded`` with a stay meeting one of the probe ``rows``."""
    if not rows:
        return ()
    codes = _Level(_Codes(), _Codes(), _Codes())
    probes = _Stays.of(codes, rows)
    facts = await _site_facts(db, codes, threshold_s)
    short = _spans(probes, facts, codes)
    long = _long_spans(probes, facts, codes)
    all_zones = await _zones_at(db, (span[0] for span in short if span[5] == ""))
    reads = _reads(short, all_zones)
    found = _Packed.of(await _fetch(db, _CANDIDATES, (json.dumps(reads),)), codes.subjects)
    found_long = await _fetch(db, _LONG_CANDIDATES, (json.dumps(long),))
    with _bulk():
        candidates = _candidates(codes, (found, reads), (found_long, long), excluded)
        pairs = _match(probes, candidates, facts)
        return _Pairs(codes, probes, candidates, *pairs).exposed(level)


def _spans(probes: _Stays, facts: _SiteFacts, codes: _Level) -> list[list[Any]]:
    """The probes' short ranges merged per (site, zone, trip).

    Each is [site, low, high, earliest probe start, lookback, zone, trip, threshold]; a key's
    probes all look back by the same bound, so the first of a span starts first.
    """
    low = probes.start - facts.lookback[probes.site]
    order = np.lexsort((low, probes.trip, probes.zone, probes.site))
    site, zone, trip = probes.site[order], probes.zone[order], probes.trip[order]
    low, start, end = low[order], probes.start[order], probes.end[order]
    new_key = np.ones(len(order), dtype=np.bool_)
    new_key[1:] = (site[1:] != site[:-1]) | (zone[1:] != zone[:-1]) | (trip[1:] != trip[:-1])
    # How far the probes so far reach, per key: a running maximum that restarts at each
    # key, because every key is lifted above all the ends of the keys before it.
    lift = (np.cumsum(new_key) - 1) * (int(end.max() - end.min()) + 1)
    reach = np.maximum.accumulate(end - end.min() + lift) - lift + end.min()
    first = new_key.copy()
    first[1:] |= low[1:] > reach[:-1]
    at = np.flatnonzero(first)
    high = np.maximum.reduceat(end, at)
    names, zones = codes.sites.names, codes.zones.names
    return [
        [names[s], lo, hi, st, back, zones[z], None if t == _NO_TRIP else t, least]
        for s, lo, hi, st, back, z, t, least in zip(
            site[at].tolist(),
            low[at].tolist(),
            high.tolist(),
            start[at].tolist(),
            facts.lookback[site[at]].tolist(),
            zone[at].tolist(),
            trip[at].tolist(),
            facts.threshold[site[at]].tolist(),
            strict=True,
        )
    ]


def _reads(spans: list[list[Any]], all_zones: dict[str, list[str]]) -> list[list[Any]]:
    """Each span as one read per zone that can meet it: its own and '', or every zone."""
    reads: list[list[Any]] = []
    for site, low, high, start, lookback, zone, trip, threshold in spans:
        for read in (zone, "") if zone else all_zones.get(site, []):
            reads.append([len(reads), site, read, low, high, start, lookback, trip, threshold])
    return reads


def _long_spans(probes: _Stays, facts: _SiteFacts, codes: _Level) -> list[list[Any]]:
    """Per site: [site, lookback, earliest probe start, latest probe end]."""
    n = len(codes.sites.names)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, probes.site, probes.start)
    np.maximum.at(last, probes.site, probes.end)
    return [
        [codes.sites.names[s], int(facts.lookback[s]), int(first[s]), int(last[s])]
        for s in np.unique(probes.site).tolist()
    ]


@dataclass(frozen=True, slots=True)
class _Candidates:
    """Distinct candidate stays sorted by (group, start); a site's long stays form a group
    of their own (site code + number of sites), found without lookback."""

    stays: _Stays
    group: I64


def _candidates(
    codes: _Level,
    short: tuple[_Packed, list[list[Any]]],
    long: tuple[list[Any], list[list[Any]]],
    excluded: set[str],
) -> _Candidates:
    """The stays found, each once, without the ``excluded`` people; short ones as columns
    (read × 8 + rank, id, start, end, trip) and subject codes, long ones as rows (span, id,
    start, end, subject, zone, trip, rank)."""
    (found, reads), (found_long, long_spans) = short, long
    read_site = np.array([codes.sites.index[r[1]] for r in reads] or [0], dtype=np.int64)
    read_zone = codes.zones.codes([r[2] for r in reads])
    long_site = np.array([codes.sites.index[s[0]] for s in long_spans] or [0], dtype=np.int64)
    read_rank, ids, start, end, trip = found.ints
    span, long_ids, *long_cols = _columns(found_long, 8)
    read_of = read_rank >> 3  # read and rank in one column: one column fewer
    site = np.concatenate([read_site[read_of], long_site[np.array(span, dtype=np.int64)]])
    zone = np.concatenate([read_zone[read_of], codes.zones.codes(long_cols[3])])

    def joined(packed: I64, rows: tuple[Any, ...]) -> I64:
        return np.concatenate([packed, np.array(rows, dtype=np.int64)])

    stays = _Stays(
        np.concatenate([found.subject, codes.subjects.codes(long_cols[2])]),
        site,
        zone,
        joined(trip, long_cols[4]),
        joined(start, long_cols[0]),
        joined(end, long_cols[1]),
        joined(read_rank & 7, long_cols[5]),
    )
    # A site's long stays are a group of their own, found without lookback.
    group = site + np.where(np.arange(len(site)) < len(start), 0, len(codes.sites.names))
    # A stay read for two spans of its site (another zone's, another trip's) counts once:
    # its copies have the same group and start, so they end up side by side.
    every_id = joined(ids, long_ids)
    t0 = int(stays.start.min()) if len(every_id) else 0
    width = int(stays.start.max()) - t0 + 1 if len(every_id) else 1
    order = np.lexsort((every_id, group * width + (stays.start - t0)))  # 2 keys, not 3
    once = np.ones(len(order), dtype=np.bool_)
    once[1:] = every_id[order[1:]] != every_id[order[:-1]]
    out = np.array([codes.subjects.index.get(s, -1) for s in excluded], dtype=np.int64)
    order = order[once & ~np.isin(stays.subject[order], out)]
    return _Candidates(stays.take(order), group[order])


def _match(probes: _Stays, cand: _Candidates, facts: _SiteFacts) -> tuple[I64, I64, I64, I64]:
    """Every (probe, candidate) that meet: indexes, with each overlap's start and end."""
    n_sites = len(facts.lookback)
    times = np.concatenate([cand.stays.start, probes.start - facts.lookback[probes.site], [0]])
    t0 = int(times.min())
    width = int(max(times.max(), probes.end.max())) - t0 + 1
    key = cand.group * width + (cand.stays.start - t0)
    site_key = probes.site * width - t0
    long_key = (probes.site + n_sites) * width - t0
    lows = np.concatenate([site_key + probes.start - facts.lookback[probes.site], long_key + t0])
    highs = np.concatenate([site_key + probes.end, long_key + probes.end])
    which = np.concatenate([np.arange(len(probes.start))] * 2)
    first = np.searchsorted(key, lows)
    counts = np.searchsorted(key, highs) - first
    found = [
        _meet(probes, cand.stays, facts, which[c], first[c], counts[c]) for c in _chunks(counts)
    ]
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    return tuple(np.concatenate(col) for col in zip(*found, strict=True))  # type: ignore[return-value]


def _chunks(counts: I64) -> Iterator[slice]:
    """Slices of ``counts`` each summing to about ``_CHUNK_PAIRS`` (or one big count)."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        base = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, base + _CHUNK_PAIRS, side="right")), start + 1)
        yield slice(start, stop)
        start = stop


def _meet(
    probes: _Stays, cand: _Stays, facts: _SiteFacts, which: I64, first: I64, counts: I64
) -> tuple[I64, I64, I64, I64]:
    total = int(counts.sum())
    pi = np.repeat(which, counts)
    ci = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts - first, counts)
    lo = np.maximum(cand.start[ci], probes.start[pi])
    hi = np.minimum(cand.end[ci], probes.end[pi])
    ok = hi - lo >= facts.threshold[probes.site[pi]]
    pz, cz = probes.zone[pi], cand.zone[ci]
    ok &= (pz == 0) | (cz == 0) | (pz == cz)
    pt, ct = probes.trip[pi], cand.trip[ci]
    ok &= (pt == _NO_TRIP) | (ct == _NO_TRIP) | (pt == ct)
    hits = np.flatnonzero(ok)
    return pi[hits], ci[hits], lo[hits], hi[hits]


class _Pairs:
    """The contacts of one level as columns: one entry per pair of stays that meet."""

    def __init__(
        self, codes: _Level, probes: _Stays, cand: _Candidates, pi: I64, ci: I64, lo: I64, hi: I64
    ) -> None:
        self.codes = codes
        self.subject = cand.stays.subject[ci]
        self.via = probes.subject[pi]
        self.site = probes.site[pi]
        self.zone = np.where(cand.stays.zone[ci] != 0, cand.stays.zone[ci], probes.zone[pi])
        self.trip = np.where(cand.stays.trip[ci] != _NO_TRIP, cand.stays.trip[ci], probes.trip[pi])
        self.rank = np.maximum(cand.stays.rank[ci], probes.rank[pi])
        self.lo, self.hi = lo, hi
        self._bounds: I64 | None = None
        self._made: list[Contact] = []

    def exposed(self, level: int) -> tuple[Exposed, ...]:
        """Everyone met, most exposed first (then by subject)."""
        n = len(self.codes.subjects.names)
        total = np.bincount(self.subject, weights=self.hi - self.lo, minlength=n)
        total = total.round().astype(np.int64)
        people = np.flatnonzero(np.bincount(self.subject, minlength=n))
        rank = self.codes.subjects.order()
        people = people[np.lexsort((rank[people], -total[people]))]
        names, which = self.codes.subjects.names, people.tolist()
        # map, not a generator: an F2 can hold 50,000 people.
        return tuple(
            map(
                Exposed,
                map(names.__getitem__, which),
                repeat(level),
                total[people].tolist(),
                map(_LazyContacts, repeat(self), which),
            )
        )

    def count(self, person: int) -> int:
        """How many contacts ``person`` has."""
        bounds = self._grouped()
        return int(bounds[person + 1] - bounds[person])

    def contacts(self, person: int) -> tuple[Contact, ...]:
        """The contacts of ``person`` in time order; all the level's are made on first use
        (an export reads them all, and one pass is many times cheaper than one per person)."""
        if not self._made and len(self.subject):
            self._make()
        bounds = self._grouped()
        return tuple(self._made[bounds[person] : bounds[person + 1]])

    def _grouped(self) -> I64:
        """Where each person's contacts start and end among all, grouped by person."""
        if self._bounds is None:
            per_person = np.bincount(self.subject, minlength=len(self.codes.subjects.names))
            self._bounds = np.concatenate([[0], np.cumsum(per_person)])
        return self._bounds

    def _make(self) -> None:
        sites, subjects = self.codes.sites.order(), self.codes.subjects.order()
        at = np.lexsort((subjects[self.via], sites[self.site], self.hi, self.lo, self.subject))
        names, site_names, zones = (
            self.codes.subjects.names,
            self.codes.sites.names,
            self.codes.zones.names,
        )
        with _bulk():
            self._made = [
                Contact(
                    names[subject],
                    site_names[site],
                    zones[zone],
                    None if trip == _NO_TRIP else trip,
                    lo,
                    hi,
                    hi - lo,
                    names[via],
                    CERTAINTY[rank],
                )
                for subject, site, zone, trip, lo, hi, via, rank in zip(
                    *(getattr(self, f)[at].tolist() for f in _CONTACT_COLUMNS), strict=True
                )
            ]


_CONTACT_COLUMNS = ("subject", "site", "zone", "trip", "lo", "hi", "via", "rank")


class _LazyContacts(Sequence[Contact]):
    """A person's contacts, made from the level's pairs when first read."""

    __slots__ = ("_made", "_pairs", "_person")

    def __init__(self, pairs: _Pairs, person: int) -> None:
        self._pairs = pairs
        self._person = person
        self._made: tuple[Contact, ...] | None = None

    def _all(self) -> tuple[Contact, ...]:
        if self._made is None:
            self._made = self._pairs.contacts(self._person)
        return self._made

    def __len__(self) -> int:
        return self._pairs.count(self._person)

    @overload
    def __getitem__(self, i: int) -> Contact: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Contact, ...]: ...
    def __getitem__(self, i: int | slice) -> Contact | tuple[Contact, ...]:
        return self._all()[i]

    def __iter__(self) -> Iterator[Contact]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self._all() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


@contextmanager
def _bulk() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects without cycles.

    With it on, it walks the young objects every 700 allocations and, as they
    pile up, all of them again and again: a third of the time of a big F2.
    Only around code that does not await, so nothing else runs meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
