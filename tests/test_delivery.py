"""End to end through a real mosquitto: every scan stored exactly once, or still in an outbox."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from broker.client import BusClient, ClientSettings
from broker.launcher import Mosquitto
from broker.messages import Ack, CheckIn, CheckInBatch, decode_checkins, encode
from broker.sealing import Opener
from broker.topics import Channel, all_devices, device_topic
from brokerkit import SyncClient
from conftest import SiteMaker, StartService, db_rows, outbox_depth, stored_count, wait_until
from device.app import GateDevice
from device.config import load_config
from device.outbox import Outbox
from device.uplink import Uplink
from provisioning.census import take_census
from provisioning.site import GATEWAY_USER, Site

Frames = tuple[list[str], list[Path]]


def census(site: Site) -> dict[str, int]:
    return take_census(site.database, {d: site.outbox(d) for d in site.device_ids}).as_dict()


def acked_marks(site: Site) -> dict[str, int]:
    rows = db_rows(site, "SELECT device_id, acked_upto FROM streams")
    return {str(d): int(u) for d, u in rows}  # type: ignore[call-overload]


def assert_no_plain_identity(site: Site, texts: list[str]) -> None:
    """Not one ID number or full name in the database files, WAL included."""
    raw = b"".join(
        p.read_bytes() for p in site.database.parent.glob(site.database.name + "*") if p.is_file()
    )
    assert len(raw) > 100_000, "the database should hold the check-ins by now"
    for text in texts:
        id_number, _, name = text.split("|")[:3]
        assert id_number.encode() not in raw
        assert name.encode() not in raw
    opener = Opener.from_file(site.authority_key)
    sealed = db_rows(site, "SELECT sealed FROM checkins LIMIT 5")
    opened = {opener.open(str(s)).id_number for (s,) in sealed}
    assert opened <= {t.split("|")[0] for t in texts}, "the sealed fields open to the real IDs"


def device_status(site: Site) -> dict[str, str]:
    return {str(d): str(s) for d, s in db_rows(site, "SELECT device_id, status FROM devices")}


def all_delivered(site: Site, per_device: int) -> Callable[[], bool]:
    def check() -> bool:
        return stored_count(site) == per_device * len(site.device_ids) and all(
            outbox_depth(site, d) == 0 for d in site.device_ids
        )

    return check


def test_three_devices_600_scans_stored_once(
    make_site: SiteMaker,
    people_frames: Frames,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    texts, frames = people_frames
    site = make_site([frames, frames, frames])
    broker_for(site)
    services("gateway", site.gateway_config)
    devices = [services("device", site.device_config(d)) for d in site.device_ids]

    wait_until(all_delivered(site, 200), "600 check-ins stored and outboxes empty")

    totals = census(site)
    assert totals["scanned"] == 600
    assert totals["stored"] == 600
    assert totals["pending"] == totals["lost"] == totals["duplicates"] == 0
    per_device = db_rows(
        site, "SELECT device_id, count(*), min(seq), max(seq) FROM checkins GROUP BY device_id"
    )
    assert sorted(per_device) == [(d, 200, 1, 200) for d in site.device_ids]
    wait_until(lambda: acked_marks(site) == dict.fromkeys(site.device_ids, 200), "acks up to 200")
    assert_no_plain_identity(site, texts)
    wait_until(lambda: device_status(site) == dict.fromkeys(site.device_ids, "online"), "online")
    for device in devices:
        assert device.stop() == 0
    wait_until(lambda: device_status(site) == dict.fromkeys(site.device_ids, "offline"), "offline")
    last_seen = db_rows(site, "SELECT count(*) FROM devices WHERE last_seen IS NOT NULL")
    assert last_seen == [(3,)]


def test_gateway_killed_mid_stream_loses_and_doubles_nothing(
    make_site: SiteMaker,
    people_frames: Frames,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    _, frames = people_frames
    # Paced so the stream is still flowing when the gateway dies.
    site = make_site([frames, frames, frames], interval_s=0.01, ack_timeout_s=1.0)
    broker_for(site)
    gateway = services("gateway", site.gateway_config)
    for device_id in site.device_ids:
        services("device", site.device_config(device_id))

    wait_until(lambda: stored_count(site) >= 100, "the first 100 check-ins")
    gateway.kill()
    at_kill = stored_count(site)
    assert at_kill < 600, "the stream ended before the kill; the test proves nothing"
    services("gateway", site.gateway_config)

    wait_until(all_delivered(site, 200), "600 check-ins after the restart")
    totals = census(site)
    assert (totals["scanned"], totals["stored"], totals["lost"], totals["duplicates"]) == (
        600,
        600,
        0,
        0,
    )
    distinct = db_rows(site, "SELECT count(DISTINCT device_id || ':' || seq) FROM checkins")
    assert distinct == [(600,)]


def run_device_in_thread(
    device: GateDevice, stop: threading.Event
) -> tuple[threading.Thread, list[Exception]]:
    errors: list[Exception] = []

    async def main() -> None:
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=lambda: (stop.wait(), loop.call_soon_threadsafe(stop_event.set)), daemon=True
        ).start()
        await device.run(stop_event, drain_s=0)

    def target() -> None:
        try:
            asyncio.run(main())
        except Exception as exc:  # noqa: BLE001 - handed to the test, not lost with the thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_device_scans_while_broker_down_and_delivers_later(
    make_site: SiteMaker,
    people_frames: Frames,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    _, frames = people_frames
    site = make_site([frames[:20]])
    config = load_config(site.device_config("gate-1"))
    factory = MockFactory()
    device = GateDevice(config, pin_factory=factory)
    stop = threading.Event()
    thread, errors = run_device_in_thread(device, stop)
    try:
        wait_until(
            lambda: device.pipeline is not None and device.pipeline.scanner.exhausted.is_set(),
            "scans",
        )
        assert device.outbox.depth() == 20
        assert device.client is not None and not device.client.connected
        green = factory.pin(config.signals.green_led)
        wait_until(lambda: any(s.state for s in green.states), "the green LED lit")

        broker_for(site)
        services("gateway", site.gateway_config)
        wait_until(lambda: stored_count(site) == 20, "20 check-ins delivered after the broker came")
        wait_until(lambda: device.outbox.depth() == 0, "the outbox emptied by acks")
    finally:
        stop.set()
        thread.join(15)
    assert not errors, errors
    assert census(site)["lost"] == 0


def test_device_killed_right_after_scan_delivers_on_restart(
    make_site: SiteMaker,
    people_frames: Frames,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    texts, frames = people_frames
    site = make_site([frames[:1]])
    # No broker yet: the check-in can only be in the outbox when the device dies.
    device = services("device", site.device_config("gate-1"))
    wait_until(lambda: outbox_depth(site, "gate-1") == 1, "the scan stored in the outbox")
    device.kill()
    assert outbox_depth(site, "gate-1") == 1

    # After the restart the camera sees nobody: only the old check-in can arrive.
    config_path = site.device_config("gate-1")
    config_path.write_text(config_path.read_text().replace(str(frames[0]), str(blank_frames)))
    broker_for(site)
    services("gateway", site.gateway_config)
    services("device", config_path)

    wait_until(lambda: stored_count(site) == 1 and outbox_depth(site, "gate-1") == 0, "delivery")
    db = sqlite3.connect(site.database)
    (sealed,) = db.execute("SELECT sealed FROM checkins WHERE seq = 1").fetchone()
    assert Opener.from_file(site.authority_key).open(sealed).id_number == texts[0].split("|")[0]


async def test_silent_gateway_gets_the_oldest_message_again_not_the_outbox(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], blank_frames: Path
) -> None:
    """After an ack timeout one message goes again; acks then refill the rest in order."""
    site = make_site([[blank_frames]])
    broker_for(site)
    device_id = site.device_ids[0]
    gateway = SyncClient(site.broker, "silent-gateway", GATEWAY_USER, site.password(GATEWAY_USER))
    gateway.connect()
    gateway.subscribe(all_devices(Channel.CHECKIN))
    outbox = Outbox(site.outbox(device_id))
    for _ in range(250):
        outbox.append(
            lambda seq: CheckIn(
                seq=seq,
                scanned_at=datetime.now(UTC),
                direction="in",
                kind="unrecognized",
                accepted=False,
                reason="unrecognized",
            )
        )
    expected_first = encode(
        CheckInBatch(device_id=device_id, stream=outbox.stream, records=outbox.pending(limit=100))
    )
    client = BusClient(
        ClientSettings(device_id, device_id, site.password(device_id), port=site.broker.port),
        loop=asyncio.get_running_loop(),
        subscriptions=[(device_topic(device_id, Channel.ACK), 1)],
        on_message=lambda _topic, payload: uplink.on_ack_message(payload),
    )
    uplink = Uplink(
        device_id=device_id, outbox=outbox, client=client, max_batch=100, ack_timeout_s=1.0
    )
    client.start()
    task = asyncio.create_task(uplink.run())

    async def next_seqs(timeout: float = 15.0) -> list[int] | None:
        message = await asyncio.to_thread(gateway.next_message, timeout)
        return (
            None
            if message is None
            else [r.seq for r in decode_checkins(bytes(message.payload)).records]
        )

    def ack(upto: int) -> None:
        payload = encode(Ack(stream=outbox.stream, upto=upto))
        gateway.publish(device_topic(device_id, Channel.ACK), payload)

    try:
        first = await asyncio.to_thread(gateway.next_message, 15.0)
        assert first is not None and first.payload == expected_first, "same bytes as encode()"
        assert await next_seqs() == list(range(101, 201))
        assert await next_seqs() == list(range(201, 251))
        # No ack within ack_timeout_s: the oldest message once more, not all three.
        assert await next_seqs() == list(range(1, 101))
        uplink.configure(max_batch=100, ack_timeout_s=60.0)  # no more timeouts from here
        assert await next_seqs(2.0) is None
        # Each advancing ack while resending sends the next oldest message at once.
        ack(100)
        assert await next_seqs() == list(range(101, 201))
        ack(200)
        assert await next_seqs() == list(range(201, 251))
        ack(250)
        assert await next_seqs(2.0) is None
        assert outbox.depth() == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.stop()
        gateway.close()
        outbox.close()


async def test_bus_client_hands_a_burst_to_the_loop_in_order(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], blank_frames: Path
) -> None:
    """Thousands of messages in a burst all reach the handler, in order; confirms still work."""
    site = make_site([[blank_frames]])
    broker_for(site)
    device_id = site.device_ids[0]
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    port = site.broker.port
    receiver = BusClient(
        ClientSettings("burst-receiver", GATEWAY_USER, site.password(GATEWAY_USER), port=port),
        loop=loop,
        subscriptions=[(all_devices(Channel.CHECKIN), 1)],
        on_message=lambda _topic, payload: got.append(payload),
    )
    sender = BusClient(
        ClientSettings(device_id, device_id, site.password(device_id), port=port), loop=loop
    )
    topic = device_topic(device_id, Channel.CHECKIN)
    receiver.start()
    sender.start()
    try:
        await receiver.wait_connected(15.0)
        await sender.wait_connected(15.0)
        while not got:  # until the receiver's subscription is in place
            await sender.publish_confirmed(topic, b"probe")
            await asyncio.sleep(0.05)
        burst = [str(i).encode() for i in range(3000)]
        for payload in burst[:-1]:
            sender.publish(topic, payload)
        await sender.publish_confirmed(topic, burst[-1], timeout=30.0)
        async with asyncio.timeout(30.0):
            while got[-1] != burst[-1]:
                await asyncio.sleep(0.05)
        assert [p for p in got if p != b"probe"] == burst
    finally:
        sender.stop()
        receiver.stop()
