"""Keeps presence intervals current: rebuilds the stays of subjects with new check-ins.

Ingest marks the subjects of every committed batch; every ``interval_s`` the
keeper rebuilds their stays from all their check-ins on the gateway's single
writer connection. Rebuilding a subject whole (rather than appending) is what
makes late check-ins from a device that was offline land in the right place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import tzinfo

import aiosqlite

from gateway.errors import StoreError
from gateway.stays import rebuild_stays
from gateway.store import SQLiteStore

logger = logging.getLogger(__name__)

# Subjects rebuilt per transaction: ~30 ms of writer time (4,000 took 116-223 ms in
# tests/bench/ingest.py), so a rebuild never holds up ingest commits for long.
CHUNK = 500


class StayKeeper:
    """Collects subjects to rebuild and rebuilds them in batches."""

    def __init__(self, store: SQLiteStore, *, tz: tzinfo, interval_s: float = 2.0) -> None:
        self._store = store
        self._tz = tz
        self._interval_s = interval_s
        self._dirty: set[str] = set()
        self.rebuilt = 0

    def mark(self, subjects: set[str]) -> None:
        """These subjects have new check-ins (called on the event loop after a commit)."""
        self._dirty |= subjects

    async def flush(self) -> int:
        """Rebuild every marked subject now; returns how many subjects were rebuilt."""
        subjects, self._dirty = sorted(self._dirty), set()
        for start in range(0, len(subjects), CHUNK):
            chunk = subjects[start : start + CHUNK]
            try:
                # The writer is released between chunks so ingest commits in between.
                async with self._store.exclusive() as db:
                    await rebuild_stays(db, chunk, tz=self._tz)
            except (aiosqlite.Error, StoreError):
                self._dirty.update(subjects[start:])  # next round; the check-ins are safe
                raise
            self.rebuilt += len(chunk)
        return len(subjects)

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
