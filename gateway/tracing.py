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

Finding the stays that overlap [s, e) at a site uses the index
``stays_place_time (site_id, start_s)`` as a range: ``start_s >= s − L AND
start_s < e AND end_s > s``, where L bounds how long a stay at that site can
be: the longest stay there, per site, so one week-long hotel stay does not
widen the scan at every bus. It is remembered per connection until the
database changes (:func:`_longest_stays`).

All probes of a level (the stays of the case, or of every F1) are merged per
site into disjoint spans, and one query reads each stay starting in a span
once, although the shifts of a factory's F1s overlap hundreds of times; numpy
then matches candidates to probes, so no per-pair work is done in Python.
"""

from __future__ import annotations

import gc
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any
from weakref import WeakKeyDictionary

import aiosqlite
import numpy as np

from gateway.stays import (
    CERTAINTY,
    START_AS_END,
    Stay,
    default_rules,
    parse_category,
    site_threshold,
)

logger = logging.getLogger(__name__)

_RANK = {rule: rank for rank, rule in enumerate(CERTAINTY)}
_WEAKEST = len(CERTAINTY) - 1


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
    """One person on a trace list (level 1 = F1, 2 = F2), with all their contacts."""

    subject: str
    level: int
    total_overlap_s: int
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class TraceResult:
    """F1 and F2 of one index case (F0) over a window, most exposed first."""

    index: str
    since_s: int
    until_s: int
    f1: tuple[Exposed, ...]
    f2: tuple[Exposed, ...]


@dataclass(frozen=True, slots=True)
class _Probe:
    """A stay of the case or an F1, clipped to the trace window."""

    subject: str
    site_id: str
    zone_id: str
    trip_id: int | None
    start_s: int
    end_s: int
    rank: int  # certainty rank of the stay: the weaker of its two ends


@dataclass(frozen=True, slots=True)
class _SiteFacts:
    """The contact threshold in force at a site and the longest stay there."""

    threshold_s: int
    max_stay_s: int


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
    f1 = _exposed(await _contacts(db, cases, {subject}, threshold_s), level=1)
    f2: tuple[Exposed, ...] = ()
    if levels == 2 and f1:
        f1_subjects = [e.subject for e in f1]
        probes = await _probes(db, f1_subjects, window)
        excluded = {subject, *f1_subjects}
        f2 = _exposed(await _contacts(db, probes, excluded, threshold_s), level=2)
    logger.info("trace: %d stays of the case, %d F1, %d F2", len(cases), len(f1), len(f2))
    return TraceResult(subject, since_s, until_s, f1, f2)


async def venue_exposure(
    db: aiosqlite.Connection, site_id: str, *, from_s: int, until_s: int, margin_s: int = 3600
) -> list[Stay]:
    """Every stay at ``site_id`` present at any moment of [from_s − margin, until_s + margin]."""
    low, high = from_s - margin_s, until_s + margin_s
    facts = await _site_facts(db, [site_id])
    rows = await _fetch(
        db,
        "SELECT subject, site_id, zone_id, trip_id, start_s, end_s, start_rule, end_rule, "
        "entry_id, exit_id FROM stays WHERE site_id = ? AND start_s >= ? AND start_s <= ? "
        "AND end_s >= ? ORDER BY start_s, subject, end_s",
        (site_id, low - facts[site_id].max_stay_s, high, low),
    )
    return [Stay(*row) for row in rows]


def stay_rank(start_rule: str, end_rule: str) -> int:
    """Certainty rank of a stay (0 = both ends observed), the weaker of its two ends."""
    start = _RANK.get(START_AS_END.get(start_rule, ""), _WEAKEST)
    return max(start, _RANK.get(end_rule, _WEAKEST))


async def _fetch(db: aiosqlite.Connection, sql: str, params: Sequence[object]) -> list[Any]:
    async with db.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def _probes(
    db: aiosqlite.Connection, subjects: Sequence[str], window: tuple[int, int]
) -> list[_Probe]:
    since, until = window
    rows = await _fetch(
        db,
        "SELECT s.subject, s.site_id, s.zone_id, s.trip_id, s.start_s, s.end_s, s.start_rule, "
        "s.end_rule FROM json_each(?) j CROSS JOIN stays s "
        "WHERE s.subject = j.value AND s.start_s < ? AND s.end_s > ?",
        (json.dumps(list(subjects)), until, since),
    )
    return [
        _Probe(subj, site, zone, trip, max(start, since), min(end, until), stay_rank(sr, er))
        for subj, site, zone, trip, start, end, sr, er in rows
    ]


async def _site_facts(db: aiosqlite.Connection, sites: Iterable[str]) -> dict[str, _SiteFacts]:
    wanted = sorted(set(sites))
    rows = await _fetch(
        db,
        "SELECT j.value, s.category, s.threshold_s "
        "FROM json_each(?) j LEFT JOIN sites s ON s.site_id = j.value",
        (json.dumps(wanted),),
    )
    longest = await _longest_stays(db, wanted)
    facts = {}
    for site, category, threshold_s in rows:
        if category is None:
            threshold = default_rules(site).threshold_s
        else:
            threshold = site_threshold(parse_category(category), threshold_s)
        facts[site] = _SiteFacts(threshold, longest[site])
    return facts


# Per connection: (database state, longest stay by site). Without an index on stay length
# the longest stay at a site costs a read of all its stays, and a busy market has 100k+.
_LONGEST: WeakKeyDictionary[aiosqlite.Connection, tuple[tuple[int, int], dict[str, int]]]
_LONGEST = WeakKeyDictionary()
# Beyond this many sites to look up, one sequential pass over all stays is cheaper than
# jumping through the place index site after site (F2 touches most busy sites).
_SCAN_ALL_SITES = 64


async def _longest_stays(db: aiosqlite.Connection, sites: Sequence[str]) -> dict[str, int]:
    """The longest stay at each site; remembered until anything in the database changes.

    ``data_version`` moves when another connection commits, ``total_changes``
    when this one writes: either may have rewritten stays.
    """
    async with db.execute("PRAGMA data_version") as cur:
        row = await cur.fetchone()
    state = (int(row[0]) if row else 0, db.total_changes)
    cached = _LONGEST.get(db)
    known = cached[1] if cached is not None and cached[0] == state else {}
    _LONGEST[db] = (state, known)
    missing = [site for site in sites if site not in known]
    if len(missing) > _SCAN_ALL_SITES:
        rows = await _fetch(
            db, "SELECT site_id, max(end_s - start_s) FROM stays NOT INDEXED GROUP BY site_id", ()
        )
    elif missing:
        rows = await _fetch(
            db,
            "SELECT j.value, (SELECT max(end_s - start_s) FROM stays WHERE site_id = j.value) "
            "FROM json_each(?) j",
            (json.dumps(missing),),
        )
    else:
        rows = []
    known.update((site, int(longest or 0)) for site, longest in rows)
    return {site: known.get(site, 0) for site in sites}


def _rank_sql(column: str, ranks: dict[str, int]) -> str:
    whens = " ".join(f"WHEN '{rule}' THEN {rank}" for rule, rank in ranks.items())
    return f"CASE {column} {whens} ELSE {_WEAKEST} END"


_START_RANK = {start: _RANK[end] for start, end in START_AS_END.items()}

# Candidates: every stay starting inside one of the spans (disjoint, so each stay comes
# once), along the index stays_place_time; the outer loop is the spans (CROSS JOIN). Few
# and small columns: half of the time goes into turning rows into Python objects.
_CANDIDATES = f"""
SELECT j.key, t.start_s, t.end_s, t.subject, t.zone_id, t.trip_id,
       max({_rank_sql("t.start_rule", _START_RANK)}, {_rank_sql("t.end_rule", _RANK)})
