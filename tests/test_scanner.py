"""The scan loop split in two: the camera thread decodes, a worker decides, signals and stores.

Real parts only: photos of synthetic ID cards decoded by zxing-cpp, the SQLite outbox, pins
on gpiozero's MockFactory. A slow disk is a real one: another connection holds the outbox's
write lock, so the device's fsync'd append waits exactly as it would behind a stalled SD
card (for less than SQLite's 5 s busy timeout).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from broker.messages import CheckIn
from broker.settings import DecoderConfig, FileSourceConfig, SignalsConfig
from conftest import wait_until
from device.camera import FileFrameSource
from device.config import BrokerConfig, DeviceConfig
from device.decision import Decider, Decision, subject_key
from device.decoder import make_decoder
from device.outbox import Outbox
from device.pipeline import Pipeline
from device.scanner import Scanner, ScanStats
from device.signals import Signals
from provisioning.people import synthetic_people, write_frames

KEY = b"s" * 32
CODES = 4
# Blank frames after the codes: the source is still running when the test stops it.
TAIL = 400
# Well inside SQLite's 5 s busy timeout, after which a blocked append fails.
LOCKED_WAIT_S = 3.0


@dataclass(frozen=True)
class Frames:
    texts: list[str]
    ids: list[str]
    codes: list[Path]
    blank: Path

    def subjects(self, indexes: list[int]) -> list[str]:
        return [subject_key(KEY, "cccd", self.ids[i]) for i in indexes]


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Frames:
    people = synthetic_people(CODES, seed=21, today=date.today())
    folder = tmp_path_factory.mktemp("scanner-frames")
    texts = [p.card_text() for p in people]
    paths = write_frames(folder, [*texts, None], seed=21)
    return Frames(texts, [p.id_number for p in people], paths[:CODES], paths[CODES])


class DiskLock:
    """Holds the outbox's write lock from a second connection, like a disk that stalls."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("BEGIN IMMEDIATE")
        self.since = time.monotonic()

    def rows(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def release(self) -> None:
        assert time.monotonic() - self.since < 4.5, "held past the busy timeout: test invalid"
        self._db.execute("ROLLBACK")
        self._db.close()


class Gate:
    """A scanner with a real decoder, decider, outbox and mock-pin signals."""

    def __init__(self, tmp_path: Path, paths: list[Path]) -> None:
        self.factory = MockFactory()
        self.signals = Signals(SignalsConfig(factory="mock"), pin_factory=self.factory)
        self.outbox = Outbox(tmp_path / "outbox.db")
        self.stored: list[CheckIn] = []
        self.source = FileFrameSource(FileSourceConfig(paths=paths))
        self.scanner = Scanner(
            frame_source=self.source,
            decoder=make_decoder(DecoderConfig()),
            decider=Decider(
                key=KEY,
                debounce_s=3.0,
                monotonic=time.monotonic,
                wall_clock=lambda: datetime.now(UTC),
            ),
            signals=self.signals,
            outbox=self.outbox,
            on_stored=self._stored,
        )

    def _stored(self, record: CheckIn, decision: Decision) -> None:
        self.stored.append(record)

    def green_lit(self) -> bool:
        return any(s.state for s in self.factory.pin(SignalsConfig().green_led).states)

    def close(self) -> None:
        self.scanner.stop()
        self.signals.close()
        self.source.close()
        self.outbox.close()


MakeGate = Callable[[list[Path]], Gate]


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[MakeGate]:
    made: list[Gate] = []

    def make(paths: list[Path]) -> Gate:
        made.append(Gate(tmp_path, paths))
        return made[-1]

    yield make
    for gate in made:
        gate.close()


def stop_in_background(stop: threading.Thread) -> threading.Thread:
    stop.start()
    time.sleep(0.3)
    return stop


def test_signal_is_given_while_the_disk_is_busy_and_the_check_in_stored_after(
    frames: Frames, make_gate: MakeGate
) -> None:
    gate = make_gate([frames.codes[0]])
    lock = DiskLock(gate.outbox.path)
    gate.scanner.start()

    wait_until(gate.green_lit, "the green LED while the outbox is locked", LOCKED_WAIT_S)
    assert lock.rows() == 0 and gate.stored == []
    # The source has run out, but its one check-in is not stored: not exhausted yet.
    assert gate.scanner.stats.frames == 1
    assert not gate.scanner.exhausted.is_set()

    lock.release()
    assert gate.scanner.exhausted.wait(10), "exhausted once the check-in is stored"
    assert gate.outbox.depth() == 1
    assert [r.subject for r in gate.stored] == frames.subjects([0])
    assert gate.scanner.healthy()


def test_camera_keeps_decoding_while_the_disk_is_busy(frames: Frames, make_gate: MakeGate) -> None:
    gate = make_gate([*frames.codes, *[frames.blank] * TAIL])
    lock = DiskLock(gate.outbox.path)
    gate.scanner.start()

    # Inline, the first append would hold the scan thread: no frame after the first code.
    wait_until(lambda: gate.scanner.stats.frames > CODES + 5, "decoding past the codes", 3.0)
    assert lock.rows() == 0
    lock.release()
    wait_until(lambda: gate.outbox.depth() == CODES, "every code stored after the disk is back")
    assert [r.subject for r in gate.outbox.pending()] == frames.subjects(list(range(CODES)))


def test_stop_right_after_the_decodes_stores_every_one(frames: Frames, make_gate: MakeGate) -> None:
    gate = make_gate([*frames.codes, *[frames.blank] * TAIL])
    lock = DiskLock(gate.outbox.path)
    gate.scanner.start()
    wait_until(lambda: gate.scanner.stats.frames > CODES, "the codes decoded", LOCKED_WAIT_S)

    stop = stop_in_background(threading.Thread(target=gate.scanner.stop))
    assert stop.is_alive(), "stop returned with decoded codes not yet stored"
    assert lock.rows() == 0
    lock.release()
    stop.join(10)

    assert not stop.is_alive()
    assert gate.outbox.depth() == CODES
    assert [r.seq for r in gate.outbox.pending()] == list(range(1, CODES + 1))
    assert [r.subject for r in gate.stored] == frames.subjects(list(range(CODES)))
    assert gate.scanner.stats.scans == gate.scanner.stats.accepted == CODES
    # Stopped, not run out: the blank frames after the codes were never all read.
    assert gate.scanner.stats.frames < CODES + TAIL
    assert not gate.scanner.exhausted.is_set()


def test_the_same_card_held_up_is_one_check_in(frames: Frames, make_gate: MakeGate) -> None:
    a, b = frames.codes[0], frames.codes[1]
    gate = make_gate([a, a, a, b, a, b])
    gate.scanner.start()

    assert gate.scanner.exhausted.wait(30)
    assert gate.scanner.stats.frames == 6
    assert [r.subject for r in gate.outbox.pending()] == frames.subjects([0, 1])
    assert gate.scanner.stats.scans == 2


def test_a_failing_outbox_stops_the_scanner_and_shows_unhealthy(
    frames: Frames, make_gate: MakeGate
) -> None:
    gate = make_gate([*frames.codes, *[frames.blank] * TAIL])
    gate.outbox.close()  # every append now fails, as on a dead disk
    gate.scanner.start()

    wait_until(lambda: not gate.scanner.healthy(), "the scanner unhealthy (watchdog not fed)")
    assert not gate.scanner.exhausted.is_set()
    assert gate.stored == []
    assert gate.scanner.stats.frames < CODES + TAIL


def test_config_change_stores_what_the_old_pipeline_decoded(frames: Frames, tmp_path: Path) -> None:
    key_file = tmp_path / "subject.key"
    key_file.write_text(KEY.hex() + "\n", encoding="utf-8")
    paths = [*frames.codes, *[frames.blank] * TAIL]
    config = DeviceConfig(
        device_id="gate-9",
        site_id="site-9",
        broker=BrokerConfig(username="gate-9"),
        outbox_path=tmp_path / "outbox.db",
        subject_key_file=key_file,
        frame_source=FileSourceConfig(paths=paths),
        signals=SignalsConfig(factory="mock"),
    )
    outbox = Outbox(config.outbox_path)
    stored: list[CheckIn] = []
    pipeline = Pipeline(
        config,
        key=KEY,
        outbox=outbox,
        stats=ScanStats(),
        on_stored=lambda record, _decision: stored.append(record),
        on_button=lambda: None,
        clock_synced=lambda: True,
        pin_factory=MockFactory(),
    )
    try:
        lock = DiskLock(outbox.path)
        pipeline.start()
        wait_until(
            lambda: pipeline.scanner.stats.frames > CODES, "the codes decoded", LOCKED_WAIT_S
        )
        # What GateDevice does with a pushed config: close the old pipeline, build anew.
        close = stop_in_background(threading.Thread(target=pipeline.close))
        assert close.is_alive(), "the old pipeline closed with decoded codes not stored"
        lock.release()
        close.join(10)
        assert not close.is_alive()
        assert outbox.depth() == CODES
        assert [r.subject for r in stored] == frames.subjects(list(range(CODES)))
        assert pipeline.scanner.stats.frames < CODES + TAIL
    finally:
        pipeline.close()
        outbox.close()
