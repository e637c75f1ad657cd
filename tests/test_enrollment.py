"""Enrollment by QR code, end to end: a real broker, gateway, decoder and code images.

An unconfigured device reads the enrollment code through its file frame source
(the real zxing decoder on the PNG that provisioning wrote), trades the token
at the gateway for its sealed bundle, writes its config, signals on mock pins,
and then runs as itself. A used or expired code is refused with its reason,
garbage is answered with one, and the enrollment login reaches nothing else.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from gpiozero.pins.mock import MockFactory, MockPWMPin

from broker.enrollment import (
    ENROLL_USER,
    BadEnrollmentCode,
    BundleTls,
    BundleUnreadable,
    EnrollmentBundle,
    EnrollmentCode,
    EnrollRequest,
    decode_reply,
    new_request_id,
    new_token,
    open_bundle,
    parse_code,
    reply_topic,
    request_topic,
    seal_bundle,
    token_id,
)
from broker.errors import BadTopic
from broker.launcher import Mosquitto
from broker.messages import encode
from broker.settings import DecoderConfig, DeviceSettings, FileSourceConfig, SignalsConfig
from broker.tls import device_certificate, new_site_ca
from brokerkit import ABSENCE_SECONDS, SyncClient, start_broker
from conftest import ROOT, SiteMaker, StartService, db_rows, wait_until
from device.camera import load_gray
from device.config import load_config
from device.decoder import make_decoder
from device.enroll import EnrollFailed, EnrollOptions, EnrollRefused, enroll, install
from provisioning.enrollment import EnrollmentRefused, issue_code, parse_ttl
from provisioning.errors import UnknownDevice
from provisioning.site import Site

DEFAULT_PINS = SignalsConfig()
GREEN, RED, BUZZER = DEFAULT_PINS.green_led, DEFAULT_PINS.red_led, DEFAULT_PINS.buzzer
FIVE_PULSES = [False, *[True, False] * 5]
ONE_PULSE = [False, True, False]
PAST = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


def history(factory: MockFactory, pin: int | None) -> list[bool]:
    assert pin is not None
    return [bool(change.state) for change in factory.pin(pin).states]


def enroll_options(state_dir: Path, frames: Path) -> EnrollOptions:
    return EnrollOptions(
        state_dir=state_dir,
        frame_source=FileSourceConfig(paths=[frames]),
        reply_timeout_s=20.0,
        resend_s=2.0,
    )


def frames_with(code_image: Path, folder: Path, blank_frames: Path) -> Path:
    """A camera's frames: nothing, then the code, as the technician holds it up."""
    folder.mkdir()
    for i, blank in enumerate(sorted(blank_frames.iterdir())):
        shutil.copy(blank, folder / f"a-{i}.png")
    shutil.copy(code_image, folder / "b-code.png")
    return folder


def started_gateway(
    site: Site, broker_for: Callable[[Site], Mosquitto], services: StartService
) -> None:
    broker_for(site)
    # Check-ins, states and enrollment requests.
    services("gateway", site.gateway_config).wait_log("granted", 3)


def token_row(site: Site, device_id: str) -> list[tuple[object, ...]]:
    return db_rows(
        site,
        "SELECT used_at, used_by, expires_at FROM enrollment_tokens WHERE device_id=?",
        (device_id,),
    )


def refusals(site: Site, reason: str) -> int:
    rows = db_rows(site, "SELECT count(*) FROM rejected_messages WHERE reason=?", (reason,))
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


def device_checkins(site: Site, device_id: str) -> int:
    rows = db_rows(site, "SELECT count(*) FROM checkins WHERE device_id=?", (device_id,))
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioning", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def read_code(image: Path) -> EnrollmentCode:
    """The enrollment code in an image, read by the device's own decoder."""
    texts = make_decoder(DecoderConfig()).decode(load_gray(image))
    assert len(texts) == 1, texts
    return parse_code(texts[0])


# -- the code, the token and the bundle ---------------------------------------


