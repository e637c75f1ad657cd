"""Bring everything generated from the site manifest in line with it.

From ``site.json`` and ``secrets/``: the broker's password file, ACL, conf and
CRL (then a reload of the running broker), the gateway's device and vehicle
list in ``gateway.json``, and, when asked, the registry rows and desired
configs in the gateway's database. Files that would not change are not
touched, so syncing twice changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.errors import BrokerError
from broker.mosquitto import write_broker_config
from broker.settings import DeviceSettings
from device.config import DeviceConfig
from gateway import desired
from gateway.categories import Category
from gateway.config import DeviceEntry, GatewayConfig
from gateway.errors import GatewayError
from gateway.registry import SiteEntry, register_sites
from gateway.store import SQLiteStore
from provisioning.enrollment import enrollment_login
from provisioning.errors import ProvisioningError
from provisioning.layout import GATEWAY_USER, Site
from provisioning.manifest import SiteManifest, write_text_if_changed
from provisioning.pki import write_crl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    """What a sync changed and how the broker learnt of it."""

    broker_changed: bool
    gateway_changed: bool
    reload: str


def sync_site(site: Site, manifest: SiteManifest, *, register: bool = True) -> SyncReport:
    """Regenerate broker files and the gateway's lists; reload the broker if they changed."""
    broker_changed = sync_broker(site, manifest)
    gateway = _sync_gateway(site, manifest)
    if register:
        register_at_gateway(site, manifest, gateway)
    reload = reload_broker(site) if broker_changed else "broker files unchanged"
    return SyncReport(broker_changed, gateway is not None, reload)


def sync_broker(site: Site, manifest: SiteManifest) -> bool:
    """Password file, ACL, conf and CRL from the manifest; returns whether any changed."""
    layout = site.broker
    files = [layout.password_file, layout.acl_file, layout.conf, site.crl]
    before = [_digest(p) for p in files]
    active = [d.device_id for d in manifest.devices if d.active]
    named = [GATEWAY_USER, enrollment_login(site), *active, *manifest.unregistered_users]
    users = {u: _password(site, u) for u in named}
    if layout.tls is not None:
        write_crl(site, manifest.revoked_serials)
    try:
        write_broker_config(
            layout.directory,
            port=manifest.port,
            host=manifest.host,
            gateway_users=[GATEWAY_USER],
            users=users,
            tls=layout.tls,
            revoked_users=[d.device_id for d in manifest.devices if not d.active],
        )
    except BrokerError as exc:
        raise ProvisioningError(f"cannot write the broker config: {exc}") from None
    return [_digest(p) for p in files] != before


def _password(site: Site, user: str) -> str:
    try:
        return site.password(user)
    except OSError as exc:
        raise ProvisioningError(f"broker password of {user} missing: {exc}") from None


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def reload_broker(site: Site) -> str:
    """SIGHUP to the site's running mosquitto, else the command to run where it runs."""
    pid_file = site.broker.pid_file
    command = f"kill -HUP $(cat {pid_file})  # or: systemctl reload mosquitto"
    pid = _running_mosquitto(pid_file) if pid_file is not None else None
    if pid is None:
        logger.info("broker not running here; reload it where it runs: %s", command)
        return f"broker not running here; reload it where it runs: {command}"
    os.kill(pid, signal.SIGHUP)
    logger.info("reloaded mosquitto pid %d", pid)
    return f"reloaded mosquitto pid {pid}"


def _running_mosquitto(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    # A stale pid file may name a pid that now belongs to another program.
    return pid if comm == "mosquitto" else None


def gateway_entries(manifest: SiteManifest) -> list[DeviceEntry]:
    """Every device, revoked ones included (their rows are kept for tracing)."""
    return [
        DeviceEntry(
            device_id=d.device_id,
            site_id=d.vehicle or manifest.site_id,
            gate=d.gate,
            direction=d.direction,
            zone=d.zone,
            revoked_at=d.revoked_at,
        )
        for d in manifest.devices
    ]


def _sync_gateway(site: Site, manifest: SiteManifest) -> GatewayConfig | None:
    """Write the gateway's devices and vehicles; returns the config if it changed."""
    path = site.gateway_config
    try:
        config = GatewayConfig.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read gateway config {path}: {exc}") from None
    known = {s.site_id for s in config.sites}
    vehicles = sorted({d.vehicle for d in manifest.devices if d.vehicle} - known)
    sites = [
        *config.sites,
        *(SiteEntry(site_id=v, name=v, category=Category.VEHICLE) for v in vehicles),
    ]
    updated = GatewayConfig.model_validate(
        {**config.model_dump(), "devices": gateway_entries(manifest), "sites": sites}
    )
    changed = write_text_if_changed(path, updated.model_dump_json(indent=2) + "\n", private=False)
    return updated if changed else None


def register_at_gateway(
    site: Site, manifest: SiteManifest, gateway: GatewayConfig | None = None
) -> int:
    """Registry rows (revocations included) and desired configs in the gateway's database.

    A running gateway reads its devices again within seconds. Returns how many
    desired configs were stored (0 when none changed).
    """
    config = gateway or GatewayConfig.model_validate_json(site.gateway_config.read_bytes())
    wanted = {d.device_id: _settings(site, d.device_id) for d in manifest.devices if d.active}
    try:
        return asyncio.run(_register(site.database, config, manifest, wanted))
    except (GatewayError, OSError) as exc:
        raise ProvisioningError(f"cannot register devices in {site.database}: {exc}") from None


def _settings(site: Site, device_id: str) -> DeviceSettings:
    path = site.device_config(device_id)
    try:
        return DeviceConfig.model_validate_json(path.read_bytes()).settings()
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read device config {path}: {exc}") from None


async def _register(
    database: Path,
    config: GatewayConfig,
    manifest: SiteManifest,
    wanted: dict[str, DeviceSettings],
) -> int:
    store = await SQLiteStore.open(database)
    try:
        await store.register_devices(gateway_entries(manifest))
        async with store.exclusive() as db:
            await register_sites(db, config.sites)
        await _mark_provisioned(store, manifest)
        async with store.exclusive() as db:
            bases = {i: await desired.base_settings(db, i) for i in wanted}
        stale = [i for i, s in wanted.items() if bases[i] != s]
        for device_id in stale:
            await store.add_desired_config(device_id, wanted[device_id])
            await _layer(store, device_id, wanted[device_id])
        return len(stale)

    finally:
        await store.close()


async def _layer(store: SQLiteStore, device_id: str, base: DeviceSettings) -> None:
    """Store the device's site defaults and override over its new base, if it has any."""
    async with store.exclusive() as db:
        try:
            effective = await desired.effective_settings(db, device_id)
        except desired.InvalidPatch as exc:
            logger.warning("%s gets its base config without site defaults: %s", device_id, exc)
            return
    if effective != base:
        await store.add_desired_config(device_id, effective, layered=True)


async def _mark_provisioned(store: SQLiteStore, manifest: SiteManifest) -> None:
    rows: Sequence[tuple[str, str]] = [(d.provisioned_at, d.device_id) for d in manifest.devices]
    async with store.transaction("mark devices provisioned") as db:
        await db.executemany(
            "UPDATE devices SET provisioned_at=? WHERE device_id=? AND provisioned_at IS NULL",
            rows,
        )
