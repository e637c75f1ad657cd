"""Add, update, revoke and rotate a site's devices.

Every change is planned first (checked against the manifest and the site's
zones and vehicles, nothing written), then applied: the device's credentials
and config are written, the manifest is saved, and everything generated from
it (broker password file, ACL, CRL, the gateway's device list, the registry)
is brought in line by :func:`provisioning.sync.sync_site`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from broker.enrollment import ENROLL_USER
from broker.passwords import new_password
from broker.settings import (
    CredentialsConfig,
    FileSourceConfig,
    Picamera2SourceConfig,
    PolicyConfig,
    PrivacyConfig,
    SignalsConfig,
)
from broker.tls import KeyPair
from broker.topics import DEVICE_ID_PATTERN
from device.config import BrokerConfig, DeviceConfig
from gateway.categories import Category
from gateway.config import GatewayConfig
from gateway.config import load_config as load_gateway_config
from gateway.errors import ConfigError
from provisioning.badges import IssuerKey
from provisioning.errors import (
    BadDeviceRequest,
    DeviceRevoked,
    ProvisioningError,
    UnknownDevice,
)
from provisioning.layout import Site, site_lock, site_of, write_secret
from provisioning.manifest import (
    DeviceRecord,
    SiteManifest,
    load_manifest,
    save_manifest,
    utc_now,
    write_text_if_changed,
)
from provisioning.pki import issue_device_certificate, load_ca
from provisioning.sync import SyncReport, sync_site
from provisioning.workers import revoked_badge_ids

logger = logging.getLogger(__name__)

_ID_RE = re.compile(DEVICE_ID_PATTERN)
ChangeKind = Literal["added", "updated", "unchanged"]


@dataclass(frozen=True)
class DeviceSpec:
    """What a technician says about one device."""

    device_id: str
    gate: str = ""
    direction: Literal["in", "out"] = "in"
    frame_source: FileSourceConfig | Picamera2SourceConfig = field(
        default_factory=Picamera2SourceConfig
    )
    pin_factory: Literal["auto", "mock"] = "auto"
    debounce_s: float = 3.0
    ack_timeout_s: float = 10.0
    zone: str = ""
    vehicle: str = ""

    def placement(self) -> tuple[str, str, str, str]:
        return (self.gate, self.direction, self.zone, self.vehicle)


@dataclass(frozen=True)
class Change:
    """What applying one spec does to the site."""

    kind: ChangeKind
    spec: DeviceSpec


@dataclass(frozen=True)
class Applied:
    """The outcome of a set of changes: one kind per device, and what sync did."""

    changes: tuple[Change, ...]
    sync: SyncReport


def plan_change(manifest: SiteManifest, gateway: GatewayConfig, spec: DeviceSpec) -> Change:
    """Check ``spec`` against the site; raises BadDeviceRequest or DeviceRevoked."""
    _check_fields(spec)
    # A device's broker user name is its id: it must not take over another login of the site.
    if spec.device_id in (gateway.broker.username, ENROLL_USER):
        raise BadDeviceRequest(
            "device_id", f"{spec.device_id!r} is the name of the site's gateway or enrollment login"
        )
    _check_placement(manifest, gateway, spec)
    record = manifest.device(spec.device_id)
    if record is None:
        return Change("added", spec)
    if not record.active:
        raise DeviceRevoked(
            f"device_id: {spec.device_id} was revoked at {record.revoked_at}; "
            "ids are never reused, add the replacement under a new id"
        )
    return Change("unchanged" if record.placement() == spec.placement() else "updated", spec)


def _check_fields(spec: DeviceSpec) -> None:
    if not _ID_RE.fullmatch(spec.device_id):
        raise BadDeviceRequest(
            "device_id",
            f"{spec.device_id!r} is not a device id: 1-64 lower-case letters, digits or dashes, "
            "not starting or ending with a dash",
        )
    if len(spec.gate) > 64:
        raise BadDeviceRequest("gate", f"longer than 64 characters ({len(spec.gate)})")
    if spec.direction not in ("in", "out"):
        raise BadDeviceRequest("direction", f"{spec.direction!r} is neither 'in' nor 'out'")
    if spec.zone and spec.vehicle:
        raise BadDeviceRequest("vehicle", "a device is in a zone or on a vehicle, not both")


def _check_placement(manifest: SiteManifest, gateway: GatewayConfig, spec: DeviceSpec) -> None:
    sites = {s.site_id: s for s in gateway.sites}
    if spec.vehicle:
        if not _ID_RE.fullmatch(spec.vehicle):
            raise BadDeviceRequest(
                "vehicle", f"{spec.vehicle!r} is not an id (lower-case letters, digits, dashes)"
            )
        known = sites.get(spec.vehicle)
        if spec.vehicle == manifest.site_id or (
            known is not None and known.category is not Category.VEHICLE
        ):
            raise BadDeviceRequest("vehicle", f"{spec.vehicle!r} is a site, not a vehicle")
    if spec.zone:
        own = sites.get(manifest.site_id)
        zones = sorted(z.zone_id for z in own.zones) if own else []
        if spec.zone not in zones:
            listed = ", ".join(zones) or "none"
            raise BadDeviceRequest(
                "zone", f"{spec.zone!r} is not a zone of site {manifest.site_id} (zones: {listed})"
            )


def read_gateway(site: Site) -> GatewayConfig:
    try:
        return load_gateway_config(site.gateway_config)
    except ConfigError as exc:
        raise ProvisioningError(str(exc)) from None


def add_devices(site: Site, specs: Sequence[DeviceSpec], *, register: bool = True) -> Applied:
    """Add or update every device of ``specs``; all are checked before anything is written."""
    with site_lock(site.directory):
        return _add_devices(site, specs, register=register)


def _add_devices(site: Site, specs: Sequence[DeviceSpec], *, register: bool) -> Applied:
    manifest = load_manifest(site.directory)
    gateway = read_gateway(site)
    ids = [s.device_id for s in specs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise BadDeviceRequest("device_id", f"listed twice: {', '.join(repeated)}")
    changes = [plan_change(manifest, gateway, spec) for spec in specs]
    return apply_changes(site, manifest, changes, register=register)


def apply_changes(
    site: Site,
    manifest: SiteManifest,
    changes: Sequence[Change],
    *,
    register: bool = True,
    on_each: Callable[[], object] | None = None,
) -> Applied:
    """Write planned changes, then bring everything generated in line with the manifest.

    ``on_each`` is called after each change (a progress bar).
    """
    ca = load_ca(site) if any(c.kind == "added" for c in changes) else None
    badge_keys = _badge_keys(site)
    authority = (site.secrets / "authority.pub").read_text(encoding="utf-8").strip()
    # A gate fitted after a badge was revoked must refuse it too.
    revoked = revoked_badge_ids(site.directory)
    for change in changes:
        if change.kind == "added":
            assert ca is not None
            record = _add(site, ca, change.spec, _Trust(badge_keys, authority, revoked))
            manifest = manifest.with_device(record)
        elif change.kind == "updated":
            manifest = manifest.with_device(_update(site, manifest, change.spec))
        if on_each is not None:
            on_each()
    os.sync()  # every device file on disk before the manifest names it
    save_manifest(site.directory, manifest)
    report = sync_site(site_of(site.directory, manifest), manifest, register=register)
    counts = {k: sum(c.kind == k for c in changes) for k in ("added", "updated", "unchanged")}
    logger.info("devices of %s: %s", manifest.site_id, counts)
    return Applied(tuple(changes), report)


def _badge_keys(site: Site) -> dict[str, str]:
    if not site.badge_key.exists():
        return {}
    key = IssuerKey.load(site.badge_key)
    return {key.key_id: key.public_text()}


@dataclass(frozen=True, slots=True)
class _Trust:
    """What every new device config of a site carries: keys and the badge deny list."""

    badge_keys: dict[str, str]
    authority: str
    revoked_badges: list[str]


def _add(site: Site, ca: KeyPair, spec: DeviceSpec, trust: _Trust) -> DeviceRecord:
    write_secret(site.password_file(spec.device_id), new_password(), durable=False)
    serial = issue_device_certificate(site, ca, spec.device_id)
    config = _device_config(site.site_id, site.host, site.port, spec, trust)
    path = site.device_config(spec.device_id)
    text = config.model_dump_json(indent=2) + "\n"
    write_text_if_changed(path, text, private=False, durable=False)
    return DeviceRecord(
        device_id=spec.device_id,
        gate=spec.gate,
        direction=spec.direction,
        zone=spec.zone,
        vehicle=spec.vehicle,
        cert_serial=serial,
        provisioned_at=utc_now(),
    )


def _update(site: Site, manifest: SiteManifest, spec: DeviceSpec) -> DeviceRecord:
    record = manifest.device(spec.device_id)
    assert record is not None
    path = site.device_config(spec.device_id)
    config = read_device_config(path).model_copy(update={"direction": spec.direction})
    text = config.model_dump_json(indent=2) + "\n"
    write_text_if_changed(path, text, private=False, durable=False)
    return record.model_copy(
        update={"gate": spec.gate, "direction": spec.direction, "zone": spec.zone}
        | {"vehicle": spec.vehicle}
    )


def read_device_config(path: Path) -> DeviceConfig:
    """A device config as written (relative paths kept)."""
    try:
        return DeviceConfig.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ProvisioningError(f"cannot read device config {path}: {exc}") from None


def _device_config(
    site_id: str,
    host: str,
    port: int,
    spec: DeviceSpec,
    trust: _Trust,
) -> DeviceConfig:
    return DeviceConfig(
        device_id=spec.device_id,
        site_id=site_id,
        direction=spec.direction,
        broker=BrokerConfig(
            host="127.0.0.1" if host in ("0.0.0.0", "::") else host,
            port=port,
            username=spec.device_id,
            password_file=Path("../../secrets") / f"{spec.device_id}.password",
        ),
        frame_source=spec.frame_source,
        signals=SignalsConfig(factory=spec.pin_factory),
        policy=PolicyConfig(debounce_s=spec.debounce_s, revoked_badges=trust.revoked_badges),
        credentials=CredentialsConfig(badge_keys=trust.badge_keys),
        privacy=PrivacyConfig(authority_public_key=trust.authority),
        outbox_path=Path("outbox.db"),
        subject_key_file=Path("../../secrets/subject.key"),
        ack_timeout_s=spec.ack_timeout_s,
    )


def active_record(manifest: SiteManifest, device_id: str) -> DeviceRecord:
    record = manifest.device(device_id)
    if record is None:
        raise UnknownDevice(f"site {manifest.site_id} has no device {device_id!r}")
    if not record.active:
        raise DeviceRevoked(f"device {device_id} was revoked at {record.revoked_at}")
    return record


def revoke_device(site: Site, device_id: str, *, register: bool = True) -> SyncReport:
    """Revoke at once: password and certificate stop working; the records are kept."""
    with site_lock(site.directory):
        return _revoke(site, device_id, register=register)


def _revoke(site: Site, device_id: str, *, register: bool) -> SyncReport:
    manifest = load_manifest(site.directory)
    record = active_record(manifest, device_id)
    revoked = record.model_copy(update={"revoked_at": utc_now()})
    manifest = manifest.with_device(revoked).with_revoked_serial(record.cert_serial)
    save_manifest(site.directory, manifest)
    site.password_file(device_id).unlink(missing_ok=True)
    site.device_key(device_id).unlink(missing_ok=True)
    logger.info("revoked device %s (certificate %s)", device_id, record.cert_serial)
    return sync_site(site_of(site.directory, manifest), manifest, register=register)


def rotate_device(site: Site, device_id: str, *, register: bool = True) -> SyncReport:
    """New password and certificate; the old ones stop working at once."""
    with site_lock(site.directory):
        return _rotate(site, device_id, register=register)


def _rotate(site: Site, device_id: str, *, register: bool) -> SyncReport:
    manifest = load_manifest(site.directory)
    record = active_record(manifest, device_id)
    write_secret(site.password_file(device_id), new_password())
    serial = issue_device_certificate(site, load_ca(site), device_id)
    rotated = record.model_copy(update={"cert_serial": serial, "generation": record.generation + 1})
    manifest = manifest.with_device(rotated).with_revoked_serial(record.cert_serial)
    os.sync()
    save_manifest(site.directory, manifest)
    logger.info("rotated credentials of %s (generation %d)", device_id, rotated.generation)
    return sync_site(site_of(site.directory, manifest), manifest, register=register)
