"""Worker badges: a CSV in, a printed sheet out whose codes the gates accept; bad rows; revoking."""

from __future__ import annotations

import csv
import json
import sqlite3
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pypdfium2 as pdfium
import pytest
from PIL import Image

from broker.launcher import free_port
from broker.settings import DecoderConfig
from device.config import load_config
from device.credentials import Verdict, recognize
from device.decoder import Decoder, make_decoder, to_gray
from device.pipeline import make_readers
from device.policy import Policy
from gateway.categories import Category
from gateway.registry import SiteEntry
from provisioning.badges import generate_issuer_key
from provisioning.cli import main
from provisioning.devices import add_devices
from provisioning.layout import open_site
from provisioning.site import DeviceSpec, create_site
from provisioning.workercsv import RowProblem, WorkerCsvError
from provisioning.workers import BadgeNotIssued, BadgeOfficeError, issue_for_workers, revoke_badge

DPI = 200
SITE_ID = "may-phu-hoa"
SITE_NAME = "Công ty May Phú Hòa"
ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
NAMES = [
    "Nguyễn Thị Hồng Nhung", "Trần Văn Đức", "Lê Thị Thu Hương", "Phạm Quang Dũng",
    "Hoàng Ngọc Yến", "Huỳnh Hữu Phúc", "Võ Thị Mỹ Uyên", "Đặng Công Thắng",
    "Bùi Thị Bích Ngọc", "Đỗ Minh Khánh",
]  # fmt: skip
HEADER = "worker_id,name,valid_until,valid_from,zones,department\n"


def today() -> date:
    return datetime.now(ZONE).date()


def last_day(i: int) -> date:
    return today() + timedelta(days=30 * (i + 1))


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "site"
    specs = [DeviceSpec(device_id=f"gate-{i}", gate=f"Cổng {i}") for i in (1, 2)]
    entry = SiteEntry(site_id=SITE_ID, name=SITE_NAME, category=Category.FACTORY)
    create_site(
        directory, site_id=SITE_ID, port=free_port(), devices=specs, site=entry, register=True
    )
    return directory


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return make_decoder(DecoderConfig())


def worker_csv(tmp_path: Path) -> Path:
    rows = [
        f"NV-{i:04d},{name},{last_day(i).isoformat()},,xuong-{i % 3};kho,Tổ may {i}"
        for i, name in enumerate(NAMES)
    ]
    # A date as Vietnamese spreadsheets write it, and a name typed decomposed (NFD, as on a Mac).
    rows[1] = f"NV-0001,{unicodedata.normalize('NFD', NAMES[1])},{last_day(1):%d/%m/%Y},,,"
    path = tmp_path / "workers.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8-sig")
    return path


def sheet_pages(path: Path) -> list[tuple[Image.Image, str]]:
    document = pdfium.PdfDocument(str(path))
    pages = []
    for page in document:
        text = " ".join(page.get_textpage().get_text_range().split())
        pages.append((page.render(scale=DPI / 72).to_pil(), text))
    document.close()
    return pages


def gate_verdicts(site_dir: Path, texts: list[str], device: str = "gate-1") -> list[Verdict]:
    """What a gate of the site makes of the texts, with the readers its config builds."""
    config = load_config(site_dir / "devices" / device / "device.json")
    readers = make_readers(config)
    return [recognize(text, now=datetime.now(UTC), readers=readers) for text in texts]


def test_badge_sheet_codes_are_badges_the_gates_accept(
    site_dir: Path, decoder: Decoder, tmp_path: Path
) -> None:
    issued = issue_for_workers(site_dir, worker_csv(tmp_path), tmp_path / "out" / "badges.pdf")
    assert len(issued.badges) == 10
    pages = sheet_pages(issued.sheet)
    assert len(pages) == 2  # 8 badges a page
    texts = [text for image, _ in pages for text in decoder.decode(to_gray(image))]
    assert sorted(texts) == sorted(b.text for b in issued.badges)
    by_worker = {v.id_number: v for v in gate_verdicts(site_dir, texts)}
    assert len(by_worker) == 10
    for i, name in enumerate(NAMES):
        verdict = by_worker[f"{SITE_ID}:NV-{i:04d}"]
        assert (verdict.accepted, verdict.reason, verdict.name) == (True, "ok", name)
        expiry = datetime.combine(last_day(i) + timedelta(days=1), time(0), tzinfo=ZONE)
        assert verdict.expires_at == expiry
    printed = " ".join(text for _, text in pages)
    for i, name in enumerate(NAMES):
        assert name in printed
        assert f"Mã NV: NV-{i:04d}" in printed
        assert last_day(i).strftime("%d/%m/%Y") in printed
    assert printed.count(SITE_NAME) == 10


