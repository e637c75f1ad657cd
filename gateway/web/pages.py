"""Server-rendered pages of the dashboard (Jinja2), in Vietnamese with an English switch.

Pages use the same functions as the API, so a role sees the same on both.
Form posts carry the session's CSRF token in a hidden ``csrf`` field. An
anonymous visitor is sent to the login page; a role without access gets 403.
The device table and the device summary are small fragments that the page
polls and swaps in, so a device going offline shows without a reload.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, Response, UploadFile, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from gateway import registry
from gateway.errors import GatewayError
from gateway.users import Role, add_user, delete_user, list_users, parse_role
from gateway.web import i18n
from gateway.web.api_admin import MONTH, report
from gateway.web.api_devices import device_config, get_device, list_alerts, list_devices
from gateway.web.api_devices import push_config as push_device_config
from gateway.web.api_session import log_in
from gateway.web.api_site_defaults import push_site_defaults, site_defaults_view
from gateway.web.api_tracing import export_response, traced
from gateway.web.auth import COOKIE, Session, close_session, require, session_of
from gateway.web.context import check_csrf, context_of, set_session_cookie
from gateway.web.throttle import LoginThrottled
from gateway.web.tracework import TraceRequest

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(resources.files("gateway.web") / "templates"))
MAX_KEY_BYTES = 200


def lang_of(request: Request) -> i18n.Lang:
    return i18n.pick(request.query_params.get("lang"), request.cookies.get(i18n.COOKIE))


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    lang = lang_of(request)
    ctx = context_of(request)

    def local(moment: datetime | None) -> str:
        return moment.astimezone(ctx.tz).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"

    response = templates.TemplateResponse(
        request,
        name,
        {
            "t": lambda key: i18n.translate(lang, key),
            "lang": lang,
            "other_lang": "en" if lang == "vi" else "vi",
            "session": session_of(request),
            "local": local,
            **values,
        },
        status_code=status_code,
    )
    if request.query_params.get("lang") in i18n.LANGS:
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="strict")
    return response


async def error_page(request: Request, code: int, message: str) -> Response:
    if code == status.HTTP_401_UNAUTHORIZED:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    return render(request, "error.html", code, code=code, message=message)


def _page_session(request: Request, *roles: Role) -> Session:
    return require(request, *roles)


# --- login ---------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", next=_safe_next(next), failed=False, throttled=None)


@router.post("/login")
async def login_form(
    request: Request,
    username: str = Form(max_length=64),
    password: str = Form(max_length=1024),
    next: str = Form("/"),
) -> Response:
    try:
        opened = await log_in(request, username, password)
    except LoginThrottled as exc:
        minutes = math.ceil(exc.retry_after_s / 60)
        refused = render(
            request, "login.html", 429, next=_safe_next(next), failed=False, throttled=minutes
        )
        refused.headers["Retry-After"] = str(exc.retry_after_s)
        return refused
    if opened is None:
        return render(
            request, "login.html", 401, next=_safe_next(next), failed=True, throttled=None
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(request, response, opened[0])
    return response


def _safe_next(target: str) -> str:
    # Only a path of this site: never an open redirect to another host.
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/logout")
async def logout_form(request: Request, csrf: str = Form("")) -> Response:
    session = session_of(request)
    if session is not None:
        check_csrf(request, session, csrf)
        async with context_of(request).writing() as db:
            await close_session(db, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- devices -------------------------------------------------------------------------------


@router.get("/")
async def devices_page(request: Request, site: str | None = None) -> Response:
    session = _page_session(request)
    site = site or None
    sites = [s for s in await registry.sites(context_of(request).conn)]
    visible = [s for s in sites if session.user.may_see(s.site_id)]
    devices = await list_devices(request, site)
    alerts = await list_alerts(request, site)
    return render(request, "devices.html", devices=devices, sites=visible, site=site, alerts=alerts)


@router.get("/fragments/devices")
async def devices_rows(request: Request, site: str | None = None) -> Response:
    _page_session(request)
    devices = await list_devices(request, site or None)
    return render(request, "_device_rows.html", devices=devices)


@router.get("/devices/{device_id}")
async def device_page(request: Request, device_id: str) -> Response:
    session = _page_session(request)
    detail = await get_device(request, device_id, limit=50)
    config = None
    if session.user.role is Role.ADMIN:
        config = await device_config(request, device_id)
    return render(
        request,
        "device.html",
        device=detail.device,
        checkins=detail.checkins,
        config=config,
        override_text=json.dumps(config.override if config else {}, indent=2),
        pushed=request.query_params.get("pushed"),
        error=None,
    )


@router.get("/fragments/devices/{device_id}")
async def device_summary(request: Request, device_id: str) -> Response:
    _page_session(request)
    detail = await get_device(request, device_id, limit=1)
    return render(request, "_device_summary.html", device=detail.device)


@router.post("/devices/{device_id}/config")
async def device_config_form(
    request: Request, device_id: str, patch: str = Form(max_length=512 * 1024), csrf: str = Form("")
) -> Response:
    check_csrf(request, _page_session(request, Role.ADMIN), csrf)
    try:
        pushed = await push_device_config(request, device_id, _json_object(patch))
    except (ValueError, GatewayError) as exc:
        detail = await get_device(request, device_id, limit=50)
        config = await device_config(request, device_id)
        return render(
            request, "device.html", 400, device=detail.device, checkins=detail.checkins,
            config=config, override_text=patch, pushed=None, error=str(exc),
        )  # fmt: skip
    return RedirectResponse(f"/devices/{quote(device_id)}?pushed={pushed.version}", 303)


# --- site defaults -------------------------------------------------------------------------


async def _site_page(
    request: Request, site_id: str, status_code: int = 200, **values: Any
) -> Response:
    view = await site_defaults_view(request, site_id)
    names = {s.site_id: s.name for s in await registry.sites(context_of(request).conn)}
    values.setdefault("defaults_text", json.dumps(view.defaults, indent=2, ensure_ascii=False))
    values.setdefault("pushed", request.query_params.get("pushed"))
    values.setdefault("error", None)
    return render(
        request,
        "site.html",
        status_code,
        view=view,
        site_name=names.get(site_id, site_id),
        **values,
    )


@router.get("/sites/{site_id}")
async def site_page(request: Request, site_id: str) -> Response:
    _page_session(request, Role.ADMIN)
    return await _site_page(request, site_id)


@router.post("/sites/{site_id}/defaults")
async def site_defaults_form(
    request: Request, site_id: str, patch: str = Form(max_length=512 * 1024), csrf: str = Form("")
) -> Response:
    check_csrf(request, _page_session(request, Role.ADMIN), csrf)
    try:
        pushed = await push_site_defaults(request, site_id, _json_object(patch))
    except (ValueError, GatewayError) as exc:
        return await _site_page(
            request, site_id, 400, defaults_text=patch, pushed=None, error=str(exc)
        )
    return RedirectResponse(f"/sites/{quote(site_id)}?pushed={pushed.revision}", 303)


# --- live ----------------------------------------------------------------------------------


@router.get("/live")
async def live_page(request: Request) -> Response:
    _page_session(request)
    return render(request, "live.html")


# --- tracing -------------------------------------------------------------------------------


def _trace_defaults(request: Request) -> dict[str, str]:
    now = datetime.now(context_of(request).tz).replace(second=0, microsecond=0, tzinfo=None)
    return {
        "since": (now - timedelta(days=14)).isoformat(timespec="minutes"),
        "until": now.isoformat(timespec="minutes"),
        "levels": "2",
        "margin_min": "60",
    }


@router.get("/trace")
async def trace_page(request: Request) -> Response:
    _page_session(request, Role.HEALTH)
    return render(request, "trace.html", form=_trace_defaults(request), result=None, error=None)


async def _trace_form(request: Request) -> tuple[dict[str, str], TraceRequest]:
    """The trace form's fields, and the request they make (the key read from the upload)."""
    form = await request.form()
    check_csrf(request, _page_session(request, Role.HEALTH), str(form.get("csrf", "")))
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str) and k != "csrf"}
    key_text = await _key_text(form.get("key"))
    values: dict[str, Any] = {k: v for k, v in fields.items() if v.strip() and k != "format"}
    values["authority_key"] = key_text
    if values.get("levels") in ("1", "2"):
        values["levels"] = int(values["levels"])  # a Literal[1, 2] takes no text
    return fields, TraceRequest.model_validate(values)


