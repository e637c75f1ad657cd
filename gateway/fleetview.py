"""The device registry as operators see it: where each gate is, whether it is up, what it runs.

Everything here is read from the tracing database: the registry columns, the
retained state the device last published (``devices.status``/``health``, the
broker's last will makes it ``offline``), and the newest desired config.
Alert kinds per device are computed here from :class:`AlertLimits`;
:mod:`gateway.alerts` turns them into timed alerts with details.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from gateway.fleet import UnknownDevice

__all__ = [
    "AlertLimits",
    "DeviceStatus",
    "RecentCheckin",
    "UnknownDevice",
    "device_status",
    "device_statuses",
    "recent_checkins",
]

OFFLINE = "offline"
OUTBOX_GROWING = "outbox_growing"
CLOCK_UNSYNCED = "clock_unsynced"
CONFIG_REFUSED = "config_refused"
DRIFT = "drift"


@dataclass(frozen=True, slots=True)
class AlertLimits:
    """When a device is worth an operator's attention."""

    offline_after_s: int = 300
    """Offline (or never seen) for at least this long."""
    outbox_depth: int = 200
    """Check-ins waiting in the device's outbox, at least this many."""
    oldest_pending_s: float = 600.0
    """The oldest unacknowledged check-in is at least this old: the outbox is not draining."""
    drift_grace_s: int = 120
    """A newly pushed config may take this long to be applied before it counts as drift."""


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One device as the fleet console shows it.

    ``online`` comes from the retained state; ``offline_for_s`` is how long the
    device has been offline (None while online, or if it was never seen).
    Outbox and clock figures are from its last health report (None before one).
    ``desired_version`` is 0 when no config was ever pushed; ``drift`` is true
    when the applied version is not the desired one. ``alerts`` lists alert
    kinds: offline, outbox_growing, clock_unsynced, config_refused, drift.
    """

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
    desired_at: datetime | None
    drift: bool
    config_error: str
    status_at: datetime | None = None
    health_at: datetime | None = None
    alerts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecentCheckin:
    """A check-in as the console lists it: pseudonym and initials, never identity fields."""

    id: int
    scanned_at: datetime
    received_at: datetime
    direction: str
    kind: str
    accepted: bool
    reason: str
    subject: str | None
    initials: str
    clock_synced: bool
    warnings: list[str]


_SELECT = """
SELECT d.device_id, d.site_id, coalesce(s.name, ''), d.gate, d.direction, d.zone_id,
       coalesce(s.category, '') = 'vehicle', d.firmware, d.last_seen, d.status, d.status_at,
       d.health, d.health_at, d.config_version, d.config_error,
       coalesce(c.version, 0), c.created_at
FROM devices d
LEFT JOIN sites s ON s.site_id = d.site_id
LEFT JOIN desired_configs c ON c.device_id = d.device_id AND c.version =
    (SELECT max(version) FROM desired_configs WHERE device_id = d.device_id)
