"""Retention: check-ins, stays and refused messages are kept for a fixed period, then purged.

Personal data may be kept only as long as tracing needs it (Decree
13/2023/ND-CP); the period is ``GatewayConfig.retention_days``. The audit log
is kept: it is the record of who looked at the data, not the data itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from broker.messages import utc_iso
from gateway.audit import Action, AuditError, connect, insert, transaction
from gateway.errors import StoreError

logger = logging.getLogger(__name__)

DAY_S = 24 * 3600

# Check-ins stored before migration 0003 have scanned_s 0: their ISO time decides instead.
_DELETE_CHECKINS = (
    "DELETE FROM checkins WHERE CASE WHEN scanned_s > 0 THEN scanned_s < ? ELSE scanned_at < ? END"
)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """How many rows one purge deleted."""

    checkins: int
    stays: int
    refused_messages: int


async def purge(
    db: aiosqlite.Connection, *, older_than_s: int, now_s: int, actor: str = "system"
) -> PurgeResult:
    """Delete everything older than ``older_than_s`` before ``now_s`` in one audited transaction.

    Check-ins go by scan time, stays by their end, refused messages by arrival.
    """
    cutoff_s = now_s - older_than_s
    cutoff = utc_iso(datetime.fromtimestamp(cutoff_s, UTC))
    try:
        async with transaction(db):
            result = PurgeResult(
                checkins=await _delete(db, _DELETE_CHECKINS, (cutoff_s, cutoff)),
                stays=await _delete(db, "DELETE FROM stays WHERE end_s < ?", (cutoff_s,)),
                refused_messages=await _delete(
                    db, "DELETE FROM rejected_messages WHERE received_at < ?", (cutoff,)
                ),
            )
            await insert(
                db,
                actor=actor,
                action=Action.PURGE,
                target="database",
                purpose=f"retention period of {_period(older_than_s)}",
                detail=_detail(result, cutoff),
            )
    except aiosqlite.Error as exc:
        raise StoreError(f"retention purge failed: {exc}") from exc
    logger.info("purged data older than %s: %s", cutoff, _detail(result, cutoff))
    return result


async def _delete(db: aiosqlite.Connection, sql: str, params: tuple[object, ...]) -> int:
    cursor = await db.execute(sql, params)
    try:
        return max(cursor.rowcount, 0)
    finally:
        await cursor.close()


def _period(seconds: int) -> str:
    if seconds % DAY_S == 0:
        return f"{seconds // DAY_S} days"
    return f"{seconds} s"


def _detail(result: PurgeResult, cutoff: str) -> str:
    return (
        f"before {cutoff}: {result.checkins} check-ins, {result.stays} stays, "
        f"{result.refused_messages} refused messages"
    )


async def run_retention(
    database: Path,
    *,
    days: int,
    interval_s: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Purge now and then every ``interval_s`` until cancelled; for the gateway service.

    It opens a connection of its own (see :func:`gateway.audit.connect`), so
    its transaction never interleaves with the ingest writer's. A failed
    round is logged and retried at the next interval.
    """
    db = await connect(database)
    try:
        while True:
            try:
                await purge(db, older_than_s=days * DAY_S, now_s=int(clock()))
            except (StoreError, AuditError) as exc:
                logger.error("retention purge failed, next try in %.0f s: %s", interval_s, exc)
            await asyncio.sleep(interval_s)
    finally:
        await db.close()
