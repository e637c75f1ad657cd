"""Ingest: validate device messages, commit them in batches, then ack.

Messages arrive on the event loop from the MQTT seam and wait in a queue. One
task takes everything waiting (up to ``max_batch`` messages), validates each,
writes all of it in one transaction, and only after the commit publishes one
cumulative ack per touched stream. A bad message is refused with a reason,
logged once, counted and recorded; it never stops the next good one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

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
    utc_now,
)

logger = logging.getLogger(__name__)

AckSender = Callable[[str, str, int], None]  # (device_id, stream, upto)


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
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._devices: dict[str, DeviceEntry] = {}
        self._marks: dict[StreamKey, StreamMark] = {}
        self.counts: Counter[str] = Counter()
        self._resent = 0

    async def load(self) -> None:
        """Read known devices and stream marks from the store."""
        self._devices = await self._store.devices()
        marks = await self._store.stream_marks()
        self._marks = {key: StreamMark(upto, above) for key, (upto, above) in marks.items()}

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue a message from the bus (called on the event loop)."""
        self._queue.put_nowait(Incoming(topic, payload, utc_now()))

    def backlog(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Ingest forever: one transaction for everything that is waiting."""
        while True:
            items = [await self._queue.get()]
            while len(items) < self._max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self.ingest(items)
            except StoreError:
                # Nothing was acked, so the devices send it all again; keep serving.
                logger.exception("could not store %d messages; waiting for resends", len(items))
                await asyncio.sleep(1.0)

    async def ingest(self, items: list[Incoming]) -> None:
        """Validate, commit and ack one batch of messages."""
        batch = WriteBatch()
        new_marks: dict[StreamKey, StreamMark] = {}
        self._resent = 0
        for item in items:
            try:
                self._accept(item, batch, new_marks)
            except Refused as exc:
                self._refuse(item, exc, batch)
        batch.marks = {key: mark.upto for key, mark in new_marks.items()}
        inserted = await self._store.write(batch)
        self._marks.update(new_marks)
        self.counts["stored"] += inserted
        self.counts["duplicates"] += self._resent + len(batch.arrivals) - inserted
        for (device_id, stream), mark in new_marks.items():
            self._send_ack(device_id, stream, mark.upto)
        if self._on_committed is not None and batch.arrivals:
            self._on_committed({a.record.subject for a in batch.arrivals if a.record.subject})

    def _accept(
        self, item: Incoming, batch: WriteBatch, marks: dict[StreamKey, StreamMark]
    ) -> None:
        try:
            where = parse_topic(item.topic)
        except BadTopic as exc:
            raise Refused("bad_topic", str(exc)) from None
        device = self._devices.get(where.device_id)
        if device is None:
            raise Refused("unknown_device", f"device {where.device_id!r} is not registered")
        if where.channel is Channel.STATE:
            self._accept_state(item, where.device_id, batch)
        elif where.channel is Channel.CHECKIN:
            self._accept_checkins(item, device, batch, marks)
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

    def _accept_checkins(
        self,
        item: Incoming,
        device: DeviceEntry,
        batch: WriteBatch,
        marks: dict[StreamKey, StreamMark],
    ) -> None:
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
        self._add_arrivals(message, device, item.received_at, batch, marks)

    def _add_arrivals(
        self,
        message: CheckInBatch,
        device: DeviceEntry,
        received_at: str,
        batch: WriteBatch,
        marks: dict[StreamKey, StreamMark],
    ) -> None:
        key = (message.device_id, message.stream)
        mark = marks.get(key) or self._marks.get(key) or StreamMark()
        marks[key] = mark.advanced([r.seq for r in message.records])
        for record in message.records:
            if record.seq > mark.upto:
                batch.arrivals.append(
                    Arrival(device.device_id, device.site_id, message.stream, record, received_at)
                )
            else:
                self._resent += 1

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
