"""Failed-login throttling: a password guesser gets five tries per quarter hour.

Failures are counted per user name (case-folded) and per client address over
a sliding window. Once a user name or an address has ``limit`` failures in
the last ``window_s`` seconds, every further attempt for it is refused before
the password is checked (so a correct password does not get through either),
until the oldest of those failures is older than the window. A refused
attempt is not counted. A successful login clears that user name's failures,
both its own count and its share of the address's count; failures for other
names from the same address stay, so logging in to one's own account does not
reset a guesser's count against others.

The counts are kept in memory: they start empty when the gateway restarts,
and each gateway counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import GatewayError

LIMIT = 5
WINDOW_S = 15 * 60
_SWEEP_AT = 1024  # keys before a sweep drops the expired ones; keeps memory bounded


class LoginThrottled(GatewayError):
    """Too many failed logins for a user name or from an address; nothing was checked."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class LoginThrottle:
    """Counts failed logins per user name and per client address (``clock`` in seconds)."""

    limit: int = LIMIT
    window_s: float = WINDOW_S
    clock: Callable[[], float] = time.monotonic
    # key -> (failure time, user name) oldest first; keys are "user:<name>" and "addr:<host>".
    _failures: dict[str, deque[tuple[float, str]]] = field(default_factory=dict)

    def check(self, username: str, address: str) -> None:
        """Raise :class:`LoginThrottled` if this name or address may not try now."""
        now = self.clock()
        for key, what in ((_user(username), "this user name"), (_addr(address), "this address")):
            wait = self._wait(key, now)
            if wait > 0:
                minutes = math.ceil(wait / 60)
                raise LoginThrottled(
                    f"too many failed logins for {what}: try again in {minutes} min", wait
                )

    def failed(self, username: str, address: str) -> None:
        """Count one failed login."""
        now = self.clock()
        name = username.casefold()
        for key in (_user(username), _addr(address)):
            self._failures.setdefault(key, deque()).append((now, name))
        if len(self._failures) > _SWEEP_AT:
            self._sweep(now)

    def succeeded(self, username: str, address: str) -> None:
        """Clear the name's failures, and its share of the address's."""
        name = username.casefold()
        self._failures.pop(_user(username), None)
        kept = deque(f for f in self._failures.get(_addr(address), ()) if f[1] != name)
        if kept:
            self._failures[_addr(address)] = kept
        else:
            self._failures.pop(_addr(address), None)

    def _wait(self, key: str, now: float) -> int:
        """Whole seconds until ``key`` may try again (0: now)."""
        found = self._failures.get(key)
        if found is None:
            return 0
        while found and found[0][0] <= now - self.window_s:
            found.popleft()
        if not found:
            del self._failures[key]
            return 0
        if len(found) < self.limit:
            return 0
        # The oldest failure that keeps the count at the limit must leave the window.
        return max(1, math.ceil(found[-self.limit][0] + self.window_s - now))

    def _sweep(self, now: float) -> None:
        for key in list(self._failures):
            self._wait(key, now)


def _user(username: str) -> str:
    return f"user:{username.casefold()}"


def _addr(address: str) -> str:
    return f"addr:{address}"
