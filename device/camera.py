"""Frame sources: where the scanner's grayscale frames come from.

Image files are read one by one, every frame in turn. Live cameras are read through
:class:`LatestFrame`, which drops stale frames rather than queueing them. Both report
``frames_per_second()`` (over the last few seconds, see :class:`FrameRate`) for health
reports; the :class:`FrameSource` protocol itself does not require it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from PIL import Image

from broker.settings import FileSourceConfig, Picamera2SourceConfig, V4L2SourceConfig
from device.decoder import GrayFrame, to_gray
from device.errors import FrameSourceError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# Health reports want the camera's current rate, not its average since boot.
FPS_WINDOW_S = 5.0


class FrameSource(Protocol):
    """A blocking supply of grayscale frames."""

    def read(self) -> GrayFrame | None:
        """Wait for the next frame; None once the source has no more."""
        ...

    def close(self) -> None:
        """Release the source; further reads return None."""
        ...


class FrameRate:
    """Frames per second over the last ``window_s`` seconds; safe to share between threads.

    The rate is (frames - 1) / (newest - oldest) over the stamps still in the window, so a
    steady stream reads true from its second frame on, and a stream that stopped reads 0
    once its stamps have aged out of the window.
    """

    def __init__(
        self, window_s: float = FPS_WINDOW_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._stamps: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        """Count one frame, now."""
        now = self._clock()
        with self._lock:
            self._stamps.append(now)
            self._forget_before(now - self._window_s)

    def per_second(self) -> float:
        """The frame rate over the window; 0.0 with fewer than two frames in it."""
        with self._lock:
            self._forget_before(self._clock() - self._window_s)
            if len(self._stamps) < 2:
                return 0.0
            span = self._stamps[-1] - self._stamps[0]
            return (len(self._stamps) - 1) / span if span > 0 else 0.0

    def _forget_before(self, cutoff: float) -> None:
        while self._stamps and self._stamps[0] < cutoff:
            self._stamps.popleft()


class ClosableSource:
    """Context-manager support for a source with a ``close`` method."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileFrameSource(ClosableSource):
    """Frames from image files, for simulation, tests and benchmarks.

    Images are decoded one at a time as they are read, so a long list costs no memory.
    """

    def __init__(self, config: FileSourceConfig) -> None:
        self._files = expand_image_paths(config.paths)
        self._loop = config.loop
        self._interval_s = config.interval_s
        # One generator for the whole run: each pass gets a new order, and the sequence of
        # orders is the same for every run with this seed.
        self._rng = random.Random(config.shuffle_seed) if config.shuffle_seed is not None else None
        self._order: list[Path] = []
        self._next = 0
        self._last_frame_at: float | None = None
        self._closed = False
        self._rate = FrameRate()
        self._start_pass()
        logger.info("file frame source: %d images, loop=%s", len(self._files), self._loop)

    def read(self) -> GrayFrame | None:
        """Load the next image, waiting out ``interval_s`` since the previous frame."""
        if self._closed:
            return None
        if self._next >= len(self._order):
            if not self._loop:
                return None
            self._start_pass()
        path = self._order[self._next]
        self._next += 1
        frame = load_gray(path)
        self._pace()
        self._rate.tick()
        return frame

    def frames_per_second(self) -> float:
        """Frames delivered per second over the last few seconds."""
        return self._rate.per_second()

    def close(self) -> None:
        """Stop reading; later reads return None."""
        self._closed = True

    def _start_pass(self) -> None:
        self._order = list(self._files)
        if self._rng is not None:
            self._rng.shuffle(self._order)
        self._next = 0

    def _pace(self) -> None:
        if self._last_frame_at is not None and self._interval_s > 0:
            due = self._last_frame_at + self._interval_s
            # Loop because a sleep may end a hair early on some platforms.
            while (remaining := due - time.monotonic()) > 0:
                time.sleep(remaining)
        self._last_frame_at = time.monotonic()


