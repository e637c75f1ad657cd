"""Who may pass this gate: a :class:`PolicyConfig` applied to credential verdicts.

:meth:`Policy.judge` applies these rules in this order; the first that refuses
decides the reason:

1. A verdict its credential reader already rejected stays rejected, with the
   reader's own reason.
2. A kind not in ``accept_kinds`` -> ``kind_not_accepted``.
3. A subject in ``deny_subjects`` -> ``denied``.
4. A badge whose ``credential_id`` is in ``revoked_badges`` -> ``badge_revoked``
   (the badge reader may check this too; checking here makes a pushed list
   effective without rebuilding the readers).
5. With ``require_health_pass``, on the way in: a valid health pass (``dcc``)
   is accepted and remembered for ``health_pass_window_s``; an ID card or badge
   is accepted only if a remembered pass matches the same person, else
   ``health_pass_required``. This pairs a pass with an ID shown right after it
   at the same reader; a pass may be reused within the window, so a family can
   show its passes and then its cards one by one. Leaving needs no pass.
6. Anti-passback (``warn`` or ``reject``), per subject at this reader: a second
   entry within ``passback_window_s`` without an exit in between is refused as
   ``passback`` or accepted with the warning ``passback``; an exit clears it.

The direction (in/out) is the constructor's in ``fixed`` mode, and switched by
:meth:`Policy.toggle_direction` in ``button`` mode. Only accepted judgements
change the state; open entries and the button direction are kept in a small
SQLite file so that a reboot does not reset them. Remembered health passes are
kept in memory only: they hold names and birth dates and matter for minutes.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from broker.settings import PolicyConfig
from device.credentials import Verdict
from device.decision import Judgement
from device.errors import DeviceError

# Judgement lives with the Decision that carries it; re-exported as part of this API.
__all__ = ["Judgement", "Policy", "PolicyError", "name_tokens"]

logger = logging.getLogger(__name__)

Direction = Literal["in", "out"]

_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS open_entry (subject TEXT PRIMARY KEY, entered_at REAL NOT NULL);
COMMIT;
"""
_NEEDS_HEALTH_PASS = frozenset({"cccd", "badge"})
# Đ/đ is a letter of its own in Unicode, not D with a combining mark.
_UNDECOMPOSABLE = str.maketrans({"Đ": "D", "đ": "d"})
# Letters and digits; anything else ("<" in MRZ-style names, commas, hyphens) separates.
_TOKEN = re.compile(r"[^\W_]+")


class PolicyError(DeviceError):
    """The policy state could not be read or written, or an operation does not apply."""


@dataclass(frozen=True, slots=True)
class _HealthPass:
    shown_at: float
    name: tuple[str, ...]
    date_of_birth: tuple[str, ...]


def name_tokens(name: str) -> tuple[str, ...]:
    """A name as a sorted multiset of upper-case ASCII-folded words, for order-free comparison.

    'Nguyễn  Văn An' and 'VAN AN NGUYEN' both give ('AN', 'NGUYEN', 'VAN').
    """
    decomposed = unicodedata.normalize("NFD", name.translate(_UNDECOMPOSABLE))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return tuple(sorted(_TOKEN.findall(bare.upper())))


def _date_parts(text: str) -> tuple[str, ...]:
    day = text.strip().split("T", 1)[0]
    return tuple(day.split("-")) if day else ()


def _dates_compatible(on_pass: tuple[str, ...], on_id: tuple[str, ...]) -> bool:
    """A pass's possibly partial birth date ('1964', '1964-08') is a prefix of the ID's."""
    if not on_pass or not on_id:
        return True  # a badge has no birth date: the name alone decides
    return on_id[: len(on_pass)] == on_pass


