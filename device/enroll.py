"""Enrollment of an unconfigured device by QR code: ``python -m device enroll``.

The device scans frames until it sees an enrollment code (``QRGE1:``, see
:mod:`broker.enrollment`), logs in to the broker named on it with the
enrollment login, asks the gateway for its bundle on its own request topic,
opens the sealed bundle with the token, validates it as a device config and
writes ``device.json`` and ``secrets/`` into the state folder, the config last,
so a folder holds a whole configuration or none. It answers the technician
with a signal pattern: five green blinks when enrolled, a long red light with a
low tone when not. A refusal by the gateway names its reason
(``token_used``, ``token_expired``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.client import BusClient, ClientSettings, PublishRefused
from broker.enrollment import (
    EnrollmentBundle,
    EnrollmentCode,
    EnrollmentError,
    EnrollRequest,
    decode_reply,
    is_code,
    new_request_id,
    open_bundle,
    parse_code,
    reply_topic,
    request_topic,
    token_id,
)
from broker.errors import BadMessage
from broker.messages import encode
from broker.passwords import write_private_file
from broker.settings import (
    DecoderConfig,
    FileSourceConfig,
    FrameSourceConfig,
    Picamera2SourceConfig,
    SignalsConfig,
    V4L2SourceConfig,
)
from device import __version__
from device.camera import FrameSource, make_frame_source
from device.config import DeviceConfig, load_config
from device.decoder import Decoder, make_decoder
from device.errors import DeviceError
from device.signals import Signals

logger = logging.getLogger(__name__)

CONFIG_NAME = "device.json"


class EnrollFailed(DeviceError):
    """Enrollment did not complete; ``reason`` is a stable label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"enrollment failed: {reason}: {message}")
        self.reason = reason


class EnrollRefused(EnrollFailed):
    """The gateway refused the enrollment code (``token_used``, ``token_expired``, ...)."""


@dataclass(frozen=True)
class EnrollOptions:
    """Where the device reads codes from and writes its configuration to."""

    state_dir: Path
    frame_source: FileSourceConfig | Picamera2SourceConfig | V4L2SourceConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    scan_timeout_s: float = 600.0
    connect_timeout_s: float = 15.0
    reply_timeout_s: float = 30.0
    resend_s: float = 5.0


def enroll(options: EnrollOptions, *, pin_factory: Any = None) -> DeviceConfig:
    """Run the whole enrollment; returns the config written, or raises EnrollFailed."""
    config_path = options.state_dir / CONFIG_NAME
    with Signals(options.signals, pin_factory=pin_factory) as signals:
        try:
            if config_path.exists():
                raise EnrollFailed(
                    "already_enrolled", f"{config_path} exists; remove it to enroll again"
                )
            code = scan(options)
            bundle = asyncio.run(exchange(code, options))
            config = install(bundle, options.state_dir)
        except EnrollFailed as exc:
            logger.error("%s", exc)
            time.sleep(signals.enroll_failed())
            raise
        logger.info("enrolled as %s at site %s: %s", config.device_id, config.site_id, config_path)
        time.sleep(signals.enrolled())
    return config


def scan(options: EnrollOptions) -> EnrollmentCode:
    """Read frames until one holds an enrollment code; raises EnrollFailed."""
    source = make_frame_source(options.frame_source)
    try:
        return _scan(source, make_decoder(options.decoder), options.scan_timeout_s)
    finally:
        source.close()


def _scan(source: FrameSource, decoder: Decoder, timeout_s: float) -> EnrollmentCode:
    deadline = time.monotonic() + timeout_s
    frames = 0
    while time.monotonic() < deadline:
        frame = source.read()
        if frame is None:
            raise EnrollFailed("no_code", f"no enrollment code in {frames} frames")
        frames += 1
        for text in decoder.decode(frame):
            if not is_code(text):
                logger.info("frame %d: a QR code that is not an enrollment code; ignored", frames)
                continue
            try:
                code = parse_code(text)
            except EnrollmentError as exc:
                raise EnrollFailed("bad_code", str(exc)) from None
            logger.info("enrollment code for %s read in frame %d", code.device, frames)
            return code
    raise EnrollFailed("no_code", f"no enrollment code within {timeout_s:g} s")


async def exchange(code: EnrollmentCode, options: EnrollOptions) -> EnrollmentBundle:
    """Ask the gateway for this code's bundle and open it; raises EnrollFailed."""
    request_id = new_request_id()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    client = BusClient(
        ClientSettings(
            # The ACL lets a client reach only the request/reply pair of its client id.
            client_id=request_id,
            username=code.user,
            password=code.password,
            host=code.host,
            port=code.port,
            session_expiry_s=0,
        ),
        loop=asyncio.get_running_loop(),
        subscriptions=[(reply_topic(request_id), 1)],
        on_message=lambda _topic, payload: replies.put_nowait(payload),
    )
    client.start()
    try:
        await _connect(client, options.connect_timeout_s)
        request = EnrollRequest(
            device_id=code.device, token_id=token_id(code.token), firmware=__version__
        )
        sealed = await _ask(client, request_topic(request_id), encode(request), replies, options)
    finally:
        client.stop()
    return _open(sealed, code)


