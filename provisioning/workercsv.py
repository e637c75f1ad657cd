"""The worker list a site office hands in: a CSV file, checked row by row before anything is issued.

Format (UTF-8, with or without BOM, as Excel's "CSV UTF-8" writes it; comma,
semicolon or tab separated, found from the header row)::

    worker_id,name,valid_until,valid_from,zones,department
    NV-0001,Nguyễn Thị Hồng Nhung,2026-12-31,,xuong-1;kho,May 1

====================  ========  ==================================================
column                required  meaning
====================  ========  ==================================================
``worker_id``         yes       employee number: 1-32 letters, digits, ``.``, ``_``,
                                ``-``; unique in the file; the badge's subject id
``name``              yes       full name as printed, 1-80 characters
``valid_until``       yes       last day the badge opens the gates (YYYY-MM-DD or
                                DD/MM/YYYY), through the end of that day, site time
``valid_from``        no        first day (default: the day of issue)
``zones``             no        zones the badge opens, separated by ``;`` or spaces;
                                each a zone of the site when the site lists zones
``department``        no        printed on the badge only, up to 64 characters
====================  ========  ==================================================

Rows are numbered as a spreadsheet shows them: the header is row 1. Every
problem of every row is reported at once (file, row, field), and a file with
any problem yields no workers at all, so nothing is issued from it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from provisioning.errors import ProvisioningError
from provisioning.printing import clean_text

REQUIRED = ("worker_id", "name", "valid_until")
OPTIONAL = ("valid_from", "zones", "department")
WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
ZONE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
MAX_NAME, MAX_DEPARTMENT = 80, 64
MAX_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Worker:
    """One valid row of a worker CSV; ``row`` is its spreadsheet row number."""

    row: int
    worker_id: str
    name: str
    valid_from: date
    valid_until: date
    zones: tuple[str, ...]
    department: str


@dataclass(frozen=True, slots=True)
class RowProblem:
    """What is wrong with one field of one row (row 1 is the header)."""

    file: Path
    row: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: row {self.row}" + (f", field {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class WorkerCsvError(ProvisioningError):
    """A worker CSV has problems; ``problems`` lists each with file, row and field."""

    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        shown = [str(p) for p in problems[:MAX_SHOWN]]
        if len(problems) > MAX_SHOWN:
            shown.append(f"... and {len(problems) - MAX_SHOWN} more")
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{count} in the worker list, nothing issued:\n" + "\n".join(shown))


def read_workers(path: Path, *, today: date, zones: Collection[str] = ()) -> list[Worker]:
    """Every worker of the CSV at ``path``; WorkerCsvError if any row has a problem.

    ``zones``, when not empty, are the only zones a badge may name.
    """
    problems: list[RowProblem] = []
    workers: list[Worker] = []
    seen: dict[str, int] = {}
    rows = _records(path)
    header = _header(path, next(rows, None))
    for number, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        row = _RowCheck(path, number, header, cells, problems)
        worker = row.worker(today, frozenset(zones))
        if worker is not None and worker.worker_id in seen:
            row.problem("worker_id", f"{worker.worker_id} is also on row {seen[worker.worker_id]}")
        elif worker is not None:
            seen[worker.worker_id] = number
            workers.append(worker)
    if not workers and not problems:
        problems.append(RowProblem(path, 2, "", "no workers: the file has only a header"))
    if problems:
        raise WorkerCsvError(problems)
    return workers


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of every record; a broken record raises with its row."""
    text = _read_text(path)
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    # newline="" keeps line breaks inside quoted fields, as the csv module requires.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    number = 0
    while True:
        number += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise WorkerCsvError([RowProblem(path, number, "", f"broken CSV: {exc}")]) from None
        yield number, cells


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkerCsvError([RowProblem(path, 0, "", f"cannot read: {exc}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        message = "not UTF-8 text (in Excel: save as 'CSV UTF-8')"
        raise WorkerCsvError([RowProblem(path, row, "", message)]) from None


def _header(path: Path, record: tuple[int, list[str]] | None) -> list[str]:
    if record is None:
        raise WorkerCsvError([RowProblem(path, 1, "", "empty file: no header row")])
    names = [cell.strip().lower() for cell in record[1]]
    problems = [
        RowProblem(path, 1, name or f"column {i + 1}", "unknown column")
        for i, name in enumerate(names)
        if name not in REQUIRED + OPTIONAL
    ]
    problems += [
        RowProblem(path, 1, name, "column appears twice")
        for name in sorted({n for n in names if names.count(n) > 1})
    ]
    problems += [
        RowProblem(path, 1, name, "required column missing")
        for name in REQUIRED
        if name not in names
    ]
    if problems:
        raise WorkerCsvError(problems)
    return names


class _RowCheck:
    """Checks the fields of one record, adding a RowProblem for each wrong one."""

    def __init__(
        self, path: Path, row: int, header: list[str], cells: list[str], out: list[RowProblem]
    ) -> None:
        self.path, self.row, self.out = path, row, out
        self.values = dict(zip(header, (cell.strip() for cell in cells), strict=False))
        self.before = len(out)
        if len(cells) > len(header):
            self.problem("", f"{len(cells)} values but the header has {len(header)} columns")

    def problem(self, field: str, message: str) -> None:
        self.out.append(RowProblem(self.path, self.row, field, message))

    def worker(self, today: date, site_zones: frozenset[str]) -> Worker | None:
        worker_id = self._worker_id()
        name = self._text("name", MAX_NAME, required=True)
        valid_from = self._date("valid_from") or today
        valid_until = self._date("valid_until", required=True)
        if valid_until is not None and valid_until < max(valid_from, today):
            first = "today" if today >= valid_from else "valid_from"
            self.problem("valid_until", f"{valid_until.isoformat()} is before {first}")
        zones = self._zones(site_zones)
        department = self._text("department", MAX_DEPARTMENT, required=False)
        if len(self.out) > self.before or valid_until is None:
            return None
        return Worker(self.row, worker_id, name, valid_from, valid_until, zones, department)

    def _worker_id(self) -> str:
        value = self.values.get("worker_id", "")
        if not value:
            self.problem("worker_id", "missing")
        elif not WORKER_ID.match(value):
            self.problem("worker_id", f"{value!r}: use 1-32 letters, digits, '.', '_' or '-'")
        return value

    def _text(self, field: str, limit: int, *, required: bool) -> str:
        value = clean_text(self.values.get(field, ""))
        if required and not value:
            self.problem(field, "missing")
        elif len(value) > limit:
            self.problem(field, f"{len(value)} characters, at most {limit}")
        return value

    def _date(self, field: str, *, required: bool = False) -> date | None:
        value = self.values.get(field, "")
        if not value:
            if required:
                self.problem(field, "missing")
            return None
        for pattern in ("%Y-%m-%d", "%d/%m/%Y"):
            try:
                return datetime.strptime(value, pattern).date()
            except ValueError:
                continue
        self.problem(field, f"{value!r} is not a date (YYYY-MM-DD or DD/MM/YYYY)")
        return None

    def _zones(self, site_zones: frozenset[str]) -> tuple[str, ...]:
        zones = tuple(dict.fromkeys(self.values.get("zones", "").replace(";", " ").split()))
        for zone in zones:
            if not ZONE_ID.match(zone):
                self.problem("zones", f"{zone!r}: use lower-case letters, digits, '-' or '_'")
            elif site_zones and zone not in site_zones:
                known = ", ".join(sorted(site_zones))
                self.problem("zones", f"{zone!r} is not a zone of this site ({known})")
        return zones
