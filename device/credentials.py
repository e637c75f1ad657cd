"""Recognise scanned QR text as a credential: one reader per kind, each returning a verdict.

A reader returns None when the text is not its format, and otherwise a
:class:`Verdict`, accepted or with a specific rejection reason; it never raises
for bad input. Text no reader claims is rejected as ``unrecognized``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from device.cccd import parse_cccd
from device.errors import CredentialError, InvalidCredential

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a scanned code is and whether it is valid, with the identity that could be read.

    ``id_number`` is what the pseudonymous subject key is derived from (the
    card number, the badge's subject id, a health pass's holder); it and
    ``name``/``date_of_birth`` are personal and leave the device only sealed.
    ``details`` holds fields that are safe to show a technician.
    """

    kind: str
    accepted: bool
    reason: str
    id_number: str = ""
    name: str = ""
    date_of_birth: str = ""
    old_id_number: str = ""
    warnings: tuple[str, ...] = ()
    credential_id: str = ""
    expires_at: datetime | None = None
    zones: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)


class CredentialReader(Protocol):
    """Reads one kind of credential."""

    kind: str

    def read(self, text: str, *, now: datetime) -> Verdict | None:
        """A verdict on ``text``, or None if it is not this reader's format."""
        ...


class CccdReader:
    """The Vietnamese chip ID card (CCCD / Căn cước) QR."""

    kind = "cccd"

    def read(self, text: str, *, now: datetime) -> Verdict | None:
        try:
            card = parse_cccd(text, today=now.astimezone().date())
        except InvalidCredential as exc:
            return Verdict(
                kind=self.kind,
                accepted=False,
                reason=exc.reason,
                id_number=exc.id_number,
                name=exc.name,
                date_of_birth=exc.date_of_birth,
            )
        except CredentialError:
            return None
        return Verdict(
            kind=self.kind,
            accepted=True,
            reason="ok",
            id_number=card.id_number,
            name=card.name,
            date_of_birth=card.date_of_birth.isoformat(),
            old_id_number=card.old_id_number,
            warnings=card.warnings,
            details={"province": card.province_code, "sex": card.sex},
        )


UNRECOGNIZED = Verdict(kind="unrecognized", accepted=False, reason="unrecognized")


def recognize(text: str, *, now: datetime, readers: Sequence[CredentialReader]) -> Verdict:
    """The verdict of the first reader that claims ``text``, else ``unrecognized``."""
    for reader in readers:
        verdict = reader.read(text, now=now)
        if verdict is not None:
            return verdict
    return UNRECOGNIZED
