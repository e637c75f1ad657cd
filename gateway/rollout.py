"""The monthly rollout report the directives ask of every district (due by the 5th).

For each province, district and site category: sites registered, sites with a
device that reported in the 24 hours before the report was made, check-ins
per day and the acceptance rate over the period; and check-ins per site and
local day. Days are local calendar days of the gateway's time zone.

Written as JSON, as an XLSX workbook (two sheets), or as CSV (the summary in
the named file, the daily rows beside it in ``<name>-daily.csv``); text stays
Vietnamese and is formula-safe (:mod:`gateway.workbook`). The command line is
:mod:`gateway.rollout_cli` (``python -m gateway rollout``).
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiosqlite

from broker.messages import utc_iso
from gateway.categories import DEFAULTS, Category
from gateway.errors import GatewayError
from gateway.exports import ExportError
from gateway.workbook import Sheet, Value, write_sheet_csv, write_workbook

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
Format = Literal["csv", "xlsx", "json"]
FORMATS: tuple[Format, ...] = ("csv", "xlsx", "json")
UNREGISTERED = "unregistered"
ONE_DAY = timedelta(days=1)
DAY_S = 86400
MAX_DAYS = 366
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class RolloutError(GatewayError):
    """The report period is invalid (a bad month, or start after end)."""


@dataclass(frozen=True, slots=True)
class AreaRow:
    """One province, district and category over the period."""

    province: str
    district: str
    category: str
    category_label: str
    registered_sites: int
    active_sites_24h: int
    checkins: int
    accepted: int
    checkins_per_day: float
    acceptance_rate: float | None  # None: no check-ins


@dataclass(frozen=True, slots=True)
class SiteDayRow:
    """Check-ins of one site on one local day (days without check-ins are left out)."""

    day: date
    site_id: str
    site_name: str
    province: str
    district: str
    category: str
    checkins: int
    accepted: int


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """The report: its period, when it was made, and its two tables."""

    start: date
    end: date
    generated_at: datetime
    timezone: str
    areas: list[AreaRow]
    daily: list[SiteDayRow]

    @property
    def days(self) -> int:
        """Days in the period, both ends included."""
        return (self.end - self.start).days + 1


def month_period(month: str) -> tuple[date, date]:
    """First and last day of ``YYYY-MM``; raises :class:`RolloutError`."""
    match = _MONTH.match(month)
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise RolloutError(f"month {month!r} is not a month YYYY-MM (e.g. 2026-11)")
    year, mon = int(match.group(1)), int(match.group(2))
    return date(year, mon, 1), date(year, mon, calendar.monthrange(year, mon)[1])


def previous_month(today: date) -> str:
    """``YYYY-MM`` of the month before ``today``: the one due by the 5th."""
    return f"{today.replace(day=1) - timedelta(days=1):%Y-%m}"


def _period(
    month: str | None, start: date | None, end: date | None, today: date
) -> tuple[date, date]:
    if month is not None:
        if start is not None or end is not None:
            raise RolloutError("give either a month or a start and end date, not both")
        return month_period(month)
    if start is None and end is None:
        return month_period(previous_month(today))
    if start is None or end is None:
        raise RolloutError("give both a start and an end date")
    if start > end:
        raise RolloutError(f"start {start} is after end {end}")
    if (end - start).days >= MAX_DAYS:
        raise RolloutError(f"{start}..{end} is longer than {MAX_DAYS} days")
    return start, end


async def rollout_report(
    db: aiosqlite.Connection,
    *,
    month: str | None = None,
    start: date | None = None,
    end: date | None = None,
    now: datetime | None = None,
    tz: ZoneInfo | None = None,
) -> RolloutReport:
    """Build the report for ``month`` (``YYYY-MM``) or for ``start``..``end`` inclusive.

    Without either it reports the previous month. ``now`` (default: the clock)
    decides which sites count as active in the last 24 hours.
    """
    now = now or datetime.now(UTC)
    zone = tz or ZoneInfo(DEFAULT_TZ)
    first, last = _period(month, start, end, now.astimezone(zone).date())
    sites = await _sites(db)
    active = await _active_sites(db, now - timedelta(hours=24))
    daily = await _daily(db, first, last, zone)
    for site_id in sorted((active | {k[1] for k in daily}) - sites.keys()):
        sites[site_id] = _Site(site_id, "", "", "", UNREGISTERED, registered=False)
    rows = [
        SiteDayRow(day, s.site_id, s.name, s.province, s.district, s.category, *counts)
        for (day, site_id), counts in sorted(daily.items())
        for s in [sites[site_id]]
    ]
    days = (last - first).days + 1
    return RolloutReport(first, last, now, zone.key, _areas(sites, active, rows, days), rows)


@dataclass(frozen=True, slots=True)
class _Site:
    site_id: str
    name: str
    province: str
    district: str
    category: str
    registered: bool = True

    @property
    def area(self) -> tuple[str, str, str]:
        return self.province, self.district, self.category


async def _sites(db: aiosqlite.Connection) -> dict[str, _Site]:
    async with db.execute("SELECT site_id, name, province, district, category FROM sites") as cur:
        rows = await cur.fetchall()
    return {str(r[0]): _Site(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows}


async def _active_sites(db: aiosqlite.Connection, since: datetime) -> set[str]:
    """Sites with a device whose state or a check-in reached the gateway since ``since``."""
    cutoff = utc_iso(since)
    async with db.execute(
        "SELECT site_id FROM devices WHERE last_seen >= ? UNION "
        "SELECT DISTINCT site_id FROM checkins WHERE received_at >= ?",
        (cutoff, cutoff),
    ) as cur:
        return {str(r[0]) for r in await cur.fetchall()}


# Check-ins stored before migration 0003 have scanned_s 0: their ISO time decides instead.
_SCANNED_S = (
    "CASE WHEN scanned_s > 0 THEN scanned_s ELSE CAST(strftime('%s', scanned_at) AS INTEGER) END"
)


async def _daily(
    db: aiosqlite.Connection, first: date, last: date, zone: ZoneInfo
) -> dict[tuple[date, str], tuple[int, int]]:
    """(local day, site) -> (check-ins, accepted), by scan time."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    # Each local day as [start, end) in epoch seconds: exact across offset changes.
    bounds = [int(datetime.combine(d, time(), zone).timestamp()) for d in [*days, last + ONE_DAY]]
    day_of, params = _day_index(bounds)
    async with db.execute(
        f"SELECT {day_of} AS i, site_id, count(*), sum(accepted) FROM "
        f"(SELECT site_id, accepted, {_SCANNED_S} AS s FROM checkins NOT INDEXED "
        "WHERE scanned_at >= ? AND scanned_at < ?) WHERE s >= ? AND s < ? GROUP BY i, site_id",
        [*params, _utc(bounds[0]), _utc(bounds[-1]), bounds[0], bounds[-1]],
    ) as cur:
        rows = await cur.fetchall()
    return {(days[int(i)], str(site)): (int(n), int(ok)) for i, site, n, ok in rows}


