"""The Raspberry Pi camera frame source, through picamera2 (on the Pi only)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from broker.settings import Picamera2SourceConfig
from device.camera import ClosableSource
from device.decoder import GrayFrame
from device.errors import FrameSourceError

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `sudo apt install python3-picamera2` and make the venv with "
    "`python3 -m venv --system-site-packages` so it can see the system package"
)


class Picamera2FrameSource(ClosableSource):
    """Grayscale frames from a Pi camera: the luma (Y) plane of a YUV420 video stream.

    The Y plane is the grayscale image already, so no colour conversion runs per frame.
    """

    def __init__(self, config: Picamera2SourceConfig) -> None:
        try:
            from libcamera import controls
            from picamera2 import Picamera2
        except ImportError as exc:
            raise FrameSourceError(f"picamera2 is not available ({exc}); {INSTALL_HINT}") from exc
        self._camera: Any = None
        try:
            camera = Picamera2(config.camera_index)
            self._camera = camera
            self._width, self._height = _configure(camera, config, controls)
            camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            self.close()
            raise FrameSourceError(f"cannot open camera {config.camera_index}: {exc}") from exc
        logger.info("camera %d streaming %dx%d", config.camera_index, self._width, self._height)

    def read(self) -> GrayFrame | None:
        """Wait for the next frame and return its Y plane."""
        if self._camera is None:
            return None
        try:
            yuv = self._camera.capture_array("main")
        except RuntimeError as exc:
            raise FrameSourceError(f"camera capture failed: {exc}") from exc
        # A YUV420 array has height * 1.5 rows (Y, then U and V) and a stride that may pad
        # each row; the first ``height`` rows cut to ``width`` are the luma plane.
        luma: GrayFrame = np.ascontiguousarray(yuv[: self._height, : self._width])
        return luma

    def close(self) -> None:
        """Stop the stream and release the camera; later reads return None."""
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()


def _configure(camera: Any, config: Picamera2SourceConfig, controls: Any) -> tuple[int, int]:
    video = camera.create_video_configuration(
        main={"size": (config.width, config.height), "format": "YUV420"},
        controls=_controls(camera, config, controls),
    )
    camera.configure(video)
    # libcamera may adjust the size it was asked for; slice frames by what it granted.
    width, height = camera.stream_configuration("main")["size"]
    return int(width), int(height)


def _controls(camera: Any, config: Picamera2SourceConfig, controls: Any) -> dict[str, Any]:
    """The libcamera controls the config asks for, of those this camera has."""
    available = camera.camera_controls
    settings: dict[str, Any] = {}
    if config.autofocus and "AfMode" in available:
        # Credentials are held at varying distances; fixed focus blurs the near ones.
        settings["AfMode"] = controls.AfModeEnum.Continuous
    if config.exposure_value != 0:
        if "ExposureValue" in available:
            settings["ExposureValue"] = config.exposure_value
        else:
            logger.warning("camera has no ExposureValue control; exposure_value ignored")
    return settings
