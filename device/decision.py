"""From decoded text to a decision: debounce, recognise, pseudonymise."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from broker.messages import CheckIn, PersonalFields
from device.credentials import CccdReader, CredentialReader, Verdict, recognize


def subject_key(key: bytes, kind: str, id_number: str) -> str:
    """The pseudonymous subject: a keyed hash of the normalised ID, 128 bits in hex."""
    message = f"{kind}:{id_number.strip()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def initials(name: str) -> str:
    """A name reduced to what may be shown on a terminal: 'Nguyễn Văn An' -> 'N. V. An'."""
    parts = name.split()
    if not parts:
        return "?"
    return " ".join([p[0] + "." for p in parts[:-1]] + [parts[-1]])


@dataclass(frozen=True, slots=True)
class Decision:
    """One scan event after debouncing: the verdict and when and where it happened."""

    text: str
    verdict: Verdict
    subject: str | None
    scanned_at: datetime
    direction: Literal["in", "out"]

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    def checkin(self, seq: int) -> CheckIn:
        """The check-in record of this decision under sequence number ``seq``."""
        v = self.verdict
        personal = None
        if v.id_number:
            personal = PersonalFields(
                id_number=v.id_number,
                name=v.name,
                date_of_birth=v.date_of_birth,
                old_id_number=v.old_id_number,
            )
        return CheckIn(
            seq=seq,
            scanned_at=self.scanned_at,
            direction=self.direction,
            kind=v.kind,
            accepted=v.accepted,
            reason=v.reason,
            subject=self.subject,
            personal=personal,
            warnings=list(v.warnings),
        )

    def describe(self) -> str:
        """A terminal line that shows no full name or ID number."""
        v = self.verdict
        word = "ACCEPT" if v.accepted else "REJECT"
        who = initials(v.name) if v.name else "-"
        return f"{word} {v.kind:<12} {v.reason:<24} {who}"


class Decider:
    """Turns decoded texts into decisions; the same text within ``debounce_s`` is one event."""

    def __init__(
        self,
        *,
        key: bytes,
        direction: Literal["in", "out"],
        debounce_s: float,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], datetime],
        readers: Sequence[CredentialReader] = (CccdReader(),),
    ) -> None:
        self._readers = list(readers)
        self._key = key
        self._direction = direction
        self._debounce_s = debounce_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._last_seen: dict[str, float] = {}

    def decide(self, text: str) -> Decision | None:
        """A decision for ``text``, or None if it is a repeat within the debounce window."""
        now = self._monotonic()
        last = self._last_seen.get(text)
        self._last_seen[text] = now
        if last is not None and now - last < self._debounce_s:
            return None
        if len(self._last_seen) > 256:
            self._forget_older_than(now - self._debounce_s)
        scanned_at = self._wall_clock()
        verdict = recognize(text, now=scanned_at, readers=self._readers)
        subject = None
        if verdict.id_number:
            subject = subject_key(self._key, verdict.kind, verdict.id_number)
        return Decision(text, verdict, subject, scanned_at, self._direction)

    def _forget_older_than(self, cutoff: float) -> None:
        self._last_seen = {t: s for t, s in self._last_seen.items() if s >= cutoff}
