"""Dashboard users: who may log in, with which role, and which sites an operator sees.

Roles: an ``operator`` sees the devices and check-in counts of their own
sites and never a personal field; a ``health`` officer traces and exports
(every trace and export is audited); an ``admin`` manages sites, users and
devices. Passwords are hashed with argon2id (argon2-cffi); hashing is slow on
purpose, so it runs in a worker thread, never on the event loop.

Command line (``python -m gateway user ...``)::

    user add --config FILE --username NAME --role operator|health|admin [--site S ...]
    user passwd --config FILE --username NAME
    user list --config FILE

The password is read from standard input (a prompt on a terminal), never
from the command line, so it stays out of the process list and shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import aiosqlite
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from broker.messages import utc_iso
from gateway.audit import connect, transaction
from gateway.config import GatewayConfig
from gateway.errors import GatewayError

COMMANDS = frozenset({"user"})
MIN_PASSWORD = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_SITE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
_HASHER = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a
# wrong password and login timing does not tell which names exist.
_DUMMY_HASH = _HASHER.hash("qrgate-no-such-user")


class Role(StrEnum):
    """What a dashboard user may do."""

    OPERATOR = "operator"
    HEALTH = "health"
    ADMIN = "admin"


class UserError(GatewayError):
    """A user change was refused (bad name, role, sites or password); nothing was written."""


class UnknownUser(UserError):
    """No user of that name."""


class UserExists(UserError):
    """A user of that name already exists."""


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard user; ``sites`` matters for operators only."""

    username: str
    role: Role
    sites: tuple[str, ...] = ()
    disabled: bool = False

    def may_see(self, site_id: str) -> bool:
        """Operators see their own sites; health officers and admins see every site."""
        return self.role is not Role.OPERATOR or site_id in self.sites

    def site_filter(self) -> list[str] | None:
        """The sites this user is limited to, or None for every site."""
        return list(self.sites) if self.role is Role.OPERATOR else None


def check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise UserError(
            f"user name {username!r}: 2-64 of a-z, 0-9, '.', '_', '-', starting with a letter "
            "or digit"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("password too long: at most 1024 characters")
    return password


def check_role_sites(role: Role, sites: list[str]) -> tuple[str, ...]:
    bad = [s for s in sites if not _SITE.match(s)]
    if bad:
        raise UserError(f"not a site id: {', '.join(repr(s) for s in bad)}")
    if role is Role.OPERATOR and not sites:
        raise UserError("an operator needs at least one site (--site)")
    if role is not Role.OPERATOR and sites:
        raise UserError(f"sites are for operators only; a {role} user sees every site")
    return tuple(sorted(set(sites)))


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise UserError(f"role {text!r}: one of operator, health, admin") from None


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, check_password(password))


