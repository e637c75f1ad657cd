"""Badges the site issues to workers and passengers: a signed token small enough for one QR.

Text format::

    QRG1:<Base45(zlib(COSE_Sign1))>

like the EU DCC's ``HC1:``, with a prefix of our own so the two can never be
confused. The COSE_Sign1 (CBOR tag 18) is signed with EdDSA over Ed25519; its
protected header is exactly ``{1: -8, 4: kid}``, the kid being the issuer key id
as UTF-8 bytes (a key of ``CredentialsConfig.badge_keys``).

The payload is a CBOR map. Its keys follow CWT (RFC 8392) where meaning and type
match, and are small negative private keys otherwise; every key is one CBOR byte.

====  ==========  ======  ===========================================
key   claim       type    meaning
====  ==========  ======  ===========================================
1     iss         text    site id of the issuing site
2     sub         text    subject id: employee or passenger number
4     exp         int     expiry, epoch seconds (valid while now < exp)
5     nbf         int     valid from, epoch seconds
6     iat         int     when the badge was signed, epoch seconds
-1    badge id    text    unique per badge; what revocation lists name
-2    name        text    display name
-3    zones       [text]  zones the badge opens
====  ==========  ======  ===========================================

Unknown keys are ignored, so a later issuer may add claims without breaking gates.

A typical badge (a Vietnamese name, three zones) is about 310 Base45 characters,
all in the QR alphanumeric set: a version 10 code (57×57 modules) at error level
M, or version 11 when zlib happens not to shrink the random parts.

Reasons, checked in this order, the first that applies wins: ``badge_malformed``
→ ``badge_unknown_key`` → ``badge_bad_signature`` → ``badge_revoked`` →
``badge_wrong_site`` → ``badge_not_yet_valid`` → ``badge_expired`` → ``ok``.
Nothing in a badge is believed before its signature checks out, so those
failures come first and their verdicts carry no identity; then the permanent
refusals (revoked, another site's badge) come before the ones that depend on the
gate's clock, which may be wrong on a Pi without network.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import base45
import cbor2
from pycose.algorithms import EdDSA
from pycose.exceptions import CoseException
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

from device.credentials import Verdict
from device.envelope import EnvelopeError, cbor_exact, inflate
from device.errors import BadgeKeyError, InvalidCredential

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

PREFIX = "QRG1:"
COSE_SIGN1_TAG = 18
COSE_ALG, COSE_KID = 1, 4
# As CredentialsConfig.badge_keys requires of its keys.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The largest QR holds under 3 kB, so a badge that inflates past this is not one of ours.
MAX_COSE_BYTES = 4096
# Epoch seconds of 9999-12-31: past this datetime cannot represent the claim.
MAX_EPOCH = 253_402_300_799

SITE, SUBJECT, EXPIRY, VALID_FROM, ISSUED_AT = 1, 2, 4, 5, 6
BADGE_ID, NAME, ZONES = -1, -2, -3

MALFORMED = "badge_malformed"
UNKNOWN_KEY = "badge_unknown_key"
BAD_SIGNATURE = "badge_bad_signature"
REVOKED = "badge_revoked"
WRONG_SITE = "badge_wrong_site"
NOT_YET_VALID = "badge_not_yet_valid"
EXPIRED = "badge_expired"

# What the COSE and CBOR libraries raise on hostile input: cbor2's errors are not
# ValueErrors, and pycose signals bad structure with KeyError, TypeError and others.
_DECODE_ERRORS = (
    cbor2.CBORError,
    CoseException,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
)


@dataclass(frozen=True, slots=True)
class BadgeClaims:
    """What a badge says about its holder: the signed payload, times as aware UTC."""

    badge_id: str
    subject_id: str
    name: str
    site_id: str
    zones: tuple[str, ...]
    issued_at: datetime
    valid_from: datetime
    valid_until: datetime

    def to_cbor(self) -> bytes:
        """The payload in the claim layout of this module."""
        return cbor2.dumps(
            {
                SITE: self.site_id,
                SUBJECT: self.subject_id,
                EXPIRY: _epoch(self.valid_until),
                VALID_FROM: _epoch(self.valid_from),
                ISSUED_AT: _epoch(self.issued_at),
                BADGE_ID: self.badge_id,
                NAME: self.name,
                ZONES: list(self.zones),
            }
        )

    @classmethod
    def from_cbor(cls, payload: bytes) -> BadgeClaims:
        """Parse a payload; InvalidCredential (``badge_malformed``) if it breaks the layout."""
        claims = _cbor_exact(payload)
        if not isinstance(claims, Mapping):
            raise _malformed("payload is not a map")
        return cls(
            badge_id=_text(claims, BADGE_ID),
            subject_id=_text(claims, SUBJECT),
            name=_claim(claims, NAME, str),
            site_id=_text(claims, SITE),
            zones=_zones(claims),
            issued_at=_time(claims, ISSUED_AT),
            valid_from=_time(claims, VALID_FROM),
            valid_until=_time(claims, EXPIRY),
        )


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A structurally sound badge whose signature is not checked yet."""

    key_id: str
    message: Sign1Message
    claims: BadgeClaims


