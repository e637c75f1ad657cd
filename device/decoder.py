"""The QR decoder interface and the factory that picks a backend from the config."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from broker.settings import DecoderConfig
from device.errors import DecoderError

logger = logging.getLogger(__name__)

GrayFrame = npt.NDArray[np.uint8]
"""A grayscale frame: 2-D, uint8, C-contiguous, one byte per pixel."""


class Decoder(Protocol):
    """Finds the QR codes in a grayscale frame and returns their texts."""

    name: str

    def decode(self, gray: GrayFrame) -> list[str]:
        """Return the exact text of every QR code found; [] when there is none."""
        ...


def make_decoder(config: DecoderConfig) -> Decoder:
    """Build the backend named by ``config.type``; its library is imported only here."""
    # Lazy imports: a gate running zxing must not need libzbar installed, and vice versa.
    try:
        if config.type == "zxing":
            from device.decoder_zxing import ZxingDecoder

            return ZxingDecoder(config)
        if config.type == "zbar":
            from device.decoder_zbar import ZbarDecoder

            return ZbarDecoder(config)
    except ImportError as exc:
        hint = "pip install zxing-cpp" if config.type == "zxing" else "apt install libzbar0"
        raise DecoderError(f"{config.type} decoder unavailable ({exc}); try: {hint}") from exc
    raise DecoderError(f"unknown decoder type {config.type!r}")


def to_gray(image: Image.Image) -> GrayFrame:
    """Convert a PIL image to a writable, C-contiguous 8-bit grayscale array."""
    gray = image if image.mode == "L" else image.convert("L")
    # np.array copies: np.asarray would give a read-only view of Pillow's bytes.
    return np.array(gray, dtype=np.uint8)


def check_gray(gray: GrayFrame) -> GrayFrame:
    """Reject frames that break the decoder contract; return a C-contiguous view."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise DecoderError(
            f"decoder needs a 2-D uint8 frame, got shape {gray.shape} dtype {gray.dtype}"
        )
    return np.ascontiguousarray(gray)
