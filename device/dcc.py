"""EU Digital COVID Certificates (``HC1:`` health passes), verified offline against a trust list.

Vietnam's 2022 vaccine passport is one of these. The QR text is::

    HC1:<Base45(zlib(COSE_Sign1))>

where zlib is optional. The COSE_Sign1 (CBOR tag 18, possibly inside the CWT tag
61, or untagged) is signed ES256 or PS256 by the document signer named by its
``kid`` (protected header, else unprotected header). The payload is a CWT:
1 iss, 4 exp, 6 iat and -260 hcert, whose key 1 holds the certificate itself:
``nam``, ``dob`` and the entries of one type, ``v``, ``t`` or ``r``.

Reasons, checked in this order, the first that applies wins: ``dcc_bad_base45``
→ ``dcc_bad_compression`` → ``dcc_bad_cose`` → ``dcc_unsupported_algorithm`` →
``dcc_unknown_signer`` → ``dcc_bad_signature`` → ``dcc_bad_cbor`` →
``dcc_bad_payload`` → ``dcc_not_yet_valid`` → ``dcc_expired`` →
``dcc_signer_not_valid`` → ``dcc_key_usage`` → ``dcc_test_positive`` → ``ok``.
Nothing in a pass is believed before its signature checks out, so those verdicts
carry at most the signer's kid; later ones carry the holder, so a technician can
see who was turned away and why.

Validity is ``iat <= now <= exp`` with no clock-skew allowance: the conformance
suite needs none (some of its clocks equal iat to the second), and slack on
``exp`` would admit expired passes.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import base45
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from device.credentials import Verdict
from device.envelope import EnvelopeError, cbor_exact, inflate
from device.errors import CredentialError
from device.trust import RECOVERY, TEST, VACCINATION, PublicKey, Signer, TrustList

logger = logging.getLogger(__name__)

PREFIX = "HC1:"
COSE_SIGN1_TAG, CWT_TAG = 18, 61
HEADER_ALG, HEADER_KID = 1, 4
ES256, PS256 = -7, -37
CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_HCERT = 1, 4, 6, -260
HCERT_DCC = 1
# A QR holds under 3 kB; a pass that inflates past this is not a pass.
MAX_COSE_BYTES = 16 * 1024
# SNOMED CT "Detected": a test certificate saying the holder is infected.
TEST_DETECTED = "260373001"

BAD_BASE45 = "dcc_bad_base45"
BAD_COMPRESSION = "dcc_bad_compression"
BAD_COSE = "dcc_bad_cose"
UNSUPPORTED_ALGORITHM = "dcc_unsupported_algorithm"
UNKNOWN_SIGNER = "dcc_unknown_signer"
BAD_SIGNATURE = "dcc_bad_signature"
BAD_CBOR = "dcc_bad_cbor"
BAD_PAYLOAD = "dcc_bad_payload"
NOT_YET_VALID = "dcc_not_yet_valid"
EXPIRED = "dcc_expired"
SIGNER_NOT_VALID = "dcc_signer_not_valid"
KEY_USAGE = "dcc_key_usage"
TEST_POSITIVE = "dcc_test_positive"
OK = "ok"

TYPE_NAMES = {VACCINATION: "vaccination", TEST: "test", RECOVERY: "recovery"}
# Per type, the entry fields safe to show a technician besides tg, co and is.
_SHOWN_FIELDS = {
    VACCINATION: ("dn", "sd", "dt"),
    TEST: ("tt", "sc", "tr"),
    RECOVERY: ("fr", "df", "du"),
}


class DccRejected(CredentialError):
    """A health pass failed a check before its holder could be trusted; ``reason`` says which."""


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A structurally sound COSE_Sign1 whose signature is not checked yet."""

    protected: bytes
    headers: Mapping[object, object]
    unprotected: Mapping[object, object]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> bytes | None:
        """The signer's kid: from the protected header if there, else from the unprotected."""
        kid = self.headers.get(HEADER_KID, self.unprotected.get(HEADER_KID))
        return kid if isinstance(kid, bytes) else None

    def to_be_signed(self) -> bytes:
        """The Sig_structure of RFC 9052 section 4.4, with no external AAD."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


@dataclass(frozen=True, slots=True)
class Claims:
    """The CWT claims of a pass, times as aware UTC; ``hcert`` is claim -260 unchecked."""

    issuer: str
    issued_at: datetime
    expires_at: datetime
    hcert: object


@dataclass(frozen=True, slots=True)
class HealthCertificate:
    """The holder and the one entry type (``v``/``t``/``r``) of a DCC payload."""

    kind: str
    entries: tuple[Mapping[str, object], ...]
    family_name: str
    given_name: str
    family_name_icao: str
    given_name_icao: str
    date_of_birth: str

    @property
    def entry(self) -> Mapping[str, object]:
        """The first entry: the one a verdict reports."""
        return self.entries[0]

    @property
    def name(self) -> str:
        """``given family``, each part falling back to its ICAO transliteration."""
        parts = (self.given_name or self.given_name_icao, self.family_name or self.family_name_icao)
        return " ".join(part for part in parts if part)

    @property
    def holder_id(self) -> str:
        """A stable holder key: the ICAO standardised names and the date of birth."""
        return f"{self.family_name_icao}<<{self.given_name_icao}|{self.date_of_birth}"


class DccReader:
    """Verifies ``HC1:`` health passes against a trust list of document signers."""

    kind = "dcc"

    def __init__(self, trust: TrustList) -> None:
        self._trust = trust

    def read(self, text: str, *, now: datetime) -> Verdict | None:
        if not text.startswith(PREFIX):
            return None
        details: dict[str, str] = {}
        try:
            cose = decode_hc1(text)
            if cose.kid is not None:
                details["kid"] = _kid_text(cose.kid)
            signer = self._authenticate(cose)
            claims = parse_claims(cose.payload)
            cert = parse_certificate(claims.hcert)
        except DccRejected as exc:
            logger.debug("health pass rejected: %s (%s)", exc.reason, exc)
            return Verdict(kind=self.kind, accepted=False, reason=exc.reason, details=details)
        # A naive "now" is local time; comparing it with the aware claim times needs it aware.
        now = now if now.tzinfo else now.astimezone()
        reason = _rule_broken(signer, claims, cert, now)
        if reason != OK:
            logger.debug("health pass %s rejected: %s", _text(cert.entry, "ci"), reason)
        return Verdict(
            kind=self.kind,
            accepted=reason == OK,
            reason=reason,
            id_number=cert.holder_id,
            name=cert.name,
            date_of_birth=cert.date_of_birth,
            credential_id=_text(cert.entry, "ci"),
            expires_at=claims.expires_at,
            details={**details, **_details(claims, cert)},
        )

    def _authenticate(self, cose: CoseSign1) -> Signer:
        """The trusted signer whose key verifies ``cose``; DccRejected if there is none."""
        alg = cose.headers.get(HEADER_ALG)
        if alg is None:
            raise DccRejected("no algorithm in the protected header", reason=BAD_COSE)
        if alg not in (ES256, PS256):
            raise DccRejected(
                f"algorithm {alg!r:.40} is not ES256 or PS256", reason=UNSUPPORTED_ALGORITHM
            )
        signers = self._trust.signers(cose.kid) if cose.kid is not None else ()
        if not signers:
            raise DccRejected("kid not in the trust list", reason=UNKNOWN_SIGNER)
        data = cose.to_be_signed()
        for signer in signers:
            if signature_valid(signer.public_key, alg, data, cose.signature):
                return signer
        raise DccRejected(
            f"signature does not verify ({len(signers)} signers)", reason=BAD_SIGNATURE
        )


def decode_hc1(text: str) -> CoseSign1:
    """The COSE_Sign1 inside an ``HC1:`` text, its structure checked but not its signature."""
    try:
        data: bytes = base45.b45decode(text.removeprefix(PREFIX))
    except ValueError as exc:
        raise DccRejected(f"base45: {exc}", reason=BAD_BASE45) from exc
    # zlib streams start with 0x78 (deflate, 32 KiB window); the spec allows passes
    # stored uncompressed, and no COSE_Sign1 can start with that byte.
    if data[:1] == b"\x78":
        data = _inflate(data)
    return _sign1(_cbor(data, BAD_COSE))


def parse_claims(payload: bytes) -> Claims:
    """The CWT claims of a payload; DccRejected (``dcc_bad_cbor``) if it is no CWT."""
    claims = _cbor(payload, BAD_CBOR)
    if not isinstance(claims, Mapping):
        raise DccRejected("payload is not a CBOR map", reason=BAD_CBOR)
    issuer = claims.get(CLAIM_ISS)
    return Claims(
        issuer=issuer if isinstance(issuer, str) else "",
        issued_at=_time(claims, CLAIM_IAT),
        expires_at=_time(claims, CLAIM_EXP),
        hcert=claims.get(CLAIM_HCERT),
    )


def check_time(claims: Claims, now: datetime) -> str | None:
    """The time rule ``claims`` break at ``now`` (aware): not yet valid, expired, or None."""
    if now < claims.issued_at:
        return NOT_YET_VALID
    if now > claims.expires_at:
        return EXPIRED
    return None


def parse_certificate(hcert: object) -> HealthCertificate:
    """The DCC in claim -260; DccRejected (``dcc_bad_payload``) if it lacks what a gate needs."""
    dcc = hcert.get(HCERT_DCC) if isinstance(hcert, Mapping) else None
    if not isinstance(dcc, Mapping):
        raise DccRejected("no health certificate in claim -260", reason=BAD_PAYLOAD)
    nam, dob = dcc.get("nam"), dcc.get("dob")
    if not (isinstance(nam, Mapping) and isinstance(dob, str)):
        raise DccRejected("certificate without nam or dob", reason=BAD_PAYLOAD)
    if not _text(nam, "fnt"):
        raise DccRejected("certificate without a standardised family name", reason=BAD_PAYLOAD)
    kind, entries = _entries(dcc)
    return HealthCertificate(
        kind=kind,
        entries=entries,
        family_name=_text(nam, "fn"),
        given_name=_text(nam, "gn"),
        family_name_icao=_text(nam, "fnt"),
        given_name_icao=_text(nam, "gnt"),
        date_of_birth=dob,
    )


def signature_valid(key: PublicKey, alg: object, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``data`` verifies with ``key`` under COSE algorithm ``alg``.

    Done with cryptography (OpenSSL) rather than pycose: pycose 1.1 cannot decode
    any message under cbor2 6 (pycose issue #141), and its ES256 runs on the
    pure-Python ``ecdsa`` package, about 30 times slower, which a Pi feels. The
    algorithm is held to the key: ES256 only with P-256 (a P-384 key labelled
    ES256 is refused), PS256 only with RSA.
    """
    try:
        if alg == ES256:
            return _es256_valid(key, data, signature)
        if alg == PS256 and isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            key.verify(signature, data, pss, hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    return False


def _es256_valid(key: PublicKey, data: bytes, signature: bytes) -> bool:
    # COSE carries ECDSA as r || s, 32 bytes each; OpenSSL wants DER.
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        return False
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    return True


def _rule_broken(signer: Signer, claims: Claims, cert: HealthCertificate, now: datetime) -> str:
    """The first rule an authentic pass breaks at ``now``, or ``"ok"``."""
    time_rule = check_time(claims, now)
    if time_rule is not None:
        return time_rule
    if not signer.valid_at(now):
        return SIGNER_NOT_VALID
    if not signer.allows(cert.kind):
        return KEY_USAGE
    if cert.kind == TEST and cert.entry.get("tr") == TEST_DETECTED:
        return TEST_POSITIVE
    return OK


def _inflate(data: bytes) -> bytes:
    try:
        return inflate(data, limit=MAX_COSE_BYTES)
    except EnvelopeError as exc:
        raise DccRejected(str(exc), reason=BAD_COMPRESSION) from exc


def _cbor(data: bytes, reason: str) -> object:
    try:
        return cbor_exact(data)
    except EnvelopeError as exc:
        raise DccRejected(str(exc), reason=reason) from exc


def _sign1(item: object) -> CoseSign1:
    if isinstance(item, cbor2.CBORTag) and item.tag == CWT_TAG:
        item = item.value
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise DccRejected(f"CBOR tag {item.tag} is not COSE_Sign1", reason=BAD_COSE)
        item = item.value
    # cbor2 6 decodes inside a tag to tuple and frozendict, elsewhere to list and dict.
    if not (isinstance(item, list | tuple) and len(item) == 4):
        raise DccRejected("COSE_Sign1 is not an array of four", reason=BAD_COSE)
    protected, unprotected, payload, signature = item
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping)):
        raise DccRejected("COSE_Sign1 headers of the wrong type", reason=BAD_COSE)
    if not (isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise DccRejected("COSE_Sign1 payload or signature is not a byte string", reason=BAD_COSE)
    headers = _cbor(protected, BAD_COSE) if protected else {}
    if not isinstance(headers, Mapping):
        raise DccRejected("protected header is not a map", reason=BAD_COSE)
    return CoseSign1(protected, headers, unprotected, payload, signature)


def _time(claims: Mapping[object, object], key: int) -> datetime:
    value = claims.get(key)
    # Epoch seconds, integer or (from some issuers) floating point.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DccRejected(f"claim {key} is not a time", reason=BAD_CBOR)
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise DccRejected(f"claim {key} is out of range", reason=BAD_CBOR) from exc


def _entries(dcc: Mapping[object, object]) -> tuple[str, tuple[Mapping[str, object], ...]]:
    """The one entry type a certificate holds, with its entries."""
    present = [(kind, dcc[kind]) for kind in TYPE_NAMES if dcc.get(kind) not in (None, [], ())]
    if len(present) != 1:
        raise DccRejected("certificate must hold exactly one of v, t, r", reason=BAD_PAYLOAD)
    kind, entries = present[0]
    if not (isinstance(entries, list | tuple) and all(isinstance(e, Mapping) for e in entries)):
        raise DccRejected(f"{kind} is not a list of entries", reason=BAD_PAYLOAD)
    return kind, tuple(entries)


def _details(claims: Claims, cert: HealthCertificate) -> dict[str, str]:
    details = {"type": TYPE_NAMES[cert.kind]}
    if claims.issuer:
        details["iss"] = claims.issuer
    for field in ("tg", "co", "is", *_SHOWN_FIELDS[cert.kind]):
        value = _shown(cert.entry.get(field))
        if value:
            details[field] = value
    if len(cert.entries) > 1:
        details["entries"] = str(len(cert.entries))
    return details


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    # Some issuers tag test times as CBOR date-times, which cbor2 decodes.
    if isinstance(value, datetime):
        return value.isoformat()
    return ""


def _text(mapping: Mapping[str, object], key: str) -> str:
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


def _kid_text(kid: bytes) -> str:
    # A genuine kid is 8 bytes; a hostile one is cut so details stay short.
    return base64.b64encode(kid[:32]).decode("ascii")
