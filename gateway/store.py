"""The tracing store: the one narrow interface between the gateway and its database.

SQLite through aiosqlite today (WAL, one writer connection, explicit
transactions); a PostgreSQL store can implement the same :class:`TracingStore`
protocol when a province outgrows one gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import aiosqlite

from broker.messages import CheckIn, DeviceState, utc_iso
from broker.settings import ConfigPush, DeviceSettings
from gateway.config import DeviceEntry
from gateway.errors import StoreError
from gateway.migrations import migrate

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (device_id, stream)
B = TypeVar("B")
R = TypeVar("R")
WAL_CHECKPOINT_PAGES = 8000
# Seconds between background checkpoints of the write-ahead log (see _checkpoint_wal).
WAL_CHECKPOINT_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class Arrival:
    """A check-in as it arrived at the gateway."""

    device_id: str
    site_id: str
    stream: str
    record: CheckIn
    received_at: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message the gateway refused, kept for the operators (never its payload)."""

    received_at: str
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """A device state message."""

    device_id: str
    state: DeviceState
    received_at: str


@dataclass
class WriteBatch:
    """Everything one ingest round writes, committed in one transaction."""

    arrivals: list[Arrival] = field(default_factory=list)
    marks: dict[StreamKey, int] = field(default_factory=dict)
    states: list[StateChange] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


class TracingStore(Protocol):
    """What the gateway needs from its database."""

    async def register_devices(self, devices: Sequence[DeviceEntry]) -> None: ...
    async def devices(self) -> dict[str, DeviceEntry]: ...
    async def stream_marks(self) -> dict[StreamKey, tuple[int, set[int]]]: ...
    async def write(self, batch: WriteBatch) -> int: ...
    async def add_desired_config(
        self, device_id: str, settings: DeviceSettings, *, layered: bool = False
    ) -> int: ...
    async def desired_configs(self) -> dict[str, ConfigPush]: ...
    async def close(self) -> None: ...


