"""Traces and venue queries asked through the web, audited like the command line's.

A health officer names the case by pseudonym (or by ID number when the
gateway holds the province subject key) or names a site (venue exposure),
gives a window, a threshold and a purpose. Names and ID numbers show only
when the officer supplies the authority's private key with the request: it is
used for that request, in memory, and never stored or logged, so the
database and the server keep no plaintext and no key. The audit entry (and a
``decrypt`` entry when the key was given) is written before anything is shown.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiosqlite
from nacl.public import PrivateKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker.sealing import Opener
from gateway.audit import Action, insert, transaction
from gateway.errors import GatewayError
from gateway.exports import Exporter, Table, exposure_table
from gateway.identity import Identities, pseudonym
from gateway.tracing import trace, venue_exposure
from gateway.users import User

_SUBJECT = re.compile(r"^[0-9a-f]{32,64}$")
MAX_WINDOW_S = 62 * 86400


class TraceRequestError(GatewayError):
    """A trace request the gateway cannot answer (window, key, subject); nothing was disclosed."""


class TraceRequest(BaseModel):
    """A trace of a case (subject or ID number) or a venue query (site), over a window."""

    model_config = ConfigDict(extra="forbid")
    subject: str | None = Field(None, description="Pseudonym of the case (32-64 hex).")
    id_number: str | None = Field(
        None, max_length=32, description="ID number of the case (needs the gateway's subject key)."
    )
    kind: Literal["cccd", "badge", "dcc"] = "cccd"
    site: str | None = Field(None, max_length=64, description="A site: everyone present there.")
    since: datetime = Field(description="Start of the window (ISO; without offset: local time).")
    until: datetime = Field(description="End of the window.")
    threshold_min: int | None = Field(None, ge=1, le=1440, description="Least overlap (min).")
    levels: Literal[1, 2] = 2
    margin_min: int = Field(60, ge=0, le=1440, description="Venue: minutes around the window.")
    purpose: str = Field(min_length=3, max_length=500, description="Why (in the audit log).")
    authority_key: str | None = Field(
        None,
        max_length=200,
        description="The health authority's private key text, to show names; never stored.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> TraceRequest:
        named = [n for n in (self.subject, self.id_number, self.site) if n]
        if len(named) != 1:
            raise ValueError("give exactly one of subject, id_number or site")
        if not self.purpose.strip():
            raise ValueError("purpose is empty")
        return self


@dataclass(frozen=True, slots=True)
class TraceOutcome:
    """What a trace or venue query found, as JSON and as a table to export."""

    kind: Literal["trace", "venue"]
    target: str
    data: dict[str, Any]
    table: Table
    summary: str


def opener_from_text(text: str) -> Opener:
    """An opener for the authority's private key text (url-safe base64 of 32 bytes)."""
    clean = text.strip()
    try:
        raw = base64.urlsafe_b64decode(clean + "=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        raise TraceRequestError("the authority key is not base64 text") from None
    if len(raw) != 32:
        raise TraceRequestError("the authority key must be 32 bytes (the private key file)")
    return Opener(PrivateKey(raw))


def _epoch(moment: datetime, tz: ZoneInfo) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        return int(moment.timestamp())
    except (OverflowError, OSError, ValueError):
        raise TraceRequestError(f"time out of range: {moment.isoformat()}") from None


def window(req: TraceRequest, tz: ZoneInfo) -> tuple[int, int]:
    since_s, until_s = _epoch(req.since, tz), _epoch(req.until, tz)
    if until_s <= since_s:
        raise TraceRequestError("the window ends before it starts")
    if until_s - since_s > MAX_WINDOW_S:
        raise TraceRequestError("the window is longer than 62 days")
    return since_s, until_s


def subject_of(req: TraceRequest, subject_key: bytes | None) -> str:
    if req.subject is not None:
        subject = req.subject.strip().lower()
        if not _SUBJECT.match(subject):
            raise TraceRequestError(f"subject {req.subject!r} is not a pseudonym (32-64 hex)")
        return subject
    if subject_key is None:
        raise TraceRequestError("this gateway has no subject key: trace by pseudonym")
    return pseudonym(subject_key, req.kind, req.id_number or "")


async def run_trace(
    db: aiosqlite.Connection, req: TraceRequest, *, tz: ZoneInfo, subject_key: bytes | None
) -> tuple[TraceOutcome, Identities]:
    """Answer the request (nothing audited yet; see :func:`audit`)."""
    opener = opener_from_text(req.authority_key) if req.authority_key else None
    since_s, until_s = window(req, tz)
    identities = Identities(db, opener)
    exporter = await Exporter.load(db, identities, tz)
    if req.site:
        return await _venue(exporter, req, since_s, until_s), identities
    subject = subject_of(req, subject_key)
    threshold_s = req.threshold_min * 60 if req.threshold_min is not None else None
    result = await trace(
        db, subject, since_s=since_s, until_s=until_s, levels=req.levels, threshold_s=threshold_s
    )
    data = await exporter.trace_json(result, levels=req.levels)
    summary = f"levels {req.levels}, {len(result.f1)} F1, {len(result.f2)} F2"
    table = exposure_table(await exporter.trace_rows(result), "contacts")
    return TraceOutcome("trace", subject, data, table, _summary(exporter, req, summary)), identities


async def _venue(exporter: Exporter, req: TraceRequest, since_s: int, until_s: int) -> TraceOutcome:
    site = req.site or ""
    if site not in exporter.places.sites:
        raise TraceRequestError(f"no site {site!r} in the tracing database")
    margin_s = req.margin_min * 60
    stays = await venue_exposure(
        exporter.db, site, from_s=since_s, until_s=until_s, margin_s=margin_s
    )
    data = await exporter.venue_json(
        site, stays, from_s=since_s, until_s=until_s, margin_s=margin_s
    )
    rows = await exporter.venue_rows(stays, from_s=since_s, until_s=until_s)
    summary = f"margin {req.margin_min} min, {len(stays)} stays"
    return TraceOutcome(
        "venue", site, data, exposure_table(rows, "venue"), _summary(exporter, req, summary)
    )


def _summary(exporter: Exporter, req: TraceRequest, found: str) -> str:
    w = exporter.window_json(_epoch(req.since, exporter.tz), _epoch(req.until, exporter.tz))
    return f"{w['from']} .. {w['until']}; {found}; web"


async def audit(
    db: aiosqlite.Connection,
    user: User,
    req: TraceRequest,
    outcome: TraceOutcome,
    who: Identities,
    *,
    export: str | None = None,
) -> None:
    """The audit entries of a web trace or export; raises (nothing shown) if not written."""
    action = Action.TRACE if outcome.kind == "trace" else Action.VENUE
    if export:
        action = Action.EXPORT
    detail = outcome.summary + (f"; export {export}" if export else "")
    entry = {"actor": f"{user.username} (web, {user.role})", "target": outcome.target}
    async with transaction(db):
        await insert(db, action=action, purpose=req.purpose, detail=detail, **entry)
        if req.authority_key:
            opened = ", ".join(sorted(who.opened))
            text = f"{len(who.opened)} subjects opened: {opened}; {who.failures} failed"
            await insert(db, action=Action.DECRYPT, purpose=req.purpose, detail=text, **entry)
