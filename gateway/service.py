"""The gateway service: broker connection, ingest and acks, wired on one event loop."""

from __future__ import annotations

import asyncio
import logging
from zoneinfo import ZoneInfo

from broker.client import BusClient, ClientSettings, PublishRefused
from broker.enrollment import ALL_REQUESTS, is_enrollment_topic
from broker.messages import Ack, encode
from broker.topics import Channel, all_devices, device_topic
from gateway.alerts import AlertWatcher
from gateway.config import GatewayConfig
from gateway.enrollment import Enroller
from gateway.errors import GatewayError
from gateway.fleet import ConfigPublisher
from gateway.ingest import Ingestor
from gateway.registry import register_sites
from gateway.retention import run_retention
from gateway.staykeeper import StayKeeper
from gateway.store import SQLiteStore
from gateway.web.app import start_web

logger = logging.getLogger(__name__)


def client_settings(config: GatewayConfig, *, client_id: str) -> ClientSettings:
    """How the gateway (or one of its tools, under another client id) logs in."""
    b = config.broker
    return ClientSettings(
        client_id=client_id,
        username=b.username,
        password=b.password(),
        host=b.host,
        port=b.port,
        keepalive_s=b.keepalive_s,
        session_expiry_s=b.session_expiry_s,
        max_queued=50_000,
    )


class Gateway:
    """Runs ingest against the site broker until stopped."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.store: SQLiteStore | None = None
        self.ingestor: Ingestor | None = None
        self.enroller: Enroller | None = None
        self.client: BusClient | None = None
        self.publisher: ConfigPublisher | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.stays: StayKeeper | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Open the store, connect, and ingest until ``stop`` is set."""
        self.store = await SQLiteStore.open(self.config.database)
        try:
            await self.store.register_devices(self.config.devices)
            async with self.store.exclusive() as db:
                await register_sites(db, self.config.sites)
            self.stays = StayKeeper(self.store, tz=ZoneInfo(self.config.timezone))
            self.ingestor = Ingestor(
                self.store,
                send_ack=self._send_ack,
                max_batch=self.config.max_batch_messages,
                on_committed=self.stays.mark,
            )
            await self.ingestor.load()
            self.enroller = Enroller(self.store, send_reply=self._send_reply)
            self.client = self._make_client()
            self.client.start()
            keeper = asyncio.create_task(self.stays.run(stop), name="stays")
            self.publisher = ConfigPublisher(self.store, self.client)
            web = start_web(self.config, self.publisher, stop)
            tasks = [
                asyncio.create_task(self.publisher.follow(stop), name="configs"),
                asyncio.create_task(self.ingestor.run(), name="ingest"),
                asyncio.create_task(self.enroller.run(), name="enrollment"),
                asyncio.create_task(
                    run_retention(self.config.database, days=self.config.retention_days),
                    name="retention",
                ),
                asyncio.create_task(AlertWatcher(self.config.database).run(), name="alerts"),
            ]
            await stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if web is not None:
                await web
            self.client.stop()
            await keeper
            logger.info("gateway stopped: %s", dict(self.ingestor.counts))
        finally:
            await self.store.close()

    def _make_client(self) -> BusClient:
        assert self.ingestor is not None
        settings = client_settings(self.config, client_id=self.config.broker.client_id)
        return BusClient(
            settings,
            loop=asyncio.get_running_loop(),
            subscriptions=[
                (all_devices(Channel.CHECKIN), 1),
                (all_devices(Channel.STATE), 1),
                (ALL_REQUESTS, 1),
            ],
            on_message=self._route,
            on_connected=self._on_connected,
        )

    def _on_connected(self) -> None:
        task = asyncio.create_task(self._republish_configs(), name="republish-configs")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _republish_configs(self) -> None:
        assert self.store is not None and self.client is not None
        try:
            publisher = self.publisher or ConfigPublisher(self.store, self.client)
            count = await publisher.republish_all()
        except GatewayError as exc:
            logger.warning("desired configs not republished: %s", exc)
        except PublishRefused as exc:
            logger.warning("desired configs not republished: %s", exc)
        else:
            logger.info("republished %d desired configs", count)

    def _send_ack(self, device_id: str, stream: str, upto: int) -> None:
        assert self.client is not None
        try:
            payload = encode(Ack(stream=stream, upto=upto))
            self.client.publish(device_topic(device_id, Channel.ACK), payload, qos=1)
        except PublishRefused as exc:
            # The device resends after its ack timeout and gets the ack then.
            logger.warning("ack to %s not sent: %s", device_id, exc)

    def _route(self, topic: str, payload: bytes) -> None:
        """Enrollment requests to the enroller, everything else to ingest."""
        assert self.ingestor is not None and self.enroller is not None
        if is_enrollment_topic(topic):
            self.enroller.submit(topic, payload)
        else:
            self.ingestor.submit(topic, payload)

    def _send_reply(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        try:
            self.client.publish(topic, payload, qos=1)
        except PublishRefused as exc:
            # The device asks again after its reply timeout and gets the same answer.
            logger.warning("enrollment reply on %s not sent: %s", topic, exc)