async def _verify(stored: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


async def add_user(
    db: aiosqlite.Connection, username: str, role: Role, password: str, sites: list[str]
) -> User:
    """Create a user; UserExists if the name is taken."""
    check_username(username)
    kept = check_role_sites(role, sites)
    hashed = await hash_password(password)
    async with transaction(db):
        if await _row(db, username) is not None:
            raise UserExists(f"user {username!r} already exists")
        await db.execute(
            "INSERT INTO users (username, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (username, role.value, hashed, utc_iso(datetime.now(UTC))),
        )
        await _write_sites(db, username, kept)
    return User(username, role, kept)


async def update_user(
    db: aiosqlite.Connection,
    username: str,
    *,
    role: Role | None = None,
    sites: list[str] | None = None,
    password: str | None = None,
    disabled: bool | None = None,
) -> User:
    """Change a user's role, sites, password or disabled flag; their sessions end."""
    current = await get_user(db, username)
    new_role = role or current.role
    kept = check_role_sites(new_role, list(current.sites) if sites is None else sites)
    hashed = await hash_password(password) if password is not None else None
    off = current.disabled if disabled is None else disabled
    async with transaction(db):
        await db.execute(
            "UPDATE users SET role=?, disabled=?, password_hash=coalesce(?, password_hash) "
            "WHERE username=?",
            (new_role.value, int(off), hashed, username),
        )
        await _write_sites(db, username, kept)
        # A changed role, site list or password takes effect now, not at session expiry.
        await db.execute("DELETE FROM sessions WHERE username=?", (username,))
    return User(username, new_role, kept, off)


async def delete_user(db: aiosqlite.Connection, username: str) -> None:
    await get_user(db, username)
    async with transaction(db):
        await db.execute("DELETE FROM sessions WHERE username=?", (username,))
        await db.execute("DELETE FROM user_sites WHERE username=?", (username,))
        await db.execute("DELETE FROM users WHERE username=?", (username,))


async def _write_sites(db: aiosqlite.Connection, username: str, sites: tuple[str, ...]) -> None:
    await db.execute("DELETE FROM user_sites WHERE username=?", (username,))
    await db.executemany(
        "INSERT INTO user_sites (username, site_id) VALUES (?, ?)", [(username, s) for s in sites]
    )


async def _row(db: aiosqlite.Connection, username: str) -> tuple[str, str, int] | None:
    async with db.execute(
        "SELECT role, password_hash, disabled FROM users WHERE username=?", (username,)
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else (str(row[0]), str(row[1]), int(row[2]))


async def _sites(db: aiosqlite.Connection, username: str) -> tuple[str, ...]:
    async with db.execute(
        "SELECT site_id FROM user_sites WHERE username=? ORDER BY site_id", (username,)
    ) as cur:
        return tuple(str(r[0]) for r in await cur.fetchall())


async def get_user(db: aiosqlite.Connection, username: str) -> User:
    row = await _row(db, username)
    if row is None:
        raise UnknownUser(f"no user {username!r}")
    return User(username, Role(row[0]), await _sites(db, username), bool(row[2]))


async def list_users(db: aiosqlite.Connection) -> list[User]:
    async with db.execute("SELECT username FROM users ORDER BY username") as cur:
        names = [str(r[0]) for r in await cur.fetchall()]
    return [await get_user(db, name) for name in names]


async def authenticate(db: aiosqlite.Connection, username: str, password: str) -> User | None:
    """The user if the name and password match and the account is enabled, else None."""
    row = await _row(db, username)
    ok = await _verify(row[1] if row is not None else _DUMMY_HASH, password)
    if row is None or not ok or row[2]:
        return None
    if _HASHER.check_needs_rehash(row[1]):
        async with transaction(db):
            await db.execute(
                "UPDATE users SET password_hash=? WHERE username=?",
                (await hash_password(password), username),
            )
    return await get_user(db, username)


# --- command line ------------------------------------------------------------------------


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = sub.add_parser("user", help="dashboard users: add, passwd, list")
    actions = user.add_subparsers(dest="user_command", required=True)
    add = actions.add_parser("add", help="add a user (password from stdin)")
    add.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--site", action="append", default=[], help="an operator's site (repeat)")
    passwd = actions.add_parser("passwd", help="set a user's password (from stdin)")
    passwd.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")
    passwd.add_argument("--username", required=True)
    listing = actions.add_parser("list", help="list users")
    listing.add_argument("--config", type=Path, required=True, help="gateway config file (JSON)")


def read_password() -> str:
    """A password from the terminal (asked twice) or the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def run_cli(args: argparse.Namespace, config: GatewayConfig) -> int:
    db = await connect_or_create(config)
    try:
        if args.user_command == "add":
            role = parse_role(args.role)
            made = await add_user(db, args.username, role, read_password(), args.site)
            print(f"user {made.username} added ({made.role}{_sites_text(made)})")
        elif args.user_command == "passwd":
            await update_user(db, args.username, password=read_password())
            print(f"password of {args.username} changed; their sessions ended")
        else:
            for u in await list_users(db):
                off = " (disabled)" if u.disabled else ""
                print(f"{u.username}\t{u.role}{_sites_text(u)}{off}")
    finally:
        await db.close()
    return 0


async def connect_or_create(config: GatewayConfig) -> aiosqlite.Connection:
    """The gateway database (created and migrated if new: users may come before data)."""
    config.database.parent.mkdir(parents=True, exist_ok=True)
    if not config.database.exists():
        db = await aiosqlite.connect(config.database, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.close()
    return await connect(config.database)


def _sites_text(user: User) -> str:
    return f": {', '.join(user.sites)}" if user.sites else ""
