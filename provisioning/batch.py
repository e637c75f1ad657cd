"""Add or update many devices from a CSV file (e.g. a transport operator fitting 200 buses).

Columns (header row required, UTF-8, Excel's BOM accepted)::

    device_id,gate,direction,zone,vehicle

``direction`` is required (``in`` or ``out``); the others may be empty. A row
without ``device_id`` gets one made from its vehicle or zone, gate and
direction (``bus-017-cua-truoc-in``), the same on every run, so re-running the
same file changes nothing. Every row is checked before anything is written; a
bad row is reported with its line and field and skipped, the good rows are
provisioned.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from provisioning.devices import (
    Applied,
    Change,
    DeviceSpec,
    apply_changes,
    plan_change,
    read_gateway,
)
from provisioning.errors import BadDeviceRequest, CsvFileError, DeviceRevoked
from provisioning.layout import Site, site_lock
from provisioning.manifest import SiteManifest, load_manifest
from provisioning.sync import SyncReport

COLUMNS = ("device_id", "gate", "direction", "zone", "vehicle")
REQUIRED = ("direction",)
REPORT_FIELDS = ("line", "device_id", "status", "detail")
_EXTRA = "__extra__"


@dataclass(frozen=True)
class RowResult:
    """What became of one CSV row: added, updated, unchanged, or error (with the reason)."""

    line: int
    device_id: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class BatchResult:
    """Every row's result, in file order, and what the sync did."""

    rows: tuple[RowResult, ...]
    sync: SyncReport | None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def errors(self) -> tuple[RowResult, ...]:
        return tuple(r for r in self.rows if r.status == "error")

    def summary(self) -> str:
        counts = ", ".join(
            f"{self.count(s)} {s}" for s in ("added", "updated", "unchanged", "error")
        )
        return f"{len(self.rows)} rows: {counts}"


def slug(text: str) -> str:
    """``Cửa trước`` -> ``cua-truoc``: lower-case ASCII letters, digits and dashes."""
    text = text.replace("đ", "d").replace("Đ", "D")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def derived_id(row: dict[str, str]) -> str:
    """The device id of a row that names none: place, gate and direction."""
    place = [p for p in (slug(row["vehicle"] or row["zone"]), slug(row["gate"])) if p]
    return "-".join([*place, slug(row["direction"])])[:64].strip("-") if place else ""


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for every data row; CsvFileError if the file or its header is wrong."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            _check_header(path, header)
            reader.fieldnames = header
            return [(reader.line_num, _clean(raw)) for raw in reader]
    except OSError as exc:
        raise CsvFileError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CsvFileError(f"{path}: not a UTF-8 CSV file: {exc}") from None


def _check_header(path: Path, header: list[str]) -> None:
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if unknown or missing:
        raise CsvFileError(
            f"{path}: line 1 (header): "
            + "; ".join(
                [f"unknown column {h!r}" for h in unknown]
                + [f"missing column {c!r}" for c in missing]
            )
            + f" (columns: {', '.join(COLUMNS)})"
        )


def _clean(raw: dict[str | Any, str | Any]) -> dict[str, str]:
    row = {c: str(raw.get(c) or "").strip() for c in COLUMNS}
    extra = raw.get(None)  # csv.DictReader puts values beyond the header under None
    if extra:
        row[_EXTRA] = ",".join(str(v) for v in extra)
    return row


def row_spec(row: dict[str, str]) -> DeviceSpec:
    """The device a row asks for; BadDeviceRequest names the field that is wrong."""
    if _EXTRA in row:
        raise BadDeviceRequest("row", f"more values than columns: {row[_EXTRA]!r}")
    direction = row["direction"].lower()
    if direction not in ("in", "out"):
        raise BadDeviceRequest("direction", f"{row['direction']!r} is neither 'in' nor 'out'")
    device_id = row["device_id"] or derived_id(row)
    if not device_id:
        raise BadDeviceRequest("device_id", "empty, and no vehicle, zone or gate to name it by")
    return DeviceSpec(
        device_id=device_id,
        gate=row["gate"],
        direction="in" if direction == "in" else "out",
        zone=row["zone"],
        vehicle=row["vehicle"],
    )


def run_batch(
    site: Site, path: Path, *, register: bool = True, progress: bool = True
) -> BatchResult:
    """Check every row, then provision the good ones; a bad row never stops the others."""
    rows = read_rows(path)
    with site_lock(site.directory):
        return _run(site, path, rows, register=register, progress=progress)


def _run(
    site: Site,
    path: Path,
    rows: list[tuple[int, dict[str, str]]],
    *,
    register: bool,
    progress: bool,
) -> BatchResult:
    manifest = load_manifest(site.directory)
    gateway = read_gateway(site)
    results: dict[int, RowResult] = {}
    changes: list[tuple[int, Change]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            spec = row_spec(row)
            if spec.device_id in seen:
                raise BadDeviceRequest(
                    "device_id", f"{spec.device_id} is already on line {seen[spec.device_id]}"
                )
            seen[spec.device_id] = line
            changes.append((line, plan_change(manifest, gateway, spec)))
        except (BadDeviceRequest, DeviceRevoked) as exc:
            device_id = row.get("device_id") or ""
            results[line] = RowResult(line, device_id, "error", f"{path}: line {line}: {exc}")
    applied = _apply(site, manifest, [c for _, c in changes], register, progress)
    for line, change in changes:
        results[line] = RowResult(line, change.spec.device_id, change.kind)
    return BatchResult(tuple(results[line] for line in sorted(results)), applied.sync)


def _apply(
    site: Site, manifest: SiteManifest, changes: list[Change], register: bool, progress: bool
) -> Applied:
    with tqdm(total=len(changes), unit="device", disable=not progress, leave=False) as bar:
        return apply_changes(site, manifest, changes, register=register, on_each=bar.update)


def write_report(path: Path, rows: Iterable[RowResult]) -> None:
    """The per-row report as CSV: line, device_id, status, detail."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_FIELDS)
        for r in rows:
            writer.writerow([r.line, r.device_id, r.status, r.detail])
