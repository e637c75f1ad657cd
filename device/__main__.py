"""Command line of the gate device: ``python -m device run --config FILE``.

An unconfigured device enrolls by QR code: ``python -m device enroll --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import BrokerError
from device.app import GateDevice
from device.check import check, make_readers
from device.config import load_config
from device.enroll import add_cli as add_enroll_cli
from device.enroll import run_cli as run_enroll
from device.errors import DeviceError

logger = logging.getLogger("device")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="scan, signal and deliver check-ins until stopped")
    run.add_argument("--config", type=Path, required=True, help="device config file (JSON)")
    run.add_argument(
        "--drain", type=float, default=5.0, help="seconds to keep delivering after a stop request"
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    chk = sub.add_parser("check", help="verdict on QR text or an image, as one JSON object")
    chk.add_argument("input", help="QR text, or the path of an image holding QR codes")
    chk.add_argument("--trust", type=Path, help="PEM file of health-pass signing certificates")
    chk.add_argument("--badge-keys", type=Path, help="JSON file: badge key id -> public key")
    chk.add_argument("--site", help="site id that badges must be issued for")
    chk.add_argument(
        "--at", type=_aware_datetime, help="judge validity at this ISO-8601 time (default: now)"
    )
    chk.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    add_enroll_cli(sub)
    return parser


def _aware_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.astimezone()


def _check(args: argparse.Namespace) -> int:
    readers = make_readers(trust=args.trust, badge_keys=args.badge_keys, site=args.site)
    result = check(args.input, readers=readers, at=args.at or datetime.now(UTC))
    print(json.dumps(result, ensure_ascii=False))
    return 0


async def _run(config_path: Path, drain_s: float) -> None:
    config = load_config(config_path)
    device = GateDevice(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("device %s at site %s starting", config.device_id, config.site_id)
    await device.run(stop, drain_s=drain_s)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "enroll":
            return run_enroll(args)
        asyncio.run(_run(args.config, args.drain))
    except (DeviceError, BrokerError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