class SQLiteStore:
    """The tracing store on one SQLite file, with a single writer connection."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # aiosqlite serialises statements, not transactions: every writer holds this
        # lock for its whole transaction so two never interleave on the connection.
        self._lock = asyncio.Lock()
        self._checkpoints: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection, held alone, for code that runs its own transaction."""
        async with self._lock:
            yield self._db

    @contextlib.asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """One explicit write transaction on the writer connection; errors roll back."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                if isinstance(exc, aiosqlite.Error):
                    raise StoreError(f"cannot {what} in {self.path}: {exc}") from exc
                raise

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        """Open (creating if needed) and migrate the database at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            # Check-ins land on random pages of the subject index; checkpointing every
            # 8,000 pages (32 MiB of WAL) instead of 1,000 copies each page back once per
            # many commits: about 30% less CPU per stored row at 500 rows per commit.
            # Alone, that checkpoint copied 32 MiB and fsynced inside a COMMIT (140-180
            # ms every ~1.5 s at 2,000 check-ins/s, every waiting check-in behind it);
            # _checkpoint_wal now copies most of it beforehand, off the commit path. The
            # one in COMMIT is still needed: it alone completes with no write going on,
            # which is what lets the next write start the WAL over (else it only grows).
            await db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            await migrate(db)
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot open tracing database {path}: {exc}") from exc
        store = cls(db, path)
        store._checkpoints = asyncio.create_task(_checkpoint_wal(path), name="wal-checkpoint")
        return store

    async def register_devices(self, devices: Sequence[DeviceEntry]) -> None:
        """Insert or update devices; rows of devices no longer listed are kept for tracing."""
        await self._transaction(
            "INSERT INTO devices (device_id, site_id, gate, direction, zone_id, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "site_id=excluded.site_id, gate=excluded.gate, direction=excluded.direction, "
            # A revocation is final: a config listing the device without it does not undo it.
            "zone_id=excluded.zone_id, "
            "revoked_at=coalesce(devices.revoked_at, excluded.revoked_at)",
            [(d.device_id, d.site_id, d.gate, d.direction, d.zone, d.revoked_at) for d in devices],
        )

    async def devices(self) -> dict[str, DeviceEntry]:
        """Every registered device by id."""
        async with self._db.execute(
            "SELECT device_id, site_id, gate, direction, zone_id, revoked_at FROM devices"
        ) as cur:
            rows = await cur.fetchall()
        return {
            r[0]: DeviceEntry(
                device_id=r[0], site_id=r[1], gate=r[2], direction=r[3], zone=r[4], revoked_at=r[5]
            )
            for r in rows
        }

    async def stream_marks(self) -> dict[StreamKey, tuple[int, set[int]]]:
        """Per stream: the acked mark and the stored seqs above it (gaps not yet filled)."""
        marks: dict[StreamKey, tuple[int, set[int]]] = {}
        async with self._db.execute("SELECT device_id, stream, acked_upto FROM streams") as cur:
            async for device_id, stream, upto in cur:
                marks[(device_id, stream)] = (int(upto), set())
        async with self._db.execute(
            "SELECT c.device_id, c.stream, c.seq FROM checkins c JOIN streams s "
            "ON s.device_id = c.device_id AND s.stream = c.stream WHERE c.seq > s.acked_upto"
        ) as cur:
            async for device_id, stream, seq in cur:
                marks[(device_id, stream)][1].add(int(seq))
        return marks

    async def write(self, batch: WriteBatch) -> int:
        """Commit a batch in one transaction; returns how many check-ins were new.

        The whole transaction (BEGIN, inserts, marks, states, refusals, COMMIT) is
        one call on aiosqlite's thread instead of one round trip per statement:
        the event loop hands it over once, and a cancelled caller can never leave
        the transaction open on the shared connection.
        """
        async with self._lock:
            try:
                return await self._in_thread(_write_batch, batch)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store check-ins in {self.path}: {exc}") from exc

    async def run_alone(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn(connection)`` on the writer's thread, holding the writer only for that call.

        For background writers (the stay keeper) that run their own transaction
        in ``fn``: one hand-off to the thread, no round trips while holding the
        writer, so an ingest commit waiting behind it waits only for the work.
        """
        async with self._lock:
            return await self._in_thread(_call_with_connection, fn)

    async def _in_thread(self, fn: Callable[[sqlite3.Connection, B], R], arg: B) -> R:
        """Run ``fn(connection, arg)`` on aiosqlite's thread, the connection's only user."""
        db = self._db
        # aiosqlite has no public API for this; _execute is what all its own methods use.
        result: R = await db._execute(lambda: fn(db._conn, arg))  # type: ignore[no-untyped-call]
        return result

    async def _write_states(self, states: list[StateChange]) -> None:
        await self._db.executemany(
            "UPDATE devices SET status=?, status_at=?, last_seen=?, "
            "firmware=CASE WHEN ?='' THEN firmware ELSE ? END, "
            "config_version=?, config_error=?, "
            "health=coalesce(?, health), health_at=CASE WHEN ? IS NULL THEN health_at ELSE ? END "
            "WHERE device_id=?",
            [_state_row(s) for s in states],
        )

    async def add_desired_config(
        self, device_id: str, settings: DeviceSettings, *, layered: bool = False
    ) -> int:
        """Store a new desired config for a device; returns its version (1, 2, ...).

        ``layered``: made by :mod:`gateway.desired` from the device's base config,
        site defaults and override (not a base itself).
        """
        async with self.transaction(f"store desired config for {device_id}"):
            async with self._db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM desired_configs WHERE device_id=?",
                (device_id,),
            ) as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 1
            await self._db.execute(
                "INSERT INTO desired_configs (device_id, version, settings, created_at, layered) "
                "VALUES (?, ?, ?, ?, ?)",
                (device_id, version, settings.model_dump_json(), utc_now(), layered),
            )
        return version

    async def desired_configs(self) -> dict[str, ConfigPush]:
        """The newest desired config of every device that has one."""
        async with self._db.execute(
            "SELECT device_id, version, settings FROM desired_configs d WHERE version = "
            "(SELECT max(version) FROM desired_configs WHERE device_id = d.device_id)"
        ) as cur:
            rows = await cur.fetchall()
        return {
            str(device_id): ConfigPush(
                version=int(version), settings=DeviceSettings.model_validate_json(settings)
            )
            for device_id, version, settings in rows
        }

    async def _transaction(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        async with self.transaction("write"):
            await self._db.executemany(sql, rows)

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        await self._db.close()  # the last connection to close checkpoints what is left


async def _checkpoint_wal(path: Path, interval_s: float = WAL_CHECKPOINT_INTERVAL_S) -> None:
    """Copy the WAL back into the database every ``interval_s``, on a connection of its own.

    A PASSIVE checkpoint takes no write lock: commits on the writer connection
    go on meanwhile, and its fsyncs happen on this connection's thread. The
    writer's own checkpoint (every ``WAL_CHECKPOINT_PAGES``) then finds only
    the last frames left to copy.
    """
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except aiosqlite.Error as exc:
        logger.error("no WAL checkpoints for %s: %s", path, exc)
        return
    try:
        await conn.execute("PRAGMA busy_timeout=5000")
        while True:
            await asyncio.sleep(interval_s)
            try:
                await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except aiosqlite.Error as exc:  # the next round copies it; commits are unaffected
                logger.warning("WAL checkpoint of %s failed: %s", path, exc)
    finally:
        await conn.close()


_INSERT_CHECKIN = (
    "INSERT OR IGNORE INTO checkins (device_id, stream, seq, site_id, scanned_at, "
    "received_at, direction, kind, accepted, reason, subject, sealed, initials, "
    "warnings, clock_synced, credential_id, scanned_s) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_MARK = (
    "INSERT INTO streams (device_id, stream, acked_upto, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (device_id, stream) DO UPDATE SET acked_upto=excluded.acked_upto, "
    "updated_at=excluded.updated_at"
)
_UPDATE_STATE = (
    "UPDATE devices SET status=?, status_at=?, last_seen=?, "
    "firmware=CASE WHEN ?='' THEN firmware ELSE ? END, "
    "config_version=?, config_error=?, "
    "health=coalesce(?, health), health_at=CASE WHEN ? IS NULL THEN health_at ELSE ? END "
    "WHERE device_id=?"
)
_INSERT_REFUSAL = (
    "INSERT INTO rejected_messages (received_at, topic, device_id, reason, detail, size) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def _call_with_connection(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], R]) -> R:
    return fn(conn)


def _write_batch(conn: sqlite3.Connection, batch: WriteBatch) -> int:
    """One write transaction for a batch (runs on aiosqlite's thread); returns new check-ins."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        if batch.arrivals:
            # In key order the random subject index (two thirds of the insert cost) is
            # walked once per commit: 8% less per row at 1,000 rows a commit, 20% at
            # 10,000. The id then only orders rows within one commit, never scans.
            rows = sorted(map(_checkin_row, batch.arrivals), key=_by_subject)
            conn.executemany(_INSERT_CHECKIN, rows)
        inserted = conn.total_changes - before
        if batch.marks:
            now = utc_now()
            conn.executemany(
                _UPSERT_MARK, [(d, s, upto, now) for (d, s), upto in batch.marks.items()]
            )
        if batch.states:
            conn.executemany(_UPDATE_STATE, map(_state_row, batch.states))
        if batch.refusals:
            conn.executemany(
                _INSERT_REFUSAL,
                [
                    (r.received_at, r.topic, r.device_id, r.reason, r.detail, r.size)
                    for r in batch.refusals
                ],
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


def _state_row(s: StateChange) -> tuple[object, ...]:
    state = s.state
    health = state.health.model_dump_json() if state.health is not None else None
    return (
        state.status,
        utc_iso(state.at) if state.at else s.received_at,
        s.received_at,
        state.firmware,
        state.firmware,
        state.config_version,
        state.config_error,
        health,
        health,
        s.received_at,
        s.device_id,
    )


_SUBJECT_COLUMN = _INSERT_CHECKIN.split("(", 1)[1].split(")", 1)[0].split(", ").index("subject")


def _by_subject(row: tuple[object, ...]) -> str:
    return str(row[_SUBJECT_COLUMN] or "")


def _checkin_row(a: Arrival) -> tuple[object, ...]:
    r = a.record
    scanned = r.scanned_at
    if scanned.utcoffset():  # devices send UTC; anything else is converted
        scanned = scanned.astimezone(UTC)
    return (
        a.device_id,
        a.stream,
        r.seq,
        a.site_id,
        scanned.isoformat(timespec="milliseconds"),  # = utc_iso(r.scanned_at), cheaper
        a.received_at,
        r.direction,
        r.kind,
        r.accepted,
        r.reason,
        r.subject,
        r.sealed,
        r.initials,
        json.dumps(r.warnings, ensure_ascii=False) if r.warnings else "[]",
        r.clock_synced,
        r.credential_id,
        int(scanned.timestamp()),
    )


def utc_now() -> str:
    """Now, as stored in the database."""
    return utc_iso(datetime.now(UTC))
