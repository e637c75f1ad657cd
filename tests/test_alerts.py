"""Fleet alerts: a real gateway watching real devices, and each alert condition from real state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import aiosqlite
import pytest

from broker.launcher import Mosquitto
from broker.messages import DeviceState, Health, utc_iso
from broker.settings import DeviceSettings
from conftest import SiteMaker, StartService, db_rows, wait_until
from gateway.alerts import Alert, AlertWatcher, current_alerts
from gateway.audit import connect
from gateway.config import DeviceEntry
from gateway.fleetview import AlertLimits
from gateway.store import SQLiteStore, StateChange, WriteBatch
from provisioning.site import Site

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def status_of(site: Site, device_id: str) -> str:
    rows = db_rows(site, "SELECT status FROM devices WHERE device_id=?", (device_id,))
    return str(rows[0][0]) if rows else ""


def is_online(site: Site, device_id: str) -> bool:
    return status_of(site, device_id) == "online"


async def alerts_at(database: Path, now: datetime) -> list[Alert]:
    db = await connect(database)
    try:
        return await current_alerts(db, now=now)
    finally:
        await db.close()


def test_device_power_cut_raises_offline_alert_logged_once_by_the_gateway(
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames], [blank_frames]])
    for device_id in site.device_ids:
        path = site.device_config(device_id)
        path.write_text(path.read_text().replace('"loop": false', '"loop": true'))
    broker_for(site)
    gateway = services("gateway", site.gateway_config).wait_log("granted", 2)
    # Registered but not yet connected: the gateway's watcher flags both at once.
    gateway.wait_log("alert offline on device gate-1: never seen")
    gate1 = services("device", site.device_config("gate-1"))
    services("device", site.device_config("gate-2"))
    for device_id in site.device_ids:
        wait_until(partial(is_online, site, device_id), f"{device_id} online")
    gateway.wait_log("alert offline on device gate-1 cleared")

    gate1.kill()  # a power cut: the broker publishes the device's last will
    wait_until(lambda: status_of(site, "gate-1") == "offline", "gate-1 offline (last will)")
    now = datetime.now(UTC)
    # Not yet: offline for less than the limit (a reboot is not an alert).
    assert [a for a in asyncio.run(alerts_at(site.database, now)) if a.kind == "offline"] == []
    later = asyncio.run(alerts_at(site.database, now + timedelta(seconds=301)))
    # (A machine without NTP would add clock_unsynced alerts: not what this test is about.)
    later = [a for a in later if a.kind != "clock_unsynced"]
    assert [(a.device_id, a.kind) for a in later] == [("gate-1", "offline")]
    assert later[0].since is not None and abs((later[0].since - now).total_seconds()) < 60
    assert "offline for 5 min" in later[0].detail
    text = gateway.log_text()
    assert text.count("alert offline on device gate-1: never seen") == 1
    assert text.count("alert offline on device gate-1 cleared") == 1


async def seeded_store(tmp_path: Path) -> SQLiteStore:
    store = await SQLiteStore.open(tmp_path / "tracing.db")
    await store.register_devices(
        [DeviceEntry(device_id=f"gate-{i}", site_id="site-a") for i in (1, 2, 3)]
    )
    return store


def state(at: datetime, *, depth: int = 0, oldest: float | None = None, synced: bool = True,
          version: int = 0, error: str = "", status: str = "online") -> DeviceState:  # fmt: skip
    health = Health(
        uptime_s=60, scans=0, accepted=0, rejected=0, outbox_depth=depth,
        oldest_pending_s=oldest, median_decode_ms=5, camera_fps=10, clock_synced=synced,
        direction="in",
    )  # fmt: skip
    return DeviceState.model_validate(
        {"status": status, "at": at, "config_version": version, "config_error": error,
         "health": health}
    )  # fmt: skip


async def write_states(store: SQLiteStore, states: dict[str, DeviceState], at: datetime) -> None:
    changes = [StateChange(d, s, utc_iso(at)) for d, s in states.items()]
    await store.write(WriteBatch(states=changes))


def test_each_condition_raises_its_alert_and_the_watcher_logs_changes_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[list[tuple[str, str]]]:
        store = await seeded_store(tmp_path)
        watcher = AlertWatcher(store.path, limits=AlertLimits(outbox_depth=50))
        db = await connect(store.path)
        rounds = []
        try:
            await write_states(store, {
                "gate-1": state(T0, depth=49, oldest=30.0),
                "gate-2": state(T0, depth=3, oldest=900.0, synced=False),
                "gate-3": state(T0, depth=50, error="version 2 refused: pins"),
            }, T0)  # fmt: skip
            for minute in (1, 2):
                await watcher.check(db, now=T0 + timedelta(minutes=minute))
                rounds.append(sorted(watcher.active))
            await write_states(store, {"gate-2": state(T0, depth=0)}, T0 + timedelta(minutes=3))
            await watcher.check(db, now=T0 + timedelta(minutes=4))
            rounds.append(sorted(watcher.active))
        finally:
            await db.close()
            await store.close()
        return rounds

    with caplog.at_level(logging.INFO, logger="gateway.alerts"):
        first, second, third = asyncio.run(scenario())
    assert (
        first
        == second
        == [
            ("gate-2", "clock_unsynced"),
            ("gate-2", "outbox_growing"),  # few check-ins, but the oldest waits 15 min
            ("gate-3", "config_refused"),
            ("gate-3", "outbox_growing"),
        ]
    )
    assert third == [("gate-3", "config_refused"), ("gate-3", "outbox_growing")]
    messages = [r.getMessage() for r in caplog.records]
    raised = [m for m in messages if m.startswith("alert ") and not m.endswith("cleared")]
    assert raised == [
        "alert clock_unsynced on device gate-2: device clock is not NTP-synchronised",
        "alert outbox_growing on device gate-2: 3 check-ins waiting, oldest 15 min 0 s",
        "alert config_refused on device gate-3: version 2 refused: pins",
        "alert outbox_growing on device gate-3: 50 check-ins waiting",
    ]
    assert [m for m in messages if m.endswith("cleared")] == [
        "alert clock_unsynced on device gate-2 cleared",
        "alert outbox_growing on device gate-2 cleared",
    ]


def test_drift_waits_for_the_grace_period_and_clears_when_applied(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Alert], list[Alert], list[Alert]]:
        store = await seeded_store(tmp_path)
        try:
            await write_states(store, {"gate-1": state(T0, version=0)}, T0)
            await store.add_desired_config("gate-1", DeviceSettings())
            created = datetime.fromisoformat(
                str(await _one(store.path, "SELECT created_at FROM desired_configs"))
            )
            soon = await alerts_at(store.path, created + timedelta(seconds=30))
            late = await alerts_at(store.path, created + timedelta(seconds=121))
            await write_states(store, {"gate-1": state(T0, version=1)}, T0)
            applied = await alerts_at(store.path, created + timedelta(seconds=121))
        finally:
            await store.close()
        return soon, late, applied

    soon, late, applied = asyncio.run(scenario())
    assert [a.kind for a in soon if a.device_id == "gate-1"] == []
    drift = [a for a in late if a.device_id == "gate-1"]
    assert [(a.kind, a.detail) for a in drift] == [("drift", "applied version 0, desired 1")]
    assert [a for a in applied if a.device_id == "gate-1"] == []
    # gate-2 and gate-3 never reported: offline, with no time known.
    assert {(a.device_id, a.kind, a.since) for a in late if a.device_id != "gate-1"} == {
        ("gate-2", "offline", None),
        ("gate-3", "offline", None),
    }


async def _one(database: Path, sql: str) -> object:
    async with aiosqlite.connect(database) as db, db.execute(sql) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]
