"""Device labels: an A4 sheet of 3×8 labels (70×37 mm), one per device of a site.

Each label holds the QR code of the device id and, in text, the device id,
the site, the gate, the direction, and the zone or vehicle if any, so a technician can match a
box to its gate without a reader. The sheet is a PDF, or SVG with one file
per page (``sheet.svg``, or ``sheet-1.svg``, ``sheet-2.svg``, … for more than
24 devices).
"""

from __future__ import annotations

import logging
from pathlib import Path

import segno

from provisioning.printing import (
    A4_MM,
    Code,
    Item,
    PrintError,
    clean_text,
    fit_lines,
    page_svg,
    text_block,
    write_file,
    write_pdf,
)
from provisioning.siteinfo import GateDevice, SiteInfo

logger = logging.getLogger(__name__)

COLUMNS, ROWS = 3, 8
LABEL_MM = (70.0, 37.0)
PADDING = 2.0
CODE_MM = LABEL_MM[1] - 2 * PADDING
DIRECTIONS = {"in": "VÀO (in)", "out": "RA (out)"}
PER_PAGE = COLUMNS * ROWS


def label_pages(site: SiteInfo) -> list[list[Item]]:
    """The items of every page of the site's label sheet, devices in config order."""
    if not site.devices:
        raise PrintError(f"site {site.site_id} has no devices to label")
    left = (A4_MM[0] - COLUMNS * LABEL_MM[0]) / 2
    top = (A4_MM[1] - ROWS * LABEL_MM[1]) / 2
    pages: list[list[Item]] = []
    for index, device in enumerate(site.devices):
        if index % PER_PAGE == 0:
            pages.append([])
        slot = index % PER_PAGE
        x = left + (slot % COLUMNS) * LABEL_MM[0]
        y = top + (slot // COLUMNS) * LABEL_MM[1]
        pages[-1].extend(_label(x, y, site.name, device))
    return pages


def _label(x: float, y: float, site_name: str, device: GateDevice) -> list[Item]:
    code = segno.make(device.device_id, error="m", micro=False)
    items: list[Item] = [Code(x + PADDING, y + PADDING, CODE_MM, code)]
    text_x = x + PADDING + CODE_MM + 1.0
    width = x + LABEL_MM[0] - PADDING - text_x
    fields = [
        (device.device_id, 10.0, True, 2),
        (site_name, 7.5, False, 2),
        (f"Cổng: {device.gate or '—'}", 7.5, False, 2),
        (f"Hướng: {DIRECTIONS[device.direction]}", 7.5, True, 1),
    ]
    if device.zone:
        fields.append((f"Khu: {device.zone}", 7.0, False, 1))
    if device.vehicle:
        fields.append((f"Xe: {device.vehicle}", 7.0, False, 1))
    line_y = y + PADDING + 1.0
    for text, size, bold, max_lines in fields:
        fitted, lines = fit_lines(
            clean_text(text), width, size=size, min_size=5.0, max_lines=max_lines, bold=bold
        )
        block, line_y = text_block(text_x, line_y, lines, fitted, bold=bold)
        items.extend(block)
    return items


def write_labels(site: SiteInfo, out: Path) -> list[Path]:
    """Write the label sheet as PDF or SVG, by ``out``'s suffix; returns the files written."""
    pages = label_pages(site)
    title = f"qrgate device labels: {site.name}"
    suffix = out.suffix.lower()
    if suffix == ".pdf":
        write_pdf(out, pages, title=title)
        written = [out]
    elif suffix == ".svg":
        written = _svg_paths(out, len(pages))
        for path, items in zip(written, pages, strict=True):
            write_file(path, page_svg(items, title=title))
    else:
        raise PrintError(f"{out}: the label sheet must be a .pdf or .svg file")
    logger.info("labels for %d devices of %s: %s", len(site.devices), site.site_id, written)
    return written


def _svg_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{n}{out.suffix}") for n in range(1, count + 1)]
