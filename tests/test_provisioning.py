"""Provisioning against a real mosquitto: add, revoke, rotate, bundles, the gateway's refusal."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_ingest import batch as checkin_batch

from broker.client import BusClient, ClientSettings, PublishRefused
from broker.launcher import Mosquitto, free_port
from broker.settings import FileSourceConfig
from broker.topics import Channel, all_devices, device_topic
from brokerkit import SyncClient, requires_mosquitto
from conftest import ROOT, StartService, wait_until
from device.config import load_config as load_device_config
from gateway.categories import Category
from gateway.config import load_config as load_gateway_config
from gateway.ingest import Ingestor
from gateway.registry import SiteEntry, ZoneEntry
from gateway.store import SQLiteStore
from provisioning.bundle import BundleError, WifiProfile, write_bundle
from provisioning.cli import main
from provisioning.devices import DeviceSpec, add_devices, revoke_device, rotate_device
from provisioning.errors import BadDeviceRequest, DeviceRevoked, SiteExists
from provisioning.manifest import load_manifest
from provisioning.site import Site, create_site

pytestmark = requires_mosquitto


def make_site(directory: Path, devices: list[DeviceSpec], *, register: bool = True) -> Site:
    """A site with a password and a certificate listener on free ports, zones a and b."""
    entry = SiteEntry(
        site_id="plant",
        name="Plant",
        category=Category.FACTORY,
        zones=[ZoneEntry(zone_id="a"), ZoneEntry(zone_id="b")],
    )
    return create_site(
        directory,
        site_id="plant",
        port=free_port(),
        tls_port=free_port(),
        devices=devices,
        site=entry,
        register=register,
    )


def password_client(site: Site, device_id: str, *, password: str | None = None) -> SyncClient:
    """A device logging in with its password (its current one unless given)."""
    secret = password if password is not None else site.password(device_id)
    return SyncClient(site.broker, f"{device_id}-pw", device_id, secret)


def cert_client(site: Site, device_id: str, cert: Path, key: Path) -> SyncClient:
    """A device logging in on the TLS listener with a client certificate."""
    tls = site.broker.tls
    assert tls is not None
    client = SyncClient(replace(site.broker, port=tls.port), f"{device_id}-tls")
    client.client.tls_set(ca_certs=str(site.ca_cert), certfile=str(cert), keyfile=str(key))
    return client


def handshake_refused(site: Site, cert: Path, key: Path) -> bool:
    """Whether the TLS listener refuses a client certificate during the handshake."""
    tls = site.broker.tls
    assert tls is not None
    context = ssl.create_default_context(cafile=str(site.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the refusal arrives within the handshake
    with socket.create_connection((site.broker.host, tls.port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.settimeout(2.0)
                conn.recv(1)  # a refusing server closes the connection with an alert
        except (ssl.SSLError, ConnectionResetError):
            return True
        except TimeoutError:
            return False  # accepted: the broker waits for the MQTT CONNECT
    return True  # closed without a word


def assert_pinned(client: SyncClient, device_id: str, other: str) -> None:
    """The device may publish into its own topics and into no other device's."""
    own = client.publish(device_topic(device_id, Channel.CHECKIN), b"{}")
    assert not own.is_failure, f"{device_id}: own topic refused: {own}"
    assert not client.publish(device_topic(device_id, Channel.STATE), b"{}").is_failure
    foreign = client.publish(device_topic(other, Channel.CHECKIN), b"{}")
    assert foreign.is_failure and "authori" in str(foreign).lower(), f"{device_id}: {foreign}"


def reloaded(broker: Mosquitto, count: int) -> None:
    wait_until(lambda: broker.layout.log_file.read_text().count("Reloading config") >= count, "")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Site, Mosquitto]]:
    site = make_site(
        tmp_path / "site",
        [DeviceSpec("gate-1", "North", "in", zone="a"), DeviceSpec("gate-2", "North", "out")],
    )
    broker = Mosquitto(site.broker)
    broker.start()
    yield site, broker
    broker.stop()


