"""Secrets come from files or the environment, never from config text or logs."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class TlsFiles(BaseModel):
    """TLS to the broker: the site CA, and optionally this client's certificate as its login."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(description="PEM certificate of the site CA that signed the broker's.")
    cert_file: Path | None = Field(
        None, description="PEM client certificate; its common name is the broker user name."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file (a secret).")

    @model_validator(mode="after")
    def _pair(self) -> TlsFiles:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both or neither")
        return self


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
    tls: TlsFiles | None = Field(
        None, description="Connect over TLS; with a client certificate no password is needed."
    )

    def password(self) -> str:
        """Read the broker password from its file or the environment.

        A client certificate is the login on a listener with ``use_identity_as_username``, so
        with one and no password configured the password is empty instead of missing.
        """
        if self.tls is not None and self.tls.cert_file is not None and self.password_file is None:
            return os.environ.get(PASSWORD_ENV, "")
        return read_password(self.password_file)
