"""Batch provisioning from a CSV: 200 buses' devices on a real broker, re-runs, bad rows."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_provisioning import _db, assert_pinned, cert_client, make_site, password_client

from broker.launcher import Mosquitto
from brokerkit import requires_mosquitto
from conftest import ROOT
from provisioning.batch import BatchResult, read_rows, run_batch
from provisioning.devices import revoke_device
from provisioning.errors import CsvFileError
from provisioning.manifest import load_manifest
from provisioning.site import Site

pytestmark = requires_mosquitto

BUSES = 100  # two doors each: 200 devices


def fleet_csv(path: Path) -> Path:
    """A transport operator's list: every bus has a front (in) and a rear (out) reader."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device_id", "gate", "direction", "zone", "vehicle"])
        for bus in range(1, BUSES + 1):
            writer.writerow(["", "Cửa trước", "in", "", f"bus-{bus:03d}"])
            writer.writerow(["", "Cửa sau", "out", "", f"bus-{bus:03d}"])
    return path


def snapshot(site: Site) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file provisioning writes (not the broker's own)."""
    skip = {"data", "mosquitto.log", "mosquitto.pid"}
    return {
        str(p.relative_to(site.directory)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(site.directory.rglob("*"))
        if p.is_file() and not skip & set(p.relative_to(site.directory).parts)
        and not p.name.startswith("tracing.db")
    }  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Mosquitto, Path]]:
    """A site with 200 devices from one CSV, and its broker running."""
    folder = tmp_path_factory.mktemp("fleet")
    site = make_site(folder / "site", [])
    broker = Mosquitto(site.broker)
    broker.start()
    path = fleet_csv(folder / "fleet.csv")
    started = time.perf_counter()
    result = run_batch(site, path, progress=False)
    elapsed = time.perf_counter() - started
    print(f"\nprovisioned {result.count('added')} devices from CSV in {elapsed:.2f} s")
    assert result.summary() == "200 rows: 200 added, 0 updated, 0 unchanged, 0 error"
    assert result.sync is not None and result.sync.reload.startswith("reloaded mosquitto")
    yield site, broker, path
    broker.stop()


def test_every_device_connects_and_publishes_only_into_its_own_topics(
    fleet: tuple[Site, Mosquitto, Path],
) -> None:
    site, broker, _ = fleet
    wait_reload = broker.layout.log_file
    deadline = time.monotonic() + 10
    while "Reloading config" not in wait_reload.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = [d.device_id for d in load_manifest(site.directory).devices]
    assert len(ids) == 200 and "bus-001-cua-truoc-in" in ids and "bus-100-cua-sau-out" in ids
    for index, device_id in enumerate(ids):
        neighbour = ids[(index + 1) % len(ids)]
        with password_client(site, device_id) as client:
            assert not client.connect().is_failure, device_id
            assert_pinned(client, device_id, neighbour)
        files = site.device_cert(device_id), site.device_key(device_id)
        with cert_client(site, device_id, *files) as client:
            assert not client.connect().is_failure, device_id
            assert_pinned(client, device_id, neighbour)


def test_registry_rows_vehicles_and_desired_configs(fleet: tuple[Site, Mosquitto, Path]) -> None:
    site, _, _ = fleet
    rows = _db(site, "SELECT count(*), count(DISTINCT site_id) FROM devices")
    assert rows == [(200, 100)], "one row per device, on its bus"
    assert _db(site, "SELECT count(*) FROM sites WHERE category='vehicle'") == [(100,)]
    assert _db(site, "SELECT count(*), max(version) FROM desired_configs") == [(200, 1)]


def test_rerun_of_the_same_csv_changes_nothing(fleet: tuple[Site, Mosquitto, Path]) -> None:
    site, broker, path = fleet
    before = snapshot(site)
    reloads = broker.layout.log_file.read_text().count("Reloading config")
    result = run_batch(site, path, progress=False)
    assert result.summary() == "200 rows: 0 added, 0 updated, 200 unchanged, 0 error"
    assert result.sync is not None and result.sync.reload == "broker files unchanged"
    assert snapshot(site) == before, "no file rewritten"
    assert _db(site, "SELECT count(*) FROM desired_configs") == [(200,)]
    time.sleep(0.2)
    assert broker.layout.log_file.read_text().count("Reloading config") == reloads


