"""The device's periodic health report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from broker.messages import Health
from device.outbox import Outbox
from device.scanner import ScanStats

logger = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C on a Pi (None where there is no thermal zone)."""
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


class HealthMonitor:
    """Builds health reports from counters that other parts keep."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        stats: Callable[[], ScanStats],
        dropped: Callable[[], int],
        clock_synced: Callable[[], bool],
        direction: Callable[[], Literal["in", "out"]],
    ) -> None:
        self._outbox = outbox
        self._stats = stats
        self._dropped = dropped
        self._clock_synced = clock_synced
        self._direction = direction
        self._started = time.monotonic()
        self._last = (self._started, 0)

    def report(self) -> Health:
        """A report now; camera fps is measured since the previous report."""
        stats = self._stats()
        now = time.monotonic()
        then, frames_then = self._last
        frames = stats.frames
        fps = (frames - frames_then) / (now - then) if now > then and frames >= frames_then else 0.0
        self._last = (now, frames)
        oldest = self._outbox.oldest_pending_at()
        return Health(
            uptime_s=round(now - self._started, 1),
            scans=stats.scans,
            accepted=stats.accepted,
            rejected=stats.rejected,
            outbox_depth=self._outbox.depth(),
            oldest_pending_s=(datetime.now(UTC) - oldest).total_seconds() if oldest else None,
            median_decode_ms=round(stats.median_decode_ms(), 3),
            camera_fps=round(fps, 2),
            frames_dropped=self._dropped(),
            cpu_temp_c=cpu_temperature(),
            clock_synced=self._clock_synced(),
            direction=self._direction(),
        )
