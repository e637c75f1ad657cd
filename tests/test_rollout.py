"""The monthly rollout report: figures against hand-counted seeded data, and its three files."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook

from broker.messages import CheckIn, DeviceState, utc_iso
from gateway.categories import Category
from gateway.config import DeviceEntry
from gateway.registry import SiteEntry, register_sites
from gateway.rollout import (
    AreaRow,
    RolloutError,
    RolloutReport,
    SiteDayRow,
    report_json,
    rollout_report,
)
from gateway.store import Arrival, SQLiteStore, StateChange, WriteBatch

VN = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]
FORMULA_NAME = '=HYPERLINK("http://x.example","Nhà máy Tân Hiệp")'
DN, BH, LT = "Đồng Nai", "Biên Hòa", "Long Thành"

SITES = [
    SiteEntry(site_id="f1", name="Nhà máy Đồng Nai", category=Category.FACTORY,
              province=DN, district=BH),
    SiteEntry(site_id="f2", name=FORMULA_NAME, category=Category.FACTORY, province=DN,
              district=BH),
    SiteEntry(site_id="r1", name="Quán Phở Hà Nội", category=Category.RESTAURANT,
              province=DN, district=BH),
    SiteEntry(site_id="f3", name="Xưởng may Long Thành", category=Category.FACTORY,
              province=DN, district=LT),
    SiteEntry(site_id="b1", name="Xe buýt 01", category=Category.VEHICLE, province=DN,
              district=LT),
]  # fmt: skip
# Device "d-x" belongs to a site that was never registered: still counted, never dropped.
DEVICES = {"d-f1": "f1", "d-f2": "f2", "d-r1": "r1", "d-f3": "f3", "d-b1": "b1", "d-x": "ghost"}
# (device, local scan time, accepted, received_at override)
CHECKINS: list[tuple[str, str, bool, datetime | None]] = [
    ("d-f1", "2026-10-31 23:30", True, None),  # October: outside the month
    ("d-f1", "2026-11-01 00:10", True, None),  # 2026-10-31 17:10 UTC, but 1 November locally
    ("d-f1", "2026-11-01 08:00", True, None),
    ("d-f1", "2026-11-01 08:05", False, None),
    ("d-f1", "2026-11-15 12:00", True, None),
    ("d-f1", "2026-11-30 23:59", True, None),
    ("d-f1", "2026-12-01 00:05", True, None),  # December: outside
    ("d-f2", "2026-11-02 09:00", False, None),
    ("d-f2", "2026-11-02 09:01", False, None),
    ("d-f3", "2026-11-10 07:00", True, None),
    ("d-f3", "2026-11-10 07:01", True, None),
    ("d-f3", "2026-11-10 07:02", True, datetime(2026, 12, 1, 20, 0, tzinfo=UTC)),  # caught up late
    ("d-b1", "2026-11-20 06:00", True, None),
    ("d-b1", "2026-11-20 06:30", False, None),
    ("d-x", "2026-11-05 10:00", True, None),
]
# Device states: when the gateway last heard from the device.
LAST_SEEN = {
    "d-f1": NOW - timedelta(hours=17),  # active
    "d-f2": NOW - timedelta(days=2),  # not active
    "d-b1": NOW - timedelta(hours=24, minutes=1),  # just outside the 24 hours
}


async def seed(path: Path) -> SQLiteStore:
    store = await SQLiteStore.open(path)
    async with store.exclusive() as db:
        await register_sites(db, SITES)
    await store.register_devices([DeviceEntry(device_id=d, site_id=s) for d, s in DEVICES.items()])
    arrivals = []
    for seq, (device_id, local, accepted, received) in enumerate(CHECKINS, start=1):
        scanned = datetime.strptime(local, "%Y-%m-%d %H:%M").replace(tzinfo=VN)
        record = CheckIn(seq=seq, scanned_at=scanned, direction="in", kind="cccd",
                         accepted=accepted, reason="ok" if accepted else "expired")  # fmt: skip
        arrival_at = received or scanned + timedelta(seconds=2)
        arrivals.append(
            Arrival(device_id, DEVICES[device_id], "0" * 32, record, utc_iso(arrival_at))
        )
    states = [
        StateChange(d, DeviceState(status="online", at=at), utc_iso(at))
        for d, at in LAST_SEEN.items()
    ]
    await store.write(WriteBatch(arrivals=arrivals, states=states))
    return store


async def build(path: Path, tz: ZoneInfo = VN, **period: Any) -> RolloutReport:
    store = await seed(path)
    try:
        async with store.exclusive() as db:
            return await rollout_report(db, now=NOW, tz=tz, **period)
    finally:
        await store.close()


def test_figures_match_the_hand_count(tmp_path: Path) -> None:
    report = asyncio.run(build(tmp_path / "t.db", month="2026-11"))
    assert (report.start, report.end, report.days) == (date(2026, 11, 1), date(2026, 11, 30), 30)
    assert report.areas == [
        AreaRow("", "", "unregistered", "Chưa đăng ký", 0, 0, 1, 1, 0.03, 1.0),
        AreaRow(DN, BH, "factory", "Nhà máy, khu công nghiệp", 2, 1, 7, 4, 0.23, 0.5714),
        AreaRow(DN, BH, "restaurant", "Nhà hàng, quán ăn", 1, 0, 0, 0, 0.0, None),
        AreaRow(DN, LT, "factory", "Nhà máy, khu công nghiệp", 1, 1, 3, 3, 0.1, 1.0),
        AreaRow(DN, LT, "vehicle", "Xe buýt, phương tiện", 1, 0, 2, 1, 0.07, 0.5),
    ]
    assert report.daily == [
        SiteDayRow(date(2026, 11, 1), "f1", "Nhà máy Đồng Nai", DN, BH, "factory", 3, 2),
        SiteDayRow(date(2026, 11, 2), "f2", FORMULA_NAME, DN, BH, "factory", 2, 0),
        SiteDayRow(date(2026, 11, 5), "ghost", "", "", "", "unregistered", 1, 1),
        SiteDayRow(date(2026, 11, 10), "f3", "Xưởng may Long Thành", DN, LT, "factory", 3, 3),
        SiteDayRow(date(2026, 11, 15), "f1", "Nhà máy Đồng Nai", DN, BH, "factory", 1, 1),
        SiteDayRow(date(2026, 11, 20), "b1", "Xe buýt 01", DN, LT, "vehicle", 2, 1),
        SiteDayRow(date(2026, 11, 30), "f1", "Nhà máy Đồng Nai", DN, BH, "factory", 1, 1),
    ]


def test_a_date_range_and_bad_periods(tmp_path: Path) -> None:
    report = asyncio.run(build(tmp_path / "t.db", start=date(2026, 11, 1), end=date(2026, 11, 1)))
    by_area = {(r.district, r.category): (r.checkins, r.checkins_per_day) for r in report.areas}
    assert by_area[(BH, "factory")] == (3, 3.0)
    assert report_json(report)["daily"] == [
        {"day": "2026-11-01", "site_id": "f1", "site_name": "Nhà máy Đồng Nai", "province": DN,
         "district": BH, "category": "factory", "checkins": 3, "accepted": 2},
    ]  # fmt: skip
    bad: list[tuple[dict[str, Any], str]] = [
        ({"month": "2026-13"}, "'2026-13' is not a month"),
        ({"month": "0000-01"}, "'0000-01' is not a month"),
        ({"month": "11/2026"}, "is not a month YYYY-MM"),
        ({"start": date(2026, 11, 2), "end": date(2026, 11, 1)}, "is after end"),
        ({"month": "2026-11", "start": date(2026, 11, 1)}, "not both"),
        ({"start": date(2026, 11, 1)}, "both a start and an end"),
    ]
    for i, (period, message) in enumerate(bad):
        with pytest.raises(RolloutError, match=message):
            asyncio.run(build(tmp_path / f"bad-{i}.db", **period))


def test_days_of_a_zone_with_a_clock_change(tmp_path: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")  # summer time ends 2026-10-25: a day of 25 hours
    first, last = date(2026, 10, 24), date(2026, 11, 1)
    report = asyncio.run(build(tmp_path / "t.db", tz=berlin, start=first, end=last))
    expected: Counter[tuple[date, str]] = Counter()
    for device_id, local, _, _ in CHECKINS:
        scanned = datetime.strptime(local, "%Y-%m-%d %H:%M").replace(tzinfo=VN)
        day = scanned.astimezone(berlin).date()
        if first <= day <= last:
            expected[(day, DEVICES[device_id])] += 1
    assert {(r.day, r.site_id): r.checkins for r in report.daily} == dict(expected)
    assert expected[(date(2026, 11, 1), "f1")] == 2  # 08:00 in Vietnam is 02:00 in Berlin


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "rollout", "--config", str(config), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_writes_csv_xlsx_and_json_that_parse(tmp_path: Path) -> None:
    asyncio.run(build(tmp_path / "tracing.db", month="2026-11"))
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"site_id": "f1", "broker": {}, "database": "tracing.db"}))

    out = {fmt: tmp_path / f"rollout.{fmt}" for fmt in ("csv", "xlsx", "json")}
    for fmt, path in out.items():
        result = run_cli(config, "--month", "2026-11", "--format", fmt, "--out", str(path))
        assert result.returncode == 0, result.stderr
        assert "5 area rows, 5 registered sites, 7 site-days" in result.stdout

    data = json.loads(out["json"].read_text(encoding="utf-8"))
    assert data["period"] == {"start": "2026-11-01", "end": "2026-11-30", "days": 30}
    figures = {(a["district"], a["category"]): (a["checkins"], a["acceptance_rate"])
               for a in data["areas"]}  # fmt: skip
    assert figures[(BH, "factory")] == (7, 0.5714)
    assert figures[(BH, "restaurant")] == (0, None)

    with out["csv"].open(encoding="utf-8-sig", newline="") as f:
        summary = list(csv.DictReader(f))
    assert summary[1]["district"] == BH and summary[1]["category (vi)"].startswith("Nhà máy")
    assert (summary[1]["check-ins"], summary[1]["acceptance rate"]) == ("7", "0.5714")
    assert summary[2]["acceptance rate"] == ""  # no check-ins: no rate, not 0
    with (tmp_path / "rollout-daily.csv").open(encoding="utf-8-sig", newline="") as f:
        daily = list(csv.DictReader(f))
    assert len(daily) == 7
    assert daily[1]["site"] == "'" + FORMULA_NAME  # inert in a spreadsheet

    book = load_workbook(out["xlsx"])
    assert book.sheetnames == ["rollout", "daily"]
    rows = list(book["rollout"].iter_rows(values_only=True))
    assert rows[2][:3] == (DN, BH, "factory") and rows[2][6:] == (7, 4, 0.23, 0.5714)
    formula_cell = book["daily"]["C3"]
    assert formula_cell.value == FORMULA_NAME and formula_cell.data_type == "s"

    bad = run_cli(config, "--month", "2026-13", "--format", "csv", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "'2026-13' is not a month" in bad.stderr
    assert not (tmp_path / "x").exists()
