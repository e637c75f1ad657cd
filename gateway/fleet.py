"""Desired config per device: versioned in the tracing store, published retained to the device."""

from __future__ import annotations

import logging

from broker.client import BusClient
from broker.messages import encode_config_push
from broker.settings import ConfigPush, DeviceSettings
from broker.topics import Channel, device_topic
from gateway.errors import GatewayError
from gateway.store import TracingStore

logger = logging.getLogger(__name__)


class UnknownDevice(GatewayError):
    """A config was addressed to a device the gateway has not registered."""


class ConfigPublisher:
    """Stores a device's desired config under the next version and publishes it, retained."""

    def __init__(self, store: TracingStore, client: BusClient) -> None:
        self._store = store
        self._client = client

    async def push(self, device_id: str, settings: DeviceSettings) -> int:
        """Make ``settings`` the device's desired config; returns the new version."""
        if device_id not in await self._store.devices():
            raise UnknownDevice(f"device {device_id!r} is not registered at this gateway")
        version = await self._store.add_desired_config(device_id, settings)
        await self._publish(device_id, ConfigPush(version=version, settings=settings))
        logger.info("desired config version %d published to %s", version, device_id)
        return version

    async def republish_all(self) -> int:
        """Publish every device's newest desired config again (a broker may have lost them)."""
        pushes = await self._store.desired_configs()
        for device_id, push in pushes.items():
            await self._publish(device_id, push)
        return len(pushes)

    async def _publish(self, device_id: str, push: ConfigPush) -> None:
        topic = device_topic(device_id, Channel.CONFIG)
        await self._client.publish_confirmed(topic, encode_config_push(push), retain=True)
