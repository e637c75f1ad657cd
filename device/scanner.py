"""The scan loop: frames -> decode -> decision -> signals -> outbox, on its own thread.

Camera reads and decoding block, so they never run inside a coroutine; the
loop hands each stored check-in to the event loop through ``on_stored``, which
the caller wires to ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.messages import CheckIn
from device.camera import FrameSource
from device.decision import Decider, Decision
from device.decoder import Decoder, GrayFrame
from device.outbox import Outbox
from device.signals import Signals

logger = logging.getLogger(__name__)


@dataclass
class ScanStats:
    """Counters since the device started; they outlive any one scanner (config changes)."""

    frames: int = 0
    scans: int = 0
    accepted: int = 0
    rejected: int = 0
    decode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def median_decode_ms(self) -> float:
        return statistics.median(self.decode_ms) if self.decode_ms else 0.0


class Scanner:
    """Runs the scan loop on a thread until stopped or the frame source runs out."""

    def __init__(
        self,
        *,
        frame_source: FrameSource,
        decoder: Decoder,
        decider: Decider,
        signals: Signals,
        outbox: Outbox,
        on_stored: Callable[[CheckIn, Decision], None],
        stats: ScanStats | None = None,
    ) -> None:
        self._source = frame_source
        self._decoder = decoder
        self._decider = decider
        self._signals = signals
        self._outbox = outbox
        self._on_stored = on_stored
        self._stop = threading.Event()
        self.exhausted = threading.Event()
        self.stats = stats or ScanStats()
        self._thread = threading.Thread(target=self._run, name="qrgate-scanner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def healthy(self) -> bool:
        """The loop is running, or ended only because a file source ran out."""
        return self._thread.is_alive() or self.exhausted.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end after the current frame and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._source.read()
                if frame is None:
                    logger.info("frame source exhausted after %d frames", self.stats.frames)
                    self.exhausted.set()
                    return
                self.process(frame)
        except Exception:
            logger.exception("scan loop failed")
            raise

    def process(self, frame: GrayFrame) -> list[Decision]:
        """Decode one frame and act on every new code in it."""
        started = time.perf_counter()
        texts = self._decoder.decode(frame)
        self.stats.decode_ms.append((time.perf_counter() - started) * 1000)
        self.stats.frames += 1
        decisions = []
        for text in texts:
            decision = self._decider.decide(text)
            if decision is not None:
                self._act(decision)
                decisions.append(decision)
        return decisions

    def _act(self, decision: Decision) -> None:
        # Signal first: the person at the gate must not wait for the disk.
        if decision.accepted:
            self._signals.accept()
            self.stats.accepted += 1
        else:
            self._signals.reject()
            self.stats.rejected += 1
        self.stats.scans += 1
        record = self._outbox.append(decision.checkin)
        self._on_stored(record, decision)
