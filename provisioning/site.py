"""Create a site on disk: identity, site CA, broker, gateway, badge key; then its devices.

Layout of a site folder::

    site.json                 the manifest (provisioning.manifest): ids, ports, devices; no secrets
    secrets/                  mode 0700: broker passwords, device and CA keys, subject-hash key,
                              authority key, badge-issuer key
    pki/                      ca.pem, broker.pem, crl.pem, devices/<id>.pem
    broker/                   mosquitto.conf, passwd ($7$ hashes), acl, data/, mosquitto.pid
    gateway/gateway.json      gateway config; tracing.db is created beside it
    devices/<id>/device.json  device config; outbox.db is created beside it
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from broker.passwords import new_password
from broker.sealing import new_authority_key
from broker.topics import check_device_id
from gateway.categories import Category
from gateway.config import GatewayBrokerConfig, GatewayConfig
from gateway.registry import SiteEntry
from provisioning.badges import generate_issuer_key
from provisioning.devices import DeviceSpec, add_devices
from provisioning.errors import ProvisioningError, SiteExists
from provisioning.layout import GATEWAY_USER, Site, open_site, site_of, write_secret
from provisioning.manifest import MANIFEST_NAME, SiteManifest, save_manifest
from provisioning.pki import create_pki

__all__ = ["GATEWAY_USER", "DeviceSpec", "Site", "create_site", "open_site"]

DEFAULT_TLS_PORT = 8883


def create_site(
    directory: Path,
    *,
    site_id: str,
    port: int,
    devices: Sequence[DeviceSpec],
    host: str = "127.0.0.1",
    extra_broker_users: Sequence[str] = (),
    site: SiteEntry | None = None,
    tls_port: int | None = None,
    device_host: str | None = None,
    register: bool = False,
) -> Site:
    """Generate every file of a new site; refuses to overwrite an existing one.

    ``tls_port`` adds a listener where devices log in with their certificate.
    ``extra_broker_users`` get broker credentials (device ACL) but are not
    registered at the gateway: what a revoked or foreign device looks like.
    ``site`` is registered at the gateway; by default a factory named after ``site_id``.
    ``register`` also writes the devices' registry rows and desired configs into
    the gateway's database (the CLI does; tests of the gateway let it register them).
    """
    check_device_id(site_id)
    entry = site or SiteEntry(site_id=site_id, name=site_id, category=Category.FACTORY)
    if entry.site_id != site_id:
        raise ProvisioningError(f"site entry {entry.site_id} is not site {site_id}")
    if (directory / MANIFEST_NAME).exists():
        raise SiteExists(f"{directory} already holds a site; choose an empty folder")
    extra = [check_device_id(u) for u in extra_broker_users]
    manifest = SiteManifest(
        site_id=site_id,
        host=host,
        device_host=device_host or host,
        port=port,
        tls_port=tls_port,
        badge_key_id=f"{site_id[:29]}-k1",
        unregistered_users=extra,
    )
    made = site_of(directory, manifest)
    _write_secrets(made, [GATEWAY_USER, *extra])
    _write_keys(made, manifest)
    _write_gateway(made, entry)
    create_pki(made, hosts=_server_names(manifest))
    save_manifest(directory, manifest)
    add_devices(made, devices, register=register)
    return open_site(directory)


def _server_names(manifest: SiteManifest) -> list[str]:
    names = [manifest.device_host, manifest.host, "localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n not in ("0.0.0.0", "::")))


def _write_secrets(site: Site, users: Sequence[str]) -> None:
    site.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user in users:
        write_secret(site.password_file(user), new_password())
    write_secret(site.subject_key, secrets.token_hex(32))


def _write_keys(site: Site, manifest: SiteManifest) -> None:
    """The health authority's key pair and the site's badge-signing key.

    In the field the authority's private half goes to the health department and
    only the public half stays on site.
    """
    private, public = new_authority_key()
    write_secret(site.authority_key, private)
    (site.secrets / "authority.pub").write_text(public + "\n", encoding="utf-8")
    generate_issuer_key(manifest.badge_key_id).save(site.badge_key)


def _write_gateway(site: Site, entry: SiteEntry) -> None:
    config = GatewayConfig(
        site_id=site.site_id,
        broker=GatewayBrokerConfig(
            host=site.host if site.host not in ("0.0.0.0", "::") else "127.0.0.1",
            port=site.port,
            username=GATEWAY_USER,
            password_file=Path("../secrets") / f"{GATEWAY_USER}.password",
        ),
        database=Path("tracing.db"),
        devices=[],
        sites=[entry],
    )
    write_model(site.gateway_config, config)


def write_model(path: Path, model: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
