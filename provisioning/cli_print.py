"""Printing commands of ``python -m provisioning``: device labels and worker badges.

labels --site DIR --out SHEET.pdf|SHEET.svg
badges issue --site DIR --csv WORKERS.csv --out SHEET.pdf [--key ISSUER.key]
badges revoke --site DIR --badge-id ID --reason TEXT

Each command sets ``handler`` (taking the parsed arguments, returning the exit
status); errors are ProvisioningError, reported by the caller.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from provisioning.labels import write_labels
from provisioning.siteinfo import read_site
from provisioning.workers import issue_for_workers, revoke_badge

NO_GATEWAY_DB = (
    "the site's gateway database does not exist yet: the configs reach the gates "
    "when the site is registered"
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``labels`` and ``badges`` commands."""
    labels = subparsers.add_parser("labels", help="print a label sheet of the site's devices")
    labels.add_argument("--site", type=Path, required=True, help="site folder")
    labels.add_argument("--out", type=Path, required=True, help="sheet file, .pdf or .svg")
    labels.set_defaults(handler=_labels)
    badges = subparsers.add_parser("badges", help="issue, print and revoke worker badges")
    actions = badges.add_subparsers(dest="badges_command", required=True)
    issue = actions.add_parser("issue", help="issue badges from a worker CSV and print them")
    issue.add_argument("--site", type=Path, required=True, help="site folder")
    issue.add_argument("--csv", type=Path, required=True, help="worker list (see docs)")
    issue.add_argument("--out", type=Path, required=True, help="badge sheet PDF to write")
    issue.add_argument(
        "--key", type=Path, help="issuer key file (default: the site's secrets/badge-issuer.key)"
    )
    issue.set_defaults(handler=_issue)
    revoke = actions.add_parser("revoke", help="put a badge on every gate's revoked list")
    revoke.add_argument("--site", type=Path, required=True, help="site folder")
    revoke.add_argument("--badge-id", required=True, help="badge id (printed on the badge)")
    revoke.add_argument("--reason", required=True, help="why, e.g. 'lost', 'left the company'")
    revoke.set_defaults(handler=_revoke)


def _labels(args: argparse.Namespace) -> int:
    site = read_site(args.site)
    for path in write_labels(site, args.out):
        print(f"labels: {path}")
    print(f"{len(site.devices)} devices of site {site.site_id}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    issued = issue_for_workers(args.site, args.csv, args.out, key_path=args.key)
    print(f"issued {len(issued.badges)} badges")
    print(f"badge sheet: {issued.sheet}")
    print(f"badge ids and expiries: {issued.listing}")
    if issued.devices_updated:
        print(f"{issued.devices_updated} device configs now trust the issuer key")
        _print_desired(issued.desired_stored)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    revoked = revoke_badge(args.site, args.badge_id, args.reason)
    if not revoked.devices_updated:
        print(f"badge {revoked.badge_id} was already revoked on every device config")
        return 0
    print(f"badge {revoked.badge_id} of worker {revoked.worker_id} revoked")
    print(f"{revoked.devices_updated} device configs updated")
    _print_desired(revoked.desired_stored)
    return 0


def _print_desired(stored: int | None) -> None:
    if stored is None:
        print(NO_GATEWAY_DB)
    else:
        print(
            f"{stored} desired configs stored in the gateway database; the gateway "
            "publishes them to the gates when it next connects to the broker"
        )