FROM json_each(?1) j CROSS JOIN stays t
WHERE t.site_id = j.value ->> 0 AND t.start_s >= j.value ->> 1 AND t.start_s < j.value ->> 2
  AND t.end_s > j.value ->> 3
  AND t.subject NOT IN (SELECT value FROM json_each(?2))
"""

# (subject, start_s, end_s, site_id, via, zone_id, trip_id, certainty rank)
_Raw = tuple[str, int, int, str, str, str, int | None, int]


@dataclass(frozen=True, slots=True)
class _Window:
    """What one probe looks for: stays at its site starting in [low, end_s) that meet it."""

    probe: _Probe
    low: int
    threshold_s: int


class _SiteStays:
    """Candidate stays of one site sorted by start, with numpy columns to match probes.

    Rows are (span, start_s, end_s, subject, zone_id, trip_id, rank).
    """

    def __init__(self, rows: list[Any]) -> None:
        rows.sort(key=itemgetter(1))  # usually sorted already: spans come in index order
        self.rows = rows
        _, start, end, _, zone, trip, _ = zip(*rows, strict=True)
        self.start = np.array(start, dtype=np.int64)
        self.end = np.array(end, dtype=np.int64)
        self.zones: dict[str, int] = {"": 0}
        self.zone = np.array([self.zones.setdefault(z, len(self.zones)) for z in zone])
        self.has_trip = np.array([t is not None for t in trip], dtype=np.bool_)
        self.trip = np.array([-1 if t is None else t for t in trip], dtype=np.int64)

    def meeting(self, w: _Window) -> tuple[list[int], list[int], list[int]]:
        """Indexes of the stays that meet the probe, with each overlap's start and end."""
        p = w.probe
        i, j = np.searchsorted(self.start, (w.low, p.end_s))
        lo = np.maximum(self.start[i:j], p.start_s)
        hi = np.minimum(self.end[i:j], p.end_s)
        ok = hi - lo >= w.threshold_s
        if p.zone_id:
            zone = self.zone[i:j]
            ok &= (zone == 0) | (zone == self.zones.get(p.zone_id, -1))
        if p.trip_id is not None:
            ok &= ~self.has_trip[i:j] | (self.trip[i:j] == p.trip_id)
        hits = np.flatnonzero(ok)
        return (hits + i).tolist(), lo[hits].tolist(), hi[hits].tolist()


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


