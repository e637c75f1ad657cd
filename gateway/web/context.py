"""What every route of the web app shares: the gateway context, CSRF checks, the cookie."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import aiosqlite
from fastapi import HTTPException, Request, Response, status

from gateway.fleet import ConfigPublisher
from gateway.web.auth import COOKIE, CSRF_HEADER, Session, csrf_ok
from gateway.web.throttle import LoginThrottle


@dataclass
class WebContext:
    """What the web app needs from the gateway it runs in.

    ``publisher`` pushes configs through the gateway's broker connection (None:
    pushing is refused with 503); ``subject_key`` lets a health officer trace
    by ID number (None: by pseudonym only); ``login_throttle`` counts failed
    logins in memory (give it another clock to test it).
    """

    database: Path
    tz: ZoneInfo
    session_ttl_s: int = 8 * 3600
    secure_cookies: bool = False
    publisher: ConfigPublisher | None = None
    subject_key: bytes | None = None
    db: aiosqlite.Connection | None = None
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)

    @property
    def conn(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("the web app's database is not open (lifespan not run)")
        return self.db

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, held alone for a write transaction."""
        async with self.write_lock:
            yield self.conn


def context_of(request: Request) -> WebContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, WebContext)
    return ctx


def client_address(request: Request) -> str:
    """The client's address (uvicorn takes it from X-Forwarded-For only from trusted proxies)."""
    return request.client.host if request.client is not None else "unknown"


def check_csrf(request: Request, session: Session, given: str | None = None) -> None:
    """403 unless the request carries the session's CSRF token (header, or ``given``)."""
    token = given if given is not None else request.headers.get(CSRF_HEADER)
    if not csrf_ok(session, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER}")


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    ctx = context_of(request)
    response.set_cookie(
        COOKIE,
        token,
        max_age=ctx.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=ctx.secure_cookies,
        path="/",
    )