def test_issued_badges_are_listed_and_recorded(site_dir: Path, tmp_path: Path) -> None:
    issued = issue_for_workers(site_dir, worker_csv(tmp_path), tmp_path / "badges.pdf")
    assert issued.listing == tmp_path / "badges.csv"
    listed = read_csv(issued.listing)
    assert [r["badge_id"] for r in listed] == [b.claims.badge_id for b in issued.badges]
    assert listed[0]["name"] == NAMES[0] and listed[1]["name"] == NAMES[1]
    expiry = datetime.combine(last_day(0) + timedelta(days=1), time(0), tzinfo=ZONE)
    assert listed[0]["valid_until"] == expiry.isoformat()
    assert read_csv(site_dir / "badges" / "issued.csv") == listed
    # The site's own key, trusted by the devices since the site was made: nothing to change.
    assert issued.devices_updated == 0


def test_badges_of_another_issuer_key_are_trusted_by_the_gates(
    site_dir: Path, tmp_path: Path
) -> None:
    office = generate_issuer_key("office-2")
    office.save(tmp_path / "office.key")
    issued = issue_for_workers(
        site_dir, worker_csv(tmp_path), tmp_path / "badges.pdf", key_path=tmp_path / "office.key"
    )
    assert {b.key_id for b in issued.badges} == {"office-2"}
    assert (issued.devices_updated, issued.desired_stored) == (2, 2)
    for device in ("gate-1", "gate-2"):
        verdicts = gate_verdicts(site_dir, [b.text for b in issued.badges], device)
        assert all(v.accepted for v in verdicts)
    with pytest.raises(BadgeOfficeError, match=r"badges\.png: the badge sheet must be a \.pdf"):
        issue_for_workers(site_dir, worker_csv(tmp_path), tmp_path / "badges.png")


def test_bad_rows_are_named_and_nothing_is_issued(site_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "workers.csv"
    path.write_text(
        HEADER
        + f"NV-1,Nguyễn Văn An,{last_day(0)},,,\n"
        + f"NV-2,,{last_day(0)},,,\n"
        + "NV-3,Trần Thị Bình,2026-02-30,,,\n"
        + f"NV-1,Lê Văn Cường,{last_day(0)},,,\n"
        + f"NV 4,Phạm Thị Dung,{last_day(0)},,kho-lạnh,\n"
        + f"NV-5,Võ Văn Em,{today() - timedelta(days=1)},,,\n",
        encoding="utf-8",
    )
    before = snapshot(site_dir)
    with pytest.raises(WorkerCsvError) as caught:
        issue_for_workers(site_dir, path, tmp_path / "badges.pdf")
    assert [(p.row, p.field) for p in caught.value.problems] == [
        (3, "name"),
        (4, "valid_until"),
        (5, "worker_id"),
        (6, "worker_id"),
        (6, "zones"),
        (7, "valid_until"),
    ]
    message = str(caught.value)
    assert f"{path}: row 3, field name: missing" in message
    assert f"{path}: row 4, field valid_until: '2026-02-30' is not a date" in message
    assert f"{path}: row 5, field worker_id: NV-1 is also on row 2" in message
    assert "nothing issued" in message
    assert not (tmp_path / "badges.pdf").exists() and not (tmp_path / "badges.csv").exists()
    assert snapshot(site_dir) == before


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('worker_id,name,valid_until\nNV-1,"Nguyễn Văn An,2030-01-01\n', (2, "")),
        ("worker_id,name,valid_until\nNV-1,An,2030-01-01,extra\n", (2, "")),
        ("worker_id,name\nNV-1,An\n", (1, "valid_until")),
        ("worker_id,name,valid_until,photo\nNV-1,An,2030-01-01,a.jpg\n", (1, "photo")),
        ("worker_id,name,valid_until\n", (2, "")),
        ("", (1, "")),
    ],
    ids=["open-quote", "extra-value", "missing-column", "unknown-column", "no-rows", "empty"],
)
def test_broken_csv_is_refused_with_its_row(
    site_dir: Path, tmp_path: Path, content: str, problem: tuple[int, str]
) -> None:
    path = tmp_path / "workers.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WorkerCsvError) as caught:
        issue_for_workers(site_dir, path, tmp_path / "badges.pdf")
    first = caught.value.problems[0]
    assert (first.file, first.row, first.field) == (path, *problem)
    assert not (tmp_path / "badges.pdf").exists()


