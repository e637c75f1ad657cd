"""A USB webcam frame source, through OpenCV's V4L2 backend (the optional ``webcam`` extra)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from broker.settings import V4L2SourceConfig
from device.camera import ClosableSource
from device.decoder import GrayFrame
from device.errors import FrameSourceError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'qrgate[webcam]'"

# A webcam may drop the odd frame (USB bandwidth, exposure change); several failures in a
# row mean it was unplugged or hung.
MAX_FAILED_READS = 5
RETRY_PAUSE_S = 0.05


def device_argument(device: str) -> int | str:
    """What ``cv2.VideoCapture`` takes for ``device``: an index for digits, else a path."""
    text = device.strip()
    return int(text) if text.isdigit() else text


class V4L2FrameSource(ClosableSource):
    """Grayscale frames from a V4L2 webcam (``/dev/videoN`` or an index), via OpenCV.

    USB webcams deliver YUYV or MJPEG, which OpenCV hands over as BGR, so each frame is
    converted to gray here; a frame that is already single-channel is used as it is.
    """

    def __init__(self, config: V4L2SourceConfig) -> None:
        cv2 = _import_cv2()
        self._cv2 = cv2
        self._name = config.device
        capture = cv2.VideoCapture(device_argument(config.device), cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise FrameSourceError(f"cannot open video device {config.device}")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        # The driver's queue would hand out frames seconds old after a slow decode.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture: Any = capture
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        logger.info("webcam %s streaming %dx%d", config.device, width, height)

    def read(self) -> GrayFrame | None:
        """Wait for the next frame and return it in gray; raises when the camera stops."""
        for _ in range(MAX_FAILED_READS):
            if self._capture is None:
                return None
            ok, frame = self._capture.read()
            if ok and frame is not None:
                return self._gray(frame)
            time.sleep(RETRY_PAUSE_S)
        raise FrameSourceError(
            f"video device {self._name} gave no frame in {MAX_FAILED_READS} reads"
        )

    def close(self) -> None:
        """Release the device; later reads return None."""
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def _gray(self, frame: Any) -> GrayFrame:
        channels = 1 if frame.ndim == 2 else frame.shape[2]
        if channels == 3:
            frame = self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2GRAY)
        elif channels in (1, 2):
            # Single channel is gray already; two is raw YUYV, whose first channel is luma.
            frame = frame.reshape(frame.shape[0], frame.shape[1], -1)[:, :, 0]
        else:
            raise FrameSourceError(f"video device {self._name} gave frames of shape {frame.shape}")
        gray: GrayFrame = np.ascontiguousarray(frame, dtype=np.uint8)
        return gray


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise FrameSourceError(f"OpenCV is not available ({exc}); {INSTALL_HINT}") from exc
    return cv2
