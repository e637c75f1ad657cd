"""TLS listener: a device's client certificate is its login; other certificates are refused."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.launcher import Mosquitto, free_port
from broker.mosquitto import BrokerLayout, write_broker_config
from broker.tls import KeyPair, TlsListener, device_certificate, new_site_ca, server_certificate
from broker.topics import Channel, device_topic
from conftest import wait_until

WAIT_S = 10.0


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[tuple[Mosquitto, BrokerLayout, KeyPair, Path]]:
    ca = new_site_ca("tls-site")
    pki = tmp_path / "pki"
    ca.save(pki / "ca.pem", pki / "ca.key")
    server_certificate(ca, ["127.0.0.1", "localhost"]).save(pki / "broker.pem", pki / "broker.key")
    for device in ("gate-1", "gate-2"):
        device_certificate(ca, device).save(pki / f"{device}.pem", pki / f"{device}.key")
    tls = TlsListener(free_port(), pki / "ca.pem", pki / "broker.pem", pki / "broker.key")
    layout = write_broker_config(
        tmp_path / "broker",
        port=free_port(),
        gateway_users=["gateway"],
        users={"gateway": "gw-secret", "gate-1": "p1", "gate-2": "p2"},
        tls=tls,
    )
    broker = Mosquitto(layout)
    broker.start()
    yield broker, layout, ca, pki
    broker.stop()


class TlsClient:
    """A paho v5 client over TLS that reports its CONNACK and PUBACKs."""

    def __init__(self, pki: Path, ca_file: Path, cert: str | None) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"tls-test-{cert}",
            protocol=mqtt.MQTTv5,
        )
        certfile = str(pki / f"{cert}.pem") if cert else None
        keyfile = str(pki / f"{cert}.key") if cert else None
        self.client.tls_set(ca_certs=str(ca_file), certfile=certfile, keyfile=keyfile)
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.done = threading.Event()
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda *_args: self.done.set()
        self.client.on_connect_fail = lambda *_args: self.done.set()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self.done.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.acked:
            self.pubacks[mid] = rc
            self.acked.notify_all()

    def connect(self, port: int) -> ReasonCode | None:
        """The CONNACK, or None when the TLS handshake itself was refused."""
        try:
            self.client.connect("127.0.0.1", port)
        except (ssl.SSLError, OSError):
            return None
        self.client.loop_start()
        self.done.wait(WAIT_S)
        return self.connack

    def publish(self, topic: str) -> ReasonCode:
        info = self.client.publish(topic, b"{}", qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, WAIT_S)
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_certificate_is_the_login_and_the_acl_applies(
    tls_site: tuple[Mosquitto, BrokerLayout, KeyPair, Path],
) -> None:
    _, layout, _, pki = tls_site
    assert layout.tls is not None
    gate1 = TlsClient(pki, layout.tls.ca_file, "gate-1")
    rc = gate1.connect(layout.tls.port)
    assert rc is not None and not rc.is_failure
    try:
        assert not gate1.publish(device_topic("gate-1", Channel.CHECKIN)).is_failure
        assert gate1.publish(device_topic("gate-2", Channel.CHECKIN)).is_failure
    finally:
        gate1.close()


def test_foreign_or_missing_certificates_are_refused(
    tls_site: tuple[Mosquitto, BrokerLayout, KeyPair, Path], tmp_path: Path
) -> None:
    _, layout, _, pki = tls_site
    assert layout.tls is not None
    other = new_site_ca("other-site")
    device_certificate(other, "gate-1").save(pki / "forged.pem", pki / "forged.key")
    forged = TlsClient(pki, layout.tls.ca_file, "forged")
    assert forged.connect(layout.tls.port) is None, "no CONNACK for a foreign certificate"
    forged.close()
    bare = TlsClient(pki, layout.tls.ca_file, None)
    assert bare.connect(layout.tls.port) is None, "no CONNACK without a certificate"
    bare.close()
    # The broker logs each refusal after it sends the alert: wait for both lines.
    wait_until(
        lambda: all(
            line in layout.log_file.read_text()
            for line in ("certificate verify failed", "peer did not return a certificate")
        ),
        "the broker to log both refused handshakes",
    )
