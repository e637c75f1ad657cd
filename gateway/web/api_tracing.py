"""F1/F2 traces, venue queries and their exports (health officers; every one audited)."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from gateway.exports import Table, csv_text, write_xlsx
from gateway.users import Role
from gateway.web.auth import require
from gateway.web.context import check_csrf, context_of
from gateway.web.tracework import TraceOutcome, TraceRequest, audit, run_trace

router = APIRouter(prefix="/api", tags=["tracing"])
ExportFormat = Literal["csv", "xlsx", "json"]
MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "json": "application/json",
}


async def traced(request: Request, req: TraceRequest, *, export: str | None = None) -> TraceOutcome:
    """Run and audit a trace for the logged-in health officer."""
    session = require(request, Role.HEALTH)
    ctx = context_of(request)
    async with ctx.writing() as db:
        # Under the write lock: the audit entry follows the query on the same connection.
        outcome, who = await run_trace(db, req, tz=ctx.tz, subject_key=ctx.subject_key)
        await audit(db, session.user, req, outcome, who, export=export)
    return outcome


@router.post("/trace", response_model=dict[str, Any])
async def post_trace(request: Request, body: TraceRequest) -> dict[str, Any]:
    """F1 and F2 of a case, or everyone present at a site (health officers; audited)."""
    check_csrf(request, require(request, Role.HEALTH))
    outcome = await traced(request, body)
    return {"kind": outcome.kind, **outcome.data}


@router.post(
    "/trace/export",
    response_class=Response,
    responses={200: {"content": {m: {} for m in MEDIA.values()}, "description": "The file"}},
)
async def export_trace(
    request: Request, body: TraceRequest, format: Annotated[ExportFormat, Query()] = "csv"
) -> Response:
    """The trace or venue result as a CSV, XLSX or JSON file (health officers; audited)."""
    check_csrf(request, require(request, Role.HEALTH))
    outcome = await traced(request, body, export=format)
    return await export_response(outcome, format)


async def export_response(outcome: TraceOutcome, fmt: ExportFormat) -> Response:
    name = f"{outcome.kind}-{re.sub(r'[^A-Za-z0-9_-]', '_', outcome.target[:16])}.{fmt}"
    if fmt == "csv":
        content: bytes = csv_text(outcome.table).encode("utf-8")
    elif fmt == "xlsx":
        content = await asyncio.to_thread(_xlsx_bytes, outcome.table)
    else:
        content = json.dumps(outcome.data, ensure_ascii=False, indent=2).encode("utf-8")
    return Response(
        content,
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _xlsx_bytes(table: Table) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.xlsx"
        write_xlsx(table, path)
        return path.read_bytes()
