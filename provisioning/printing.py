"""The print kit shared by label and badge sheets: fonts, page items, and their PDF and SVG output.

A sheet is laid out once as a list of :class:`Item` per page, in millimetres
from the page's top-left corner (text at its baseline), and then drawn by
:func:`write_pdf` (reportlab) or :func:`page_svg`. QR codes are vector in
both: reportlab rectangles from segno's matrix in the PDF, segno's own SVG
nested in the SVG page.

Vietnamese names need a font with their glyphs, which reportlab's built-in
Helvetica lacks; DejaVu Sans (Debian's ``fonts-dejavu-core``) is registered
and embedded, and text widths are measured with it for both outputs.
"""

from __future__ import annotations

import io
import logging
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import segno
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from provisioning.errors import ProvisioningError

logger = logging.getLogger(__name__)

A4_MM = (210.0, 297.0)
REGULAR, BOLD = "QrgSans", "QrgSans-Bold"
# Where Debian, Raspberry Pi OS and Ubuntu put DejaVu Sans (fonts-dejavu-core), then Noto.
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/noto"))
FONT_FILES = {
    REGULAR: ("DejaVuSans.ttf", "NotoSans-Regular.ttf"),
    BOLD: ("DejaVuSans-Bold.ttf", "NotoSans-Bold.ttf"),
}
SVG_FONT_FAMILY = "DejaVu Sans, Noto Sans, Arial, sans-serif"
QUIET_ZONE = 4
PT_PER_MM = 72 / 25.4
SVG_NS = "http://www.w3.org/2000/svg"


class PrintError(ProvisioningError):
    """A sheet could not be laid out or written (no usable font, unwritable file)."""


@dataclass(frozen=True, slots=True)
class Text:
    """One line of text; ``y`` is its baseline, ``size`` in points."""

    x: float
    y: float
    text: str
    size: float
    bold: bool = False
    color: str = "#000000"


@dataclass(frozen=True, slots=True)
class Code:
    """A QR code with its quiet zone, ``size`` mm square, top-left at (x, y)."""

    x: float
    y: float
    size: float
    code: segno.QRCode


@dataclass(frozen=True, slots=True)
class Box:
    """A filled rectangle, top-left at (x, y)."""

    x: float
    y: float
    width: float
    height: float
    color: str


@dataclass(frozen=True, slots=True)
class Line:
    """A thin straight line, e.g. a crop mark."""

    x1: float
    y1: float
    x2: float
    y2: float
    width: float = 0.2


Item = Text | Code | Box | Line


def register_fonts() -> None:
    """Register the Unicode fonts with reportlab once; PrintError names the package if absent."""
    for name, files in FONT_FILES.items():
        if name in pdfmetrics.getRegisteredFontNames():
            continue
        path = next((d / f for f in files for d in FONT_DIRS if (d / f).is_file()), None)
        if path is None:
            raise PrintError(
                f"no font with Vietnamese glyphs: none of {', '.join(files)} in "
                f"{', '.join(map(str, FONT_DIRS))}; install it: apt install fonts-dejavu-core"
            )
        pdfmetrics.registerFont(TTFont(name, str(path)))
        logger.debug("font %s from %s", name, path)


def clean_text(text: str) -> str:
    """NFC (names typed on a Mac arrive decomposed) and one line."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Width of ``text`` in mm at ``size`` points."""
    register_fonts()
    return float(stringWidth(text, BOLD if bold else REGULAR, size)) / PT_PER_MM


def fit_lines(
    text: str, width: float, *, size: float, min_size: float, max_lines: int, bold: bool = False
) -> tuple[float, list[str]]:
    """The largest size (down to ``min_size``) at which ``text`` wraps into ``max_lines``.

    If it does not fit even then, the last line is cut and ends in "…": a sheet
    cannot grow, and the full value is in the code and the issuing records.
    """
    register_fonts()
    font = BOLD if bold else REGULAR
    current = size
    while True:
        lines = simpleSplit(text, font, current, width * PT_PER_MM)
        fits = all(text_width(line, current, bold=bold) <= width for line in lines)
        if fits and len(lines) <= max_lines:
            return current, lines
        if current - 0.5 < min_size:
            return current, _cut(lines[:max_lines], width, current, bold)
        current -= 0.5


def _cut(lines: list[str], width: float, size: float, bold: bool) -> list[str]:
    last = lines[-1]
    while last and text_width(last + "…", size, bold=bold) > width:
        last = last[:-1]
    return [*(_hard_cut(line, width, size, bold) for line in lines[:-1]), last + "…"]


def _hard_cut(line: str, width: float, size: float, bold: bool) -> str:
    while line and text_width(line, size, bold=bold) > width:
        line = line[:-1]
    return line


def text_block(
    x: float, y: float, lines: Sequence[str], size: float, *, bold: bool = False
) -> tuple[list[Item], float]:
    """Lines from top ``y`` down; returns the items and the y below the block."""
    leading = size * 1.2 / PT_PER_MM
    items: list[Item] = []
    for line in lines:
        y += leading
        items.append(Text(x, y - 0.25 * leading, line, size, bold))
    return items, y


