"""Keeps presence intervals current: rebuilds the stays of subjects with new check-ins.

Ingest marks the subjects of every committed batch; every ``interval_s`` the
keeper rebuilds their stays from all their check-ins on the gateway's single
writer connection. Rebuilding a subject whole (rather than appending) is what
makes late check-ins from a device that was offline land in the right place.

Ingest comes first: the keeper holds the writer for about ``CHUNK_TARGET_S`` at
a time (the chunk size follows the measured time per subject), runs each chunk
as one call on the writer's thread, and queues behind any commit that is
waiting before it takes the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from datetime import tzinfo

import aiosqlite

from gateway.errors import StoreError
from gateway.stays import rebuild_stays_sync
from gateway.store import SQLiteStore

logger = logging.getLogger(__name__)

# Writer time per chunk. A commit that arrives during a chunk waits at most this
# long (plus scheduling); 500 subjects at once held the writer 30-220 ms in
# tests/bench/ingest.py and put those waits straight into scan-to-commit latency.
CHUNK_TARGET_S = 0.02
FIRST_CHUNK = 100
MIN_CHUNK = 10
MAX_CHUNK = 2000


class StayKeeper:
    """Collects subjects to rebuild and rebuilds them in short chunks."""

    def __init__(
        self,
        store: SQLiteStore,
        *,
        tz: tzinfo,
        interval_s: float = 2.0,
        first_chunk: int = FIRST_CHUNK,
    ) -> None:
        self._store = store
        self._tz = tz
        self._interval_s = interval_s
        self._dirty: set[str] = set()
        self._chunk = max(1, first_chunk)  # then sized by time: see next_chunk
        self.rebuilt = 0

    def mark(self, subjects: set[str]) -> None:
        """These subjects have new check-ins (called on the event loop after a commit)."""
        self._dirty |= subjects

    async def flush(self) -> int:
        """Rebuild every marked subject now; returns how many subjects were rebuilt."""
        subjects, self._dirty = sorted(self._dirty), set()
        start = 0
        while start < len(subjects):
            chunk = subjects[start : start + self._chunk]
            try:
                await self._rebuild(chunk)
            except (aiosqlite.Error, StoreError):
                self._dirty.update(subjects[start:])  # next round; the check-ins are safe
                raise
            start += len(chunk)
            self.rebuilt += len(chunk)
        return len(subjects)

    async def _rebuild(self, chunk: list[str]) -> None:
        rebuild = functools.partial(_timed_rebuild, subjects=chunk, tz=self._tz)
        seconds = await self._store.run_alone(rebuild)
        self._chunk = next_chunk(len(chunk), seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every interval, and once more when ``stop`` is set.

        Stopped by the event, never cancelled: a cancel inside a rebuild would leave
        its transaction open on the shared writer connection.
        """
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
            try:
                await self.flush()
            except Exception:  # a long-running task: log, keep the marks, go on
                logger.exception("rebuilding stays failed; will retry")


def next_chunk(size: int, seconds: float) -> int:
    """The chunk size that should take ``CHUNK_TARGET_S``, from ``size`` taking ``seconds``."""
    if seconds <= 0:
        return min(MAX_CHUNK, size * 2)
    wanted = int(size * CHUNK_TARGET_S / seconds)
    # At most double at a time: one fast chunk (few check-ins each) is no promise.
    return max(MIN_CHUNK, min(MAX_CHUNK, size * 2, wanted))


def _timed_rebuild(conn: sqlite3.Connection, *, subjects: list[str], tz: tzinfo) -> float:
    """Rebuild on the writer's thread; returns the seconds it took there."""
    started = time.perf_counter()
    rebuild_stays_sync(conn, subjects, tz=tz)
    return time.perf_counter() - started