def expand_image_paths(paths: list[Path]) -> list[Path]:
    """List the image files named by ``paths``; a directory gives its images in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            images = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            files.extend(sorted((p for p in images if p.is_file()), key=lambda p: p.name))
        elif path.is_file():
            files.append(path)
        else:
            raise FrameSourceError(f"frame source path not found: {path}")
    if not files:
        names = ", ".join(str(p) for p in paths)
        raise FrameSourceError(f"no image files in frame source paths: {names}")
    return files


def load_gray(path: Path) -> GrayFrame:
    """Read one image file as an 8-bit grayscale frame."""
    try:
        with Image.open(path) as image:
            return to_gray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FrameSourceError(f"cannot read image {path}: {exc}") from exc


class LatestFrame(ClosableSource):
    """A live source read continuously on its own thread; ``read`` gets the newest frame.

    A camera keeps filming while a frame is decoded. Queued frames would show the gate
    as it was, not as it is, and the lag would grow with every slow decode; so a grabber
    thread keeps only the newest frame in a one-slot mailbox, and ``read`` returns a frame
    newer than the one it returned before. Frames overwritten unread are counted in
    ``dropped``.

    The wrapped source belongs to the grabber thread from here on: the thread closes it
    when it ends. When the source fails, frames grabbed before the failure are still
    returned, then ``read`` raises :class:`FrameSourceError`; when it runs out, ``read``
    returns None.
    """

    def __init__(self, inner: FrameSource, *, join_timeout_s: float = 5.0) -> None:
        self._inner = inner
        self._join_timeout_s = join_timeout_s
        self._ready = threading.Condition()
        self._frame: GrayFrame | None = None
        self._ended = False
        self._error: Exception | None = None
        self._closed = False
        self.dropped = 0
        self.grabbed = 0
        self._rate = FrameRate()
        self._thread = threading.Thread(target=self._grab, name="qrgate-grabber", daemon=True)
        self._thread.start()

    def read(self) -> GrayFrame | None:
        """Wait for a frame newer than the last one returned; None once the source ended."""
        with self._ready:
            self._ready.wait_for(self._has_news)
            if self._closed:
                return None
            frame, self._frame = self._frame, None
            if frame is not None:
                return frame
            if self._error is not None:
                raise FrameSourceError(f"camera failed: {self._error}") from self._error
            return None

    def frames_per_second(self) -> float:
        """Frames the camera delivered per second over the last few seconds."""
        return self._rate.per_second()

    def close(self) -> None:
        """Stop the grabber thread, which closes the wrapped source; later reads return None."""
        with self._ready:
            self._closed = True
            self._frame = None
            self._ready.notify_all()
        self._thread.join(self._join_timeout_s)
        if self._thread.is_alive():
            # The inner read is stuck (a hung camera); its thread closes it if it returns.
            logger.warning(
                "frame grabber still in a camera read after %.1f s", self._join_timeout_s
            )

    def _has_news(self) -> bool:
        return self._closed or self._frame is not None or self._ended

    def _grab(self) -> None:
        try:
            while self._offer(self._inner.read()):
                pass
        except Exception as exc:
            logger.exception("frame grabber failed")
            with self._ready:
                self._error = exc
                self._ended = True
                self._ready.notify_all()
        finally:
            self._close_inner()

    def _offer(self, frame: GrayFrame | None) -> bool:
        """Put ``frame`` in the mailbox; False when grabbing should end."""
        with self._ready:
            if frame is None:
                self._ended = True
            elif not self._closed:
                if self._frame is not None:
                    self.dropped += 1
                self.grabbed += 1
                self._frame = frame
                self._rate.tick()
            self._ready.notify_all()
            return not (self._ended or self._closed)

    def _close_inner(self) -> None:
        try:
            self._inner.close()
        except Exception:
            logger.exception("closing the frame source failed")


def make_frame_source(
    config: FileSourceConfig | Picamera2SourceConfig | V4L2SourceConfig,
) -> FrameSource:
    """Open the frame source the config names; camera libraries are imported only for cameras.

    A file source gives every frame, so a simulation sees each one; a camera is wrapped in
    :class:`LatestFrame`, so the scanner always decodes what the camera sees now.
    """
    if isinstance(config, FileSourceConfig):
        return FileFrameSource(config)
    # Lazy: picamera2 exists only on the Pi, OpenCV only with the webcam extra, and the
    # file source must work everywhere.
    if isinstance(config, V4L2SourceConfig):
        from device.camera_v4l2 import V4L2FrameSource

        return LatestFrame(V4L2FrameSource(config))
    from device.camera_pi import Picamera2FrameSource

    return LatestFrame(Picamera2FrameSource(config))
