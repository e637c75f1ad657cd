"""The trust list of health-pass (EU DCC) document signers: certificates looked up by kid.

A DCC names its signer by ``kid``, the first 8 bytes of the SHA-256 of the
document signer certificate (DSC) in DER. The trust list keeps, per DSC, the
public key, the validity period and which certificate types its extended key
usage (EKU) allows: the DCC OIDs ``1.3.6.1.4.1.1847.2021.1.{1,2,3}`` for test,
vaccination and recovery, or their early ``1.3.6.1.4.1.0.1847…`` spelling, which
real DSCs (and the public test data) still carry. A DSC with none of those OIDs
may sign every type.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from device.errors import ConfigError

logger = logging.getLogger(__name__)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KID_BYTES = 8
TEST, VACCINATION, RECOVERY = "t", "v", "r"
_DCC_USAGES = {
    "1.3.6.1.4.1.1847.2021.1.1": TEST,
    "1.3.6.1.4.1.1847.2021.1.2": VACCINATION,
    "1.3.6.1.4.1.1847.2021.1.3": RECOVERY,
    "1.3.6.1.4.1.0.1847.2021.1.1": TEST,
    "1.3.6.1.4.1.0.1847.2021.1.2": VACCINATION,
    "1.3.6.1.4.1.0.1847.2021.1.3": RECOVERY,
}
# ES256 needs P-256; P-384 keys are kept so that a pass signed with one is refused
# as a bad signature rather than making the whole trust list unloadable.
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048
_EKU_OID_DER = bytes.fromhex("551d25")  # 2.5.29.37, extKeyUsage


class TrustListError(ConfigError):
    """A trust-list certificate is unreadable or carries a key no DCC can be signed with."""


@dataclass(frozen=True, slots=True)
class Signer:
    """One document signer certificate of the trust list."""

    kid: bytes
    fingerprint: bytes
    public_key: PublicKey
    subject: str
    not_before: datetime
    not_after: datetime
    usages: frozenset[str] | None
    """Types (``t``/``v``/``r``) its EKU allows; None when the EKU restricts nothing."""

    def allows(self, kind: str) -> bool:
        """Whether this signer may sign a certificate of type ``kind`` (``t``/``v``/``r``)."""
        return self.usages is None or kind in self.usages

    def valid_at(self, when: datetime) -> bool:
        """Whether ``when`` (aware) lies within the certificate's validity period."""
        return self.not_before <= when <= self.not_after


class TrustList:
    """Document signers by kid; several may share one kid, and each is then tried."""

    def __init__(self, signers: Iterable[Signer] = ()) -> None:
        self._by_kid: dict[bytes, list[Signer]] = {}
        seen: set[bytes] = set()
        for signer in signers:
            if signer.fingerprint not in seen:
                seen.add(signer.fingerprint)
                self._by_kid.setdefault(signer.kid, []).append(signer)

    @classmethod
    def from_der(cls, certificates: Iterable[bytes]) -> TrustList:
        """From DER certificates, as the DCC gateway and the test suite carry them."""
        return cls(signer_from_der(der) for der in certificates)

    @classmethod
    def from_pem_texts(cls, texts: Iterable[str]) -> TrustList:
        """From PEM texts (``CredentialsConfig.trust_list``), each of one or more certificates."""
        signers: list[Signer] = []
        for index, text in enumerate(texts):
            try:
                certificates = x509.load_pem_x509_certificates(text.encode("utf-8"))
            except (ValueError, UnicodeEncodeError) as exc:
                raise TrustListError(
                    f"trust list entry {index} is not a PEM certificate: {exc}"
                ) from exc
            signers.extend(
                signer_from_der(cert.public_bytes(Encoding.DER)) for cert in certificates
            )
        return cls(signers)

    @classmethod
    def from_pem_file(cls, path: str | Path) -> TrustList:
        """From a file of one or more concatenated PEM certificates."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustListError(f"cannot read trust list {path}: {exc}") from exc
        try:
            return cls.from_pem_texts([text])
        except TrustListError as exc:
            raise TrustListError(f"{path}: {exc}") from exc

    def signers(self, kid: bytes) -> tuple[Signer, ...]:
        """The signers whose kid is ``kid``; empty if none."""
        return tuple(self._by_kid.get(kid, ()))

    def __len__(self) -> int:
        return sum(len(signers) for signers in self._by_kid.values())


def signer_from_der(der: bytes) -> Signer:
    """A trust-list entry from one DER certificate; TrustListError if it cannot be one."""
    try:
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
        subject = cert.subject.rfc4514_string()
    except ValueError as exc:
        raise TrustListError(f"not a DER X.509 certificate: {exc}") from exc
    fingerprint = hashlib.sha256(der).digest()
    return Signer(
        kid=fingerprint[:KID_BYTES],
        fingerprint=fingerprint,
        public_key=_checked_key(key, subject),
        subject=subject,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        usages=_usages(_extended_key_usage(cert, der)),
    )


def _checked_key(key: object, subject: str) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
        return key
    raise TrustListError(
        f"certificate {subject!r} has a {type(key).__name__} key; a DCC signer needs "
        f"EC P-256/P-384 or RSA of at least {_MIN_RSA_BITS} bits"
    )


def _usages(oids: list[str] | None) -> frozenset[str] | None:
    allowed = frozenset(_DCC_USAGES[oid] for oid in oids or () if oid in _DCC_USAGES)
    return allowed or None


def _extended_key_usage(cert: x509.Certificate, der: bytes) -> list[str] | None:
    """The EKU OIDs of ``cert``, or None if it has no EKU extension."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        # cryptography refuses every extension of a certificate when one breaks DER
        # (some national DSCs encode BasicConstraints cA=FALSE, a default). Reading
        # just the EKU ourselves keeps those signers and their restrictions.
        logger.info("certificate extensions are not strict DER (%s); reading its EKU directly", exc)
        try:
            return eku_from_der(der)
        except (ValueError, IndexError) as der_exc:
            raise TrustListError(f"cannot read the key usage of a certificate: {der_exc}") from exc
    return [usage.dotted_string for usage in extension.value]


def eku_from_der(der: bytes) -> list[str] | None:
    """EKU OIDs read straight from certificate DER; ValueError/IndexError if malformed."""
    ((_, certificate),) = _der_items(der)
    tbs = _der_items(certificate)[0][1]
    for tag, content in _der_items(tbs):
        if tag != 0xA3:  # [3] EXPLICIT Extensions
            continue
        ((_, extensions),) = _der_items(content)
        for _, extension in _der_items(extensions):
            fields = _der_items(extension)
            if fields[0] == (0x06, _EKU_OID_DER):
                ((_, purposes),) = _der_items(fields[-1][1])
                return [_oid(value) for tag, value in _der_items(purposes) if tag == 0x06]
    return None


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of the consecutive DER elements in ``data``."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if not 0 < count <= 4:
                raise ValueError("unsupported DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise ValueError("DER element runs past its container")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _oid(raw: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or raw[-1] & 0x80:
        raise ValueError("malformed OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))
