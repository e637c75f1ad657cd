"""The site's certificate authority on disk: broker certificate, device certificates, CRL.

The CA key stays in the site's ``secrets/``; certificates go to ``pki/``. A
revoked certificate's serial goes into ``pki/crl.pem``, which the broker's TLS
listener reads (``crlfile``) on every reload.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives import serialization

from broker.tls import (
    KeyPair,
    TlsError,
    certificate_revocation_list,
    device_certificate,
    new_site_ca,
    revoked_serials,
    server_certificate,
)
from provisioning.errors import ProvisioningError
from provisioning.layout import Site
from provisioning.manifest import write_text_if_changed

logger = logging.getLogger(__name__)


def create_pki(site: Site, *, hosts: list[str]) -> None:
    """A new CA for the site, the broker's server certificate for ``hosts``, an empty CRL."""
    ca = new_site_ca(site.site_id)
    ca.save(site.ca_cert, site.ca_key)
    site.ca_cert.chmod(0o644)
    server_certificate(ca, hosts).save(site.broker_cert, site.broker_key)
    site.broker_cert.chmod(0o644)
    site.crl.write_bytes(certificate_revocation_list(ca, []))
    logger.info("site CA and broker certificate for %s made in %s", ", ".join(hosts), site.pki)


def load_ca(site: Site) -> KeyPair:
    """The site's CA (certificate and key)."""
    try:
        return KeyPair.load(site.ca_cert, site.ca_key)
    except TlsError as exc:
        raise ProvisioningError(f"cannot use the site CA: {exc}") from None


def issue_device_certificate(site: Site, ca: KeyPair, device_id: str) -> str:
    """A new client certificate (CN = device id) and key for the device; returns its serial."""
    pair = device_certificate(ca, device_id)
    key = pair.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert = pair.cert.public_bytes(serialization.Encoding.PEM)
    # Not fsynced one by one: the caller syncs once before the manifest names them.
    write_text_if_changed(site.device_key(device_id), key.decode("ascii"), durable=False)
    write_text_if_changed(
        site.device_cert(device_id), cert.decode("ascii"), private=False, durable=False
    )
    return serial_text(pair.cert.serial_number)


def write_crl(site: Site, serials: list[str]) -> bool:
    """Make the CRL list exactly ``serials``; returns whether the file changed."""
    wanted = {int(s, 16) for s in serials}
    if site.crl.exists() and revoked_serials(site.crl) == wanted:
        return False
    pem = certificate_revocation_list(load_ca(site), wanted)
    write_text_if_changed(site.crl, pem.decode("ascii"), private=False)
    logger.info("CRL %s now lists %d certificates", site.crl, len(wanted))
    return True


def serial_text(serial: int) -> str:
    """A certificate serial as the manifest keeps it (lower-case hex)."""
    return f"{serial:x}"
