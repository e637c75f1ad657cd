"""Personal fields sealed to the health authority's key (Decree 13/2023/ND-CP).

The device seals the identity of each check-in (ID number, name, date of
birth) to the health authority's X25519 public key with libsodium's sealed
box (PyNaCl): anyone can seal, only the holder of the private key can open.
The gateway stores the sealed text and a pseudonymous subject key; it never
sees the plain identity. Defined here because both sides use the format.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from pydantic import ValidationError

from broker.errors import BrokerError
from broker.messages import PersonalFields


class SealingError(BrokerError):
    """A key is malformed, or a sealed text cannot be opened with the key given."""


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SealingError(f"{what} is not base64: {exc}") from None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_key_from_text(text: str) -> PublicKey:
    """The authority's public key from its config text (32 bytes, url-safe base64)."""
    raw = _b64decode(text.strip(), "authority public key")
    if len(raw) != 32:
        raise SealingError(f"authority public key must be 32 bytes, got {len(raw)}")
    return PublicKey(raw)


class Sealer:
    """Seals personal fields to one public key."""

    def __init__(self, public_key_text: str) -> None:
        self._box = SealedBox(public_key_from_text(public_key_text))

    def seal(self, fields: PersonalFields) -> str:
        return _b64encode(self._box.encrypt(fields.model_dump_json().encode()))


class Opener:
    """Opens sealed personal fields with the authority's private key."""

    def __init__(self, private_key: PrivateKey) -> None:
        self._box = SealedBox(private_key)
        self.public_key_text = _b64encode(bytes(private_key.public_key))

    @classmethod
    def from_file(cls, path: Path) -> Opener:
        """Load the private key the health department keeps (url-safe base64 text)."""
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SealingError(f"cannot read the authority key {path}: {exc}") from None
        raw = _b64decode(text, f"authority private key in {path}")
        if len(raw) != 32:
            raise SealingError(f"authority private key in {path} must be 32 bytes")
        return cls(PrivateKey(raw))

    def open(self, sealed: str) -> PersonalFields:
        try:
            plain = self._box.decrypt(_b64decode(sealed, "sealed fields"))
            return PersonalFields.model_validate_json(plain)
        except (CryptoError, ValidationError) as exc:
            raise SealingError(f"cannot open sealed fields: {exc}") from None


def new_authority_key() -> tuple[str, str]:
    """A fresh key pair as (private text, public text), for provisioning and tests."""
    key = PrivateKey.generate()
    return _b64encode(bytes(key)), _b64encode(bytes(key.public_key))