async def _key_text(upload: object) -> str | None:
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    raw = await upload.read(MAX_KEY_BYTES + 1)
    if len(raw) > MAX_KEY_BYTES:
        raise GatewayError("the authority key file is too large: choose the private key file")
    return raw.decode("utf-8", errors="replace").strip() or None


@router.post("/trace")
async def trace_form(request: Request) -> Response:
    fields: dict[str, str] = {}
    try:
        fields, req = await _trace_form(request)
        outcome = await traced(request, req)
    except (ValidationError, GatewayError) as exc:
        message = _error_text(exc)
        fields.pop("id_number", None)
        return render(request, "trace.html", 400, form=fields, result=None, error=message)
    if fields.pop("id_number", ""):
        # The page is not to echo the ID number: the export buttons use the pseudonym.
        fields["subject"] = outcome.target
    return render(request, "trace.html", form=fields, result=outcome.data, kind=outcome.kind,
                  error=None)  # fmt: skip


@router.post("/trace/export")
async def trace_export_form(request: Request) -> Response:
    fields: dict[str, str] = {}
    try:
        fields, req = await _trace_form(request)
        fmt = fields.get("format", "csv")
        if fmt not in ("csv", "xlsx", "json"):
            raise GatewayError(f"unknown export format {fmt!r}")
        outcome = await traced(request, req, export=fmt)
    except (ValidationError, GatewayError) as exc:
        message = _error_text(exc)
        return render(request, "trace.html", 400, form=fields, result=None, error=message)
    return await export_response(outcome, fmt)  # type: ignore[arg-type]


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


