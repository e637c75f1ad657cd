"""Delivers the outbox to the gateway and deletes what the gateway acks.

Runs on the event loop. The gateway acks cumulatively ("everything of this
stream up to N is committed"); anything unacked is sent again after a
reconnect or after ``ack_timeout_s`` without progress. The gateway stores each
(device, stream, seq) once, so resending is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from broker.client import BusClient, PublishRefused
from broker.errors import BadMessage, PayloadTooLarge
from broker.messages import CheckIn, CheckInBatch, decode_ack, encode
from broker.topics import Channel, device_topic
from device.outbox import Outbox

logger = logging.getLogger(__name__)


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
        self._tick_s = tick_s
        self._wake = asyncio.Event()
        self.sent_upto = 0
        self.acked_upto = 0
        self._last_progress = time.monotonic()

    def configure(self, *, max_batch: int, ack_timeout_s: float) -> None:
        """Take new batching and resend settings from a pushed config."""
        self._max_batch = max_batch
        self._ack_timeout_s = ack_timeout_s

    def wake(self) -> None:
        """Something new is in the outbox, or the link changed: look again soon."""
        self._wake.set()

    def on_connected(self) -> None:
        """After any (re)connect resend everything unacked: the broker may have lost it."""
        self.sent_upto = self.acked_upto
        self._last_progress = time.monotonic()
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
        stalled = time.monotonic() - self._last_progress > self._ack_timeout_s
        if self.sent_upto > self.acked_upto and stalled:
            logger.warning(
                "no ack for %.0f s; resending from seq %d", self._ack_timeout_s, self.acked_upto + 1
            )
            self.sent_upto = self.acked_upto
            self._last_progress = time.monotonic()

    def send_pending(self) -> int:
        """Publish everything not yet sent on this connection; returns how many went."""
        sent = 0
        while True:
            records = self._outbox.pending(after=self.sent_upto, limit=self._max_batch)
            if not records:
                return sent
            try:
                count = self._publish(records)
            except PublishRefused as exc:
                logger.warning("cannot send check-ins now: %s", exc)
                return sent
            if self.sent_upto == self.acked_upto:
                self._last_progress = time.monotonic()
            self.sent_upto = records[count - 1].seq
            sent += count

    def _publish(self, records: list[CheckIn]) -> int:
        """Publish as many of ``records`` as fit one message; returns how many."""
        while True:
            batch = CheckInBatch(
                device_id=self.device_id, stream=self._outbox.stream, records=records
            )
            try:
                payload = encode(batch)
            except PayloadTooLarge:
                if len(records) == 1:
                    raise
                records = records[: len(records) // 2]
                continue
            self._client.publish(self._topic, payload, qos=1)
            return len(records)

    def pending_count(self) -> int:
        return self._outbox.depth()
