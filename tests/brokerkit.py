"""Test helpers: a real mosquitto with a generated config, and blocking MQTT v5 clients.

A plain module, not a conftest, so any test (or a later conftest fixture) can
``from brokerkit import start_broker, SyncClient``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker.errors import BrokerStartError
from broker.launcher import Mosquitto, find_mosquitto, free_port
from broker.mosquitto import BrokerLayout, write_broker_config

logger = logging.getLogger(__name__)

# Generous: these bound a wait for something that should take milliseconds.
WAIT_SECONDS = 10.0
# How long to watch for a message that must not arrive, after a control message did.
ABSENCE_SECONDS = 0.5

requires_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

T = TypeVar("T")


def start_broker(
    tmp_path: Path,
    users: dict[str, str],
    gateway_users: Iterable[str] = ("gateway",),
) -> tuple[Mosquitto, BrokerLayout]:
    """Write a config under ``tmp_path / "broker"`` and start mosquitto on a free port.

    The caller stops the broker. Skips the test when mosquitto is not installed.
    """
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    gateways = tuple(gateway_users)
    for attempt in range(3):
        layout = write_broker_config(
            tmp_path / "broker", port=free_port(), gateway_users=gateways, users=users
        )
        broker = Mosquitto(layout)
        try:
            broker.start()
        except BrokerStartError as exc:
            # free_port is racy: another process may take the port before mosquitto binds it.
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        return broker, layout
    raise AssertionError("unreachable")


class SyncClient:
    """A paho MQTT v5 client for tests: each call blocks until the broker answers.

    The paho network loop runs in its own thread; acks are collected by message
    id and received messages queued, so no wait depends on callback timing.
    """

    def __init__(
        self,
        layout: BrokerLayout,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.layout = layout
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self, *, clean_start: bool = True) -> ReasonCode:
        """Connect and return the CONNACK reason code (a failure is returned, not raised)."""
        self.client.connect(
            self.layout.host, self.layout.port, keepalive=30, clean_start=clean_start
        )
        self.client.loop_start()
        return self._wait(lambda: self._connack, "CONNACK")

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish and return the PUBACK reason code (for QoS 0, the send result)."""
        # No lock held here: paho calls on_publish under its own locks, which
        # publish() takes too. Acks are kept by mid, so an early one is not lost.
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return self._wait(lambda: self._pubacks.get(info.mid), f"PUBACK of {topic}")

    def subscribe(self, topic: str, *, qos: int = 1) -> ReasonCode:
        """Subscribe and return the reason code of the SUBACK."""
        result, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None, f"subscribe to {topic} failed: {result}"
        codes = self._wait(lambda: self._subacks.get(mid), f"SUBACK of {topic}")
        assert len(codes) == 1, codes
        return codes[0]

    def next_message(self, timeout: float = WAIT_SECONDS) -> MQTTMessage | None:
        """The next message received, or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait(self, ready: Callable[[], T | None], what: str) -> T:
        with self._cond:
            if not self._cond.wait_for(lambda: ready() is not None, WAIT_SECONDS):
                raise AssertionError(f"no {what} within {WAIT_SECONDS} s")
            result = ready()
        assert result is not None
        return result

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cond:
            self._pubacks[mid] = reason_code
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes
            self._cond.notify_all()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self.messages.put(message)
