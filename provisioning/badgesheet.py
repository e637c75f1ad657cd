"""Worker badge sheets: A4 pages of 2×4 badges the size of an ID card (CR80, 85.6×54 mm).

Each badge has the site's name on a band at the top, the signed badge's QR
code on the left and, on the right, the worker's name, number, department,
the last day it is valid and its zones; the badge id runs along the bottom,
for revoking a lost badge. No photo: the gate checks the signature, and the
guard the name. Crop marks at every corner, in the gaps between badges, guide
the cutter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import segno

from provisioning.printing import (
    A4_MM,
    PT_PER_MM,
    Box,
    Code,
    Item,
    Line,
    PrintError,
    Text,
    clean_text,
    fit_lines,
    text_block,
    write_pdf,
)

logger = logging.getLogger(__name__)

COLUMNS, ROWS = 2, 4
CARD_MM = (85.6, 53.98)
GAP = 8.0
BAND_MM = 8.0
PADDING = 2.0
CODE_MM = CARD_MM[1] - BAND_MM - 2 * PADDING + 1.0
MARK_LENGTH, MARK_OFFSET = 3.0, 1.0
BAND_COLOR, WHITE = "#1f3a68", "#ffffff"
PER_PAGE = COLUMNS * ROWS


@dataclass(frozen=True, slots=True)
class BadgeCard:
    """What one printed badge shows; ``text`` is the signed badge for the code."""

    text: str
    badge_id: str
    name: str
    worker_id: str
    department: str
    last_day: date
    zones: tuple[str, ...]


def badge_pages(site_name: str, cards: Sequence[BadgeCard]) -> list[list[Item]]:
    """The items of every page of the sheet, badges in the order given."""
    if not cards:
        raise PrintError("no badges to print")
    left = (A4_MM[0] - COLUMNS * CARD_MM[0] - (COLUMNS - 1) * GAP) / 2
    top = (A4_MM[1] - ROWS * CARD_MM[1] - (ROWS - 1) * GAP) / 2
    pages: list[list[Item]] = []
    for index, card in enumerate(cards):
        if index % PER_PAGE == 0:
            pages.append([])
        slot = index % PER_PAGE
        x = left + (slot % COLUMNS) * (CARD_MM[0] + GAP)
        y = top + (slot // COLUMNS) * (CARD_MM[1] + GAP)
        pages[-1].extend([*_crop_marks(x, y), *_badge(x, y, site_name, card)])
    return pages


def write_badge_sheet(path: Path, site_name: str, cards: Sequence[BadgeCard]) -> None:
    """Write the badge sheet PDF."""
    write_pdf(path, badge_pages(site_name, cards), title=f"qrgate badges: {site_name}")
    logger.info("badge sheet of %d badges written to %s", len(cards), path)


def _badge(x: float, y: float, site_name: str, card: BadgeCard) -> list[Item]:
    width = CARD_MM[0]
    size, lines = fit_lines(
        clean_text(site_name), width - 2 * PADDING, size=10, min_size=6, max_lines=1, bold=True
    )
    items: list[Item] = [
        Box(x, y, width, BAND_MM, BAND_COLOR),
        # Capitals are about 0.7 em tall: half of that below the middle centres the line.
        Text(x + PADDING, y + BAND_MM / 2 + 0.35 * size / PT_PER_MM, lines[0], size, True, WHITE),
    ]
    code = segno.make(card.text, error="m", micro=False)
    code_y = y + BAND_MM + (CARD_MM[1] - BAND_MM - CODE_MM) / 2
    items.append(Code(x + PADDING - 1.0, code_y, CODE_MM, code))
    items.extend(_details(x + PADDING + CODE_MM, y + BAND_MM + PADDING, card))
    items.append(Text(x + PADDING, y + CARD_MM[1] - 1.2, f"Mã thẻ: {card.badge_id}", 5.0))
    return items


def _details(x: float, y: float, card: BadgeCard) -> list[Item]:
    """Name, number, department, last valid day and zones, from the top of the right column."""
    width = CARD_MM[0] - CODE_MM - 2 * PADDING
    fields = [
        (card.name, 11.0, True, 3),
        (f"Mã NV: {card.worker_id}", 7.5, False, 1),
        (card.department, 7.5, False, 2),
        ("Hiệu lực đến / Valid until", 6.0, False, 1),
        (card.last_day.strftime("%d/%m/%Y"), 10.0, True, 1),
        (f"Khu: {', '.join(card.zones)}" if card.zones else "", 6.5, False, 2),
    ]
    items: list[Item] = []
    for text, size, bold, max_lines in fields:
        if not text:
            continue
        fitted, lines = fit_lines(
            clean_text(text), width, size=size, min_size=5.0, max_lines=max_lines, bold=bold
        )
        block, y = text_block(x, y, lines, fitted, bold=bold)
        items.extend(block)
        y += 0.6
    return items


def _crop_marks(x: float, y: float) -> list[Item]:
    """Two short lines at each corner, pointing away from the badge along its edges."""
    right, bottom = x + CARD_MM[0], y + CARD_MM[1]
    start, end = MARK_OFFSET, MARK_OFFSET + MARK_LENGTH
    marks: list[Item] = []
    for cx, sx in ((x, -1), (right, 1)):
        for cy, sy in ((y, -1), (bottom, 1)):
            marks.append(Line(cx + sx * start, cy, cx + sx * end, cy))
            marks.append(Line(cx, cy + sy * start, cx, cy + sy * end))
    return marks
