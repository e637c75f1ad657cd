"""Recognise scanned QR text as a credential; each kind returns a verdict, never raises."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from device.cccd import parse_cccd
from device.errors import CredentialError, InvalidCredential

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a scanned code is and whether it is accepted, with the identity that could be read."""

    kind: str
    accepted: bool
    reason: str
    id_number: str = ""
    name: str = ""
    date_of_birth: str = ""
    old_id_number: str = ""
    warnings: tuple[str, ...] = ()


def recognize(text: str, *, today: date) -> Verdict:
    """Try each credential format in turn; unknown text is rejected as ``unrecognized``."""
    try:
        card = parse_cccd(text, today=today)
    except InvalidCredential as exc:
        return Verdict(
            kind="cccd",
            accepted=False,
            reason=exc.reason,
            id_number=exc.id_number,
            name=exc.name,
            date_of_birth=exc.date_of_birth,
        )
    except CredentialError as exc:
        return Verdict(kind="unrecognized", accepted=False, reason=exc.reason)
    return Verdict(
        kind="cccd",
        accepted=True,
        reason="ok",
        id_number=card.id_number,
        name=card.name,
        date_of_birth=card.date_of_birth.isoformat(),
        old_id_number=card.old_id_number,
        warnings=card.warnings,
    )
