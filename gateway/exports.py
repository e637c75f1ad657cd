"""Exports for the health department: contacts of a trace, people at a venue, a site's check-ins.

Rows carry pseudonyms and initials; names and ID numbers only when the
caller resolved identities with the authority's key (:mod:`gateway.identity`).
Times are local wall-clock times of the configured zone, 'YYYY-MM-DD HH:MM'.

CSV files are UTF-8 with a byte-order mark: without it Excel reads a CSV in
the local code page and Vietnamese names come out garbled. Excel still turns
12-digit ID numbers in a CSV into numbers (losing leading zeros); the XLSX
export keeps every cell as typed, so prefer it for spreadsheets.

Both writers are safe against formula injection (OWASP "CSV Injection"): a
text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
is written as inert text: in CSV prefixed with a single quote, in XLSX as an
explicit string cell with Excel's quote prefix.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosqlite
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from gateway.errors import ConfigError, GatewayError
from gateway.identity import Identities, Identity
from gateway.stays import Stay
from gateway.tracing import Contact, Exposed, TraceResult

logger = logging.getLogger(__name__)

Cell = str | int
Json = dict[str, Any]

# Leading characters that make Excel, LibreOffice or Sheets evaluate a cell.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(GatewayError):
    """An export cannot be written, or its arguments are wrong (time, zone, site)."""


# --- times -------------------------------------------------------------------------------


def zone_info(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ConfigError if this system does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r} (an IANA name like 'Asia/Ho_Chi_Minh')"
        ) from None


def local_text(epoch_s: int, tz: ZoneInfo) -> str:
    """An instant as local wall-clock text for people: '2021-07-15 08:30'."""
    return datetime.fromtimestamp(epoch_s, tz).strftime("%Y-%m-%d %H:%M")


def local_iso(epoch_s: int, tz: ZoneInfo) -> str:
    """An instant as ISO 8601 with the local offset, for machines: '2021-07-15T08:30+07:00'."""
    return datetime.fromtimestamp(epoch_s, tz).isoformat(timespec="minutes")


def parse_local(text: str, tz: ZoneInfo) -> int:
    """Epoch seconds of an ISO date or date-time; without an offset it is local time in ``tz``."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ExportError(f"not an ISO date or time: {text!r} (e.g. 2021-07-15T08:30)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


# --- places ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """A site as the health department locates it."""

    site_id: str
    name: str = ""
    category: str = ""
    address: str = ""
    province: str = ""
    district: str = ""
    commune: str = ""

    def as_json(self) -> Json:
        return {
            "site_id": self.site_id,
            "place": self.name,
            "category": self.category,
            "address": self.address,
            "province": self.province,
            "district": self.district,
            "commune": self.commune,
        }


@dataclass(frozen=True, slots=True)
class Places:
    """Every site and zone name of the database (a few hundred rows at most)."""

    sites: dict[str, Place]
    zones: dict[tuple[str, str], str]

    @classmethod
    async def load(cls, db: aiosqlite.Connection) -> Places:
        async with db.execute(
            "SELECT site_id, name, category, address, province, district, commune FROM sites"
        ) as cur:
            sites = {str(r[0]): Place(*(str(v) for v in r)) for r in await cur.fetchall()}
        async with db.execute("SELECT site_id, zone_id, name FROM zones") as cur:
            zones = {(str(s), str(z)): str(n) for s, z, n in await cur.fetchall()}
        return cls(sites, zones)

    def site(self, site_id: str) -> Place:
        # A site missing from the table (check-ins before it was described) still exports.
        return self.sites.get(site_id) or Place(site_id)

    def zone(self, site_id: str, zone_id: str) -> str:
        return self.zones.get((site_id, zone_id)) or zone_id


