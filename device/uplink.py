"""Delivers the outbox to the gateway and deletes what the gateway acks.

Runs on the event loop. The gateway acks cumulatively ("everything of this
stream up to N is committed"). After a reconnect everything unacked is sent
again: the broker may have lost it. After ``ack_timeout_s`` without progress
only the oldest unacked message is sent again, and the next timeout doubles:
a gateway that is merely busy (catching up with many devices at once) then
gets one extra message from each device instead of its whole outbox again.
While such a resend is answered, each ack that advances sends the next oldest
unacked message, so a gap (a gateway killed after taking messages it never
stored) refills at the speed of the acks. The gateway stores each
(device, stream, seq) once, so resending is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from broker.client import BusClient, PublishRefused
from broker.errors import BadMessage, PayloadTooLarge
from broker.messages import MAX_PAYLOAD_BYTES, CheckInBatch, decode_ack
from broker.topics import Channel, device_topic
from device.outbox import Outbox

logger = logging.getLogger(__name__)

# The resend timeout doubles per unanswered resend, up to this many times ack_timeout_s.
MAX_BACKOFF = 16


class Uplink:
    """Sends pending check-ins in batches of at most ``max_batch`` and applies acks."""

    def __init__(
        self,
        *,
        device_id: str,
        outbox: Outbox,
        client: BusClient,
        max_batch: int,
        ack_timeout_s: float,
        tick_s: float = 0.5,
    ) -> None:
        self.device_id = device_id
        self._outbox = outbox
        self._client = client
        self._topic = device_topic(device_id, Channel.CHECKIN)
        self._max_batch = max_batch
        self._ack_timeout_s = ack_timeout_s
        self._timeout_s = ack_timeout_s  # grows while resends go unanswered
        self._recovering = False  # a resend after a timeout is not answered yet
        self._tick_s = tick_s
        self._wake = asyncio.Event()
        self.sent_upto = 0
        self.acked_upto = 0
        self._last_progress = time.monotonic()
        # A message is this head + the records' JSON as the outbox holds it + "]}":
        # byte for byte what encode(CheckInBatch(...)) makes, without re-parsing records.
        empty = CheckInBatch.model_construct(device_id=device_id, stream=outbox.stream, records=[])
        self._head = empty.model_dump_json(exclude_none=True).encode().removesuffix(b"]}")

    def configure(self, *, max_batch: int, ack_timeout_s: float) -> None:
        """Take new batching and resend settings from a pushed config."""
        self._max_batch = max_batch
        self._ack_timeout_s = self._timeout_s = ack_timeout_s

    def wake(self) -> None:
        """Something new is in the outbox, or the link changed: look again soon."""
        self._wake.set()

    def on_connected(self) -> None:
        """After any (re)connect resend everything unacked: the broker may have lost it."""
        self.sent_upto = self.acked_upto
        self._last_progress = time.monotonic()
        self._timeout_s = self._ack_timeout_s
        self._recovering = False
        self.wake()

    def on_ack_message(self, payload: bytes) -> None:
        """Apply an ack from the gateway; a malformed or foreign ack changes nothing."""
        try:
            ack = decode_ack(payload)
        except BadMessage as exc:
            logger.error("ignoring bad ack: %s", exc)
            return
        if ack.stream != self._outbox.stream:
            logger.warning(
                "ignoring ack for stream %s (ours is %s)", ack.stream, self._outbox.stream
            )
            return
        if ack.upto > self.acked_upto:
            deleted = self._outbox.ack(ack.upto)
            logger.debug("ack upto %d: %d check-ins delivered", ack.upto, deleted)
            self.acked_upto = ack.upto
            self.sent_upto = max(self.sent_upto, ack.upto)
            self._last_progress = time.monotonic()
            self._timeout_s = self._ack_timeout_s
            if self._recovering:
                self._recovering = self.sent_upto > self.acked_upto
                if self._recovering and self._client.connected:
                    self._resend_oldest()
        self.wake()

    async def run(self) -> None:
        """Send whenever woken or every tick, until cancelled."""
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that
            # arrives as the event fires, and the device would then hang at shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._client.connected:
                self._resend_if_stalled()
                self.send_pending()

    def _resend_if_stalled(self) -> None:
        now = time.monotonic()
        if self.sent_upto > self.acked_upto and now - self._last_progress > self._timeout_s:
            logger.warning(
                "no ack for %.0f s; resending from seq %d (one message; next try in %.0f s)",
                now - self._last_progress,
                self.acked_upto + 1,
                min(2 * self._timeout_s, MAX_BACKOFF * self._ack_timeout_s),
            )
            self._last_progress = now
            self._timeout_s = min(2 * self._timeout_s, MAX_BACKOFF * self._ack_timeout_s)
            self._recovering = True
            self._resend_oldest()

    def _resend_oldest(self) -> None:
        """Send the oldest unacked message again (sent_upto stays where it is)."""
        records = self._outbox.pending_json(after=self.acked_upto, limit=self._max_batch)
        if records:
            try:
                self._publish(records)
            except PublishRefused as exc:
                logger.warning("cannot resend check-ins now: %s", exc)

    def send_pending(self) -> int:
        """Publish everything not yet sent on this connection; returns how many went."""
        sent = 0
        while True:
            records = self._outbox.pending_json(after=self.sent_upto, limit=self._max_batch)
            if not records:
                return sent
            try:
                count = self._publish(records)
            except PublishRefused as exc:
                logger.warning("cannot send check-ins now: %s", exc)
                return sent
            if self.sent_upto == self.acked_upto:
                self._last_progress = time.monotonic()
            self.sent_upto = records[count - 1][0]
            sent += count

    def _publish(self, records: list[tuple[int, str]]) -> int:
        """Publish as many of ``records`` as fit one message; returns how many."""
        while True:
            payload = b"".join((self._head, ",".join(text for _, text in records).encode(), b"]}"))
            if len(payload) > MAX_PAYLOAD_BYTES:
                if len(records) == 1:
                    raise PayloadTooLarge(
                        f"check-in {records[0][0]}: {len(payload)} bytes is over the "
                        f"{MAX_PAYLOAD_BYTES} byte cap"
                    )
                records = records[: len(records) // 2]
                continue
            self._client.publish(self._topic, payload, qos=1)
            return len(records)

    def pending_count(self) -> int:
        return self._outbox.depth()
