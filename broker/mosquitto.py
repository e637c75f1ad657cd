"""Generate a Mosquitto 2.0 configuration: conf, password file and ACL.

Every broker user is either a gateway user, which reads all devices' upstream
channels and writes their downstream ones, or a device, whose user name is its
device id and which the ACL pins to its own subtree with ``%u`` patterns.

Mosquitto applies ``pattern`` lines to *every* user, gateway users included:
a gateway user named ``gateway`` also gets the device rights on
``qrgate/v1/dev/gateway/...``. That is harmless (the gateway is trusted, and
no device can be called the same as a gateway user since both are entries of
one password file), but it is why every user name, not only device ids, must
be a plain topic level: a name with ``+``, ``#`` or ``/`` would turn ``%u``
into a wildcard or an extra level and open other devices' topics.

Mosquitto re-reads the password file and ACL on SIGHUP
(:meth:`broker.launcher.Mosquitto.reload`), so a new device can be added by
calling :func:`write_broker_config` again and reloading.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from broker import enrollment
from broker.errors import BrokerConfigError, PasswordFileError
from broker.messages import MAX_CONFIG_BYTES
from broker.passwords import check_username, hash_password, verify_password, write_private_file
from broker.tls import TlsListener
from broker.topics import DEVICE_ID_PATTERN, Channel, acl_pattern, all_devices

logger = logging.getLogger(__name__)

# The same rule as device ids, applied to gateway users too (see module docstring).
_USER_RE = re.compile(DEVICE_ID_PATTERN)
_UNSAFE_IN_CONF = re.compile(r"[\x00-\x1f\x7f]")

# Room for the largest message of the contract (a pushed config) plus headers.
DEFAULT_MAX_PACKET_SIZE = MAX_CONFIG_BYTES + 64 * 1024
# A device back online after a long outage flushes its whole outbox, and while
# the gateway is down the broker queues every QoS 1 check-in for the gateway's
# persistent session. The default of 1000 queued messages would silently drop
# the overflow; 10000 covers many devices catching up at once. Devices resend
# whatever is not acked, so an overflow costs a retry, not a check-in, and the
# byte cap keeps a Pi's memory bounded whatever the message count.
MAX_QUEUED_MESSAGES = 10_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# QoS 1 messages in flight to one client: the default of 20 leaves the gateway
# idle waiting for PUBACK round trips while it drains a backlog.
MAX_INFLIGHT_MESSAGES = 100
# A device or gateway session (its subscriptions and queue) outlives an outage
# of this length; a device gone longer re-subscribes on its next clean start.
PERSISTENT_CLIENT_EXPIRATION = "4w"
AUTOSAVE_INTERVAL_SECONDS = 60

_GATEWAY_RIGHTS = (
    ("read", Channel.CHECKIN),
    ("read", Channel.STATE),
    # Reading what it retained on ack/config is harmless and lets the gateway check it.
    ("readwrite", Channel.ACK),
    ("readwrite", Channel.CONFIG),
)
_DEVICE_RIGHTS = (
    ("write", Channel.CHECKIN),
    # read too, so a device can see its own retained state.
    ("readwrite", Channel.STATE),
    ("read", Channel.ACK),
    ("read", Channel.CONFIG),
)


@dataclass(frozen=True)
class BrokerLayout:
    """The files of one generated broker configuration and where it listens."""

    directory: Path
    conf: Path
    password_file: Path
    acl_file: Path
    data_dir: Path
    log_file: Path
    port: int
    host: str
    tls: TlsListener | None = None
    pid_file: Path | None = None


def layout_for(directory: Path, *, port: int, host: str = "127.0.0.1") -> BrokerLayout:
    """Where :func:`write_broker_config` puts each file under ``directory``."""
    directory = directory.absolute()
    return BrokerLayout(
        directory=directory,
        conf=directory / "mosquitto.conf",
        password_file=directory / "passwd",
        acl_file=directory / "acl",
        data_dir=directory / "data",
        log_file=directory / "mosquitto.log",
        pid_file=directory / "mosquitto.pid",
        port=port,
        host=host,
    )


def write_broker_config(
    directory: Path,
    *,
    port: int,
    gateway_users: Iterable[str],
    users: Mapping[str, str],
    host: str = "127.0.0.1",
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    tls: TlsListener | None = None,
    revoked_users: Iterable[str] = (),
) -> BrokerLayout:
    """Write conf, password file and ACL for ``users`` (every user -> plain password).

    ``gateway_users`` names the users that get gateway rights; all others are
    devices. ``revoked_users`` (revoked devices) are denied every topic, which
    also stops a device that logs in with a still-valid certificate. Files whose
    content would not change are left alone, so a re-run changes nothing.
    Raises :class:`BrokerConfigError` for an unsafe user name, a gateway user
    without a password, or an invalid listener.
    """
    gateways = sorted(set(gateway_users))
    _check_users(gateways, users)
    _check_listener(port, host, max_packet_size)
    layout = replace(layout_for(directory, port=port, host=host), tls=tls)
    _check_path(layout.directory)
    layout.directory.mkdir(parents=True, exist_ok=True)
    layout.data_dir.mkdir(mode=0o700, exist_ok=True)
    revoked = sorted(set(revoked_users) - set(users))
    _write_if_changed(layout.password_file, render_password_file(users, layout.password_file))
    _write_if_changed(layout.acl_file, render_acl(gateways, revoked))
    _write_if_changed(layout.conf, render_conf(layout, max_packet_size=max_packet_size))
    logger.info(
        "wrote broker config %s: %d gateway users, %d devices, listener %s:%d",
        layout.conf,
        len(gateways),
        len(users) - len(gateways),
        host,
        port,
    )
    return layout


def check_user_name(name: str) -> str:
    """Return ``name`` if it is a safe broker user name, else raise BrokerConfigError."""
    if not _USER_RE.fullmatch(name):
        raise BrokerConfigError(
            f"invalid broker user name {name!r}: use 1-64 lower-case letters, digits or "
            "dashes, not starting or ending with a dash"
        )
    return name


def _check_users(gateways: Iterable[str], users: Mapping[str, str]) -> None:
    for name in users:
        check_user_name(name)
    for name in gateways:
        if name not in users:
            raise BrokerConfigError(f"gateway user {name!r} has no password in users")


def _check_listener(port: int, host: str, max_packet_size: int) -> None:
    if not 0 < port < 65536:
        raise BrokerConfigError(f"invalid port {port}")
    if not host or any(c.isspace() for c in host) or _UNSAFE_IN_CONF.search(host):
        raise BrokerConfigError(f"invalid listener host {host!r}")
    if max_packet_size < 1:
        raise BrokerConfigError(f"invalid max_packet_size {max_packet_size}")


def _check_path(directory: Path) -> None:
    # A newline in a path would let it inject configuration lines.
    if _UNSAFE_IN_CONF.search(str(directory)):
        raise BrokerConfigError(f"invalid broker directory {str(directory)!r}")


def render_password_file(users: Mapping[str, str], previous: Path | None = None) -> str:
    """The password file text; a user whose password still matches its hash in ``previous``
    keeps that hash (and salt), so an unchanged set of users gives the same text."""
    known = _read_hashes(previous) if previous is not None else {}
    lines = []
    for name in sorted(users):
        old = known.get(check_username(name))
        keep = old is not None and _matches(users[name], old)
        lines.append(f"{name}:{old if keep else hash_password(users[name])}\n")
    return "".join(lines)


def _read_hashes(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: encoded for name, encoded in pairs}


def _matches(password: str, encoded: str) -> bool:
    try:
        return verify_password(password, encoded)
    except PasswordFileError:
        return False  # a damaged line is simply rewritten


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        pass
    write_private_file(path, text)


def render_acl(gateway_users: Iterable[str], revoked_users: Iterable[str] = ()) -> str:
    """The ACL file: device patterns for everyone, wildcard rights for gateway users.

    A revoked user is denied everything: in Mosquitto a matching ``deny`` line of
    the user wins over the patterns, and a reload applies it to a client that
    is already connected, from its next publish on.
    """
    lines = [
        "# Generated by qrgate (broker/mosquitto.py); edits are overwritten.",
        "# Patterns apply to every user; %u is the connecting user's name.",
    ]
    lines += [f"pattern {access} {acl_pattern(channel)}" for access, channel in _DEVICE_RIGHTS]
    lines += enrollment.acl_patterns()
    for name in gateway_users:
        lines += ["", f"user {check_user_name(name)}"]
        lines += [f"topic {access} {all_devices(channel)}" for access, channel in _GATEWAY_RIGHTS]
        lines += enrollment.gateway_acl_topics()
    for name in sorted(set(revoked_users)):
        lines += ["", "# revoked", f"user {check_user_name(name)}", "topic deny #"]
    return "\n".join(lines) + "\n"


def render_conf(layout: BrokerLayout, *, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> str:
    """The mosquitto.conf text for ``layout``."""
    lines = [
        "# Generated by qrgate (broker/mosquitto.py); edits are overwritten.",
        "per_listener_settings false",
        *_user_lines(),
        *([f"pid_file {layout.pid_file}"] if layout.pid_file is not None else []),
        f"listener {layout.port} {layout.host}",
        "allow_anonymous false",
        f"password_file {layout.password_file}",
        f"acl_file {layout.acl_file}",
        "persistence true",
        # mosquitto appends the file name to this verbatim: the slash is needed.
        f"persistence_location {layout.data_dir}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_SECONDS}",
        f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
        f"max_packet_size {max_packet_size}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "set_tcp_nodelay true",
        f"log_dest file {layout.log_file}",
        # broker.launcher waits for the "running" line, logged at notice level.
        *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
    ]
    if layout.tls is not None:
        lines += _tls_lines(layout.tls, layout.host)
    return "\n".join(lines) + "\n"


def _tls_lines(tls: TlsListener, host: str) -> list[str]:
    """A second listener where a device's client certificate is its login.

    With ``use_identity_as_username`` the certificate's common name (the device
    id) becomes the user name, so the same ACL patterns apply; a certificate
    from another CA, or none, is refused during the handshake.
    """
    return [
        f"listener {tls.port} {host}",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        *([f"crlfile {tls.crl_file}"] if tls.crl_file is not None else []),
    ]


def _user_lines() -> list[str]:
    """The ``user`` option: mosquitto runs as the owner of the files we write.

    Started as root, mosquitto 2.0 switches to user ``mosquitto`` before it
    opens the log, password file, ACL and data dir; those are ours and 0600, so
    it exits with "Unable to open pwfile" (seen with 2.0.11). Naming the user
    that writes the files keeps root as root and makes a root launch of a
    config written by an unprivileged user switch to that user. Mosquitto
    ignores the option when not started as root, e.g. on a Pi gateway.
    """
    euid = os.geteuid()
    try:
        name = pwd.getpwuid(euid).pw_name
    except KeyError:
        # No passwd entry (some containers): only root needs the option.
        return ["user root"] if euid == 0 else []
    if _UNSAFE_IN_CONF.search(name) or any(c.isspace() for c in name):
        return ["user root"] if euid == 0 else []
    return [f"user {name}"]