class Policy:
    """Applies a PolicyConfig to credential verdicts; keeps its own small state.

    The state is the open entries for anti-passback and the button direction
    (in the SQLite file at ``state_path``, or in memory without one) and the
    recently shown health passes (in memory). Safe to share between threads: a
    button callback may toggle the direction while the scanner judges.
    """

    def __init__(
        self, config: PolicyConfig, *, direction: Direction, state_path: Path | None = None
    ) -> None:
        self._config = config
        self._denied = frozenset(config.deny_subjects)
        self._revoked = frozenset(config.revoked_badges)
        self._passes: list[_HealthPass] = []
        self._lock = threading.Lock()
        self._where = str(state_path or ":memory:")
        self._db = _connect(state_path, self._where)
        self._direction = self._stored_direction(direction)
        if config.require_health_pass and "dcc" not in config.accept_kinds:
            logger.warning("require_health_pass without dcc in accept_kinds: no ID can pass")

    @property
    def direction(self) -> Direction:
        """Which way people pass this reader now."""
        return self._direction

    def toggle_direction(self) -> Direction:
        """Switch between in and out (``button`` mode only); the new direction is kept on disk."""
        if self._config.direction_mode != "button":
            raise PolicyError("the direction is fixed: direction_mode is not 'button'")
        with self._lock:
            new: Direction = "out" if self._direction == "in" else "in"
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('direction', ?)", (new,))
            self._direction = new
        logger.info("direction switched to %s", new)
        return new

    def judge(self, verdict: Verdict, subject: str | None, *, now: datetime) -> Judgement:
        """Whether ``verdict`` (of pseudonymous ``subject``) may pass at ``now``."""
        at = now.timestamp()
        with self._lock:
            direction = self._direction
            refusal = self._refusal(verdict, subject, direction, at)
            if refusal is not None:
                logger.debug("%s %s refused: %s", direction, verdict.kind, refusal)
                return Judgement(False, refusal, direction, verdict.warnings)
            if self._is_health_pass(verdict, direction):
                self._forget_passes_outside(at)
                self._passes.append(_health_pass(verdict, at))
                return Judgement(True, "ok", direction, verdict.warnings)
            return self._passback(verdict, subject, direction, at)

    def close(self) -> None:
        """Close the state file; a new Policy on the same path carries on from it."""
        with self._lock:
            self._db.close()

    def _refusal(
        self, verdict: Verdict, subject: str | None, direction: Direction, at: float
    ) -> str | None:
        if not verdict.accepted:
            return verdict.reason
        if verdict.kind not in self._config.accept_kinds:
            return "kind_not_accepted"
        if subject is not None and subject in self._denied:
            return "denied"
        if verdict.kind == "badge" and verdict.credential_id in self._revoked:
            return "badge_revoked"
        if self._needs_health_pass(verdict, direction) and not self._has_health_pass(verdict, at):
            return "health_pass_required"
        return None

    def _needs_health_pass(self, verdict: Verdict, direction: Direction) -> bool:
        return (
            self._config.require_health_pass
            and direction == "in"
            and verdict.kind in _NEEDS_HEALTH_PASS
        )

    def _is_health_pass(self, verdict: Verdict, direction: Direction) -> bool:
        return self._config.require_health_pass and direction == "in" and verdict.kind == "dcc"

    def _has_health_pass(self, verdict: Verdict, at: float) -> bool:
        self._forget_passes_outside(at)
        name = name_tokens(verdict.name)
        born = _date_parts(verdict.date_of_birth)
        return bool(name) and any(
            p.name == name and _dates_compatible(p.date_of_birth, born) for p in self._passes
        )

    def _forget_passes_outside(self, at: float) -> None:
        window = self._config.health_pass_window_s
        self._passes = [p for p in self._passes if abs(at - p.shown_at) < window]

    def _passback(
        self, verdict: Verdict, subject: str | None, direction: Direction, at: float
    ) -> Judgement:
        mode = self._config.anti_passback
        warnings = verdict.warnings
        if mode == "off" or subject is None:
            return Judgement(True, "ok", direction, warnings)
        with self._transaction() as db:
            self._prune(db, at)
            if direction == "out":
                db.execute("DELETE FROM open_entry WHERE subject = ?", (subject,))
                return Judgement(True, "ok", direction, warnings)
            if _is_inside(db, subject):
                if mode == "reject":
                    return Judgement(False, "passback", direction, warnings)
                warnings = (*warnings, "passback")
            db.execute("INSERT OR REPLACE INTO open_entry VALUES (?, ?)", (subject, at))
        return Judgement(True, "ok", direction, warnings)

    def _prune(self, db: sqlite3.Connection, at: float) -> None:
        # Symmetric, because a Pi without a clock chip boots with a clock that may
        # lag the last recorded entries: those must survive the reboot, but an entry
        # far in the future (a clock that was wrong and got corrected) must not stay.
        window = self._config.passback_window_s
        db.execute(
            "DELETE FROM open_entry WHERE entered_at <= ? OR entered_at >= ?",
            (at - window, at + window),
        )

    def _stored_direction(self, default: Direction) -> Direction:
        if self._config.direction_mode != "button":
            return default
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'direction'").fetchone()
        if row is None or row[0] not in ("in", "out"):
            return default
        stored: Direction = "in" if row[0] == "in" else "out"
        return stored

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise PolicyError(f"policy state {self._where}: {exc}") from None


def _health_pass(verdict: Verdict, at: float) -> _HealthPass:
    return _HealthPass(at, name_tokens(verdict.name), _date_parts(verdict.date_of_birth))


def _is_inside(db: sqlite3.Connection, subject: str) -> bool:
    row = db.execute("SELECT 1 FROM open_entry WHERE subject = ?", (subject,)).fetchone()
    return row is not None


def _connect(path: Path | None, where: str) -> sqlite3.Connection:
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not FULL: a power cut may forget the last few entries, which only
            # weakens anti-passback for them, while a sync per accepted scan cost ~5 ms
            # on the scan path (tests/bench/decode.py). The outbox stays FULL.
            db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise PolicyError(f"cannot open policy state {where}: {exc}") from None
    return db
