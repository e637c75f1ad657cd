"""The dashboard and its HTTP API: one FastAPI app served by the gateway's own event loop.

:func:`create_app` builds the app for a :class:`WebContext` (the database,
the time zone, the config publisher of the running gateway); :func:`serve`
runs it with uvicorn as a task of the gateway until the gateway's stop event.
The app reads and writes through a connection of its own (WAL lets it read
beside the ingest writer); its few writes (sessions, users, audit entries)
are serialised by one lock so two requests never interleave a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.audit import connect
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.fleet import ConfigPublisher, UnknownDevice
from gateway.identity import read_subject_key
from gateway.users import UnknownUser, UserExists
from gateway.web import (
    api_admin,
    api_devices,
    api_session,
    api_site_defaults,
    api_tracing,
    pages,
)
from gateway.web.auth import COOKIE, find_session
from gateway.web.context import WebContext, context_of

logger = logging.getLogger(__name__)

DESCRIPTION = """QR check-in gates: devices, live check-ins, F1/F2 tracing, rollout report.

Log in with `POST /api/session`; the response sets an HttpOnly session cookie
and returns a `csrf` token that every POST, PUT, PATCH and DELETE must send in
the `X-CSRF-Token` header. Operators see only their own sites and no personal
fields; health officers trace and export (every trace and export is audited);
admins manage sites, users and devices.
"""


def static_dir() -> Path:
    return Path(str(resources.files("gateway.web") / "static"))


def create_app(ctx: WebContext) -> FastAPI:
    """The dashboard app over ``ctx``; its lifespan opens and closes the database."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.db = await connect(ctx.database)
        try:
            yield
        finally:
            await ctx.db.close()
            ctx.db = None

    app = FastAPI(
        title="qrgate dashboard API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ctx = ctx
    app.middleware("http")(_load_session)
    _add_error_handlers(app)
    for module in (api_session, api_devices, api_site_defaults, api_tracing, api_admin):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


async def _load_session(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    ctx = context_of(request)
    session = await find_session(ctx.conn, request.cookies.get(COOKIE))
    request.state.session = session
    if session is None and _needs_login(request):
        # Before any body is parsed: an anonymous request learns nothing, not even a 422.
        return JSONResponse({"detail": "log in first"}, status_code=401)
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


_OPEN_API_PATHS = frozenset({"/api/openapi.json", "/api/docs", "/api/docs/oauth2-redirect"})


def _needs_login(request: Request) -> bool:
    path = request.url.path
    if not path.startswith("/api/") or path in _OPEN_API_PATHS:
        return False
    return not (path == "/api/session" and request.method == "POST")


def _add_error_handlers(app: FastAPI) -> None:
    """Refusals of our own code become 4xx with their message, never a 500."""

    def handler(code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def respond(request: Request, exc: Exception) -> Response:
            if not request.url.path.startswith("/api/"):
                return await pages.error_page(request, code, str(exc))
            return JSONResponse({"detail": str(exc)}, status_code=code)

        return respond

    app.add_exception_handler(UnknownDevice, handler(404))
    app.add_exception_handler(UnknownUser, handler(404))
    app.add_exception_handler(UserExists, handler(409))
    app.add_exception_handler(GatewayError, handler(400))
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if request.url.path.startswith("/api/") or request.url.path.startswith("/static/"):
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )
    return await pages.error_page(request, exc.status_code, str(exc.detail))


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: FastAPI, *, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` on the running loop until ``stop`` is set."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(_guarded(server, host, port), name="web-server")
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopped.cancel()
    await task


async def _guarded(server: uvicorn.Server, host: str, port: int) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind; the gateway keeps ingesting.
        logger.error("dashboard not served: cannot listen on %s:%d", host, port)


def start_web(
    config: GatewayConfig, publisher: ConfigPublisher | None, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """The dashboard task of a gateway (None when ``web.enabled`` is false)."""
    web = config.web
    if not web.enabled:
        return None
    ctx = WebContext(
        database=config.database,
        tz=ZoneInfo(config.timezone),
        session_ttl_s=web.session_ttl_s,
        secure_cookies=web.secure_cookies,
        publisher=publisher,
        subject_key=read_subject_key(web.subject_key_file) if web.subject_key_file else None,
    )
    logger.info("dashboard on http://%s:%d/", web.host, web.port)
    app = create_app(ctx)
    return asyncio.create_task(serve(app, host=web.host, port=web.port, stop=stop), name="web")