def test_code_text_round_trips_and_names_what_is_wrong() -> None:
    code = EnrollmentCode(
        host="10.1.2.3", port=1883, password="p" * 32, device="gate-7", token=new_token(),
        expires=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    assert code.text().startswith("QRGE1:{")
    assert parse_code(code.text()) == code
    with pytest.raises(BadEnrollmentCode, match="prefix"):
        parse_code("QRG1:whatever")
    with pytest.raises(BadEnrollmentCode, match="not JSON"):
        parse_code("QRGE1:{nope")
    broken = code.text().replace('"device":"gate-7"', '"device":"Gate 7"')
    with pytest.raises(BadEnrollmentCode, match="device"):
        parse_code(broken)


def test_bundle_opens_only_with_its_token() -> None:
    token, other = new_token(), new_token()
    bundle = EnrollmentBundle(
        device_id="gate-7", site_id="site-1", host="10.1.2.3", port=1883,
        password="secret-password-1", subject_key="ab" * 32, settings=DeviceSettings(),
    )  # fmt: skip
    sealed = seal_bundle(bundle, token)
    assert "secret-password-1" not in sealed
    assert open_bundle(sealed, token) == bundle
    with pytest.raises(BundleUnreadable):
        open_bundle(sealed, other)
    assert token_id(token) != token_id(other)
    assert token not in token_id(token)


def test_bundle_with_a_certificate_installs_a_tls_config(tmp_path: Path) -> None:
    ca = new_site_ca("site-1")
    leaf = device_certificate(ca, "gate-7")
    pem = serialization.Encoding.PEM
    key_pem = leaf.key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    tls = BundleTls(
        ca_pem=ca.cert.public_bytes(pem).decode(),
        cert_pem=leaf.cert.public_bytes(pem).decode(),
        key_pem=key_pem,
    )
    bundle = EnrollmentBundle(
        device_id="gate-7", site_id="site-1", host="10.1.2.3", port=8883, tls=tls,
        subject_key="ab" * 32, settings=DeviceSettings(),
    )  # fmt: skip
    token = new_token()
    config = install(open_bundle(seal_bundle(bundle, token), token), tmp_path)

    assert config.broker.tls is not None and config.broker.password_file is None
    assert config.broker.tls.cert_file is not None and config.broker.tls.key_file is not None
    assert config.broker.tls.key_file.read_text() == key_pem
    assert stat.S_IMODE(config.broker.tls.key_file.stat().st_mode) == 0o600
    assert config.broker.tls.ca_file.read_text() == tls.ca_pem
    assert (config.broker.host, config.broker.port) == ("10.1.2.3", 8883)
    assert config.subject_key() == b"ab" * 32


def test_ttl_is_parsed_and_bounded() -> None:
    assert parse_ttl("15m") == timedelta(minutes=15)
    assert parse_ttl("2h") == timedelta(hours=2)
    for bad in ("15", "15 minutes", "10s", "8d", "-1m"):
        with pytest.raises(EnrollmentRefused, match="--ttl"):
            parse_ttl(bad)


def test_request_topics_refuse_wildcards() -> None:
    with pytest.raises(BadTopic):
        request_topic("+")
    with pytest.raises(BadTopic):
        reply_topic("abc/def")


# -- the broker's ACL -----------------------------------------------------------


def test_enrollment_login_reaches_only_its_own_request_and_reply(tmp_path: Path) -> None:
    users = {"gateway": "gw-password", ENROLL_USER: "enroll-password", "gate-1": "dev-password"}
    broker, layout = start_broker(tmp_path, users)
    mine, theirs = new_request_id(), new_request_id()
    try:
        with (
            SyncClient(layout, "qrgate-gateway", "gateway", "gw-password") as gateway,
            SyncClient(layout, mine, ENROLL_USER, "enroll-password") as enrollee,
            SyncClient(layout, "gate-1", "gate-1", "dev-password") as device,
        ):
            for client in (gateway, enrollee, device):
                assert not client.connect().is_failure
            assert not gateway.subscribe("qrgate/v1/enroll/+/request").is_failure
            assert not device.subscribe("qrgate/v1/dev/gate-1/#").is_failure
            # A wildcard subscription is granted, but only its own reply is delivered.
            enrollee.subscribe("qrgate/v1/enroll/+/reply")

            refused = {
                "another request": request_topic(theirs),
                "a device's check-ins": "qrgate/v1/dev/gate-1/checkin",
                "a device's config": "qrgate/v1/dev/gate-1/config",
                "a reply": reply_topic(mine),
            }
            for what, topic in refused.items():
                code = enrollee.publish(topic, b"{}")
                assert code.is_failure and "authorized" in str(code).lower(), what
            assert not enrollee.publish(request_topic(mine), b"{}").is_failure
            message = gateway.next_message()
            assert message is not None and message.topic == request_topic(mine)

            assert not gateway.publish(reply_topic(theirs), b"for someone else").is_failure
            assert not gateway.publish(reply_topic(mine), b"for me").is_failure
            received = enrollee.next_message()
            assert received is not None and received.payload == b"for me"
            assert enrollee.next_message(ABSENCE_SECONDS) is None
            # Nothing the enrollee sent reached the device's topics.
            assert device.next_message(ABSENCE_SECONDS) is None
    finally:
        broker.stop()


# -- end to end -----------------------------------------------------------------


def test_device_enrolls_from_the_printed_code_then_runs_and_the_code_is_spent(
    tmp_path: Path,
    make_site: SiteMaker,
    people_frames: tuple[list[str], list[Path]],
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
    pins: MockFactory,
) -> None:
    site = make_site([people_frames[1][:5]])
    started_gateway(site, broker_for, services)
    image = tmp_path / "gate-1.png"
    made = provision("enroll-token", "--site", str(site.directory), "--device", "gate-1",
                     "--ttl", "15m", "--out", str(image))  # fmt: skip
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["device"] == "gate-1" and summary["broker"] == f"127.0.0.1:{site.port}"
    code = read_code(image)
    assert code.device == "gate-1" and code.token not in made.stdout + made.stderr
    frames = frames_with(image, tmp_path / "camera", blank_frames)

    state = tmp_path / "new-device"
    config = enroll(enroll_options(state, frames), pin_factory=pins)

    assert config.device_id == "gate-1" and config.site_id == site.site_id
    assert history(pins, GREEN) == FIVE_PULSES and history(pins, RED) == [False]
    assert history(pins, BUZZER) == FIVE_PULSES
    written = load_config(state / "device.json")
    provisioned = load_config(site.device_config("gate-1"))
    assert written.settings() == provisioned.settings()
    assert written.broker.password() == provisioned.broker.password()
    assert written.subject_key() == provisioned.subject_key()
    for secret in ("broker.password", "subject.key"):
        assert stat.S_IMODE((state / "secrets" / secret).stat().st_mode) == 0o600

    used_at, used_by, _ = token_row(site, "gate-1")[0]
    assert used_at is not None and used_by is not None
    database = b"".join(p.read_bytes() for p in site.database.parent.glob("tracing.db*"))
    for secret in (code.token, provisioned.broker.password()):
        assert secret.encode() not in database, "a credential is stored in clear"

    # The same code again, by another device: refused, and the red pattern.
    again = tmp_path / "second-device"
    with pytest.raises(EnrollRefused) as refused:
        enroll(enroll_options(again, frames), pin_factory=MockFactory(pin_class=MockPWMPin))
    assert refused.value.reason == "token_used"
    assert not (again / "device.json").exists()
    assert refusals(site, "token_used") == 1

    # ...and the command line says why, with a failing exit code and the red pattern.
    result = subprocess.run(
        [sys.executable, "-m", "device", "enroll", "--state-dir", str(tmp_path / "third"),
         "--frames", str(frames), "--pins", "mock"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "token_used" in result.stderr
    assert not (tmp_path / "third" / "device.json").exists()

    # The enrolled device runs as itself: its check-ins land in the tracing database.
    services("device", state / "device.json")
    wait_until(lambda: device_checkins(site, "gate-1") == 5, "5 check-ins of the enrolled device")


def test_expired_code_is_refused_and_nothing_is_written(
    tmp_path: Path,
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
    pins: MockFactory,
) -> None:
    site = make_site([[blank_frames]])
    started_gateway(site, broker_for, services)
    image = tmp_path / "gate-1.png"
    issue_code(site.directory, "gate-1", ttl=timedelta(minutes=15), now=PAST, out=image)
    frames = frames_with(image, tmp_path / "camera", blank_frames)

    state = tmp_path / "new-device"
    with pytest.raises(EnrollRefused) as refused:
        enroll(enroll_options(state, frames), pin_factory=pins)

    assert refused.value.reason == "token_expired"
    assert "expired" in str(refused.value)
    assert history(pins, RED) == ONE_PULSE and history(pins, GREEN) == [False]
    assert not state.exists(), "nothing is written for a refused code"
    used_at, _, _ = token_row(site, "gate-1")[0]
    assert used_at is None
    assert refusals(site, "token_expired") == 1
    # The sealed bundle of an expired code is not kept.
    assert db_rows(site, "SELECT bundle FROM enrollment_tokens") == [("",)]


def test_garbage_and_unknown_tokens_get_a_reason(
    tmp_path: Path,
    make_site: SiteMaker,
    blank_frames: Path,
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
) -> None:
    site = make_site([[blank_frames]])
    started_gateway(site, broker_for, services)
    other_code = issue_code(site.directory, "gate-1", ttl=timedelta(minutes=15)).code
    request_id = new_request_id()
    unknown = EnrollRequest(device_id="gate-1", token_id=token_id(new_token()))
    mismatch = EnrollRequest(device_id="gate-2", token_id=token_id(other_code.token))
    cases = {
        b"not json at all": "malformed_json",
        json.dumps({"v": 1, "device_id": "gate-1"}).encode(): "schema",
        b"{" + b" " * 2000 + b"}": "too_large",
        encode(unknown): "token_unknown",
        encode(mismatch): "device_mismatch",
    }
    with SyncClient(site.broker, request_id, ENROLL_USER, site.password(ENROLL_USER)) as client:
        assert not client.connect().is_failure
        assert not client.subscribe(reply_topic(request_id)).is_failure
        for payload, reason in cases.items():
            assert not client.publish(request_topic(request_id), payload).is_failure
            message = client.next_message()
            assert message is not None, f"no reply for {reason}"
            reply = decode_reply(bytes(message.payload))
            assert (reply.ok, reply.reason) == (False, reason)
            assert reply.detail
    recorded = {reason: refusals(site, reason) for reason in cases.values()}
    assert recorded == dict.fromkeys(cases.values(), 1)
    # The code meant for gate-1 is still good: a mismatch does not spend it.
    used_at, _, _ = token_row(site, "gate-1")[0]
    assert used_at is None


def test_code_for_an_unknown_device_or_to_a_bad_file_is_not_made(
    tmp_path: Path, make_site: SiteMaker, blank_frames: Path
) -> None:
    site = make_site([[blank_frames]])
    with pytest.raises(UnknownDevice, match="gate-9"):
        issue_code(site.directory, "gate-9", ttl=timedelta(minutes=5))
    with pytest.raises(EnrollmentRefused, match=r"png or a \.svg"):
        issue_code(site.directory, "gate-1", ttl=timedelta(minutes=5), out=tmp_path / "c.jpg")
    bad_ttl = provision("enroll-token", "--site", str(site.directory), "--device", "gate-1",
                        "--ttl", "forever", "--out", str(tmp_path / "c.png"))  # fmt: skip
    assert bad_ttl.returncode == 2 and "--ttl 'forever'" in bad_ttl.stderr
    assert not (tmp_path / "c.png").exists()
    assert token_row(site, "gate-1") == []


def test_device_already_enrolled_refuses_before_scanning(tmp_path: Path, pins: MockFactory) -> None:
    state = tmp_path / "device"
    state.mkdir()
    (state / "device.json").write_text("{}")
    with pytest.raises(EnrollFailed) as failed:
        enroll(enroll_options(state, tmp_path / "no-frames"), pin_factory=pins)
    assert failed.value.reason == "already_enrolled"
    assert history(pins, RED) == ONE_PULSE
    assert (state / "device.json").read_text() == "{}"
