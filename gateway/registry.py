"""The registry of sites, their zones and shifts, and the trips of vehicles.

A site is where people check in: a category of the directives, an address and
administrative unit, a default stay and optionally its own contact threshold.
Zones split a large site (a workshop, a production line) so that a factory of
5,000 people does not make everyone everyone's contact. A vehicle is a site of
category ``vehicle``; its stays are bounded by trips, which come from the
schedule (:mod:`gateway.schedule`) or an operator's command
(:mod:`gateway.registry_cli`). Trip buttons on the bus reader are future work.

Every writing function runs in one ``BEGIN IMMEDIATE`` transaction on the
gateway's single writer connection and rolls back on any error. Call them only
while no other coroutine uses that connection (at start, or from a tool's own
connection): aiosqlite serialises statements, not transactions.

This module must not import :mod:`gateway.config`, which imports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import aiosqlite
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from broker.messages import DeviceId
from gateway.categories import DEFAULTS, MINUTE, Category
from gateway.errors import GatewayError, StoreError

logger = logging.getLogger(__name__)

_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
ZoneId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")]
TripSource = Literal["device", "schedule"]
Row = tuple[Any, ...]  # a result row; SQLite types are checked by the schema, not here
# An open trip reaches into the future as far as overlap checks are concerned.
_OPEN_END = 2**62


class RegistryError(GatewayError):
    """A registry change was refused; nothing of it was written."""


class UnknownSite(RegistryError):
    """The site is not registered."""


class NotAVehicle(RegistryError):
    """Trips were asked of a site whose category is not ``vehicle``."""


class TripAlreadyOpen(RegistryError):
    """A trip was started on a vehicle whose previous trip is still open."""


class NoOpenTrip(RegistryError):
    """A trip was ended on a vehicle with no open trip."""


class TripOrderError(RegistryError):
    """A trip would end at or before its start."""


class TripOverlap(RegistryError):
    """A trip would overlap another trip of the same vehicle."""


class ScheduleError(RegistryError):
    """A schedule was refused as a whole; ``problems`` names every bad row."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        listed = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{what} refused, nothing imported ({len(self.problems)} problems):\n{listed}"
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZoneEntry(_Model):
    """A part of a site whose people are contacts of each other, not of the whole site."""

    zone_id: ZoneId = Field(description="Id the site's devices name in their 'zone'.")
    name: str = Field("", max_length=100, description="Name shown to operators.")


class ShiftEntry(_Model):
    """A daily shift in local wall-clock time; an end before the start runs overnight."""

    name: str = Field(min_length=1, max_length=64, description="Shift name, unique at its site.")
    starts: str = Field(description="Local start time 'HH:MM' (00:00-23:59).")
    ends: str = Field(description="Local end time 'HH:MM'; before 'starts' for a night shift.")

    @model_validator(mode="after")
    def _times(self) -> ShiftEntry:
        for field, value in (("starts", self.starts), ("ends", self.ends)):
            if not _HHMM.match(value):
                raise ValueError(f"shift {self.name!r}: {field} {value!r} is not a time HH:MM")
        if self.starts == self.ends:
            # Either no time at all or a full day: neither bounds a stay.
            raise ValueError(f"shift {self.name!r} starts and ends at {self.starts}")
        return self


