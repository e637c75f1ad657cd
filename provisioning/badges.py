"""Issuer keys and the badges they sign, for the site office.

An issuer key is an Ed25519 private key with a key id. :meth:`IssuerKey.save`
writes two files: the private key as PKCS#8 PEM, mode 0600, and beside it
``<stem>.pub.json`` holding ``{"key_id": ..., "public_key": ...}``, which is
public and exactly the pair a device's ``credentials.badge_keys`` needs. Keeping
the key id in that file, not in a command-line argument, means a key cannot be
loaded under the wrong id, which would make every badge it signs fail on the
gates. The badge format and its claims are described in :mod:`device.badge`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import base45
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

from device.badge import KEY_ID_PATTERN, PREFIX, BadgeClaims
from provisioning.errors import ProvisioningError

logger = logging.getLogger(__name__)

# 7 random bytes are 12 base32 characters: short enough for the QR, and a collision
# among a million badges has a chance of about one in 140,000.
BADGE_ID_BYTES = 7


class BadgeIssueError(ProvisioningError):
    """An issuer key could not be made, saved or loaded, or a badge's claims are invalid."""


@dataclass(frozen=True)
class IssuerKey:
    """An Ed25519 private key that signs badges, under the key id the gates know it by."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.match(self.key_id):
            raise BadgeIssueError(
                f"key id {self.key_id!r} must be 1-32 letters, digits, '-' or '_' "
                "(as devices require)"
            )

    def public_raw(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_text(self) -> str:
        """The raw public key as urlsafe base64: the value for ``badge_keys[key_id]``."""
        return base64.urlsafe_b64encode(self.public_raw()).decode("ascii")

    def save(self, path: Path) -> None:
        """Write the private key (PEM, 0600, never overwriting) and its public sidecar."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # Created 0600 in one step: a chmod after writing would leave a readable window.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
            sidecar(path).write_text(self._sidecar_json(), encoding="utf-8")
        except OSError as exc:
            raise BadgeIssueError(f"cannot save issuer key to {path}: {exc}") from exc
        logger.info("saved issuer key %r to %s", self.key_id, path)

    def _sidecar_json(self) -> str:
        body = {"key_id": self.key_id, "public_key": self.public_text()}
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> IssuerKey:
        """Read a key written by :meth:`save`; its sidecar must describe the same key."""
        try:
            private_key = _read_private_key(path)
            info = json.loads(sidecar(path).read_text(encoding="utf-8"))
            key_id, public_text = str(info["key_id"]), str(info["public_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadgeIssueError(f"cannot load issuer key {path}: {exc}") from exc
        key = cls(key_id=key_id, private_key=private_key)
        if key.public_text() != public_text:
            raise BadgeIssueError(f"{sidecar(path)} describes another key than {path}")
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            logger.warning("issuer key %s is readable by other users; chmod 600 it", path)
        return key


def sidecar(path: Path) -> Path:
    """The public ``<stem>.pub.json`` beside a private key file."""
    return path.with_name(f"{path.stem}.pub.json")


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except UnsupportedAlgorithm as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 key but {type(key).__name__}")
    return key


def generate_issuer_key(key_id: str) -> IssuerKey:
    """A new random issuer key under ``key_id``."""
    return IssuerKey(key_id=key_id, private_key=Ed25519PrivateKey.generate())


@dataclass(frozen=True, slots=True)
class Badge:
    """An issued badge: ``text`` is what goes into the QR code."""

    text: str
    key_id: str
    claims: BadgeClaims


def new_badge_id() -> str:
    """A random badge id: 12 characters of base32."""
    return base64.b32encode(secrets.token_bytes(BADGE_ID_BYTES)).decode("ascii").rstrip("=")


def issue_badge(
    key: IssuerKey,
    *,
    subject_id: str,
    name: str,
    site_id: str,
    zones: Sequence[str],
    valid_from: datetime,
    valid_until: datetime,
    badge_id: str | None = None,
    issued_at: datetime | None = None,
) -> Badge:
    """Sign a badge; times must be timezone-aware and are kept to the whole second.

    ``issued_at`` (when it was signed) defaults to now; it is recorded, not checked.
    """
    claims = BadgeClaims(
        badge_id=new_badge_id() if badge_id is None else badge_id,
        subject_id=subject_id,
        name=name,
        site_id=site_id,
        zones=tuple(zones),
        issued_at=_whole_second(issued_at or datetime.now(UTC), "issued_at"),
        valid_from=_whole_second(valid_from, "valid_from"),
        valid_until=_whole_second(valid_until, "valid_until"),
    )
    _check_claims(claims)
    text = PREFIX + base45.b45encode(zlib.compress(_sign(key, claims.to_cbor()), 9)).decode("ascii")
    logger.info("issued badge %s under key %r", claims.badge_id, key.key_id)
    return Badge(text=text, key_id=key.key_id, claims=claims)


def _sign(key: IssuerKey, payload: bytes) -> bytes:
    """A tagged COSE_Sign1 of ``payload`` with the protected header {alg: EdDSA, kid}."""
    private_raw = key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    cose_key = OKPKey(crv=Ed25519, d=private_raw, x=key.public_raw())
    message = Sign1Message(
        phdr={Algorithm: EdDSA, KID: key.key_id.encode("utf-8")}, payload=payload, key=cose_key
    )
    encoded: bytes = message.encode()
    return encoded


def _whole_second(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise BadgeIssueError(f"{what} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC).replace(microsecond=0)


def _check_claims(claims: BadgeClaims) -> None:
    """The rules :meth:`BadgeClaims.from_cbor` enforces on the gates, caught here instead."""
    for what in ("badge_id", "subject_id", "site_id"):
        if not getattr(claims, what):
            raise BadgeIssueError(f"{what} must not be empty")
    if not all(isinstance(zone, str) and zone for zone in claims.zones):
        raise BadgeIssueError(f"zones must be non-empty texts, got {claims.zones!r}")
    if claims.valid_until <= claims.valid_from:
        raise BadgeIssueError("valid_until must be after valid_from")
    if claims.valid_from.year < 1970:
        raise BadgeIssueError("valid_from must not be before 1970")
