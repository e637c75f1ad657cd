"""Ingest logic: cumulative acks only over what is committed, without gaps."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.messages import CheckIn, CheckInBatch, decode_checkins, encode
from broker.topics import Channel, device_topic
from gateway.config import DeviceEntry
from gateway.errors import StoreError
from gateway.ingest import Incoming, Ingestor, StreamMark
from gateway.store import Arrival, SQLiteStore, WriteBatch

STREAM = "cd" * 16


def test_stream_mark_advances_only_over_contiguous_seqs() -> None:
    mark = StreamMark()
    assert mark.advanced([1, 2, 3]).upto == 3
    gap = mark.advanced([1, 2, 4, 5])
    assert (gap.upto, gap.above) == (2, {4, 5})
    filled = gap.advanced([3])
    assert (filled.upto, filled.above) == (5, set())
    assert mark.upto == 0, "a mark changes only when the new one is taken after commit"


def batch(device_id: str, seqs: list[int]) -> Incoming:
    records = [
        CheckIn(
            seq=s,
            scanned_at=datetime.now(UTC),
            direction="in",
            kind="unrecognized",
            accepted=False,
            reason="unrecognized",
        )
        for s in seqs
    ]
    message = CheckInBatch(device_id=device_id, stream=STREAM, records=records)
    return Incoming(device_topic(device_id, Channel.CHECKIN), encode(message), "2026-11-23T00:00Z")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = await SQLiteStore.open(tmp_path / "tracing.db")
    await s.register_devices([DeviceEntry(device_id="gate-1", site_id="site")])
    yield s
    await s.close()


async def test_acks_follow_commits_and_duplicates_are_stored_once(store: SQLiteStore) -> None:
    acks: list[tuple[str, str, int]] = []
    ingestor = Ingestor(store, send_ack=lambda d, s, u: acks.append((d, s, u)))
    await ingestor.load()
    await ingestor.ingest([batch("gate-1", [1, 2]), batch("gate-1", [4])])
    assert acks == [("gate-1", STREAM, 2)]
    await ingestor.ingest([batch("gate-1", [1, 2, 3])])  # a resend that fills the gap
    assert acks[-1] == ("gate-1", STREAM, 4)
    assert ingestor.counts["stored"] == 4
    assert ingestor.counts["duplicates"] == 2

    reloaded = Ingestor(store, send_ack=lambda d, s, u: acks.append((d, s, u)))
    await reloaded.load()
    await reloaded.ingest([batch("gate-1", [4])])
    assert acks[-1] == ("gate-1", STREAM, 4), "a restarted gateway acks from the database"
    assert reloaded.counts["stored"] == 0


async def test_a_failed_write_rolls_back_everything_and_the_store_goes_on(
    store: SQLiteStore,
) -> None:
    acks: list[tuple[str, str, int]] = []
    ingestor = Ingestor(store, send_ack=lambda d, s, u: acks.append((d, s, u)))
    await ingestor.load()
    good = decode_checkins(batch("gate-1", [1, 2]).payload)
    arrivals = [Arrival("gate-1", "site", STREAM, r, "2026-11-23T00:00Z") for r in good.records]
    # A device the database does not know breaks the foreign key after the good rows.
    stray = Arrival("gate-9", "site", STREAM, good.records[0], "2026-11-23T00:00Z")
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        await store.write(WriteBatch(arrivals=[*arrivals, stray], marks={("gate-1", STREAM): 2}))
    assert await store.stream_marks() == {}, "the mark of the failed batch is not stored"
    await ingestor.ingest([batch("gate-1", [1, 2])])
    assert acks == [("gate-1", STREAM, 2)]
    assert ingestor.counts["stored"] == 2, "the rolled-back rows were not kept"


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


async def _checkin_seqs(store: SQLiteStore) -> list[int]:
    async with store._db.execute("SELECT seq FROM checkins ORDER BY seq") as cur:
        return [int(row[0]) for row in await cur.fetchall()]


async def test_the_next_batch_is_validated_while_one_commits_and_acked_after_it(
    store: SQLiteStore,
) -> None:
    acks: list[tuple[str, str, int]] = []
    ingestor = Ingestor(store, send_ack=lambda d, s, u: acks.append((d, s, u)))
    await ingestor.load()
    task = asyncio.create_task(ingestor.run())
    try:
        first, second = batch("gate-1", [1, 2]), batch("gate-1", [3])
        ingestor.submit(first.topic, first.payload)
        await asyncio.sleep(0)  # run() takes the first batch and starts its commit
        ingestor.submit(second.topic, second.payload)
        await _until(lambda: len(acks) == 2, "both batches acked")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert acks == [("gate-1", STREAM, 2), ("gate-1", STREAM, 3)]
    assert await _checkin_seqs(store) == [1, 2, 3]


async def test_a_failed_commit_acks_nothing_and_drops_the_batch_validated_behind_it(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    acks: list[tuple[str, str, int]] = []
    ingestor = Ingestor(store, send_ack=lambda d, s, u: acks.append((d, s, u)))
    await ingestor.load()
    await store._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON checkins WHEN NEW.seq = 2 "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    task = asyncio.create_task(ingestor.run())
    try:
        first, second = batch("gate-1", [1, 2]), batch("gate-1", [3])
        ingestor.submit(first.topic, first.payload)
        await asyncio.sleep(0)
        # Validated against the marks of the first batch, so it must not be written alone.
        ingestor.submit(second.topic, second.payload)
        await _until(lambda: "could not store" in caplog.text, "the failure logged")
        assert acks == []
        assert await _checkin_seqs(store) == []
        assert await store.stream_marks() == {}
        await store._db.execute("DROP TRIGGER boom")
        resent = batch("gate-1", [1, 2, 3])  # the device resends all it has unacked
        ingestor.submit(resent.topic, resent.payload)
        await _until(lambda: bool(acks), "the resend acked")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert acks == [("gate-1", STREAM, 3)]
    assert await _checkin_seqs(store) == [1, 2, 3]
    assert ingestor.counts["stored"] == 3


def _rows_in_file_alone(db_file: Path, copy: Path) -> int:
    """Check-ins in the database file itself, without its write-ahead log."""
    shutil.copyfile(db_file, copy)
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM checkins").fetchone()[0])
        except sqlite3.OperationalError:  # not even the schema is in the file yet
            return 0


async def test_commits_reach_the_database_file_by_background_checkpoints(
    store: SQLiteStore, tmp_path: Path
) -> None:
    ingestor = Ingestor(store, send_ack=lambda *_: None)
    await ingestor.load()
    await ingestor.ingest([batch("gate-1", [1, 2, 3])])
    copy = tmp_path / "copy.db"
    for _ in range(100):
        if await asyncio.to_thread(_rows_in_file_alone, store.path, copy) == 3:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the committed rows never reached tracing.db")
    assert (tmp_path / "tracing.db-wal").exists(), "the writer keeps its WAL meanwhile"
