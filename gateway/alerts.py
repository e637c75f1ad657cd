"""Fleet alerts: a device offline, its outbox growing, its clock unsynchronised, a config
refused or not applied (drift).

:func:`current_alerts` computes them from the database on demand (the
dashboard); :class:`AlertWatcher` runs in the gateway service and logs each
alert once when it is raised and once when it clears, not on every check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiosqlite

from gateway.audit import connect
from gateway.fleetview import AlertLimits, DeviceStatus, device_statuses

logger = logging.getLogger(__name__)

AlertKind = Literal["offline", "outbox_growing", "clock_unsynced", "config_refused", "drift"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition of one device; ``since`` is when it began, as far as the data tells."""

    device_id: str
    kind: AlertKind
    since: datetime | None
    detail: str


async def current_alerts(
    db: aiosqlite.Connection,
    *,
    site_ids: Collection[str] | None = None,
    now: datetime | None = None,
    limits: AlertLimits | None = None,
) -> list[Alert]:
    """Every alert that holds now, ordered by device and kind."""
    now = now or datetime.now(UTC)
    statuses = await device_statuses(db, site_ids=site_ids, now=now, limits=limits)
    return [alert for status in statuses for alert in alerts_of(status)]


def alerts_of(status: DeviceStatus) -> list[Alert]:
    """The alerts of one device, from the kinds :mod:`gateway.fleetview` found."""
    return [
        Alert(status.device_id, kind, *_since_and_detail(status, kind))
        for kind in _KINDS
        if kind in status.alerts
    ]


_KINDS: tuple[AlertKind, ...] = (
    "offline",
    "outbox_growing",
    "clock_unsynced",
    "config_refused",
    "drift",
)


def _since_and_detail(s: DeviceStatus, kind: AlertKind) -> tuple[datetime | None, str]:
    if kind == "offline":
        if s.offline_for_s is None:
            return None, "never seen by this gateway"
        return s.status_at, f"offline for {_duration(s.offline_for_s)}"
    if kind == "outbox_growing":
        oldest = "" if s.oldest_pending_s is None else f", oldest {_duration(s.oldest_pending_s)}"
        return s.health_at, f"{s.outbox_depth or 0} check-ins waiting{oldest}"
    if kind == "clock_unsynced":
        return s.health_at, "device clock is not NTP-synchronised"
    if kind == "config_refused":
        return s.status_at, s.config_error
    return s.desired_at, f"applied version {s.applied_version}, desired {s.desired_version}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


class AlertWatcher:
    """Checks the fleet every ``interval_s`` and logs alerts as they are raised and cleared.

    It reads through its own connection to ``database`` (WAL lets it read
    beside the ingest writer). ``active`` holds the alerts in force.
    """

    def __init__(
        self, database: Path, *, interval_s: float = 15.0, limits: AlertLimits | None = None
    ) -> None:
        self.database = database
        self.interval_s = interval_s
        self.limits = limits or AlertLimits()
        self.active: dict[tuple[str, str], Alert] = {}

    async def check(self, db: aiosqlite.Connection, now: datetime | None = None) -> None:
        """One round: log alerts that are new or cleared since the last round."""
        found: dict[tuple[str, str], Alert] = {
            (a.device_id, a.kind): a for a in await current_alerts(db, now=now, limits=self.limits)
        }
        for key in sorted(found.keys() - self.active.keys()):
            alert = found[key]
            logger.warning("alert %s on device %s: %s", alert.kind, alert.device_id, alert.detail)
        for key in sorted(self.active.keys() - found.keys()):
            logger.info("alert %s on device %s cleared", key[1], key[0])
        self.active = found

    async def run(self) -> None:
        """Check until cancelled."""
        db = await connect(self.database)
        try:
            while True:
                try:
                    await self.check(db)
                except Exception:  # a bad round must not end the watch
                    logger.exception("fleet alert check failed")
                await asyncio.sleep(self.interval_s)
        finally:
            await db.close()
