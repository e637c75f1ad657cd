"""``site create``: a new site folder (identity, CA, broker, gateway, badge key)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.launcher import find_mosquitto
from gateway.categories import Category
from gateway.registry import SiteEntry, ZoneEntry
from provisioning.errors import BadDeviceRequest
from provisioning.site import DEFAULT_TLS_PORT, create_site


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``site`` command group."""
    site = subparsers.add_parser("site", help="create a site", description=__doc__)
    actions = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="a new site folder: identity, site CA, broker config, gateway config, badge key",
        description="Create a site folder. It holds secrets: keep it on the gateway or an "
        "encrypted disk. Devices are added afterwards with 'device add' or 'batch'.",
    )
    create.add_argument("--site", type=Path, required=True, help="new, empty site folder")
    create.add_argument("--id", required=True, help="site id: lower-case letters, digits, dashes")
    create.add_argument("--name", help="name shown to operators (default: the id)")
    create.add_argument(
        "--category",
        choices=[c.value for c in Category],
        default=Category.FACTORY.value,
        help="category of the directives (default: factory)",
    )
    create.add_argument("--address", default="", help="street address")
    create.add_argument("--province", default="", help="province or city")
    create.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="ID[=NAME]",
        help="a zone of the site (repeat for more), e.g. --zone line-1='Chuyền 1'",
    )
    create.add_argument("--host", default="0.0.0.0", help="address the broker listens on")
    create.add_argument(
        "--device-host",
        help="address devices dial: the gateway's LAN address or name (default: --host)",
    )
    create.add_argument("--port", type=int, default=1883, help="password listener (1883)")
    create.add_argument(
        "--tls-port", type=int, default=DEFAULT_TLS_PORT, help="certificate listener (8883)"
    )
    create.set_defaults(handler=_create)


def _zone(text: str) -> ZoneEntry:
    zone_id, _, name = text.partition("=")
    try:
        return ZoneEntry(zone_id=zone_id.strip(), name=name.strip())
    except ValidationError:
        raise BadDeviceRequest(
            "--zone", f"{zone_id!r} is not a zone id (lower-case letters, digits, '-', '_')"
        ) from None


def _create(args: argparse.Namespace) -> int:
    try:
        entry = SiteEntry(
            site_id=args.id,
            name=args.name or args.id,
            category=Category(args.category),
            address=args.address,
            province=args.province,
            zones=[_zone(z) for z in args.zone],
        )
    except ValidationError as exc:
        raise BadDeviceRequest("site", str(exc)) from None
    device_host = args.device_host or (args.host if args.host not in ("0.0.0.0", "::") else None)
    if device_host is None:
        raise BadDeviceRequest(
            "--device-host", "the broker listens on all addresses: say which one devices dial"
        )
    site = create_site(
        args.site,
        site_id=args.id,
        port=args.port,
        tls_port=args.tls_port,
        host=args.host,
        device_host=device_host,
        devices=[],
        site=entry,
        register=True,
    )
    print(f"site {site.site_id} created in {site.directory}")
    print(f"  broker config: {site.broker.conf}")
    print(f"  start it:      {find_mosquitto() or 'mosquitto'} -c {site.broker.conf}")
    print(f"  gateway:       python -m gateway run --config {site.gateway_config}")
    print(f"  devices reach: {device_host}:{args.tls_port} (certificate), :{args.port} (password)")
    return 0
