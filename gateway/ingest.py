"""Ingest: validate device messages, commit them in batches, then ack.

Messages arrive on the event loop from the MQTT seam and wait in a queue. One
task takes everything waiting (up to ``max_batch`` messages), validates each,
writes all of it in one transaction, and only after the commit publishes one
cumulative ack per touched stream. It takes and validates the next batch while
the previous one commits on the database thread (one commit at a time). A bad
message is refused with a reason, logged once, counted and recorded; it never
stops the next good one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.errors import BadMessage, BadTopic
from broker.messages import CheckInBatch, decode_checkins, decode_state
from broker.topics import Channel, parse_topic
from gateway.config import DeviceEntry
from gateway.errors import StoreError
from gateway.store import (
    Arrival,
    Refusal,
    StateChange,
    StreamKey,
    TracingStore,
    WriteBatch,
)

logger = logging.getLogger(__name__)

AckSender = Callable[[str, str, int], None]  # (device_id, stream, upto)
# Provisioning adds and revokes devices in the database while the gateway runs.
DEVICE_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class Incoming:
    """A raw message as it came off the bus."""

    topic: str
    payload: bytes
    received_at: str


class Refused(Exception):
    """A message is refused; ``reason`` is its label in logs, counters and the database."""

    def __init__(self, reason: str, detail: str, device_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


class StreamMark:
    """Delivery state of one device outbox: contiguous mark plus stored seqs above it."""

    __slots__ = ("above", "upto")

    def __init__(self, upto: int = 0, above: set[int] | None = None) -> None:
        self.upto = upto
        self.above = above or set()

    def advanced(self, seqs: list[int]) -> StreamMark:
        """A new mark with ``seqs`` stored too; this one is unchanged until commit."""
        mark = StreamMark(self.upto, self.above | {s for s in seqs if s > self.upto})
        while mark.upto + 1 in mark.above:
            mark.upto += 1
            mark.above.discard(mark.upto)
        return mark


class _Prepared:
    """A validated batch: what to write, and the stream marks it advances to."""

    __slots__ = ("batch", "marks", "resent", "size")

    def __init__(self, size: int) -> None:
        self.size = size  # messages
        self.batch = WriteBatch()
        self.marks: dict[StreamKey, StreamMark] = {}
        self.resent = 0  # check-ins at or below the mark: already stored


class Ingestor:
    """Validates and stores device messages and acks what is committed."""

    def __init__(
        self,
        store: TracingStore,
        *,
        send_ack: AckSender,
        max_batch: int = 500,
        on_committed: Callable[[set[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._send_ack = send_ack
        self._on_committed = on_committed
        self._max_batch = max_batch
        # Filled by submit, emptied by run; a deque and an event cost far less per
        # message than an asyncio.Queue (no getter futures to wake per put).
        self._waiting: deque[Incoming] = deque()
        self._arrived = asyncio.Event()
        self._clock = _MillisecondClock()
        self._devices: dict[str, DeviceEntry] = {}
        self._devices_at = time.monotonic()
        self._marks: dict[StreamKey, StreamMark] = {}
        # Marks of the batch being committed (validation of the next one builds on them).
        self._pending: dict[StreamKey, StreamMark] = {}
        self.counts: Counter[str] = Counter()

    async def load(self) -> None:
        """Read known devices and stream marks from the store."""
        self._devices = await self._store.devices()
        marks = await self._store.stream_marks()
        self._marks = {key: StreamMark(upto, above) for key, (upto, above) in marks.items()}

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue a message from the bus (called on the event loop)."""
        self._waiting.append(Incoming(topic, payload, self._clock.now()))
        self._arrived.set()

    def backlog(self) -> int:
        return len(self._waiting)

    async def run(self) -> None:
        """Ingest forever, validating the next batch while the previous one commits.

        One commit at a time, in order. Batch N+1 is validated against the marks of
        batch N before N is committed; if N fails, N+1 is dropped unwritten (neither
        is acked, so the devices send both again).
        """
        committing: asyncio.Task[bool] | None = None
        try:
            while True:
                await self._arrived.wait()
                items = self._take()
                if not items:
                    continue
                if time.monotonic() - self._devices_at >= DEVICE_REFRESH_S:
                    self._devices, self._devices_at = await self._store.devices(), time.monotonic()
                prepared = self._prepare(items)
                if committing is not None:
                    # Shielded: a commit is never cancelled, its acks are owed once written.
                    committed = await asyncio.shield(committing)
                    committing = None
                    if not committed:
                        self._pending = {}
                        await asyncio.sleep(1.0)
                        continue
                self._pending = prepared.marks
                committing = asyncio.create_task(self._commit_logged(prepared))
        finally:
            if committing is not None:
                await asyncio.shield(committing)

    def _take(self) -> list[Incoming]:
        waiting = self._waiting
        items = [waiting.popleft() for _ in range(min(len(waiting), self._max_batch))]
        if not waiting:
            self._arrived.clear()
        return items

    async def _commit_logged(self, prepared: _Prepared) -> bool:
        try:
            await self._commit(prepared)
        except StoreError:
            # Nothing was acked, so the devices send it all again; keep serving.
            logger.exception("could not store %d messages; waiting for resends", prepared.size)
            return False
        return True

    async def ingest(self, items: list[Incoming]) -> None:
        """Validate, commit and ack one batch of messages."""
        await self._commit(self._prepare(items))

    def _prepare(self, items: list[Incoming]) -> _Prepared:
        """Validate ``items`` into one write batch (on the loop, no database access)."""
        prepared = _Prepared(len(items))
        for item in items:
            try:
                self._accept(item, prepared)
            except Refused as exc:
                self._refuse(item, exc, prepared.batch)
        prepared.batch.marks = {key: mark.upto for key, mark in prepared.marks.items()}
        return prepared

    async def _commit(self, prepared: _Prepared) -> None:
        """Write a prepared batch; only after its COMMIT, advance the marks and ack."""
        batch = prepared.batch
        inserted = await self._store.write(batch)
        self._marks.update(prepared.marks)
        self.counts["stored"] += inserted
        self.counts["duplicates"] += prepared.resent + len(batch.arrivals) - inserted
        for (device_id, stream), mark in prepared.marks.items():
            self._send_ack(device_id, stream, mark.upto)
        if self._on_committed is not None and batch.arrivals:
            self._on_committed({a.record.subject for a in batch.arrivals if a.record.subject})

    def _accept(self, item: Incoming, prepared: _Prepared) -> None:
        try:
            where = parse_topic(item.topic)
        except BadTopic as exc:
            raise Refused("bad_topic", str(exc)) from None
        device = self._devices.get(where.device_id)
        if device is None:
            raise Refused("unknown_device", f"device {where.device_id!r} is not registered")
        if device.revoked_at is not None:
            raise Refused("revoked_device", f"device {device.device_id} revoked", device.device_id)
        if where.channel is Channel.STATE:
            self._accept_state(item, where.device_id, prepared.batch)
        elif where.channel is Channel.CHECKIN:
            self._accept_checkins(item, device, prepared)
        else:
            raise Refused(
                "bad_topic", f"devices do not publish on {where.channel}", device.device_id
            )

    def _accept_state(self, item: Incoming, device_id: str, batch: WriteBatch) -> None:
        if not item.payload:
            return  # a cleared retained state: nothing to record
        try:
            state = decode_state(item.payload)
        except BadMessage as exc:
            raise Refused(exc.reason, str(exc), device_id) from None
        batch.states.append(StateChange(device_id, state, item.received_at))

    def _accept_checkins(self, item: Incoming, device: DeviceEntry, prepared: _Prepared) -> None:
        try:
            message = decode_checkins(item.payload)
        except BadMessage as exc:
            raise Refused(exc.reason, str(exc), device.device_id) from None
        if message.device_id != device.device_id:
            raise Refused(
                "device_mismatch",
                f"payload says device {message.device_id!r} on the topic of {device.device_id!r}",
                device.device_id,
            )
        self._add_arrivals(message, device, item.received_at, prepared)

    def _add_arrivals(
        self,
        message: CheckInBatch,
        device: DeviceEntry,
        received_at: str,
        prepared: _Prepared,
    ) -> None:
        key = (message.device_id, message.stream)
        marks = prepared.marks
        # The batch being committed counts as stored: this one is written only if it is.
        mark = marks.get(key) or self._pending.get(key) or self._marks.get(key) or StreamMark()
        marks[key] = mark.advanced([r.seq for r in message.records])
        arrivals = prepared.batch.arrivals
        for record in message.records:
            if record.seq > mark.upto:
                arrivals.append(
                    Arrival(device.device_id, device.site_id, message.stream, record, received_at)
                )
            else:
                prepared.resent += 1

    def _refuse(self, item: Incoming, exc: Refused, batch: WriteBatch) -> None:
        self.counts[f"refused_{exc.reason}"] += 1
        logger.warning("refused message on %s: %s: %s", item.topic[:200], exc.reason, exc.detail)
        batch.refusals.append(
            Refusal(
                item.received_at,
                item.topic[:200],
                exc.device_id,
                exc.reason,
                exc.detail[:500],
                len(item.payload),
            )
        )


class _MillisecondClock:
    """``utc_now()`` text, formatted once per millisecond however many messages arrive in it."""

    __slots__ = ("_ms", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms = ms
            self._text = utc_now_ms(ms)
        return self._text


def utc_now_ms(ms: int) -> str:
    """Milliseconds since the epoch as stored in the database (the format of ``utc_now``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
