"""Desired config per device: versioned in the tracing store, published retained to the device."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.client import BusClient, PublishRefused
from broker.messages import encode_config_push
from broker.settings import ConfigPush, DeviceSettings
from broker.topics import Channel, device_topic
from gateway.errors import GatewayError
from gateway.store import TracingStore

logger = logging.getLogger(__name__)


class UnknownDevice(GatewayError):
    """A config was addressed to a device the gateway has not registered."""


# How often the gateway looks for desired configs written by other processes
# (provisioning, a badge revocation): they reach running devices within this.
FOLLOW_INTERVAL_S = 5.0


class ConfigPublisher:
    """Stores a device's desired config under the next version and publishes it, retained."""

    def __init__(self, store: TracingStore, client: BusClient) -> None:
        self._store = store
        self._client = client
        self._published: dict[str, int] = {}

    async def push(self, device_id: str, settings: DeviceSettings, *, layered: bool = False) -> int:
        """Make ``settings`` the device's desired config; returns the new version.

        ``layered`` marks settings that :mod:`gateway.desired` layered over the
        device's base; without it, ``settings`` become the new base.
        """
        if device_id not in await self._store.devices():
            raise UnknownDevice(f"device {device_id!r} is not registered at this gateway")
        version = await self._store.add_desired_config(device_id, settings, layered=layered)
        await self._publish(device_id, ConfigPush(version=version, settings=settings))
        logger.info("desired config version %d published to %s", version, device_id)
        return version

    async def republish_all(self) -> int:
        """Publish every device's newest desired config again (a broker may have lost them)."""
        pushes = await self._store.desired_configs()
        for device_id, push in pushes.items():
            await self._publish(device_id, push)
        return len(pushes)

    async def publish_new(self) -> int:
        """Publish the desired configs newer than what this publisher last published."""
        pushes = await self._store.desired_configs()
        fresh = {
            device_id: push
            for device_id, push in pushes.items()
            if push.version > self._published.get(device_id, 0)
        }
        for device_id, push in fresh.items():
            await self._publish(device_id, push)
            logger.info("desired config version %d published to %s", push.version, device_id)
        return len(fresh)

    async def follow(self, stop: asyncio.Event, interval_s: float = FOLLOW_INTERVAL_S) -> None:
        """Until ``stop``: publish configs that other processes stored in the database."""
        while not stop.is_set():
            try:
                await self.publish_new()
            except PublishRefused as exc:
                logger.debug("desired configs not published yet: %s", exc)
            except GatewayError as exc:
                logger.warning("desired configs not published: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def _publish(self, device_id: str, push: ConfigPush) -> None:
        topic = device_topic(device_id, Channel.CONFIG)
        await self._client.publish_confirmed(topic, encode_config_push(push), retain=True)
        self._published[device_id] = max(push.version, self._published.get(device_id, 0))
