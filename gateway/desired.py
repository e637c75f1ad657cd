"""Desired device settings: site-wide defaults with per-device overrides.

A *patch* is a partial :class:`DeviceSettings` as JSON: nested objects merge
key by key, anything else (numbers, text, lists) replaces; an object whose
``type`` differs from the one it patches (a frame source) replaces it whole.
A device's effective settings are its base (the newest desired config pushed
to it whole, by provisioning or ``push-config``, else the defaults with its
registered direction), then its site's defaults, then its own override. The
configs this module pushes are stored as *layered*, never used as a base: a
default that is cleared or changed no longer shows in the next push. Every
patch is checked against every device it affects before it is stored: an
invalid one raises :class:`InvalidPatch` naming the device and field, and
nothing is stored.

Patches are versioned per scope (``revision``); each effective config pushed
is versioned by :class:`gateway.fleet.ConfigPublisher` and published retained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosqlite
from pydantic import ValidationError

from broker.messages import utc_iso
from broker.settings import DeviceSettings
from gateway.audit import transaction
from gateway.errors import GatewayError
from gateway.fleet import ConfigPublisher, UnknownDevice
from gateway.registry import UnknownSite

logger = logging.getLogger(__name__)

Patch = dict[str, Any]


class InvalidPatch(GatewayError):
    """A settings patch that would give some device invalid settings; nothing was stored."""


@dataclass(frozen=True, slots=True)
class StoredPatch:
    """A patch as stored: its scope (site or device id), revision and when it was set."""

    scope: str
    patch: Patch
    revision: int
    updated_at: str


async def site_defaults(db: aiosqlite.Connection, site_id: str) -> StoredPatch | None:
    """The site's default patch, if one was set."""
    return await _stored(db, "site", site_id)


async def device_override(db: aiosqlite.Connection, device_id: str) -> StoredPatch | None:
    """The device's own override patch, if one was set."""
    return await _stored(db, "device", device_id)


async def set_site_defaults(
    db: aiosqlite.Connection, site_id: str, settings_patch: Mapping[str, Any]
) -> int:
    """Replace the site's defaults (``{}`` clears them); returns the new revision.

    Raises :class:`InvalidPatch` if any device of the site would get invalid
    settings, :class:`UnknownSite` if the site has no device and is not registered.
    """
    patch = _patch_of(settings_patch, f"site {site_id}")
    device_ids = await site_device_ids(db, site_id)
    if not device_ids and not await _site_registered(db, site_id):
        raise UnknownSite(f"site {site_id!r} is not registered and has no devices")
    if not device_ids:
        # No device to check against yet: the defaults must fit the model's own defaults.
        _validated(merge_patch(DeviceSettings().model_dump(mode="json"), patch), f"site {site_id}")
    async with transaction(db):
        for device_id in device_ids:
            override = await device_override(db, device_id)
            base = await _base(db, device_id)
            layered = merge_patch(merge_patch(base, patch), override.patch if override else {})
            _validated(layered, f"device {device_id} (site {site_id} defaults)")
        revision = await _store(db, "site", site_id, patch)
    logger.info("site %s settings defaults revision %d: %s", site_id, revision, _keys(patch))
    return revision


async def set_device_override(
    db: aiosqlite.Connection, device_id: str, patch: Mapping[str, Any]
) -> int:
    """Replace the device's override (``{}`` clears it); returns the new revision.

    Raises :class:`InvalidPatch` (nothing stored) or :class:`UnknownDevice`.
    """
    own = _patch_of(patch, f"device {device_id}")
    site_id = await _site_of(db, device_id)
    async with transaction(db):
        defaults = await site_defaults(db, site_id)
        base = await _base(db, device_id)
        layered = merge_patch(merge_patch(base, defaults.patch if defaults else {}), own)
        _validated(layered, f"device {device_id}")
        revision = await _store(db, "device", device_id, own)
    logger.info("device %s settings override revision %d: %s", device_id, revision, _keys(own))
    return revision


async def effective_settings(db: aiosqlite.Connection, device_id: str) -> DeviceSettings:
    """The settings the device should run: base <- site defaults <- device override."""
    site_id = await _site_of(db, device_id)
    defaults = await site_defaults(db, site_id)
    override = await device_override(db, device_id)
    layered = merge_patch(await _base(db, device_id), defaults.patch if defaults else {})
    layered = merge_patch(layered, override.patch if override else {})
    return _validated(layered, f"device {device_id}")


