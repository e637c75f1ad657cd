"""Errors raised by provisioning."""


class ProvisioningError(Exception):
    """Root of every error raised by the provisioning package."""


class SiteExists(ProvisioningError):
    """The target folder already holds a site."""