def test_site_holds_ca_broker_tls_badge_key_and_registry(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [DeviceSpec("gate-1", "North", zone="a")])
    conf = site.broker.conf.read_text()
    assert "use_identity_as_username true" in conf and f"crlfile {site.crl}" in conf
    assert (site.secrets / "badge-issuer.pub.json").exists()
    assert stat.S_IMODE(site.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(site.device_key("gate-1").stat().st_mode) == 0o600
    device = json.loads(site.device_config("gate-1").read_text())
    assert list(device["credentials"]["badge_keys"]) == ["plant-k1"]
    gateway = load_gateway_config(site.gateway_config)
    assert [(d.device_id, d.zone) for d in gateway.devices] == [("gate-1", "a")]
    rows = _db(site, "SELECT device_id, zone_id, provisioned_at IS NOT NULL FROM devices")
    assert rows == [("gate-1", "a", 1)]
    assert _db(site, "SELECT device_id, version FROM desired_configs") == [("gate-1", 1)]
    with pytest.raises(SiteExists):
        make_site(tmp_path / "site", [])


def test_bad_requests_name_the_field_and_change_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [DeviceSpec("gate-1")])
    before = site.manifest_file.read_text()
    cases = [
        (DeviceSpec("gate-2", zone="c"), "zone"),
        (DeviceSpec("gate-2", zone="a", vehicle="bus-1"), "vehicle"),
        (DeviceSpec("Gate_2"), "device_id"),
        (DeviceSpec("gate-2", vehicle="plant"), "vehicle"),
        (DeviceSpec("gateway"), "device_id"),
        (DeviceSpec("qrgate-enroll"), "device_id"),
    ]
    for spec, field in cases:
        with pytest.raises(BadDeviceRequest) as caught:
            add_devices(site, [DeviceSpec("gate-3"), spec])
        assert caught.value.field == field
    assert site.manifest_file.read_text() == before
    assert not site.device_config("gate-3").exists(), "a bad request writes nothing"


def test_added_device_connects_and_is_pinned(running: tuple[Site, Mosquitto]) -> None:
    site, broker = running
    add_devices(site, [DeviceSpec("bus-1-front", "front door", vehicle="bus-1")])
    reloaded(broker, 1)
    with password_client(site, "bus-1-front") as client:
        assert not client.connect().is_failure
        assert_pinned(client, "bus-1-front", "gate-1")
    cert = site.device_cert("bus-1-front"), site.device_key("bus-1-front")
    with cert_client(site, "bus-1-front", *cert) as client:
        assert not client.connect().is_failure
        assert_pinned(client, "bus-1-front", "gate-1")
    gateway = load_gateway_config(site.gateway_config)
    bus = next(d for d in gateway.devices if d.device_id == "bus-1-front")
    assert bus.site_id == "bus-1"
    assert any(s.site_id == "bus-1" and s.category is Category.VEHICLE for s in gateway.sites)


def test_revoked_device_is_refused_at_once_with_password_and_certificate(
    running: tuple[Site, Mosquitto],
) -> None:
    site, broker = running
    old_password = site.password("gate-1")
    cert = site.device_cert("gate-1"), site.device_key("gate-1")
    saved = site.directory / "kept.key"
    saved.write_bytes(cert[1].read_bytes())  # a thief's copy survives the revocation
    pw = password_client(site, "gate-1")
    tls = cert_client(site, "gate-1", cert[0], saved)
    gateway = SyncClient(site.broker, "watcher", "gateway", site.password("gateway"))
    try:
        for client in (pw, tls, gateway):
            assert not client.connect().is_failure
        gateway.subscribe(all_devices(Channel.CHECKIN))
        assert not tls.publish(device_topic("gate-1", Channel.CHECKIN), b"before").is_failure
        assert gateway.next_message() is not None

        report = revoke_device(site, "gate-1")
        assert report.reload.startswith(f"reloaded mosquitto pid {broker.pid}")
        reloaded(broker, 1)
        wait_until(lambda: not pw.client.is_connected(), "the password session to be dropped")
        refused = tls.publish(device_topic("gate-1", Channel.CHECKIN), b"after")
        assert refused.is_failure, "the connected certificate session's next publish is refused"
        assert gateway.next_message(timeout=1.0) is None
    finally:
        for client in (pw, tls, gateway):
            client.close()
    again = password_client(site, "gate-1", password=old_password)
    assert again.connect().is_failure
    again.close()
    assert handshake_refused(site, cert[0], saved), "the revoked certificate (in the CRL)"
    wait_until(  # the broker logs the refusal after it sends the alert
        lambda: "certificate verify failed" in broker.layout.log_file.read_text(),
        "the broker to log the refused certificate",
    )
    # The other device is untouched; the revoked one's records stay.
    with password_client(site, "gate-2") as other:
        assert not other.connect().is_failure
        assert_pinned(other, "gate-2", "gate-1")
    record = load_manifest(site.directory).device("gate-1")
    assert record is not None and record.revoked_at is not None
    assert _db(site, "SELECT revoked_at IS NOT NULL FROM devices WHERE device_id='gate-1'") == [
        (1,)
    ]
    with pytest.raises(DeviceRevoked):
        add_devices(site, [DeviceSpec("gate-1")])