"""


async def device_statuses(
    db: aiosqlite.Connection,
    *,
    site_ids: Collection[str] | None = None,
    now: datetime | None = None,
    offline_after_s: int = 300,
    limits: AlertLimits | None = None,
) -> list[DeviceStatus]:
    """Every registered device (of ``site_ids``, if given), ordered by site and device id.

    ``offline_after_s`` overrides ``limits.offline_after_s`` when ``limits`` is not given.
    """
    limits = limits or AlertLimits(offline_after_s=offline_after_s)
    now = now or datetime.now(UTC)
    sql, params = _SELECT, []
    if site_ids is not None:
        ids = sorted(set(site_ids))
        if not ids:
            return []
        sql += f" WHERE d.site_id IN ({', '.join('?' * len(ids))})"
        params = ids
    sql += " ORDER BY d.site_id, d.device_id"
    async with db.execute(sql, params) as cur:
        rows = await cur.fetchall()
    return [_status(tuple(r), now, limits) for r in rows]


async def device_status(
    db: aiosqlite.Connection,
    device_id: str,
    *,
    now: datetime | None = None,
    offline_after_s: int = 300,
    limits: AlertLimits | None = None,
) -> DeviceStatus:
    """One device; raises :class:`UnknownDevice` if it is not registered."""
    limits = limits or AlertLimits(offline_after_s=offline_after_s)
    async with db.execute(_SELECT + " WHERE d.device_id = ?", (device_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise UnknownDevice(f"device {device_id!r} is not registered at this gateway")
    return _status(tuple(row), now or datetime.now(UTC), limits)


async def recent_checkins(
    db: aiosqlite.Connection, device_id: str, limit: int = 50
) -> list[RecentCheckin]:
    """The device's newest check-ins, newest first; raises :class:`UnknownDevice`."""
    async with db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)) as cur:
        if await cur.fetchone() is None:
            raise UnknownDevice(f"device {device_id!r} is not registered at this gateway")
    async with db.execute(
        "SELECT id, scanned_at, received_at, direction, kind, accepted, reason, subject, "
        "initials, clock_synced, warnings FROM checkins WHERE device_id = ? "
        "ORDER BY scanned_at DESC, id DESC LIMIT ?",
        (device_id, max(0, limit)),
    ) as cur:
        rows = await cur.fetchall()
    return [
        RecentCheckin(
            id=int(r[0]),
            scanned_at=datetime.fromisoformat(r[1]),
            received_at=datetime.fromisoformat(r[2]),
            direction=str(r[3]),
            kind=str(r[4]),
            accepted=bool(r[5]),
            reason=str(r[6]),
            subject=r[7],
            initials=str(r[8]),
            clock_synced=bool(r[9]),
            warnings=list(json.loads(r[10] or "[]")),
        )
        for r in rows
    ]


def _when(text: object) -> datetime | None:
    return datetime.fromisoformat(str(text)) if text else None


def _status(r: tuple[Any, ...], now: datetime, limits: AlertLimits) -> DeviceStatus:
    last_seen, status_at, health_at = _when(r[8]), _when(r[10]), _when(r[12])
    online = r[9] == "online"
    offline_for_s = None
    if not online and status_at is not None:
        offline_for_s = max(0, int((now - status_at).total_seconds()))
    health: dict[str, Any] = json.loads(r[11]) if r[11] else {}
    applied, desired, desired_at = int(r[13]), int(r[15]), _when(r[16])
    status = DeviceStatus(
        device_id=str(r[0]),
        site_id=str(r[1]),
        site_name=str(r[2]),
        gate=str(r[3]),
        direction=str(r[4]),
        zone=str(r[5]),
        vehicle=bool(r[6]),
        firmware=str(r[7]),
        last_seen=last_seen,
        online=online,
        offline_for_s=offline_for_s,
        outbox_depth=health.get("outbox_depth"),
        oldest_pending_s=health.get("oldest_pending_s"),
        clock_synced=health.get("clock_synced"),
        applied_version=applied,
        desired_version=desired,
        desired_at=desired_at,
        drift=desired > 0 and applied != desired,
        config_error=str(r[14]),
        status_at=status_at,
        health_at=health_at,
    )
    status.alerts.extend(alert_kinds(status, now, limits))
    return status


def alert_kinds(status: DeviceStatus, now: datetime, limits: AlertLimits) -> list[str]:
    """The alert kinds that hold for ``status`` at ``now``."""
    kinds = []
    if not status.online and (
        status.offline_for_s is None or status.offline_for_s >= limits.offline_after_s
    ):
        kinds.append(OFFLINE)
    if (status.outbox_depth or 0) >= limits.outbox_depth or (
        status.oldest_pending_s or 0.0
    ) >= limits.oldest_pending_s:
        kinds.append(OUTBOX_GROWING)
    if status.clock_synced is False:
        kinds.append(CLOCK_UNSYNCED)
    if status.config_error:
        kinds.append(CONFIG_REFUSED)
    if status.drift and (
        status.desired_at is None
        or (now - status.desired_at).total_seconds() >= limits.drift_grace_s
    ):
        kinds.append(DRIFT)
    return kinds