# --- rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """A sheet to write: its title, header and rows of cells."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True, slots=True)
class ExposureRow:
    """One contact of an exposed person, or one stay at a venue, as the department reads it.

    ``name`` is the decrypted name, else the initials; ``id_number`` is empty
    unless decrypted. ``level`` is F1 or F2 (empty for a venue's visitors);
    ``via`` is the subject met: the index case for an F1, an F1 for an F2.
    """

    HEADER: ClassVar[tuple[str, ...]] = (
        "subject", "name", "ID number", "level", "place", "site ID", "address", "province",
        "district", "commune", "zone", "from", "to", "overlap (min)", "certainty", "via",
    )  # fmt: skip

    subject: str
    name: str
    id_number: str
    level: str
    place: str = ""
    site_id: str = ""
    address: str = ""
    province: str = ""
    district: str = ""
    commune: str = ""
    zone: str = ""
    start: str = ""
    end: str = ""
    overlap_min: int = 0
    certainty: str = ""
    via: str = ""


@dataclass(frozen=True, slots=True)
class CheckinRow:
    """One check-in of a site, as the department reads it."""

    HEADER: ClassVar[tuple[str, ...]] = (
        "time", "device", "gate", "zone", "direction", "kind", "accepted", "reason",
        "clock synced", "subject", "name", "ID number",
    )  # fmt: skip

    time: str
    device: str
    gate: str
    zone: str
    direction: str
    kind: str
    accepted: str
    reason: str
    clock_synced: str
    subject: str
    name: str
    id_number: str


def exposure_table(rows: Iterable[ExposureRow], title: str = "contacts") -> Table:
    return Table(title, ExposureRow.HEADER, tuple(astuple(r) for r in rows))


def checkin_table(rows: Iterable[CheckinRow], title: str = "check-ins") -> Table:
    return Table(title, CheckinRow.HEADER, tuple(astuple(r) for r in rows))


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