def _day_index(bounds: list[int]) -> tuple[str, list[int]]:
    """SQL giving the index of the day that holds ``s``, and its parameters."""
    if all(b - a == DAY_S for a, b in pairwise(bounds)):
        return "(s - ?) / 86400", [bounds[0]]
    # A clock change in the period: days of 23 or 25 hours, so look each boundary up.
    cases = " ".join(f"WHEN s < ? THEN {i}" for i in range(len(bounds) - 2))
    return f"CASE {cases} ELSE {len(bounds) - 2} END", bounds[1:-1]


def _utc(epoch_s: int) -> str:
    return utc_iso(datetime.fromtimestamp(epoch_s, UTC))


def _areas(
    sites: dict[str, _Site], active: set[str], daily: list[SiteDayRow], days: int
) -> list[AreaRow]:
    registered: Counter[tuple[str, str, str]] = Counter()
    live: Counter[tuple[str, str, str]] = Counter()
    for site in sites.values():
        registered[site.area] += site.registered
        live[site.area] += site.site_id in active
    checkins: Counter[tuple[str, str, str]] = Counter()
    accepted: Counter[tuple[str, str, str]] = Counter()
    for row in daily:
        area = sites[row.site_id].area
        checkins[area] += row.checkins
        accepted[area] += row.accepted
    return [
        AreaRow(
            *area,
            category_label=_label(area[2]),
            registered_sites=registered[area],
            active_sites_24h=live[area],
            checkins=checkins[area],
            accepted=accepted[area],
            checkins_per_day=round(checkins[area] / days, 2),
            acceptance_rate=round(accepted[area] / checkins[area], 4) if checkins[area] else None,
        )
        for area in sorted(registered)
    ]


