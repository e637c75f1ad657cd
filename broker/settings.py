"""Device settings: what the gateway may push to a device; one model validates them on both sides.

The device's local file (``device.config.DeviceConfig``) is these settings plus
its identity, broker address and file paths; a pushed config is these settings
alone, under a version number (:class:`ConfigPush`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

SubjectKeyText = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,64}$")]
CredentialKind = Literal["cccd", "badge", "dcc"]
ALL_KINDS: tuple[CredentialKind, ...] = ("cccd", "badge", "dcc")
Pin = Annotated[int, Field(ge=0, le=27, description="BCM GPIO number")]


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
    autofocus: bool = Field(True, description="Continuous autofocus where the camera has it.")
    exposure_value: float = Field(
        0.0, ge=-8, le=8, description="Exposure compensation in stops; raise it for a dim gate."
    )


class V4L2SourceConfig(_Model):
    """A USB webcam through OpenCV's V4L2 backend (the optional ``webcam`` extra)."""

    type: Literal["v4l2"] = "v4l2"
    device: str = Field("/dev/video0", description="Video device path or index as text.")
    width: int = Field(640, ge=160, le=3840)
    height: int = Field(480, ge=120, le=2160)


FrameSourceConfig = Annotated[
    FileSourceConfig | Picamera2SourceConfig | V4L2SourceConfig, Field(discriminator="type")
]


class DecoderConfig(_Model):
    """Which QR decoder backend reads the frames."""

    type: Literal["zxing", "zbar"] = Field("zxing", description="zxing-cpp (default) or pyzbar.")
    try_invert: bool = Field(
        False, description="Also look for light-on-dark codes (costs a second pass per frame)."
    )


class SignalsConfig(_Model):
    """Lights, buzzer, relay and button of a gate (BCM pin numbers)."""

    factory: Literal["auto", "mock"] = Field(
        "auto",
        description="'auto': gpiozero's default (real pins on a Pi); 'mock': gpiozero's "
        "MockFactory, for simulated gates and tests off the Pi.",
    )
    led: Literal["pair", "rgb"] = Field("pair", description="A green/red LED pair or one RGB LED.")
    green_led: Pin = 17
    red_led: Pin = 27
    rgb_pins: tuple[Pin, Pin, Pin] | None = Field(None, description="(red, green, blue) pins.")
    rgb_common_anode: bool = Field(False, description="RGB LED wired common anode.")
    buzzer: Pin | None = 22
    buzzer_type: Literal["active", "tonal"] = Field(
        "active", description="'active' beeps by itself; 'tonal' is a passive piezo driven by PWM."
    )
    relay: Pin | None = Field(None, description="Relay to a turnstile or door strike.")
    relay_active_high: bool = True
    relay_pulse_s: float = Field(1.0, gt=0, le=30, description="How long the relay is held.")
    button: Pin | None = Field(None, description="Exit or direction button (to ground).")

    @model_validator(mode="after")
    def _pins(self) -> SignalsConfig:
        if self.led == "rgb" and self.rgb_pins is None:
            raise ValueError("led 'rgb' needs rgb_pins (red, green, blue)")
        lights = list(self.rgb_pins or ()) if self.led == "rgb" else [self.green_led, self.red_led]
        pins = [p for p in [*lights, self.buzzer, self.relay, self.button] if p is not None]
        if len(set(pins)) != len(pins):
            raise ValueError(f"signal pins must be distinct, got {pins}")
        return self

    def used_pins(self) -> list[int]:
        """Every pin these signals drive or read."""
        lights = list(self.rgb_pins or ()) if self.led == "rgb" else [self.green_led, self.red_led]
        return [p for p in [*lights, self.buzzer, self.relay, self.button] if p is not None]


class PolicyConfig(_Model):
    """Who may pass this gate."""

    accept_kinds: list[CredentialKind] = Field(
        default_factory=lambda: list(ALL_KINDS),
        min_length=1,
        description="Credential kinds accepted here; a factory may accept only its badges.",
    )
    deny_subjects: list[SubjectKeyText] = Field(
        default_factory=list,
        max_length=100_000,
        description="Pseudonymous subject keys refused here (e.g. ordered to quarantine).",
    )
    revoked_badges: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=100_000, description="Badge ids that are revoked."
    )
    debounce_s: float = Field(3.0, ge=0, le=600, description="Same code within this: one scan.")
    anti_passback: Literal["off", "warn", "reject"] = Field(
        "off", description="The same subject entering twice without leaving in between."
    )
    passback_window_s: float = Field(
        12 * 3600, gt=0, description="How long an entry without an exit counts as still inside."
    )
    direction_mode: Literal["fixed", "button"] = Field(
        "fixed", description="'button': the button switches a single reader between in and out."
    )
    require_health_pass: bool = Field(
        False,
        description="An ID card or badge is accepted only after a valid health pass of the "
        "same person was shown within health_pass_window_s.",
    )
    health_pass_window_s: float = Field(120, gt=0, le=3600)

    @model_validator(mode="after")
    def _health_pass_needs_dcc(self) -> PolicyConfig:
        if self.require_health_pass and "dcc" not in self.accept_kinds:
            raise ValueError(
                "require_health_pass needs 'dcc' in accept_kinds: no health pass could be shown"
            )
        return self


class CredentialsConfig(_Model):
    """Public keys the device verifies credentials with."""

    badge_keys: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")],
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=_-]{40,64}$")],
    ] = Field(default_factory=dict, description="Badge issuer key id -> Ed25519 public key.")
    trust_list: list[Annotated[str, StringConstraints(max_length=8192)]] = Field(
        default_factory=list,
        max_length=1000,
        description="PEM certificates of health-pass (DCC) document signers.",
    )


class PrivacyConfig(_Model):
    """Who can read the identity behind a check-in."""

    authority_public_key: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}=?$")] | None
    ) = Field(
        None,
        description="The health authority's X25519 public key (url-safe base64). Without it "
        "no identity leaves the gate: check-ins carry only the pseudonym and initials.",
    )


class DeviceSettings(_Model):
    """Everything about a device that the gateway may set."""

    direction: Literal["in", "out"] = "in"
    frame_source: FrameSourceConfig = Field(default_factory=Picamera2SourceConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    ack_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Resend unacked check-ins after this long without an ack."
    )
    max_batch: int = Field(100, ge=1, le=200, description="Check-ins per message when catching up.")
    health_interval_s: float = Field(30.0, ge=1, le=3600, description="Seconds between reports.")


class ConfigPush(_Model):
    """A desired config published (retained) by the gateway to one device."""

    v: Literal[1] = 1
    version: int = Field(ge=1)
    settings: DeviceSettings
