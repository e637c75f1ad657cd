"""Trip schedules of vehicles from CSV files.

A schedule file has a header row with the columns ``vehicle_site_id,start,end``
(in any order; other columns are refused). Times are ISO 8601 with a UTC offset
(``2024-05-03T06:30:00+07:00``) or local wall-clock time ``YYYY-MM-DD HH:MM``
in the gateway's time zone.

A schedule is imported all or nothing: a file with any bad row is refused
whole, and every bad row is reported by file, row and field. Importing half a
schedule would leave stays bounded by the wrong trips without anyone noticing.
Rows are numbered as a spreadsheet shows them: the header is row 1.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from broker.topics import DEVICE_ID_PATTERN
from gateway.registry import ScheduleError, TripRow

logger = logging.getLogger(__name__)

COLUMNS = ("vehicle_site_id", "start", "end")
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
# A year of a busy route, and a bound on what one import holds in memory.
MAX_ROWS = 100_000
_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")
_SITE_ID = re.compile(DEVICE_ID_PATTERN)


def parse_time(text: str, tz: ZoneInfo) -> int:
    """Epoch seconds of an ISO 8601 time with offset, or of local 'YYYY-MM-DD HH:MM' in ``tz``.

    Raises ``ValueError`` naming what is wrong.
    """
    text = text.strip()
    if _LOCAL.match(text):
        return _local_time(datetime.strptime(text, "%Y-%m-%d %H:%M"), tz)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write ISO 8601 with offset "
            "(2024-05-03T06:30:00+07:00) or local 'YYYY-MM-DD HH:MM'"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add one or write local 'YYYY-MM-DD HH:MM'")
    return int(moment.timestamp())


def _local_time(naive: datetime, tz: ZoneInfo) -> int:
    early, late = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if early.utcoffset() != late.utcoffset():
        # A clock change makes the wall-clock time either skipped or repeated.
        raise ValueError(f"{naive:%Y-%m-%d %H:%M} is skipped or repeated in {tz.key}")
    return int(early.timestamp())


def read_schedule_csv(path: Path, tz: ZoneInfo | None = None) -> list[TripRow]:
    """Every trip of a schedule file; raises :class:`ScheduleError` listing every bad row.

    ``tz`` is the zone of local times, Asia/Ho_Chi_Minh unless given.
    """
    zone = tz or ZoneInfo(DEFAULT_TIMEZONE)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = list(itertools.islice(csv.reader(handle, strict=True), MAX_ROWS + 2))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScheduleError(f"schedule {path}", [f"{path}: cannot read: {exc}"]) from None
    if len(records) > MAX_ROWS + 1:
        raise ScheduleError(f"schedule {path}", [f"{path}: more than {MAX_ROWS} rows; split it"])
    columns = _columns(path, records[0] if records else [])
    trips, problems = _read_rows(path, records, columns, zone)
    if problems:
        raise ScheduleError(f"schedule {path}", problems)
    logger.info("schedule %s: %d trips read", path, len(trips))
    return trips


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    names = [name.strip() for name in header]
    if sorted(names) != sorted(COLUMNS):
        raise ScheduleError(
            f"schedule {path}",
            [f"{path} row 1: header {','.join(names) or '(none)'} should be {','.join(COLUMNS)}"],
        )
    return {name: names.index(name) for name in COLUMNS}


def _read_rows(
    path: Path, records: list[list[str]], columns: dict[str, int], tz: ZoneInfo
) -> tuple[list[TripRow], list[str]]:
    trips: list[TripRow] = []
    problems: list[str] = []
    for number, record in enumerate(records[1:], start=2):
        if not record:  # a blank line
            continue
        origin = f"{path} row {number}"
        if len(record) != len(COLUMNS):
            problems.append(f"{origin}: {len(record)} fields where {len(COLUMNS)} were expected")
            continue
        trip, row_problems = _row(origin, {c: record[i] for c, i in columns.items()}, tz)
        problems += row_problems
        if trip is not None:
            trips.append(trip)
    return trips, problems


def _row(origin: str, record: dict[str, str], tz: ZoneInfo) -> tuple[TripRow | None, list[str]]:
    site_id = record["vehicle_site_id"].strip()
    problems = []
    if not _SITE_ID.match(site_id):
        problems.append(f"{origin}, field vehicle_site_id: {site_id!r} is not a site id")
    times: dict[str, int] = {}
    for field in ("start", "end"):
        try:
            times[field] = parse_time(record[field], tz)
        except ValueError as exc:
            problems.append(f"{origin}, field {field}: {exc}")
    if len(times) == 2 and times["end"] <= times["start"]:
        problems.append(f"{origin}, field end: the trip ends at or before it starts")
    if problems:
        return None, problems
    return TripRow(site_id, times["start"], times["end"], origin), []
