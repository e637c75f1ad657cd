"""The gateway configuration: a validated model read from a JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.messages import DeviceId
from broker.secrets import BrokerLogin
from gateway.errors import ConfigError
from gateway.registry import SiteEntry


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceEntry(_Model):
    """A device the gateway accepts check-ins from."""

    device_id: DeviceId
    site_id: DeviceId
    gate: str = Field("", max_length=64, description="Gate name shown to operators.")
    direction: Literal["in", "out"] = "in"
    zone: str = Field("", max_length=64, description="Zone of the site this gate opens into.")
    revoked_at: str | None = Field(
        None,
        description="When the device was revoked (ISO 8601 UTC): its row is kept for tracing, "
        "everything it sends is refused.",
    )


class GatewayBrokerConfig(BrokerLogin):
    """Where the site broker is and how the gateway logs in."""

    username: str = Field("gateway", min_length=1, max_length=64)
    client_id: str = Field("qrgate-gateway", min_length=1, max_length=64)


class WebConfig(_Model):
    """The dashboard and HTTP API the gateway serves (docs/dashboard.md)."""

    enabled: bool = Field(False, description="Serve the dashboard and API.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the dashboard.")
    session_ttl_s: int = Field(
        8 * 3600, ge=60, le=7 * 86400, description="A login session expires after this long."
    )
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure (when served behind HTTPS)."
    )
    subject_key_file: Path | None = Field(
        None,
        description="Province subject-hash key: lets health officers trace by ID number "
        "(without it, by pseudonym only).",
    )


class GatewayConfig(_Model):
    """Everything the gateway needs to run."""

    site_id: DeviceId
    broker: GatewayBrokerConfig
    database: Path = Field(description="SQLite file of the tracing database.")
    devices: list[DeviceEntry] = Field(
        default_factory=list, description="Devices to register at start (kept when removed here)."
    )
    sites: list[SiteEntry] = Field(
        default_factory=list,
        description="Sites with zones and shifts to register at start (kept when removed "
        "here); when listed, every device must belong to one of them.",
    )
    max_batch_messages: int = Field(
        500, ge=1, le=10_000, description="Messages written in one transaction at most."
    )
    retention_days: int = Field(
        30, ge=1, description="Check-ins, stays and refused messages older than this are purged."
    )
    web: WebConfig = Field(
        default_factory=lambda: WebConfig(), description="Dashboard and HTTP API."
    )
    timezone: str = Field(
        "Asia/Ho_Chi_Minh", description="IANA time zone of the times in tracing exports."
    )

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        ids = [d.device_id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"devices listed twice: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _devices_in_sites(self) -> GatewayConfig:
        if not self.sites:
            return self
        ids = [s.site_id for s in self.sites]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"sites listed twice: {', '.join(dupes)}")
        zones = {s.site_id: {z.zone_id for z in s.zones} for s in self.sites}
        for d in self.devices:
            if d.site_id not in zones:
                raise ValueError(f"device {d.device_id}: site {d.site_id} is not a listed site")
            if d.zone and d.zone not in zones[d.site_id]:
                raise ValueError(
                    f"device {d.device_id}: zone {d.zone!r} is not a zone of site {d.site_id}"
                )
        return self


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file; relative paths are taken from its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {path}: {exc}") from None
    try:
        config = GatewayConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"invalid gateway config {path}:\n{exc}") from None
    base = path.parent
    broker = config.broker
    if broker.password_file is not None and not broker.password_file.is_absolute():
        broker = broker.model_copy(update={"password_file": base / broker.password_file})
    database = config.database if config.database.is_absolute() else base / config.database
    web = config.web
    if web.subject_key_file is not None and not web.subject_key_file.is_absolute():
        web = web.model_copy(update={"subject_key_file": base / web.subject_key_file})
    return config.model_copy(update={"broker": broker, "database": database, "web": web})