def write_pdf(path: Path, pages: Sequence[Sequence[Item]], *, title: str) -> None:
    """Write A4 pages of items to ``path`` as one PDF."""
    register_fonts()
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=(A4_MM[0] * mm, A4_MM[1] * mm), invariant=True)
    canvas.setTitle(title)
    canvas.setCreator("qrgate provisioning")
    for items in pages:
        for item in items:
            _draw(canvas, item)
        canvas.showPage()
    canvas.save()
    write_file(path, buffer.getvalue())


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (through a temporary file beside it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise PrintError(f"cannot write {path}: {exc}") from exc


def _draw(canvas: Canvas, item: Item) -> None:
    height = A4_MM[1]
    if isinstance(item, Text):
        canvas.setFillColor(item.color)
        canvas.setFont(BOLD if item.bold else REGULAR, item.size)
        canvas.drawString(item.x * mm, (height - item.y) * mm, item.text)
    elif isinstance(item, Code):
        _draw_code(canvas, item)
    elif isinstance(item, Box):
        canvas.setFillColor(item.color)
        top = height - item.y - item.height
        canvas.rect(item.x * mm, top * mm, item.width * mm, item.height * mm, stroke=0, fill=1)
    else:
        canvas.setStrokeColor("#000000")
        canvas.setLineWidth(item.width * mm)
        canvas.line(item.x1 * mm, (height - item.y1) * mm, item.x2 * mm, (height - item.y2) * mm)


def _draw_code(canvas: Canvas, item: Code) -> None:
    """Dark modules as rectangles, one per horizontal run: fewer operators than per module."""
    matrix = item.code.matrix
    module = item.size / (len(matrix) + 2 * QUIET_ZONE)
    top = A4_MM[1] - item.y
    canvas.setFillColor("#000000")
    path = canvas.beginPath()
    for row, cells in enumerate(matrix):
        for start, length in _runs(cells):
            x = item.x + (QUIET_ZONE + start) * module
            y = top - (QUIET_ZONE + row + 1) * module
            path.rect(x * mm, y * mm, length * module * mm, module * mm)
    canvas.drawPath(path, stroke=0, fill=1)


def _runs(cells: Sequence[int]) -> list[tuple[int, int]]:
    runs, start = [], -1
    for i, dark in enumerate([*cells, 0]):
        if dark and start < 0:
            start = i
        elif not dark and start >= 0:
            runs.append((start, i - start))
            start = -1
    return runs


def page_svg(items: Sequence[Item], *, title: str) -> bytes:
    """One A4 page of items as an SVG document in millimetres."""
    width, height = A4_MM
    ET.register_namespace("", SVG_NS)
    root = ET.Element(
        f"{{{SVG_NS}}}svg",
        {
            "width": f"{width:g}mm",
            "height": f"{height:g}mm",
            "viewBox": f"0 0 {width:g} {height:g}",
        },
    )
    ET.SubElement(root, f"{{{SVG_NS}}}title").text = title
    for item in items:
        root.append(_svg_item(item))
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _svg_item(item: Item) -> ET.Element:
    if isinstance(item, Code):
        return _svg_code(item)
    if isinstance(item, Text):
        element = ET.Element(f"{{{SVG_NS}}}text", _svg_text_attributes(item))
        element.text = item.text
        return element
    if isinstance(item, Box):
        attributes = {"x": item.x, "y": item.y, "width": item.width, "height": item.height}
        return ET.Element(f"{{{SVG_NS}}}rect", {**_fmt(attributes), "fill": item.color})
    attributes = {"x1": item.x1, "y1": item.y1, "x2": item.x2, "y2": item.y2}
    return ET.Element(
        f"{{{SVG_NS}}}line", {**_fmt(attributes), "stroke": "#000", "stroke-width": f"{item.width}"}
    )


def _svg_text_attributes(item: Text) -> dict[str, str]:
    return {
        **_fmt({"x": item.x, "y": item.y, "font-size": item.size / PT_PER_MM}),
        "font-family": SVG_FONT_FAMILY,
        "font-weight": "bold" if item.bold else "normal",
        "fill": item.color,
    }


def _svg_code(item: Code) -> ET.Element:
    """segno's SVG of the code, nested as an <svg> placed and scaled into the page."""
    buffer = io.BytesIO()
    item.code.save(buffer, kind="svg", xmldecl=False, svgns=True, border=QUIET_ZONE, scale=1)
    element = ET.fromstring(buffer.getvalue())
    modules = len(item.code.matrix) + 2 * QUIET_ZONE
    element.attrib.update(_fmt({"x": item.x, "y": item.y, "width": item.size, "height": item.size}))
    element.set("viewBox", f"0 0 {modules} {modules}")
    return element


def _fmt(values: dict[str, float]) -> dict[str, str]:
    return {key: f"{value:.3f}".rstrip("0").rstrip(".") for key, value in values.items()}
