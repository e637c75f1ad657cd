"""Who a pseudonymous subject is: its pseudonym, its initials, and, with the key, its identity.

The gateway stores a keyed hash of each ID number (the subject) and the
personal fields sealed to the health authority. Only a holder of the
authority's private key can open them; without it, tools show initials.
Decrypted fields are returned to the caller and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from broker.messages import PersonalFields
from broker.sealing import Opener, SealingError
from gateway.errors import ConfigError

logger = logging.getLogger(__name__)


def pseudonym(key: bytes, kind: str, id_number: str) -> str:
    """The subject of an ID number, exactly as the devices compute it (128 bits in hex).

    Re-stated here because the gateway may not import the device package; a
    test holds it equal to ``device.decision.subject_key``.
    """
    message = f"{kind}:{id_number.strip()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def read_subject_key(path: Path) -> bytes:
    """The province-wide subject-hash key from its file, with the devices' rules; never logged."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read subject key file {path}: {exc}") from None
    if len(key) < 16:
        raise ConfigError(f"subject key in {path} is shorter than 16 bytes")
    return key


@dataclass(frozen=True, slots=True)
class Identity:
    """What may be shown of a subject: initials always; name and ID only once opened."""

    subject: str
    initials: str = ""
    name: str = ""
    id_number: str = ""
    date_of_birth: str = ""

    @property
    def decrypted(self) -> bool:
        return bool(self.id_number)

    @property
    def shown_name(self) -> str:
        """The full name when decrypted, else the initials."""
        return self.name or self.initials


@dataclass
class Identities:
    """Resolves subjects to identities; opens sealed fields only when given the authority key.

    ``opened`` collects the subjects whose identity was decrypted, for the
    audit entry; ``failures`` counts sealed texts the key could not open.
    """

    db: aiosqlite.Connection
    opener: Opener | None = None
    opened: set[str] = field(default_factory=set)
    failures: int = 0
    _cache: dict[str, Identity] = field(default_factory=dict)

    async def of(self, subject: str) -> Identity:
        """The identity of ``subject`` from its latest sealed check-in (initials: latest seen)."""
        cached = self._cache.get(subject)
        if cached is None:
            initials, sealed = await self._latest(subject)
            cached = self.identify(subject, initials, sealed)
            self._cache[subject] = cached
        return cached

    def identify(self, subject: str | None, initials: str, sealed: str | None) -> Identity:
        """The identity one check-in shows: its initials, and its sealed fields if they open."""
        fields = self._open(sealed)
        if subject is None or fields is None:
            return Identity(subject or "", initials)
        self.opened.add(subject)
        return Identity(subject, initials, fields.name, fields.id_number, fields.date_of_birth)

    def _open(self, sealed: str | None) -> PersonalFields | None:
        if self.opener is None or not sealed:
            return None
        try:
            return self.opener.open(sealed)
        except SealingError:
            # Sealed to another authority key, or damaged: show initials, count it.
            self.failures += 1
            return None

    async def _latest(self, subject: str) -> tuple[str, str | None]:
        async with self.db.execute(
            "SELECT (SELECT initials FROM checkins WHERE subject = :s AND initials != '' "
            "        ORDER BY scanned_s DESC, id DESC LIMIT 1), "
            "       (SELECT sealed FROM checkins WHERE subject = :s AND sealed IS NOT NULL "
            "        ORDER BY scanned_s DESC, id DESC LIMIT 1)",
            {"s": subject},
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return "", None
        sealed = row[1] if self.opener is not None else None
        return str(row[0] or ""), sealed
