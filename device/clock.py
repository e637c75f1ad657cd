"""Is the system clock synchronised? Asked of the kernel, which NTP daemons keep informed.

``adjtimex(2)`` with no modes set only reads: it returns ``TIME_ERROR`` while
the kernel considers the clock unsynchronised (``STA_UNSYNC``), which is what
``timedatectl`` reports as "System clock synchronized: no". Reading the kernel
directly needs neither D-Bus nor systemd, so it works in any container too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

logger = logging.getLogger(__name__)

TIME_ERROR = 5
# struct timex is 208 bytes on 64-bit Linux; a larger zeroed buffer is safe to pass.
_TIMEX_BYTES = 512


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def clock_synchronised() -> bool:
    """True when the kernel says an NTP daemon has the clock in sync."""
    libc = _libc()
    if libc is None:
        return False
    buf = ctypes.create_string_buffer(_TIMEX_BYTES)
    state = int(libc.adjtimex(buf))
    if state < 0:
        logger.warning("adjtimex failed: errno %d", ctypes.get_errno())
        return False
    return state != TIME_ERROR