class BadgeReader:
    """Verifies site-issued ``QRG1:`` badges against the configured issuer keys."""

    kind = "badge"

    def __init__(
        self, keys: Mapping[str, str], *, site_id: str | None, revoked: Collection[str] = ()
    ) -> None:
        """``site_id`` None accepts badges of any site (the technician's ``check`` only)."""
        self._keys = {key_id: _public_key(key_id, text) for key_id, text in keys.items()}
        self._site_id = site_id
        self._revoked = frozenset(revoked)

    def read(self, text: str, *, now: datetime) -> Verdict | None:
        if not text.startswith(PREFIX):
            return None
        try:
            envelope = _open(text)
        except InvalidCredential as exc:
            logger.debug("badge rejected as malformed: %s", exc)
            return Verdict(kind=self.kind, accepted=False, reason=MALFORMED)
        key = self._keys.get(envelope.key_id)
        if key is None:
            return self._unauthenticated(UNKNOWN_KEY, envelope.key_id)
        if not _signature_ok(envelope.message, key):
            return self._unauthenticated(BAD_SIGNATURE, envelope.key_id)
        return self._authenticated(envelope, self._rule_broken(envelope.claims, now))

    def _unauthenticated(self, reason: str, key_id: str) -> Verdict:
        logger.debug("badge rejected: %s (key id %r)", reason, key_id)
        return Verdict(kind=self.kind, accepted=False, reason=reason, details={"key_id": key_id})

    def _authenticated(self, envelope: _Envelope, reason: str) -> Verdict:
        claims = envelope.claims
        if reason != "ok":
            logger.debug("badge %s rejected: %s", claims.badge_id, reason)
        return Verdict(
            kind=self.kind,
            accepted=reason == "ok",
            reason=reason,
            id_number=f"{claims.site_id}:{claims.subject_id}",
            name=claims.name,
            credential_id=claims.badge_id,
            expires_at=claims.valid_until,
            zones=claims.zones,
            details={
                "site": claims.site_id,
                "zones": ",".join(claims.zones),
                "key_id": envelope.key_id,
                "badge_id": claims.badge_id,
                "valid_from": claims.valid_from.isoformat(),
                "valid_until": claims.valid_until.isoformat(),
            },
        )

    def _rule_broken(self, claims: BadgeClaims, now: datetime) -> str:
        """The first rule an authentic badge breaks at ``now``, or ``"ok"``."""
        # A naive "now" is local time; comparing it with the aware claim times needs it aware.
        now = now if now.tzinfo else now.astimezone()
        if claims.badge_id in self._revoked:
            return REVOKED
        if self._site_id is not None and claims.site_id != self._site_id:
            return WRONG_SITE
        if now < claims.valid_from:
            return NOT_YET_VALID
        if now >= claims.valid_until:
            return EXPIRED
        return "ok"


def public_key_bytes(text: str) -> bytes:
    """The raw 32-byte Ed25519 key from urlsafe or standard base64; ValueError otherwise."""
    standard = text.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return raw


def _public_key(key_id: str, text: str) -> OKPKey:
    try:
        raw = public_key_bytes(text)
    except ValueError as exc:
        raise BadgeKeyError(f"badge key {key_id!r} is not an Ed25519 public key: {exc}") from exc
    return OKPKey(crv=Ed25519, x=raw)


