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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import aiosqlite

from broker.messages import CheckIn, DeviceState, utc_iso
from broker.settings import ConfigPush, DeviceSettings
from gateway.config import DeviceEntry
from gateway.errors import StoreError
from gateway.migrations import migrate

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (device_id, stream)


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
    async def add_desired_config(self, device_id: str, settings: DeviceSettings) -> int: ...
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
            await migrate(db)
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot open tracing database {path}: {exc}") from exc
        return cls(db, path)

    async def register_devices(self, devices: Sequence[DeviceEntry]) -> None:
        """Insert or update devices; rows of devices no longer listed are kept for tracing."""
        await self._transaction(
            "INSERT INTO devices (device_id, site_id, gate, direction, zone_id) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "site_id=excluded.site_id, gate=excluded.gate, direction=excluded.direction, "
            "zone_id=excluded.zone_id",
            [(d.device_id, d.site_id, d.gate, d.direction, d.zone) for d in devices],
        )

    async def devices(self) -> dict[str, DeviceEntry]:
        """Every registered device by id."""
        async with self._db.execute(
            "SELECT device_id, site_id, gate, direction, zone_id FROM devices"
        ) as cur:
            rows = await cur.fetchall()
        return {
            r[0]: DeviceEntry(device_id=r[0], site_id=r[1], gate=r[2], direction=r[3], zone=r[4])
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
        """Commit a batch in one transaction; returns how many check-ins were new."""
        async with self.transaction("store check-ins"):
            before = self._db.total_changes
            await self._insert_checkins(batch.arrivals)
            inserted = self._db.total_changes - before
            await self._write_marks(batch.marks)
            await self._write_states(batch.states)
            await self._write_refusals(batch.refusals)
        return inserted

    async def _insert_checkins(self, arrivals: list[Arrival]) -> None:
        await self._db.executemany(
            "INSERT OR IGNORE INTO checkins (device_id, stream, seq, site_id, scanned_at, "
            "received_at, direction, kind, accepted, reason, subject, sealed, initials, "
            "warnings, clock_synced, credential_id, scanned_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_checkin_row(a) for a in arrivals],
        )

    async def _write_marks(self, marks: dict[StreamKey, int]) -> None:
        now = utc_now()
        await self._db.executemany(
            "INSERT INTO streams (device_id, stream, acked_upto, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id, stream) DO UPDATE SET acked_upto=excluded.acked_upto, "
            "updated_at=excluded.updated_at",
            [(d, s, upto, now) for (d, s), upto in marks.items()],
        )

    async def _write_states(self, states: list[StateChange]) -> None:
        await self._db.executemany(
            "UPDATE devices SET status=?, status_at=?, last_seen=?, "
            "firmware=CASE WHEN ?='' THEN firmware ELSE ? END, "
            "config_version=?, config_error=?, "
            "health=coalesce(?, health), health_at=CASE WHEN ? IS NULL THEN health_at ELSE ? END "
            "WHERE device_id=?",
            [_state_row(s) for s in states],
        )

    async def add_desired_config(self, device_id: str, settings: DeviceSettings) -> int:
        """Store a new desired config for a device; returns its version (1, 2, ...)."""
        async with self.transaction(f"store desired config for {device_id}"):
            async with self._db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM desired_configs WHERE device_id=?",
                (device_id,),
            ) as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 1
            await self._db.execute(
                "INSERT INTO desired_configs VALUES (?, ?, ?, ?)",
                (device_id, version, settings.model_dump_json(), utc_now()),
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

    async def _write_refusals(self, refusals: list[Refusal]) -> None:
        await self._db.executemany(
            "INSERT INTO rejected_messages (received_at, topic, device_id, reason, detail, size) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.received_at, r.topic, r.device_id, r.reason, r.detail, r.size) for r in refusals],
        )

    async def _transaction(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        async with self.transaction("write"):
            await self._db.executemany(sql, rows)

    async def close(self) -> None:
        await self._db.close()


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


def _checkin_row(a: Arrival) -> tuple[object, ...]:
    r = a.record
    return (
        a.device_id,
        a.stream,
        r.seq,
        a.site_id,
        utc_iso(r.scanned_at),
        a.received_at,
        r.direction,
        r.kind,
        int(r.accepted),
        r.reason,
        r.subject,
        r.sealed,
        r.initials,
        json.dumps(r.warnings, ensure_ascii=False),
        int(r.clock_synced),
        r.credential_id,
        int(r.scanned_at.timestamp()),
    )


def utc_now() -> str:
    """Now, as stored in the database."""
    return utc_iso(datetime.now(UTC))