class SiteEntry(_Model):
    """A site of the registry with its zones and shifts."""

    site_id: DeviceId = Field(description="Site id, as the site's devices carry it.")
    name: str = Field(min_length=1, max_length=200, description="Name shown to operators.")
    category: Category = Field(description="Category of the directives; sets the defaults.")
    address: str = Field("", max_length=300, description="Street address.")
    province: str = Field("", max_length=100, description="Province or city (tỉnh/thành phố).")
    district: str = Field("", max_length=100, description="District (quận/huyện).")
    commune: str = Field("", max_length=100, description="Commune or ward (xã/phường).")
    default_stay_min: int | None = Field(
        None, ge=1, le=24 * 60, description="Stay without exit scan, minutes; None: category's."
    )
    threshold_min: int | None = Field(
        None, ge=1, le=24 * 60, description="Least overlap making contacts; None: category's."
    )
    zones: list[ZoneEntry] = Field(default_factory=list, description="Zones; none: one room.")
    shifts: list[ShiftEntry] = Field(default_factory=list, description="Daily shifts, if any.")

    @property
    def default_stay_s(self) -> int:
        """The default stay in force: the site's own or its category's."""
        if self.default_stay_min is None:
            return DEFAULTS[self.category].default_stay_s
        return self.default_stay_min * MINUTE

    @property
    def threshold_s(self) -> int:
        """The contact threshold in force: the site's own or its category's."""
        if self.threshold_min is None:
            return DEFAULTS[self.category].threshold_s
        return self.threshold_min * MINUTE

    @model_validator(mode="after")
    def _consistent(self) -> SiteEntry:
        _refuse_repeats(f"site {self.site_id}: zone", [z.zone_id for z in self.zones])
        _refuse_repeats(f"site {self.site_id}: shift", [s.name for s in self.shifts])
        if self.category is Category.VEHICLE and self.shifts:
            # Trips bound a vehicle's stays; a shift would be a second, conflicting bound.
            raise ValueError(
                f"site {self.site_id} is a vehicle: its stays end with trips, not shifts"
            )
        if self.threshold_s > self.default_stay_s:
            raise ValueError(
                f"site {self.site_id}: contact threshold {self.threshold_s // MINUTE} min exceeds "
                f"the default stay {self.default_stay_s // MINUTE} min, so stays without an exit "
                "scan could never make contacts"
            )
        return self


def _refuse_repeats(what: str, values: Sequence[str]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} listed twice: {', '.join(repeated)}")


@dataclass(frozen=True, slots=True)
class TripRow:
    """A scheduled trip; ``origin`` says where it came from, for error messages."""

    site_id: str
    start_s: int
    end_s: int
    origin: str = ""

    @property
    def label(self) -> str:
        """How messages name this trip."""
        return self.origin or f"trip of {self.site_id} at {when(self.start_s)}"


def when(at_s: int) -> str:
    """Epoch seconds as ISO 8601 UTC, for messages."""
    return datetime.fromtimestamp(at_s, UTC).isoformat()


@asynccontextmanager
async def _transaction(db: aiosqlite.Connection, begin: str) -> AsyncIterator[None]:
    try:
        await db.execute(begin)
        try:
            yield
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
    except aiosqlite.Error as exc:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise StoreError(f"registry database error: {exc}") from exc


async def register_sites(db: aiosqlite.Connection, sites: Sequence[SiteEntry]) -> None:
    """Insert or update sites and replace their zones and shifts.

    Sites no longer listed are kept: their trips and stays still matter for tracing.
    """
    if not sites:
        return
    _refuse_repeats_as_registry([s.site_id for s in sites])
    async with _transaction(db, "BEGIN IMMEDIATE"):
        for site in sites:
            await _write_site(db, site)
    logger.info("registered %d sites", len(sites))


def _refuse_repeats_as_registry(site_ids: list[str]) -> None:
    try:
        _refuse_repeats("site", site_ids)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


async def _write_site(db: aiosqlite.Connection, site: SiteEntry) -> None:
    await db.execute(
        "INSERT INTO sites (site_id, name, category, address, province, district, commune, "
        "default_stay_s, threshold_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (site_id) DO UPDATE SET name=excluded.name, category=excluded.category, "
        "address=excluded.address, province=excluded.province, district=excluded.district, "
        "commune=excluded.commune, default_stay_s=excluded.default_stay_s, "
        "threshold_s=excluded.threshold_s",
        (
            site.site_id,
            site.name,
            site.category.value,
            site.address,
            site.province,
            site.district,
            site.commune,
            site.default_stay_s,
            None if site.threshold_min is None else site.threshold_s,
        ),
    )
    await db.execute("DELETE FROM zones WHERE site_id=?", (site.site_id,))
    await db.executemany(
        "INSERT INTO zones (site_id, zone_id, name) VALUES (?, ?, ?)",
        [(site.site_id, z.zone_id, z.name) for z in site.zones],
    )
    await db.execute("DELETE FROM shifts WHERE site_id=?", (site.site_id,))
    await db.executemany(
        "INSERT INTO shifts (site_id, name, starts, ends) VALUES (?, ?, ?, ?)",
        [(site.site_id, s.name, s.starts, s.ends) for s in site.shifts],
    )


