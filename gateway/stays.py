"""Presence intervals ("stays") built from check-ins: who was where, and when.

A stay is one subject's presence at one site (and zone, and trip for a
vehicle) from ``start_s`` to ``end_s``. Scans say only when someone passed a
gate, so every stay records which rule fixed each of its ends; investigators
weigh a contact by that (see :data:`CERTAINTY`).

Input: only *accepted* check-ins that carry a subject. A refused person did
not pass the gate, so a refused scan neither opens nor closes a stay.

Scan time: ``scanned_s`` from the device. For a check-in scanned while the
device clock was not NTP-synchronised, the device clock may be off by days (a
Raspberry Pi has no RTC), so :func:`clock_corrections` shifts it by the
device clock's offset, estimated from the gateway's receive times (see there).

Rules, for one subject's scans in time order:

* An entry opens a stay at its site; the zone is the device's zone ('' when
  the site has no zones, and the device's current zone: devices keep no
  history). The matching exit closes it (``exit``): the subject's next scan,
  at the same site, in the same zone when both zones are known, for a
  vehicle not in a *different* trip, and at most :func:`longest_stay` later
  (a day; a month at lodgings, apartments and hospitals): an office exit two
  days after the entry is a forgotten exit plus a forgotten entry, two stays.
  Without one, the earliest bound closes it: the subject's next scan
  (``next_checkin``), the end of the vehicle trip containing the entry
  (``trip_end``), the end of the shift containing the entry, or the coming
  shift when the entry is at most 30 min before it starts (``shift_end``),
  and entry + the site's default stay (``default_stay``); ties go to the
  rule named first.
* An exit without an open entry there starts at the latest of: exit − default
  stay (``exit_minus_default``), the subject's previous scan anywhere
  (``previous_checkin``) and, for a vehicle, the start of the trip containing
  the exit (``trip_start``). Its interval may overlap the stay that the
  previous scan opened elsewhere: when the subject moved is unknown, and a
  tracer must not miss either place.
* A vehicle stay carries the trip containing its entry (or its exit). A stay
  on a vehicle outside every trip has ``trip_id`` None and is traced like a
  stay at any site: it meets everyone on that vehicle at the same time.
* Zero-length stays are dropped; no stay ends before it starts.

A site seen in check-ins but absent from ``sites`` gets factory-like rules
(:func:`default_rules`): the factory category's default stay and threshold,
no shifts, no trips.
"""

from __future__ import annotations

import bisect
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from operator import itemgetter
from typing import Any, Literal

import aiosqlite

from gateway.categories import DEFAULTS, Category
from gateway.errors import StoreError

logger = logging.getLogger(__name__)

UNREGISTERED_CATEGORY = Category.FACTORY
# Workers scan in a little before their shift starts; such an entry belongs to that shift.
SHIFT_EARLY_S = 30 * 60
# No trip lasts longer; a trip left open (end_s NULL) for longer is treated as abandoned.
TRIP_MAX_S = 24 * 3600
# The longest believable stay: an exit later than this after the entry is not its exit
# (someone forgot to scan out, then days later to scan in) but ends a stay of its own.
MAX_STAY_S = 24 * 3600
RESIDENT_MAX_STAY_S = 30 * 24 * 3600
RESIDENTIAL = frozenset({Category.LODGING, Category.APARTMENT, Category.HEALTHCARE})
DAY_S = 24 * 3600
REBUILD_MMAP_BYTES = 1 << 34

CERTAINTY: tuple[str, ...] = ("exit", "next_checkin", "trip_end", "shift_end", "default_stay")
"""End rules from the most certain (an observed exit) to the least (a category guess)."""

START_AS_END: dict[str, str] = {
    "entry": "exit",
    "previous_checkin": "next_checkin",
    "trip_start": "trip_end",
    "exit_minus_default": "default_stay",
}
"""Each start rule ranked like the end rule of the same kind of evidence."""

# (id, site_id, zone_id, direction, at_s): the builder's working form of a Scan, so the
# bulk rebuild of millions of check-ins builds no objects per scan.
ScanRow = tuple[int, str, str, str, int]
# A stay in the column order of the stays table.
StayRow = tuple[str, str, str, int | None, int, int, str, str, int | None, int | None]
Trip = tuple[int, int, int | None]
# (id, device_id, stream, seq, scanned_s, received_at) of a check-in with an unsynced clock.
UnsyncedRow = tuple[int, str, str, int, int, str]

