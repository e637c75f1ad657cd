"""The zbar decoder backend, driven through pyzbar's ctypes wrapper in raw-bytes mode.

pyzbar's own ``decode`` lets zbar guess each QR payload's character set, and zbar tries
Shift-JIS and Big5 before UTF-8: about one Vietnamese UTF-8 payload in ten came back
corrupted ("Nữ" read as "N盻ｯ"). Here zbar runs with ``ZBAR_CFG_BINARY`` (zbar >= 0.23),
hands over the payload bytes untouched, and :func:`payload_text` turns them into text.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from typing import Any

from pyzbar import wrapper

from broker.settings import DecoderConfig
from device.decoder import GrayFrame, check_gray
from device.errors import DecoderError

logger = logging.getLogger(__name__)

# Values from zbar.h; pyzbar's enums predate zbar 0.23 and lack the last two.
ZBAR_NONE = 0
ZBAR_PARTIAL = 1
ZBAR_QRCODE = 64
ZBAR_CFG_ENABLE = 0
ZBAR_CFG_BINARY = 4
ZBAR_CFG_TEST_INVERTED = 0x81
MIN_ZBAR_VERSION = (0, 23)

_Y800 = int.from_bytes(b"Y800", "little")
"""zbar's fourcc for 8-bit grayscale."""


def payload_text(data: bytes) -> str:
    """Turn raw QR payload bytes into text: UTF-8, else Shift-JIS if it looks it, else Latin-1.

    UTF-8 comes first: every credential this gate reads is UTF-8, and other bytes almost
    never form valid UTF-8 by chance. Shift-JIS is needed because raw mode returns QR
    Kanji-mode segments as Shift-JIS bytes (that mode is Shift-JIS by definition), and
    Japanese encoders put Shift-JIS in byte mode without an ECI. ISO-8859-1 is the QR
    standard's default for byte mode, and encoders such as segno use it for text it covers
    ("Lê Thành Tâm"); as "â" followed by a letter is also a valid Shift-JIS pair, Shift-JIS
    wins only on evidence, as in zxing's guess. ECI designators are not seen in raw mode:
    a payload in some other ECI charset is misread.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    sjis = _shift_jis_or_none(data)
    if sjis is not None and _looks_japanese(data, sjis):
        return sjis
    return data.decode("iso-8859-1")


def _shift_jis_or_none(data: bytes) -> str | None:
    try:
        return data.decode("shift_jis")
    except UnicodeDecodeError:
        return None


def _looks_japanese(data: bytes, sjis: str) -> bool:
    # Bytes 0x80-0x9F are C1 controls, never Latin-1 text, but common Shift-JIS lead bytes.
    if any(0x80 <= byte <= 0x9F for byte in data):
        return True
    # Three non-ASCII characters in a row (kana or kanji) are a Japanese word; in Latin-1
    # text accented letters rarely come three together.
    run = longest = 0
    for char in sjis:
        run = run + 1 if ord(char) > 0x7F else 0
        longest = max(longest, run)
    if longest >= 3:
        return True
    # Latin-1 symbols (0xA0-0xBF, × and ÷) are rare in text but are half-width kana here.
    symbols = sum(1 for byte in data if 0xA0 <= byte <= 0xBF or byte in (0xD7, 0xF7))
    return symbols * 10 >= len(data)


def _zbar_version() -> tuple[int, int]:
    # pyzbar declares zbar_version(major, minor); zbar >= 0.22 also writes a third pointer,
    # patch, so pyzbar's prototype lets zbar write through garbage. A C callee ignores
    # surplus arguments, so the three-pointer form is safe with old zbar too.
    uint_p = ctypes.POINTER(ctypes.c_uint)
    zbar_version = wrapper.zbar_function("zbar_version", ctypes.c_int, uint_p, uint_p, uint_p)
    major, minor, patch = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    zbar_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return major.value, minor.value


class ZbarDecoder:
    """Decodes QR codes with zbar, reading payload bytes raw so UTF-8 text stays exact.

    One instance owns one zbar scanner and is not thread-safe: use it from one thread.
    """

    name = "zbar"

    def __init__(self, config: DecoderConfig) -> None:
        version = _zbar_version()
        if version < MIN_ZBAR_VERSION:
            raise DecoderError(
                f"zbar {version[0]}.{version[1]} is too old: raw QR bytes "
                "(ZBAR_CFG_BINARY) need zbar >= 0.23; use the zxing decoder instead"
            )
        scanner = wrapper.zbar_image_scanner_create()
        if not scanner:
            raise DecoderError("cannot create a zbar image scanner")
        self._scanner = scanner
        self._finalizer = weakref.finalize(self, wrapper.zbar_image_scanner_destroy, scanner)
        try:
            self._configure(config)
        except DecoderError:
            self._finalizer()
            raise

    def _configure(self, config: DecoderConfig) -> None:
        settings = [
            (ZBAR_NONE, ZBAR_CFG_ENABLE, 0, "disable all symbologies"),
            (ZBAR_QRCODE, ZBAR_CFG_ENABLE, 1, "enable QR codes"),
            (ZBAR_QRCODE, ZBAR_CFG_BINARY, 1, "raw QR bytes (ZBAR_CFG_BINARY, zbar >= 0.23)"),
        ]
        if config.try_invert:
            settings.append((ZBAR_NONE, ZBAR_CFG_TEST_INVERTED, 1, "test inverted frames"))
        for symbology, cfg, value, what in settings:
            if wrapper.zbar_image_scanner_set_config(self._scanner, symbology, cfg, value) != 0:
                raise DecoderError(f"this zbar rejected the setting: {what}")

    def decode(self, gray: GrayFrame) -> list[str]:
        """Return the text of every QR code in the frame."""
        if not self._finalizer.alive:
            raise DecoderError("zbar decoder is closed")
        frame = check_gray(gray)
        height, width = frame.shape
        image = wrapper.zbar_image_create()
        if not image:
            raise DecoderError("cannot create a zbar image")
        try:
            wrapper.zbar_image_set_format(image, _Y800)
            wrapper.zbar_image_set_size(image, width, height)
            # No cleanup handler: zbar borrows the pixels, and ``frame`` outlives the scan.
            wrapper.zbar_image_set_data(image, frame.ctypes.data, frame.size, None)
            if wrapper.zbar_scan_image(self._scanner, image) < 0:
                raise DecoderError(f"zbar could not scan a {width}x{height} gray frame")
            return _symbol_texts(image)
        finally:
            wrapper.zbar_image_destroy(image)

    def close(self) -> None:
        """Free the zbar scanner now rather than when the decoder is collected."""
        self._finalizer()


def _symbol_texts(image: Any) -> list[str]:
    # Only type and data are read. pyzbar also reads the orientation, which zbar reports
    # as -1 for a merged structured-append symbol; pyzbar's unsigned ctypes signature makes
    # that 4294967295 and its enum raises ValueError, losing the whole frame.
    texts = []
    symbol = wrapper.zbar_image_first_symbol(image)
    while symbol:
        kind = symbol.contents.type
        if kind == ZBAR_QRCODE:
            data = ctypes.string_at(
                wrapper.zbar_symbol_get_data(symbol), wrapper.zbar_symbol_get_data_length(symbol)
            )
            texts.append(payload_text(data))
        elif kind == ZBAR_PARTIAL:
            logger.debug("skipped a structured-append fragment without its other parts")
        else:
            logger.debug("skipped a zbar symbol of type %d", kind)
        symbol = wrapper.zbar_symbol_next(symbol)
    return texts
