"""Link-down signalling: slow amber while the broker is gone, cleared when it is back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from gpiozero.pins.mock import MockFactory, MockPWMPin

from broker.launcher import Mosquitto
from conftest import SiteMaker, wait_until
from device.app import GateDevice
from device.config import load_config
from provisioning.site import Site


def amber_blinks(factory: MockFactory, green: int, red: int) -> int:
    """How often green and red went high together (amber) in the recorded history."""
    g = [s.timestamp for s in factory.pin(green).states if s.state]
    r = [s.timestamp for s in factory.pin(red).states if s.state]
    return sum(1 for t in g if any(abs(t - u) < 0.05 for u in r))


def test_link_down_pattern_follows_the_broker(
    make_site: SiteMaker, blank_frames: Path, broker_for: Callable[[Site], Mosquitto]
) -> None:
    site = make_site([[blank_frames]])
    path = site.device_config("gate-1")
    path.write_text(path.read_text().replace('"loop": false', '"loop": true'))
    config = load_config(path)
    broker = broker_for(site)
    factory = MockFactory(pin_class=MockPWMPin)
    device = GateDevice(config, pin_factory=factory, clock_synced=lambda: True)
    stop = threading.Event()
    loop_ready: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loop_ready.append(asyncio.get_running_loop())
        stop_event = asyncio.Event()
        threading.Thread(
            target=lambda: (stop.wait(), loop_ready[0].call_soon_threadsafe(stop_event.set)),
            daemon=True,
        ).start()
        await device.run(stop_event, drain_s=0)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    green, red = config.signals.green_led, config.signals.red_led
    try:
        wait_until(lambda: device.client is not None and device.client.connected, "connected")
        for pin in (green, red):
            factory.pin(pin).clear_states()
        broker.stop()
        wait_until(lambda: amber_blinks(factory, green, red) >= 2, "amber blinking, link down")
        broker.start()
        wait_until(lambda: device.client is not None and device.client.connected, "reconnected")
        wait_until(
            lambda: not factory.pin(green).state and not factory.pin(red).state, "lights off"
        )
        count = amber_blinks(factory, green, red)
        threading.Event().wait(2.5)
        assert amber_blinks(factory, green, red) == count, "amber went on after the link was back"
    finally:
        stop.set()
        thread.join(15)
