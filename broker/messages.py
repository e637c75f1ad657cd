"""Payload models of the bus, with strict validation and a byte-size cap.

Every payload is UTF-8 JSON. Both sides encode with :func:`encode` and decode
with the ``decode_*`` functions, which raise a :class:`broker.errors.BadMessage`
subclass naming what was wrong and never return a half-valid object.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from broker.errors import MalformedJSON, PayloadTooLarge, SchemaViolation
from broker.settings import ConfigPush
from broker.topics import DEVICE_ID_PATTERN

SCHEMA_VERSION: Literal[1] = 1
MAX_PAYLOAD_BYTES = 64 * 1024
# A pushed config may carry a trust list of signing certificates.
MAX_CONFIG_BYTES = 512 * 1024
MAX_RECORDS_PER_BATCH = 200

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
# An outbox stream id: 32 lower-case hex digits, created once with the outbox.
StreamId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
# A pseudonymous subject key: hex of a keyed hash, never the ID itself.
SubjectKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,64}$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class PersonalFields(_Model):
    """Identity fields of a subject; they travel only sealed (``broker.sealing``)."""

    id_number: Annotated[str, StringConstraints(max_length=32)]
    name: ShortText = ""
    date_of_birth: Annotated[str, StringConstraints(max_length=10)] = ""
    old_id_number: Annotated[str, StringConstraints(max_length=32)] = ""


class CheckIn(_Model):
    """One scan at a gate, accepted or rejected; ``seq`` is unique within its stream."""

    seq: int = Field(ge=1)
    scanned_at: AwareDatetime
    direction: Literal["in", "out"]
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    accepted: bool
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,48}$")]
    subject: SubjectKey | None = None
    sealed: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{64,2048}$")] | None = Field(
        None, description="PersonalFields sealed to the health authority's public key."
    )
    initials: Annotated[str, StringConstraints(max_length=32)] = Field(
        "", description="What an operator may see without the key, e.g. 'N. V. An'."
    )
    warnings: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=8
    )
    clock_synced: bool = Field(
        True, description="False when the device clock was not NTP-synchronised at the scan."
    )
    credential_id: Annotated[str, StringConstraints(max_length=64)] = ""


class CheckInBatch(_Model):
    """Check-ins of one device stream, in ascending ``seq`` order."""

    v: Literal[1] = SCHEMA_VERSION
    device_id: DeviceId
    stream: StreamId
    records: list[CheckIn] = Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)

    def model_post_init(self, __context: object) -> None:
        seqs = [r.seq for r in self.records]
        if any(b <= a for a, b in pairwise(seqs)):
            raise ValueError("records must be in strictly ascending seq order")


class Ack(_Model):
    """Everything of ``stream`` up to and including ``upto`` is committed at the gateway."""

    v: Literal[1] = SCHEMA_VERSION
    stream: StreamId
    upto: int = Field(ge=0)


class Health(_Model):
    """A device's periodic health report."""

    uptime_s: float = Field(ge=0)
    scans: int = Field(ge=0)
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    outbox_depth: int = Field(ge=0)
    oldest_pending_s: float | None = Field(None, ge=0)
    median_decode_ms: float = Field(ge=0)
    camera_fps: float = Field(ge=0)
    frames_dropped: int = Field(0, ge=0)
    cpu_temp_c: float | None = None
    clock_synced: bool
    direction: Literal["in", "out"]


class DeviceState(_Model):
    """Retained device state; the broker publishes the ``offline`` last will for us.

    ``config_version`` is the version of the pushed config in force (0: only
    the local file); ``config_error`` says why the last push was refused.
    """

    v: Literal[1] = SCHEMA_VERSION
    status: Literal["online", "offline"]
    at: AwareDatetime | None = None
    firmware: Annotated[str, StringConstraints(max_length=32)] = ""
    config_version: int = Field(0, ge=0)
    config_error: Annotated[str, StringConstraints(max_length=1000)] = ""
    health: Health | None = None


M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel, *, cap: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Serialise a message; raises :class:`PayloadTooLarge` if it is over the cap."""
    payload = message.model_dump_json(exclude_none=True).encode()
    if len(payload) > cap:
        raise PayloadTooLarge(f"{len(payload)} bytes is over the {cap} byte cap")
    return payload


def _decode(model: type[M], payload: bytes, *, cap: int = MAX_PAYLOAD_BYTES) -> M:
    if len(payload) > cap:
        raise PayloadTooLarge(f"{len(payload)} bytes is over the {cap} byte cap")
    try:
        # pydantic-core parses and validates in one pass: about half the cost of
        # json.loads + model_validate, which the gateway pays for every check-in.
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            raise MalformedJSON(f"not UTF-8 JSON: {first['msg']}") from None
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise SchemaViolation(
            f"{model.__name__}: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def decode_checkins(payload: bytes) -> CheckInBatch:
    """Decode a check-in batch published by a device."""
    return _decode(CheckInBatch, payload)


def decode_ack(payload: bytes) -> Ack:
    """Decode an ack published by the gateway."""
    return _decode(Ack, payload)


def decode_state(payload: bytes) -> DeviceState:
    """Decode a device state message."""
    return _decode(DeviceState, payload)


def decode_config_push(payload: bytes) -> ConfigPush:
    """Decode a config pushed by the gateway (validated by the device settings model)."""
    return _decode(ConfigPush, payload, cap=MAX_CONFIG_BYTES)


def encode_config_push(push: ConfigPush) -> bytes:
    """Serialise a config push, under its own larger cap."""
    return encode(push, cap=MAX_CONFIG_BYTES)


def utc_iso(moment: datetime) -> str:
    """ISO-8601 text of an aware datetime in UTC, as stored in the databases."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
