"""Mosquitto password files, written by Python in Mosquitto's own format.

Mosquitto 2.0 stores one ``user:hash`` line per user, where the hash is::

    $7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512 of the password>

with a 12-byte random salt, a 64-byte derived key and 101 iterations, which is
what ``mosquitto_passwd`` 2.0.x writes. Producing it here means the gateway can
provision users without shelling out to ``mosquitto_passwd``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from broker.errors import PasswordFileError

logger = logging.getLogger(__name__)

SCHEME = "7"
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
_DIGEST = "sha512"


def new_password() -> str:
    """A fresh random password, safe to put in a config file or an env variable."""
    return secrets.token_urlsafe(24)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(_DIGEST, password.encode("utf-8"), salt, iterations, HASH_BYTES)


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """Hash ``password`` as ``mosquitto_passwd`` does; ``salt`` is random unless given."""
    if iterations < 1:
        raise PasswordFileError(f"iterations must be positive, got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif not salt:
        raise PasswordFileError("salt must not be empty")
    digest = _derive(password, salt, iterations)
    return f"${SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[int, bytes, bytes]:
    """Split a ``$7$`` hash into iterations, salt and key, or raise PasswordFileError."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != SCHEME:
        raise PasswordFileError("not a mosquitto $7$ password hash")
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise PasswordFileError(f"malformed mosquitto $7$ password hash: {exc}") from None
    if iterations < 1 or not salt or not digest:
        raise PasswordFileError("malformed mosquitto $7$ password hash")
    return iterations, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash; a malformed hash raises PasswordFileError."""
    iterations, salt, expected = _parse(encoded)
    actual = hashlib.pbkdf2_hmac(_DIGEST, password.encode("utf-8"), salt, iterations, len(expected))
    return hmac.compare_digest(actual, expected)


def check_username(username: str) -> str:
    """Return ``username`` if the password file format can hold it, else raise."""
    if not username or any(c in username for c in ":\r\n\0"):
        raise PasswordFileError(
            f"invalid user name {username!r} for a password file: empty, or has ':' or a newline"
        )
    return username


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write ``users`` (user name -> plain password) hashed, atomically, mode 0600."""
    lines = [f"{check_username(name)}:{hash_password(users[name])}\n" for name in sorted(users)]
    write_private_file(path, "".join(lines))
    logger.info("wrote password file %s with %d users", path, len(lines))


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only.

    Readers (mosquitto on SIGHUP, or a crash mid-write) see the old file or the
    new one, never half of one: the text goes to a temporary file in the same
    directory, is flushed to disk, and is renamed over ``path``.
    """
    # mkstemp creates the file 0600, so a secret is never briefly world-readable.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
