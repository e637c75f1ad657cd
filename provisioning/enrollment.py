"""One-time enrollment codes: a device's bundle sealed, stored at the gateway, shown as a QR.

``qrgate-provision enroll-token --site DIR --device ID --ttl 15m --out code.png``
seals the device's configuration and secrets with a fresh token, stores the
token's id and the sealed bundle in the gateway's database, and renders the
code (broker address, enrollment login, device id, token, expiry) as a QR
image for the technician to show the device. The token is printed on nothing
else and stored nowhere: lose the image and make a new code.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import segno

from broker.enrollment import (
    ENROLL_USER,
    BundleTls,
    EnrollmentBundle,
    EnrollmentCode,
    EnrollmentError,
    new_token,
    seal_bundle,
    token_id,
)
from broker.errors import BrokerError
from broker.passwords import new_password, write_private_file
from device.config import DeviceConfig, load_config
from device.errors import DeviceError
from gateway.enrollment import TokenRecord, issue_token
from gateway.store import SQLiteStore
from provisioning.errors import DeviceRevoked, ProvisioningError, UnknownDevice
from provisioning.layout import Site, open_site
from provisioning.manifest import load_manifest

logger = logging.getLogger(__name__)

MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(days=7)
_TTL_RE = re.compile(r"^(\d{1,6})([smhd])$")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_UNREACHABLE_HOSTS = ("0.0.0.0", "::", "")


class EnrollmentRefused(ProvisioningError):
    """An enrollment code cannot be made (no enrollment login, bad TTL, bad output file)."""


@dataclass(frozen=True)
class IssuedCode:
    """A code made for a device: the QR payload, and where its image went."""

    code: EnrollmentCode
    image: Path | None


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h`` or ``1d``, between 1 minute and 7 days."""
    match = _TTL_RE.fullmatch(text.strip())
    if not match:
        raise EnrollmentRefused(f"--ttl {text!r}: use a number and s, m, h or d, e.g. 15m")
    ttl = timedelta(**{_TTL_UNITS[match.group(2)]: int(match.group(1))})
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise EnrollmentRefused(f"--ttl {text!r}: must be between 1m and 7d")
    return ttl


def enrollment_login(site: Site) -> str:
    """The site's enrollment broker user; its password is made on first use.

    Called when the broker's users are written (:mod:`provisioning.sync`), so a
    site made before enrollment by QR gets the login on its next sync.
    """
    path = site.password_file(ENROLL_USER)
    if not path.exists():
        write_private_file(path, new_password() + "\n")
        logger.info("enrollment login %s created for site %s", ENROLL_USER, site.site_id)
    return ENROLL_USER


def enrollment_password(site: Site) -> str:
    """The site's enrollment login password (printed on every code, so no real secret)."""
    path = site.password_file(ENROLL_USER)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EnrollmentRefused(
            f"site {site.site_id} has no enrollment login ({path}: {exc.strerror}); "
            "a site made before enrollment by QR gets it with its next device change"
        ) from None


def issue_code(
    site_dir: Path,
    device_id: str,
    *,
    ttl: timedelta,
    now: datetime | None = None,
    host: str | None = None,
    out: Path | None = None,
) -> IssuedCode:
    """Make a one-time code for ``device_id``, store it at the gateway, render it to ``out``."""
    site = open_site(site_dir)
    manifest = load_manifest(site_dir)
    record = manifest.device(device_id)
    if record is None:
        raise UnknownDevice(f"site {site.site_id} has no device {device_id!r}; add it first")
    if not record.active:
        raise DeviceRevoked(f"device {device_id} was revoked at {record.revoked_at}")
    _check_output(out)
    when = now or datetime.now(UTC)
    config = _device_config(site, device_id)
    dial = host or manifest.device_host
    if dial in _UNREACHABLE_HOSTS:
        raise EnrollmentRefused(f"devices cannot dial {dial!r}: give the broker's address")
    token = new_token()
    code = EnrollmentCode(
        host=dial,
        port=manifest.port,
        password=enrollment_password(site),
        device=device_id,
        token=token,
        expires=when + ttl,
    )
    sealed = _seal(_bundle(config, host), token)
    asyncio.run(_store(site, TokenRecord(token_id(token), device_id, code.expires, sealed), when))
    if out is not None:
        render(code, out)
    return IssuedCode(code, out)


def _device_config(site: Site, device_id: str) -> DeviceConfig:
    try:
        return load_config(site.device_config(device_id))
    except DeviceError as exc:
        raise ProvisioningError(f"device {device_id}: {exc}") from None


def _bundle(config: DeviceConfig, host: str | None) -> EnrollmentBundle:
    """The bundle of a provisioned device: its config read back with its secrets inlined.

    The device will dial what its config says (the TLS listener, if it has a
    certificate), at ``host`` if given.
    """
    try:
        password = config.broker.password() if config.broker.password_file else ""
        return EnrollmentBundle(
            device_id=config.device_id,
            site_id=config.site_id,
            host=host or config.broker.host,
            port=config.broker.port,
            password=password,
            tls=_tls(config),
            subject_key=config.subject_key().decode("ascii"),
            settings=config.settings(),
        )
    except (BrokerError, DeviceError, OSError, ValueError) as exc:
        raise ProvisioningError(
            f"device {config.device_id}: cannot build its bundle: {exc}"
        ) from None


def _tls(config: DeviceConfig) -> BundleTls | None:
    tls = config.broker.tls
    if tls is None:
        return None
    cert = tls.cert_file.read_text(encoding="ascii") if tls.cert_file else None
    key = tls.key_file.read_text(encoding="ascii") if tls.key_file else None
    return BundleTls(ca_pem=tls.ca_file.read_text(encoding="ascii"), cert_pem=cert, key_pem=key)


def _seal(bundle: EnrollmentBundle, token: str) -> str:
    try:
        return seal_bundle(bundle, token)
    except (EnrollmentError, BrokerError) as exc:
        raise EnrollmentRefused(f"device {bundle.device_id}: {exc}") from None


async def _store(site: Site, record: TokenRecord, now: datetime) -> None:
    store = await SQLiteStore.open(site.database)
    try:
        await issue_token(store, record, now=now)
    finally:
        await store.close()


def _check_output(out: Path | None) -> None:
    if out is None:
        return
    if out.suffix.lower() not in (".png", ".svg"):
        raise EnrollmentRefused(f"--out {out}: write a .png or a .svg")
    if not out.parent.is_dir():
        raise EnrollmentRefused(f"--out {out}: folder {out.parent} does not exist")


def render(code: EnrollmentCode, out: Path) -> None:
    """The code as a QR image (PNG or SVG), large enough to read off paper or a phone."""
    qr = segno.make(code.text(), error="m", micro=False)
    qr.save(str(out), scale=8, border=4)
    logger.info("enrollment code for %s written to %s (version %s)", code.device, out, qr.version)
