"""Exports: inert formulas, intact Vietnamese names, local times, identities only with the key."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiosqlite
import pytest
from openpyxl import load_workbook

from broker.messages import PersonalFields
from broker.sealing import Opener, Sealer, new_authority_key
from device.decision import subject_key
from gateway.audit import connect
from gateway.errors import ConfigError
from gateway.exports import (
    Exporter,
    ExportError,
    ExposureRow,
    Table,
    checkin_table,
    exposure_table,
    local_text,
    parse_local,
    write_csv,
    write_xlsx,
    zone_info,
)
from gateway.identity import Identities, pseudonym, read_subject_key
from gateway.stays import Stay
from gateway.store import SQLiteStore
from gateway.tracing import Contact, Exposed, TraceResult

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
HOSTILE = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
NAMES = ["Nguyễn Thị Hồng Nhung", "Đặng Văn Đức"]
KEY = b"province-key-0123456789"
T0 = int(datetime(2021, 7, 15, 1, 0, tzinfo=UTC).timestamp())  # 08:00 in Hồ Chí Minh City


def table_of(names: list[str]) -> Table:
    rows = [ExposureRow(f"{i:032x}", name, "", "F1", overlap_min=i) for i, name in enumerate(names)]
    return exposure_table(rows)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


def test_csv_makes_formula_like_text_inert_and_leaves_the_rest() -> None:
    buffer = io.StringIO(newline="")
    write_csv(table_of([*HOSTILE, "Bình thường", "a=b"]), buffer)
    rows = list(csv.reader(io.StringIO(buffer.getvalue().removeprefix("\ufeff"), newline="")))
    assert rows[0] == list(ExposureRow.HEADER)
    assert [r[1] for r in rows[1:]] == ["'" + h for h in HOSTILE] + ["Bình thường", "a=b"]
    assert rows[3][13] == "2", "numbers stay numbers"


def test_csv_file_is_utf8_with_bom_and_keeps_vietnamese_names(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    write_csv(table_of(NAMES), path)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert "Nguyễn Thị Hồng Nhung".encode() in raw
    assert [r[1] for r in read_csv(path)[1:]] == NAMES


def test_xlsx_writes_formula_like_text_as_literal_strings(tmp_path: Path) -> None:
    path = tmp_path / "contacts.xlsx"
    write_xlsx(table_of([*HOSTILE, *NAMES]), path)
    sheet = load_workbook(path).active
    cells = [sheet.cell(row=r, column=2) for r in range(2, 2 + len(HOSTILE) + len(NAMES))]
    # A CR is written as LF: XML would turn it into one when the file is read anyway.
    assert [c.value for c in cells] == [h.replace("\r", "\n") for h in HOSTILE] + NAMES
    assert {c.data_type for c in cells} == {"s"}, "no cell may be a formula"
    assert all(c.quotePrefix for c in cells[: len(HOSTILE)])
    assert sheet.cell(row=2, column=14).value == 0 and sheet.cell(row=2, column=14).data_type == "n"


def test_xlsx_header_is_bold_frozen_and_columns_sized(tmp_path: Path) -> None:
    path = tmp_path / "contacts.xlsx"
    write_xlsx(table_of(NAMES), path)
    sheet = load_workbook(path).active
    assert [c.value for c in sheet[1]] == list(ExposureRow.HEADER)
    assert all(c.font.bold for c in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.column_dimensions["B"].width >= len("Nguyễn Thị Hồng Nhung")


def test_xlsx_replaces_control_characters_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "c.xlsx"
    write_xlsx(table_of(["An\x01"]), path)
    assert load_workbook(path).active.cell(row=2, column=2).value == "An\ufffd"


def test_local_times_and_parsing_use_the_configured_zone() -> None:
    assert local_text(T0, TZ) == "2021-07-15 08:00"
    assert parse_local("2021-07-15T08:00", TZ) == T0
    assert parse_local("2021-07-15 08:00", TZ) == T0
    assert parse_local("2021-07-15T01:00:00+00:00", TZ) == T0
    with pytest.raises(ExportError):
        parse_local("15/07/2021", TZ)
    with pytest.raises(ConfigError):
        zone_info("Mars/Olympus")


@pytest.mark.parametrize("kind,id_number", [("cccd", "001203004567"), ("cccd", " 079099000001 ")])
def test_pseudonym_is_the_devices_subject_key(kind: str, id_number: str) -> None:
    assert pseudonym(KEY, kind, id_number) == subject_key(KEY, kind, id_number)
    assert pseudonym(KEY, kind, id_number) != pseudonym(KEY + b"x", kind, id_number)


def test_subject_key_file_must_hold_a_real_key(tmp_path: Path) -> None:
    good, short = tmp_path / "good.key", tmp_path / "short.key"
    good.write_bytes(KEY + b"\n")
    short.write_bytes(b"tiny")
    assert read_subject_key(good) == KEY
    with pytest.raises(ConfigError):
        read_subject_key(short)


# --- rows from a database -----------------------------------------------------------------


PEOPLE = {  # id number -> (name, initials)
    "001203004567": ("Nguyễn Thị Hồng Nhung", "N. T. H. Nhung"),
    "079099000001": ('=HYPERLINK("http://x","y")', "=. Y"),
    "001099000002": ("Đặng Văn Đức", "Đ. V. Đức"),
}


def subj(id_number: str) -> str:
    return pseudonym(KEY, "cccd", id_number)


@dataclass
class Db:
    conn: aiosqlite.Connection
    key_file: Path
    other_key_file: Path


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    path = tmp_path / "tracing.db"
    await (await SQLiteStore.open(path)).close()
    private, public = new_authority_key()
    other, _ = new_authority_key()
    (tmp_path / "authority.key").write_text(private)
    (tmp_path / "other.key").write_text(other)
    conn = await connect(path)
    await fill(conn, Sealer(public))
    yield Db(conn, tmp_path / "authority.key", tmp_path / "other.key")
    await conn.close()


async def fill(conn: aiosqlite.Connection, sealer: Sealer) -> None:
    await conn.execute(
        "INSERT INTO sites VALUES ('quan-pho', 'Quán Phở Hà Nội', 'restaurant', "
        "'12 Lê Lợi', 'TP Hồ Chí Minh', 'Quận 1', 'Phường Bến Nghé', 3600, NULL)"
    )
    await conn.execute("INSERT INTO zones VALUES ('quan-pho', 'z1', 'Tầng 2')")
    await conn.execute(
        "INSERT INTO devices (device_id, site_id, gate, direction, zone_id) "
        "VALUES ('gate-1', 'quan-pho', 'Cổng chính', 'in', 'z1')"
    )
    seq = 0
    for id_number, (name, short) in PEOPLE.items():
        for offset in (0, 600):  # an older and a newer check-in: the newer one is opened
            seq += 1
            fields = PersonalFields(id_number=id_number, name=name if offset else "old")
            await conn.execute(
                "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
                "direction, kind, accepted, reason, subject, sealed, initials, scanned_s) VALUES "
                "('gate-1', 's', ?, 'quan-pho', '', '', 'in', 'cccd', 1, 'valid', ?, ?, ?, ?)",
                (seq, subj(id_number), sealer.seal(fields), short, T0 + offset + seq),
            )
    await conn.execute(
        "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
        "direction, kind, accepted, reason, subject, scanned_s) "
        "VALUES ('gate-1', 's', 99, 'quan-pho', '', '', 'in', 'unrecognized', 0, "
        "'unrecognized', NULL, ?)",
        (T0 + 3000,),
    )


def trace_result() -> TraceResult:
    index, f1, f2 = (subj(i) for i in PEOPLE)
    contact = Contact(index, "quan-pho", "z1", None, T0, T0 + 1800, 1799, "index", "exit")
    later = Contact(f1, "quan-pho", "z1", None, T0 + 3600, T0 + 5400, 1200, f1, "default_stay")
    return TraceResult(
        index,
        T0 - 86400,
        T0 + 86400,
        (Exposed(f1, 1, 1799, (contact,)),),
        (Exposed(f2, 2, 1200, (later,)),),
    )


async def test_trace_rows_without_the_key_show_initials_only(db: Db) -> None:
    exporter = await Exporter.load(db.conn, Identities(db.conn), TZ)
    rows = await exporter.trace_rows(trace_result())
    f1, f2 = rows
    assert (f1.level, f1.name, f1.id_number) == ("F1", "=. Y", "")
    assert (f2.level, f2.name, f2.id_number) == ("F2", "Đ. V. Đức", "")
    assert (f1.place, f1.address, f1.province, f1.district, f1.commune, f1.zone) == (
        "Quán Phở Hà Nội", "12 Lê Lợi", "TP Hồ Chí Minh", "Quận 1", "Phường Bến Nghé", "Tầng 2",
    )  # fmt: skip
    assert (f1.start, f1.end, f1.overlap_min, f1.certainty) == (
        "2021-07-15 08:00", "2021-07-15 08:30", 29, "exit",
    )  # fmt: skip
    assert (f2.start, f2.overlap_min, f2.certainty) == ("2021-07-15 09:00", 20, "default_stay")
    assert (f1.via, f2.via) == ("index", subj("079099000001")), "an F2 row names the F1 met"


async def test_trace_rows_with_the_key_show_the_latest_sealed_identity(
    db: Db, tmp_path: Path
) -> None:
    identities = Identities(db.conn, Opener.from_file(db.key_file))
    exporter = await Exporter.load(db.conn, identities, TZ)
    f1, f2 = await exporter.trace_rows(trace_result())
    assert (f1.name, f1.id_number) == ('=HYPERLINK("http://x","y")', "079099000001")
    assert (f2.name, f2.id_number) == ("Đặng Văn Đức", "001099000002")
    assert identities.opened == {subj("079099000001"), subj("001099000002")}

    path = tmp_path / "trace.xlsx"
    write_xlsx(exposure_table(await exporter.trace_rows(trace_result())), path)
    sheet = load_workbook(path).active
    name = sheet.cell(row=2, column=2)
    assert (name.value, name.data_type) == ('=HYPERLINK("http://x","y")', "s")
    assert sheet.cell(row=3, column=2).value == "Đặng Văn Đức"
    assert sheet.cell(row=3, column=3).value == "001099000002", "ID numbers keep leading zeros"


async def test_trace_json_names_only_when_decrypted(db: Db) -> None:
    plain = await Exporter.load(db.conn, Identities(db.conn), TZ)
    data = await plain.trace_json(trace_result(), levels=2)
    assert data["index"] == {"subject": subj("001203004567"), "initials": "N. T. H. Nhung"}
    assert "name" not in data["f1"][0] and "id_number" not in data["f2"][0]
    opened = await Exporter.load(db.conn, Identities(db.conn, Opener.from_file(db.key_file)), TZ)
    data = await opened.trace_json(trace_result(), levels=2)
    assert data["index"]["name"] == "Nguyễn Thị Hồng Nhung"
    assert data["f2"][0]["id_number"] == "001099000002"
    assert data["f1"][0]["contacts"][0]["from"] == "2021-07-15T08:00+07:00"
    assert data["f1"][0]["total_overlap_min"] == 29


async def test_a_key_that_does_not_fit_shows_initials_and_counts_failures(db: Db) -> None:
    identities = Identities(db.conn, Opener.from_file(db.other_key_file))
    exporter = await Exporter.load(db.conn, identities, TZ)
    f1, _ = await exporter.trace_rows(trace_result())
    assert (f1.name, f1.id_number) == ("=. Y", "")
    assert identities.failures == 2 and not identities.opened


async def test_venue_rows_overlap_the_window_and_tell_how_the_stay_ended(db: Db) -> None:
    exporter = await Exporter.load(db.conn, Identities(db.conn), TZ)
    who = subj("001099000002")
    stays = [
        Stay(who, "quan-pho", "z1", None, T0 - 1800, T0 + 600, "entry", "exit", None, None),
        Stay(
            who, "quan-pho", "", None, T0 - 3000, T0 - 60, "entry", "default_stay", None, None
        ),  # margin only
    ]
    inside, before = await exporter.venue_rows(stays, from_s=T0, until_s=T0 + 3600)
    assert (inside.level, inside.overlap_min, inside.certainty, inside.zone) == (
        "", 10, "exit", "Tầng 2",
    )  # fmt: skip
    assert (before.overlap_min, before.certainty, before.zone) == (0, "default_stay", "")


async def test_site_checkins_export_every_scan_and_opens_each_with_the_key(
    db: Db, tmp_path: Path
) -> None:
    identities = Identities(db.conn, Opener.from_file(db.key_file))
    exporter = await Exporter.load(db.conn, identities, TZ)
    rows = await exporter.checkin_rows("quan-pho", from_s=T0, until_s=T0 + 3600)
    assert [r.name for r in rows] == ["old"] * 3 + [n for n, _ in PEOPLE.values()] + [""]
    first = rows[0]
    assert (first.time, first.device, first.gate, first.zone, first.accepted) == (
        "2021-07-15 08:00", "gate-1", "Cổng chính", "Tầng 2", "yes",
    )  # fmt: skip
    assert (rows[-1].subject, rows[-1].name, rows[-1].accepted) == ("", "", "no")
    assert len(await exporter.checkin_rows("quan-pho", from_s=T0 + 2, until_s=T0 + 602)) == 2

    path = tmp_path / "checkins.csv"
    write_csv(checkin_table(rows), path)
    names = [r[10] for r in read_csv(path)[1:]]
    assert '\'=HYPERLINK("http://x","y")' in names and "Đặng Văn Đức" in names
