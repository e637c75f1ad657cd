"""The durable outbox: every check-in waits here, under its sequence number, until acked.

SQLite in WAL mode with ``synchronous=FULL``: a check-in returned by
:meth:`Outbox.append` is on disk and survives ``kill -9`` and power loss.
Sequence numbers are never reused, even after the rows are deleted, and the
outbox has a random ``stream`` id made when its file is created, so a wiped
and re-created outbox never collides with check-ins the gateway already has.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from broker.messages import CheckIn
from device.errors import OutboxError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


class Outbox:
    """A per-device queue of check-ins on disk; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self.stream = self._init_meta()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from None

    def _init_meta(self) -> str:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('stream', ?), ('next_seq', '1')",
                (secrets.token_hex(16),),
            )
            (stream,) = self._db.execute("SELECT value FROM meta WHERE key='stream'").fetchone()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return str(stream)

    def append(self, build: Callable[[int], CheckIn]) -> CheckIn:
        """Store the check-in ``build(seq)`` under the next sequence number, durably."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                (seq,) = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
                record = build(int(seq))
                self._db.execute(
                    "INSERT INTO outbox VALUES (?, ?, ?)",
                    (record.seq, _now(), record.model_dump_json(exclude_none=True)),
                )
                self._db.execute(
                    "UPDATE meta SET value=? WHERE key='next_seq'", (str(record.seq + 1),)
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise OutboxError(f"cannot write outbox {self.path}: {exc}") from None
                raise
        return record

    def pending(self, *, after: int = 0, limit: int = 100) -> list[CheckIn]:
        """Unacked check-ins with ``seq > after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [CheckIn.model_validate_json(r) for (r,) in rows]

    def pending_json(self, *, after: int = 0, limit: int = 100) -> list[tuple[int, str]]:
        """Like :meth:`pending`, as (seq, the record's JSON as stored), without parsing.

        The JSON is what ``append`` wrote from a validated ``CheckIn``, so the
        uplink can put it into a message as is.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, record FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(seq), str(record)) for seq, record in rows]

    def ack(self, upto: int) -> int:
        """Forget every check-in up to and including ``upto``; returns how many went."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
        return cur.rowcount

    def depth(self) -> int:
        """How many check-ins wait for an ack."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def last_seq(self) -> int:
        """The highest sequence number ever given out (0 for a new outbox)."""
        with self._lock:
            (seq,) = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        return int(seq) - 1

    def oldest_pending_at(self) -> datetime | None:
        """When the oldest unacked check-in was stored, if any."""
        with self._lock:
            row = self._db.execute("SELECT min(created_at) FROM outbox").fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def close(self) -> None:
        """Close the database; the outbox can be reopened from its file."""
        with self._lock:
            self._db.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
