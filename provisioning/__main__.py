"""Command line of the technicians' scripts: ``python -m provisioning COMMAND``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from broker.errors import BrokerError
from provisioning.demo import run_demo
from provisioning.errors import ProvisioningError

logger = logging.getLogger("provisioning")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m provisioning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="site in a box: broker, gateway and simulated gates")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of scanning")
    demo.add_argument("--people", type=int, default=40, help="synthetic people to scan")
    demo.add_argument("--workdir", type=Path, default=Path(".demo"), help="where the site goes")
    demo.add_argument("--seed", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            return run_demo(
                args.workdir, duration=args.duration, people=args.people, seed=args.seed
            )
    except (ProvisioningError, BrokerError) as exc:
        logger.error("%s", exc)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
