"""Ingest logic: cumulative acks only over what is committed, without gaps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.messages import CheckIn, CheckInBatch, encode
from broker.topics import Channel, device_topic
from gateway.config import DeviceEntry
from gateway.ingest import Incoming, Ingestor, StreamMark
from gateway.store import SQLiteStore

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
