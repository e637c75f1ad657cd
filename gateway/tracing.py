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
be. L is per site (``max(end_s − start_s)`` of the site's stays), read in the
same call, so one week-long hotel stay does not widen the scan at every bus,
and nothing is cached that a rebuild could make stale. All probes of a level
(every stay of the case, or of all F1s) go to SQLite in one query as a JSON
array joined to the index.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import aiosqlite

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
    """F1 (and with ``levels=2`` F2) of ``subject`` from their stays in [since_s, until_s)."""
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
    if missing:
        rows = await _fetch(
            db,
            "SELECT j.value, (SELECT max(end_s - start_s) FROM stays WHERE site_id = j.value) "
            "FROM json_each(?) j",
            (json.dumps(missing),),
        )
        known.update((site, int(longest or 0)) for site, longest in rows)
    return {site: known[site] for site in sites}


# The probes are the outer loop (CROSS JOIN keeps that order), each a range of the index
# stays_place_time; the probe's threshold is already at least 1 s, so touching is not meeting.
_OVERLAPS = """
WITH probe AS (
    SELECT key AS k, value ->> 0 AS site, value ->> 1 AS zone, value ->> 2 AS trip,
           value ->> 3 AS s, value ->> 4 AS e, value ->> 5 AS lo, value ->> 6 AS thr
    FROM json_each(?1)
)
SELECT p.k, t.subject, t.zone_id, t.trip_id, max(t.start_s, p.s), min(t.end_s, p.e),
       t.start_rule, t.end_rule
FROM probe p CROSS JOIN stays t
WHERE t.site_id = p.site AND t.start_s >= p.lo AND t.start_s < p.e AND t.end_s > p.s
  AND (p.zone = '' OR t.zone_id = '' OR t.zone_id = p.zone)
  AND (p.trip IS NULL OR t.trip_id IS NULL OR t.trip_id = p.trip)
  AND min(t.end_s, p.e) - max(t.start_s, p.s) >= p.thr
  AND t.subject NOT IN (SELECT value FROM json_each(?2))
"""


async def _contacts(
    db: aiosqlite.Connection,
    probes: Sequence[_Probe],
    excluded: set[str],
    threshold_s: int | None,
) -> list[Contact]:
    """Every stay of someone not ``excluded`` that meets one of ``probes``."""
    if not probes:
        return []
    facts = await _site_facts(db, {p.site_id for p in probes})
    encoded = []
    for p in probes:
        site = facts[p.site_id]
        threshold = max(site.threshold_s if threshold_s is None else threshold_s, 1)
        low = p.start_s - site.max_stay_s
        encoded.append([p.site_id, p.zone_id, p.trip_id, p.start_s, p.end_s, low, threshold])
    rows = await _fetch(db, _OVERLAPS, (json.dumps(encoded), json.dumps(sorted(excluded))))
    contacts = []
    for k, subject, zone, trip, start, end, start_rule, end_rule in rows:
        p = probes[k]
        rank = max(p.rank, stay_rank(start_rule, end_rule))
        contacts.append(
            Contact(
                subject=subject,
                site_id=p.site_id,
                zone_id=zone or p.zone_id,
                trip_id=p.trip_id if trip is None else trip,
                start_s=start,
                end_s=end,
                overlap_s=end - start,
                via=p.subject,
                certainty=CERTAINTY[rank],
            )
        )
    return contacts


def _exposed(contacts: Iterable[Contact], *, level: int) -> tuple[Exposed, ...]:
    by_subject: dict[str, list[Contact]] = defaultdict(list)
    for contact in contacts:
        by_subject[contact.subject].append(contact)
    people = [
        Exposed(
            subject=subject,
            level=level,
            total_overlap_s=sum(c.overlap_s for c in found),
            contacts=tuple(sorted(found, key=lambda c: (c.start_s, c.end_s, c.site_id, c.via))),
        )
        for subject, found in by_subject.items()
    ]
    people.sort(key=lambda e: (-e.total_overlap_s, e.subject))
    return tuple(people)
