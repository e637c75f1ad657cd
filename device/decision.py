"""From decoded text to a decision: debounce, recognise, pseudonymise."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from broker.messages import CheckIn, PersonalFields
from broker.sealing import Sealer
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


class Judge(Protocol):
    """Turns a credential verdict into the gate's answer (``device.policy.Policy``)."""

    def judge(self, verdict: Verdict, subject: str | None, *, now: datetime) -> Judgement: ...


@dataclass(frozen=True, slots=True)
class Judgement:
    """The gate's answer to one scan."""

    accepted: bool
    reason: str
    direction: Literal["in", "out"]
    warnings: tuple[str, ...] = ()


class PassThrough:
    """The credential's own verdict is the answer (a gate with no policy)."""

    def __init__(self, direction: Literal["in", "out"]) -> None:
        self.direction = direction

    def judge(self, verdict: Verdict, subject: str | None, *, now: datetime) -> Judgement:
        return Judgement(verdict.accepted, verdict.reason, self.direction, verdict.warnings)


@dataclass(frozen=True, slots=True)
class Decision:
    """One scan event after debouncing: what was read, the answer, when, and clock quality."""

    text: str
    verdict: Verdict
    subject: str | None
    scanned_at: datetime
    judgement: Judgement
    clock_synced: bool = True
    sealed: str | None = None

    @property
    def accepted(self) -> bool:
        return self.judgement.accepted

    @property
    def direction(self) -> Literal["in", "out"]:
        return self.judgement.direction

    def checkin(self, seq: int) -> CheckIn:
        """The check-in record of this decision under sequence number ``seq``."""
        v, j = self.verdict, self.judgement
        return CheckIn(
            seq=seq,
            scanned_at=self.scanned_at,
            direction=j.direction,
            kind=v.kind,
            accepted=j.accepted,
            reason=j.reason,
            subject=self.subject,
            sealed=self.sealed,
            initials=initials(v.name)[:32] if v.name else "",
            warnings=list(j.warnings),
            clock_synced=self.clock_synced,
            credential_id=v.credential_id,
        )

    def describe(self) -> str:
        """A terminal line that shows no full name or ID number."""
        v, j = self.verdict, self.judgement
        word = "ACCEPT" if j.accepted else "REJECT"
        who = initials(v.name) if v.name else "-"
        return f"{word} {j.direction:<3} {v.kind:<12} {j.reason:<24} {who}"


class Decider:
    """Turns decoded texts into decisions; the same text within ``debounce_s`` is one event."""

    def __init__(
        self,
        *,
        key: bytes,
        debounce_s: float,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], datetime],
        readers: Sequence[CredentialReader] = (CccdReader(),),
        judge: Judge | None = None,
        direction: Literal["in", "out"] = "in",
        clock_synced: Callable[[], bool] = lambda: True,
        sealer: Sealer | None = None,
    ) -> None:
        self._sealer = sealer
        self._readers = list(readers)
        self._judge: Judge = judge or PassThrough(direction)
        self._clock_synced = clock_synced
        self._key = key
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
        judgement = self._judge.judge(verdict, subject, now=scanned_at)
        sealed = self._seal(verdict)
        return Decision(text, verdict, subject, scanned_at, judgement, self._clock_synced(), sealed)

    def _seal(self, verdict: Verdict) -> str | None:
        # Without the authority's key no identity leaves the gate at all.
        if self._sealer is None or not verdict.id_number:
            return None
        fields = PersonalFields(
            id_number=verdict.id_number[:32],
            name=verdict.name[:200],
            date_of_birth=verdict.date_of_birth[:10],
            old_id_number=verdict.old_id_number[:32],
        )
        return self._sealer.seal(fields)

    def _forget_older_than(self, cutoff: float) -> None:
        self._last_seen = {t: s for t, s in self._last_seen.items() if s >= cutoff}
