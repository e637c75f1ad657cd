"""Shared fixtures: generated sites, frames of synthetic people, real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest

from broker.launcher import Mosquitto, free_port
from broker.settings import FileSourceConfig
from provisioning.people import synthetic_people, write_frames
from provisioning.site import DeviceSpec, Site, create_site

ROOT = Path(__file__).resolve().parents[1]
# Generous bounds on waits for things that take a second or two: liveness, not speed.
DEADLINE_S = 90.0


def wait_until(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Service:
    """A qrgate process (``python -m gateway|device run``) with its log in a file."""

    def __init__(self, module: str, config: Path, log: Path) -> None:
        self.module = module
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a power cut."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def wait_log(self, text: str, count: int = 1) -> Service:
        """Wait until the process has logged ``text`` at least ``count`` times."""
        wait_until(lambda: self.log_text().count(text) >= count, f"{text!r} in the log")
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[[str, Path], Service]]:
    """Start qrgate processes; all are stopped at the end, and their logs shown on failure."""
    started: list[Service] = []

    def start(module: str, config: Path) -> Service:
        service = Service(module, config, tmp_path / f"{module}-{len(started)}.log")
        started.append(service.start())
        return service

    yield start
    for service in started:
        service.stop()
        print(f"--- log of {service.module} ({service.config}):\n{service.log_text()[-4000:]}")


@pytest.fixture(scope="session")
def people_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[Path]]:
    """200 frames, each with the valid card of a different synthetic person."""
    texts = [p.card_text() for p in synthetic_people(200, seed=11, today=date.today())]
    frames = write_frames(tmp_path_factory.mktemp("people-frames"), list(texts), seed=11)
    return texts, frames


@pytest.fixture(scope="session")
def blank_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with camera frames that hold no code."""
    folder = tmp_path_factory.mktemp("blank-frames")
    write_frames(folder, [None, None], seed=3)
    return folder


SiteMaker = Callable[..., Site]
StartService = Callable[[str, Path], Service]


@pytest.fixture
def make_site(tmp_path: Path) -> SiteMaker:
    """Generate a site in ``tmp_path/site`` whose devices read the given frames once."""

    def make(
        frames: Sequence[Sequence[Path]],
        *,
        interval_s: float = 0.0,
        ack_timeout_s: float = 2.0,
        extra_broker_users: Sequence[str] = (),
    ) -> Site:
        specs = [
            DeviceSpec(
                device_id=f"gate-{i + 1}",
                gate="test gate",
                direction="in",
                frame_source=FileSourceConfig(paths=list(paths), interval_s=interval_s),
                pin_factory="mock",
                ack_timeout_s=ack_timeout_s,
            )
            for i, paths in enumerate(frames)
        ]
        return create_site(
            tmp_path / "site",
            site_id="test-site",
            port=free_port(),
            devices=specs,
            extra_broker_users=extra_broker_users,
        )

    return make


@pytest.fixture
def broker_for() -> Iterator[Callable[[Site], Mosquitto]]:
    """Start the site's own mosquitto with its generated config; stopped at the end."""
    brokers: list[Mosquitto] = []

    def start(site: Site) -> Mosquitto:
        broker = Mosquitto(site.broker)
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def db_rows(site: Site, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Run a read-only query on the site's tracing database ([] before it exists)."""
    if not site.database.exists():
        return []
    db = sqlite3.connect(f"file:{site.database}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the gateway has not created its tables yet
    finally:
        db.close()


def stored_count(site: Site) -> int:
    rows = db_rows(site, "SELECT count(*) FROM checkins")
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


def outbox_depth(site: Site, device_id: str) -> int:
    path = site.outbox(device_id)
    if not path.exists():
        return -1
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        db.close()