async def sites(db: aiosqlite.Connection) -> list[SiteEntry]:
    """Every registered site, by id; ``default_stay_min`` is the stay in force when stored."""
    async with _transaction(db, "BEGIN"):  # one snapshot for the three reads
        site_rows = await _fetch(
            db,
            "SELECT site_id, name, category, address, province, district, commune, "
            "default_stay_s, threshold_s FROM sites ORDER BY site_id",
        )
        zone_rows = await _fetch(db, "SELECT site_id, zone_id, name FROM zones ORDER BY zone_id")
        shift_rows = await _fetch(
            db, "SELECT site_id, name, starts, ends FROM shifts ORDER BY starts, name"
        )
    zones: dict[str, list[ZoneEntry]] = {}
    for site_id, zone_id, name in zone_rows:
        zones.setdefault(site_id, []).append(ZoneEntry(zone_id=zone_id, name=name))
    shifts: dict[str, list[ShiftEntry]] = {}
    for site_id, name, starts, ends in shift_rows:
        shifts.setdefault(site_id, []).append(ShiftEntry(name=name, starts=starts, ends=ends))
    return [_site(row, zones.get(row[0], []), shifts.get(row[0], [])) for row in site_rows]


def _site(row: Row, zones: list[ZoneEntry], shifts: list[ShiftEntry]) -> SiteEntry:
    site_id, name, category, address, province, district, commune, stay_s, threshold_s = row
    return SiteEntry.model_validate(
        {
            "site_id": site_id,
            "name": name,
            "category": category,
            "address": address,
            "province": province,
            "district": district,
            "commune": commune,
            "default_stay_min": stay_s // MINUTE,
            "threshold_min": None if threshold_s is None else threshold_s // MINUTE,
            "zones": zones,
            "shifts": shifts,
        }
    )


