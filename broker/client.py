"""The MQTT client of devices and the gateway: paho driven by the asyncio event loop.

paho has no thread of its own here. The event loop watches its socket
(``add_reader``/``add_writer``) and calls paho's ``loop_read``/``loop_write``;
a task calls ``loop_misc`` for keepalive pings. Only the blocking connect
(DNS, TCP, TLS handshake) runs in an executor thread, and the loop touches the
client only once it returns. This is how aiomqtt drives paho: no thread to
wake per publish (paho's threaded loop writes a socket pair and switches
threads on every ``publish()``), no hand-off per received message.

paho's callbacks only queue the event; a drain scheduled once per burst runs
the handlers, outside paho's own call stack and in the order paho saw the
events. Handlers given to :class:`BusClient` therefore always run on the event
loop, never inside paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
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

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 15.0
# At stop, how long to wait for the broker to read everything before its own close.
STOP_LINGER_S = 1.0
# How often paho checks keepalive (sends PINGREQ, notices a missing PINGRESP).
MISC_INTERVAL_S = 1.0


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
    never taken for a connection. A lost connection is retried by itself,
    every 1 s at first and at most every 15 s.
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
        # publish_confirmed calls in progress: only then does a PUBACK need handling.
        self._confirming = 0
        # Events from paho waiting for the drain, and whether a drain is due.
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False
        self._loop_thread: int | None = None
        self._socket: Any = None  # the socket the loop watches, while connected
        self._lost = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._accepted = False  # a CONNACK accepted this connection
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
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        return client

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting; reconnects happen by themselves until :meth:`stop`."""
        self._loop_thread = threading.get_ident()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._runner = self._loop.create_task(
            self._keep_connected(), name=f"mqtt-{self.settings.client_id}"
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for an accepted connection; raises TimeoutError."""
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    def stop(self) -> None:
        """Send what is queued and a DISCONNECT (no last will), then stop reconnecting."""
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
        if self._socket is not None:
            self._client.disconnect()
            # Non-blocking: pending publishes, then the DISCONNECT, after which paho
            # closes the socket (and _socket_closed lets go of it).
            self._client.loop_write()
        self._forget_socket()
        self.connected = False
        self._connected_event.clear()

    async def _keep_connected(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._stopping:
            if await self._open():
                await self._lost.wait()
                self._forget_socket()
                if self._accepted:  # back off from scratch after a working connection
                    delay = RECONNECT_MIN_S
                self._accepted = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _open(self) -> bool:
        """Connect in an executor thread, then hand the socket to the loop."""
        client = self._client
        # While the executor thread connects, paho must not call back into the loop.
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        client.on_socket_close = None
        connecting = self._loop.run_in_executor(None, client.reconnect)
        try:
            rc = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(self._abandon)
            raise
        except OSError as exc:  # refused, unreachable, timed out, TLS handshake failed
            logger.warning(
                "%s cannot reach %s:%d: %s",
                self.settings.client_id,
                self.settings.host,
                self.settings.port,
                exc,
            )
            return False
        sock = client.socket()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
            logger.warning("%s: connect failed: %s", self.settings.client_id, mqtt.error_string(rc))
            return False
        self._lost.clear()
        self._socket = sock
        _no_delay(sock)
        self._loop.add_reader(sock, self._readable)
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._socket_closed
        if client.want_write():  # the CONNECT went out only in part
            self._loop.add_writer(sock, self._writable)
        self._loop.create_task(self._keepalive(sock), name=f"mqtt-ping-{self.settings.client_id}")
        return True

    def _abandon(self, connecting: asyncio.Future[MQTTErrorCode]) -> None:
        """Stopped while connecting: close the connection the executor opened after all."""
        if not connecting.cancelled() and connecting.exception() is None:
            self._client.disconnect()
            self._client.loop_write()

    async def _keepalive(self, sock: Any) -> None:
        while self._socket is sock and not self._stopping:
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # paho closed the socket and reported the disconnect
            await asyncio.sleep(MISC_INTERVAL_S)

    # -- socket events (event loop) --------------------------------------------

    def _readable(self) -> None:
        client = self._client
        rc = client.loop_read()
        # A TLS socket can hold decrypted bytes that the selector does not see.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and _tls_pending(client.socket()):
            rc = client.loop_read()

    def _writable(self) -> None:
        self._client.loop_write()

    def _register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _socket_closed(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        # Called by paho just before it closes the socket: let go of its descriptor
        # while it is still valid.
        if sock is self._socket:
            self._forget_socket()
            if self._stopping:
                _linger(sock)

    def _forget_socket(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

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
        # Counted before the publish, so this PUBACK is handed to the drain.
        self._confirming += 1
        try:
            mid = self.publish(topic, payload, qos=1, retain=retain)
            # Registered before any await: the PUBACK is handled after this line.
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

    # -- paho callbacks: queue the event --------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        self._inbox.append((fn, args))
        # The drain clears the flag before it empties the deque, so an event appended
        # while the flag is still set is always drained by the one already scheduled.
        if self._drain_scheduled or self._loop.is_closed():
            return
        self._drain_scheduled = True
        try:
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._drain)
            else:  # paho reporting a failed send from inside the executor's connect
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
        # Nobody waits for the PUBACK of a plain publish: only refusals need handling.
        if rc.is_failure or self._confirming:
            self._call(self._handle_published, mid, rc.is_failure, str(rc))

    def _paho_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any
    ) -> None:
        failures = [str(rc) for rc in rcs if rc.is_failure]
        self._call(self._handle_subscribed, mid, failures)

    # -- handlers (event loop, outside paho) -------------------------------------

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
        self._accepted = True
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
        self._lost.set()
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


def _tls_pending(sock: Any) -> bool:
    """Whether a TLS socket holds decrypted bytes not yet read (a plain socket never does)."""
    pending = getattr(sock, "pending", None)
    return bool(pending is not None and pending() > 0)


def _no_delay(sock: Any) -> None:
    """Send each MQTT packet at once: an ack held back by Nagle waits for the peer's delayed ACK."""
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a test's socket pair)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _linger(sock: Any) -> None:
    """Half-close and read up to the broker's close, so the broker reads all we sent.

    Closing a socket with unread bytes in it (a PUBACK just arrived) makes the
    kernel reset the connection, and the broker then drops the messages it had
    not read yet: the last ones sent before a stop. Bounded by STOP_LINGER_S.
    """
    deadline = time.monotonic() + STOP_LINGER_S
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(STOP_LINGER_S)
        sock.shutdown(socket.SHUT_WR)
        while time.monotonic() < deadline and sock.recv(65536):
            pass
