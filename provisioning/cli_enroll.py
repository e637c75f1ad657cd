"""``qrgate-provision enroll-token``: a one-time enrollment QR code for a device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from broker.messages import utc_iso
from provisioning.enrollment import issue_code, parse_ttl


def register(subparsers: Any) -> None:
    """Add the ``enroll-token`` command."""
    cmd = subparsers.add_parser(
        "enroll-token",
        help="a one-time QR code that lets an unconfigured device enroll itself",
        description="Seal the device's config and secrets with a fresh one-time token, store "
        "it at the gateway, and write the QR code to show the device "
        "(python -m device enroll). The token works once, until it expires.",
    )
    cmd.add_argument("--site", type=Path, required=True, help="site folder")
    cmd.add_argument("--device", required=True, help="device id (already added to the site)")
    cmd.add_argument("--ttl", default="15m", help="how long the code works: 90s, 15m, 2h, 1d")
    cmd.add_argument("--out", type=Path, required=True, help="QR image to write (.png or .svg)")
    cmd.add_argument("--host", help="broker address the device dials (default: the site's)")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Make the code; prints one JSON line (never the token)."""
    issued = issue_code(
        args.site, args.device, ttl=parse_ttl(args.ttl), host=args.host, out=args.out
    )
    code = issued.code
    summary = {
        "device": code.device,
        "broker": f"{code.host}:{code.port}",
        "expires": utc_iso(code.expires),
        "image": str(issued.image),
    }
    print(json.dumps(summary))
    return 0
