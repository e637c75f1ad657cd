"""The gate device: a scan pipeline, the durable outbox, the broker link, config and health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from broker.client import BusClient, ClientSettings, PublishRefused, Will
from broker.messages import CheckIn, DeviceState, encode
from broker.settings import ConfigPush
from broker.topics import Channel, device_topic
from device import __version__, systemd
from device.camera import FrameSource
from device.clock import clock_synchronised
from device.config import DeviceConfig
from device.configsync import ConfigKeeper
from device.decision import Decision
from device.decoder import Decoder
from device.health import HealthMonitor
from device.outbox import Outbox
from device.pipeline import Pipeline
from device.scanner import ScanStats
from device.uplink import Uplink

logger = logging.getLogger(__name__)


def make_pin_factory(config: DeviceConfig) -> Any:
    """The gpiozero pin factory named by the config (None: gpiozero picks the Pi's own)."""
    if config.signals.factory == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        # PWM pins so a tonal buzzer or an RGB LED works in simulation too.
        return MockFactory(pin_class=MockPWMPin)
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
        clock_synced: Callable[[], bool] = clock_synchronised,
    ) -> None:
        self.keeper = ConfigKeeper(config)
        self.outbox = Outbox(config.outbox_path)
        self.stats = ScanStats()
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(config)
        self._frame_source = frame_source
        self._decoder = decoder
        self._clock_synced = clock_synced
        self._key = config.subject_key()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: BusClient | None = None
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None
        self._reconfiguring: asyncio.Lock | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> DeviceConfig:
        """The config in force (local file plus the last good push)."""
        return self.keeper.current

    async def run(self, stop: asyncio.Event, *, drain_s: float = 5.0) -> None:
        """Scan and deliver until ``stop`` is set, then try to deliver for ``drain_s``."""
        self._loop = asyncio.get_running_loop()
        self._reconfiguring = asyncio.Lock()
        self.client, self.uplink = self._make_link(self._loop)
        self.pipeline = await asyncio.to_thread(self._build, self.config)
        self.pipeline.signals.link_down(True)
        self.client.start()
        self.pipeline.start()
        health = HealthMonitor(
            outbox=self.outbox,
            stats=lambda: self.stats,
            dropped=lambda: self.pipeline.dropped_frames() if self.pipeline else 0,
            clock_synced=self._clock_synced,
            direction=self._direction,
        )
        tasks = [
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self._report_health(health), name="health"),
            asyncio.create_task(self._feed_watchdog(), name="watchdog"),
        ]
        systemd.notify("READY=1")
        try:
            await stop.wait()
            systemd.notify("STOPPING=1")
            await asyncio.to_thread(self.pipeline.scanner.stop)
            await self._drain(drain_s)
        finally:
            for task in tasks:
                task.cancel()
            await self._shutdown()

    def _build(self, config: DeviceConfig) -> Pipeline:
        return Pipeline(
            config,
            key=self._key,
            outbox=self.outbox,
            stats=self.stats,
            on_stored=self._stored_from_thread,
            on_button=self._button_from_thread,
            clock_synced=self._clock_synced,
            pin_factory=self.pin_factory,
            frame_source=self._frame_source,
            decoder=self._decoder,
        )

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
            tls=c.broker.tls,
        )
        client = BusClient(
            settings,
            loop=loop,
            subscriptions=[
                (device_topic(c.device_id, Channel.ACK), 1),
                (device_topic(c.device_id, Channel.CONFIG), 1),
            ],
            will=Will(device_topic(c.device_id, Channel.STATE), self._state("offline")),
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
        )
        uplink = Uplink(
            device_id=c.device_id,
            outbox=self.outbox,
            client=client,
            max_batch=c.max_batch,
            ack_timeout_s=c.ack_timeout_s,
        )
        return client, uplink

    # -- events handed over from other threads --------------------------------

    def _stored_from_thread(self, record: CheckIn, decision: Decision) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stored, record, decision)

    def _button_from_thread(self) -> None:
        # gpiozero's thread: hand over, touch nothing else here.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._button_pressed)

    # -- on the event loop ---------------------------------------------------------

    def _stored(self, record: CheckIn, decision: Decision) -> None:
        logger.info("%s seq=%-5d %s", self.config.device_id, record.seq, decision.describe())
        if self.uplink is not None:
            self.uplink.wake()

    def _button_pressed(self) -> None:
        if self.pipeline is None:
            return
        if self.config.policy.direction_mode == "button":
            direction = self.pipeline.policy.toggle_direction()
            self.pipeline.signals.direction_changed(direction)
            logger.info("direction switched to %s by the button", direction)
        else:
            logger.info("exit button pressed")
            self.pipeline.signals.release()

    def _direction(self) -> Literal["in", "out"]:
        return self.pipeline.policy.direction if self.pipeline else self.config.direction

    def _on_connected(self) -> None:
        assert self.uplink is not None
        if self.pipeline is not None:
            self.pipeline.signals.link_down(False)
        self._publish_state("online")
        self.uplink.on_connected()

    def _on_disconnected(self) -> None:
        if self.pipeline is not None:
            self.pipeline.signals.link_down(True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.uplink is None:
            return
        if topic == device_topic(self.config.device_id, Channel.ACK):
            self.uplink.on_ack_message(payload)
        elif topic == device_topic(self.config.device_id, Channel.CONFIG):
            checked = self.keeper.check(payload)
            if checked is None:
                if self.keeper.error:
                    self._publish_state("online")
                return
            task = asyncio.create_task(self._reconfigure(*checked), name="reconfigure")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _reconfigure(self, push: ConfigPush, config: DeviceConfig) -> None:
        """Swap the pipeline between two frames; on failure bring the old config back."""
        assert self._reconfiguring is not None and self.pipeline is not None
        async with self._reconfiguring:
            old = self.pipeline
            await asyncio.to_thread(old.close)
            try:
                self.pipeline = await asyncio.to_thread(self._build, config)
            except Exception as exc:  # a camera or pin that will not open: keep scanning
                logger.exception("pushed config version %d failed to start", push.version)
                self.keeper.refuse(push.version, f"failed to start: {exc}")
                self.pipeline = await asyncio.to_thread(self._build, old.config)
            else:
                self.keeper.commit(push, config)
                self._apply_link_settings(config)
            connected = self.client is not None and self.client.connected
            self.pipeline.signals.link_down(not connected)
            self.pipeline.start()
            self._publish_state("online")

    def _apply_link_settings(self, config: DeviceConfig) -> None:
        if self.uplink is not None:
            self.uplink.configure(max_batch=config.max_batch, ack_timeout_s=config.ack_timeout_s)

    async def _feed_watchdog(self) -> None:
        """Ping systemd's watchdog while the scan loop lives; a hung device gets restarted."""
        interval = systemd.watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self.pipeline is not None and self.pipeline.scanner.healthy():
                systemd.notify("WATCHDOG=1")
            else:
                logger.error("scan loop is not running; not feeding the watchdog")

    async def _report_health(self, monitor: HealthMonitor) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            if self.client is not None and self.client.connected:
                self._publish_state("online", monitor)

    def _state(
        self, status: Literal["online", "offline"], monitor: HealthMonitor | None = None
    ) -> bytes:
        state = DeviceState(
            status=status,
            at=datetime.now(UTC),
            firmware=__version__,
            config_version=self.keeper.version,
            config_error=self.keeper.error,
            health=monitor.report() if monitor else None,
        )
        return encode(state)

    def _publish_state(
        self, status: Literal["online", "offline"], monitor: HealthMonitor | None = None
    ) -> None:
        assert self.client is not None
        topic = device_topic(self.config.device_id, Channel.STATE)
        try:
            self.client.publish(topic, self._state(status, monitor), qos=1, retain=True)
        except PublishRefused as exc:
            logger.warning("state not published: %s", exc)

    async def _drain(self, drain_s: float) -> None:
        assert self.uplink is not None
        deadline = time.monotonic() + drain_s
        while self.outbox.depth() and time.monotonic() < deadline:
            self.uplink.wake()
            await asyncio.sleep(0.05)
        left = self.outbox.depth()
        if left:
            logger.warning("stopping with %d check-ins still in the outbox", left)

    async def _shutdown(self) -> None:
        if self.client is not None:
            if self.client.connected:
                self._publish_state("offline")
            self.client.stop()
        if self.pipeline is not None:
            await asyncio.to_thread(self.pipeline.close)
        if self._frame_source is not None:
            self._frame_source.close()
        self.outbox.close()