async def push_effective(
    db: aiosqlite.Connection,
    publisher: ConfigPublisher,
    device_ids: Sequence[str],
    *,
    force: bool = False,
) -> dict[str, int]:
    """Push each device's effective settings as a new desired version, published retained.

    A device whose effective settings equal its newest desired config gets no new
    version unless ``force``. Returns the desired version of each device.
    """
    versions: dict[str, int] = {}
    for device_id in device_ids:
        settings = await effective_settings(db, device_id)
        newest = await _newest_desired(db, device_id)
        if newest is not None and not force and newest[1] == settings:
            versions[device_id] = newest[0]
            continue
        versions[device_id] = await publisher.push(device_id, settings, layered=True)
    return versions


async def base_settings(db: aiosqlite.Connection, device_id: str) -> DeviceSettings | None:
    """The newest config pushed to the device whole (not layered), if any."""
    newest = await _newest_desired(db, device_id, bases_only=True)
    return newest[1] if newest is not None else None


async def site_device_ids(db: aiosqlite.Connection, site_id: str) -> list[str]:
    """Ids of the devices registered at a site."""
    async with db.execute(
        "SELECT device_id FROM devices WHERE site_id = ? ORDER BY device_id", (site_id,)
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> Patch:
    """``base`` with ``patch`` applied (see the module docstring for the rules)."""
    merged = dict(base)
    for key, value in patch.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and _same_type(old, value):
            merged[key] = merge_patch(old, value)
        else:
            merged[key] = value
    return merged


def _same_type(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "type" not in new or new.get("type") == old.get("type")


def _patch_of(patch: Mapping[str, Any], what: str) -> Patch:
    if not isinstance(patch, Mapping):
        raise InvalidPatch(f"{what}: a settings patch must be a JSON object")
    # Round-trip through JSON: what is stored is exactly what is validated.
    try:
        return dict(json.loads(json.dumps(patch, ensure_ascii=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidPatch(f"{what}: settings patch is not JSON: {exc}") from None


def _validated(settings: Mapping[str, Any], what: str) -> DeviceSettings:
    try:
        return DeviceSettings.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidPatch(f"{what}: invalid settings: {problems}") from None


async def _base(db: aiosqlite.Connection, device_id: str) -> Patch:
    base = await base_settings(db, device_id)
    if base is not None:
        return base.model_dump(mode="json")
    async with db.execute("SELECT direction FROM devices WHERE device_id = ?", (device_id,)) as cur:
        row = await cur.fetchone()
    direction = str(row[0]) if row else "in"
    return DeviceSettings.model_validate({"direction": direction}).model_dump(mode="json")


async def _newest_desired(
    db: aiosqlite.Connection, device_id: str, *, bases_only: bool = False
) -> tuple[int, DeviceSettings] | None:
    async with db.execute(
        "SELECT version, settings FROM desired_configs WHERE device_id = ? "
        f"{'AND NOT layered ' if bases_only else ''}ORDER BY version DESC LIMIT 1",
        (device_id,),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    return int(row[0]), DeviceSettings.model_validate_json(row[1])


async def _site_of(db: aiosqlite.Connection, device_id: str) -> str:
    async with db.execute("SELECT site_id FROM devices WHERE device_id = ?", (device_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise UnknownDevice(f"device {device_id!r} is not registered at this gateway")
    return str(row[0])


async def _site_registered(db: aiosqlite.Connection, site_id: str) -> bool:
    async with db.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,)) as cur:
        return await cur.fetchone() is not None


async def _stored(db: aiosqlite.Connection, kind: str, scope: str) -> StoredPatch | None:
    async with db.execute(
        "SELECT patch, revision, updated_at FROM settings_patches "
        "WHERE scope_kind = ? AND scope_id = ?",
        (kind, scope),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    return StoredPatch(scope, dict(json.loads(row[0])), int(row[1]), str(row[2]))


async def _store(db: aiosqlite.Connection, kind: str, scope: str, patch: Patch) -> int:
    await db.execute(
        "INSERT INTO settings_patches (scope_kind, scope_id, revision, patch, updated_at) "
        "VALUES (?, ?, 1, ?, ?) ON CONFLICT (scope_kind, scope_id) DO UPDATE SET "
        "revision = revision + 1, patch = excluded.patch, updated_at = excluded.updated_at",
        (kind, scope, json.dumps(patch, ensure_ascii=False), utc_iso(datetime.now(UTC))),
    )
    stored = await _stored(db, kind, scope)
    assert stored is not None
    return stored.revision


def _keys(patch: Patch) -> str:
    # Keys only: a patch may carry keys or deny lists that do not belong in a log.
    return ", ".join(sorted(patch)) or "(cleared)"
