"""The generated Mosquitto setup, against a real mosquitto and real paho v5 clients."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTMessage

from broker.errors import BrokerConfigError, BrokerStartError, PasswordFileError
from broker.launcher import Mosquitto, free_port
from broker.mosquitto import BrokerLayout, render_acl, write_broker_config
from broker.passwords import (
    hash_password,
    new_password,
    verify_password,
    write_password_file,
)
from broker.topics import Channel, all_devices, device_topic
from brokerkit import ABSENCE_SECONDS, WAIT_SECONDS, SyncClient, requires_mosquitto, start_broker

NOT_AUTHORIZED = 0x87
# Written by `mosquitto_passwd -b -c file alice s3cret` (mosquitto 2.0.11).
MOSQUITTO_HASH = (
    "$7$101$SmDNZgZCIeo3jUq9$vl6tuPYGa9ymwOZc55mVltUD8X6OugXuuXgOAUkIkcgmrPBd5Nn59QPhx64l67"
    "c6ggw/UdcncWnBX1X2NKVL/Q=="
)

Connect = Callable[[str, str | None, str | None], SyncClient]


@pytest.fixture
def users() -> dict[str, str]:
    return {"gateway": new_password(), "dev-a": new_password(), "dev-b": new_password()}


@pytest.fixture
def broker(tmp_path: Path, users: dict[str, str]) -> Iterator[tuple[Mosquitto, BrokerLayout]]:
    mosquitto, layout = start_broker(tmp_path, users)
    try:
        yield mosquitto, layout
    finally:
        mosquitto.stop()


@pytest.fixture
def client(broker: tuple[Mosquitto, BrokerLayout]) -> Iterator[Connect]:
    """Make unconnected clients for the broker; all are closed at teardown."""
    made: list[SyncClient] = []

    def make(client_id: str, username: str | None, password: str | None) -> SyncClient:
        made.append(SyncClient(broker[1], client_id, username, password))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
def connect(client: Connect, users: dict[str, str]) -> Callable[[str], SyncClient]:
    """Connect as a user of ``users``, asserting success."""

    def as_user(name: str) -> SyncClient:
        connected = client(f"test-{name}", name, users[name])
        code = connected.connect()
        assert not code.is_failure, code
        return connected

    return as_user


def _payload(message: MQTTMessage | None) -> tuple[str, bytes] | None:
    return None if message is None else (message.topic, bytes(message.payload))


# --- password file ---------------------------------------------------------


def test_hash_password_reproduces_a_mosquitto_hash() -> None:
    salt = base64.b64decode(MOSQUITTO_HASH.split("$")[3])
    assert hash_password("s3cret", salt=salt) == MOSQUITTO_HASH
    assert verify_password("s3cret", MOSQUITTO_HASH)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd absent")
@pytest.mark.parametrize("password", ["s3cret", "mật khẩu: with spaces $7$", new_password()])
def test_hash_password_matches_mosquitto_passwd(tmp_path: Path, password: str) -> None:
    path = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), "alice", password],
        check=True,
        capture_output=True,
        timeout=WAIT_SECONDS,
    )
    name, encoded = path.read_text().strip().split(":", 1)
    _, scheme, iterations, salt, digest = encoded.split("$")
    assert (name, scheme, iterations) == ("alice", "7", "101")
    assert (len(base64.b64decode(salt)), len(base64.b64decode(digest))) == (12, 64)
    assert hash_password(password, salt=base64.b64decode(salt)) == encoded
    assert verify_password(password, encoded)


def test_hash_and_verify_round_trip() -> None:
    encoded = hash_password("pw-1")
    assert encoded.startswith("$7$101$")
    assert verify_password("pw-1", encoded)
    assert not verify_password("pw-2", encoded)
    assert not verify_password("", encoded)
    assert hash_password("pw-1") != encoded  # a fresh salt each time
    assert verify_password("pw-1", hash_password("pw-1", iterations=5))


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "$6$abc$def",
        "$7$x$AAAA$AAAA",
        "$7$101$!!!!$AAAA",
        "$7$101$$AAAA",
        "$7$0$AAAA$AAAA",
    ],
)
def test_verify_password_rejects_malformed_hashes(encoded: str) -> None:
    with pytest.raises(PasswordFileError):
        verify_password("pw", encoded)


def test_hash_password_rejects_bad_parameters() -> None:
    with pytest.raises(PasswordFileError):
        hash_password("pw", iterations=0)
    with pytest.raises(PasswordFileError):
        hash_password("pw", salt=b"")


def test_write_password_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    # '-' is not a base64 character, so these cannot appear in a hash by chance.
    write_password_file(path, {"dev-b": "plain-b", "dev-a": "plain-a"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "plain-" not in text
    entries = [line.split(":", 1) for line in text.splitlines()]
    assert [name for name, _ in entries] == ["dev-a", "dev-b"]
    assert verify_password("plain-a", entries[0][1])
    assert verify_password("plain-b", entries[1][1])


@pytest.mark.parametrize("name", ["a:b", "a\nb", "a\rb", ""])
def test_write_password_file_rejects_bad_user_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, {"old": "pw"})
    with pytest.raises(PasswordFileError):
        write_password_file(path, {"ok": "pw", name: "pw"})
    assert path.read_text().startswith("old:")  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]  # no temp file left


# --- generated config --------------------------------------------------------


@pytest.mark.parametrize("name", ["dev+a", "dev/a", "#", "+", "Dev-a", "dev a", "-dev", "", "a\n"])
def test_write_broker_config_rejects_unsafe_user_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(BrokerConfigError):
        write_broker_config(
            tmp_path / "b", port=1884, gateway_users=["gateway"], users={"gateway": "x", name: "y"}
        )
    assert not (tmp_path / "b").exists()


def test_write_broker_config_rejects_gateway_without_password(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="gw-2"):
        write_broker_config(tmp_path, port=1884, gateway_users=["gw-2"], users={"gateway": "x"})


@pytest.mark.parametrize("port, host", [(0, "127.0.0.1"), (70000, "127.0.0.1"), (1884, "a b")])
def test_write_broker_config_rejects_bad_listener(tmp_path: Path, port: int, host: str) -> None:
    with pytest.raises(BrokerConfigError):
        write_broker_config(tmp_path, port=port, host=host, gateway_users=[], users={})


def test_write_broker_config_files(tmp_path: Path) -> None:
    layout = write_broker_config(
        tmp_path / "new" / "b",
        port=1884,
        gateway_users=["gateway"],
        users={"gateway": "x", "d": "y"},
    )
    conf = layout.conf.read_text().splitlines()
    assert "listener 1884 127.0.0.1" in conf
    assert "allow_anonymous false" in conf
    assert f"persistence_location {layout.data_dir}/" in conf
    assert layout.data_dir.is_dir()
    for path in (layout.conf, layout.password_file, layout.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line.split(":")[0] for line in layout.password_file.read_text().splitlines()] == [
        "d",
        "gateway",
    ]


def test_acl_gives_devices_patterns_only() -> None:
    acl = [line for line in render_acl(["gw-1", "gw-2"]).splitlines() if not line.startswith("#")]
    assert acl[:4] == [
        "pattern write qrgate/v1/dev/%u/checkin",
        "pattern readwrite qrgate/v1/dev/%u/state",
        "pattern read qrgate/v1/dev/%u/ack",
        "pattern read qrgate/v1/dev/%u/config",
    ]
    assert [line for line in acl if line.startswith("user ")] == ["user gw-1", "user gw-2"]
    assert "topic read qrgate/v1/dev/+/checkin" in acl


# --- a running broker --------------------------------------------------------


@requires_mosquitto
@pytest.mark.parametrize(
    "username, password",
    [(None, None), ("dev-a", "wrong"), ("nobody", "x"), ("dev-a", "")],
    ids=["anonymous", "wrong-password", "unknown-user", "empty-password"],
)
def test_unauthenticated_clients_are_refused(
    client: Connect, username: str | None, password: str | None
) -> None:
    code = client("intruder", username, password).connect()
    assert code.is_failure, code


@requires_mosquitto
def test_device_checkin_reaches_gateway_and_cannot_be_forged(
    connect: Callable[[str], SyncClient],
) -> None:
    gateway = connect("gateway")
    assert not gateway.subscribe(all_devices(Channel.CHECKIN)).is_failure
    device_a = connect("dev-a")

    forged = device_a.publish(device_topic("dev-b", Channel.CHECKIN), b"forged")
    own = device_a.publish(device_topic("dev-a", Channel.CHECKIN), b"own")

    assert forged.value == NOT_AUTHORIZED
    assert not own.is_failure
    # Same publisher, same subscriber: had the forged one passed, it would come first.
    assert _payload(gateway.next_message()) == (device_topic("dev-a", Channel.CHECKIN), b"own")
    assert gateway.next_message(ABSENCE_SECONDS) is None


@requires_mosquitto
def test_gateway_cannot_publish_checkins_and_devices_cannot_publish_acks(
    connect: Callable[[str], SyncClient],
) -> None:
    gateway = connect("gateway")
    device_a = connect("dev-a")
    assert gateway.publish(device_topic("dev-a", Channel.CHECKIN), b"x").value == NOT_AUTHORIZED
    assert gateway.publish(device_topic("dev-a", Channel.STATE), b"x").value == NOT_AUTHORIZED
    assert device_a.publish(device_topic("dev-a", Channel.ACK), b"x").value == NOT_AUTHORIZED
    assert device_a.publish(device_topic("dev-a", Channel.CONFIG), b"x").value == NOT_AUTHORIZED
    assert device_a.publish("qrgate/v1/other", b"x").value == NOT_AUTHORIZED


@requires_mosquitto
def test_device_cannot_read_another_devices_downstream(
    connect: Callable[[str], SyncClient],
) -> None:
    gateway = connect("gateway")
    b_config = device_topic("dev-b", Channel.CONFIG)
    assert not gateway.publish(b_config, b"b-config", retain=True).is_failure
    device_a = connect("dev-a")

    # mosquitto 2.0 grants every subscription when an acl_file is used and
    # filters on delivery instead (eclipse-mosquitto/mosquitto#2042), so the
    # SUBACK says nothing; what counts is that nothing of B's is delivered.
    for topic in (device_topic("dev-b", Channel.ACK), b_config, "qrgate/#", "#"):
        device_a.subscribe(topic)
    assert not gateway.publish(device_topic("dev-b", Channel.ACK), b"b-ack").is_failure
    assert not gateway.publish(device_topic("dev-a", Channel.ACK), b"a-ack").is_failure

    # The retained B config and the B ack were both sent before A's ack.
    a_ack = (device_topic("dev-a", Channel.ACK), b"a-ack")
    assert _payload(device_a.next_message()) == a_ack
    # A's overlapping subscriptions ("qrgate/#", "#") each get their own copy.
    later = iter(lambda: _payload(device_a.next_message(ABSENCE_SECONDS)), None)
    assert set(later) <= {a_ack}


@requires_mosquitto
def test_device_sees_its_own_retained_state_and_config(
    connect: Callable[[str], SyncClient],
) -> None:
    gateway = connect("gateway")
    device_a = connect("dev-a")
    state, config = device_topic("dev-a", Channel.STATE), device_topic("dev-a", Channel.CONFIG)
    assert not device_a.publish(state, b"online", retain=True).is_failure
    assert not gateway.publish(config, b"cfg", retain=True).is_failure

    assert not device_a.subscribe(state).is_failure
    assert _payload(device_a.next_message()) == (state, b"online")
    assert not device_a.subscribe(config).is_failure
    assert _payload(device_a.next_message()) == (config, b"cfg")
    # The gateway reads state (wildcard) and what it retained itself on config.
    assert not gateway.subscribe(all_devices(Channel.STATE)).is_failure
    assert _payload(gateway.next_message()) == (state, b"online")
    assert not gateway.subscribe(all_devices(Channel.CONFIG)).is_failure
    assert _payload(gateway.next_message()) == (config, b"cfg")


@requires_mosquitto
def test_retained_config_survives_a_broker_restart(
    broker: tuple[Mosquitto, BrokerLayout], connect: Callable[[str], SyncClient]
) -> None:
    mosquitto, layout = broker
    config = device_topic("dev-a", Channel.CONFIG)
    gateway = connect("gateway")
    assert not gateway.publish(config, b"cfg-1", retain=True).is_failure
    gateway.close()

    mosquitto.stop()
    assert not mosquitto.running
    assert (layout.data_dir / "mosquitto.db").is_file()
    mosquitto.start()

    device_a = connect("dev-a")
    assert not device_a.subscribe(config).is_failure
    message = device_a.next_message()
    assert _payload(message) == (config, b"cfg-1")
    assert message is not None and message.retain


@requires_mosquitto
def test_reload_admits_a_new_device(
    tmp_path: Path,
    broker: tuple[Mosquitto, BrokerLayout],
    users: dict[str, str],
    client: Connect,
) -> None:
    mosquitto, layout = broker
    assert client("c-before", "dev-c", "pc").connect().is_failure
    write_broker_config(
        layout.directory,
        port=layout.port,
        gateway_users=["gateway"],
        users={**users, "dev-c": "pc"},
    )
    mosquitto.reload()

    # The reload is asynchronous: retry until admitted, within a generous bound.
    deadline = time.monotonic() + WAIT_SECONDS
    attempt = 0
    while True:
        attempt += 1
        if not client(f"c-after-{attempt}", "dev-c", "pc").connect().is_failure:
            break
        assert time.monotonic() < deadline, "dev-c still refused after SIGHUP"
        time.sleep(0.1)


# --- launcher ---------------------------------------------------------------


@requires_mosquitto
def test_start_fails_with_log_tail_when_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        layout = write_broker_config(
            tmp_path, port=port, gateway_users=["gateway"], users={"gateway": "pw"}
        )
        broker = Mosquitto(layout)
        try:
            with pytest.raises(BrokerStartError) as raised:
                broker.start()
        finally:
            broker.stop()  # should this test fail, leave no broker behind
    assert "Address already in use" in str(raised.value)
    assert str(layout.conf) in str(raised.value)
    assert not broker.running
    assert broker.pid is None


def test_start_fails_when_executable_cannot_run(tmp_path: Path) -> None:
    layout = write_broker_config(
        tmp_path, port=free_port(), gateway_users=["gateway"], users={"gateway": "pw"}
    )
    with pytest.raises(BrokerStartError, match="cannot run"):
        Mosquitto(layout, executable=str(tmp_path / "no-such-mosquitto")).start()


@requires_mosquitto
def test_mosquitto_lifecycle(tmp_path: Path) -> None:
    layout = write_broker_config(
        tmp_path, port=free_port(), gateway_users=["gateway"], users={"gateway": "pw"}
    )
    with Mosquitto(layout) as broker:
        pid = broker.pid
        assert broker.running and pid is not None
        with pytest.raises(BrokerStartError, match="already running"):
            broker.start()
        broker.kill()
        assert not broker.running and broker.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        broker.start()
        assert broker.running
    assert not broker.running
    broker.stop()  # idempotent
    broker.kill()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_conf_keeps_mosquitto_as_the_owner_of_its_files(tmp_path: Path) -> None:
    # Started as root, mosquitto would switch to user "mosquitto" and fail to
    # read the 0600 files written here (seen with 2.0.11); see _user_lines.
    layout = write_broker_config(tmp_path, port=1884, gateway_users=[], users={})
    conf = layout.conf.read_text().splitlines()
    owner = pwd.getpwuid(os.geteuid()).pw_name
    assert f"user {owner}" in conf
