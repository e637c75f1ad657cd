"""Numbered schema migrations: ``NNNN_name.sql`` files applied in order, tracked in user_version."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import aiosqlite

from gateway.errors import MigrationError

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step."""

    number: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """All migrations shipped with the gateway, in order; gaps are an error."""
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.number)
    for expected, migration in enumerate(found, start=1):
        if migration.number != expected:
            raise MigrationError(f"migration {expected:04d} missing before {migration.name}")
    return found


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply every migration newer than the database; returns the schema version."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    steps = migrations()
    if current > len(steps):
        raise MigrationError(
            f"database schema {current} is newer than this gateway knows ({len(steps)})"
        )
    for step in steps[current:]:
        logger.info("applying migration %s", step.name)
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{step.sql}\nPRAGMA user_version = {step.number};\nCOMMIT;"
            )
        except aiosqlite.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise MigrationError(f"migration {step.name} failed: {exc}") from exc
    return len(steps)
