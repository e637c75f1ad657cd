"""Create a site on disk: broker config and users, gateway config, one config per device.

Layout of a site folder::

    site.json                 what was generated (ids, port), no secrets
    secrets/                  mode 0700: broker passwords, the subject-hash key
    broker/                   mosquitto.conf, passwd ($7$ hashes), acl, data/
    gateway/gateway.json      gateway config; tracing.db is created beside it
    devices/<id>/device.json  device config; outbox.db is created beside it
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from broker.mosquitto import BrokerLayout, write_broker_config
from broker.passwords import new_password, write_private_file
from broker.sealing import new_authority_key
from broker.settings import (
    FileSourceConfig,
    Picamera2SourceConfig,
    PolicyConfig,
    PrivacyConfig,
    SignalsConfig,
)
from broker.topics import check_device_id
from device.config import BrokerConfig, DeviceConfig
from gateway.categories import Category
from gateway.config import DeviceEntry, GatewayBrokerConfig, GatewayConfig
from gateway.registry import SiteEntry
from provisioning.errors import ProvisioningError, SiteExists

GATEWAY_USER = "gateway"


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


@dataclass(frozen=True)
class Site:
    """A generated site on disk."""

    directory: Path
    site_id: str
    host: str
    port: int
    broker: BrokerLayout
    device_ids: tuple[str, ...]

    @property
    def gateway_config(self) -> Path:
        return self.directory / "gateway" / "gateway.json"

    @property
    def database(self) -> Path:
        return self.directory / "gateway" / "tracing.db"

    def device_dir(self, device_id: str) -> Path:
        return self.directory / "devices" / device_id

    def device_config(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "device.json"

    def outbox(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "outbox.db"

    @property
    def authority_key(self) -> Path:
        """The health authority's private key (demo and tests only hold it on site)."""
        return self.directory / "secrets" / "authority.key"

    def password(self, user: str) -> str:
        """A broker user's password, from the site's secrets folder."""
        return (self.directory / "secrets" / f"{user}.password").read_text().strip()


def create_site(
    directory: Path,
    *,
    site_id: str,
    port: int,
    devices: Sequence[DeviceSpec],
    host: str = "127.0.0.1",
    extra_broker_users: Sequence[str] = (),
    site: SiteEntry | None = None,
) -> Site:
    """Generate every file of a new site; refuses to overwrite an existing one.

    ``extra_broker_users`` get broker credentials (device ACL) but are not
    registered at the gateway: what a revoked or foreign device looks like.
    ``site`` is registered at the gateway; by default a factory named after ``site_id``.
    """
    check_device_id(site_id)
    entry = site or SiteEntry(site_id=site_id, name=site_id, category=Category.FACTORY)
    if entry.site_id != site_id:
        raise ProvisioningError(f"site entry {entry.site_id} is not site {site_id}")
    if (directory / "site.json").exists():
        raise SiteExists(f"{directory} already holds a site; choose an empty folder")
    ids = [check_device_id(d.device_id) for d in devices]
    users = {name: new_password() for name in [GATEWAY_USER, *ids, *extra_broker_users]}
    secrets_dir = _write_secrets(directory, users)
    authority_public = _write_authority_key(secrets_dir)
    layout = write_broker_config(
        directory / "broker", port=port, gateway_users=[GATEWAY_USER], users=users, host=host
    )
    _write_gateway(directory, site_id, host, port, devices, entry)
    for spec in devices:
        _write_device(directory, site_id, host, port, spec, authority_public)
    _write_json(
        directory / "site.json",
        {"site_id": site_id, "host": host, "port": port, "devices": ids},
    )
    return Site(directory, site_id, host, port, layout, tuple(ids))


def _write_secrets(directory: Path, users: dict[str, str]) -> Path:
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user, password in users.items():
        _write_secret(secrets_dir / f"{user}.password", password)
    _write_secret(secrets_dir / "subject.key", secrets.token_hex(32))
    return secrets_dir


def _write_gateway(
    directory: Path,
    site_id: str,
    host: str,
    port: int,
    devices: Sequence[DeviceSpec],
    site: SiteEntry,
) -> None:
    config = GatewayConfig(
        site_id=site_id,
        broker=GatewayBrokerConfig(
            host=host,
            port=port,
            username=GATEWAY_USER,
            password_file=Path("../secrets") / f"{GATEWAY_USER}.password",
        ),
        database=Path("tracing.db"),
        devices=[
            DeviceEntry(device_id=d.device_id, site_id=site_id, gate=d.gate, direction=d.direction)
            for d in devices
        ],
        sites=[site],
    )
    _write_model(directory / "gateway" / "gateway.json", config)


def _write_authority_key(secrets_dir: Path) -> str:
    """The health authority's key pair; in the field the private half goes to the health
    department and only the public half stays on site."""
    private, public = new_authority_key()
    _write_secret(secrets_dir / "authority.key", private)
    (secrets_dir / "authority.pub").write_text(public + "\n", encoding="utf-8")
    return public


def _write_device(
    directory: Path, site_id: str, host: str, port: int, spec: DeviceSpec, authority: str
) -> None:
    config = DeviceConfig(
        device_id=spec.device_id,
        site_id=site_id,
        direction=spec.direction,
        broker=BrokerConfig(
            host=host,
            port=port,
            username=spec.device_id,
            password_file=Path("../../secrets") / f"{spec.device_id}.password",
        ),
        frame_source=spec.frame_source,
        signals=SignalsConfig(factory=spec.pin_factory),
        policy=PolicyConfig(debounce_s=spec.debounce_s),
        privacy=PrivacyConfig(authority_public_key=authority),
        outbox_path=Path("outbox.db"),
        subject_key_file=Path("../../secrets/subject.key"),
        ack_timeout_s=spec.ack_timeout_s,
    )
    _write_model(directory / "devices" / spec.device_id / "device.json", config)


def _write_model(path: Path, model: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_secret(path: Path, value: str) -> None:
    write_private_file(path, value + "\n")