def test_rotation_retires_old_password_and_certificate(running: tuple[Site, Mosquitto]) -> None:
    site, broker = running
    old_password = site.password("gate-2")
    old_cert = site.directory / "old.pem"
    old_key = site.directory / "old.key"
    old_cert.write_bytes(site.device_cert("gate-2").read_bytes())
    old_key.write_bytes(site.device_key("gate-2").read_bytes())
    rotate_device(site, "gate-2")
    reloaded(broker, 1)
    stale = password_client(site, "gate-2", password=old_password)
    assert stale.connect().is_failure
    stale.close()
    assert handshake_refused(site, old_cert, old_key)
    assert not handshake_refused(site, site.device_cert("gate-2"), site.device_key("gate-2"))
    with password_client(site, "gate-2") as fresh:
        assert not fresh.connect().is_failure
        assert_pinned(fresh, "gate-2", "gate-1")
    new_cert = site.device_cert("gate-2"), site.device_key("gate-2")
    with cert_client(site, "gate-2", *new_cert) as fresh_tls:
        assert not fresh_tls.connect().is_failure
        assert_pinned(fresh_tls, "gate-2", "gate-1")
    record = load_manifest(site.directory).device("gate-2")
    assert record is not None and record.generation == 2


async def _bus_publish(config_path: Path, topics: list[str]) -> list[bool]:
    """Connect as the bundle's device.json says (as the device does) and publish."""
    config = load_device_config(config_path)
    settings = ClientSettings(
        client_id=config.device_id,
        username=config.broker.username,
        password=config.broker.password(),
        host=config.broker.host,
        port=config.broker.port,
        tls=config.broker.tls,
    )
    client = BusClient(settings, loop=asyncio.get_running_loop())
    client.start()
    try:
        await client.wait_connected(10)
        results = []
        for topic in topics:
            try:
                await client.publish_confirmed(topic, b"{}")
                results.append(True)
            except PublishRefused:
                results.append(False)
        return results
    finally:
        client.stop()


@pytest.mark.parametrize("auth", ["cert", "password"])
def test_bundle_config_connects_as_the_device(
    running: tuple[Site, Mosquitto], tmp_path: Path, auth: str
) -> None:
    site, _ = running
    folder = write_bundle(site, "gate-1", tmp_path / "boot", auth=auth)  # type: ignore[arg-type]
    names = {p.name for p in folder.iterdir()}
    secret = {"client.key", "client.pem"} if auth == "cert" else {"broker.password"}
    assert {"device.json", "ca.pem", "subject.key", "INSTALL.txt"} | secret == names
    config = json.loads((folder / "device.json").read_text())
    assert config["outbox_path"] == "/var/lib/qrgate/outbox.db"
    own, other = device_topic("gate-1", Channel.STATE), device_topic("gate-2", Channel.STATE)
    assert asyncio.run(_bus_publish(folder / "device.json", [own, other])) == [True, False]


def test_bundle_tarball_with_wifi_profile(running: tuple[Site, Mosquitto], tmp_path: Path) -> None:
    site, _ = running
    wifi = WifiProfile("Xưởng A", "correct horse battery")
    path = write_bundle(site, "gate-2", tmp_path, wifi=wifi, tarball=True)
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        profile = tar.extractfile("qrgate-gate-2/wifi.nmconnection")
        assert profile is not None
        text = profile.read().decode()
    assert "ssid=Xưởng A" in text and "psk=correct horse battery" in text
    assert members["qrgate-gate-2/client.key"].mode == 0o600
    assert members["qrgate-gate-2/wifi.nmconnection"].mode == 0o600
    with pytest.raises(BundleError):
        WifiProfile("x", "short")
    revoke_device(site, "gate-2")
    with pytest.raises(DeviceRevoked):
        write_bundle(site, "gate-2", tmp_path)


