"""The device configuration: the local file is the pushable settings plus identity and paths.

A config pushed by the gateway is validated by building this same model from
the local identity and the pushed settings (:func:`apply_settings`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from broker.messages import DeviceId
from broker.secrets import BrokerLogin
from broker.settings import DeviceSettings, FileSourceConfig
from device.errors import ConfigError


class BrokerConfig(BrokerLogin):
    """Where the site broker is and how this device logs in (its user is its device id)."""

    username: DeviceId


class DeviceConfig(DeviceSettings):
    """Everything a gate device needs to run: identity, broker, files, and its settings."""

    device_id: DeviceId
    site_id: DeviceId
    broker: BrokerConfig
    outbox_path: Path = Field(description="SQLite file of the durable outbox.")
    subject_key_file: Path = Field(
        description="File holding the province-wide key of the pseudonymous subject hash."
    )
    state_dir: Path | None = Field(
        None,
        description="Where pushed config and device state are kept (default: outbox's folder).",
    )

    @model_validator(mode="after")
    def _username_is_device(self) -> DeviceConfig:
        if self.broker.username != self.device_id:
            raise ValueError(
                f"broker.username {self.broker.username!r} must equal device_id "
                f"{self.device_id!r}: the broker ACL pins each device to its own topics"
            )
        return self

    @property
    def state_path(self) -> Path:
        return self.state_dir or self.outbox_path.parent

    def settings(self) -> DeviceSettings:
        """The pushable part of this config."""
        fields = set(DeviceSettings.model_fields)
        return DeviceSettings.model_validate(self.model_dump(include=fields))

    def subject_key(self) -> bytes:
        """Read the subject-hash key; it is a secret and is never logged."""
        try:
            key = self.subject_key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read subject key file: {exc}") from None
        if len(key) < 16:
            raise ConfigError(f"subject key in {self.subject_key_file} is shorter than 16 bytes")
        return key


def apply_settings(base: DeviceConfig, settings: DeviceSettings) -> DeviceConfig:
    """``base`` with its settings replaced, validated by the full model; raises ConfigError."""
    local = base.model_dump(exclude=set(DeviceSettings.model_fields))
    try:
        return DeviceConfig.model_validate({**local, **settings.model_dump()})
    except ValidationError as exc:
        raise ConfigError(f"settings do not fit this device: {exc}") from None


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
    if broker.tls is not None:
        tls = broker.tls
        files = {"ca_file": fix(tls.ca_file)}
        if tls.cert_file is not None and tls.key_file is not None:
            files |= {"cert_file": fix(tls.cert_file), "key_file": fix(tls.key_file)}
        broker = broker.model_copy(update={"tls": tls.model_copy(update=files)})
    source = config.frame_source
    if isinstance(source, FileSourceConfig):
        source = source.model_copy(update={"paths": [fix(p) for p in source.paths]})
    update: dict[str, object] = {
        "broker": broker,
        "frame_source": source,
        "outbox_path": fix(config.outbox_path),
        "subject_key_file": fix(config.subject_key_file),
    }
    if config.state_dir is not None:
        update["state_dir"] = fix(config.state_dir)
    return config.model_copy(update=update)
