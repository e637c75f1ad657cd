"""The topic tree, defined once for both sides of the bus.

Every device has one subtree named by its device id, which is also its broker
user name, so the broker ACL can pin each device to its own subtree with ``%u``::

    qrgate/v1/dev/<device_id>/checkin   device -> gateway  QoS 1   check-in batches
    qrgate/v1/dev/<device_id>/state     device -> gateway  QoS 1   retained, last will "offline"
    qrgate/v1/dev/<device_id>/ack       gateway -> device  QoS 1   cumulative acks
    qrgate/v1/dev/<device_id>/config    gateway -> device  QoS 1   retained desired config
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from broker.errors import BadTopic

ROOT = "qrgate/v1"
DEVICE_PREFIX = f"{ROOT}/dev"

# Lower-case letters, digits and dashes: safe as an MQTT topic level, a broker
# user name, a file name and an X.509 common name alike.
DEVICE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class Channel(StrEnum):
    """The last level of a device topic."""

    CHECKIN = "checkin"
    STATE = "state"
    ACK = "ack"
    CONFIG = "config"


UPSTREAM = (Channel.CHECKIN, Channel.STATE)
DOWNSTREAM = (Channel.ACK, Channel.CONFIG)


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is valid, else raise :class:`BadTopic`."""
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise BadTopic(
            f"invalid device id {device_id!r}: use 1-64 lower-case letters, digits or "
            "dashes, not starting or ending with a dash"
        )
    return device_id


def device_topic(device_id: str, channel: Channel) -> str:
    """The topic of one channel of one device."""
    return f"{DEVICE_PREFIX}/{check_device_id(device_id)}/{channel.value}"


def all_devices(channel: Channel) -> str:
    """The wildcard subscription for one channel of every device."""
    return f"{DEVICE_PREFIX}/+/{channel.value}"


def acl_pattern(channel: Channel) -> str:
    """The Mosquitto ACL pattern for one channel of the connecting device."""
    return f"{DEVICE_PREFIX}/%u/{channel.value}"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device topic."""

    device_id: str
    channel: Channel


def parse_topic(topic: str) -> DeviceTopic:
    """Split a device topic into device id and channel, or raise :class:`BadTopic`."""
    prefix = DEVICE_PREFIX + "/"
    if not topic.startswith(prefix):
        raise BadTopic(f"topic {topic!r} is outside {prefix}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2:
        raise BadTopic(f"topic {topic!r} is not {prefix}<device_id>/<channel>")
    device_id, channel = parts
    try:
        parsed = Channel(channel)
    except ValueError:
        raise BadTopic(f"topic {topic!r} has unknown channel {channel!r}") from None
    return DeviceTopic(check_device_id(device_id), parsed)
