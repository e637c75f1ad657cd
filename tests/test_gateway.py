"""A running gateway refuses every kind of bad message, stores none, and serves the next one."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from paho.mqtt.reasoncodes import ReasonCode

from broker.launcher import Mosquitto
from broker.messages import CheckIn, CheckInBatch, encode
from broker.topics import Channel, device_topic
from brokerkit import SyncClient
from conftest import SiteMaker, StartService, db_rows, stored_count, wait_until
from provisioning.site import Site

STREAM = "ab" * 16


def good_batch(device_id: str, seq: int) -> bytes:
    record = CheckIn(
        seq=seq,
        scanned_at=datetime.now(UTC),
        direction="in",
        kind="unrecognized",
        accepted=False,
        reason="unrecognized",
    )
    return encode(CheckInBatch(device_id=device_id, stream=STREAM, records=[record]))


def refusals(site: Site) -> list[tuple[str, str | None]]:
    rows = db_rows(site, "SELECT reason, device_id FROM rejected_messages ORDER BY id")
    return [(str(r), d) for r, d in rows]  # type: ignore[misc]


def device_client(site: Site, device_id: str) -> SyncClient:
    client = SyncClient(site.broker, f"test-{device_id}", device_id, site.password(device_id))
    assert not client.connect().is_failure
    return client


def test_bad_messages_are_refused_and_the_next_good_one_is_stored(
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames], [blank_frames]], extra_broker_users=["ghost-1"])
    broker_for(site)
    gateway = services("gateway", site.gateway_config).wait_log("granted", 2)
    a_topic = device_topic("gate-1", Channel.CHECKIN)
    record = json.loads(good_batch("gate-1", 1))
    bad = {
        "malformed_json": b'{"v": 1, "device_id": "gate-1", ',
        "schema": json.dumps({**record, "records": [{"seq": 0}]}).encode(),
        "too_large": json.dumps({**record, "pad": "x" * 100_000}).encode(),
        "device_mismatch": good_batch("gate-2", 1),
    }
    with device_client(site, "gate-1") as gate1, device_client(site, "ghost-1") as ghost:
        for payload in bad.values():
            assert not gate1.publish(a_topic, payload).is_failure
        ghost_topic = device_topic("ghost-1", Channel.CHECKIN)
        assert not ghost.publish(ghost_topic, good_batch("ghost-1", 1)).is_failure
        wait_until(lambda: len(refusals(site)) == 5, "five refusals recorded")
        assert stored_count(site) == 0

        assert not gate1.publish(a_topic, good_batch("gate-1", 1)).is_failure
        wait_until(lambda: stored_count(site) == 1, "the good message stored")

    assert refusals(site) == [
        ("malformed_json", "gate-1"),
        ("schema", "gate-1"),
        ("too_large", "gate-1"),
        ("device_mismatch", "gate-1"),
        ("unknown_device", None),
    ]
    assert gateway.alive()
    assert db_rows(site, "SELECT device_id, seq FROM checkins") == [("gate-1", 1)]


def test_a_device_cannot_write_into_another_devices_topics(
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames], [blank_frames]])
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("granted", 2)
    with device_client(site, "gate-1") as gate1:
        forged = gate1.publish(device_topic("gate-2", Channel.CHECKIN), good_batch("gate-2", 1))
        assert forged == ReasonCode(4, "Not authorized")  # 4: PUBACK packet type
        # Control: the same client's own message gets through, so the forged one had its chance.
        assert not gate1.publish(
            device_topic("gate-1", Channel.CHECKIN), good_batch("gate-1", 1)
        ).is_failure
        wait_until(lambda: stored_count(site) == 1, "the control message stored")
    assert db_rows(site, "SELECT device_id FROM checkins") == [("gate-1",)]


def test_anonymous_and_wrong_password_clients_are_refused(
    make_site: SiteMaker, blank_frames: Path, broker_for: Callable[[Site], Mosquitto]
) -> None:
    site = make_site([[blank_frames]])
    broker_for(site)
    anonymous = SyncClient(site.broker, "anon")
    assert anonymous.connect().is_failure
    anonymous.close()
    wrong = SyncClient(site.broker, "wrong", "gate-1", "not-the-password")
    assert wrong.connect().is_failure
    wrong.close()
