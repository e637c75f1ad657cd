"""The technicians' command line: ``python -m provisioning COMMAND ...`` (``--help`` on each).

Commands come in groups, one module each (``_COMMAND_GROUPS``). A group module
has ``register(subparsers)``, which adds its sub-commands; each sets
``handler``, a function of the parsed arguments that returns the exit code.
A :class:`ProvisioningError` or :class:`BrokerError` ends the command with its
message (which names the file, line and field at fault) and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from broker.errors import BrokerError
from provisioning import cli_devices, cli_enroll, cli_print, cli_site
from provisioning.errors import ProvisioningError

logger = logging.getLogger("provisioning")

# Other modules add their own group by adding one line here (and its import above).
_COMMAND_GROUPS: list[ModuleType] = [
    cli_site,
    cli_devices,
    cli_print,
    cli_enroll,
]


def _register_demo(subparsers: argparse._SubParsersAction[Any]) -> None:
    demo = subparsers.add_parser("demo", help="site in a box: broker, gateway and simulated gates")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of scanning")
    demo.add_argument("--people", type=int, default=40, help="synthetic people to scan")
    demo.add_argument("--workdir", type=Path, default=Path(".demo"), help="where the site goes")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic people")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from provisioning.demo import run_demo  # heavy (QR images): only for this command

    return run_demo(args.workdir, duration=args.duration, people=args.people, seed=args.seed)


def parser() -> argparse.ArgumentParser:
    """The whole command line, every group registered."""
    top = argparse.ArgumentParser(
        prog="python -m provisioning",
        description="qrgate provisioning: sites, devices, batches, bundles, badges.",
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_demo(sub)
    for group in _COMMAND_GROUPS:
        group.register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.INFO if args.verbose or args.command == "demo" else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (ProvisioningError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
