"""The tracing command line on a hand-built database: contacts, identities, audit, formats.

People (restaurant 'quan-pho', office 'van-phong'; all times 2021-07-15, local):
A, the index, at quan-pho 08:00-10:00; B at quan-pho 08:30-09:30 (60 min with A:
F1) then at van-phong 10:00-11:00; C at van-phong 10:15-11:00 (45 min with B:
F2); E at quan-pho 09:55-10:30 (5 min with A: under the 15 min threshold); D at
van-phong 07:00-07:30 (meets nobody). Stays are inserted as SQL, and the
check-ins that make them too, so the result does not depend on who built them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook

from broker.messages import PersonalFields, utc_iso
from broker.sealing import Sealer, new_authority_key
from conftest import ROOT
from gateway.identity import pseudonym
from gateway.store import SQLiteStore

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
KEY = b"province-subject-key-for-tests"
DAY = "2021-07-15"
PEOPLE = {  # letter -> (id number, name, initials)
    "A": ("001203004567", "Nguyễn Thị Hồng Nhung", "N. T. H. Nhung"),
    "B": ("079099000001", "Đặng Văn Đức", "Đ. V. Đức"),
    "C": ("001099000002", "Trần Minh Khôi", "T. M. Khôi"),
    "D": ("001099000003", "Lê Thu Hà", "L. T. Hà"),
    "E": ("001099000004", "Phạm Quốc Bảo", "P. Q. Bảo"),
}
STAYS = [  # letter, site, from, to
    ("A", "quan-pho", "08:00", "10:00"),
    ("B", "quan-pho", "08:30", "09:30"),
    ("B", "van-phong", "10:00", "11:00"),
    ("C", "van-phong", "10:15", "11:00"),
    ("E", "quan-pho", "09:55", "10:30"),
    ("D", "van-phong", "07:00", "07:30"),
]


def subject(letter: str) -> str:
    return pseudonym(KEY, "cccd", PEOPLE[letter][0])


def at(hhmm: str) -> int:
    return int(datetime.fromisoformat(f"{DAY}T{hhmm}").replace(tzinfo=TZ).timestamp())


@dataclass(frozen=True)
class Site:
    """A gateway config over a hand-built tracing database, with the keys beside it."""

    config: Path
    database: Path
    authority_key: Path
    subject_key: Path

    def gateway(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", args[0], "--config", str(self.config), *args[1:]],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=60,
        )

    def audit(self) -> list[tuple[str, str, str, str, str]]:
        db = sqlite3.connect(self.database)
        try:
            rows = db.execute(
                "SELECT actor, action, target, purpose, detail FROM audit_log ORDER BY id"
            ).fetchall()
        finally:
            db.close()
        return [tuple(r) for r in rows]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    database = tmp_path / "tracing.db"
    asyncio.run(_migrate(database))
    private, public = new_authority_key()
    (tmp_path / "authority.key").write_text(private + "\n")
    (tmp_path / "subject.key").write_bytes(KEY + b"\n")
    db = sqlite3.connect(database)
    try:
        _fill(db, Sealer(public))
        db.commit()
    finally:
        db.close()
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"site_id": "quan-pho", "broker": {}, "database": "tracing.db"}))
    return Site(config, database, tmp_path / "authority.key", tmp_path / "subject.key")


async def _migrate(database: Path) -> None:
    await (await SQLiteStore.open(database)).close()


def _fill(db: sqlite3.Connection, sealer: Sealer) -> None:
    db.executemany(
        "INSERT INTO sites (site_id, name, category, address, province, district, commune, "
        "default_stay_s) VALUES (?, ?, ?, ?, 'TP Hồ Chí Minh', 'Quận 1', 'Phường Bến Nghé', ?)",
        [
            ("quan-pho", "Quán Phở Hà Nội", "restaurant", "12 Lê Lợi", 3600),
            ("van-phong", "Văn phòng Công ty Sao Mai", "office", "8 Nguyễn Huệ", 8 * 3600),
        ],
    )
    db.executemany(
        "INSERT INTO devices (device_id, site_id, gate, direction) VALUES (?, ?, ?, ?)",
        [(f"{s}-{d}", s, f"Cổng {d}", d) for s in ("quan-pho", "van-phong") for d in ("in", "out")],
    )
    for seq, (letter, site_id, start, end) in enumerate(STAYS, start=1):
        ids = [
            _checkin(db, sealer, letter, site_id, d, at(t), seq)
            for d, t in (("in", start), ("out", end))
        ]
        db.execute(
            "INSERT INTO stays (subject, site_id, zone_id, start_s, end_s, start_rule, end_rule, "
            "entry_id, exit_id) VALUES (?, ?, '', ?, ?, 'entry', 'exit', ?, ?)",
            (subject(letter), site_id, at(start), at(end), *ids),
        )


def _checkin(
    db: sqlite3.Connection, sealer: Sealer, letter: str, site_id: str, direction: str, t: int,
    seq: int,
) -> int:  # fmt: skip
    id_number, name, short = PEOPLE[letter]
    iso = utc_iso(datetime.fromtimestamp(t, TZ))
    cur = db.execute(
        "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
        "direction, kind, accepted, reason, subject, sealed, initials, scanned_s) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'cccd', 1, 'valid', ?, ?, ?, ?)",
        (
            f"{site_id}-{direction}", "ab" * 16, seq, site_id, iso, iso, direction,
            subject(letter), sealer.seal(PersonalFields(id_number=id_number, name=name)), short, t,
        ),
    )  # fmt: skip
    assert cur.lastrowid is not None
    return cur.lastrowid


WINDOW = ["--since", f"{DAY}T00:00", "--until", f"{DAY}T23:59"]
WHO = ["--actor", "CDC TP.HCM - Nguyễn Văn Bình", "--purpose", "F0 case 2021-0715-12"]


def trace_json(site: Site, *args: str) -> dict[str, Any]:
    done = site.gateway("trace", "--subject", subject("A"), *WINDOW, *WHO, *args)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_trace_finds_f1_and_f2_and_shows_only_initials_without_the_key(site: Site) -> None:
    data = trace_json(site)
    assert data["index"] == {"subject": subject("A"), "initials": "N. T. H. Nhung"}
    assert [p["subject"] for p in data["f1"]] == [subject("B")]
    assert [p["subject"] for p in data["f2"]] == [subject("C")]
    b = data["f1"][0]
    assert (b["initials"], b["level"], b["total_overlap_min"]) == ("Đ. V. Đức", "F1", 60)
    assert "name" not in b and "id_number" not in b
    [contact] = b["contacts"]
    assert (contact["place"], contact["from"], contact["to"], contact["overlap_min"]) == (
        "Quán Phở Hà Nội", f"{DAY}T08:30+07:00", f"{DAY}T09:30+07:00", 60,
    )  # fmt: skip
    assert (contact["certainty"], contact["via"]) == ("exit", subject("A"))
    assert data["f2"][0]["contacts"][0]["via"] == subject("B")
    assert data["f2"][0]["total_overlap_min"] == 45
    shown = json.dumps(data, ensure_ascii=False)
    assert not [p for p in PEOPLE.values() if p[0] in shown or p[1] in shown], "no identities"
    [entry] = site.audit()
    assert entry[:4] == (WHO[1], "trace", subject("A"), WHO[3])
    assert "1 F1, 1 F2" in entry[4]


def test_trace_options_levels_and_threshold_reach_the_search(site: Site) -> None:
    assert trace_json(site, "--levels", "1")["f2"] == []
    lower = trace_json(site, "--threshold-min", "3")
    assert {p["subject"] for p in lower["f1"]} == {subject("B"), subject("E")}


def test_trace_with_the_key_decrypts_and_audits_the_decryption(site: Site) -> None:
    data = trace_json(site, "--key", str(site.authority_key))
    assert data["index"]["name"] == "Nguyễn Thị Hồng Nhung"
    assert (data["f1"][0]["name"], data["f1"][0]["id_number"]) == ("Đặng Văn Đức", "079099000001")
    assert data["f2"][0]["name"] == "Trần Minh Khôi"
    actions = [(e[0], e[1], e[2], e[3]) for e in site.audit()]
    assert actions == [
        (WHO[1], "trace", subject("A"), WHO[3]),
        (WHO[1], "decrypt", subject("A"), WHO[3]),
    ]
    assert "3 subjects opened" in site.audit()[1][4]


def test_trace_by_id_number_pseudonymises_it_with_the_province_key(site: Site) -> None:
    done = site.gateway(
        "trace", "--id-number", "-", "--subject-key-file", str(site.subject_key),
        *WINDOW, *WHO, stdin=PEOPLE["A"][0] + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["index"]["subject"] == subject("A")
    assert PEOPLE["A"][0] not in site.audit()[0][4]


@pytest.mark.parametrize("command", ["trace", "venue", "export-checkins"])
@pytest.mark.parametrize("missing", ["--actor", "--purpose"])
def test_queries_are_refused_without_actor_and_purpose(
    site: Site, command: str, missing: str
) -> None:
    target = ["--subject", subject("A"), *WINDOW]
    if command != "trace":
        target = ["--site", "quan-pho", "--from", f"{DAY}T08:00", "--until", f"{DAY}T10:00"]
    who = WHO[2:] if missing == "--actor" else WHO[:2]
    done = site.gateway(command, *target, *who)
    assert done.returncode == 2
    assert "--actor and --purpose are required" in done.stderr
    assert done.stdout == ""
    assert site.audit() == []


def test_venue_lists_everyone_around_the_period_and_is_audited(site: Site) -> None:
    done = site.gateway(
        "venue", "--site", "quan-pho", "--from", f"{DAY}T08:00", "--until", f"{DAY}T09:00",
        "--margin-min", "60", *WHO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["site"]["place"] == "Quán Phở Hà Nội" and data["margin_min"] == 60
    overlap = {p["subject"]: p["overlap_min"] for p in data["people"]}
    assert overlap == {subject("A"): 60, subject("B"): 30, subject("E"): 0}
    assert [(e[1], e[2]) for e in site.audit()] == [("venue", "quan-pho")]


def test_unknown_site_is_refused(site: Site) -> None:
    done = site.gateway(
        "venue", "--site", "nowhere", "--from", f"{DAY}T08:00", "--until", f"{DAY}T09:00", *WHO
    )
    assert done.returncode == 2 and "no site 'nowhere'" in done.stderr
    assert site.audit() == []


def test_trace_exports_xlsx_with_names_when_decrypted(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "trace.xlsx"
    done = site.gateway(
        "trace", "--subject", subject("A"), *WINDOW, *WHO, "--key", str(site.authority_key),
        "--format", "xlsx", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(load_workbook(out).active.iter_rows(values_only=True))
    assert rows[0][:4] == ("subject", "name", "ID number", "level")
    assert [r[1:4] for r in rows[1:]] == [
        ("Đặng Văn Đức", "079099000001", "F1"),
        ("Trần Minh Khôi", "001099000002", "F2"),
    ]
    assert out.stat().st_mode & 0o077 == 0, "an export with names is private to its owner"


def test_export_checkins_csv_without_key_has_initials_and_empty_ids(
    site: Site, tmp_path: Path
) -> None:
    out = tmp_path / "checkins.csv"
    done = site.gateway(
        "export-checkins", "--site", "van-phong", "--from", f"{DAY}T00:00", "--until",
        f"{DAY}T23:59", *WHO, "--format", "csv", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["time"], r["direction"], r["name"], r["ID number"]) for r in rows] == [
        (f"{DAY} 07:00", "in", "L. T. Hà", ""),
        (f"{DAY} 07:30", "out", "L. T. Hà", ""),
        (f"{DAY} 10:00", "in", "Đ. V. Đức", ""),
        (f"{DAY} 10:15", "in", "T. M. Khôi", ""),
        (f"{DAY} 11:00", "out", "Đ. V. Đức", ""),
        (f"{DAY} 11:00", "out", "T. M. Khôi", ""),
    ]
    assert [(e[1], e[2]) for e in site.audit()] == [("export", "van-phong")]


def test_export_checkins_with_the_key_shows_names(site: Site) -> None:
    done = site.gateway(
        "export-checkins", "--site", "quan-pho", "--from", f"{DAY}T08:00", "--until",
        f"{DAY}T08:31", *WHO, "--key", str(site.authority_key),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["checkins"]
    assert [(r["name"], r["id_number"], r["gate"]) for r in rows] == [
        ("Nguyễn Thị Hồng Nhung", "001203004567", "Cổng in"),
        ("Đặng Văn Đức", "079099000001", "Cổng in"),
    ]
    assert [e[1] for e in site.audit()] == ["export", "decrypt"]
