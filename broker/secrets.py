"""Secrets come from files or the environment, never from config text or logs."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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


class BrokerLogin(BaseModel):
    """Where the site broker is and how a client proves who it is; the two sides add a user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    password_file: Path | None = Field(
        None, description=f"File holding the broker password; else ${PASSWORD_ENV}."
    )
    keepalive_s: int = Field(15, ge=5, le=600)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)

    def password(self) -> str:
        """Read the broker password from its file or the environment."""
        return read_password(self.password_file)
