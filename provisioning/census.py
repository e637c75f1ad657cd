"""Count what a site scanned, stored and still holds: the honest end-of-run summary.

Reads the device outboxes and the tracing database directly (read-only), so it
checks the delivery path rather than trusting any process's own counters.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Census:
    """Per-site totals; ``lost`` and ``duplicates`` are 0 when delivery is right."""

    scanned: int = 0
    accepted: int = 0
    rejected: int = 0
    stored: int = 0
    pending: int = 0
    duplicates: int = 0
    lost: int = 0
    refused_messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _outbox(path: Path) -> tuple[str, int, dict[int, bool]]:
    """(stream, last seq, {seq: accepted} of what is still pending)."""
    db = _read_only(path)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = db.execute("SELECT seq, json_extract(record, '$.accepted') FROM outbox").fetchall()
    finally:
        db.close()
    return str(meta["stream"]), int(meta["next_seq"]) - 1, {s: bool(a) for s, a in rows}


def take_census(database: Path, outboxes: dict[str, Path]) -> Census:
    """Compare every device outbox with the tracing database."""
    census = Census()
    db = _read_only(database)
    try:
        census.refused_messages = db.execute("SELECT count(*) FROM rejected_messages").fetchone()[0]
        census.stored = db.execute("SELECT count(*) FROM checkins").fetchone()[0]
        census.duplicates = db.execute(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM checkins "
            "GROUP BY device_id, stream, seq)"
        ).fetchone()[0]
        for device_id, path in outboxes.items():
            if path.exists():
                _count_device(census, db, device_id, path)
        census.accepted += db.execute("SELECT count(*) FROM checkins WHERE accepted").fetchone()[0]
        census.rejected += db.execute(
            "SELECT count(*) FROM checkins WHERE NOT accepted"
        ).fetchone()[0]
    finally:
        db.close()
    return census


def _count_device(census: Census, db: sqlite3.Connection, device_id: str, path: Path) -> None:
    stream, last_seq, pending = _outbox(path)
    stored = {
        seq
        for (seq,) in db.execute(
            "SELECT seq FROM checkins WHERE device_id=? AND stream=?", (device_id, stream)
        )
    }
    only_pending = {s: a for s, a in pending.items() if s not in stored}
    census.scanned += last_seq
    census.pending += len(only_pending)
    census.accepted += sum(only_pending.values())
    census.rejected += len(only_pending) - sum(only_pending.values())
    census.lost += sum(1 for s in range(1, last_seq + 1) if s not in stored and s not in pending)