async def _connect(client: BusClient, timeout_s: float) -> None:
    try:
        await client.wait_connected(timeout_s)
    except TimeoutError:
        s = client.settings
        if client.refusals:
            raise EnrollFailed(
                "login_refused", f"broker {s.host}:{s.port} refused the enrollment login"
            ) from None
        raise EnrollFailed(
            "broker_unreachable", f"broker {s.host}:{s.port} not reachable in {timeout_s:g} s"
        ) from None


async def _ask(
    client: BusClient,
    topic: str,
    request: bytes,
    replies: asyncio.Queue[bytes],
    options: EnrollOptions,
) -> str:
    """Publish the request, again every ``resend_s``, until a reply; returns the sealed bundle."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.reply_timeout_s
    while (left := deadline - loop.time()) > 0:
        try:
            await client.publish_confirmed(topic, request, timeout=left)
        except PublishRefused as exc:
            raise EnrollFailed(
                "request_refused", f"the broker refused the request: {exc}"
            ) from None
        try:
            payload = await asyncio.wait_for(replies.get(), min(options.resend_s, left))
        except TimeoutError:
            logger.info("no enrollment reply yet; asking again")
            continue
        return _sealed(payload)
    raise EnrollFailed("no_reply", f"no reply from the gateway in {options.reply_timeout_s:g} s")


def _sealed(payload: bytes) -> str:
    try:
        reply = decode_reply(payload)
    except BadMessage as exc:
        raise EnrollFailed("bad_reply", f"unreadable reply from the gateway: {exc}") from None
    if reply.bundle is None:
        raise EnrollRefused(str(reply.reason), reply.detail)
    return reply.bundle


def _open(sealed: str, code: EnrollmentCode) -> EnrollmentBundle:
    try:
        bundle = open_bundle(sealed, code.token)
    except EnrollmentError as exc:
        raise EnrollFailed("bad_bundle", str(exc)) from None
    if bundle.device_id != code.device:
        raise EnrollFailed(
            "bad_bundle", f"bundle is for {bundle.device_id}, the code for {code.device}"
        )
    return bundle


def install(bundle: EnrollmentBundle, state_dir: Path) -> DeviceConfig:
    """Validate the bundle as a device config and write it with its secrets; returns it."""
    config = _device_config(bundle)
    secrets_dir = state_dir / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if bundle.password:
        write_private_file(secrets_dir / "broker.password", bundle.password + "\n")
    write_private_file(secrets_dir / "subject.key", bundle.subject_key + "\n")
    if bundle.tls is not None:
        write_private_file(secrets_dir / "ca.pem", bundle.tls.ca_pem)
        if bundle.tls.cert_pem is not None and bundle.tls.key_pem is not None:
            write_private_file(secrets_dir / "device.pem", bundle.tls.cert_pem)
            write_private_file(secrets_dir / "device.key", bundle.tls.key_pem)
    # Last: the config is what makes the folder an enrolled device.
    path = state_dir / CONFIG_NAME
    write_private_file(path, config.model_dump_json(indent=2, exclude_none=True) + "\n")
    return load_config(path)


def _device_config(bundle: EnrollmentBundle) -> DeviceConfig:
    """The device config of a bundle, with paths relative to the state folder."""
    broker: dict[str, Any] = {
        "host": bundle.host,
        "port": bundle.port,
        "username": bundle.device_id,
    }
    if bundle.password:
        broker["password_file"] = "secrets/broker.password"
    if bundle.tls is not None:
        tls = {"ca_file": "secrets/ca.pem"}
        if bundle.tls.cert_pem is not None:
            tls |= {"cert_file": "secrets/device.pem", "key_file": "secrets/device.key"}
        broker["tls"] = tls
    data = bundle.settings.model_dump() | {
        "device_id": bundle.device_id,
        "site_id": bundle.site_id,
        "broker": broker,
        "outbox_path": "outbox.db",
        "subject_key_file": "secrets/subject.key",
    }
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as exc:
        raise EnrollFailed(
            "bad_bundle", f"the bundle is not a valid device config: {exc}"
        ) from None


# -- command line --------------------------------------------------------------


def add_cli(sub: Any) -> None:
    """The ``enroll`` subcommand."""
    cmd = sub.add_parser("enroll", help="unconfigured device: read an enrollment QR code, enroll")
    cmd.add_argument("--state-dir", type=Path, required=True, help="where device.json goes")
    cmd.add_argument("--frames", type=Path, nargs="+", help="read image files instead of a camera")
    cmd.add_argument("--camera", choices=["picamera2", "v4l2"], default="picamera2")
    cmd.add_argument("--pins", choices=["auto", "mock"], default="auto", help="mock: no GPIO")
    cmd.add_argument("--timeout", type=float, default=600.0, help="seconds to look for a code")
    cmd.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run_cli(args: argparse.Namespace) -> int:
    """Enroll as the command line says; prints one JSON line on success."""
    source: FrameSourceConfig
    if args.frames:
        source = FileSourceConfig(paths=args.frames)
    elif args.camera == "v4l2":
        source = V4L2SourceConfig()
    else:
        source = Picamera2SourceConfig()
    options = EnrollOptions(
        state_dir=args.state_dir,
        frame_source=source,
        signals=SignalsConfig(factory=args.pins),
        scan_timeout_s=args.timeout,
    )
    config = enroll(options, pin_factory=_pin_factory(args.pins))
    path = str(options.state_dir / CONFIG_NAME)
    print(json.dumps({"enrolled": config.device_id, "site": config.site_id, "config": path}))
    return 0


def _pin_factory(pins: str) -> Any:
    if pins != "mock":
        return None
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)
