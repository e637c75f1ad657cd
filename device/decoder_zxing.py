"""The zxing-cpp decoder backend (the default)."""

from __future__ import annotations

import logging
from typing import Any

import zxingcpp

from broker.settings import DecoderConfig
from device.decoder import GrayFrame, check_gray

logger = logging.getLogger(__name__)


def _qr_formats() -> tuple[Any, frozenset[Any]]:
    """Return (the read filter, the result formats accepted) for the installed zxing-cpp.

    zxing-cpp 3.x made ``QRCode`` a family that also holds Micro QR and rMQR, and reports a
    regular code as ``QRCode``; 2.x has only the regular ``QRCode``. Gates read regular QR
    codes only, so the extra families are not searched for: less work, fewer false reads.
    """
    fmt = zxingcpp.BarcodeFormat
    models = [getattr(fmt, name) for name in ("QRCodeModel1", "QRCodeModel2") if hasattr(fmt, name)]
    if models:
        return zxingcpp.BarcodeFormats(models), frozenset([fmt.QRCode, *models])
    return fmt.QRCode, frozenset([fmt.QRCode])


class ZxingDecoder:
    """Decodes QR codes with zxing-cpp; texts are the exact payload (``TextMode.Plain``)."""

    name = "zxing"

    def __init__(self, config: DecoderConfig) -> None:
        self._try_invert = config.try_invert
        self._formats, self._accepted = _qr_formats()
        # The default text mode (HRI) renders control characters as "<GS>" and GS1 data as
        # "(01)..."; a credential must be the payload itself.
        self._text_mode = getattr(zxingcpp, "TextMode", None)
        logger.debug("zxing-cpp decoder ready, try_invert=%s", self._try_invert)

    def decode(self, gray: GrayFrame) -> list[str]:
        """Return the text of every valid QR code in the frame."""
        kwargs: dict[str, Any] = {"formats": self._formats, "try_invert": self._try_invert}
        if self._text_mode is not None:
            kwargs["text_mode"] = self._text_mode.Plain
        results = zxingcpp.read_barcodes(check_gray(gray), **kwargs)
        return [r.text for r in results if r.valid and r.format in self._accepted]
