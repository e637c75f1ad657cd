"""Site-wide settings defaults (admins): read them, replace them and push every device's config.

A site's defaults are a settings patch laid over each of its devices' base
settings, under each device's own override (see :mod:`gateway.desired`). A
new patch is checked against every device of the site before it is stored;
one that would give any device invalid settings is refused with 422 naming
the device and field, and nothing is stored or pushed. Once stored, each
device's effective settings are pushed as a new desired version (a device
whose settings did not change keeps its version).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from gateway import desired
from gateway.fleetview import device_statuses
from gateway.users import Role
from gateway.web.api_devices import ConfigPatch
from gateway.web.auth import require
from gateway.web.context import check_csrf, context_of

router = APIRouter(prefix="/api", tags=["devices"])


class SiteDevice(BaseModel):
    """A device of the site: which settings its own override sets, and its config versions."""

    device_id: str
    override_keys: list[str] = Field(
        description="Top-level settings its override sets (these win)."
    )
    applied_version: int
    desired_version: int


class SiteDefaultsOut(BaseModel):
    """A site's defaults patch and its devices."""

    site_id: str
    defaults: dict[str, Any] = Field(description="The site's defaults patch ({}: none).")
    revision: int = Field(description="Revision of the defaults (0: never set).")
    updated_at: str | None
    devices: list[SiteDevice]


class DefaultsPushed(BaseModel):
    """The defaults revision stored and the desired config version of each device of the site."""

    site_id: str
    revision: int
    versions: dict[str, int]


async def _require_known(request: Request, site_id: str) -> None:
    """404 unless the site is registered or has a device."""
    async with context_of(request).conn.execute(
        "SELECT 1 FROM sites WHERE site_id = ? UNION ALL SELECT 1 FROM devices WHERE site_id = ?",
        (site_id, site_id),
    ) as cur:
        if await cur.fetchone() is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no site {site_id!r}")


async def site_defaults_view(request: Request, site_id: str) -> SiteDefaultsOut:
    """The site's defaults and its devices (404 for an unknown site)."""
    await _require_known(request, site_id)
    db = context_of(request).conn
    stored = await desired.site_defaults(db, site_id)
    devices = []
    for found in await device_statuses(db, site_ids=[site_id]):
        override = await desired.device_override(db, found.device_id)
        devices.append(
            SiteDevice(
                device_id=found.device_id,
                override_keys=sorted(override.patch) if override is not None else [],
                applied_version=found.applied_version,
                desired_version=found.desired_version,
            )
        )
    return SiteDefaultsOut(
        site_id=site_id,
        defaults=stored.patch if stored is not None else {},
        revision=stored.revision if stored is not None else 0,
        updated_at=stored.updated_at if stored is not None else None,
        devices=devices,
    )


async def push_site_defaults(
    request: Request, site_id: str, patch: dict[str, Any]
) -> DefaultsPushed:
    """Store the site's defaults and push its devices' effective settings.

    Raises :class:`desired.InvalidPatch` (nothing stored) for a patch that
    would make some device's settings invalid.
    """
    ctx = context_of(request)
    if ctx.publisher is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no broker connection to push")
    await _require_known(request, site_id)  # 404 before anything is stored
    async with ctx.writing() as db:
        revision = await desired.set_site_defaults(db, site_id, patch)
        device_ids = await desired.site_device_ids(db, site_id)
        versions = await desired.push_effective(db, ctx.publisher, device_ids)
    return DefaultsPushed(site_id=site_id, revision=revision, versions=versions)


@router.get(
    "/sites/{site_id}/defaults",
    response_model=SiteDefaultsOut,
    responses={404: {"description": "No such site"}},
)
async def get_site_defaults(request: Request, site_id: str) -> SiteDefaultsOut:
    """The site's settings defaults and which settings each device overrides (admins)."""
    require(request, Role.ADMIN)
    return await site_defaults_view(request, site_id)


@router.put(
    "/sites/{site_id}/defaults",
    response_model=DefaultsPushed,
    responses={
        404: {"description": "No such site"},
        422: {"description": "The patch would make some device's settings invalid"},
        503: {"description": "No broker connection to push"},
    },
)
async def put_site_defaults(request: Request, site_id: str, body: ConfigPatch) -> DefaultsPushed:
    """Replace the site's defaults (``{}`` clears them) and push its devices' configs (admins)."""
    check_csrf(request, require(request, Role.ADMIN))
    try:
        return await push_site_defaults(request, site_id, body.patch)
    except desired.InvalidPatch as exc:
        raise HTTPException(422, str(exc)) from None
