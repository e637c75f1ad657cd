"""The rollout report on the gateway's command line.

python -m gateway rollout --config FILE [--month YYYY-MM | --from DATE --to DATE]
    [--format csv|xlsx|json] --out FILE

Without a period it reports the previous calendar month (local time), the one
the directives want reported by the 5th. With ``--format csv`` the daily rows
go beside ``FILE`` in ``<name>-daily.csv``.

Hooked into ``gateway.__main__``: ``add_cli(subparsers)`` while building the
parser, and for ``args.command in COMMANDS``, ``return asyncio.run(run_cli(args, config))``.
"""

from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path

from gateway.audit import connect
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.exports import zone_info
from gateway.rollout import FORMATS, RolloutError, rollout_report, write_report

logger = logging.getLogger(__name__)

COMMANDS = frozenset({"rollout"})


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rollout`` subcommand to the gateway's command line."""
    parser = subparsers.add_parser("rollout", help="monthly QR check-in rollout report")
    parser.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    parser.add_argument("--month", help="YYYY-MM (default: the previous month)")
    parser.add_argument("--from", dest="start", help="first day YYYY-MM-DD (with --to)")
    parser.add_argument("--to", dest="end", help="last day YYYY-MM-DD, included")
    parser.add_argument("--format", choices=FORMATS, default="xlsx", help="file format")
    parser.add_argument("--out", type=Path, required=True, help="file to write")


async def run_cli(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Build and write the report; returns the exit code (2 when refused)."""
    try:
        tz = zone_info(config.timezone)
        month, start, end = _period_args(args)
        db = await connect(config.database)
        try:
            report = await rollout_report(db, month=month, start=start, end=end, tz=tz)
        finally:
            await db.close()
        written = write_report(report, args.format, args.out)
    except GatewayError as exc:
        logger.error("%s", exc)
        return 2
    rows = sum(r.registered_sites for r in report.areas)
    print(
        f"rollout report {report.start}..{report.end}: {len(report.areas)} area rows, "
        f"{rows} registered sites, {len(report.daily)} site-days -> "
        + ", ".join(str(p) for p in written)
    )
    return 0


def _period_args(args: argparse.Namespace) -> tuple[str | None, date | None, date | None]:
    if args.start or args.end:
        if args.month:
            raise RolloutError("give --month or --from/--to, not both")
        return None, _day(args.start, "--from"), _day(args.end, "--to")
    return args.month, None, None


def _day(text: str | None, option: str) -> date:
    if not text:
        raise RolloutError(f"{option} is missing: give both --from and --to")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RolloutError(f"{option} {text!r} is not a date YYYY-MM-DD") from None