@dataclass(frozen=True, slots=True)
class Exporter:
    """Turns tracing results and check-ins into rows and JSON for the health department."""

    db: aiosqlite.Connection
    identities: Identities
    places: Places
    tz: ZoneInfo

    @classmethod
    async def load(cls, db: aiosqlite.Connection, identities: Identities, tz: ZoneInfo) -> Exporter:
        return cls(db, identities, await Places.load(db), tz)

    def _row(
        self,
        who: Identity,
        level: str,
        part: Contact | Stay,
        overlap_s: int,
        how: str,
        via: str = "",
    ) -> ExposureRow:
        place = self.places.site(part.site_id)
        return ExposureRow(
            who.subject, who.shown_name, who.id_number, level, place.name, place.site_id,
            place.address, place.province, place.district, place.commune,
            self.places.zone(part.site_id, part.zone_id), local_text(part.start_s, self.tz),
            local_text(part.end_s, self.tz), overlap_s // 60, how, via,
        )  # fmt: skip

    async def trace_rows(self, result: TraceResult) -> list[ExposureRow]:
        """One row per contact of every F1 and F2 (a person without contacts: one blank row)."""
        rows: list[ExposureRow] = []
        for level, exposed in _levels(result):
            who = await self.identities.of(exposed.subject)
            rows += [
                self._row(who, level, c, c.overlap_s, c.certainty, c.via) for c in exposed.contacts
            ]
            if not exposed.contacts:
                total = exposed.total_overlap_s // 60
                rows.append(
                    ExposureRow(
                        who.subject, who.shown_name, who.id_number, level, overlap_min=total
                    )
                )
        return rows

    async def venue_rows(
        self, stays: Sequence[Stay], *, from_s: int, until_s: int
    ) -> list[ExposureRow]:
        """One row per stay; overlap is with [from, until), 0 for stays only within the margin."""
        rows = []
        for stay in stays:
            who = await self.identities.of(stay.subject)
            overlap = _overlap(stay.start_s, stay.end_s, from_s, until_s)
            rows.append(self._row(who, "", stay, overlap, stay.end_rule))
        return rows

    async def checkin_rows(self, site_id: str, *, from_s: int, until_s: int) -> list[CheckinRow]:
        """Every check-in of ``site_id`` scanned in [from, until), oldest first."""
        async with self.db.execute(
            "SELECT c.scanned_s, c.device_id, coalesce(d.gate, ''), coalesce(d.zone_id, ''), "
            "c.direction, c.kind, c.accepted, c.reason, c.clock_synced, c.subject, c.initials, "
            "c.sealed FROM checkins c LEFT JOIN devices d ON d.device_id = c.device_id "
            "WHERE c.site_id = ? AND c.scanned_s >= ? AND c.scanned_s < ? "
            "ORDER BY c.scanned_s, c.id",
            (site_id, from_s, until_s),
        ) as cur:
            found = await cur.fetchall()
        return [self._checkin_row(site_id, tuple(r)) for r in found]

    def _checkin_row(self, site_id: str, r: tuple[Any, ...]) -> CheckinRow:
        scanned_s, device, gate, zone, direction, kind, accepted, reason, synced = r[:9]
        who = self.identities.identify(r[9], str(r[10]), r[11])
        return CheckinRow(
            local_text(int(scanned_s), self.tz), str(device), str(gate),
            self.places.zone(site_id, str(zone)), str(direction), str(kind), _yes(accepted),
            str(reason), _yes(synced), who.subject, who.shown_name, who.id_number,
        )  # fmt: skip

    # --- JSON ---------------------------------------------------------------------------

    def identity_json(self, who: Identity) -> Json:
        """A subject for JSON: pseudonym and initials; name, ID and birth date only if opened."""
        out: Json = {"subject": who.subject, "initials": who.initials}
        if who.decrypted:
            out |= {
                "name": who.name,
                "id_number": who.id_number,
                "date_of_birth": who.date_of_birth,
            }
        return out

    def window_json(self, from_s: int, until_s: int) -> Json:
        return {
            "from": local_iso(from_s, self.tz),
            "until": local_iso(until_s, self.tz),
            "timezone": self.tz.key,
        }

    def _when_json(self, part: Contact | Stay) -> Json:
        return {
            **self.places.site(part.site_id).as_json(),
            "zone": self.places.zone(part.site_id, part.zone_id),
            "trip_id": part.trip_id,
            "from": local_iso(part.start_s, self.tz),
            "to": local_iso(part.end_s, self.tz),
        }

    async def trace_json(self, result: TraceResult, *, levels: int) -> Json:
        """The whole trace: index, window, F1 and F2 with their contacts."""
        out: Json = {
            "index": self.identity_json(await self.identities.of(result.index)),
            "window": self.window_json(result.since_s, result.until_s),
            "levels": levels,
        }
        for name, group in (("f1", result.f1), ("f2", result.f2)):
            out[name] = [await self._exposed_json(e) for e in group]
        return out

    async def _exposed_json(self, exposed: Exposed) -> Json:
        who = await self.identities.of(exposed.subject)
        contacts = [
            {
                **self._when_json(c),
                "overlap_min": c.overlap_s // 60,
                "via": c.via,
                "certainty": c.certainty,
            }
            for c in exposed.contacts
        ]
        return {
            **self.identity_json(who),
            "level": f"F{exposed.level}",
            "total_overlap_min": exposed.total_overlap_s // 60,
            "contacts": contacts,
        }

    async def venue_json(
        self, site_id: str, stays: Sequence[Stay], *, from_s: int, until_s: int, margin_s: int
    ) -> Json:
        """Everyone present at a site in [from - margin, until + margin), one entry per stay."""
        people = []
        for stay in stays:
            who = await self.identities.of(stay.subject)
            overlap = _overlap(stay.start_s, stay.end_s, from_s, until_s)
            people.append(
                {
                    **self.identity_json(who),
                    **self._when_json(stay),
                    "overlap_min": overlap // 60,
                    "certainty": stay.end_rule,
                }
            )
        return {
            "site": self.places.site(site_id).as_json(),
            "window": self.window_json(from_s, until_s),
            "margin_min": margin_s // 60,
            "people": people,
        }


