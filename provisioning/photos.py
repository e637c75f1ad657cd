"""Synthetic camera photos of QR codes, for tests and the decode benchmark.

``people.gate_frame`` pastes a flat, upright code on noise. A gate camera sees more:
a card tilted towards it in front of a cluttered room, soft focus, uneven light, sensor
noise and compression. These photos add all of that, scaled by one ``difficulty`` knob
(0 easy, 1 hard), and every draw comes from the caller's ``random.Random``, so a seed
gives the same photo on every run.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import segno
from PIL import Image, ImageDraw, ImageFilter

from provisioning.people import qr_modules

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
Point = tuple[float, float]

# Focal length in frame widths: about a 53° horizontal field of view, a common webcam's.
FOCAL_WIDTHS = 1.0
MAX_TILT_DEG = 25.0
MAX_ROLL_DEG = 40.0
MAX_BLUR_RADIUS = 1.5
QUIET_ZONE = 4
# The card is drawn at twice the frame's resolution and shrunk: pixel edges then average
# like a sensor's, which PIL's transform alone does not do.
SUPERSAMPLE = 2
# Space kept between the code and the frame's edge.
MARGIN_PX = 4.0
FALSE_POSITIVE_DIR = "falsepositives"


def synthetic_photo(
    text: str | None,
    rng: random.Random,
    *,
    size: tuple[int, int] = (640, 480),
    difficulty: float = 0.5,
    jpeg_chance: float = 0.5,
) -> Image.Image:
    """A grayscale (mode "L") camera photo of the QR code of ``text``; None: clutter only.

    ``jpeg_chance`` is the probability that the photo goes through JPEG compression.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be within 0..1, got {difficulty}")
    noise_rng = np.random.default_rng(rng.randrange(2**32))
    frame = background(rng, size)
    if text is not None:
        place_card(frame, text, rng, difficulty)
    pixels = illuminate(np.asarray(frame, dtype=np.float32), rng, difficulty)
    frame = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    radius = rng.uniform(0.2, max(0.2, MAX_BLUR_RADIUS * difficulty))
    frame = frame.filter(ImageFilter.GaussianBlur(radius))
    frame = add_sensor_noise(frame, noise_rng, difficulty)
    if rng.random() < jpeg_chance:
        frame = jpeg_roundtrip(frame, quality=rng.randint(60, 90))
    return frame


