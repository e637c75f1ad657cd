"""Config pushed by the gateway through the real broker: applied, persisted, reported, refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.launcher import Mosquitto
from broker.settings import FileSourceConfig
from broker.topics import Channel, device_topic
from brokerkit import SyncClient
from conftest import ROOT, SiteMaker, StartService, db_rows, wait_until
from device.config import load_config
from device.configsync import persisted_version
from gateway.store import SQLiteStore
from provisioning.site import Site


def device_row(site: Site, device_id: str) -> dict[str, Any]:
    rows = db_rows(
        site,
        "SELECT config_version, config_error, health, status FROM devices WHERE device_id=?",
        (device_id,),
    )
    if not rows:
        return {}
    version, error, health, status = rows[0]
    return {
        "version": version,
        "error": error,
        "health": json.loads(str(health)) if health else None,
        "status": status,
    }


def push_cli(
    site: Site, device_id: str, settings: dict[str, Any], tmp_path: Path
) -> tuple[int, str]:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "push-config", "--config", str(site.gateway_config),
         "--device", device_id, "--settings", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_push_apply_persist_report_and_refuse(
    tmp_path: Path,
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames]])
    config_path = site.device_config("gate-1")
    local = load_config(config_path)
    looping = FileSourceConfig(paths=[blank_frames], loop=True, interval_s=0.1)
    config_path.write_text(config_path.read_text().replace('"loop": false', '"loop": true'))
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("granted", 2)
    device = services("device", config_path)
    wait_until(lambda: device_row(site, "gate-1").get("status") == "online", "device online")

    settings = local.settings().model_dump(mode="json")
    settings["frame_source"] = looping.model_dump(mode="json")
    settings["health_interval_s"] = 1.0
    settings["policy"]["anti_passback"] = "warn"
    code, out = push_cli(site, "gate-1", settings, tmp_path)
    assert code == 0, out
    assert "version 1 published" in out

    wait_until(lambda: device_row(site, "gate-1").get("version") == 1, "version 1 reported")
    assert persisted_version(site.device_dir("gate-1")) == 1
    wait_until(lambda: device_row(site, "gate-1").get("health") is not None, "a health report")
    health = device_row(site, "gate-1")["health"]
    assert health["direction"] == "in" and health["outbox_depth"] == 0
    assert health["uptime_s"] > 0 and health["camera_fps"] >= 0

    # A push the device cannot apply, as a buggy gateway might send it: refused and reported.
    bad = {
        "v": 1,
        "version": 2,
        "settings": {**settings, "signals": {"green_led": 5, "red_led": 5}},
    }
    gateway = SyncClient(site.broker, "test-gateway", "gateway", site.password("gateway"))
    assert not gateway.connect().is_failure
    topic = device_topic("gate-1", Channel.CONFIG)
    assert not gateway.publish(topic, json.dumps(bad).encode(), retain=True).is_failure
    gateway.close()
    wait_until(
        lambda: "version 2 refused" in device_row(site, "gate-1").get("error", ""), "refusal"
    )
    assert device_row(site, "gate-1")["version"] == 1
    assert persisted_version(site.device_dir("gate-1")) == 1
    assert device.alive()

    # The gateway's own command refuses invalid settings and stores nothing.
    code, out = push_cli(site, "gate-1", {**settings, "max_batch": 0}, tmp_path)
    assert code == 2 and "max_batch" in out
    assert db_rows(site, "SELECT count(*) FROM desired_configs") == [(1,)]
    code, out = push_cli(site, "gate-9", settings, tmp_path)
    assert code == 2 and "not registered" in out

    # A reboot without the network comes back with the pushed config.
    assert device.stop() == 0
    restarted = services("device", config_path)
    restarted.wait_log("using pushed config version 1")


def test_config_stored_by_another_process_reaches_the_running_device(
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    """Provisioning and badge revocation write desired configs straight into the database."""
    site = make_site([[blank_frames]])
    config_path = site.device_config("gate-1")
    config_path.write_text(config_path.read_text().replace('"loop": false', '"loop": true'))
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("granted", 2)
    services("device", config_path)
    wait_until(lambda: device_row(site, "gate-1").get("status") == "online", "device online")

    settings = load_config(config_path).settings()
    revoked = settings.policy.model_copy(update={"revoked_badges": ["LOSTBADGE0001"]})
    changed = settings.model_copy(update={"policy": revoked})

    async def store_desired() -> int:
        store = await SQLiteStore.open(site.database)
        try:
            return await store.add_desired_config("gate-1", changed)
        finally:
            await store.close()

    version = asyncio.run(store_desired())
    wait_until(lambda: device_row(site, "gate-1").get("version") == version, "version applied")
    assert persisted_version(site.device_dir("gate-1")) == version
