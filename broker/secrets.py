"""Secrets come from files or the environment, never from config text or logs."""

from __future__ import annotations

import os
from pathlib import Path

from broker.errors import BrokerError

PASSWORD_ENV = "QRGATE_BROKER_PASSWORD"


class SecretMissing(BrokerError):
    """A secret file cannot be read, or neither the file nor the variable is set."""


def read_password(password_file: Path | None, *, env: str = PASSWORD_ENV) -> str:
    """The broker password from ``password_file``, else from the environment variable ``env``."""
    if password_file is not None:
        try:
            secret = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretMissing(f"cannot read broker password file: {exc}") from None
        if not secret:
            raise SecretMissing(f"broker password file {password_file} is empty")
        return secret
    secret = os.environ.get(env, "")
    if not secret:
        raise SecretMissing(f"no broker password: set password_file or ${env}")
    return secret
