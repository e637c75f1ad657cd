"""The site manifest (``site.json``): the source of truth of what a site holds.

Everything else in a site folder (broker password file, ACL, CRL, the
gateway's device list, the registry rows) is regenerated from the manifest and
the secrets folder, so a technician can re-run any command safely.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from broker.messages import DeviceId
from broker.passwords import write_private_file
from provisioning.errors import SiteNotFound

MANIFEST_NAME = "site.json"
OptionalId = Annotated[str, StringConstraints(pattern=r"^$|^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceRecord(_Model):
    """One provisioned device; a revoked one is kept, with its revocation time."""

    device_id: DeviceId
    gate: str = Field("", max_length=64, description="Gate name shown to operators.")
    direction: Literal["in", "out"] = "in"
    zone: str = Field("", max_length=64, description="Zone of the site, if any.")
    vehicle: OptionalId = Field("", description="Vehicle (a site of category vehicle), if any.")
    cert_serial: str = Field(description="Serial (hex) of the device's current certificate.")
    generation: int = Field(1, ge=1, description="1, then +1 on each credential rotation.")
    provisioned_at: str = Field(description="When the device was added (ISO 8601 UTC).")
    revoked_at: str | None = Field(None, description="When it was revoked (ISO 8601 UTC).")

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def placement(self) -> tuple[str, str, str, str]:
        """What a technician says about the device; a batch row with the same is unchanged."""
        return (self.gate, self.direction, self.zone, self.vehicle)


class SiteManifest(_Model):
    """A site: identity, broker listeners, devices and revoked certificate serials."""

    site_id: DeviceId
    host: str = Field(description="Address the broker listens on and the gateway dials.")
    device_host: str = Field(description="Address devices dial (the gateway's LAN address).")
    port: int = Field(ge=1, le=65535, description="Password listener (MQTT).")
    tls_port: int | None = Field(None, ge=1, le=65535, description="Client-certificate listener.")
    badge_key_id: str = Field(description="Key id of the site's badge-signing key.")
    unregistered_users: list[DeviceId] = Field(
        default_factory=list,
        description="Broker users with device rights that the gateway does not know "
        "(tests: what a foreign device looks like).",
    )
    devices: list[DeviceRecord] = Field(default_factory=list)
    revoked_serials: list[str] = Field(
        default_factory=list, description="Certificate serials (hex) in the CRL."
    )

    def device(self, device_id: str) -> DeviceRecord | None:
        return next((d for d in self.devices if d.device_id == device_id), None)

    def with_device(self, record: DeviceRecord) -> SiteManifest:
        """This manifest with ``record`` added, or replacing the record of the same id."""
        others = [d for d in self.devices if d.device_id != record.device_id]
        devices = sorted([*others, record], key=lambda d: d.device_id)
        return self.model_copy(update={"devices": devices})

    def with_revoked_serial(self, serial: str) -> SiteManifest:
        serials = sorted({*self.revoked_serials, serial})
        return self.model_copy(update={"revoked_serials": serials})


def load_manifest(directory: Path) -> SiteManifest:
    """Read ``site.json`` of the site in ``directory``; raises SiteNotFound."""
    path = directory / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteNotFound(f"no site in {directory}: cannot read {path}: {exc.strerror}") from None
    try:
        return SiteManifest.model_validate_json(text)
    except ValidationError as exc:
        raise SiteNotFound(f"{path} is not a qrgate site manifest:\n{exc}") from None


def save_manifest(directory: Path, manifest: SiteManifest) -> bool:
    """Write ``site.json`` atomically if it changed; returns whether it did."""
    path = directory / MANIFEST_NAME
    return write_text_if_changed(path, manifest.model_dump_json(indent=2) + "\n", private=False)


def write_text_if_changed(
    path: Path, text: str, *, private: bool = True, durable: bool = True
) -> bool:
    """Replace ``path`` atomically with ``text`` unless it already holds it.

    ``durable=False`` skips the fsyncs: for the many files of one batch, whose
    caller flushes them all with one :func:`os.sync` before it saves the manifest
    that refers to them (a crash before that leaves files no manifest names,
    and a re-run writes them again).
    """
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        write_private_file(path, text)
    else:
        _write_quick(path, text)
    if not private:
        path.chmod(0o644)
    return True


def _write_quick(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600 in one step: a secret is never briefly readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def utc_now() -> str:
    """Now as stored in the manifest: ISO 8601 UTC, seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