def test_bad_rows_are_reported_and_the_rest_provisioned(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [])
    lines = [
        "device_id,gate,direction,zone,vehicle",
        "gate-1,North,in,a,",  # 2 good
        "gate-2,North,sideways,a,",  # 3 direction
        "gate-3,North,in,c,",  # 4 unknown zone
        "gate-4,North,in,a,bus-1",  # 5 zone and vehicle
        "Gate_5,North,in,,",  # 6 bad id
        "gate-1,South,out,b,",  # 7 repeated id
        "gate-6,North,in,,,extra",  # 8 too many values
        ",,in,,",  # 9 no id, and nothing to name it by
        ",Rear door,out,,bus-9",  # 10 good, named bus-9-rear-door-out
    ]
    path = tmp_path / "devices.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_batch(site, path, progress=False)
    by_line = {r.line: r for r in result.rows}
    expected_fields = {
        3: "direction",
        4: "zone",
        5: "vehicle",
        6: "device_id",
        7: "device_id",
        8: "row",
        9: "device_id",
    }
    for line, field in expected_fields.items():
        row = by_line[line]
        assert row.status == "error", row
        assert row.detail.startswith(f"{path}: line {line}: {field}: "), row.detail
    assert by_line[2].status == "added"
    assert by_line[10].status == "added" and by_line[10].device_id == "bus-9-rear-door-out"
    assert result.summary() == "9 rows: 2 added, 0 updated, 0 unchanged, 7 error"
    provisioned = {d.device_id for d in load_manifest(site.directory).devices}
    assert {"gate-1", "bus-9-rear-door-out"} <= provisioned
    assert not provisioned & {"gate-2", "gate-3", "gate-4", "gate-6"}
    passwd = site.broker.password_file.read_text()
    assert "gate-1:" in passwd and "gate-2:" not in passwd
    assert not site.device_config("gate-3").exists()


def test_a_revoked_device_in_the_csv_is_a_bad_row(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [])
    path = tmp_path / "d.csv"
    path.write_text("device_id,direction\ngate-1,in\ngate-2,out\n", encoding="utf-8")
    run_batch(site, path, progress=False)
    revoke_device(site, "gate-1")
    result: BatchResult = run_batch(site, path, progress=False)
    assert [(r.device_id, r.status) for r in result.rows] == [
        ("gate-1", "error"),
        ("gate-2", "unchanged"),
    ]
    assert "revoked" in result.rows[0].detail


def test_a_bad_header_names_the_file_and_changes_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [])
    before = snapshot(site)
    path = tmp_path / "d.csv"
    path.write_text("device,direction,colour\ngate-1,in,red\n", encoding="utf-8")
    with pytest.raises(CsvFileError, match=r"d\.csv: line 1 \(header\): unknown column 'device'"):
        run_batch(site, path, progress=False)
    with pytest.raises(CsvFileError, match="cannot read"):
        read_rows(tmp_path / "missing.csv")
    assert snapshot(site) == before


def test_cli_batch_reports_rows_and_exit_code(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [])
    path = tmp_path / "d.csv"
    path.write_text("device_id,gate,direction\ngate-1,A,in\ngate-2,A,up\n", encoding="utf-8")
    report = tmp_path / "report.csv"
    bundles = tmp_path / "bundles"
    done = subprocess.run(
        [sys.executable, "-m", "provisioning", "batch", "--site", str(site.directory),
         "--csv", str(path), "--report", str(report), "--bundles", str(bundles)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "2 rows: 1 added, 0 updated, 0 unchanged, 1 error" in done.stdout
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [(r["device_id"], r["status"]) for r in rows] == [
        ("gate-1", "added"),
        ("gate-2", "error"),
    ]
    assert "line 3: direction: 'up'" in rows[1]["detail"]
    assert (bundles / "qrgate-gate-1" / "client.key").exists()
    assert not (bundles / "qrgate-gate-2").exists()