def _label(category: str) -> str:
    if category == UNREGISTERED:
        return "Chưa đăng ký"
    try:
        return DEFAULTS[Category(category)].label_vi
    except ValueError:
        return category


# --- output ------------------------------------------------------------------------------

_AREA_COLUMNS = (
    ("province", "province"), ("district", "district"), ("category", "category"),
    ("category_label", "category (vi)"), ("registered_sites", "registered sites"),
    ("active_sites_24h", "active sites (24 h)"), ("checkins", "check-ins"),
    ("accepted", "accepted"), ("checkins_per_day", "check-ins per day"),
    ("acceptance_rate", "acceptance rate"),
)  # fmt: skip
_DAILY_COLUMNS = (
    ("day", "day"), ("site_id", "site id"), ("site_name", "site"), ("province", "province"),
    ("district", "district"), ("category", "category"), ("checkins", "check-ins"),
    ("accepted", "accepted"),
)  # fmt: skip


def _cells(row: AreaRow | SiteDayRow, columns: tuple[tuple[str, str], ...]) -> tuple[Value, ...]:
    values = [getattr(row, key) for key, _ in columns]
    return tuple(v.isoformat() if isinstance(v, date) else v for v in values)


def report_sheets(report: RolloutReport) -> list[Sheet]:
    """The report's two tables: per area, and per site and day."""
    return [
        Sheet(
            "rollout",
            tuple(h for _, h in _AREA_COLUMNS),
            [_cells(r, _AREA_COLUMNS) for r in report.areas],
        ),
        Sheet(
            "daily",
            tuple(h for _, h in _DAILY_COLUMNS),
            [_cells(r, _DAILY_COLUMNS) for r in report.daily],
        ),
    ]


def report_json(report: RolloutReport) -> dict[str, Any]:
    """The report as JSON-ready data."""
    return {
        "period": {
            "start": report.start.isoformat(),
            "end": report.end.isoformat(),
            "days": report.days,
        },
        "generated_at": utc_iso(report.generated_at),
        "timezone": report.timezone,
        "areas": [_json_row(r, _AREA_COLUMNS) for r in report.areas],
        "daily": [_json_row(r, _DAILY_COLUMNS) for r in report.daily],
    }


def _json_row(row: AreaRow | SiteDayRow, columns: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return dict(zip((k for k, _ in columns), _cells(row, columns), strict=True))


def write_report(report: RolloutReport, fmt: Format, out: Path) -> list[Path]:
    """Write the report; returns the files written.

    CSV writes two files: the summary to ``out``, the daily rows to ``<name>-daily.csv``.
    """
    if fmt == "json":
        text = json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n"
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ExportError(f"cannot write {out}: {exc}") from None
        return [out]
    areas, daily = report_sheets(report)
    if fmt == "xlsx":
        write_workbook(out, [areas, daily])
        return [out]
    daily_out = out.with_name(f"{out.stem}-daily{out.suffix or '.csv'}")
    write_sheet_csv(out, areas)
    write_sheet_csv(daily_out, daily)
    return [out, daily_out]
