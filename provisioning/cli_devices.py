"""``device add|revoke|rotate|list``, ``batch`` and ``bundle``: a site's devices."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from provisioning.batch import run_batch, write_report
from provisioning.bundle import read_wifi, write_bundle
from provisioning.devices import DeviceSpec, add_devices, revoke_device, rotate_device
from provisioning.errors import BadDeviceRequest
from provisioning.layout import open_site
from provisioning.manifest import load_manifest
from provisioning.sync import SyncReport

_BATCH_HELP = """CSV columns (header row): device_id,gate,direction,zone,vehicle.
direction (in/out) is required; a row without device_id is named from its
vehicle or zone, gate and direction. Re-running the same file changes nothing.
Bad rows are reported (file, line, field, reason) and skipped; good rows are
provisioned. Exit code 0: every row good; 1: some rows bad; 2: nothing done."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``device``, ``batch`` and ``bundle`` commands."""
    device = subparsers.add_parser("device", help="add, revoke, rotate or list devices")
    actions = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    _add_parser(actions)
    for name, text in (
        ("revoke", "revoke a device at once: password and certificate refused; row kept"),
        ("rotate", "new password and certificate; the old ones stop working at once"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--site", type=Path, required=True, help="site folder")
        action.add_argument("--device", required=True, help="device id")
        action.set_defaults(handler=_revoke if name == "revoke" else _rotate)
    listing = actions.add_parser("list", help="the site's devices, revoked ones included")
    listing.add_argument("--site", type=Path, required=True, help="site folder")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_list)
    _batch_parser(subparsers)
    _bundle_parser(subparsers)


def _add_parser(actions: argparse._SubParsersAction[Any]) -> None:
    add = actions.add_parser(
        "add",
        help="add a device (or update its gate, direction, zone or vehicle)",
        description="Add a device: broker password, TLS client certificate (CN = device id), "
        "ACL entry, device config, registry row and desired config at the gateway. Running "
        "it again with the same values changes nothing.",
    )
    add.add_argument("--site", type=Path, required=True, help="site folder")
    add.add_argument("--device", required=True, help="device id, e.g. gate-1 or bus-017-in")
    add.add_argument("--gate", default="", help="gate name shown to operators")
    add.add_argument("--direction", choices=["in", "out"], default="in", help="in (default)/out")
    place = add.add_mutually_exclusive_group()
    place.add_argument("--zone", default="", help="zone of the site (made by 'site create')")
    place.add_argument("--vehicle", default="", help="vehicle id (registered as a vehicle)")
    add.set_defaults(handler=_add)


def _batch_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    batch = subparsers.add_parser(
        "batch",
        help="add or update devices from a CSV file",
        description=_BATCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("--site", type=Path, required=True, help="site folder")
    batch.add_argument("--csv", type=Path, required=True, help="device CSV (see above)")
    batch.add_argument("--report", type=Path, help="write the per-row report here (CSV)")
    batch.add_argument("--bundles", type=Path, help="also write every good row's bundle here")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.set_defaults(handler=_batch)


def _bundle_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    bundle = subparsers.add_parser(
        "bundle",
        help="a device's files for its Pi's boot partition (folder or .tar.gz)",
        description="Write qrgate-<id>/ (or .tar.gz) with device.json, the CA certificate, "
        "the client certificate and key (or the password file) and optionally a Wi-Fi "
        "profile. On the Pi: sudo scripts/pi/install-device.sh /boot/firmware/qrgate-<id>",
    )
    bundle.add_argument("--site", type=Path, required=True, help="site folder")
    bundle.add_argument("--device", required=True, help="device id")
    bundle.add_argument("--out", type=Path, required=True, help="folder to write the bundle in")
    bundle.add_argument(
        "--auth",
        choices=["cert", "password"],
        default="cert",
        help="log in with the client certificate (default) or the password",
    )
    bundle.add_argument("--tar", action="store_true", help="a .tar.gz instead of a folder")
    bundle.add_argument("--wifi-ssid", help="Wi-Fi network the Pi joins")
    bundle.add_argument("--wifi-psk-file", type=Path, help="file holding its passphrase")
    bundle.set_defaults(handler=_bundle)


def _print_sync(report: SyncReport) -> None:
    print(f"broker: {report.reload}")


def _add(args: argparse.Namespace) -> int:
    site = open_site(args.site)
    spec = DeviceSpec(
        device_id=args.device,
        gate=args.gate,
        direction=args.direction,
        zone=args.zone,
        vehicle=args.vehicle,
    )
    applied = add_devices(site, [spec])
    print(f"device {args.device}: {applied.changes[0].kind}")
    _print_sync(applied.sync)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    report = revoke_device(open_site(args.site), args.device)
    print(f"device {args.device}: revoked")
    _print_sync(report)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    report = rotate_device(open_site(args.site), args.device)
    print(f"device {args.device}: new credentials; make and install a new bundle")
    _print_sync(report)
    return 0


def _list(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.site)
    for d in manifest.devices:
        if args.json:
            print(json.dumps(d.model_dump(), ensure_ascii=False))
        else:
            place = f"vehicle {d.vehicle}" if d.vehicle else f"zone {d.zone}" if d.zone else "-"
            state = f"revoked {d.revoked_at}" if d.revoked_at else "active"
            print(f"{d.device_id}\t{d.direction}\t{d.gate or '-'}\t{place}\t{state}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    site = open_site(args.site)
    progress = not args.no_progress and sys.stderr.isatty()
    result = run_batch(site, args.csv, progress=progress)
    for row in result.rows:
        print(f"line {row.line}\t{row.device_id or '-'}\t{row.status}\t{row.detail}")
    if args.report is not None:
        write_report(args.report, result.rows)
    if args.bundles is not None:
        good = [r.device_id for r in result.rows if r.status != "error"]
        for device_id in good:
            write_bundle(site, device_id, args.bundles)
        print(f"{len(good)} bundles in {args.bundles}")
    print(result.summary())
    if result.sync is not None:
        _print_sync(result.sync)
    return 1 if result.errors else 0


def _bundle(args: argparse.Namespace) -> int:
    wifi = None
    if (args.wifi_ssid is None) != (args.wifi_psk_file is None):
        raise BadDeviceRequest("--wifi-ssid", "give --wifi-ssid and --wifi-psk-file together")
    if args.wifi_ssid is not None:
        wifi = read_wifi(args.wifi_ssid, args.wifi_psk_file)
    path = write_bundle(
        open_site(args.site), args.device, args.out, auth=args.auth, wifi=wifi, tarball=args.tar
    )
    print(f"bundle: {path}")
    return 0
