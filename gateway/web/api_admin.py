"""Users, sites and the audit log (admins); the rollout report (admins and health officers)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway import registry, rollout
from gateway.registry import SiteEntry
from gateway.users import Role, User, add_user, delete_user, list_users, update_user
from gateway.web.auth import require
from gateway.web.context import check_csrf, context_of

router = APIRouter(prefix="/api", tags=["admin"])
MONTH = r"^(19|20|21)\d{2}-(0[1-9]|1[0-2])$"
Month = Query(None, pattern=MONTH, description="YYYY-MM, 1900-2199 (default: this month).")


class UserOut(BaseModel):
    """A dashboard user (never their password hash)."""

    username: str
    role: Role
    sites: list[str]
    disabled: bool


class NewUser(BaseModel):
    """A user to create; an operator needs sites, other roles none."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=2, max_length=64)
    role: Role
    password: str = Field(min_length=10, max_length=1024)
    sites: list[str] = Field(default_factory=list, max_length=500)


class UserChange(BaseModel):
    """What to change of a user (absent: unchanged); their sessions end."""

    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    password: str | None = Field(None, min_length=10, max_length=1024)
    sites: list[str] | None = Field(None, max_length=500)
    disabled: bool | None = None


class AuditOut(BaseModel):
    """One audit log entry."""

    at: str
    actor: str
    action: str
    target: str
    purpose: str
    detail: str


def user_out(u: User) -> UserOut:
    return UserOut(username=u.username, role=u.role, sites=list(u.sites), disabled=u.disabled)


@router.get("/users", response_model=list[UserOut])
async def get_users(request: Request) -> list[UserOut]:
    """Every dashboard user (admins)."""
    require(request, Role.ADMIN)
    return [user_out(u) for u in await list_users(context_of(request).conn)]


@router.post("/users", response_model=UserOut, status_code=201)
async def post_user(request: Request, body: NewUser) -> UserOut:
    """Create a user (admins)."""
    check_csrf(request, require(request, Role.ADMIN))
    async with context_of(request).writing() as db:
        made = await add_user(db, body.username, body.role, body.password, body.sites)
    return user_out(made)


@router.patch("/users/{username}", response_model=UserOut)
async def patch_user(request: Request, username: str, body: UserChange) -> UserOut:
    """Change a user's role, sites, password or disabled flag (admins)."""
    check_csrf(request, require(request, Role.ADMIN))
    async with context_of(request).writing() as db:
        changed = await update_user(
            db,
            username,
            role=body.role,
            sites=body.sites,
            password=body.password,
            disabled=body.disabled,
        )
    return user_out(changed)


@router.delete("/users/{username}", status_code=204)
async def remove_user(request: Request, username: str) -> None:
    """Delete a user and end their sessions (admins; not yourself)."""
    session = require(request, Role.ADMIN)
    check_csrf(request, session)
    if username == session.user.username:
        raise HTTPException(409, "an admin cannot delete their own account")
    async with context_of(request).writing() as db:
        await delete_user(db, username)


@router.put("/sites/{site_id}", response_model=SiteEntry)
async def put_site(request: Request, site_id: str, body: SiteEntry) -> SiteEntry:
    """Register a site or replace its description, zones and shifts (admins)."""
    check_csrf(request, require(request, Role.ADMIN))
    if body.site_id != site_id:
        raise HTTPException(422, f"site_id {body.site_id!r} differs from the path {site_id!r}")
    async with context_of(request).writing() as db:
        await registry.register_sites(db, [body])
    return body


@router.get("/audit", response_model=list[AuditOut])
async def get_audit(request: Request, limit: int = Query(100, ge=1, le=1000)) -> list[AuditOut]:
    """The newest audit log entries (admins)."""
    require(request, Role.ADMIN)
    async with context_of(request).conn.execute(
        "SELECT at, actor, action, target, purpose, detail FROM audit_log ORDER BY id DESC LIMIT ?",
        (limit,),
    ) as cur:
        rows = await cur.fetchall()
    keys = ("at", "actor", "action", "target", "purpose", "detail")
    return [AuditOut(**dict(zip(keys, map(str, r), strict=True))) for r in rows]


async def report(request: Request, month: str | None) -> rollout.RolloutReport:
    ctx = context_of(request)
    month = month or datetime.now(ctx.tz).strftime("%Y-%m")
    return await rollout.rollout_report(ctx.conn, month=month, tz=ctx.tz)


@router.get("/rollout", response_model=dict[str, Any])
async def get_rollout(request: Request, month: str | None = Month) -> dict[str, Any]:
    """The monthly rollout report (admins and health officers)."""
    require(request, Role.ADMIN, Role.HEALTH)
    return rollout.report_json(await report(request, month))


RolloutFormat = Literal["xlsx", "json", "csv", "csv-daily"]
RolloutFormatQuery = Query(
    "xlsx",
    description="xlsx (both tables as sheets), json, csv (the summary per area), "
    "csv-daily (the rows per site and day).",
)
_ROLLOUT_FILES: dict[str, tuple[str, str]] = {  # format -> (media type, file name suffix)
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    "json": ("application/json", ".json"),
    "csv": ("text/csv; charset=utf-8", ".csv"),
    "csv-daily": ("text/csv; charset=utf-8", "-daily.csv"),
}


@router.get(
    "/rollout/file",
    response_class=Response,
    responses={
        200: {
            "content": {media: {} for media, _ in _ROLLOUT_FILES.values()},
            "description": "The report as a file",
        }
    },
)
async def get_rollout_file(
    request: Request,
    month: str | None = Month,
    format: RolloutFormat = RolloutFormatQuery,
) -> Response:
    """The rollout report as XLSX, JSON, or one of its two CSV tables (admins, health)."""
    require(request, Role.ADMIN, Role.HEALTH)
    found = await report(request, month)
    content = await asyncio.to_thread(_report_bytes, found, format)
    media, suffix = _ROLLOUT_FILES[format]
    name = f"rollout-{found.start:%Y-%m}{suffix}"
    return Response(
        content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _report_bytes(found: rollout.RolloutReport, fmt: RolloutFormat) -> bytes:
    """The file's bytes, made by the report's own writer (CSV: it writes both tables)."""
    with tempfile.TemporaryDirectory() as folder:
        if fmt == "xlsx" or fmt == "json":
            path = Path(folder) / f"rollout.{fmt}"
            rollout.write_report(found, fmt, path)
            return path.read_bytes()
        summary, daily = rollout.write_report(found, "csv", Path(folder) / "rollout.csv")
        return (summary if fmt == "csv" else daily).read_bytes()