async def _contacts(
    db: aiosqlite.Connection,
    probes: Sequence[_Probe],
    excluded: set[str],
    threshold_s: int | None,
) -> list[_Raw]:
    """Every stay of someone not ``excluded`` that meets one of ``probes``."""
    if not probes:
        return []
    windows = await _windows(db, probes, threshold_s)
    spans = _spans(windows)
    rows = await _fetch(db, _CANDIDATES, (json.dumps(spans), json.dumps(sorted(excluded))))
    with _bulk():
        by_site: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            by_site[spans[row[0]][0]].append(row)
        sites = {site: _SiteStays(found) for site, found in by_site.items()}
        return [raw for w in windows if w.probe.site_id in sites for raw in _met(sites, w)]


def _met(sites: dict[str, _SiteStays], w: _Window) -> Iterator[_Raw]:
    site = sites[w.probe.site_id]
    p = w.probe
    for n, lo, hi in zip(*site.meeting(w), strict=True):
        _, _, _, subject, zone, trip, rank = site.rows[n]
        trip_id = p.trip_id if trip is None else trip
        yield (subject, lo, hi, p.site_id, p.subject, zone or p.zone_id, trip_id, max(rank, p.rank))


async def _windows(
    db: aiosqlite.Connection, probes: Sequence[_Probe], threshold_s: int | None
) -> list[_Window]:
    """Each probe with how far back a stay meeting it may start, and its threshold."""
    facts = await _site_facts(db, {p.site_id for p in probes})
    windows = []
    for p in probes:
        site = facts[p.site_id]
        threshold = max(site.threshold_s if threshold_s is None else threshold_s, 1)
        windows.append(_Window(p, p.start_s - site.max_stay_s, threshold))
    return windows


def _spans(windows: Sequence[_Window]) -> list[list[object]]:
    """The probes' ranges merged per site: [site, low, high, earliest probe start].

    A site's probes all look back by the same bound, so the first probe of a
    span is also the one that starts first.
    """
    spans: list[list[Any]] = []
    for w in sorted(windows, key=lambda w: (w.probe.site_id, w.low)):
        p = w.probe
        last = spans[-1] if spans else None
        if last is not None and last[0] == p.site_id and w.low <= last[2]:
            last[2] = max(last[2], p.end_s)
        else:
            spans.append([p.site_id, w.low, p.end_s, p.start_s])
    return spans


def _exposed(raw: list[_Raw], *, level: int) -> tuple[Exposed, ...]:
    with _bulk():
        by_subject: dict[str, list[_Raw]] = defaultdict(list)
        for r in raw:
            by_subject[r[0]].append(r)
        people = [_one_exposed(subject, found, level) for subject, found in by_subject.items()]
        people.sort(key=lambda e: (-e.total_overlap_s, e.subject))
        return tuple(people)


def _one_exposed(subject: str, raw: list[_Raw], level: int) -> Exposed:
    raw.sort(key=itemgetter(1, 2, 3, 4))
    contacts = tuple(
        Contact(subject, site, zone, trip, start, end, end - start, via, CERTAINTY[rank])
        for _, start, end, site, via, zone, trip, rank in raw
    )
    return Exposed(subject, level, sum(c.overlap_s for c in contacts), contacts)
