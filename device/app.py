"""The gate device: wires camera, decoder, decision, signals, outbox and uplink together."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from broker.client import BusClient, ClientSettings, Will
from broker.messages import CheckIn, DeviceState, encode
from broker.topics import Channel, device_topic
from device import __version__
from device.camera import FrameSource, make_frame_source
from device.config import DeviceConfig
from device.decision import Decider, Decision
from device.decoder import Decoder, make_decoder
from device.outbox import Outbox
from device.scanner import Scanner
from device.signals import Signals
from device.uplink import Uplink

logger = logging.getLogger(__name__)


def make_pin_factory(config: DeviceConfig) -> Any:
    """The gpiozero pin factory named by the config (None: gpiozero picks the Pi's own)."""
    if config.signals.factory == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    return None


class GateDevice:
    """One gate scanner. Hardware parts may be passed in by keyword, else built from config."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        pin_factory: Any = None,
        frame_source: FrameSource | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.config = config
        self.outbox = Outbox(config.outbox_path)
        if pin_factory is None:
            pin_factory = make_pin_factory(config)
        self.signals = Signals(config.signals, pin_factory=pin_factory)
        self._frame_source = frame_source or make_frame_source(config.frame_source)
        self._decoder = decoder or make_decoder(config.decoder)
        self._key = config.subject_key()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: BusClient | None = None
        self.uplink: Uplink | None = None
        self.scanner: Scanner | None = None

    async def run(self, stop: asyncio.Event, *, drain_s: float = 5.0) -> None:
        """Scan and deliver until ``stop`` is set, then try to deliver for ``drain_s``."""
        self._loop = asyncio.get_running_loop()
        self.client, self.uplink = self._make_link(self._loop)
        self.scanner = self._make_scanner()
        self.client.start()
        self.scanner.start()
        sender = asyncio.create_task(self.uplink.run(), name="uplink")
        try:
            await stop.wait()
            await asyncio.to_thread(self.scanner.stop)
            await self._drain(drain_s)
        finally:
            sender.cancel()
            self._shutdown()

    def _make_link(self, loop: asyncio.AbstractEventLoop) -> tuple[BusClient, Uplink]:
        c = self.config
        settings = ClientSettings(
            client_id=c.device_id,
            username=c.broker.username,
            password=c.broker.password(),
            host=c.broker.host,
            port=c.broker.port,
            keepalive_s=c.broker.keepalive_s,
            session_expiry_s=c.broker.session_expiry_s,
        )
        state_topic = device_topic(c.device_id, Channel.STATE)
        client = BusClient(
            settings,
            loop=loop,
            subscriptions=[(device_topic(c.device_id, Channel.ACK), 1)],
            will=Will(state_topic, encode(DeviceState(status="offline"))),
            on_message=self._on_message,
            on_connected=self._on_connected,
        )
        uplink = Uplink(
            device_id=c.device_id,
            outbox=self.outbox,
            client=client,
            max_batch=c.max_batch,
            ack_timeout_s=c.ack_timeout_s,
        )
        return client, uplink

    def _make_scanner(self) -> Scanner:
        decider = Decider(
            key=self._key,
            direction=self.config.direction,
            debounce_s=self.config.policy.debounce_s,
            monotonic=time.monotonic,
            wall_clock=lambda: datetime.now(UTC),
        )
        return Scanner(
            frame_source=self._frame_source,
            decoder=self._decoder,
            decider=decider,
            signals=self.signals,
            outbox=self.outbox,
            on_stored=self._stored_from_thread,
        )

    def _stored_from_thread(self, record: CheckIn, decision: Decision) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stored, record, decision)

    def _stored(self, record: CheckIn, decision: Decision) -> None:
        logger.info("%s seq=%-5d %s", self.config.device_id, record.seq, decision.describe())
        if self.uplink is not None:
            self.uplink.wake()

    def _on_connected(self) -> None:
        assert self.client is not None and self.uplink is not None
        self._publish_state("online")
        self.uplink.on_connected()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == device_topic(self.config.device_id, Channel.ACK) and self.uplink:
            self.uplink.on_ack_message(payload)

    def _publish_state(self, status: str) -> None:
        assert self.client is not None
        state = DeviceState(status=status, at=datetime.now(UTC), firmware=__version__)
        topic = device_topic(self.config.device_id, Channel.STATE)
        self.client.publish(topic, encode(state), qos=1, retain=True)

    async def _drain(self, drain_s: float) -> None:
        assert self.uplink is not None and self.client is not None
        deadline = time.monotonic() + drain_s
        while self.outbox.depth() and time.monotonic() < deadline:
            self.uplink.wake()
            await asyncio.sleep(0.05)
        left = self.outbox.depth()
        if left:
            logger.warning("stopping with %d check-ins still in the outbox", left)

    def _shutdown(self) -> None:
        if self.client is not None:
            if self.client.connected:
                self._publish_state("offline")
            self.client.stop()
        self.signals.close()
        self._frame_source.close()
        self.outbox.close()
