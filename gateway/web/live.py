"""Check-ins per hour per site, for the live chart (counts only: nothing personal)."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from zoneinfo import ZoneInfo

import aiosqlite
from pydantic import BaseModel, Field

HOUR_S = 3600


class SiteSeries(BaseModel):
    """One site's counts, one per hour of ``LiveCounts.hours``."""

    site_id: str
    name: str
    counts: list[int]


class LiveCounts(BaseModel):
    """Check-ins per hour (by scan time) for each site that had any, oldest hour first."""

    hours: list[str] = Field(description="Start of each hour, local time 'YYYY-MM-DD HH:00'.")
    sites: list[SiteSeries]
    total: int


async def hourly_counts(
    db: aiosqlite.Connection,
    *,
    site_ids: Collection[str] | None,
    hours: int,
    now_s: int,
    tz: ZoneInfo,
) -> LiveCounts:
    """Counts for the ``hours`` hours up to and including the current one."""
    first = (now_s // HOUR_S - hours + 1) * HOUR_S
    sql = (
        "SELECT c.site_id, coalesce(s.name, c.site_id), c.scanned_s / 3600, count(*) "
        "FROM checkins c LEFT JOIN sites s ON s.site_id = c.site_id "
        "WHERE c.scanned_s >= ? AND c.scanned_s < ?"
    )
    params: list[object] = [first, first + hours * HOUR_S]
    if site_ids is not None:
        sql += " AND c.site_id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(sorted(site_ids)))
    sql += " GROUP BY 1, 2, 3 ORDER BY 1"
    async with db.execute(sql, params) as cur:
        rows = await cur.fetchall()
    series: dict[str, SiteSeries] = {}
    for site_id, name, hour, count in rows:
        one = series.setdefault(
            str(site_id), SiteSeries(site_id=str(site_id), name=str(name), counts=[0] * hours)
        )
        one.counts[int(hour) - first // HOUR_S] = int(count)
    labels = [
        datetime.fromtimestamp(first + i * HOUR_S, tz).strftime("%Y-%m-%d %H:00")
        for i in range(hours)
    ]
    total = sum(sum(s.counts) for s in series.values())
    return LiveCounts(hours=labels, sites=list(series.values()), total=total)
