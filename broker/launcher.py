"""Run a real mosquitto with a configuration from :mod:`broker.mosquitto`."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from broker.errors import BrokerStartError
from broker.mosquitto import BrokerLayout

logger = logging.getLogger(__name__)

_FALLBACK_EXECUTABLES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# Logged at notice level once every listener is open (mosquitto 1.x and 2.x).
_RUNNING_RE = re.compile(rb"mosquitto version \S+ running")
_LOG_TAIL_BYTES = 4096
_POLL_SECONDS = 0.05


def find_mosquitto() -> str | None:
    """The mosquitto executable on PATH or in the usual sbin directories, if any."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _FALLBACK_EXECUTABLES if os.access(path, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        port: int = sock.getsockname()[1]
    return port


def log_tail(path: Path, limit: int = _LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log file as text, or a note that there is none."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"


class Mosquitto:
    """A mosquitto process started with a generated config; a context manager.

    Its stdout and stderr go to the layout's log file, next to what mosquitto
    itself logs there, so a failed start can be explained from one file.
    """

    def __init__(self, layout: BrokerLayout, *, executable: str | None = None) -> None:
        found = executable or find_mosquitto()
        if found is None:
            raise BrokerStartError("mosquitto not found on PATH or in /usr/sbin")
        self.layout = layout
        self.executable = found
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may not be listening yet)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the running process, else None."""
        return self._process.pid if self._process is not None and self.running else None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it listens; raise BrokerStartError if it does not."""
        if self.running:
            raise BrokerStartError(f"mosquitto already running as pid {self.pid}")
        log_offset = self._log_size()
        self._process = self._spawn()
        logger.info("started mosquitto pid %d on %s:%d", self._process.pid, *self._address())
        try:
            self._wait_listening(log_offset, timeout)
        except BaseException:
            # Also on KeyboardInterrupt: never leave a half-started broker behind.
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; does nothing if not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("mosquitto pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        logger.info("mosquitto pid %d exited with %s", process.pid, process.returncode)
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: mosquitto saves nothing after its last autosave."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        logger.info("killed mosquitto pid %d", process.pid)
        self._process = None

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password file and ACL (asynchronously)."""
        pid = self.pid
        if pid is None:
            raise BrokerStartError("mosquitto is not running")
        os.kill(pid, signal.SIGHUP)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _address(self) -> tuple[str, int]:
        return self.layout.host, self.layout.port

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [self.executable, "-c", str(self.layout.conf)]
        # Append mode on both sides: mosquitto opens the same file with "a", so
        # its own lines and its stderr interleave without overwriting each other.
        with self.layout.log_file.open("ab") as log:
            try:
                return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            except OSError as exc:
                raise BrokerStartError(f"cannot run {self.executable}: {exc}") from exc

    def _log_size(self) -> int:
        try:
            return self.layout.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _wait_listening(self, log_offset: int, timeout: float) -> None:
        # The port alone is not proof: if another process holds it, connecting
        # succeeds while our mosquitto is failing to bind. So also wait for this
        # run's "running" line in the log, and for the process to stay alive.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise BrokerStartError(self._failure(f"mosquitto exited with code {code}"))
            if self._logged_running(log_offset) and self._port_accepts():
                return
            time.sleep(_POLL_SECONDS)
        raise BrokerStartError(self._failure(f"mosquitto not listening after {timeout:g} s"))

    def _logged_running(self, log_offset: int) -> bool:
        try:
            with self.layout.log_file.open("rb") as handle:
                handle.seek(log_offset)
                return _RUNNING_RE.search(handle.read()) is not None
        except OSError:
            return False

    def _port_accepts(self) -> bool:
        try:
            with socket.create_connection(self._address(), timeout=1.0):
                return True
        except OSError:
            return False

    def _failure(self, what: str) -> str:
        host, port = self._address()
        tail = log_tail(self.layout.log_file)
        return f"{what} ({host}:{port}, config {self.layout.conf}); log tail:\n{tail}"
