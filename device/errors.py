"""Errors raised by the device firmware."""

from __future__ import annotations


class DeviceError(Exception):
    """Root of every error raised by the device package."""


class ConfigError(DeviceError):
    """The device configuration file is missing, unreadable or invalid."""


class FrameSourceError(DeviceError):
    """A frame source could not be opened or read."""


class DecoderError(DeviceError):
    """A decoder backend is unavailable or failed on a frame."""


class OutboxError(DeviceError):
    """The durable outbox could not be opened or written."""


class CredentialError(DeviceError):
    """A scanned code was not accepted as a credential; ``reason`` is a stable label."""

    reason = "rejected"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UnrecognizedCode(CredentialError):
    """The text is not any credential format this device knows."""

    reason = "unrecognized"


class InvalidCredential(CredentialError):
    """The text has a known format but breaks one of its rules.

    ``id_number`` is set when the ID could still be read, so an investigator
    can see who tried to enter with a bad card.
    """

    reason = "invalid"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        id_number: str = "",
        name: str = "",
        date_of_birth: str = "",
    ) -> None:
        super().__init__(message, reason=reason)
        self.id_number = id_number
        self.name = name
        self.date_of_birth = date_of_birth


class BadgeKeyError(ConfigError):
    """A configured badge issuer key is not an Ed25519 public key."""
