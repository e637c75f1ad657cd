"""The gateway's side of enrollment by QR: one-time tokens redeemed for a sealed bundle.

Provisioning stores a token (:func:`issue_token`) as its id, the device it is
for, its expiry and the device's bundle sealed with a key only the token gives
(see :mod:`broker.enrollment`). A device then asks on its request topic; the
:class:`Enroller` answers on the reply topic with the sealed bundle, marking
the token used in the same transaction, or with a refusal and its reason:
``token_unknown``, ``token_expired``, ``token_used``, ``device_mismatch``, or
the reason a payload was unreadable. Every refusal is logged and recorded in
``rejected_messages``. A token works once: the request that redeemed it may ask
again (its reply may have been lost) and gets the same sealed bundle; any other
request gets ``token_used``. Sealed bundles are wiped once their token expires.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.enrollment import (
    EnrollReply,
    EnrollRequest,
    RefusalReason,
    decode_request,
    encode_reply,
    parse_request_topic,
    refusal,
    reply_topic,
)
from broker.errors import BadMessage, BadTopic
from broker.messages import utc_iso
from gateway.store import Refusal, SQLiteStore, WriteBatch

logger = logging.getLogger(__name__)

# Requests waiting at most; past it a request is answered "busy" at once. The
# enrollment login is printed on every code, so a flood must not grow memory.
MAX_WAITING = 100

ReplySender = Callable[[str, bytes], None]  # (topic, payload)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as provisioning stores it (the token itself is never stored)."""

    token_id: str
    device_id: str
    expires_at: datetime
    sealed_bundle: str


async def issue_token(store: SQLiteStore, record: TokenRecord, *, now: datetime) -> None:
    """Store a new token for a device."""
    async with store.transaction(f"store an enrollment token for {record.device_id}") as db:
        await db.execute(
            "INSERT INTO enrollment_tokens (token_id, device_id, created_at, expires_at, bundle) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                record.token_id,
                record.device_id,
                utc_iso(now),
                utc_iso(record.expires_at),
                record.sealed_bundle,
            ),
        )
    logger.info(
        "enrollment token for %s stored, expires %s", record.device_id, utc_iso(record.expires_at)
    )


class _Refuse(Exception):
    def __init__(self, reason: RefusalReason, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class Enroller:
    """Answers enrollment requests, one transaction each, in arrival order."""

    def __init__(
        self,
        store: SQLiteStore,
        *,
        send_reply: ReplySender,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._send_reply = send_reply
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_WAITING)
        self.counts: Counter[str] = Counter()

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue a request from the bus (called on the event loop)."""
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.counts["busy"] += 1
            logger.warning("enrollment request on %s refused: busy", topic)
            self._reply_to(topic, refusal("busy"))

    async def run(self) -> None:
        """Answer requests until cancelled."""
        while True:
            topic, payload = await self._queue.get()
            try:
                await self.handle(topic, payload)
            except Exception:
                # One failed request (e.g. a locked database) must not stop enrollment.
                logger.exception("enrollment request on %s failed", topic)

    async def handle(self, topic: str, payload: bytes) -> EnrollReply | None:
        """Answer one request; returns the reply sent (None if the topic is unusable)."""
        try:
            request_id = parse_request_topic(topic)
        except BadTopic as exc:
            await self._record(topic, None, "bad_topic", str(exc), len(payload))
            return None
        reply = await self._answer(topic, request_id, payload)
        self._reply_to(topic, reply)
        return reply

    async def _answer(self, topic: str, request_id: str, payload: bytes) -> EnrollReply:
        device_id: str | None = None
        try:
            request = _decode(payload)
            device_id = request.device_id
            bundle = await self._redeem(request, request_id)
        except _Refuse as exc:
            reply = refusal(exc.reason, exc.detail)
            await self._record(topic, device_id, exc.reason, reply.detail, len(payload))
            return reply
        self.counts["enrolled"] += 1
        logger.info("enrollment of %s by request %s: bundle sent", device_id, request_id)
        return EnrollReply(ok=True, bundle=bundle)

    async def _redeem(self, request: EnrollRequest, request_id: str) -> str:
        """Check the token and mark it used, in one transaction; returns the sealed bundle."""
        now = self._clock()
        async with self._store.transaction("redeem an enrollment token") as db:
            # An expired bundle can never be sent again: keep no sealed copy of it.
            await db.execute(
                "UPDATE enrollment_tokens SET bundle = '' WHERE bundle != '' AND expires_at <= ?",
                (utc_iso(now),),
            )
            async with db.execute(
                "SELECT device_id, expires_at, used_at, used_by, bundle FROM enrollment_tokens "
                "WHERE token_id = ?",
                (request.token_id,),
            ) as cur:
                row = await cur.fetchone()
            # Decided inside, raised after the commit: a refusal still keeps the purge.
            problem = _problem(request, request_id, row, now)
            if problem is None and row is not None and row[2] is None:
                await db.execute(
                    "UPDATE enrollment_tokens SET used_at = ?, used_by = ? WHERE token_id = ?",
                    (utc_iso(now), request_id, request.token_id),
                )
        if problem is not None:
            raise problem
        assert row is not None
        return str(row[4])

    async def _record(
        self, topic: str, device_id: str | None, reason: str, detail: str, size: int
    ) -> None:
        self.counts[reason] += 1
        logger.warning("enrollment request on %s refused: %s: %s", topic, reason, detail)
        refused = Refusal(utc_iso(self._clock()), topic, device_id, reason, detail, size)
        await self._store.write(WriteBatch(refusals=[refused]))

    def _reply_to(self, request_topic: str, reply: EnrollReply) -> None:
        try:
            topic = reply_topic(parse_request_topic(request_topic))
        except BadTopic:
            return
        self._send_reply(topic, encode_reply(reply))


_PAYLOAD_REASONS: dict[str, RefusalReason] = {
    "too_large": "too_large",
    "malformed_json": "malformed_json",
    "schema": "schema",
}


def _decode(payload: bytes) -> EnrollRequest:
    try:
        return decode_request(payload)
    except BadMessage as exc:
        raise _Refuse(_PAYLOAD_REASONS.get(exc.reason, "schema"), str(exc)) from None


def _problem(
    request: EnrollRequest, request_id: str, row: sqlite3.Row | None, now: datetime
) -> _Refuse | None:
    """The refusal a token's row calls for, if any (used wins over expired)."""
    if row is None:
        return _Refuse("token_unknown")
    device_id, expires_at, used_at, used_by, _ = row
    if device_id != request.device_id:
        return _Refuse(
            "device_mismatch",
            f"this enrollment code is for device {device_id}, not {request.device_id}",
        )
    if used_at is not None and used_by != request_id:
        return _Refuse("token_used", f"this enrollment code was already used at {used_at}")
    if datetime.fromisoformat(str(expires_at)) <= now:
        return _Refuse("token_expired", f"this enrollment code expired at {expires_at}")
    return None