# --- rollout -------------------------------------------------------------------------------


@router.get("/rollout")
async def rollout_page(request: Request, month: str | None = None) -> Response:
    _page_session(request, Role.ADMIN, Role.HEALTH)
    if month is not None and not _is_month(month):
        raise HTTPException(400, f"month {month!r}: YYYY-MM")
    found = await report(request, month)
    return render(request, "rollout.html", report=found, month=f"{found.start:%Y-%m}")


def _is_month(text: str) -> bool:
    return re.match(MONTH, text) is not None


# --- users ---------------------------------------------------------------------------------


@router.get("/users")
async def users_page(request: Request) -> Response:
    _page_session(request, Role.ADMIN)
    users = await list_users(context_of(request).conn)
    return render(request, "users.html", users=users, error=None)


@router.post("/users")
async def users_add(
    request: Request,
    username: str = Form(max_length=64),
    role: str = Form(max_length=16),
    password: str = Form(max_length=1024),
    sites: str = Form("", max_length=10_000),
    csrf: str = Form(""),
) -> Response:
    check_csrf(request, _page_session(request, Role.ADMIN), csrf)
    site_list = [s.strip() for s in sites.split(",") if s.strip()]
    try:
        async with context_of(request).writing() as db:
            await add_user(db, username.strip(), parse_role(role), password, site_list)
    except GatewayError as exc:
        users = await list_users(context_of(request).conn)
        return render(request, "users.html", 400, users=users, error=str(exc))
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{username}/delete")
async def users_delete(request: Request, username: str, csrf: str = Form("")) -> Response:
    session = _page_session(request, Role.ADMIN)
    check_csrf(request, session, csrf)
    if username == session.user.username:
        raise HTTPException(409, "an admin cannot delete their own account")
    async with context_of(request).writing() as db:
        await delete_user(db, username)
    return RedirectResponse("/users", status_code=303)


def _json_object(text: str) -> dict[str, Any]:
    """A settings patch typed into a form; ValueError (JSONDecodeError is one) if not an object."""
    parsed = json.loads(text or "{}")
    if not isinstance(parsed, dict):
        raise ValueError("the patch must be a JSON object")
    return parsed
