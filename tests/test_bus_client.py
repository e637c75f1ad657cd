"""BusClient on a real mosquitto: paho driven by the event loop, no thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from broker.client import BusClient, ClientSettings
from broker.launcher import Mosquitto
from broker.topics import Channel, all_devices, device_topic
from conftest import SiteMaker
from provisioning.site import GATEWAY_USER, Site


def _clients(
    site: Site, got: list[bytes], *, receiver_id: str = "receiver"
) -> tuple[BusClient, BusClient]:
    loop = asyncio.get_running_loop()
    port = site.broker.port
    device_id = site.device_ids[0]
    receiver = BusClient(
        ClientSettings(receiver_id, GATEWAY_USER, site.password(GATEWAY_USER), port=port),
        loop=loop,
        subscriptions=[(all_devices(Channel.CHECKIN), 1)],
        on_message=lambda _topic, payload: got.append(payload),
    )
    sender = BusClient(
        ClientSettings(device_id, device_id, site.password(device_id), port=port), loop=loop
    )
    return receiver, sender


async def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def _connected(receiver: BusClient, sender: BusClient, topic: str, got: list[bytes]) -> None:
    """Both connected, and the receiver's subscription in place."""
    receiver.start()
    sender.start()
    await receiver.wait_connected(15.0)
    await sender.wait_connected(15.0)
    while b"probe" not in got:
        await sender.publish_confirmed(topic, b"probe")
        await asyncio.sleep(0.05)


async def test_stop_sends_what_was_queued_before_disconnecting(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], blank_frames: Path
) -> None:
    """A device's last words (its "offline" state) go out even when it stops right after."""
    site = make_site([[blank_frames]])
    broker_for(site)
    got: list[bytes] = []
    receiver, sender = _clients(site, got)
    topic = device_topic(site.device_ids[0], Channel.CHECKIN)
    try:
        await _connected(receiver, sender, topic, got)
        last_words = [f"last-{i}".encode() for i in range(50)]
        for payload in last_words:
            sender.publish(topic, payload)
        sender.stop()  # at once, without yielding to the loop
        assert not sender.connected
        await _until(lambda: len(got) >= len(last_words) + 1 and got[-1] == last_words[-1])
        assert [p for p in got if p != b"probe"] == last_words
    finally:
        receiver.stop()
        sender.stop()


async def test_refused_login_is_never_a_connection(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], blank_frames: Path
) -> None:
    site = make_site([[blank_frames]])
    broker_for(site)
    device_id = site.device_ids[0]
    client = BusClient(
        ClientSettings(device_id, device_id, "not-the-password", port=site.broker.port),
        loop=asyncio.get_running_loop(),
    )
    client.start()
    try:
        await _until(lambda: client.refusals >= 2, timeout=20.0)  # refused, retried, refused
        assert not client.connected
    finally:
        client.stop()


async def test_broker_restart_reconnects_and_keeps_the_session(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], blank_frames: Path
) -> None:
    """Messages published while the receiver is away arrive after both reconnect."""
    site = make_site([[blank_frames]])
    broker = broker_for(site)
    got: list[bytes] = []
    lost: list[str] = []
    receiver, sender = _clients(site, got, receiver_id="restart-receiver")
    receiver._on_disconnected = lambda: lost.append("receiver")
    topic = device_topic(site.device_ids[0], Channel.CHECKIN)
    try:
        await _connected(receiver, sender, topic, got)
        assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]
        await asyncio.to_thread(broker.stop)
        await _until(lambda: not receiver.connected and not sender.connected)
        assert lost == ["receiver"]
        await asyncio.to_thread(broker.start)
        await sender.wait_connected(30.0)
        await sender.publish_confirmed(topic, b"after-restart")
        await receiver.wait_connected(30.0)
        await _until(lambda: b"after-restart" in got, timeout=30.0)
    finally:
        receiver.stop()
        sender.stop()
