"""The site's certificate authority and the TLS certificates of its broker and devices.

Each site has its own CA (EC P-256). The broker gets a server certificate for
its host names and addresses; each device a client certificate whose common
name is its device id, so that Mosquitto's ``use_identity_as_username`` makes
the certificate itself the login and the ACL's ``%u`` patterns apply to it.
Everything is built with ``cryptography``; private keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.errors import BrokerError
from broker.passwords import write_private_file
from broker.topics import check_device_id

CA_YEARS = 10
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept


class TlsError(BrokerError):
    """A certificate or key cannot be read, or does not belong to this site's CA."""


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (PEM) and the key (PEM, PKCS8, mode 0600)."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private_file(key_path, key_pem.decode())

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> KeyPair:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise TlsError(f"cannot load {cert_path} / {key_path}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_path} is not an EC private key")
        return cls(key, cert)


def _name(common_name: str, site_id: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"qrgate site {site_id}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew


def new_site_ca(site_id: str) -> KeyPair:
    """A new certificate authority for one site."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"qrgate {site_id} CA", site_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def _leaf(
    ca: KeyPair, common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    site = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(site)),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return KeyPair(key, builder.sign(ca.key, hashes.SHA256()))


def server_certificate(ca: KeyPair, hosts: list[str]) -> KeyPair:
    """The broker's certificate, valid for each host name or IP address in ``hosts``."""
    if not hosts:
        raise TlsError("a server certificate needs at least one host name or address")
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    return _leaf(ca, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, san)


def device_certificate(ca: KeyPair, device_id: str) -> KeyPair:
    """A device's client certificate: its common name is its broker user name."""
    return _leaf(ca, check_device_id(device_id), ExtendedKeyUsageOID.CLIENT_AUTH, [])


def certificate_revocation_list(ca: KeyPair, serials: Iterable[int]) -> bytes:
    """A CRL (PEM) signed by ``ca`` listing ``serials``; empty is valid and means none.

    Mosquitto reads its ``crlfile`` again on every reload (SIGHUP), so a revoked
    device certificate is refused at the next handshake.
    """
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        # OpenSSL refuses every client once a CRL has expired: it is rewritten on each change.
        .next_update(now + dt.timedelta(days=365 * CA_YEARS))
    )
    for serial in sorted(set(serials)):
        revoked = (
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def revoked_serials(crl_file: Path) -> set[int]:
    """The serial numbers a CRL file lists."""
    try:
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot load CRL {crl_file}: {exc}") from None
    return {entry.serial_number for entry in crl}


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener on which devices log in with their client certificate."""

    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path | None = None