def write_photo_set(
    directory: Path, texts: Sequence[str | None], seed: int, difficulty: float
) -> list[Path]:
    """Write one PNG photo per text, in order, laid out like the QR photo corpus.

    A photo of a code is ``directory/photo-NNNNN.png`` with its exact text, UTF-8 and no
    newline added, in ``photo-NNNNN.txt`` beside it; a photo without a code (None) goes to
    ``directory/falsepositives/`` with no text file. Returns the PNG paths.
    """
    rng = random.Random(seed)
    (directory / FALSE_POSITIVE_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        folder = directory if text is not None else directory / FALSE_POSITIVE_DIR
        path = folder / f"photo-{i:05d}.png"
        # Fast compression: noisy photos barely shrink at higher levels, which cost much more.
        synthetic_photo(text, rng, difficulty=difficulty).save(path, compress_level=1)
        if text is not None:
            # Bytes: write_text would turn "\n" into the platform's line ending.
            path.with_suffix(".txt").write_bytes(text.encode("utf-8"))
        paths.append(path)
    logger.info("wrote %d synthetic photos to %s", len(paths), directory)
    return paths


# --- the scene -------------------------------------------------------------------------


def background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A room behind the card: a lit gradient with shapes, lines and printed text on it."""
    width, height = size
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
    ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(angle)
    pixels = rng.uniform(70, 170) + rng.uniform(-90, 90) * (xs + ys) / math.hypot(width, height)
    frame = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    draw = ImageDraw.Draw(frame)
    for _ in range(rng.randint(12, 30)):
        clutter = rng.choice((_rectangle, _ellipse, _line, _text_block))
        clutter(draw, rng, size)
    return frame


def _box(rng: random.Random, size: tuple[int, int], largest: float) -> list[float]:
    width, height = size
    w, h = rng.uniform(8, largest * width), rng.uniform(8, largest * height)
    x, y = rng.uniform(-w / 2, width - w / 2), rng.uniform(-h / 2, height - h / 2)
    return [x, y, x + w, y + h]


def _rectangle(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int]) -> None:
    draw.rectangle(_box(rng, size, 0.4), fill=rng.randint(0, 255))


def _ellipse(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int]) -> None:
    draw.ellipse(_box(rng, size, 0.3), fill=rng.randint(0, 255))


def _line(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = _box(rng, size, 0.8)
    draw.line([x0, y0, x1, y1], fill=rng.randint(0, 255), width=rng.randint(1, 6))


def _text_block(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int]) -> None:
    """A notice or a label: lines of word-like dark strokes on a light patch."""
    x0, y0, x1, y1 = _box(rng, size, 0.35)
    draw.rectangle([x0, y0, x1, y1], fill=rng.randint(170, 250))
    area = (x0 + 4, y0 + 4, x1 - 4, y1 - 4)
    _write_lines(draw, rng, area, ink=rng.randint(0, 90), glyph=rng.uniform(3, 9))


def _write_lines(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    area: tuple[float, float, float, float],
    *,
    ink: int,
    glyph: float,
) -> None:
    left, top, right, bottom = area
    y = top
    while y + glyph <= bottom:
        x = left
        while x < right:
            word = glyph * rng.uniform(1.5, 6)
            draw.rectangle([x, y, min(x + word, right), y + glyph], fill=ink)
            x += word + glyph * rng.uniform(0.6, 1.2)
        y += glyph * rng.uniform(1.6, 2.2)


# --- the card and its pose -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Card:
    """The card held up to the camera, drawn flat; ``code_box`` is the code's square."""

    image: Image.Image
    code_box: tuple[float, float, float, float]
    module_px: float
    """How wide a module should look in the frame when the card faces the camera."""
    scale: int
    """How wide a module is in ``image``."""


def make_card(text: str, rng: random.Random, difficulty: float, frame_side: int) -> Card:
    """The code on a card with printed lines beside it, at the size it should appear."""
    code = segno.make(text, error="m", micro=False)
    modules = code.symbol_size(scale=1, border=QUIET_ZONE)[0]
    # Smaller codes are harder: a card held farther away, or a small code on an ID card.
    fraction = rng.uniform(0.5, 0.8) * (1 - 0.45 * difficulty)
    module_px = fraction * frame_side / modules
    scale = max(2, round(module_px * SUPERSAMPLE))
    ink = rng.randint(0, int(20 + 60 * difficulty))
    paper = rng.randint(int(200 - 50 * difficulty), 250)
    dark = qr_modules(code, scale=scale, border=QUIET_ZONE) == 0
    code_image = Image.fromarray(np.where(dark, ink, paper).astype(np.uint8), "L")
    side = code_image.width
    width, height = round(side * rng.uniform(1.0, 1.8)), round(side * rng.uniform(1.0, 1.15))
    image = Image.new("L", (width, height), paper)
    x = rng.choice((0, width - side))
    y = round(rng.uniform(0, height - side))
    image.paste(code_image, (x, y))
    draw = ImageDraw.Draw(image)
    text_left = side + 2 * scale if x == 0 else 2 * scale
    text_right = width - 2 * scale if x == 0 else width - side - 2 * scale
    if text_right - text_left > 4 * scale:
        area = (text_left, 2.0 * scale, text_right, height - 2.0 * scale)
        # Printed text about as tall as a module, like an ID card's.
        _write_lines(draw, rng, area, ink=ink, glyph=scale * rng.uniform(0.8, 1.6))
    return Card(image, (x, y, x + side, y + side), module_px, scale)


def place_card(frame: Image.Image, text: str, rng: random.Random, difficulty: float) -> None:
    """Draw the card of ``text`` into ``frame``, tilted and turned, the code fully in view."""
    card = make_card(text, rng, difficulty, min(frame.size))
    card_quad = project_card(card, rng, difficulty, frame.size)
    # Only the card's bounding box is warped: the transform is most of a photo's cost.
    left, top, right, bottom = _bounds(card_quad, frame.size)
    if right <= left or bottom <= top:
        return
    big = ((right - left) * SUPERSAMPLE, (bottom - top) * SUPERSAMPLE)
    dest = [((x - left) * SUPERSAMPLE, (y - top) * SUPERSAMPLE) for x, y in card_quad]
    coeffs = perspective_coeffs(dest, _corners(0, 0, card.image.width, card.image.height))
    perspective = Image.Transform.PERSPECTIVE
    warped = card.image.transform(big, perspective, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", card.image.size, 255).transform(
        big, perspective, coeffs, Image.Resampling.NEAREST, fillcolor=0
    )
    frame.paste(warped.reduce(SUPERSAMPLE), (left, top), mask.reduce(SUPERSAMPLE))


def _bounds(quad: Sequence[Point], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The whole-pixel box around ``quad``, cut to the frame."""
    xs, ys = [x for x, _ in quad], [y for _, y in quad]
    left, top = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    right, bottom = min(size[0], math.ceil(max(xs))), min(size[1], math.ceil(max(ys)))
    return left, top, right, bottom


def project_card(
    card: Card, rng: random.Random, difficulty: float, size: tuple[int, int]
) -> list[Point]:
    """Where the card's corners land in the frame, through a pinhole camera.

    The card is tilted, turned and moved so that its code is wholly in view.
    """
    width, height = size
    focal = FOCAL_WIDTHS * width
    tilt = math.radians(MAX_TILT_DEG * difficulty)
    rotation = _rotation(
        rng.uniform(-tilt, tilt),
        rng.uniform(-tilt, tilt),
        math.radians(rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG)),
    )
    # World units are frame pixels at the focal distance: the code's modules keep the size
    # chosen for them when the card faces the camera.
    units = card.module_px / card.scale
    centre = (card.image.width / 2, card.image.height / 2)

    def project(points: list[Point]) -> FloatArray:
        flat = np.array(
            [[(u - centre[0]) * units, (v - centre[1]) * units, 0.0] for u, v in points]
        )
        world = flat @ rotation.T + np.array([0.0, 0.0, focal])
        image: FloatArray = focal * world[:, :2] / world[:, 2:3]
        return image

    card_quad = project(_corners(0, 0, card.image.width, card.image.height))
    code_quad = project(_corners(*card.code_box))
    # A large code turned on its corner may not fit: step back until it does.
    extent = code_quad.max(axis=0) - code_quad.min(axis=0)
    fit = min(1.0, (width - 2 * MARGIN_PX) / extent[0], (height - 2 * MARGIN_PX) / extent[1])
    card_quad, code_quad = card_quad * fit, code_quad * fit
    shift = _shift_into_view(code_quad, rng, width, height)
    return _points(card_quad + shift)


def _rotation(tilt_x: float, tilt_y: float, roll: float) -> FloatArray:
    cx, sx, cy, sy, cz, sz = (f(a) for a in (tilt_x, tilt_y, roll) for f in (math.cos, math.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    result: FloatArray = rx @ ry @ rz
    return result


def _shift_into_view(quad: FloatArray, rng: random.Random, width: int, height: int) -> FloatArray:
    """A random offset that puts ``quad`` (centred on 0, 0) wholly inside the frame."""
    low = quad.min(axis=0) - MARGIN_PX
    high = quad.max(axis=0) + MARGIN_PX
    x = rng.uniform(-low[0], max(-low[0], width - high[0]))
    y = rng.uniform(-low[1], max(-low[1], height - high[1]))
    return np.array([x, y])


def _corners(left: float, top: float, right: float, bottom: float) -> list[Point]:
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def _points(array: FloatArray) -> list[Point]:
    return [(float(x), float(y)) for x, y in array]


def perspective_coeffs(dest: Sequence[Point], source: Sequence[Point]) -> tuple[float, ...]:
    """PIL's PERSPECTIVE coefficients that map each ``dest`` corner back to its ``source``.

    PIL asks, for every output pixel (x, y), which input pixel to sample:
    ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1)).
    Four point pairs give eight linear equations in a..h.
    """
    rows, values = [], []
    for (x, y), (u, v) in zip(dest, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    solution = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0]
    return tuple(float(c) for c in solution)


# --- light, optics and sensor ----------------------------------------------------------


def illuminate(pixels: Float32Array, rng: random.Random, difficulty: float) -> Float32Array:
    """Uneven light: a slope across the frame, a vignette and sometimes a glare spot."""
    height, width = pixels.shape
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    slope = rng.uniform(-0.5, 0.5) * xs + rng.uniform(-0.5, 0.5) * ys
    gain = rng.uniform(0.8, 1.15) * (1 + difficulty * slope)
    gain *= 1 - 0.35 * difficulty * (xs**2 + ys**2) / 2
    lit = pixels * gain
    if rng.random() < 0.5 * difficulty:
        gx, gy, spread = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.1, 0.3)
        lit += 90 * difficulty * np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * spread**2))
    return lit.astype(np.float32, copy=False)


def add_sensor_noise(
    frame: Image.Image, noise_rng: np.random.Generator, difficulty: float
) -> Image.Image:
    """Read noise plus shot noise, which grows with the light a pixel caught."""
    pixels = np.asarray(frame, dtype=np.float32)
    sigma = (1.5 + 6.0 * difficulty) * np.sqrt(np.maximum(pixels, 8.0) / 128.0)
    noisy = pixels + noise_rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "L")


def jpeg_roundtrip(frame: Image.Image, *, quality: int) -> Image.Image:
    """The frame after JPEG compression at ``quality``, as a camera or a phone would store it."""
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as compressed:
        return compressed.convert("L")
