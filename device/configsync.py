"""The config in force: the local file plus the last good pushed settings, kept on disk.

A push is validated by the same model as the local file before it is applied;
a refused push leaves the last good config in force and its error is reported.
The last good push is written atomically beside the outbox, so a reboot
without network comes back with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from broker.errors import BadMessage
from broker.messages import decode_config_push
from broker.settings import ConfigPush
from device.config import DeviceConfig, apply_settings
from device.errors import ConfigError

logger = logging.getLogger(__name__)

PUSHED_FILE = "pushed-config.json"


class ConfigKeeper:
    """Holds the config in force and its pushed version (0: the local file alone)."""

    def __init__(self, base: DeviceConfig) -> None:
        self.base = base
        self.path = base.state_path / PUSHED_FILE
        self.current = base
        self.version = 0
        self.error = ""
        self._load_persisted()

    def _load_persisted(self) -> None:
        if not self.path.exists():
            return
        try:
            push = decode_config_push(self.path.read_bytes())
            self.current = apply_settings(self.base, push.settings)
        except (OSError, BadMessage, ConfigError) as exc:
            logger.error("ignoring stored pushed config %s: %s", self.path, exc)
            return
        self.version = push.version
        logger.info("using pushed config version %d from %s", self.version, self.path)

    def check(self, payload: bytes) -> tuple[ConfigPush, DeviceConfig] | None:
        """Validate a pushed config; None if it is refused (see ``error``) or already in force."""
        if not payload:
            return None  # the retained config was cleared: keep what we have
        try:
            push = decode_config_push(payload)
        except BadMessage as exc:
            self.refuse(_version_of(payload), str(exc))
            return None
        if push.version == self.version:
            return None
        try:
            return push, apply_settings(self.base, push.settings)
        except ConfigError as exc:
            self.refuse(push.version, str(exc))
            return None

    def commit(self, push: ConfigPush, config: DeviceConfig) -> None:
        """The pushed config is in force: keep it on disk for the next boot."""
        self._persist(push)
        self.current, self.version, self.error = config, push.version, ""
        logger.info("applied pushed config version %d", push.version)

    def refuse(self, version: int | None, reason: str) -> None:
        """Record why a push was not applied; the config in force stays."""
        shown = f"version {version}" if version is not None else "a push without a version"
        self.error = f"{shown} refused: {reason}"[:1000]
        logger.error("pushed config %s; keeping version %d", self.error, self.version)

    def _persist(self, push: ConfigPush) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(push.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def _version_of(payload: bytes) -> int | None:
    """The version a refused push claims, for the report (it may be malformed too)."""
    try:
        version = json.loads(payload).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, int) else None


def persisted_version(state_dir: Path) -> int:
    """The version stored in ``state_dir`` (0 if none), for tools and tests."""
    path = state_dir / PUSHED_FILE
    if not path.exists():
        return 0
    return decode_config_push(path.read_bytes()).version
