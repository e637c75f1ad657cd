"""Command line of the gateway.

python -m gateway run --config FILE
python -m gateway push-config --config FILE --device ID --settings SETTINGS.json

Tracing tools; each query is recorded in the audit log with --actor and --purpose,
and shows names and ID numbers only with the health authority's --key:

python -m gateway trace --config FILE (--subject KEY | --id-number N [--kind cccd]
    --subject-key-file FILE) --since TIME --until TIME [--threshold-min N] [--levels 1|2]
    [--key FILE] --actor NAME --purpose TEXT [--format json|csv|xlsx] [--out FILE]
python -m gateway venue --config FILE --site S --from TIME --until TIME [--margin-min 60] ...
python -m gateway export-checkins --config FILE --site S --from TIME --until TIME ...
python -m gateway purge --config FILE [--days N]
python -m gateway rollout --config FILE [--month YYYY-MM] --format csv|xlsx|json --out FILE
python -m gateway user add|passwd|list --config FILE [--username NAME --role R --site S]

TIME is ISO 8601; without an offset it is local time in the config's time zone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from broker.client import BusClient, PublishRefused
from broker.errors import BrokerError
from broker.settings import DeviceSettings
from gateway import registry_cli, rollout_cli, tracing_cli, users
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError, GatewayError
from gateway.fleet import ConfigPublisher
from gateway.service import Gateway, client_settings
from gateway.store import SQLiteStore

logger = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest check-ins until stopped")
    run.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    push = sub.add_parser("push-config", help="validate, store and publish a device's config")
    push.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    push.add_argument("--device", required=True, help="device id")
    push.add_argument("--settings", type=Path, required=True, help="device settings (JSON)")
    tracing_cli.add_cli(sub)
    registry_cli.add_cli(sub)
    rollout_cli.add_cli(sub)
    users.add_cli(sub)
    return parser


async def _run(config: GatewayConfig) -> None:
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("gateway for site %s starting, database %s", config.site_id, config.database)
    await gateway.run(stop)


def read_settings(path: Path) -> DeviceSettings:
    """Device settings from a JSON file, validated by the model the device applies."""
    try:
        return DeviceSettings.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings {path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"invalid device settings in {path}:\n{exc}") from None


async def _push(config: GatewayConfig, device_id: str, settings: DeviceSettings) -> int:
    store = await SQLiteStore.open(config.database)
    client = BusClient(
        client_settings(config, client_id=f"{config.broker.client_id}-admin"),
        loop=asyncio.get_running_loop(),
    )
    try:
        client.start()
        try:
            await client.wait_connected(timeout=15)
        except TimeoutError:
            raise GatewayError(
                f"broker {config.broker.host}:{config.broker.port} not reachable"
            ) from None
        return await ConfigPublisher(store, client).push(device_id, settings)
    finally:
        client.stop()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
        if args.command == "run":
            asyncio.run(_run(config))
        elif args.command == "push-config":
            settings = read_settings(args.settings)
            version = asyncio.run(_push(config, args.device, settings))
            print(f"device {args.device}: desired config version {version} published")
        elif args.command in tracing_cli.COMMANDS:
            asyncio.run(tracing_cli.run_cli(args, config))
        elif args.command in registry_cli.COMMANDS:
            return asyncio.run(registry_cli.run_cli(args, config))
        elif args.command in rollout_cli.COMMANDS:
            return asyncio.run(rollout_cli.run_cli(args, config))
        elif args.command in users.COMMANDS:
            return asyncio.run(users.run_cli(args, config))
    except (GatewayError, BrokerError, PublishRefused) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
