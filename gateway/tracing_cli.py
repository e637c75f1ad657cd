"""Tracing commands of the gateway CLI: trace, venue, export-checkins, purge (all audited)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from broker.sealing import Opener
from gateway.audit import Action, AuditError, connect, insert, transaction
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.exports import (
    Exporter,
    ExportError,
    Table,
    checkin_table,
    checkins_json,
    exposure_table,
    parse_local,
    write_csv,
    write_xlsx,
    zone_info,
)
from gateway.identity import Identities, pseudonym, read_subject_key
from gateway.retention import DAY_S, purge
from gateway.tracing import trace, venue_exposure

logger = logging.getLogger(__name__)


COMMANDS = frozenset({"trace", "venue", "export-checkins", "purge"})
_SUBJECT = re.compile(r"^[0-9a-f]{32,64}$")


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace_cmd = _tracing_parser(sub, "trace", "F1 and F2 contacts of a subject (audited)")
    who = trace_cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="pseudonymous subject key (hex)")
    who.add_argument("--id-number", help="ID number to pseudonymise ('-': read from stdin)")
    trace_cmd.add_argument("--kind", help="credential kind of --id-number (default: cccd)")
    trace_cmd.add_argument("--subject-key-file", type=Path, help="province subject-hash key")
    trace_cmd.add_argument("--since", required=True, help="start of the window (ISO; local time)")
    trace_cmd.add_argument("--until", required=True, help="end of the window (ISO; local time)")
    trace_cmd.add_argument("--threshold-min", type=_positive, help="least overlap of a contact")
    trace_cmd.add_argument("--levels", type=int, choices=[1, 2], default=2, help="F1 only, or F2")
    venue_cmd = _tracing_parser(sub, "venue", "everyone present at a site in a period (audited)")
    _site_window(venue_cmd)
    venue_cmd.add_argument("--margin-min", type=_not_negative, default=60, help="minutes around")
    export_cmd = _tracing_parser(sub, "export-checkins", "all check-ins of a site (audited)")
    _site_window(export_cmd)
    purge_cmd = sub.add_parser("purge", help="delete data older than the retention period")
    purge_cmd.add_argument("--config", type=Path, required=True, help="gateway config file")
    purge_cmd.add_argument("--days", type=_positive, help="default: the config's retention_days")


def _tracing_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text)
    parser.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    parser.add_argument("--key", type=Path, help="health authority private key: show identities")
    parser.add_argument("--actor", default="", help="who asks (recorded in the audit log)")
    parser.add_argument("--purpose", default="", help="why (recorded in the audit log)")
    parser.add_argument("--format", choices=["json", "csv", "xlsx"], default="json")
    parser.add_argument("--out", type=Path, help="output file (default: stdout; xlsx needs one)")
    return parser


def _site_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site id")
    parser.add_argument("--from", dest="from_", required=True, help="start (ISO; local time)")
    parser.add_argument("--until", required=True, help="end (ISO; local time)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class _Report:
    """What a tracing command found, and what its audit entry says about it."""

    action: Action
    target: str
    detail: str
    data: dict[str, Any]
    table: Table


def _check_request(args: argparse.Namespace) -> None:
    if not args.actor.strip() or not args.purpose.strip():
        raise AuditError(
            f"{args.command}: --actor and --purpose are required: every query of personal "
            "movements is recorded in the audit log with who asked and why"
        )
    if args.format == "xlsx" and args.out is None:
        raise ExportError(f"{args.command}: --format xlsx needs --out FILE")


async def run_cli(args: argparse.Namespace, config: GatewayConfig) -> None:
    if args.command == "purge":
        await _purge(config, args.days or config.retention_days)
        return
    _check_request(args)
    tz = zone_info(config.timezone)
    # Read the key before any query, so a wrong path fails before anything is disclosed.
    opener = Opener.from_file(args.key) if args.key is not None else None
    db = await connect(config.database)
    try:
        identities = Identities(db, opener)
        exporter = await Exporter.load(db, identities, tz)
        report = await _query(args, exporter)
        await _audit(db, args, report, identities)
    finally:
        await db.close()
    if identities.failures:
        logger.warning("%d sealed check-ins did not open with this key", identities.failures)
    _emit(args, report)


async def _query(args: argparse.Namespace, exporter: Exporter) -> _Report:
    if args.command == "trace":
        return await _trace(args, exporter)
    since_s, until_s = _window(args.from_, args.until, exporter.tz)
    if args.site not in exporter.places.sites and not await _has_devices(exporter, args.site):
        raise ExportError(f"no site {args.site!r} in the tracing database")
    if args.command == "venue":
        return await _venue(args, exporter, since_s, until_s)
    rows = await exporter.checkin_rows(args.site, from_s=since_s, until_s=until_s)
    window = exporter.window_json(since_s, until_s)
    return _Report(
        Action.EXPORT,
        args.site,
        _detail(args, window, f"{len(rows)} check-ins"),
        checkins_json(exporter.places.site(args.site), window, rows),
        checkin_table(rows, f"check-ins {args.site}"),
    )


async def _trace(args: argparse.Namespace, exporter: Exporter) -> _Report:
    subject = _subject(args)
    since_s, until_s = _window(args.since, args.until, exporter.tz)
    threshold_s = args.threshold_min * 60 if args.threshold_min is not None else None
    result = await trace(
        exporter.db,
        subject,
        since_s=since_s,
        until_s=until_s,
        levels=args.levels,
        threshold_s=threshold_s,
    )
    found = f"levels {args.levels}, {len(result.f1)} F1, {len(result.f2)} F2"
    if threshold_s is not None:
        found += f", threshold {args.threshold_min} min"
    return _Report(
        Action.TRACE,
        subject,
        _detail(args, exporter.window_json(since_s, until_s), found),
        await exporter.trace_json(result, levels=args.levels),
        exposure_table(await exporter.trace_rows(result), "contacts"),
    )


async def _venue(
    args: argparse.Namespace, exporter: Exporter, since_s: int, until_s: int
) -> _Report:
    margin_s = args.margin_min * 60
    stays = await venue_exposure(
        exporter.db, args.site, from_s=since_s, until_s=until_s, margin_s=margin_s
    )
    window = exporter.window_json(since_s, until_s)
    return _Report(
        Action.VENUE,
        args.site,
        _detail(args, window, f"margin {args.margin_min} min, {len(stays)} stays"),
        await exporter.venue_json(
            args.site, stays, from_s=since_s, until_s=until_s, margin_s=margin_s
        ),
        exposure_table(await exporter.venue_rows(stays, from_s=since_s, until_s=until_s), "venue"),
    )


def _subject(args: argparse.Namespace) -> str:
    if args.subject is not None:
        if args.kind is not None or args.subject_key_file is not None:
            raise ConfigError("--kind and --subject-key-file go with --id-number, not --subject")
        subject = str(args.subject).strip().lower()
        if not _SUBJECT.match(subject):
            raise ConfigError(f"--subject {args.subject!r} is not a subject key (32-64 hex)")
        return subject
    if args.subject_key_file is None:
        raise ConfigError("--id-number needs --subject-key-file (the province's subject key)")
    # '-' keeps the ID number out of the process list and the shell history.
    id_number = sys.stdin.readline() if args.id_number == "-" else args.id_number
    if not id_number.strip():
        raise ConfigError("--id-number is empty")
    return pseudonym(read_subject_key(args.subject_key_file), args.kind or "cccd", id_number)


def _window(start: str, end: str, tz: ZoneInfo) -> tuple[int, int]:
    start_s, end_s = parse_local(start, tz), parse_local(end, tz)
    if end_s <= start_s:
        raise ExportError(f"the window ends ({end}) before it starts ({start})")
    return start_s, end_s


async def _has_devices(exporter: Exporter, site_id: str) -> bool:
    async with exporter.db.execute("SELECT 1 FROM devices WHERE site_id = ?", (site_id,)) as cur:
        return await cur.fetchone() is not None


def _detail(args: argparse.Namespace, window: dict[str, Any], found: str) -> str:
    out = f" to {args.out}" if args.out is not None else ""
    return f"{window['from']} .. {window['until']}; {found}; {args.format}{out}"


async def _audit(
    db: aiosqlite.Connection, args: argparse.Namespace, report: _Report, who: Identities
) -> None:
    """The query's audit entry, and a decrypt entry when the key was given, or nothing shown."""
    entry = {"actor": args.actor, "target": report.target, "purpose": args.purpose}
    try:
        async with transaction(db):
            await insert(db, action=report.action, detail=report.detail, **entry)
            if args.key is not None:
                opened = ", ".join(sorted(who.opened))
                detail = f"{len(who.opened)} subjects opened: {opened}; {who.failures} failed"
                await insert(db, action=Action.DECRYPT, detail=detail, **entry)
    except aiosqlite.Error as exc:
        raise AuditError(f"cannot write the audit log, nothing shown: {exc}") from exc


def _emit(args: argparse.Namespace, report: _Report) -> None:
    out: Path | None = args.out
    if out is None:
        _utf8_stdout()
    try:
        if out is not None:
            # The file may hold names and ID numbers: readable by its owner only.
            out.touch(mode=0o600)
        if args.format == "xlsx" and out is not None:
            write_xlsx(report.table, out)
        elif args.format == "csv":
            write_csv(report.table, out if out is not None else sys.stdout)
        else:
            text = json.dumps(report.data, ensure_ascii=False, indent=2) + "\n"
            if out is not None:
                out.write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
    except OSError as exc:
        raise ExportError(f"cannot write {out or 'stdout'}: {exc}") from None


def _utf8_stdout() -> None:
    # Vietnamese names must reach a pipe or file intact whatever the locale says.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")


async def _purge(config: GatewayConfig, days: int) -> None:
    db = await connect(config.database)
    try:
        result = await purge(db, older_than_s=days * DAY_S, now_s=int(time.time()))
    finally:
        await db.close()
    print(
        f"purged data older than {days} days: {result.checkins} check-ins, "
        f"{result.stays} stays, {result.refused_messages} refused messages"
    )
