"""Sheets of numbers and text written as a multi-sheet XLSX workbook or as CSV files.

:mod:`gateway.exports` writes one sheet of text and integers; reports with
rates and several sheets use this. Both writers are formula-safe in the same
way (``exports.is_formula_like``): CSV cells get a leading quote, XLSX cells
are explicit strings with Excel's quote prefix. CSV is UTF-8 with a BOM so
Excel reads Vietnamese right; numbers keep full precision, empty is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from gateway.exports import ExportError, Table, is_formula_like, write_csv

Value = str | int | float | None


@dataclass(frozen=True, slots=True)
class Sheet:
    """One sheet: a title (at most 31 characters in XLSX), a header and rows."""

    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[Value, ...]]


def write_workbook(path: Path, sheets: Sequence[Sheet]) -> None:
    """Write the sheets as one XLSX workbook: bold frozen headers, numbers as numbers."""
    book = Workbook()
    book.remove(book.active)
    for sheet in sheets:
        _fill(book.create_sheet(sheet.title[:31]), sheet)
    try:
        book.save(path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from None


def write_sheet_csv(path: Path, sheet: Sheet) -> None:
    """Write one sheet as a CSV file (UTF-8 with BOM, CRLF lines)."""
    rows = tuple(tuple(_csv_value(v) for v in row) for row in sheet.rows)
    write_csv(Table(sheet.title, sheet.header, rows), path)


def _fill(ws: Any, sheet: Sheet) -> None:
    ws.append(list(sheet.header))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for r, row in enumerate(sheet.rows, start=2):
        for c, value in enumerate(row, start=1):
            _set_cell(ws.cell(row=r, column=c), value)
    ws.freeze_panes = "A2"
    for c, name in enumerate(sheet.header):
        longest = max([len(name), *(len(str(row[c])) for row in sheet.rows)])
        ws.column_dimensions[get_column_letter(c + 1)].width = min(max(longest, 6), 60) + 2


def _csv_value(value: Value) -> str | int:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def _set_cell(cell: Any, value: Value) -> None:
    if value is None or isinstance(value, int | float):
        cell.value = value
        return
    # openpyxl refuses control characters; a damaged name must not abort the report.
    cell.value = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    if is_formula_like(value) or cell.data_type != "s":
        # A string cell is never evaluated; the quote prefix keeps it text when edited.
        cell.data_type = "s"
        cell.quotePrefix = True
