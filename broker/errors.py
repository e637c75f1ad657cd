"""Errors raised by the bus contract."""


class BrokerError(Exception):
    """Root of every error raised by the broker package."""


class BadTopic(BrokerError):
    """A topic does not belong to the qrgate tree or names an invalid device id."""


class BadMessage(BrokerError):
    """A payload was refused; ``reason`` is a short machine-readable label."""

    reason = "bad_message"


class PayloadTooLarge(BadMessage):
    """The payload is over the byte cap of the bus."""

    reason = "too_large"


class MalformedJSON(BadMessage):
    """The payload is not UTF-8 JSON."""

    reason = "malformed_json"


class SchemaViolation(BadMessage):
    """The payload is JSON but does not fit the message model."""

    reason = "schema"


class BrokerStartError(BrokerError):
    """The mosquitto process could not be started or did not start listening."""


class PasswordFileError(BrokerError):
    """A Mosquitto password file or password hash cannot be written or parsed."""


class BrokerConfigError(BrokerError):
    """A broker configuration was refused, e.g. a user name unsafe in an ACL."""