def test_csv_not_in_utf8_names_its_row(site_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "workers.csv"
    # Windows' Vietnamese code page, as an old Excel saves "CSV" by default.
    row = "NV-1,Lê Văn Tâm,2030-01-01,,,\n".encode("cp1258")
    path.write_bytes(HEADER.encode() + row)
    with pytest.raises(WorkerCsvError) as caught:
        issue_for_workers(site_dir, path, tmp_path / "badges.pdf")
    assert caught.value.problems == [
        RowProblem(path, 2, "", "not UTF-8 text (in Excel: save as 'CSV UTF-8')")
    ]


def test_revoked_badge_is_refused_by_the_gates(site_dir: Path, tmp_path: Path) -> None:
    issued = issue_for_workers(site_dir, worker_csv(tmp_path), tmp_path / "badges.pdf")
    lost, kept = issued.badges[3], issued.badges[4]
    readers_before = make_readers(load_config(site_dir / "devices" / "gate-2" / "device.json"))

    revocation = revoke_badge(site_dir, lost.claims.badge_id.lower(), "mất thẻ (lost)")

    assert (revocation.badge_id, revocation.worker_id) == (lost.claims.badge_id, "NV-0003")
    assert revocation.devices_updated == 2 and revocation.desired_stored == 2
    for device in ("gate-1", "gate-2"):
        refused, accepted = gate_verdicts(site_dir, [lost.text, kept.text], device)
        assert (refused.accepted, refused.reason) == (False, "badge_revoked")
        assert (accepted.accepted, accepted.reason) == (True, "ok")
    # A gate still running with readers built before the revocation: its new policy refuses.
    config = load_config(site_dir / "devices" / "gate-2" / "device.json")
    verdict = recognize(lost.text, now=datetime.now(UTC), readers=readers_before)
    assert verdict.accepted
    judgement = Policy(config.policy, direction="in").judge(verdict, None, now=datetime.now(UTC))
    assert (judgement.accepted, judgement.reason) == (False, "badge_revoked")
    assert desired_revoked(site_dir) == {"gate-1": [lost.claims.badge_id]} | {
        "gate-2": [lost.claims.badge_id]
    }
    records = read_csv(site_dir / "badges" / "revoked.csv")
    assert [(r["badge_id"], r["worker_id"], r["reason"]) for r in records] == [
        (lost.claims.badge_id, "NV-0003", "mất thẻ (lost)")
    ]
    again = revoke_badge(site_dir, lost.claims.badge_id, "again")
    assert again.devices_updated == 0
    assert len(read_csv(site_dir / "badges" / "revoked.csv")) == 1
    # A gate fitted after the revocation refuses the badge from its first scan.
    add_devices(open_site(site_dir), [DeviceSpec(device_id="gate-3", gate="Cổng 3")])
    refused, accepted = gate_verdicts(site_dir, [lost.text, kept.text], "gate-3")
    assert (refused.accepted, refused.reason) == (False, "badge_revoked")
    assert (accepted.accepted, accepted.reason) == (True, "ok")


def test_revoking_an_unknown_badge_changes_nothing(site_dir: Path, tmp_path: Path) -> None:
    issue_for_workers(site_dir, worker_csv(tmp_path), tmp_path / "badges.pdf")
    before = snapshot(site_dir)
    with pytest.raises(BadgeNotIssued, match=r"'NOTABADGE123' was not issued at site may-phu-hoa"):
        revoke_badge(site_dir, "NOTABADGE123", "lost")
    with pytest.raises(BadgeOfficeError, match="the reason must be 1-200 characters"):
        revoke_badge(site_dir, read_csv(site_dir / "badges" / "issued.csv")[0]["badge_id"], "  ")
    assert snapshot(site_dir) == before


def test_badge_commands(site_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sheet.pdf"
    issue = ["badges", "issue", "--site", str(site_dir), "--out", str(out), "--csv"]
    bad = tmp_path / "bad.csv"
    bad.write_text("worker_id,name,valid_until\nNV-1,An,31/02/2030\n", encoding="utf-8")
    assert main([*issue, str(bad)]) == 2
    assert f"{bad}: row 2, field valid_until: '31/02/2030' is not a date" in capsys.readouterr().err
    assert main([*issue, str(worker_csv(tmp_path))]) == 0
    assert "issued 10 badges" in capsys.readouterr().out
    badge_id = read_csv(tmp_path / "sheet.csv")[0]["badge_id"]
    revoke = ["badges", "revoke", "--site", str(site_dir), "--badge-id", badge_id]
    assert main([*revoke, "--reason", "left"]) == 0
    assert f"badge {badge_id} of worker NV-0000 revoked" in capsys.readouterr().out
    refused = gate_verdicts(site_dir, [sheet_badge_text(out, badge_id)])[0]
    assert refused.reason == "badge_revoked"


def sheet_badge_text(sheet: Path, badge_id: str) -> str:
    decoder = make_decoder(DecoderConfig())
    texts = [t for image, _ in sheet_pages(sheet) for t in decoder.decode(to_gray(image))]
    verdicts = gate_verdicts(sheet.parent / "site", texts)
    return next(t for t, v in zip(texts, verdicts, strict=True) if v.credential_id == badge_id)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def snapshot(site_dir: Path) -> dict[str, bytes]:
    """Every file of the site but the gateway database (its WAL changes on open)."""
    return {
        str(p.relative_to(site_dir)): p.read_bytes()
        for p in sorted(site_dir.rglob("*"))
        if p.is_file() and "tracing.db" not in p.name
    } | {"desired": json.dumps(desired_revoked(site_dir)).encode()}


def desired_revoked(site_dir: Path) -> dict[str, list[str]]:
    """The revoked badges in each device's newest desired config at the gateway."""
    with sqlite3.connect(site_dir / "gateway" / "tracing.db") as db:
        rows = db.execute(
            "SELECT device_id, settings FROM desired_configs d WHERE version = "
            "(SELECT max(version) FROM desired_configs WHERE device_id = d.device_id)"
        ).fetchall()
    return {str(d): json.loads(s)["policy"]["revoked_badges"] for d, s in rows}