async def _fetch(db: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> list[Row]:
    async with db.execute(sql, params) as cur:
        return [tuple(row) for row in await cur.fetchall()]


async def start_trip(
    db: aiosqlite.Connection, site_id: str, at_s: int, source: TripSource = "device"
) -> int:
    """Open a trip of a vehicle at ``at_s`` (epoch seconds); returns its id."""
    async with _transaction(db, "BEGIN IMMEDIATE"):
        await _require_vehicle(db, site_id)
        open_trip = await _open_trip(db, site_id)
        if open_trip is not None:
            raise TripAlreadyOpen(
                f"vehicle {site_id}: trip {open_trip[0]} started {when(open_trip[1])} "
                "is still open; end it first"
            )
        await _refuse_overlap(db, site_id, at_s, at_s + 1, None)
        cur = await db.execute(
            "INSERT INTO trips (site_id, start_s, end_s, source) VALUES (?, ?, NULL, ?)",
            (site_id, at_s, source),
        )
        trip_id = _rowid(cur)
    logger.info("trip %d of %s started at %s (%s)", trip_id, site_id, when(at_s), source)
    return trip_id


async def end_trip(db: aiosqlite.Connection, site_id: str, at_s: int) -> int:
    """Close the open trip of a vehicle at ``at_s`` (epoch seconds); returns its id."""
    async with _transaction(db, "BEGIN IMMEDIATE"):
        await _require_vehicle(db, site_id)
        open_trip = await _open_trip(db, site_id)
        if open_trip is None:
            raise NoOpenTrip(f"vehicle {site_id} has no open trip to end")
        trip_id, start_s = open_trip
        if at_s <= start_s:
            raise TripOrderError(
                f"vehicle {site_id}: trip {trip_id} cannot end at {when(at_s)}, "
                f"at or before its start {when(start_s)}"
            )
        await _refuse_overlap(db, site_id, start_s, at_s, trip_id)
        await db.execute("UPDATE trips SET end_s=? WHERE trip_id=?", (at_s, trip_id))
    logger.info("trip %d of %s ended at %s", trip_id, site_id, when(at_s))
    return trip_id


async def _require_vehicle(db: aiosqlite.Connection, site_id: str) -> None:
    rows = await _fetch(db, "SELECT category FROM sites WHERE site_id=?", (site_id,))
    if not rows:
        raise UnknownSite(
            f"site {site_id} is not registered: list it under 'sites' in the gateway config "
            "and restart the gateway"
        )
    if rows[0][0] != Category.VEHICLE.value:
        raise NotAVehicle(f"site {site_id} is a {rows[0][0]}, not a vehicle: it has no trips")


async def _open_trip(db: aiosqlite.Connection, site_id: str) -> tuple[int, int] | None:
    rows = await _fetch(
        db, "SELECT trip_id, start_s FROM trips WHERE site_id=? AND end_s IS NULL", (site_id,)
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


async def _refuse_overlap(
    db: aiosqlite.Connection, site_id: str, start_s: int, end_s: int, own: int | None
) -> None:
    rows = await _fetch(
        db,
        "SELECT trip_id, start_s FROM trips WHERE site_id=? AND trip_id IS NOT ? "
        "AND start_s < ? AND coalesce(end_s, ?) > ? ORDER BY start_s LIMIT 1",
        (site_id, own, end_s, _OPEN_END, start_s),
    )
    if rows:
        raise TripOverlap(
            f"vehicle {site_id}: {when(start_s)} to {when(end_s)} overlaps "
            f"trip {rows[0][0]} started {when(rows[0][1])}"
        )


def _rowid(cur: aiosqlite.Cursor) -> int:
    if cur.lastrowid is None:
        raise StoreError("trip inserted without a row id")
    return cur.lastrowid


async def add_trips(db: aiosqlite.Connection, rows: Sequence[TripRow]) -> list[int]:
    """Store scheduled trips, all or none; returns the ids of the new trips.

    A row identical to a stored trip (same vehicle, start and end) is skipped, so
    a schedule file can be imported again after more rows were appended to it.
    """
    async with _transaction(db, "BEGIN IMMEDIATE"):
        stored = await _stored_trips(db, {r.site_id for r in rows})
        new = [r for r in rows if (r.site_id, r.start_s, r.end_s) not in stored]
        problems = await _row_problems(db, new)
        problems += _overlaps(new, stored)
        if problems:
            raise ScheduleError("schedule", problems)
        ids = [await _insert_trip(db, r) for r in new]
    logger.info("schedule: %d trips added, %d already stored", len(ids), len(rows) - len(ids))
    return ids


_Stored = dict[tuple[str, int, int], int]  # (site_id, start_s, end_s or _OPEN_END) -> trip_id


async def _stored_trips(db: aiosqlite.Connection, site_ids: set[str]) -> _Stored:
    stored: _Stored = {}
    for site_id in sorted(site_ids):
        found = await _fetch(
            db, "SELECT trip_id, start_s, end_s FROM trips WHERE site_id=?", (site_id,)
        )
        for trip_id, start_s, end_s in found:
            end = _OPEN_END if end_s is None else end_s
            stored[(site_id, start_s, end)] = trip_id
    return stored


async def _row_problems(db: aiosqlite.Connection, rows: Sequence[TripRow]) -> list[str]:
    found = await _fetch(db, "SELECT site_id, category FROM sites")
    categories: dict[str, str] = {site_id: category for site_id, category in found}
    problems = []
    for r in rows:
        category = categories.get(r.site_id)
        if category is None:
            problems.append(f"{r.label}: site {r.site_id} is not registered")
        elif category != Category.VEHICLE.value:
            problems.append(f"{r.label}: site {r.site_id} is a {category}, not a vehicle")
        if r.end_s <= r.start_s:
            problems.append(f"{r.label}: ends at or before it starts")
    return problems


class _Span(NamedTuple):
    site_id: str
    start_s: int
    end_s: int
    label: str
    new: bool


def _overlaps(rows: Sequence[TripRow], stored: _Stored) -> list[str]:
    """Overlaps that involve at least one new row, found by one sweep per vehicle."""
    spans = [
        _Span(r.site_id, r.start_s, r.end_s, r.label, True) for r in rows if r.end_s > r.start_s
    ]
    spans += [_Span(s, a, b, f"stored trip {tid}", False) for (s, a, b), tid in stored.items()]
    spans.sort(key=lambda span: span[:3])
    problems = []
    latest: _Span | None = None  # the span of this vehicle reaching furthest so far
    for span in spans:
        if latest is None or latest.site_id != span.site_id:
            latest = span
            continue
        if span.start_s < latest.end_s and (span.new or latest.new):
            new, old = (span, latest) if span.new else (latest, span)
            problems.append(f"{new.label}: overlaps {old.label} of vehicle {span.site_id}")
        if span.end_s > latest.end_s:
            latest = span
    return problems


async def _insert_trip(db: aiosqlite.Connection, row: TripRow) -> int:
    cur = await db.execute(
        "INSERT INTO trips (site_id, start_s, end_s, source) VALUES (?, ?, ?, 'schedule')",
        (row.site_id, row.start_s, row.end_s),
    )
    return _rowid(cur)
