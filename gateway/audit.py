"""The audit log: who looked at whose movements, when, and why (Decree 13/2023/ND-CP).

Every trace, venue query, export, decryption and purge leaves one row in
``audit_log``. Tools write it before they show anything, so a query whose
audit entry cannot be written discloses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import aiosqlite

from broker.messages import utc_iso
from gateway.errors import GatewayError, StoreError
from gateway.migrations import migrate

logger = logging.getLogger(__name__)


class Action(StrEnum):
    """What was done with the tracing data."""

    TRACE = "trace"
    VENUE = "venue"
    EXPORT = "export"
    PURGE = "purge"
    DECRYPT = "decrypt"


class AuditError(GatewayError):
    """An audit entry is incomplete (no actor or purpose) or cannot be written."""


async def record(
    db: aiosqlite.Connection,
    *,
    actor: str,
    action: Action | str,
    target: str,
    purpose: str,
    detail: str = "",
) -> None:
    """Append one entry to the audit log in a transaction of its own."""
    try:
        async with transaction(db):
            await insert(
                db, actor=actor, action=action, target=target, purpose=purpose, detail=detail
            )
    except aiosqlite.Error as exc:
        raise AuditError(f"cannot write the audit log: {exc}") from exc


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection; ROLLBACK on any error."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise


async def insert(
    db: aiosqlite.Connection,
    *,
    actor: str,
    action: Action | str,
    target: str,
    purpose: str,
    detail: str = "",
) -> None:
    """Insert an entry inside the caller's transaction (so it commits with the work it records)."""
    action = Action(action)
    if not actor.strip() or not purpose.strip():
        raise AuditError(f"{action}: an audit entry needs an actor and a purpose")
    await db.execute(
        "INSERT INTO audit_log (at, actor, action, target, purpose, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (utc_iso(datetime.now(UTC)), actor.strip(), action.value, target, purpose.strip(), detail),
    )
    logger.info("audit: %s %s on %s", actor.strip(), action.value, target)


async def connect(path: Path) -> aiosqlite.Connection:
    """A migrated connection of its own to the gateway database.

    Tools and the retention task must not share the ingest writer's
    connection: its transactions span awaits, and a second task's BEGIN on the
    same connection would fail or interleave. A separate connection waits for
    the writer's lock instead (busy_timeout).
    """
    if not path.is_file():
        # Connecting would create an empty database, and a trace on it finds nobody.
        raise StoreError(f"no tracing database at {path}")
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout=10000")
            await db.execute("PRAGMA foreign_keys=ON")
            await migrate(db)
        except BaseException:
            await db.close()
            raise
    except aiosqlite.Error as exc:
        raise StoreError(f"cannot open tracing database {path}: {exc}") from exc
    return db
