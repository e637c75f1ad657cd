"""Log in and out of the API, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from gateway.users import User, authenticate
from gateway.web.auth import COOKIE, Session, close_session, open_session, require
from gateway.web.context import check_csrf, client_address, context_of, set_session_cookie
from gateway.web.throttle import LoginThrottled

router = APIRouter(prefix="/api", tags=["session"])


class Login(BaseModel):
    """A user name and password."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    """The logged-in user, and the CSRF token their writes must carry."""

    username: str
    role: str
    sites: list[str] = Field(description="An operator's sites; empty for other roles (all).")
    csrf: str


def me(session: Session) -> Me:
    u = session.user
    return Me(username=u.username, role=u.role.value, sites=list(u.sites), csrf=session.csrf)


async def log_in(request: Request, username: str, password: str) -> tuple[str, Session] | None:
    """A new session for a correct name and password (None otherwise).

    Raises :class:`LoginThrottled` (the password is not checked) after too many
    failures for the name or from the client's address.
    """
    ctx = context_of(request)
    throttle, address = ctx.login_throttle, client_address(request)
    async with ctx.writing() as db:
        # Under the lock: concurrent guesses cannot all pass the check before one is counted.
        throttle.check(username, address)
        user: User | None = await authenticate(db, username, password)
        if user is None:
            throttle.failed(username, address)
            return None
        throttle.succeeded(username, address)
        return await open_session(db, user, ctx.session_ttl_s)


@router.post(
    "/session",
    response_model=Me,
    responses={
        401: {"description": "Wrong user name or password"},
        429: {"description": "Too many failed logins for the name or address (Retry-After)"},
    },
)
async def login(body: Login, request: Request, response: Response) -> Me:
    """Log in: sets the session cookie and returns the CSRF token.

    After 5 failed logins in 15 minutes for a user name or from an address,
    further attempts for it are refused with 429 until the oldest leaves the window.
    """
    try:
        opened = await log_in(request, body.username, body.password)
    except LoginThrottled as exc:
        headers = {"Retry-After": str(exc.retry_after_s)}
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers=headers) from None
    if opened is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    token, session = opened
    set_session_cookie(request, response, token)
    return me(session)


@router.get("/session", response_model=Me, responses={401: {"description": "Not logged in"}})
async def who_am_i(request: Request) -> Me:
    """The logged-in user."""
    return me(require(request))


@router.delete("/session", status_code=204, responses={401: {"description": "Not logged in"}})
async def logout(request: Request, response: Response) -> None:
    """Log out: the session ends on the server, the cookie is cleared."""
    check_csrf(request, require(request))
    token = request.cookies.get(COOKIE, "")
    async with context_of(request).writing() as db:
        await close_session(db, token)
    response.delete_cookie(COOKIE, path="/")
