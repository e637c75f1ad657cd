"""The one seam where paho's network thread meets asyncio, for devices and the gateway alike.

paho runs its own thread (``loop_start``); every paho callback does nothing but
hand the event to the event loop. Handlers given to :class:`BusClient` therefore
always run on the event loop, in the order paho saw the events.

The hand-off is per burst, not per event: a callback appends to a deque and
only the first event of a burst schedules a drain with
``loop.call_soon_threadsafe`` (each call writes to the loop's self-pipe and wakes
it). Under load one wake-up then carries many messages; an idle client still
hands each event over at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker.errors import BrokerError
from broker.secrets import TlsFiles

logger = logging.getLogger(__name__)


class PublishRefused(BrokerError):
    """paho did not accept a message for sending (not connected, queue full, ...)."""


class NotConnected(PublishRefused):
    """The client has no accepted connection to the broker."""


@dataclass(frozen=True, slots=True)
class Will:
    """A last-will message the broker publishes if the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach and log in to the broker."""

    client_id: str
    username: str
    password: str
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive_s: int = 15
    # Kept after a disconnect so QoS 1 messages queued for us survive a reconnect.
    session_expiry_s: int = 7 * 24 * 3600
    max_queued: int = 5000
    max_inflight: int = 100
    # TLS to the broker; with a client certificate the certificate is the login.
    tls: TlsFiles | None = None

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"ClientSettings(client_id={self.client_id!r}, host={self.host!r}, port={self.port})"


MessageHandler = Callable[[str, bytes], None]


class BusClient:
    """An MQTT v5 client whose callbacks run on an asyncio event loop.

    ``connected`` is true only after a CONNACK with a success reason code: a
    refused connection (bad password, not authorised) is logged and retried,
    never taken for a connection.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        on_message: MessageHandler | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._loop = loop
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.connected = False
        self.refusals = 0
        self._connected_event = asyncio.Event()
        self._confirmations: dict[int, asyncio.Future[None]] = {}
        # publish_confirmed calls in progress: only then does a PUBACK need the loop.
        self._confirming = 0
        # Events from paho's thread waiting for the loop, and whether a drain is due.
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False
        self._client = self._make_client(will)

    def _make_client(self, will: Will | None) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(s.username, s.password or None)
        if s.tls is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca_file),
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None,
            )
        client.max_queued_messages_set(s.max_queued)
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=15)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        return client

    # -- lifecycle (event loop side) ---------------------------------------

    def start(self) -> None:
        """Begin connecting in paho's thread; reconnects happen by themselves."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for an accepted connection; raises TimeoutError."""
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Hand a message to paho; returns its mid or raises :class:`PublishRefused`."""
        if not self.connected:
            raise NotConnected(f"not connected to {self.settings.host}:{self.settings.port}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishRefused(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    async def publish_confirmed(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; a refusal raises PublishRefused."""
        # Counted before the publish, so paho's thread hands this PUBACK to the loop.
        self._confirming += 1
        try:
            mid = self.publish(topic, payload, qos=1, retain=retain)
            # Registered before any await: the PUBACK is handled on this loop, after this line.
            waiter = self._loop.create_future()
            self._confirmations[mid] = waiter
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise PublishRefused(f"no PUBACK for {topic} within {timeout:.0f} s") from None
            finally:
                self._confirmations.pop(mid, None)
        finally:
            self._confirming -= 1

    # -- paho thread side: hand everything to the loop ----------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        self._inbox.append((fn, args))
        # The drain clears the flag before it empties the deque, so an event appended
        # while the flag is still set is always drained by the one already scheduled.
        if not self._drain_scheduled and not self._loop.is_closed():
            self._drain_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed meanwhile: nobody is listening
                self._drain_scheduled = False

    def _paho_connect(
        self, _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any = None
    ) -> None:
        self._call(self._handle_connect, rc.is_failure, str(rc), bool(flags.session_present))

    def _paho_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._call(self._handle_disconnect, str(rc))

    def _paho_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._handle_message, msg.topic, bytes(msg.payload))

    def _paho_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        # Nobody waits for the PUBACK of a plain publish: only refusals need the loop.
        if rc.is_failure or self._confirming:
            self._call(self._handle_published, mid, rc.is_failure, str(rc))

    def _paho_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any
    ) -> None:
        failures = [str(rc) for rc in rcs if rc.is_failure]
        self._call(self._handle_subscribed, mid, failures)

    # -- event loop side ------------------------------------------------------

    def _drain(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:  # one bad handler must not strand the rest of the burst
                logger.exception("%s: handler %s failed", self.settings.client_id, fn)

    def _handle_connect(self, failed: bool, reason: str, session_present: bool) -> None:
        if failed:
            self.refusals += 1
            logger.error(
                "broker %s:%d refused %s: %s",
                self.settings.host,
                self.settings.port,
                self.settings.client_id,
                reason,
            )
            return
        logger.info(
            "%s connected to %s:%d (session present: %s)",
            self.settings.client_id,
            self.settings.host,
            self.settings.port,
            session_present,
        )
        self.connected = True
        self._connected_event.set()
        for topic, qos in self._subscriptions:
            self._client.subscribe(topic, qos=qos)
        if self._on_connected is not None:
            self._on_connected()

    def _handle_disconnect(self, reason: str) -> None:
        was_connected = self.connected
        self.connected = False
        self._connected_event.clear()
        if was_connected:
            logger.warning("%s lost the broker: %s", self.settings.client_id, reason)
            if self._on_disconnected is not None:
                self._on_disconnected()

    def _handle_message(self, topic: str, payload: bytes) -> None:
        if self._on_message is not None:
            self._on_message(topic, payload)

    def _handle_published(self, mid: int, failed: bool, reason: str) -> None:
        waiter = self._confirmations.pop(mid, None)
        if failed:
            logger.error("%s: broker refused message %d: %s", self.settings.client_id, mid, reason)
        if waiter is not None and not waiter.done():
            if failed:
                waiter.set_exception(PublishRefused(f"broker refused the message: {reason}"))
            else:
                waiter.set_result(None)

    def _handle_subscribed(self, mid: int, failures: list[str]) -> None:
        if failures:
            logger.error(
                "%s: broker refused subscription %d: %s", self.settings.client_id, mid, failures
            )
        else:
            logger.info("%s: subscription %d granted", self.settings.client_id, mid)
