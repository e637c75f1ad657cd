"""Login sessions kept in the gateway database, and the role checks of every route.

The session cookie holds a random token (HttpOnly, SameSite=Strict, Secure
when served over TLS); the database holds only its SHA-256, so a copy of the
database logs no one in. Sessions expire after ``session_ttl_s`` and end at
logout or when the user's role, sites or password change. Every state-changing
request needs the session's CSRF token: in a hidden form field for pages, in
the ``X-CSRF-Token`` header for the JSON API. SameSite=Strict already keeps
other sites' forms from carrying the cookie; the token is the second lock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import aiosqlite
from fastapi import HTTPException, Request, status

from gateway.audit import transaction
from gateway.users import Role, User, get_user

COOKIE = "qrgate_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in user and the CSRF token of their session."""

    user: User
    csrf: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(db: aiosqlite.Connection, user: User, ttl_s: int) -> tuple[str, Session]:
    """A new session for ``user``: the cookie token and the session."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    now = int(time.time())
    async with transaction(db):
        await db.execute("DELETE FROM sessions WHERE expires_s <= ?", (now,))
        await db.execute(
            "INSERT INTO sessions (token_hash, username, csrf, created_s, expires_s) "
            "VALUES (?, ?, ?, ?, ?)",
            (_digest(token), user.username, csrf, now, now + ttl_s),
        )
    return token, Session(user, csrf)


async def close_session(db: aiosqlite.Connection, token: str) -> None:
    async with transaction(db):
        await db.execute("DELETE FROM sessions WHERE token_hash=?", (_digest(token),))


async def find_session(db: aiosqlite.Connection, token: str | None) -> Session | None:
    """The live session of a cookie token, or None (unknown, expired, or user disabled)."""
    if not token or len(token) > 128:
        return None
    async with db.execute(
        "SELECT username, csrf FROM sessions WHERE token_hash=? AND expires_s > ?",
        (_digest(token), int(time.time())),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    user = await get_user(db, str(row[0]))
    return None if user.disabled else Session(user, str(row[1]))


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


def session_of(request: Request) -> Session | None:
    """The session the middleware found for this request (None: anonymous)."""
    found = getattr(request.state, "session", None)
    return found if isinstance(found, Session) else None


def require(request: Request, *roles: Role) -> Session:
    """The session if its user has one of ``roles`` (any role when none given); else 401/403."""
    session = session_of(request)
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first")
    if roles and session.user.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs the role {allowed}")
    return session


def require_site(session: Session, site_id: str) -> None:
    """404 (not 403) for another operator's site: its existence is not disclosed either."""
    if not session.user.may_see(site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no site {site_id!r}")
