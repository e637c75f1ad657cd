"""Fleet view and desired settings: defaults and overrides merged, refused patches changing
nothing, and a real gateway, broker and device showing applied versions, drift and check-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from broker.client import BusClient
from broker.launcher import Mosquitto
from broker.settings import DeviceSettings, FileSourceConfig, PolicyConfig, SignalsConfig
from conftest import DEADLINE_S, SiteMaker, StartService, db_rows, wait_until
from device.config import load_config as load_device_config
from gateway.audit import connect
from gateway.config import DeviceEntry
from gateway.config import load_config as load_gateway_config
from gateway.desired import (
    InvalidPatch,
    device_override,
    effective_settings,
    push_effective,
    set_device_override,
    set_site_defaults,
    site_defaults,
)
from gateway.fleet import ConfigPublisher
from gateway.fleetview import (
    DeviceStatus,
    RecentCheckin,
    UnknownDevice,
    device_status,
    device_statuses,
    recent_checkins,
)
from gateway.registry import UnknownSite
from gateway.service import client_settings
from gateway.store import SQLiteStore
from provisioning.manifest import load_manifest
from provisioning.site import Site
from provisioning.sync import register_at_gateway

BASE = DeviceSettings(
    frame_source=FileSourceConfig(paths=[Path("/srv/frames")], interval_s=0.2),
    signals=SignalsConfig(factory="mock"),
    policy=PolicyConfig(accept_kinds=["badge"]),
)


async def counts(db: aiosqlite.Connection) -> tuple[object, ...]:
    async with db.execute(
        "SELECT (SELECT count(*) FROM settings_patches), (SELECT group_concat(patch) FROM "
        "settings_patches), (SELECT count(*) FROM desired_configs)"
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def patch_scenario(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.register_devices([
        DeviceEntry(device_id="gate-1", site_id="site-a"),
        DeviceEntry(device_id="gate-2", site_id="site-a", direction="out"),
        DeviceEntry(device_id="gate-3", site_id="site-b"),
    ])  # fmt: skip
    await store.add_desired_config("gate-1", BASE)
    db = await connect(path)
    try:
        await check_merge(db)
        await check_refusals(db)
    finally:
        await db.close()
        await store.close()


async def check_merge(db: aiosqlite.Connection) -> None:
    site = {"policy": {"anti_passback": "warn"}, "health_interval_s": 5}
    assert await set_site_defaults(db, "site-a", site) == 1
    own = {"policy": {"debounce_s": 7}, "frame_source": {"interval_s": 0.5}}
    assert await set_device_override(db, "gate-1", own) == 1

    one = await effective_settings(db, "gate-1")
    assert one.frame_source == FileSourceConfig(paths=[Path("/srv/frames")], interval_s=0.5)
    assert (one.policy.anti_passback, one.policy.debounce_s) == ("warn", 7)
    assert one.policy.accept_kinds == ["badge"] and one.signals.factory == "mock"  # from base
    assert one.health_interval_s == 5
    two = await effective_settings(db, "gate-2")  # no pushed base: defaults, its direction
    assert (two.direction, two.policy.anti_passback, two.policy.debounce_s) == ("out", "warn", 3)
    assert (await effective_settings(db, "gate-3")).policy.anti_passback == "off"

    # A frame source of another type replaces the old one instead of mixing fields.
    assert await set_device_override(db, "gate-1", {"frame_source": {"type": "v4l2"}}) == 2
    camera = (await effective_settings(db, "gate-1")).frame_source
    assert camera.type == "v4l2" and camera.model_dump()["device"] == "/dev/video0"
    assert await set_device_override(db, "gate-1", own) == 3


async def check_refusals(db: aiosqlite.Connection) -> None:
    before = await counts(db)
    effective = await effective_settings(db, "gate-1")
    with pytest.raises(
        InvalidPatch,
        match=r"device gate-1: invalid settings: max_batch: .*greater than or equal to 1",
    ):
        await set_device_override(db, "gate-1", {"max_batch": 0})
    with pytest.raises(InvalidPatch, match="polcy: Extra inputs are not permitted"):
        await set_device_override(db, "gate-1", {"polcy": {"debounce_s": 1}})
    assert await counts(db) == before
    assert await set_device_override(db, "gate-2", {"signals": {"buzzer": 5}}) == 1
    before = await counts(db)
    # Valid alone, but gate-2's own buzzer is on pin 5: refused for the whole site.
    with pytest.raises(InvalidPatch, match=r"device gate-2 \(site site-a defaults\).*distinct"):
        await set_site_defaults(db, "site-a", {"signals": {"green_led": 5}})
    with pytest.raises(InvalidPatch, match=r"gate-1 \(site site-a defaults\): .*max_batch"):
        await set_site_defaults(db, "site-a", {"max_batch": 999})
    with pytest.raises(UnknownDevice, match="gate-9"):
        await set_device_override(db, "gate-9", {})
    with pytest.raises(UnknownSite, match="nowhere"):
        await set_site_defaults(db, "nowhere", {})
    assert await counts(db) == before
    assert await effective_settings(db, "gate-1") == effective
    stored = await site_defaults(db, "site-a")
    assert stored is not None and stored.revision == 1
    assert stored.patch == {"policy": {"anti_passback": "warn"}, "health_interval_s": 5}
    override = await device_override(db, "gate-1")
    assert override is not None and override.revision == 3


def test_defaults_and_overrides_merge_and_invalid_patches_change_nothing(tmp_path: Path) -> None:
    asyncio.run(patch_scenario(tmp_path / "tracing.db"))


# --- a real site -------------------------------------------------------------------------


class Console:
    """What the web console does: its own connection, and a publisher on the gateway's login."""

    def __init__(self, site: Site) -> None:
        self.site = site

    async def __aenter__(self) -> Console:
        config = load_gateway_config(self.site.gateway_config)
        self.store = await SQLiteStore.open(self.site.database)
        self.db = await connect(self.site.database)
        settings = client_settings(config, client_id="qrgate-console")
        self.client = BusClient(settings, loop=asyncio.get_running_loop())
        self.client.start()
        await self.client.wait_connected(timeout=15)
        self.publisher = ConfigPublisher(self.store, self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.stop()
        await self.db.close()
        await self.store.close()

    async def wait_for(self, device_id: str, what: str, ok: Callable[[DeviceStatus], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while not ok(await device_status(self.db, device_id)):
            if asyncio.get_running_loop().time() > deadline:
                status = await device_status(self.db, device_id)
                raise AssertionError(f"timed out waiting for {what}: {status}")
            await asyncio.sleep(0.1)


async def console_scenario(site: Site, base: DeviceSettings) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with Console(site) as c:
        assert await c.publisher.push("gate-1", base) == 1
        await c.wait_for("gate-1", "version 1 applied", lambda s: s.applied_version == 1)
        await set_site_defaults(c.db, "test-site", {"policy": {"anti_passback": "warn"}})
        await set_device_override(c.db, "gate-1", {"health_interval_s": 1})
        assert await push_effective(c.db, c.publisher, ["gate-1"]) == {"gate-1": 2}
        # Nothing changed since: no new version.
        assert await push_effective(c.db, c.publisher, ["gate-1"]) == {"gate-1": 2}
        await c.wait_for("gate-1", "version 2 applied", lambda s: s.applied_version == 2)
        seen["applied"] = await device_status(c.db, "gate-1")

        # A config the device cannot start (no camera here): refused, so it drifts.
        await set_device_override(c.db, "gate-1", {"frame_source": {"type": "picamera2"}})
        assert await push_effective(c.db, c.publisher, ["gate-1"]) == {"gate-1": 3}
        await c.wait_for("gate-1", "refusal", lambda s: "version 3 refused" in s.config_error)
        later = datetime.now(UTC) + timedelta(seconds=121)
        seen["refused"] = await device_status(c.db, "gate-1", now=later)
        seen["all"] = await device_statuses(c.db, now=later)
        seen["other site"] = await device_statuses(c.db, site_ids=["elsewhere"])
        seen["checkins"] = await recent_checkins(c.db, "gate-2", limit=2)
        with pytest.raises(UnknownDevice):
            await device_status(c.db, "gate-9")
    return seen


def test_console_sees_applied_config_drift_on_refusal_and_recent_checkins(
    make_site: SiteMaker,
    blank_frames: Path,
    people_frames: tuple[list[str], list[Path]],
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames], people_frames[1][:3]])
    config_path = site.device_config("gate-1")
    config_path.write_text(config_path.read_text().replace('"loop": false', '"loop": true'))
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("granted", 2)
    for device_id in site.device_ids:
        services("device", site.device_config(device_id))
    count = "SELECT count(*) FROM checkins WHERE device_id='gate-2'"
    wait_until(lambda: db_rows(site, count) == [(3,)], "3 check-ins of gate-2")

    seen = asyncio.run(console_scenario(site, load_device_config(config_path).settings()))

    applied: DeviceStatus = seen["applied"]
    assert (applied.online, applied.applied_version, applied.desired_version) == (True, 2, 2)
    assert not applied.drift and applied.config_error == "" and applied.firmware
    where = (applied.site_id, applied.site_name, applied.gate)
    assert where == ("test-site", "test-site", "test gate")
    refused: DeviceStatus = seen["refused"]
    assert (refused.applied_version, refused.desired_version, refused.drift) == (2, 3, True)
    assert "picamera2 is not available" in refused.config_error
    assert [k for k in refused.alerts if k != "clock_unsynced"] == ["config_refused", "drift"]
    assert [s.device_id for s in seen["all"]] == ["gate-1", "gate-2"]
    assert seen["all"][1].desired_version == 0 and not seen["all"][1].drift
    assert seen["other site"] == []

    checkins: list[RecentCheckin] = seen["checkins"]
    assert len(checkins) == 2 and checkins[0].scanned_at >= checkins[1].scanned_at
    assert all(c.accepted and c.subject and c.initials for c in checkins)
    assert {f.name for f in fields(RecentCheckin)}.isdisjoint({"sealed", "personal", "id_number"})


async def revert_scenario(site: Site) -> tuple[DeviceSettings, ...]:
    manifest = load_manifest(site.directory)
    assert await asyncio.to_thread(register_at_gateway, site, manifest) == 1
    async with Console(site) as c:
        base = (await c.store.desired_configs())["gate-1"].settings  # provisioning's version 1
        await set_site_defaults(c.db, "test-site", {"health_interval_s": 5})
        assert await push_effective(c.db, c.publisher, ["gate-1"]) == {"gate-1": 2}
        layered = (await c.store.desired_configs())["gate-1"].settings
        # Provisioning run again for the same devices: their bases are unchanged.
        rerun = await asyncio.to_thread(register_at_gateway, site, manifest)
        assert rerun == 0, "a provisioning re-run stored new desired configs"
        await set_site_defaults(c.db, "test-site", {})
        assert await push_effective(c.db, c.publisher, ["gate-1"]) == {"gate-1": 3}
        reverted = (await c.store.desired_configs())["gate-1"].settings
    return base, layered, reverted


def test_cleared_site_defaults_revert_and_provisioning_reruns_keep_them(
    make_site: SiteMaker, blank_frames: Path, broker_for: Callable[[Site], Mosquitto]
) -> None:
    site = make_site([[blank_frames]])
    broker_for(site)
    base, layered, reverted = asyncio.run(revert_scenario(site))
    assert base.health_interval_s != 5 and layered.health_interval_s == 5
    assert reverted == base
    rows = db_rows(site, "SELECT version, layered FROM desired_configs ORDER BY version")
    assert rows == [(1, 0), (2, 1), (3, 1)]