async def test_running_gateway_refuses_a_revoked_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the broker let a message through, the gateway stores nothing from it."""
    specs = [DeviceSpec("gate-1"), DeviceSpec("gate-2")]
    site = await asyncio.to_thread(make_site, tmp_path / "site", specs)
    monkeypatch.setattr("gateway.ingest.DEVICE_REFRESH_S", 0.0)
    store = await SQLiteStore.open(site.database)
    try:
        ingestor = Ingestor(store, send_ack=lambda *_: None)
        await ingestor.load()  # loaded while gate-1 was still active
        task = asyncio.create_task(ingestor.run())
        await asyncio.to_thread(revoke_device, site, "gate-1")
        for device_id in ("gate-1", "gate-2"):
            item = checkin_batch(device_id, [1])
            ingestor.submit(item.topic, item.payload)
        while (
            ingestor.backlog()
            or ingestor.counts["stored"] + ingestor.counts["refused_revoked_device"] < 2
        ):
            await asyncio.sleep(0.05)
        task.cancel()
    finally:
        await store.close()
    assert _db(site, "SELECT device_id FROM checkins") == [("gate-2",)]
    assert _db(site, "SELECT device_id, reason FROM rejected_messages") == [
        ("gate-1", "revoked_device")
    ]


def test_cli_help_everywhere_and_errors_name_the_field(tmp_path: Path) -> None:
    for argv in (
        [],
        ["site", "create"],
        ["device"],
        ["device", "add"],
        ["device", "revoke"],
        ["device", "rotate"],
        ["device", "list"],
        ["batch"],
        ["bundle"],
        ["demo"],
    ):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0
    site = tmp_path / "s"
    run = [sys.executable, "-m", "provisioning"]
    made = subprocess.run(
        [*run, "site", "create", "--site", str(site), "--id", "depot", "--host", "127.0.0.1",
         "--port", str(free_port()), "--tls-port", str(free_port()), "--zone", "yard"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    bad = subprocess.run(
        [*run, "device", "add", "--site", str(site), "--device", "gate-1", "--zone", "dock"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "zone: 'dock' is not a zone of site depot (zones: yard)" in bad.stderr
    assert load_manifest(site).devices == []


def _db(site: Site, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    db = sqlite3.connect(site.database)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_device_from_a_certificate_bundle_delivers_check_ins(
    tmp_path: Path,
    people_frames: tuple[list[str], list[Path]],
    services: StartService,
) -> None:
    """The real device process, installed from a bundle, logs in with its certificate only."""
    _, frames = people_frames
    source = FileSourceConfig(paths=frames[:5], interval_s=0.05)
    spec = DeviceSpec("gate-1", "North", frame_source=source, pin_factory="mock", ack_timeout_s=2)
    site = make_site(tmp_path / "site", [spec])
    broker = Mosquitto(site.broker)
    broker.start()
    try:
        folder = write_bundle(site, "gate-1", tmp_path / "boot")
        config = json.loads((folder / "device.json").read_text())
        assert config["broker"]["password_file"] is None and config["broker"]["tls"]
        state = tmp_path / "state"  # instead of /var/lib/qrgate on the Pi
        config |= {"outbox_path": str(state / "outbox.db"), "state_dir": str(state)}
        (folder / "device.json").write_text(json.dumps(config))
        services("gateway", site.gateway_config).wait_log("granted", 2)
        services("device", folder / "device.json")
        # The desired config (version 1) arrives at the first connect and rebuilds the
        # scan pipeline, whose file source starts again: five check-ins or a few more.
        wait_until(
            lambda: (
                _db(site, "SELECT count(*) >= 5 FROM checkins WHERE device_id='gate-1'") == [(1,)]
            ),
            "five check-ins from the device",
        )
        tls = site.broker.tls
        assert tls is not None
        log = broker.layout.log_file.read_text()
        assert f"on port {tls.port}." in log and "as gate-1 (p5" in log
    finally:
        broker.stop()
