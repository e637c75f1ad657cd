"""The QR decoders on real photographs and on Vietnamese UTF-8 codes, with both backends."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import segno
from PIL import Image
from pyzbar import wrapper as zbar_wrapper

from broker.settings import DecoderConfig
from device import decoder_zbar
from device.decoder import Decoder, GrayFrame, make_decoder, to_gray
from device.decoder_zbar import ZbarDecoder, payload_text
from device.errors import DecoderError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "qr-photos"
QR_SETS = ("qrcode-1", "qrcode-2", "qrcode-3", "qrcode-4")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}

# zxing-cpp's own test runner at 0°, as given in the corpus README.
REFERENCE_COUNTS = {"qrcode-1": 8, "qrcode-2": 53, "qrcode-3": 18, "qrcode-4": 15}
REFERENCE_TOTAL = 94

# Regression floors measured with zbar 0.23.92: 78 of 106 (80 with try_invert). pyzbar's
# own decode, guessing charsets, read 69, nine of them with the wrong text.
ZBAR_MIN_TOTAL = 76
# zxing without try_invert misses the three light-on-dark codes of qrcode-2 (measured 91).
ZXING_NO_INVERT_MIN_TOTAL = 91

# qrcode-2/16.webp is a "double QR": one code drawn inside another. Its .txt names the inner
# code only, so the outer code's text, read correctly, is not a wrong read.
SECOND_CODES = {
    ("qrcode-2", "16.webp"): "[外側QRコード]\r\n \r\n*ﾀﾞﾌﾞﾙQR*\r\nhttp://d-qr.net/ex/",
}

CCCD_EXAMPLE = (
    "079203001234|025123456|Nguyễn Thị Nữ|01012003|Nữ|"
    "Số 12, đường Lê Lợi, Phường Bến Nghé, Quận 1, TP. Hồ Chí Minh|15062021"
)


@dataclass
class CorpusRun:
    """What one decoder made of the corpus."""

    found: dict[str, int] = field(default_factory=dict)
    wrong: list[tuple[str, str, str]] = field(default_factory=list)
    false_positives: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.found.values())


def _images(set_dir: Path) -> Iterator[Path]:
    return (p for p in sorted(set_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)


def _expected(image: Path) -> str:
    # Bytes, not read_text: universal newlines would turn the payloads' "\r\n" into "\n".
    # Trailing newlines are part of the payloads, so nothing is stripped.
    return image.with_suffix(".txt").read_bytes().decode("utf-8")


def _decode_file(decoder: Decoder, image: Path) -> list[str]:
    with Image.open(image) as opened:
        return decoder.decode(to_gray(opened))


def _run_corpus(decoder: Decoder) -> CorpusRun:
    run = CorpusRun()
    for set_name in QR_SETS:
        run.found[set_name] = 0
        for image in _images(CORPUS / set_name):
            expected = _expected(image)
            texts = _decode_file(decoder, image)
            run.found[set_name] += expected in texts
            allowed = {expected, SECOND_CODES.get((set_name, image.name), expected)}
            run.wrong += [
                (f"{set_name}/{image.name}", t, expected) for t in texts if t not in allowed
            ]
    for image in _images(CORPUS / "falsepositives-1"):
        texts = _decode_file(decoder, image)
        if texts:
            run.false_positives.append((image.name, texts))
    return run


_RUNS: dict[tuple[str, bool], CorpusRun] = {}


@pytest.fixture(
    params=[("zxing", False), ("zxing", True), ("zbar", False), ("zbar", True)],
    ids=["zxing", "zxing-invert", "zbar", "zbar-invert"],
)
def corpus_run(request: pytest.FixtureRequest) -> CorpusRun:
    """Each backend and try_invert setting over the whole corpus."""
    backend, try_invert = request.param
    return _run_for(backend, try_invert)


def _run_for(backend: str, try_invert: bool) -> CorpusRun:
    """Decode the corpus once per session for this backend and setting."""
    if not CORPUS.is_dir():
        pytest.skip(f"QR photo corpus not found at {CORPUS} (it lives beside the project)")
    key = (backend, try_invert)
    if key not in _RUNS:
        _RUNS[key] = _run_corpus(make_decoder(DecoderConfig(type=backend, try_invert=try_invert)))
    return _RUNS[key]


def test_corpus_reads_no_wrong_text(corpus_run: CorpusRun) -> None:
    assert corpus_run.wrong == []


def test_corpus_finds_nothing_in_false_positive_images(corpus_run: CorpusRun) -> None:
    assert corpus_run.false_positives == []


def test_zxing_meets_the_reference_counts() -> None:
    run = _run_for("zxing", try_invert=True)
    for set_name, reference in REFERENCE_COUNTS.items():
        assert run.found[set_name] >= reference, f"{set_name}: {run.found}"
    assert run.total >= REFERENCE_TOTAL


def test_zxing_default_config_recall() -> None:
    # try_invert is off by default on the gate; only light-on-dark codes should be lost.
    run = _run_for("zxing", try_invert=False)
    for set_name in ("qrcode-1", "qrcode-3", "qrcode-4"):
        assert run.found[set_name] >= REFERENCE_COUNTS[set_name], f"{set_name}: {run.found}"
    assert run.total >= ZXING_NO_INVERT_MIN_TOTAL


@pytest.mark.parametrize("try_invert", [False, True])
def test_zbar_recall_floor(try_invert: bool) -> None:
    run = _run_for("zbar", try_invert=try_invert)
    assert run.found["qrcode-1"] == 8
    assert run.total >= ZBAR_MIN_TOTAL, run.found


# --- Vietnamese UTF-8 payloads rendered with segno ---------------------------------------

FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng"]
FAMILY += ["Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"]
MIDDLE = ["Thị", "Văn", "Hữu", "Đức", "Ngọc", "Thanh", "Minh", "Quốc", "Thuỳ", "Kim", "Thế"]
GIVEN = ["Nữ", "Anh", "Bảo", "Châu", "Dũng", "Hạnh", "Hiếu", "Huệ", "Khải", "Lộc", "Mỹ"]
GIVEN += ["Nguyệt", "Phượng", "Quỳnh", "Sơn", "Thảo", "Tuấn", "Uyên", "Việt", "Xuân", "Yến"]
GIVEN += ["Ỷ", "Tâm", "Thành", "Ánh", "Đạt"]
STREETS = ["Lê Lợi", "Nguyễn Huệ", "Trần Hưng Đạo", "Hai Bà Trưng", "Điện Biên Phủ"]
STREETS += ["Võ Thị Sáu", "Lý Thường Kiệt", "Phạm Ngũ Lão", "Ỷ Lan", "Đường 3 Tháng 2"]
PLACES = [
    "Phường Bến Nghé, Quận 1, TP. Hồ Chí Minh",
    "Phường Hàng Bạc, Quận Hoàn Kiếm, TP. Hà Nội",
    "Phường Thạch Thang, Quận Hải Châu, TP. Đà Nẵng",
    "Xã Ẳng Nưa, Huyện Mường Ảng, Tỉnh Điện Biên",
    "Phường Vĩnh Ninh, TP. Huế, Tỉnh Thừa Thiên Huế",
    "Xã Ea Kao, TP. Buôn Ma Thuột, Tỉnh Đắk Lắk",
    "Phường Tân An, Quận Ninh Kiều, TP. Cần Thơ",
    "Thị trấn Phố Ràng, Huyện Bảo Yên, Tỉnh Lào Cai",
]


def _cccd(rng: random.Random) -> str:
    name = f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}"
    address = f"Số {rng.randint(1, 300)}, đường {rng.choice(STREETS)}, {rng.choice(PLACES)}"
    fields = [
        f"{rng.randrange(10**12):012d}",
        f"{rng.randrange(10**9):09d}",
        name,
        f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(1940, 2008)}",
        rng.choice(["Nam", "Nữ"]),
        address,
        f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(2016, 2024)}",
    ]
    return "|".join(fields)


def _vietnamese_texts() -> list[str]:
    rng = random.Random(2003)
    names = [f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}" for _ in range(30)]
    addresses = [f"Số {rng.randint(1, 99)} {rng.choice(STREETS)}, {p}" for p in PLACES]
    # Short names that fit ISO-8859-1, which segno then uses instead of UTF-8.
    latin1 = ["Tâm", "Thành", "Lê Thành Tâm", "Hà", "Lý Thái Tô"]
    cccds = [_cccd(rng) for _ in range(30)]
    return [CCCD_EXAMPLE, "NGUYỄN THỊ NỮ", *names, *addresses, *latin1, *cccds]


VIETNAMESE = _vietnamese_texts()


def _render(text: str, scale: int = 4, mode: str | None = None) -> GrayFrame:
    qr = segno.make(text, error="m", micro=False, mode=mode)
    assert mode is None or qr.mode == mode
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=4)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return to_gray(image)


def _camera_frame(code: GrayFrame, x: int, y: int) -> GrayFrame:
    """A 640x480 frame of noisy background with the code pasted at (x, y)."""
    rng = np.random.default_rng(x * 1000 + y)
    frame = rng.integers(40, 200, size=(480, 640), dtype=np.uint8)
    height, width = code.shape
    frame[y : y + height, x : x + width] = code
    return frame


@pytest.fixture(params=["zxing", "zbar"])
def decoder(request: pytest.FixtureRequest) -> Decoder:
    return make_decoder(DecoderConfig(type=request.param))


def test_vietnamese_set_is_broad() -> None:
    assert len(set(VIETNAMESE)) >= 60
    assert set("ữệộảỳĐđẲỶ") <= set("".join(VIETNAMESE))
    # Both byte-mode encodings segno picks must be exercised: ISO-8859-1 and UTF-8.
    fits_latin1 = [t for t in VIETNAMESE if _fits_latin1(t)]
    assert 0 < len(fits_latin1) < len(VIETNAMESE)


def _fits_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def test_vietnamese_codes_read_back_exactly(decoder: Decoder) -> None:
    misread = {}
    for text in VIETNAMESE:
        texts = decoder.decode(_render(text))
        if texts != [text]:
            misread[text] = texts
    assert misread == {}


@pytest.mark.parametrize("corner", ["top-left", "centre", "bottom-right"])
def test_codes_in_camera_sized_frames(decoder: Decoder, corner: str) -> None:
    for text in [CCCD_EXAMPLE, *VIETNAMESE[-5:]]:
        code = _render(text, scale=3)
        height, width = code.shape
        assert width < 640 and height < 480
        x, y = _offset(corner, width, height)
        assert decoder.decode(_camera_frame(code, x, y)) == [text]


def _offset(corner: str, width: int, height: int) -> tuple[int, int]:
    if corner == "top-left":
        return 7, 5
    if corner == "centre":
        return (640 - width) // 2, (480 - height) // 2
    return 640 - width - 9, 480 - height - 3


def test_kanji_mode_code_reads_back(decoder: Decoder) -> None:
    # Kanji mode is Shift-JIS by definition: zbar's raw bytes must be read as such.
    assert decoder.decode(_render("測試テスト", mode="kanji")) == ["測試テスト"]


def test_frames_without_codes_give_nothing(decoder: Decoder) -> None:
    blank = np.full((480, 640), 180, dtype=np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, size=(480, 640), dtype=np.uint8)
    assert decoder.decode(blank) == []
    assert decoder.decode(noise) == []


def test_decoder_rejects_frames_that_are_not_gray(decoder: Decoder) -> None:
    with pytest.raises(DecoderError, match="2-D uint8"):
        decoder.decode(np.zeros((48, 64, 3), dtype=np.uint8))


def test_non_contiguous_frame_is_read(decoder: Decoder) -> None:
    padded = np.full((480, 700), 255, dtype=np.uint8)
    code = _render(CCCD_EXAMPLE, scale=3)
    padded[10 : 10 + code.shape[0], 10 : 10 + code.shape[1]] = code
    view = padded[:, :640]
    assert not view.flags.c_contiguous
    assert decoder.decode(view) == [CCCD_EXAMPLE]


def test_make_decoder_names_the_backend() -> None:
    assert make_decoder(DecoderConfig(type="zxing")).name == "zxing"
    assert make_decoder(DecoderConfig(type="zbar")).name == "zbar"


@pytest.mark.parametrize(("backend", "other"), [("zxing", "pyzbar"), ("zbar", "zxingcpp")])
def test_backend_library_is_imported_only_when_chosen(backend: str, other: str) -> None:
    script = (
        "import sys\n"
        "from broker.settings import DecoderConfig\n"
        "from device.decoder import make_decoder\n"
        "assert 'zxingcpp' not in sys.modules and 'pyzbar' not in sys.modules\n"
        f"make_decoder(DecoderConfig(type={backend!r}))\n"
        f"assert {other!r} not in sys.modules, sorted(sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- zbar specifics -----------------------------------------------------------------------


def _side_by_side(codes: list[GrayFrame]) -> GrayFrame:
    height = max(c.shape[0] for c in codes)
    frame = np.full((height, sum(c.shape[1] for c in codes) + 40 * len(codes)), 255, np.uint8)
    x = 0
    for code in codes:
        frame[: code.shape[0], x : x + code.shape[1]] = code
        x += code.shape[1] + 40
    return frame


def _sequence_codes(text: str) -> list[GrayFrame]:
    codes = []
    for qr in segno.make_sequence(text, symbol_count=2, error="l"):
        buffer = io.BytesIO()
        qr.save(buffer, kind="png", scale=4, border=4)
        buffer.seek(0)
        with Image.open(buffer) as image:
            codes.append(to_gray(image))
    return codes


def test_zbar_joins_a_structured_append_sequence() -> None:
    # pyzbar's own decode raises ValueError on this frame (see _symbol_texts).
    text = "CHECKIN-" * 40
    zbar = make_decoder(DecoderConfig(type="zbar"))
    assert zbar.decode(_side_by_side(_sequence_codes(text))) == [text]


def test_zbar_skips_a_lone_structured_append_fragment() -> None:
    zbar = make_decoder(DecoderConfig(type="zbar"))
    assert zbar.decode(_sequence_codes("CHECKIN-" * 40)[0]) == []


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ("Nguyễn Thị Nữ".encode(), "Nguyễn Thị Nữ"),
        ("Thành".encode("latin-1"), "Thành"),  # "à" + "n" is also a valid Shift-JIS pair
        ("Lê Thành Tâm".encode("latin-1"), "Lê Thành Tâm"),
        ("Google モバイル".encode("shift_jis"), "Google モバイル"),
        ("ﾃﾞｻﾞｲﾝQR".encode("shift_jis"), "ﾃﾞｻﾞｲﾝQR"),
        (b"caf\xe9", "café"),
        (b"", ""),
    ],
)
def test_payload_text_picks_the_charset(data: bytes, text: str) -> None:
    assert payload_text(data) == text


def test_zbar_refuses_a_zbar_without_binary_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    real_set_config = zbar_wrapper.zbar_image_scanner_set_config

    def reject_binary(scanner: object, symbology: int, cfg: int, value: int) -> int:
        if cfg == decoder_zbar.ZBAR_CFG_BINARY:
            return 1  # what zbar < 0.23 answers: the setting is unknown there
        return int(real_set_config(scanner, symbology, cfg, value))

    monkeypatch.setattr(zbar_wrapper, "zbar_image_scanner_set_config", reject_binary)
    with pytest.raises(DecoderError, match="ZBAR_CFG_BINARY"):
        ZbarDecoder(DecoderConfig(type="zbar"))


def test_zbar_refuses_an_old_zbar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoder_zbar, "_zbar_version", lambda: (0, 10))
    with pytest.raises(DecoderError, match=r"0\.10 is too old"):
        ZbarDecoder(DecoderConfig(type="zbar"))


def test_zbar_decode_after_close_raises() -> None:
    zbar = ZbarDecoder(DecoderConfig(type="zbar"))
    assert zbar.decode(_render(CCCD_EXAMPLE)) == [CCCD_EXAMPLE]
    zbar.close()
    zbar.close()
    with pytest.raises(DecoderError, match="closed"):
        zbar.decode(_render(CCCD_EXAMPLE))