def checkins_json(site: Place, window: Json, rows: Sequence[CheckinRow]) -> Json:
    """A site's check-ins for JSON output (names and ID numbers empty unless decrypted)."""
    keys = [h.lower().replace(" ", "_") for h in CheckinRow.HEADER]
    return {
        "site": site.as_json(),
        "window": window,
        "checkins": [dict(zip(keys, astuple(r), strict=True)) for r in rows],
    }


def _levels(result: TraceResult) -> Iterable[tuple[str, Exposed]]:
    for exposed in result.f1:
        yield "F1", exposed
    for exposed in result.f2:
        yield "F2", exposed


def _overlap(start_s: int, end_s: int, from_s: int, until_s: int) -> int:
    return max(0, min(end_s, until_s) - max(start_s, from_s))


# --- writers -----------------------------------------------------------------------------


def is_formula_like(text: str) -> bool:
    """True if a spreadsheet could take ``text`` for a formula (OWASP CSV injection list)."""
    return text.startswith(FORMULA_START)


def csv_cell(value: Cell) -> Cell:
    """A cell made inert for CSV: formula-like text gets a leading single quote."""
    if isinstance(value, str) and is_formula_like(value):
        return "'" + value
    return value


def write_csv(table: Table, dest: Path | TextIO) -> None:
    """Write ``table`` as CSV (UTF-8 with BOM, CRLF lines) to a file path or a text stream."""
    if isinstance(dest, Path):
        try:
            with dest.open("w", encoding="utf-8-sig", newline="") as out:
                _write_csv(table, out)
        except OSError as exc:
            raise ExportError(f"cannot write {dest}: {exc}") from None
    else:
        dest.write("\ufeff")
        _write_csv(table, dest)


def _write_csv(table: Table, out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(table.header)
    writer.writerows([csv_cell(v) for v in row] for row in table.rows)


def csv_text(table: Table) -> str:
    """The CSV of ``table`` as text (with its BOM), e.g. for a web response."""
    buffer = io.StringIO(newline="")
    write_csv(table, buffer)
    return buffer.getvalue()


def write_xlsx(table: Table, path: Path) -> None:
    """Write ``table`` as an Excel workbook: bold frozen header, sized columns, text kept text."""
    book = Workbook()
    sheet = book.active
    sheet.title = _sheet_title(table.title)
    sheet.append(list(table.header))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for r, row in enumerate(table.rows, start=2):
        for c, value in enumerate(row, start=1):
            _set_cell(sheet.cell(row=r, column=c), value)
    _size_columns(sheet, table)
    sheet.freeze_panes = "A2"
    try:
        book.save(path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from None


def _set_cell(cell: Any, value: Cell) -> None:
    if isinstance(value, int):
        cell.value = value
        return
    # openpyxl refuses control characters; a damaged name must not abort the export.
    text = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    # XML reads a bare CR back as LF; write what will be read.
    cell.value = text.replace("\r\n", "\n").replace("\r", "\n")
    if is_formula_like(value) or cell.data_type != "s":
        # A string cell is never evaluated; the quote prefix keeps it text when edited.
        cell.data_type = "s"
        cell.quotePrefix = True


def _size_columns(sheet: Any, table: Table) -> None:
    for c, title in enumerate(table.header):
        longest = max([len(title), *(len(str(row[c])) for row in table.rows)])
        sheet.column_dimensions[get_column_letter(c + 1)].width = min(max(longest, 6), 60) + 2


def _sheet_title(title: str) -> str:
    # Excel forbids these characters in sheet names and caps them at 31.
    cleaned = "".join("_" if ch in "[]:*?/\\" else ch for ch in title).strip("'")
    return cleaned[:31] or "export"
