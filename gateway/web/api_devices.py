"""Sites, devices, their configs and alerts, and the live check-in counts.

Operators see only their own sites (another site's device is a 404, as if
it did not exist) and no personal field: recent check-ins come without
pseudonym and initials. Configs are read and pushed by admins only.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from gateway import desired, registry
from gateway.alerts import current_alerts
from gateway.fleetview import device_status, device_statuses, recent_checkins
from gateway.users import Role
from gateway.web.auth import Session, require, require_site
from gateway.web.context import check_csrf, context_of
from gateway.web.live import LiveCounts, hourly_counts

router = APIRouter(prefix="/api", tags=["devices"])
SiteQuery = Query(None, max_length=64, description="Only this site's devices.")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SiteOut(_Out):
    """A site as listed on the dashboard."""

    site_id: str
    name: str
    category: str
    province: str
    district: str


class DeviceOut(_Out):
    """One device with its status figures (outbox and clock from its last health report)."""

    device_id: str
    site_id: str
    site_name: str
    gate: str
    direction: str
    zone: str
    vehicle: bool
    firmware: str
    last_seen: datetime | None
    online: bool
    offline_for_s: int | None
    outbox_depth: int | None
    oldest_pending_s: float | None
    clock_synced: bool | None
    applied_version: int
    desired_version: int
    drift: bool
    config_error: str
    alerts: list[str]


class CheckinOut(_Out):
    """A recent check-in; ``subject`` and ``initials`` are null for operators."""

    id: int
    scanned_at: datetime
    received_at: datetime
    direction: str
    kind: str
    accepted: bool
    reason: str
    clock_synced: bool
    subject: str | None = None
    initials: str | None = None


class DeviceDetail(BaseModel):
    """A device and its newest check-ins."""

    device: DeviceOut
    checkins: list[CheckinOut]


class ConfigOut(BaseModel):
    """A device's own override patch and the settings it should run."""

    device_id: str
    override: dict[str, Any] = Field(description="The device's override patch ({}: none).")
    override_revision: int
    effective: dict[str, Any]
    applied_version: int
    desired_version: int


class ConfigPatch(BaseModel):
    """A settings patch: a device's override or a site's defaults; ``{}`` clears it."""

    model_config = ConfigDict(extra="forbid")
    patch: dict[str, Any]


class Pushed(BaseModel):
    """The override revision stored and the desired config version published."""

    device_id: str
    revision: int
    version: int


class AlertOut(_Out):
    """A condition of a device worth an operator's attention."""

    device_id: str
    kind: str
    since: datetime | None
    detail: str


def _sites_of(session: Session, site: str | None) -> list[str] | None:
    allowed = session.user.site_filter()
    if site is None:
        return allowed
    require_site(session, site)
    return [site]


@router.get("/sites", response_model=list[SiteOut])
async def list_sites(request: Request) -> list[SiteOut]:
    """The registered sites this user may see."""
    session = require(request)
    found = await registry.sites(context_of(request).conn)
    return [SiteOut.model_validate(s) for s in found if session.user.may_see(s.site_id)]


@router.get("/devices", response_model=list[DeviceOut])
async def list_devices(request: Request, site: str | None = SiteQuery) -> list[DeviceOut]:
    """Every device this user may see, with status figures; ``site`` filters."""
    session = require(request)
    found = await device_statuses(context_of(request).conn, site_ids=_sites_of(session, site))
    return [DeviceOut.model_validate(d) for d in found]


async def visible_device(request: Request, session: Session, device_id: str) -> DeviceOut:
    found = await device_status(context_of(request).conn, device_id)
    if not session.user.may_see(found.site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    return DeviceOut.model_validate(found)


@router.get("/devices/{device_id}", response_model=DeviceDetail)
async def get_device(
    request: Request, device_id: str, limit: int = Query(50, ge=1, le=500)
) -> DeviceDetail:
    """One device and its newest check-ins (no pseudonym or initials for operators)."""
    session = require(request)
    device = await visible_device(request, session, device_id)
    rows = await recent_checkins(context_of(request).conn, device_id, limit)
    checkins = [CheckinOut.model_validate(r) for r in rows]
    if session.user.role is Role.OPERATOR:
        checkins = [c.model_copy(update={"subject": None, "initials": None}) for c in checkins]
    return DeviceDetail(device=device, checkins=checkins)


async def device_config(request: Request, device_id: str) -> ConfigOut:
    db = context_of(request).conn
    status_ = await device_status(db, device_id)
    override = await desired.device_override(db, device_id)
    effective = await desired.effective_settings(db, device_id)
    return ConfigOut(
        device_id=device_id,
        override=override.patch if override is not None else {},
        override_revision=override.revision if override is not None else 0,
        effective=effective.model_dump(mode="json"),
        applied_version=status_.applied_version,
        desired_version=status_.desired_version,
    )


@router.get("/devices/{device_id}/config", response_model=ConfigOut)
async def get_config(request: Request, device_id: str) -> ConfigOut:
    """The device's override patch and effective settings (admins)."""
    require(request, Role.ADMIN)
    return await device_config(request, device_id)


async def push_config(request: Request, device_id: str, patch: dict[str, Any]) -> Pushed:
    """Store the device's override and push its effective settings."""
    ctx = context_of(request)
    if ctx.publisher is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no broker connection to push")
    await device_status(ctx.conn, device_id)  # 404 before anything is stored
    async with ctx.writing() as db:
        revision = await desired.set_device_override(db, device_id, patch)
        versions = await desired.push_effective(db, ctx.publisher, [device_id])
    return Pushed(device_id=device_id, revision=revision, version=versions[device_id])


@router.put("/devices/{device_id}/config", response_model=Pushed)
async def put_config(request: Request, device_id: str, body: ConfigPatch) -> Pushed:
    """Replace the device's override patch and push its effective settings (admins)."""
    check_csrf(request, require(request, Role.ADMIN))
    return await push_config(request, device_id, body.patch)


@router.get("/alerts", response_model=list[AlertOut])
async def list_alerts(request: Request, site: str | None = SiteQuery) -> list[AlertOut]:
    """Alerts in force on the devices this user may see."""
    session = require(request)
    found = await current_alerts(context_of(request).conn, site_ids=_sites_of(session, site))
    return [AlertOut.model_validate(a) for a in found]


@router.get("/live", response_model=LiveCounts)
async def live(
    request: Request,
    hours: int = Query(24, ge=1, le=168, description="How many hours back."),
    site: str | None = SiteQuery,
) -> LiveCounts:
    """Check-ins per hour per site (by scan time), oldest hour first; polled by the chart."""
    session = require(request)
    ctx = context_of(request)
    return await hourly_counts(
        ctx.conn,
        site_ids=_sites_of(session, site),
        hours=hours,
        now_s=int(time.time()),
        tz=ctx.tz,
    )
