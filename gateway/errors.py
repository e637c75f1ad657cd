"""Errors raised by the gateway."""


class GatewayError(Exception):
    """Root of every error raised by the gateway package."""


class ConfigError(GatewayError):
    """The gateway configuration file is missing, unreadable or invalid."""


class StoreError(GatewayError):
    """The tracing store could not be opened, migrated or written."""


class MigrationError(StoreError):
    """A schema migration is missing, out of order or failed."""
