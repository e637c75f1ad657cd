"""Frame sources: where the scanner's grayscale frames come from."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from PIL import Image

from broker.settings import FileSourceConfig, Picamera2SourceConfig
from device.decoder import GrayFrame, to_gray
from device.errors import FrameSourceError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


class FrameSource(Protocol):
    """A blocking supply of grayscale frames."""

    def read(self) -> GrayFrame | None:
        """Wait for the next frame; None once the source has no more."""
        ...

    def close(self) -> None:
        """Release the source; further reads return None."""
        ...


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
        return frame

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


def make_frame_source(config: FileSourceConfig | Picamera2SourceConfig) -> FrameSource:
    """Open the frame source the config names; picamera2 is imported only for the camera."""
    if isinstance(config, FileSourceConfig):
        return FileFrameSource(config)
    # Lazy: picamera2 exists only on the Pi, and the file source must work everywhere.
    from device.camera_pi import Picamera2FrameSource

    return Picamera2FrameSource(config)
