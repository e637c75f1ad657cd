"""The device configuration: one validated model for the local file and for pushed config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.messages import DeviceId
from broker.secrets import read_password
from device.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSourceConfig(_Model):
    """Frames read from image files: for simulation, tests and benchmarks."""

    type: Literal["file"] = "file"
    paths: list[Path] = Field(
        min_length=1,
        description="Image files, or directories whose images are read in name order.",
    )
    loop: bool = Field(False, description="Start again after the last image.")
    shuffle_seed: int | None = Field(
        None,
        description="Shuffle the images with this seed (each pass anew) instead of name order.",
    )
    interval_s: float = Field(
        0.0, ge=0, le=60, description="Seconds between frames; 0 reads as fast as decoding allows."
    )


class Picamera2SourceConfig(_Model):
    """A Raspberry Pi camera through picamera2; grayscale from the Y plane of a YUV stream."""

    type: Literal["picamera2"] = "picamera2"
    width: int = Field(640, ge=160, le=4056)
    height: int = Field(480, ge=120, le=3040)
    camera_index: int = Field(0, ge=0, le=7)


FrameSourceConfig = Annotated[FileSourceConfig | Picamera2SourceConfig, Field(discriminator="type")]


class DecoderConfig(_Model):
    """Which QR decoder backend reads the frames."""

    type: Literal["zxing", "zbar"] = Field("zxing", description="zxing-cpp (default) or pyzbar.")
    try_invert: bool = Field(
        False, description="Also look for light-on-dark codes (costs a second pass per frame)."
    )


class PinsConfig(_Model):
    """GPIO pins (BCM numbering) of the gate's signals."""

    factory: Literal["auto", "mock"] = Field(
        "auto",
        description="'auto': gpiozero's default (real pins on a Pi); 'mock': gpiozero's "
        "MockFactory, for simulated gates and tests off the Pi.",
    )
    green_led: int = Field(17, ge=0, le=27)
    red_led: int = Field(27, ge=0, le=27)
    buzzer: int = Field(22, ge=0, le=27)

    @model_validator(mode="after")
    def _distinct(self) -> PinsConfig:
        pins = [self.green_led, self.red_led, self.buzzer]
        if len(set(pins)) != len(pins):
            raise ValueError(f"signal pins must be distinct, got {pins}")
        return self


class BrokerConfig(_Model):
    """Where the site broker is and how this device logs in."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: DeviceId
    password_file: Path | None = Field(
        None, description="File holding the broker password; else $QRGATE_BROKER_PASSWORD."
    )
    keepalive_s: int = Field(15, ge=5, le=600)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)

    def password(self) -> str:
        """Read the broker password from its file or the environment."""
        return read_password(self.password_file)


class DeviceConfig(_Model):
    """Everything a gate device needs to run; the local file and pushed config share it."""

    device_id: DeviceId
    site_id: DeviceId
    direction: Literal["in", "out"] = "in"
    broker: BrokerConfig
    frame_source: FrameSourceConfig
    decoder: DecoderConfig = DecoderConfig()
    pins: PinsConfig = PinsConfig()
    outbox_path: Path = Field(description="SQLite file of the durable outbox.")
    subject_key_file: Path = Field(
        description="File holding the province-wide key of the pseudonymous subject hash."
    )
    debounce_s: float = Field(3.0, ge=0, le=600, description="Same code within this is one scan.")
    ack_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Resend unacked check-ins after this long without an ack."
    )
    max_batch: int = Field(100, ge=1, le=200, description="Check-ins per message when catching up.")

    @model_validator(mode="after")
    def _username_is_device(self) -> DeviceConfig:
        if self.broker.username != self.device_id:
            raise ValueError(
                f"broker.username {self.broker.username!r} must equal device_id "
                f"{self.device_id!r}: the broker ACL pins each device to its own topics"
            )
        return self

    def subject_key(self) -> bytes:
        """Read the subject-hash key; it is a secret and is never logged."""
        try:
            key = self.subject_key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read subject key file: {exc}") from None
        if len(key) < 16:
            raise ConfigError(f"subject key in {self.subject_key_file} is shorter than 16 bytes")
        return key


def load_config(path: Path) -> DeviceConfig:
    """Read and validate a device config file; relative paths are taken from its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read device config {path}: {exc}") from None
    try:
        config = DeviceConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"invalid device config {path}:\n{exc}") from None
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: DeviceConfig, base: Path) -> DeviceConfig:
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    broker = config.broker
    if broker.password_file is not None:
        broker = broker.model_copy(update={"password_file": fix(broker.password_file)})
    source = config.frame_source
    if isinstance(source, FileSourceConfig):
        source = source.model_copy(update={"paths": [fix(p) for p in source.paths]})
    return config.model_copy(
        update={
            "broker": broker,
            "frame_source": source,
            "outbox_path": fix(config.outbox_path),
            "subject_key_file": fix(config.subject_key_file),
        }
    )