def _open(text: str) -> _Envelope:
    """Decode a ``QRG1:`` text down to its claims, checking structure but not the signature."""
    protected, payload, signature = _sign1_parts(
        _cbor_exact(_inflate(_base45(text[len(PREFIX) :])))
    )
    # Built from checked parts rather than by Sign1Message.decode, which rejects every
    # message under cbor2 6 (tag contents decode as tuples: pycose issue #141), and which
    # would let the header choose the algorithm: here it is pinned to EdDSA.
    try:
        message = Sign1Message(phdr_encoded=protected, payload=payload)
        message.signature = signature
    except _DECODE_ERRORS as exc:
        raise _malformed(f"COSE: {exc}") from exc
    return _Envelope(
        key_id=_key_id(_cbor_exact(protected)),
        message=message,
        claims=BadgeClaims.from_cbor(payload),
    )


def _base45(text: str) -> bytes:
    try:
        data: bytes = base45.b45decode(text)
    except ValueError as exc:
        raise _malformed(f"base45: {exc}") from exc
    return data


def _inflate(data: bytes) -> bytes:
    try:
        return inflate(data, limit=MAX_COSE_BYTES)
    except EnvelopeError as exc:
        raise _malformed(str(exc)) from exc


def _cbor_exact(data: bytes) -> object:
    try:
        return cbor_exact(data)
    except EnvelopeError as exc:
        raise _malformed(str(exc)) from exc


def _sign1_parts(item: object) -> tuple[bytes, bytes, bytes]:
    """Protected header, payload and signature of a tagged COSE_Sign1.

    The unprotected header must be a map and is otherwise ignored, being unsigned.
    """
    if not (isinstance(item, cbor2.CBORTag) and item.tag == COSE_SIGN1_TAG):
        raise _malformed("not a tagged COSE_Sign1")
    parts = item.value
    # cbor2 6 decodes inside a tag to tuple and frozendict, cbor2 5 to list and dict.
    if not (isinstance(parts, list | tuple) and len(parts) == 4):
        raise _malformed("COSE_Sign1 is not an array of four")
    protected, unprotected, payload, signature = parts
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping)):
        raise _malformed("COSE_Sign1 headers of the wrong type")
    if not isinstance(payload, bytes):
        raise _malformed("payload is not a byte string")
    if not (isinstance(signature, bytes) and len(signature) == 64):
        raise _malformed("not an Ed25519 signature")
    return protected, payload, signature


def _key_id(header: object) -> str:
    if not (isinstance(header, Mapping) and set(header) == {COSE_ALG, COSE_KID}):
        raise _malformed("protected header must hold exactly alg and kid")
    if header[COSE_ALG] != EdDSA.identifier:
        raise _malformed(f"algorithm {header[COSE_ALG]!r} is not EdDSA")
    kid = header[COSE_KID]
    if not isinstance(kid, bytes):
        raise _malformed("kid is not a byte string")
    key_id = kid.decode("utf-8", errors="replace")
    # Held to the config's pattern so that what reaches a verdict is short and printable.
    if not KEY_ID_PATTERN.match(key_id):
        raise _malformed("kid is not a valid key id")
    return key_id


def _signature_ok(message: Sign1Message, key: OKPKey) -> bool:
    message.key = key
    try:
        return bool(message.verify_signature())
    except _DECODE_ERRORS as exc:
        logger.debug("badge signature check failed: %s", exc)
        return False


def _claim(claims: Mapping[object, object], key: int, kind: type[_T]) -> _T:
    value = claims.get(key)
    # bool is an int in Python but not in CBOR; a true/false time is not a time.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _malformed(f"claim {key} missing or not {kind.__name__}")
    return value


def _text(claims: Mapping[object, object], key: int) -> str:
    value = _claim(claims, key, str)
    if not value:
        raise _malformed(f"claim {key} is empty")
    return value


def _zones(claims: Mapping[object, object]) -> tuple[str, ...]:
    zones = claims.get(ZONES)
    if not (isinstance(zones, list | tuple) and all(isinstance(zone, str) for zone in zones)):
        raise _malformed("zones claim missing or not an array of text")
    return tuple(zones)


def _time(claims: Mapping[object, object], key: int) -> datetime:
    seconds = _claim(claims, key, int)
    if not 0 <= seconds <= MAX_EPOCH:
        raise _malformed(f"claim {key} out of range")
    return datetime.fromtimestamp(seconds, UTC)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _malformed(message: str) -> InvalidCredential:
    return InvalidCredential(message, reason=MALFORMED)
