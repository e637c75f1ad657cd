"""Audit log entries, and retention: exactly what is older than the period goes, audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import pytest

from broker.messages import utc_iso
from gateway.__main__ import main
from gateway.audit import Action, AuditError, connect, record
from gateway.errors import StoreError
from gateway.retention import DAY_S, PurgeResult, purge, run_retention
from gateway.store import SQLiteStore

NOW = int(datetime(2021, 8, 30, 12, 0, tzinfo=UTC).timestamp())


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "tracing.db"
    store = await SQLiteStore.open(path)
    await store.close()
    return path


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await connect(db_path)
    yield conn
    await conn.close()


async def audit_rows(db: aiosqlite.Connection) -> list[tuple[str, str, str, str, str]]:
    async with db.execute(
        "SELECT actor, action, target, purpose, detail FROM audit_log ORDER BY id"
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def count(db: aiosqlite.Connection, table: str) -> int:
    async with db.execute(f"SELECT count(*) FROM {table}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_record_appends_one_entry_with_a_time(db: aiosqlite.Connection) -> None:
    await record(db, actor="CDC HCM", action="trace", target="ab" * 16, purpose="ca F0 số 12")
    assert await audit_rows(db) == [("CDC HCM", "trace", "ab" * 16, "ca F0 số 12", "")]
    async with db.execute("SELECT at FROM audit_log") as cur:
        row = await cur.fetchone()
    assert row is not None and row[0].endswith("+00:00")
    assert not db.in_transaction


@pytest.mark.parametrize("actor,purpose", [("", "why"), ("who", "  ")])
async def test_record_refuses_an_entry_without_actor_or_purpose(
    db: aiosqlite.Connection, actor: str, purpose: str
) -> None:
    with pytest.raises(AuditError):
        await record(db, actor=actor, action=Action.EXPORT, target="site", purpose=purpose)
    assert await audit_rows(db) == []
    assert not db.in_transaction, "a refused entry leaves no transaction open"


async def test_record_refuses_an_unknown_action(db: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError):
        await record(db, actor="a", action="browse", target="t", purpose="p")
    assert not db.in_transaction


async def test_connect_does_not_create_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await connect(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# --- retention ----------------------------------------------------------------------------


async def insert_data(db: aiosqlite.Connection, times: list[int]) -> None:
    """A check-in, a stay ending then and a refused message received then, per time."""
    await db.execute("INSERT INTO devices (device_id, site_id) VALUES ('gate-1', 'site')")
    for seq, t in enumerate(times, start=1):
        iso = utc_iso(datetime.fromtimestamp(t, UTC))
        await db.execute(
            "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
            "direction, kind, accepted, reason, subject, scanned_s) "
            "VALUES ('gate-1', 's', ?, 'site', ?, ?, 'in', 'cccd', 1, 'valid', ?, ?)",
            (seq, iso, iso, f"{seq:032x}", t),
        )
        await db.execute(
            "INSERT INTO stays (subject, site_id, start_s, end_s, start_rule, end_rule) "
            "VALUES (?, 'site', ?, ?, 'entry', 'exit')",
            (f"{seq:032x}", t - 3600, t),
        )
        await db.execute(
            "INSERT INTO rejected_messages (received_at, topic, device_id, reason, detail, size) "
            "VALUES (?, 't', 'gate-1', 'schema', '', 1)",
            (iso,),
        )


async def remaining(db: aiosqlite.Connection) -> list[list[int]]:
    out = []
    for sql in (
        "SELECT scanned_s FROM checkins ORDER BY 1",
        "SELECT end_s FROM stays ORDER BY 1",
        "SELECT received_at FROM rejected_messages ORDER BY 1",
    ):
        async with db.execute(sql) as cur:
            values = [r[0] for r in await cur.fetchall()]
        out.append(
            [
                v if isinstance(v, int) else int(datetime.fromisoformat(v).timestamp())
                for v in values
            ]
        )
    return out


async def test_purge_deletes_exactly_what_is_older_and_audits_it(db: aiosqlite.Connection) -> None:
    cutoff = NOW - 30 * DAY_S
    times = [cutoff - 31 * DAY_S, cutoff - 1, cutoff, cutoff + 1, NOW - 60]
    await insert_data(db, times)
    result = await purge(db, older_than_s=30 * DAY_S, now_s=NOW)
    assert result == PurgeResult(checkins=2, stays=2, refused_messages=2)
    assert await remaining(db) == [times[2:]] * 3
    [entry] = await audit_rows(db)
    assert entry[:4] == ("system", "purge", "database", "retention period of 30 days")
    assert "2 check-ins, 2 stays, 2 refused messages" in entry[4]
    assert not db.in_transaction

    again = await purge(db, older_than_s=30 * DAY_S, now_s=NOW)
    assert again == PurgeResult(0, 0, 0)
    assert len(await audit_rows(db)) == 2, "every purge is audited, even an empty one"


async def test_purge_judges_pre_tracing_check_ins_by_their_iso_time(
    db: aiosqlite.Connection,
) -> None:
    await insert_data(db, [NOW - 40 * DAY_S, NOW - DAY_S])
    await db.execute("UPDATE checkins SET scanned_s = 0")  # as migration 0003 left them
    result = await purge(db, older_than_s=30 * DAY_S, now_s=NOW)
    assert result.checkins == 1
    async with db.execute("SELECT scanned_at FROM checkins") as cur:
        assert [r[0] for r in await cur.fetchall()] == [
            utc_iso(datetime.fromtimestamp(NOW - DAY_S, UTC))
        ]


async def test_a_failed_purge_deletes_nothing(db: aiosqlite.Connection) -> None:
    await insert_data(db, [NOW - 40 * DAY_S])
    with pytest.raises(AuditError):
        await purge(db, older_than_s=30 * DAY_S, now_s=NOW, actor="")
    assert await remaining(db) == [[NOW - 40 * DAY_S]] * 3
    assert not db.in_transaction


async def test_run_retention_purges_now_and_on_every_interval(
    db: aiosqlite.Connection, db_path: Path
) -> None:
    await insert_data(db, [NOW - 40 * DAY_S, NOW])
    clock = [float(NOW)]
    task = asyncio.create_task(
        run_retention(db_path, days=30, interval_s=0.05, clock=lambda: clock[0])
    )
    try:
        for _ in range(200):
            if len(await audit_rows(db)) >= 2:
                break
            await asyncio.sleep(0.02)
        assert await remaining(db) == [[NOW]] * 3
        clock[0] = NOW + 31 * DAY_S
        for _ in range(200):
            if await count(db, "checkins") == 0:
                break
            await asyncio.sleep(0.02)
        assert await remaining(db) == [[], [], []]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_purge_command_uses_the_configured_retention(tmp_path: Path) -> None:
    db_path = tmp_path / "tracing.db"
    config = tmp_path / "gateway.json"
    config.write_text(
        json.dumps({"site_id": "site", "broker": {}, "database": db_path.name, "retention_days": 2})
    )
    now = int(datetime.now(UTC).timestamp())

    async def setup() -> None:
        await (await SQLiteStore.open(db_path)).close()
        conn = await connect(db_path)
        await insert_data(conn, [now - 3 * DAY_S, now - 36 * 3600, now - 3600])
        await conn.close()

    async def check() -> tuple[list[list[int]], list[tuple[str, str, str, str, str]]]:
        conn = await connect(db_path)
        try:
            return await remaining(conn), await audit_rows(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    assert main(["purge", "--config", str(config)]) == 0
    left, entries = asyncio.run(check())
    assert left == [[now - 36 * 3600, now - 3600]] * 3
    assert [e[:4] for e in entries] == [
        ("system", "purge", "database", "retention period of 2 days")
    ]
    assert main(["purge", "--config", str(config), "--days", "1"]) == 0
    left, entries = asyncio.run(check())
    assert left == [[now - 3600]] * 3
    assert len(entries) == 2