INSERT_STAY = (
    "INSERT INTO stays (subject, site_id, zone_id, trip_id, start_s, end_s, start_rule, "
    "end_rule, entry_id, exit_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class Scan:
    """One accepted check-in of one subject, at its (clock-corrected) time."""

    id: int
    subject: str
    site_id: str
    zone_id: str
    direction: Literal["in", "out"]
    at_s: int


@dataclass(frozen=True, slots=True)
class Stay:
    """A presence interval, with the rules that fixed its start and its end."""

    subject: str
    site_id: str
    zone_id: str
    trip_id: int | None
    start_s: int
    end_s: int
    start_rule: str
    end_rule: str
    entry_id: int | None
    exit_id: int | None


@dataclass(frozen=True, slots=True)
class SiteRules:
    """What closes a stay at one site: default stay, shifts, trips; and its contact threshold."""

    site_id: str
    category: Category
    default_stay_s: int
    threshold_s: int
    shifts: tuple[tuple[int, int], ...]
    trips: tuple[Trip, ...]


@lru_cache(maxsize=4096)
def default_rules(site_id: str) -> SiteRules:
    """Rules of a site missing from the registry: those of a factory, no shifts, no trips."""
    defaults = DEFAULTS[UNREGISTERED_CATEGORY]
    return SiteRules(
        site_id, UNREGISTERED_CATEGORY, defaults.default_stay_s, defaults.threshold_s, (), ()
    )


def parse_category(text: str) -> Category:
    """A site's category; an unknown one is treated like an unregistered site's."""
    try:
        return Category(text)
    except ValueError:
        logger.warning("unknown site category %r: using %s defaults", text, UNREGISTERED_CATEGORY)
        return UNREGISTERED_CATEGORY


def site_threshold(category: Category, threshold_s: int | None) -> int:
    """The site's own contact threshold, else its category's."""
    return DEFAULTS[category].threshold_s if threshold_s is None else int(threshold_s)


# --- building --------------------------------------------------------------------------


def build_stays(scans: Sequence[Scan], rules: Mapping[str, SiteRules], *, tz: tzinfo) -> list[Stay]:
    """The stays of ONE subject from its accepted scans; ``tz`` is the shifts' local time."""
    if not scans:
        return []
    subject = scans[0].subject
    if any(s.subject != subject for s in scans):
        raise ValueError("build_stays takes the scans of one subject")
    rows = [(s.id, s.site_id, s.zone_id, s.direction, s.at_s) for s in scans]
    rows.sort(key=itemgetter(4))  # stable: scans in the same second keep the caller's order
    return [Stay(*row) for row in stay_rows(subject, rows, rules, tz)]


def stay_rows(
    subject: str, scans: Sequence[ScanRow], rules: Mapping[str, SiteRules], tz: tzinfo
) -> list[StayRow]:
    """:func:`build_stays` on plain tuples (scans in time order), as stays-table rows."""
    out: list[StayRow] = []
    entry: tuple[ScanRow, SiteRules] | None = None  # the open entry and its site
    prev_at: int | None = None
    for scan in scans:
        site = rules.get(scan[1]) or default_rules(scan[1])  # unregistered: factory-like
        if scan[3] == "in":
            if entry is not None:
                _keep(out, _close(subject, *entry, scan[4], tz))
            entry = (scan, site)
        elif entry is not None and (stay := _entry_exit(subject, entry[0], scan, site)):
            _keep(out, stay)
            entry = None
        else:
            if entry is not None:
                _keep(out, _close(subject, *entry, scan[4], tz))
                entry = None
            _keep(out, _exit_only(subject, scan, site, prev_at))
        prev_at = scan[4]
    if entry is not None:
        _keep(out, _close(subject, *entry, None, tz))
    return out


def _keep(out: list[StayRow], row: StayRow) -> None:
    if row[5] > row[4]:  # zero-length stays are dropped
        out.append(row)


def _entry_exit(subject: str, entry: ScanRow, exit_: ScanRow, site: SiteRules) -> StayRow | None:
    """The stay from ``entry`` to ``exit_`` at ``site``, or None when the exit is not its own."""
    if entry[1] != exit_[1] or (entry[2] and exit_[2] and entry[2] != exit_[2]):
        return None
    if exit_[4] - entry[4] > longest_stay(site):
        return None
    trip_id = None
    if site.trips:
        trip_in = trip_at(site, entry[4])
        trip_out = trip_at(site, exit_[4], closing=True)
        # An exit after its trip ended (no later trip yet) still closes it; one in a later not.
        if trip_in is not None and trip_out is not None and trip_in[0] != trip_out[0]:
            return None
        trip = trip_in or trip_out
        trip_id = trip[0] if trip else None
    zone = entry[2] or exit_[2]
    start, end = entry[4], exit_[4]
    return (subject, entry[1], zone, trip_id, start, end, "entry", "exit", entry[0], exit_[0])


def _close(
    subject: str, entry: ScanRow, site: SiteRules, next_at: int | None, tz: tzinfo
) -> StayRow:
    """An entry not closed by an exit ends at the earliest bound that applies."""
    start = entry[4]
    trip = trip_at(site, start)
    # (time, preference, rule): min() takes the earliest, then the rule named first.
    bounds: list[tuple[int, int, str]] = [(start + site.default_stay_s, 3, "default_stay")]
    if next_at is not None:
        bounds.append((next_at, 0, "next_checkin"))
    if trip is not None and trip[2] is not None:
        bounds.append((trip[2], 1, "trip_end"))
    shift = shift_end(site, start, tz)
    if shift is not None:
        bounds.append((shift, 2, "shift_end"))
    end, _, rule = min(bounds)
    trip_id = trip[0] if trip else None
    return (subject, entry[1], entry[2], trip_id, start, end, "entry", rule, entry[0], None)


def _exit_only(subject: str, exit_: ScanRow, site: SiteRules, prev_at: int | None) -> StayRow:
    """An exit with no open entry there starts at the latest bound that applies."""
    end = exit_[4]
    trip = trip_at(site, end, closing=True)
    # (time, -preference, rule): max() takes the latest, then the rule named first.
    bounds: list[tuple[int, int, str]] = [(end - site.default_stay_s, -2, "exit_minus_default")]
    if prev_at is not None:
        bounds.append((prev_at, 0, "previous_checkin"))
    if trip is not None:
        bounds.append((trip[1], -1, "trip_start"))
    start, _, rule = max(bounds)
    trip_id = trip[0] if trip else None
    return (subject, exit_[1], exit_[2], trip_id, start, end, rule, "exit", None, exit_[0])


def longest_stay(site: SiteRules) -> int:
    """How long an entry and an exit may be apart and still make one stay."""
    cap = RESIDENT_MAX_STAY_S if site.category in RESIDENTIAL else MAX_STAY_S
    return max(cap, site.default_stay_s)


def trip_at(site: SiteRules, at_s: int, *, closing: bool = False) -> Trip | None:
    """The vehicle trip under way at ``at_s`` (the latest-starting one), or None.

    An entry at the very second a trip ends belongs to the next trip, an exit
    at that second to the ending one (``closing``). A trip still open (no
    end) lasts until the vehicle's next trip starts. Trips of a site that is
    not a vehicle are ignored.
    """
    if site.category is not Category.VEHICLE or not site.trips:
        return None
    trips = site.trips
    if closing:
        i = bisect.bisect_left(trips, at_s, key=itemgetter(1))
    else:
        i = bisect.bisect_right(trips, at_s, key=itemgetter(1))
    latest = i - 1
    while i > 0:
        i -= 1
        trip = trips[i]
        if trip[1] < at_s - TRIP_MAX_S:
            return None
        end = trip[2]
        if end is None and i == latest:
            return trip
        if end is not None and (at_s <= end if closing else at_s < end):
            return trip
    return None


def shift_end(site: SiteRules, at_s: int, tz: tzinfo) -> int | None:
    """End of the latest-ending shift that contains ``at_s`` (or starts within the grace)."""
    if not site.shifts:
        return None
    local = datetime.fromtimestamp(at_s, tz)
    second = local.hour * 3600 + local.minute * 60 + local.second
    best: int | None = None
    for start_m, end_m in site.shifts:
        length = (end_m - start_m) * 60 % DAY_S or DAY_S  # end <= start: it ends the next day
        # The occurrence may have started yesterday (overnight) or start tomorrow (grace).
        for day in (-1, 0, 1):
            begin = start_m * 60 + day * DAY_S
            if begin - SHIFT_EARLY_S <= second < begin + length and (
                best is None or begin + length > best
            ):
                best = begin + length
    if best is None:
        return None
    # Wall-clock arithmetic, then the zone: a shift ends at its local time on any day.
    wall = datetime(local.year, local.month, local.day) + timedelta(seconds=best)
    return int(wall.replace(tzinfo=tz).timestamp())


# --- clocks ----------------------------------------------------------------------------


def clock_corrections(rows: Iterable[UnsyncedRow]) -> dict[int, int]:
    """Corrected scan times, by check-in id, of check-ins scanned with an unsynced clock.

    The rows are split into runs: consecutive seqs of one device stream whose
    device time never goes back (a reboot resets an unsynced clock, and a
    synced check-in in between means the clock was set). Within a run the
    clock is off by one offset; ``received − scanned`` is that offset plus the
    delivery delay, so its minimum over the run is the offset as soon as one
    check-in of the run was delivered promptly (at most a few seconds late).
    Each scan is moved by that minimum: the promptest one lands on its receive
    time, and none lands after its own. When the device was offline for a
    whole run, the scans land late by the delay of the promptest one, which is
    the time from the run's last scan to the reconnection.
    """
    ordered = sorted(rows, key=itemgetter(1, 2, 3))
    corrected: dict[int, int] = {}
    for run in _runs(ordered):
        offset = min(epoch_s(r[5]) - r[4] for r in run)
        for row in run:
            corrected[row[0]] = row[4] + offset
    return corrected


def _runs(rows: Sequence[UnsyncedRow]) -> Iterator[list[UnsyncedRow]]:
    run: list[UnsyncedRow] = []
    for row in rows:
        if run:
            prev = run[-1]
            same_clock = prev[1:3] == row[1:3] and row[3] == prev[3] + 1 and row[4] >= prev[4]
            if not same_clock:
                yield run
                run = []
        run.append(row)
    if run:
        yield run


def epoch_s(iso: str) -> int:
    """Epoch seconds of an ISO-8601 time as stored by the gateway (naive means UTC)."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


# --- loading ---------------------------------------------------------------------------

_SITE_FILTER = " WHERE site_id IN (SELECT value FROM json_each(?))"
_RULE_QUERIES = (
    "SELECT site_id, category, default_stay_s, threshold_s FROM sites",
    "SELECT site_id, starts, ends FROM shifts",
    "SELECT site_id, trip_id, start_s, end_s FROM trips",
    "SELECT DISTINCT site_id FROM devices",
)


def _rule_queries(sites: Iterable[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    if sites is None:
        return [(sql, ()) for sql in _RULE_QUERIES]
    wanted = (json.dumps(sorted(set(sites))),)
    return [(sql + _SITE_FILTER, wanted) for sql in _RULE_QUERIES]


async def load_rules(
    db: aiosqlite.Connection, *, sites: Iterable[str] | None = None
) -> dict[str, SiteRules]:
    """Rules of every registered site and every site of a registered device.

    Sites of devices that are missing from ``sites`` get :func:`default_rules`.
    With ``sites``, only those are loaded, and each of them is in the result.
    """
    wanted = None if sites is None else set(sites)
    results: list[list[Any]] = []
    for sql, params in _rule_queries(wanted):
        async with db.execute(sql, params) as cur:
            results.append(list(await cur.fetchall()))
    return _rules_from_rows(*results, wanted=wanted)


def load_rules_sync(
    conn: sqlite3.Connection, *, sites: Iterable[str] | None = None
) -> dict[str, SiteRules]:
    """:func:`load_rules` on a plain sqlite3 connection."""
    wanted = None if sites is None else set(sites)
    results = [conn.execute(sql, params).fetchall() for sql, params in _rule_queries(wanted)]
    return _rules_from_rows(*results, wanted=wanted)


def _rules_from_rows(
    site_rows: Sequence[Any],
    shift_rows: Sequence[Any],
    trip_rows: Sequence[Any],
    device_sites: Sequence[Any],
    *,
    wanted: set[str] | None,
) -> dict[str, SiteRules]:
    shifts: dict[str, list[tuple[int, int]]] = {}
    for site_id, starts, ends in shift_rows:
        shift = _parse_shift(str(site_id), str(starts), str(ends))
        if shift is not None:
            shifts.setdefault(site_id, []).append(shift)
    trips: dict[str, list[Trip]] = {}
    vehicles = {row[0] for row in site_rows if row[1] == Category.VEHICLE.value}
    for site_id, trip_id, start_s, end_s in trip_rows:
        if site_id not in vehicles:
            continue
        end = None if end_s is None else int(end_s)
        trips.setdefault(site_id, []).append((int(trip_id), int(start_s), end))
    rules = {str(row[0]): default_rules(str(row[0])) for row in device_sites}
    rules.update({site: default_rules(site) for site in wanted or ()})
    for site_id, category_text, default_stay_s, threshold_s in site_rows:
        category = parse_category(str(category_text))
        rules[site_id] = SiteRules(
            site_id=site_id,
            category=category,
            default_stay_s=int(default_stay_s),
            threshold_s=site_threshold(category, threshold_s),
            shifts=tuple(sorted(shifts.get(site_id, ()))),
            trips=tuple(sorted(trips.get(site_id, ()), key=itemgetter(1, 0))),
        )
    return rules


def _parse_shift(site_id: str, starts: str, ends: str) -> tuple[int, int] | None:
    try:
        return _minute_of_day(starts), _minute_of_day(ends)
    except ValueError:
        logger.warning("site %s: ignoring shift %r-%r (want HH:MM)", site_id, starts, ends)
        return None


def _minute_of_day(text: str) -> int:
    hours, _, minutes = text.partition(":")
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 24 and 0 <= m < 60 and h * 60 + m <= 24 * 60):
        raise ValueError(text)
    return h * 60 + m


# --- rebuilding ------------------------------------------------------------------------

# Ordered like the index checkins_subject_time (subject, scanned_at, rowid): no sort needed.
_CHECKINS = (
    "SELECT c.subject, c.id, c.site_id, c.device_id, c.direction, c.scanned_s, c.clock_synced "
    "FROM checkins c WHERE c.accepted = 1 AND {where} ORDER BY c.subject, c.scanned_at, c.id"
)
_UNSYNCED = "SELECT id, device_id, stream, seq, scanned_s, received_at FROM checkins"
_ZONED_DEVICES = (
    "SELECT d.device_id, d.zone_id FROM devices d WHERE d.zone_id <> '' "
    "AND EXISTS (SELECT 1 FROM zones z WHERE z.site_id = d.site_id)"
)


class _Places:
    """Zones of devices (only at sites that have zones) and corrected clocks."""

    def __init__(self, zones: Mapping[str, str], corrected: Mapping[int, int]) -> None:
        self.zones = zones
        self.corrected = corrected

    def scans(self, rows: Iterable[Any]) -> Iterator[tuple[str, list[ScanRow]]]:
        """Group check-in rows (ordered by subject, time) into each subject's scans."""
        subject: str | None = None
        scans: list[ScanRow] = []
        unsynced = False
        zones, corrected = self.zones, self.corrected
        for who, cid, site, device, direction, scanned_s, synced in rows:
            if who != subject:
                if subject is not None:
                    yield subject, _in_time_order(scans, unsynced)
                subject, scans, unsynced = who, [], False
            at = scanned_s
            if not synced:
                at = corrected.get(cid, scanned_s)
                unsynced = True
            scans.append((cid, site, zones.get(device, ""), direction, at))
        if subject is not None:
            yield subject, _in_time_order(scans, unsynced)


def _in_time_order(scans: list[ScanRow], unsynced: bool) -> list[ScanRow]:
    if unsynced:
        scans.sort(key=itemgetter(4))
    return scans


@contextmanager
def _immediate_sync(conn: sqlite3.Connection, what: str) -> Iterator[None]:
    """One write transaction; any failure rolls it back, a database error as StoreError."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot {what}: {exc}") from exc
        raise


async def rebuild_stays(db: aiosqlite.Connection, subjects: Iterable[str], *, tz: tzinfo) -> int:
    """Recompute the stays of ``subjects`` from their accepted check-ins, in one transaction.

    Runs ``BEGIN IMMEDIATE ... COMMIT`` on the caller's writer connection, so
    nothing else may use that connection meanwhile. Returns the stays written.
    The whole rebuild is one call on aiosqlite's thread (see
    :func:`rebuild_stays_sync`).
    """
    wanted = list(subjects)
    conn = db._conn  # aiosqlite has no public API for this; only its own thread uses it
    written: int = await db._execute(  # type: ignore[no-untyped-call]
        lambda: rebuild_stays_sync(conn, wanted, tz=tz)
    )
    return written


def rebuild_stays_sync(conn: sqlite3.Connection, subjects: Iterable[str], *, tz: tzinfo) -> int:
    """:func:`rebuild_stays` on a plain sqlite3 connection (the writer's own thread).

    One hand-off instead of a round trip per statement: under a busy CPU each
    round trip waits for the event loop and the thread to be scheduled again,
    and the writer stays held all that while.
    """
    wanted = sorted({s for s in subjects if s})
    subjects_json = json.dumps(wanted)
    with _immediate_sync(conn, "rebuild stays"):
        where = "c.subject IN (SELECT value FROM json_each(?))"
        rows = conn.execute(_CHECKINS.format(where=where), (subjects_json,)).fetchall()
        places = _places_for(conn, rows)
        rules = load_rules_sync(conn, sites={row[2] for row in rows})
        stays = [s for subj, scans in places.scans(rows) for s in stay_rows(subj, scans, rules, tz)]
        conn.execute(
            "DELETE FROM stays WHERE subject IN (SELECT value FROM json_each(?))", (subjects_json,)
        )
        conn.executemany(INSERT_STAY, stays)
    logger.debug("rebuilt %d stays of %d subjects", len(stays), len(wanted))
    return len(stays)


def _places_for(conn: sqlite3.Connection, rows: Sequence[Any]) -> _Places:
    zones = {str(d): str(z) for d, z in conn.execute(_ZONED_DEVICES).fetchall()}
    # The offset of a device clock needs all of its unsynced check-ins, not only these.
    devices = sorted({row[3] for row in rows if not row[6]})
    unsynced = conn.execute(
        _UNSYNCED + " WHERE device_id IN (SELECT value FROM json_each(?)) AND clock_synced = 0",
        (json.dumps(devices),),
    ).fetchall()
    return _Places(zones, clock_corrections(unsynced))


def rebuild_all_stays(conn: sqlite3.Connection, *, tz: tzinfo, batch: int = 50_000) -> int:
    """Recompute every subject's stays; for a province-scale database.

    Check-ins are read in pages of about ``batch`` rows, ordered by (subject,
    time) along the index. Each page is one transaction that replaces the
    stays of a contiguous range of subjects, so a reader sees every subject
    with either its old or its new stays, and ingest can write between pages.
    Check-ins stored meanwhile may need :func:`rebuild_stays` for their
    subjects. ``conn`` must not be in a transaction.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, not {batch}")
    places = _Places(
        dict(conn.execute(_ZONED_DEVICES).fetchall()),
        clock_corrections(conn.execute(_UNSYNCED + " WHERE clock_synced = 0").fetchall()),
    )
    rules = load_rules_sync(conn)
    # Reading along the subject index jumps all over the table: memory-mapped
    # pages make each jump about a third cheaper than read() into the page cache.
    mmap_size = conn.execute("PRAGMA mmap_size").fetchone()[0]
    conn.execute(f"PRAGMA mmap_size={REBUILD_MMAP_BYTES}")
    try:
        written = _rebuild_pages(conn, places, rules, tz, batch)
    finally:
        conn.execute(f"PRAGMA mmap_size={int(mmap_size)}")
    logger.info("rebuilt all stays: %d", written)
    return written


def _rebuild_pages(
    conn: sqlite3.Connection,
    places: _Places,
    rules: Mapping[str, SiteRules],
    tz: tzinfo,
    batch: int,
) -> int:
    after: str | None = ""  # subjects compare as text; '' is no subject
    written = 0
    while after is not None:
        with _immediate_sync(conn, f"rebuild stays after subject {after!r}"):
            page, last = _page(conn, after, batch)
            stays = [
                s for subj, scans in places.scans(page) for s in stay_rows(subj, scans, rules, tz)
            ]
            _replace_range(conn, after, last, stays)
        written += len(stays)
        after = last
    return written


def _page(conn: sqlite3.Connection, after: str, batch: int) -> tuple[list[Any], str | None]:
    """Check-ins of whole subjects after ``after``, and the page's last subject (None: end)."""
    rows = conn.execute(
        _CHECKINS.format(where="c.subject > ?") + " LIMIT ?", (after, batch)
    ).fetchall()
    if len(rows) < batch:
        return rows, None
    last = rows[-1][0]
    whole = [row for row in rows if row[0] != last]
    if whole:
        return whole, whole[-1][0]
    # One subject with more than a page of check-ins: take all of it.
    return conn.execute(_CHECKINS.format(where="c.subject = ?"), (last,)).fetchall(), last


def _replace_range(
    conn: sqlite3.Connection, after: str, last: str | None, stays: list[StayRow]
) -> None:
    if last is None:
        conn.execute("DELETE FROM stays WHERE subject > ?", (after,))
    else:
        conn.execute("DELETE FROM stays WHERE subject > ? AND subject <= ?", (after, last))
    conn.executemany(INSERT_STAY, stays)
