"""Errors raised by provisioning."""


class ProvisioningError(Exception):
    """Root of every error raised by the provisioning package."""


class SiteExists(ProvisioningError):
    """The target folder already holds a site."""


class SiteNotFound(ProvisioningError):
    """The folder holds no site (no readable site.json)."""


class UnknownDevice(ProvisioningError):
    """The site has no device of that id."""


class DeviceRevoked(ProvisioningError):
    """The device is revoked: its id and credentials are never used again."""


class BadDeviceRequest(ProvisioningError):
    """A device request does not fit the site; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CsvFileError(ProvisioningError):
    """A device CSV cannot be read at all (missing file, bad header)."""
