"""The scan loop: frames -> decode on the scan thread; decision -> signals -> outbox on a worker.

Camera reads and decoding block, so they never run inside a coroutine. The scan thread
only reads and decodes: what a frame costs it is what the camera waits for. Every text
it decodes goes, in order, to one worker thread that decides, signals, appends the
check-in to the outbox (an fsync) and hands it to the event loop through ``on_stored``,
which the caller wires to ``loop.call_soon_threadsafe``. Stopping, or running out of
frames, drains the worker first: a text decoded is decided and stored before the scanner
says it has stopped.
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

# Frames with codes waiting for the worker before the scan thread waits too: a stalled
# disk must slow the camera down rather than fill the memory with decoded texts.
MAX_WAITING = 64


@dataclass
class ScanStats:
    """Counters since the device started; they outlive any one scanner (config changes)."""

    frames: int = 0
    scans: int = 0
    accepted: int = 0
    rejected: int = 0
    decode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    # Worker time per frame with a code: decide, signal, outbox append, hand-over.
    act_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def median_decode_ms(self) -> float:
        return statistics.median(self.decode_ms) if self.decode_ms else 0.0


class DecisionWorker:
    """Decides, signals and stores the texts of each frame handed over, in order, on a thread.

    :meth:`submit` never drops a frame's texts: when ``max_waiting`` frames wait it blocks
    until the worker catches up. :meth:`finish` returns once everything submitted has been
    acted on.
    """

    def __init__(
        self,
        *,
        decider: Decider,
        signals: Signals,
        outbox: Outbox,
        on_stored: Callable[[CheckIn, Decision], None],
        stats: ScanStats,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._decider = decider
        self._signals = signals
        self._outbox = outbox
        self._on_stored = on_stored
        self._stats = stats
        self._max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[list[str]] = deque()
        self._busy = False
        self._finishing = False
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="qrgate-decider", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, texts: list[str]) -> bool:
        """Queue one frame's texts (blocks while ``max_waiting`` frames wait).

        False, logged, when the worker has failed or is finishing: nothing takes them then.
        """
        with self._cond:
            while len(self._waiting) >= self._max_waiting and not self.failed:
                self._cond.wait()
            if self.failed or self._finishing:
                # The texts are not logged: they hold ID numbers and names.
                logger.error("decision worker not running: %d decoded codes dropped", len(texts))
                return False
            self._waiting.append(texts)
            self._cond.notify_all()
            return True

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every frame submitted so far is acted on; False on timeout or failure."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self.failed or not (self._waiting or self._busy), timeout
            )
            return bool(done) and not self.failed

    def finish(self, timeout: float | None = None) -> bool:
        """Act on everything submitted, then end the thread; False if it did not end in time."""
        with self._cond:
            self._finishing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive() or self.failed:
            with self._cond:
                left = len(self._waiting) + self._busy
            logger.error("decision worker stopped with %d frames not stored", left)
            return False
        return True

    def _next(self) -> list[str] | None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            while not self._waiting and not self._finishing:
                self._cond.wait()
            if not self._waiting:
                return None
            self._busy = True
            texts = self._waiting.popleft()
            self._cond.notify_all()
            return texts

    def _run(self) -> None:
        try:
            while (texts := self._next()) is not None:
                started = time.perf_counter()
                self.act(texts)
                self._stats.act_ms.append((time.perf_counter() - started) * 1000)
        except Exception:
            # The scan loop sees ``failed`` and ends, and healthy() turns false, so the
            # watchdog restarts the device; what was queued stays unstored (logged).
            logger.exception("decision worker failed")
            with self._cond:
                self.failed = True
                self._cond.notify_all()
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def act(self, texts: list[str]) -> list[Decision]:
        """Decide every text of one frame; signal and store each new decision."""
        decisions = []
        for text in texts:
            decision = self._decider.decide(text)
            if decision is not None:
                self._signal(decision)
                record = self._outbox.append(decision.checkin)
                self._on_stored(record, decision)
                decisions.append(decision)
        return decisions

    def _signal(self, decision: Decision) -> None:
        # Signal first: the person at the gate must not wait for the disk.
        if decision.accepted:
            self._signals.accept()
            self._stats.accepted += 1
        else:
            self._signals.reject()
            self._stats.rejected += 1
        self._stats.scans += 1


class Scanner:
    """Reads and decodes frames on a thread until stopped or the frame source runs out.

    The texts found go to :attr:`worker`. :attr:`exhausted` is set once a file source has
    run out and everything decoded from it is stored.
    """

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
        self.stats = stats or ScanStats()
        self.worker = DecisionWorker(
            decider=decider, signals=signals, outbox=outbox, on_stored=on_stored, stats=self.stats
        )
        self._stop = threading.Event()
        self.exhausted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qrgate-scanner", daemon=True)

    def start(self) -> None:
        self.worker.start()
        self._thread.start()

    def healthy(self) -> bool:
        """Both threads run, or they ended only because a file source ran out."""
        if self.exhausted.is_set():
            return True
        return self._thread.is_alive() and self.worker.alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop after the current frame; return once everything decoded is stored."""
        self._stop.set()
        if not self._thread.is_alive():
            return
        # The scan thread finishes the worker on its way out, so this waits for the drain.
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error(
                "scan loop still running %.1f s after stop; check-ins may be late", timeout
            )

    def _run(self) -> None:
        ran_out = False
        try:
            while not self._stop.is_set() and not self.worker.failed:
                frame = self._source.read()
                if frame is None:
                    logger.info("frame source exhausted after %d frames", self.stats.frames)
                    ran_out = True
                    break
                self.process(frame)
        except Exception:
            logger.exception("scan loop failed")
            raise
        finally:
            # Whatever ended the loop, everything decoded is decided and stored first.
            if self.worker.finish() and ran_out:
                self.exhausted.set()

    def process(self, frame: GrayFrame) -> list[str]:
        """Decode one frame and hand its texts to the worker; returns the texts."""
        started = time.perf_counter()
        texts = self._decoder.decode(frame)
        self.stats.decode_ms.append((time.perf_counter() - started) * 1000)
        self.stats.frames += 1
        if texts:
            self.worker.submit(texts)
        return texts
