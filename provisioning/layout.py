"""Where each file of a site folder is (see :mod:`provisioning.site` for the layout)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from broker.mosquitto import BrokerLayout, layout_for
from broker.tls import TlsListener
from provisioning.manifest import (
    MANIFEST_NAME,
    SiteManifest,
    load_manifest,
    write_text_if_changed,
)

GATEWAY_USER = "gateway"
BADGE_KEY = "badge-issuer.key"


@dataclass(frozen=True)
class Site:
    """A generated site on disk: where each of its files is."""

    directory: Path
    site_id: str
    host: str
    port: int
    broker: BrokerLayout
    device_ids: tuple[str, ...]

    @property
    def manifest_file(self) -> Path:
        return self.directory / MANIFEST_NAME

    @property
    def gateway_config(self) -> Path:
        return self.directory / "gateway" / "gateway.json"

    @property
    def database(self) -> Path:
        return self.directory / "gateway" / "tracing.db"

    @property
    def secrets(self) -> Path:
        return self.directory / "secrets"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.secrets / "ca.key"

    @property
    def crl(self) -> Path:
        return self.pki / "crl.pem"

    @property
    def broker_cert(self) -> Path:
        return self.pki / "broker.pem"

    @property
    def broker_key(self) -> Path:
        return self.secrets / "broker.key"

    @property
    def badge_key(self) -> Path:
        return self.secrets / BADGE_KEY

    @property
    def subject_key(self) -> Path:
        return self.secrets / "subject.key"

    def device_dir(self, device_id: str) -> Path:
        return self.directory / "devices" / device_id

    def device_config(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "device.json"

    def device_cert(self, device_id: str) -> Path:
        return self.pki / "devices" / f"{device_id}.pem"

    def device_key(self, device_id: str) -> Path:
        return self.secrets / f"{device_id}.key"

    def password_file(self, user: str) -> Path:
        return self.secrets / f"{user}.password"

    def outbox(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "outbox.db"

    @property
    def authority_key(self) -> Path:
        """The health authority's private key (demo and tests only hold it on site)."""
        return self.secrets / "authority.key"

    def password(self, user: str) -> str:
        """A broker user's password, from the site's secrets folder."""
        return self.password_file(user).read_text().strip()


def open_site(directory: Path) -> Site:
    """The site in ``directory``, from its manifest; raises SiteNotFound."""
    manifest = load_manifest(directory)
    return site_of(directory, manifest)


def site_of(directory: Path, manifest: SiteManifest) -> Site:
    """The file layout of a site described by ``manifest``."""
    layout = layout_for(directory / "broker", port=manifest.port, host=manifest.host)
    if manifest.tls_port is not None:
        pki, secrets = (directory / "pki").absolute(), (directory / "secrets").absolute()
        tls = TlsListener(
            manifest.tls_port,
            pki / "ca.pem",
            pki / "broker.pem",
            secrets / "broker.key",
            crl_file=pki / "crl.pem",
        )
        layout = replace(layout, tls=tls)
    ids = tuple(d.device_id for d in manifest.devices if d.active)
    return Site(directory, manifest.site_id, manifest.host, manifest.port, layout, ids)


def write_secret(path: Path, value: str, *, durable: bool = True) -> None:
    """Write a secret (one line), mode 0600, atomically (see write_text_if_changed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text_if_changed(path, value + "\n", durable=durable)


@contextmanager
def site_lock(directory: Path) -> Iterator[None]:
    """Hold the site's lock: two technicians' commands never interleave their writes."""
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
