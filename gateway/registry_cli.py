"""Registry commands of the gateway's command line: sites, trips and trip schedules.

python -m gateway sites --config FILE
python -m gateway trip-start --config FILE --site S [--at TIME] [--tz ZONE]
python -m gateway trip-end --config FILE --site S [--at TIME] [--tz ZONE]
python -m gateway import-trips --config FILE --csv SCHEDULE.csv [--tz ZONE]

TIME is ISO 8601 with offset or local 'YYYY-MM-DD HH:MM'; ZONE defaults to the
gateway config's time zone. ``trip-start`` and ``trip-end`` are for the driver
or operator until bus readers get trip buttons (future work); they record the
trip as observed ("device"), not planned ("schedule").

Hooked into ``gateway.__main__`` by its owner: ``add_cli(subparsers)`` while
building the parser, and for ``args.command in COMMANDS`` after loading the
config, ``return asyncio.run(run_cli(args, config))``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.registry import add_trips, end_trip, sites, start_trip, when
from gateway.schedule import parse_time, read_schedule_csv
from gateway.store import SQLiteStore

logger = logging.getLogger(__name__)

COMMANDS = frozenset({"sites", "trip-start", "trip-end", "import-trips"})


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the registry subcommands to the gateway's command line."""
    listing = _command(subparsers, "sites", "list the registered sites as JSON")
    listing.set_defaults(registry_command="sites")
    for name, verb in (("trip-start", "start"), ("trip-end", "end")):
        trip = _command(subparsers, name, f"{verb} a trip of a vehicle")
        trip.add_argument("--site", required=True, help="site id of the vehicle")
        trip.add_argument("--at", help="time of the trip's " + verb + " (default: now)")
        trip.add_argument("--tz", help="time zone of a local --at (default: the config's)")
        trip.set_defaults(registry_command=name)
    schedule = _command(subparsers, "import-trips", "import a trip schedule, all rows or none")
    schedule.add_argument("--csv", type=Path, required=True, help="vehicle_site_id,start,end")
    schedule.add_argument("--tz", help="time zone of local times (default: the config's)")
    schedule.set_defaults(registry_command="import-trips")


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=text)
    parser.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    return parser


async def run_cli(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Run one registry subcommand; returns the exit code (2 when refused)."""
    try:
        zone = _zone(getattr(args, "tz", None) or config.timezone)
        store = await SQLiteStore.open(config.database)
        try:
            # A tool's own connection; the registry writes through it as the gateway does.
            return await _dispatch(store, args, zone)
        finally:
            await store.close()
    except (GatewayError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


async def _dispatch(store: SQLiteStore, args: argparse.Namespace, zone: ZoneInfo) -> int:
    db = store._db
    command = args.registry_command
    if command == "sites":
        listed = [s.model_dump(mode="json") for s in await sites(db)]
        print(json.dumps(listed, indent=2, ensure_ascii=False))
    elif command == "trip-start":
        at_s = _at(args.at, zone)
        trip_id = await start_trip(db, args.site, at_s, source="device")
        print(f"trip {trip_id} of {args.site} started at {when(at_s)}")
    elif command == "trip-end":
        at_s = _at(args.at, zone)
        trip_id = await end_trip(db, args.site, at_s)
        print(f"trip {trip_id} of {args.site} ended at {when(at_s)}")
    elif command == "import-trips":
        ids = await add_trips(db, read_schedule_csv(args.csv, zone))
        print(f"{len(ids)} trips imported from {args.csv}")
    else:
        raise ValueError(f"not a registry command: {command!r}")
    return 0


def _at(text: str | None, zone: ZoneInfo) -> int:
    if text is None:
        return int(time.time())
    try:
        return parse_time(text, zone)
    except ValueError as exc:
        raise ValueError(f"--at: {exc}") from None
