"""Decode benchmark: what each QR backend and the device's own per-frame path read, and how fast.

Run: ``.venv/bin/python tests/bench/decode.py [--corpus DIR] [--synthetic N] [--seed S]``
(``--repeat R`` timed decodes per frame, ``--profile`` adds a cProfile of the device path,
``--anti-passback warn`` runs the policy with its SQLite state). A table is printed, then one
JSON object as the last line.

Frames
------
Every frame is loaded as an 8-bit gray array before anything is timed: file reads and image
decoding are never part of a time.

* The corpus: any directory laid out like ``shared/corpus/qr-photos`` (default: that one,
  beside the repository). Each sub-folder (and the directory itself) is a set of images
  ``<name>.<png|webp|jpg|jpeg|bmp>``; ``<name>.txt`` beside an image holds its exact
  expected text, read as bytes and decoded as UTF-8. Images in a folder whose name starts
  with ``falsepositives`` hold no code. Images elsewhere without a ``.txt`` (``multi-1``)
  are decoded and timed but not scored: nothing says what they should read.
* Synthetic gate frames, made in memory from ``--seed``: ``N`` 640x480 camera photos
  (``provisioning.photos.synthetic_photo``: a tilted card on a cluttered room, uneven
  light, blur, sensor noise, sometimes JPEG) of the CCCD QR payloads of ``N`` distinct
  synthetic Vietnamese people (``provisioning.people``), at difficulties 0.1, 0.3, 0.5,
  0.7 and 0.9 in turn, plus ``N // 4`` (at least one) photos of clutter with no code.

Scoring
-------
``expected`` counts images with an expected text; ``decoded`` those whose expected text
was among the texts returned, exactly; ``wrong_text`` counts returned texts that differ
from every expected text of their image; ``false_positives`` counts texts returned for an
image with no code.

Timing
------
* ``zxing`` and ``zbar``: the bare ``Decoder.decode(gray)`` call of the backend that
  ``device.decoder.make_decoder(DecoderConfig(type=...))`` builds. Each frame is decoded
  ``--repeat`` times, both backends in turn frame by frame so machine noise hits both
  alike; a frame's time is the median of its repeats; ``median_ms`` and ``p95_ms`` are
  taken over frames.
* ``device``: the device's own per-frame path, split as on the device in two threads.
  The scan thread's step is ``device.scanner.Scanner.process(frame)``: decode, and hand the
  texts found to the scanner's decision worker; this bench's thread plays the scan thread.
  The worker (``DecisionWorker``, its own thread, as on the device) decides, signals,
  appends to the outbox and posts to the event loop. The parts are those
  ``device.pipeline.Pipeline`` builds from a config like the one
  ``provisioning.site.create_site`` writes: the zxing decoder, the real ``Decider``
  (readers from ``device.pipeline.make_readers``, the default 3 s debounce, the subject
  HMAC, ``clock_synchronised`` and sealing to a health-authority key), a ``Policy`` with its
  state file, ``Signals`` on gpiozero's ``MockFactory(pin_class=MockPWMPin)`` with their
  worker thread, a real ``Outbox`` (SQLite WAL, ``synchronous=FULL``, so one fsync per
  check-in) in a temporary directory, and ``on_stored`` posting to an asyncio loop running
  on another thread, as ``GateDevice`` does. Every image is fed once; the debounce clock
  is ``time.monotonic()`` moved on by a whole debounce window before each image, so an
  image is a new visit (the corpus repeats some texts) and every synthetic code frame
  carries a code the decider has not seen: no timed frame is short-circuited. Recall,
  wrong texts and false positives count the texts the worker decided. ``median_ms`` and
  ``p95_ms`` are the scan thread's time per frame (frame in, texts handed over): what the
  camera thread pays, and what bounds the frame rate. After each frame the bench waits
  for the worker, so frames do not overlap (``burst`` is the case where they do). Each
  frame is timed once, back to back with a bare zxing decode of the same frame and with a
  what-if device path whose outbox runs ``PRAGMA synchronous=OFF`` (no fsync), the order
  of the three rotating frame by frame. ``device_over_bare`` is the median of the paired
  ratios scan thread/bare over the synthetic frames with a code (``_corpus``: over the
  corpus).
* The worker's side of each synthetic code frame, from the moment the frame came in:
  ``to_signal_ms`` until the accept/reject is given (the decision out, what the person at
  the gate waits for, before the light's own pattern), ``to_stored_ms`` until the check-in
  is fsync'd in the outbox and posted to the loop, ``worker_act_ms`` the worker's own time
  on the frame; ``to_stored_no_fsync_ms`` the same through the no-fsync what-if. Median
  and p95 of each.
* ``empty_frame_ms``: median scan-thread time of a synthetic 640x480 frame without a code
  (each such frame ``--repeat`` times, each time back to back with a bare zxing decode of
  it: ``device_over_bare_empty``); ``flat_frame_ms`` the same for a uniform gray frame.
  ``code_frame_ms``: median scan-thread time of a synthetic frame with a new code;
  ``code_overhead_ms`` is that minus the decode inside the same call (from
  ``ScanStats.decode_ms``): the hand-off.
* ``burst``: the synthetic frames through a fresh path back to back, never waiting for
  the worker, as a camera faster than the disk: the scan thread's time per code frame and
  per empty frame while the worker decides and writes alongside (sharing the cores and
  the GIL; a full queue of 64 frames makes the scan thread wait), the frame rate reached,
  how long the worker needs to catch up after the last frame, and the check-ins stored.
* ``stages_ms``: another pass over the code frames, with a fresh decider and outbox, in
  which each part is a subclass that times itself (median and mean per frame). Scan
  thread: ``process`` = ``decode`` + ``handoff``. Worker: ``act`` = ``decide`` (readers,
  policy, seal, and ``decide_other``: debounce, subject HMAC, ``adjtimex``) + ``signals`` +
  ``outbox`` (the pydantic ``CheckIn`` built inside it, and the SQLite statements with the
  fsync of the commit) + ``on_stored`` + ``worker_other``; ``outbox_no_fsync`` is the
  outbox stage of a timed no-fsync what-if path fed the same frames, alternately before
  and after.
* ``--profile``: cProfile of the scan thread's step and of the worker's step over the code
  frames on a fresh path, printed before the table (top functions by own time and by
  cumulative time).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and the folder holds device.py (the
# device footprint benchmark), which would shadow the device package. Moved to the end, the
# package wins and sibling modules stay importable.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import secrets
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import numpy as np
from gpiozero.pins.mock import MockFactory, MockPWMPin

from broker.messages import CheckIn, PersonalFields
from broker.sealing import Sealer, new_authority_key
from broker.settings import DecoderConfig, PolicyConfig, PrivacyConfig, SignalsConfig
from device.camera import IMAGE_SUFFIXES, load_gray
from device.clock import clock_synchronised
from device.config import BrokerConfig, DeviceConfig
from device.credentials import CredentialReader, Verdict
from device.decision import Decider, Decision, Judgement
from device.decoder import Decoder, GrayFrame, make_decoder, to_gray
from device.outbox import Outbox
from device.pipeline import POLICY_STATE, make_readers
from device.policy import Policy
from device.scanner import Scanner
from device.signals import Signals
from provisioning.people import synthetic_people
from provisioning.photos import synthetic_photo

DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared/corpus/qr-photos"
BACKENDS = ("zxing", "zbar")
DIFFICULTIES = (0.1, 0.3, 0.5, 0.7, 0.9)
FRAME_SIZE = (640, 480)
NO_CODE_PREFIX = "falsepositives"
T = TypeVar("T")

# qrcode-2/16.webp of the shared corpus is a "double QR", one code drawn inside another; its
# .txt names the inner code only (the same table as tests/test_decoder.py's SECOND_CODES).
NESTED_CODES = {
    ("qrcode-2", "16.webp"): "[外側QRコード]\r\n \r\n*ﾀﾞﾌﾞﾙQR*\r\nhttp://d-qr.net/ex/",
}

# Targets for the device path on the development machine.
EMPTY_FRAME_TARGET_MS = 1.0
CODE_FRAME_TARGET_MS = 2.0
DEVICE_OVER_BARE_TARGET = 1.2


# --- frames --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One frame and what it should read.

    ``expected`` is the set of exact texts; empty for a frame with no code; None for a frame
    with codes but no expected text (not scored).
    """

    set_name: str
    name: str
    gray: GrayFrame
    expected: frozenset[str] | None
    # Correct texts the label file does not name (a code nested in another): not wrong reads.
    also: frozenset[str] = frozenset()

    @property
    def has_code(self) -> bool:
        return bool(self.expected)

    @property
    def no_code(self) -> bool:
        return self.expected is not None and not self.expected


def load_corpus(directory: Path) -> list[Sample]:
    """Every image of ``directory`` and its sub-folders, gray, with its expected text."""
    if not directory.is_dir():
        raise SystemExit(f"corpus directory not found: {directory}")
    folders = [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]
    samples = []
    for folder in folders:
        set_name = "." if folder == directory else folder.name
        no_code = folder.name.startswith(NO_CODE_PREFIX)
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images:
            label = image.with_suffix(".txt")
            expected: frozenset[str] | None
            if no_code:
                expected = frozenset()
            elif label.is_file():
                expected = frozenset({label.read_bytes().decode("utf-8")})
            else:
                expected = None
            also = NESTED_CODES.get((set_name, image.name))
            samples.append(
                Sample(
                    set_name,
                    image.name,
                    load_gray(image),
                    expected,
                    frozenset({also}) if also else frozenset(),
                )
            )
    return samples


def synthetic_frames(count: int, seed: int) -> list[Sample]:
    """``count`` gate photos of distinct CCCD payloads and ``count // 4`` (>= 1) without."""
    rng = random.Random(seed)
    texts = [p.card_text() for p in synthetic_people(count, seed=seed, today=date.today())]
    if len(set(texts)) != len(texts):
        raise SystemExit("synthetic payloads are not distinct; every code frame must be new")
    samples = []
    for i, text in enumerate(texts):
        difficulty = DIFFICULTIES[i % len(DIFFICULTIES)]
        photo = synthetic_photo(text, rng, size=FRAME_SIZE, difficulty=difficulty)
        samples.append(Sample(f"d{difficulty}", f"code-{i:05d}", to_gray(photo), frozenset({text})))
    for i in range(max(1, count // 4) if count else 0):
        difficulty = DIFFICULTIES[i % len(DIFFICULTIES)]
        photo = synthetic_photo(None, rng, size=FRAME_SIZE, difficulty=difficulty)
        samples.append(Sample("no-code", f"empty-{i:05d}", to_gray(photo), frozenset()))
    return samples


# --- scoring -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"median": rounded(median(values)), "p95": rounded(percentile(values, 0.95))}


@dataclass
class Tally:
    """Recall, wrong texts, false positives and frame times of one reader over one set."""

    expected: int = 0
    decoded: int = 0
    wrong_text: int = 0
    false_positives: int = 0
    unscored_images: int = 0
    unscored_texts: int = 0
    times_ms: list[float] = field(default_factory=list)
    by_set: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    wrong: list[str] = field(default_factory=list)

    def score(self, sample: Sample, texts: Sequence[str], ms: float) -> None:
        self.times_ms.append(ms)
        if sample.expected is None:
            self.unscored_images += 1
            self.unscored_texts += len(texts)
            return
        if not sample.expected:
            self.false_positives += len(texts)
            if texts:
                self.wrong.append(f"{sample.set_name}/{sample.name}: false positive {texts!r}")
            return
        self.expected += 1
        self.by_set[sample.set_name][1] += 1
        if sample.expected & set(texts):
            self.decoded += 1
            self.by_set[sample.set_name][0] += 1
        for text in texts:
            if text not in sample.expected and text not in sample.also:
                self.wrong_text += 1
                self.wrong.append(f"{sample.set_name}/{sample.name}: wrong text {text[:60]!r}")

    def as_json(self) -> dict[str, Any]:
        return {
            "decoded": self.decoded,
            "expected": self.expected,
            "wrong_text": self.wrong_text,
            "false_positives": self.false_positives,
            "median_ms": rounded(median(self.times_ms)),
            "p95_ms": rounded(percentile(self.times_ms, 0.95)),
            "frames": len(self.times_ms),
            "unscored_images": self.unscored_images,
            "unscored_texts": self.unscored_texts,
            "by_set": {name: f"{d}/{e}" for name, (d, e) in sorted(self.by_set.items())},
        }


def time_ms(call: Callable[[GrayFrame], T], gray: GrayFrame) -> tuple[float, T]:
    """(ms taken by ``call(gray)``, its result)."""
    started = time.perf_counter()
    result = call(gray)
    return (time.perf_counter() - started) * 1000, result


def bench_backends(
    samples: Sequence[Sample], decoders: dict[str, Decoder], repeat: int
) -> dict[str, Tally]:
    """Bare ``decode`` calls: each frame ``repeat`` times per backend, backends in turn."""
    tallies = {name: Tally() for name in decoders}
    for decoder in decoders.values():  # warm-up: first-call costs are not a frame's
        decoder.decode(samples[0].gray)
    for sample in samples:
        for name, decoder in decoders.items():
            runs = [time_ms(decoder.decode, sample.gray) for _ in range(repeat)]
            texts = runs[0][1]
            tallies[name].score(sample, texts, statistics.median(ms for ms, _ in runs))
    return tallies


# --- the device path -----------------------------------------------------------------------


class VisitClock:
    """``time.monotonic()`` moved on by ``step_s`` at each :meth:`next_visit`.

    With a step longer than the debounce window each image is a new visit: a text seen on
    an earlier image is decided again, as when a second person shows the same card later.
    """

    def __init__(self, step_s: float) -> None:
        self._step_s = step_s
        self._offset = 0.0

    def next_visit(self) -> None:
        self._offset += self._step_s

    def __call__(self) -> float:
        return time.monotonic() + self._offset


class NoFrames:
    """The scanner's frame source; unused, as frames are handed to ``process`` directly."""

    def read(self) -> GrayFrame | None:
        return None

    def close(self) -> None:
        pass


class StageTimer:
    """Per-frame sums of the time spent in named stages (on either thread)."""

    def __init__(self) -> None:
        self._frame: dict[str, float] = defaultdict(float)
        self.frames: list[dict[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._frame[name] += (time.perf_counter() - started) * 1000

    def end_frame(self, scan_ms: float, act_ms: float | None) -> None:
        frame = dict(self._frame)
        frame["process"] = scan_ms
        if act_ms is not None:
            frame["act"] = act_ms
        self._frame = defaultdict(float)
        self.frames.append(frame)


class TimedDecoder:
    def __init__(self, inner: Decoder, timer: StageTimer) -> None:
        self.name = inner.name
        self._inner = inner
        self._bench_timer = timer

    def decode(self, gray: GrayFrame) -> list[str]:
        with self._bench_timer.stage("decode"):
            return self._inner.decode(gray)


class TimedReader:
    def __init__(self, inner: CredentialReader, timer: StageTimer) -> None:
        self.kind = inner.kind
        self._inner = inner
        self._bench_timer = timer

    def read(self, text: str, *, now: datetime) -> Verdict | None:
        with self._bench_timer.stage("readers"):
            return self._inner.read(text, now=now)


class TimedDecider(Decider):
    def __init__(self, timer: StageTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bench_timer = timer

    def decide(self, text: str) -> Decision | None:
        with self._bench_timer.stage("decide"):
            return super().decide(text)


class TimedPolicy(Policy):
    def __init__(self, timer: StageTimer, config: PolicyConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._bench_timer = timer

    def judge(self, verdict: Verdict, subject: str | None, *, now: datetime) -> Judgement:
        with self._bench_timer.stage("policy"):
            return super().judge(verdict, subject, now=now)


class TimedSealer(Sealer):
    def __init__(self, timer: StageTimer, public_key_text: str) -> None:
        super().__init__(public_key_text)
        self._bench_timer = timer

    def seal(self, fields: PersonalFields) -> str:
        with self._bench_timer.stage("seal"):
            return super().seal(fields)


class MarkedSignals(Signals):
    """Signals that note when each accept or reject is given (and time it with a timer)."""

    def __init__(self, timer: StageTimer | None, config: SignalsConfig, **kwargs: Any) -> None:
        self._bench_timer = timer
        self.given_at: list[float] = []
        super().__init__(config, **kwargs)

    def accept(self) -> None:
        self.given_at.append(time.perf_counter())
        with self._timed():
            super().accept()

    def reject(self) -> None:
        self.given_at.append(time.perf_counter())
        with self._timed():
            super().reject()

    @contextmanager
    def _timed(self) -> Iterator[None]:
        if self._bench_timer is None:
            yield
            return
        with self._bench_timer.stage("signals"):
            yield


class TimedOutbox(Outbox):
    def __init__(self, timer: StageTimer, path: Path) -> None:
        self._bench_timer = timer
        super().__init__(path)

    def append(self, build: Callable[[int], CheckIn]) -> CheckIn:
        def timed_build(seq: int) -> CheckIn:
            with self._bench_timer.stage("checkin"):
                return build(seq)

        with self._bench_timer.stage("outbox"):
            return super().append(timed_build)


@dataclass(frozen=True, slots=True)
class FrameTimes:
    """One frame through the device path, all times from the moment the frame came in."""

    scan_ms: float  # decoded and handed to the worker: what the scan (camera) thread pays
    decode_ms: float  # the decode inside scan_ms
    decisions: list[Decision]
    signal_ms: float | None = None  # the first accept/reject given: the decision out
    stored_ms: float | None = None  # the last check-in fsync'd and posted to the loop
    act_ms: float | None = None  # the worker's own time: decide, signal, store, post


class DevicePath:
    """The parts ``Pipeline`` builds for a site device, around one ``Scanner``.

    The calling thread plays the scan thread (frames go to ``Scanner.process``); the
    scanner's decision worker runs on its own thread, as on the device. ``timer`` swaps
    each part for a subclass that times itself; ``fsync=False`` switches the outbox to
    ``synchronous=OFF`` (a what-if, never the device's setting).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        anti_passback: str = "off",
        timer: StageTimer | None = None,
        fsync: bool = True,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        key_file = workdir / "subject.key"
        key_file.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        _, authority = new_authority_key()
        config = DeviceConfig(
            device_id="bench-gate",
            site_id="bench-site",
            broker=BrokerConfig(username="bench-gate"),
            outbox_path=workdir / "outbox.db",
            subject_key_file=key_file,
            decoder=DecoderConfig(type="zxing"),
            signals=SignalsConfig(factory="mock"),
            policy=PolicyConfig.model_validate({"anti_passback": anti_passback}),
            privacy=PrivacyConfig(authority_public_key=authority),
        )
        self.timer = timer
        self.clock = VisitClock(config.policy.debounce_s + 1.0)
        policy_args: dict[str, Any] = {
            "direction": config.direction,
            "state_path": config.state_path / POLICY_STATE,
        }
        decoder: Decoder = make_decoder(config.decoder)
        readers: list[CredentialReader] = make_readers(config)
        self.signals = MarkedSignals(
            timer,
            config.signals,
            pin_factory=MockFactory(pin_class=MockPWMPin),
            on_button=lambda: None,
        )
        self.outbox: Outbox
        if timer is None:
            self.outbox = Outbox(config.outbox_path)
            self.policy = Policy(config.policy, **policy_args)
            sealer = Sealer(authority)
        else:
            self.outbox = TimedOutbox(timer, config.outbox_path)
            self.policy = TimedPolicy(timer, config.policy, **policy_args)
            sealer = TimedSealer(timer, authority)
            decoder = TimedDecoder(decoder, timer)
            readers = [TimedReader(r, timer) for r in readers]
        if not fsync:
            self.outbox._db.execute("PRAGMA synchronous=OFF")
        decider_args: dict[str, Any] = {
            "key": config.subject_key(),
            "debounce_s": config.policy.debounce_s,
            "monotonic": self.clock,
            "wall_clock": lambda: datetime.now(UTC),
            "readers": readers,
            "judge": self.policy,
            "clock_synced": clock_synchronised,
            "sealer": sealer,
        }
        decider = Decider(**decider_args) if timer is None else TimedDecider(timer, **decider_args)
        self.stored_at: list[tuple[float, Decision]] = []  # appended by the worker thread
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="bench-event-loop", daemon=True
        )
        self._loop_thread.start()
        self.scanner = Scanner(
            frame_source=NoFrames(),
            decoder=decoder,
            decider=decider,
            signals=self.signals,
            outbox=self.outbox,
            on_stored=self._stored_from_thread,
        )
        self.worker = self.scanner.worker
        self.worker.start()

    def _stored_from_thread(self, record: CheckIn, decision: Decision) -> None:
        self.stored_at.append((time.perf_counter(), decision))
        # GateDevice hands every stored check-in to its event loop the same way.
        if self.timer is None:
            self.loop.call_soon_threadsafe(self._stored, record, decision)
            return
        with self.timer.stage("on_stored"):
            self.loop.call_soon_threadsafe(self._stored, record, decision)

    def _stored(self, record: CheckIn, decision: Decision) -> None:
        # GateDevice logs decision.describe() here and wakes the uplink.
        decision.describe()

    def process(self, gray: GrayFrame) -> FrameTimes:
        """One frame as a new visit, then wait for the worker to finish with it."""
        self.clock.next_visit()
        self.signals.given_at.clear()  # the worker is idle between frames
        self.stored_at.clear()
        started = time.perf_counter()
        texts = self.scanner.process(gray)
        scan_ms = (time.perf_counter() - started) * 1000
        times = FrameTimes(scan_ms, self.scanner.stats.decode_ms[-1], [])
        if texts:
            self.settle()
            times = FrameTimes(
                scan_ms,
                times.decode_ms,
                [d for _, d in self.stored_at],
                signal_ms=_since(started, self.signals.given_at[:1]),
                stored_ms=_since(started, [t for t, _ in self.stored_at][-1:]),
                act_ms=self.scanner.stats.act_ms[-1],
            )
        if self.timer is not None:
            self.timer.end_frame(scan_ms, times.act_ms)
        return times

    def settle(self) -> None:
        if not self.worker.settle(60):
            raise SystemExit("the decision worker failed or hung; see the log above")

    def close(self) -> None:
        self.worker.finish(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(5)
        self.loop.close()
        self.signals.close()
        self.policy.close()
        self.outbox.close()


def _since(started: float, moments: Sequence[float]) -> float | None:
    return (moments[0] - started) * 1000 if moments else None


@dataclass
class Paired:
    """Scan-thread and bare zxing times of the same frames, taken back to back."""

    device_ms: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)

    def add(self, device_ms: float, bare_ms: float, decode_in_device_ms: float) -> None:
        self.device_ms.append(device_ms)
        self.bare_ms.append(bare_ms)
        self.overhead_ms.append(device_ms - decode_in_device_ms)

    def ratio(self) -> float | None:
        ratios = [d / b for d, b in zip(self.device_ms, self.bare_ms, strict=True) if b > 0]
        return median(ratios)


@dataclass
class DeviceRun:
    """One pass of a set through the device path, with its paired measurements."""

    tally: Tally = field(default_factory=Tally)
    with_code: Paired = field(default_factory=Paired)
    without_code: Paired = field(default_factory=Paired)
    to_signal_ms: list[float] = field(default_factory=list)
    to_stored_ms: list[float] = field(default_factory=list)
    act_ms: list[float] = field(default_factory=list)
    no_fsync_to_stored_ms: list[float] = field(default_factory=list)

    def add_decided(self, times: FrameTimes, no_fsync: FrameTimes) -> None:
        for values, value in (
            (self.to_signal_ms, times.signal_ms),
            (self.to_stored_ms, times.stored_ms),
            (self.act_ms, times.act_ms),
            (self.no_fsync_to_stored_ms, no_fsync.stored_ms),
        ):
            if value is not None:
                values.append(value)


def bench_device(samples: Sequence[Sample], workdir: Path, anti_passback: str) -> DeviceRun:
    """Each frame once through the device path, a bare zxing decode and the no-fsync what-if.

    The three calls on a frame run back to back, in an order that rotates frame by frame,
    so a burst of load on this shared machine hits all three alike. Each device-path call
    waits for its worker, so no frame's decode overlaps another frame's decisions (that
    case is :func:`bench_burst`).
    """
    bare = make_decoder(DecoderConfig(type="zxing"))
    path = DevicePath(workdir / "device", anti_passback=anti_passback)
    whatif = DevicePath(workdir / "no-fsync", anti_passback=anti_passback, fsync=False)
    run = DeviceRun()
    try:
        blank = np.zeros((8, 8), np.uint8)
        bare.decode(blank)
        path.process(blank)
        whatif.process(blank)
        for i, sample in enumerate(samples):
            bare_ms = 0.0
            times = no_fsync = FrameTimes(0.0, 0.0, [])
            for step in range(3):
                which = (i + step) % 3
                if which == 0:
                    bare_ms, _ = time_ms(bare.decode, sample.gray)
                elif which == 1:
                    times = path.process(sample.gray)
                else:
                    no_fsync = whatif.process(sample.gray)
            run.tally.score(sample, [d.text for d in times.decisions], times.scan_ms)
            pairs = run.with_code if sample.has_code else run.without_code
            pairs.add(times.scan_ms, bare_ms, times.decode_ms)
            if sample.has_code:
                run.add_decided(times, no_fsync)
    finally:
        path.close()
        whatif.close()
    return run


def bench_burst(samples: Sequence[Sample], workdir: Path, anti_passback: str) -> dict[str, Any]:
    """The frames back to back with no wait for the worker, as a camera faster than the disk.

    The scan thread then decodes while the worker decides and writes the frames before:
    how much that slows the scan thread (both threads share this machine's cores and the
    GIL), and how long the worker needs to catch up once the last frame is in.
    """
    path = DevicePath(workdir, anti_passback=anti_passback)
    code_ms: list[float] = []
    empty_ms: list[float] = []
    try:
        path.process(np.zeros((8, 8), np.uint8))
        started = time.perf_counter()
        for sample in samples:
            path.clock.next_visit()
            ms, _ = time_ms(path.scanner.process, sample.gray)
            (code_ms if sample.has_code else empty_ms).append(ms)
        last_in = time.perf_counter()
        path.settle()
        settled = time.perf_counter()
        stored = len(path.stored_at)
    finally:
        path.close()
    return {
        "code_frame_ms": rounded(median(code_ms)),
        "code_frame_p95_ms": rounded(percentile(code_ms, 0.95)),
        "empty_frame_ms": rounded(median(empty_ms)),
        "frames_per_s": round(len(samples) / (last_in - started), 1),
        "catch_up_ms": rounded(1000 * (settled - last_in)),
        "stored": stored,
    }


def bench_empty(
    samples: Sequence[Sample], workdir: Path, repeat: int
) -> tuple[Paired, list[float]]:
    """No-code synthetic frames through the device path, each ``repeat`` times, paired
    with a bare zxing decode (order alternating); and the ms of a flat gray frame."""
    bare = make_decoder(DecoderConfig(type="zxing"))
    path = DevicePath(workdir)
    pairs = Paired()
    try:
        empty = [s.gray for s in samples if s.no_code]
        flat = np.full((FRAME_SIZE[1], FRAME_SIZE[0]), 128, np.uint8)
        bare.decode(flat)
        path.process(flat)
        for i, gray in enumerate(gray for _ in range(repeat) for gray in empty):
            if i % 2:
                bare_ms, _ = time_ms(bare.decode, gray)
                times = path.process(gray)
            else:
                times = path.process(gray)
                bare_ms, _ = time_ms(bare.decode, gray)
            pairs.add(times.scan_ms, bare_ms, times.decode_ms)
        flat_ms = [path.process(flat).scan_ms for _ in range(max(20, repeat * 10))]
    finally:
        path.close()
    return pairs, flat_ms


# Scan thread: process = decode + handoff. Worker: act = decide + signals + outbox +
# on_stored + worker_other; decide = readers + policy + seal + decide_other.
STAGES = [
    "process",
    "decode",
    "act",
    "decide",
    "readers",
    "policy",
    "seal",
    "signals",
    "outbox",
    "checkin",
    "on_stored",
]


def bench_stages(
    samples: Sequence[Sample], workdir: Path, anti_passback: str
) -> dict[str, dict[str, float | None]]:
    """Median and mean per-frame ms of each part of the path over the frames with a code.

    A second timed path with the outbox at ``synchronous=OFF`` processes each frame right
    after (or before) the real one: ``outbox_no_fsync`` is its outbox stage.
    """
    timer, whatif_timer = StageTimer(), StageTimer()
    path = DevicePath(workdir / "device", anti_passback=anti_passback, timer=timer)
    whatif = DevicePath(
        workdir / "no-fsync", anti_passback=anti_passback, timer=whatif_timer, fsync=False
    )
    try:
        for each in (path, whatif):  # first-call costs are not a frame's
            each.process(np.zeros((8, 8), np.uint8))
        timer.frames.clear()
        whatif_timer.frames.clear()
        code_frames = [s for s in samples if s.has_code]
        for i, sample in enumerate(code_frames):
            for each in (path, whatif) if i % 2 else (whatif, path):
                each.process(sample.gray)
    finally:
        path.close()
        whatif.close()
    frames = [f for f in timer.frames if "outbox" in f]
    columns: dict[str, list[float]] = {n: [f.get(n, 0.0) for f in frames] for n in STAGES}
    columns["handoff"] = [f["process"] - f.get("decode", 0.0) for f in frames]
    columns["decide_other"] = [
        f["decide"] - f.get("readers", 0.0) - f.get("policy", 0.0) - f.get("seal", 0.0)
        for f in frames
    ]
    columns["outbox_sqlite_fsync"] = [f["outbox"] - f.get("checkin", 0.0) for f in frames]
    columns["worker_other"] = [
        f["act"] - sum(f.get(n, 0.0) for n in ("decide", "signals", "outbox", "on_stored"))
        for f in frames
    ]
    columns["outbox_no_fsync"] = [f["outbox"] for f in whatif_timer.frames if "outbox" in f]
    return {
        name: {
            "median": rounded(median(values)),
            "mean": rounded(statistics.fmean(values) if values else None),
        }
        for name, values in columns.items()
    }


def profile_device(samples: Sequence[Sample], workdir: Path, anti_passback: str) -> str:
    """cProfile of the scan thread's step and of the worker's, over the code frames.

    cProfile sees one thread, so the worker's step (``DecisionWorker.act``) is called here
    on the texts of each frame, as a new visit, while the worker thread is idle.
    """
    path = DevicePath(workdir, anti_passback=anti_passback)
    scan, act = cProfile.Profile(), cProfile.Profile()
    try:
        path.process(np.zeros((8, 8), np.uint8))
        for sample in samples:
            if sample.has_code:
                path.clock.next_visit()
                texts = scan.runcall(path.scanner.process, sample.gray)
                path.settle()
                path.clock.next_visit()
                act.runcall(path.worker.act, texts)
    finally:
        path.close()
    out = io.StringIO()
    for title, profiler in (("scan thread", scan), ("decision worker", act)):
        out.write(f"=== {title}\n")
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(18)
        stats.sort_stats("cumulative").print_stats(18)
    return out.getvalue()


# --- report --------------------------------------------------------------------------------


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(result: dict[str, Any]) -> None:
    columns = ["decoded", "expected", "wrong_text", "false_positives", "median_ms", "p95_ms"]
    header = f"{'reader':<8} {'set':<10} " + " ".join(f"{c:>15}" for c in columns)
    print(header)
    print("-" * len(header))
    for reader in (*BACKENDS, "device"):
        for label, row in (("corpus", result[reader]), ("synthetic", result[reader]["synthetic"])):
            cells = " ".join(f"{fmt(row[c]):>15}" for c in columns)
            print(f"{reader:<8} {label:<10} {cells}")
    print()
    print("recall by set (decoded/expected):")
    for reader in (*BACKENDS, "device"):
        sets = {**result[reader]["by_set"], **result[reader]["synthetic"]["by_set"]}
        print(f"  {reader:<7} " + "  ".join(f"{k}={v}" for k, v in sets.items()))
    device = result["device"]
    print()
    print("device path, synthetic 640x480 frames (ms from the frame coming in):")
    print("  scan thread (decode, hand-off to the worker): what the camera thread pays")
    for key in (
        "empty_frame_ms",
        "empty_frame_p95_ms",
        "bare_empty_frame_ms",
        "flat_frame_ms",
        "code_frame_ms",
        "code_frame_p95_ms",
        "code_overhead_ms",
        "bare_code_frame_ms",
        "device_over_bare",
        "device_over_bare_empty",
        "device_over_bare_corpus",
    ):
        print(f"    {key:<28} {fmt(device[key])}")
    print("  decision worker, code frames:          median        p95")
    for key in ("to_signal_ms", "to_stored_ms", "worker_act_ms", "to_stored_no_fsync_ms"):
        value = device[key]
        print(f"    {key:<28} {fmt(value['median']):>10} {fmt(value['p95']):>10}")
    burst = device["burst"]
    print("  burst (frames back to back, worker busy alongside):")
    print("    " + ", ".join(f"{k} {fmt(v)}" for k, v in burst.items()))
    print("  stages (ms per code frame):     median       mean")
    for name, value in device["stages_ms"].items():
        print(f"    {name:<26} {fmt(value['median']):>10} {fmt(value['mean']):>10}")
    print()
    print("targets:")
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"  {name:<34} {fmt(target['value']):>10}  limit {target['limit']:<8} {verdict}")
    wrong = result.get("wrong_examples", [])
    if wrong:
        print()
        print("wrong texts and false positives (first 12):")
        for line in wrong[:12]:
            print(f"  {line}")


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    device, zxing = result["device"], result["zxing"]

    def at_most(value: float | None, limit: float) -> dict[str, Any]:
        return {"value": value, "limit": f"<= {limit}", "met": value is not None and value <= limit}

    def at_least(value: int, limit: int) -> dict[str, Any]:
        return {"value": value, "limit": f">= {limit}", "met": value >= limit}

    wrong = device["wrong_text"] + device["synthetic"]["wrong_text"]
    false = device["false_positives"] + device["synthetic"]["false_positives"]
    return {
        "empty_frame_ms": at_most(device["empty_frame_ms"], EMPTY_FRAME_TARGET_MS),
        "code_frame_ms": at_most(device["code_frame_ms"], CODE_FRAME_TARGET_MS),
        "device_over_bare (code frames)": at_most(
            device["device_over_bare"], DEVICE_OVER_BARE_TARGET
        ),
        "device_over_bare_empty": at_most(
            device["device_over_bare_empty"], DEVICE_OVER_BARE_TARGET
        ),
        "recall corpus >= bare zxing": at_least(device["decoded"], zxing["decoded"]),
        "recall synthetic >= bare zxing": at_least(
            device["synthetic"]["decoded"], zxing["synthetic"]["decoded"]
        ),
        "device wrong_text == 0": at_most(float(wrong), 0),
        "device false_positives == 0": at_most(float(false), 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--synthetic", type=int, default=200, help="code frames to generate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed decodes per frame")
    parser.add_argument("--anti-passback", choices=["off", "warn", "reject"], default="off")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the path")
    args = parser.parse_args(argv)
    if args.synthetic < 1 or args.repeat < 1:
        parser.error("--synthetic and --repeat must be at least 1")

    corpus = load_corpus(args.corpus.resolve())
    if not corpus:
        raise SystemExit(f"no images in {args.corpus}")
    synthetic = synthetic_frames(args.synthetic, args.seed)
    decoders = {name: make_decoder(DecoderConfig(type=name)) for name in BACKENDS}

    result: dict[str, Any] = {}
    backend_corpus = bench_backends(corpus, decoders, args.repeat)
    backend_synthetic = bench_backends(synthetic, decoders, args.repeat)
    wrong_examples: list[str] = []
    for name in BACKENDS:
        result[name] = backend_corpus[name].as_json()
        result[name]["synthetic"] = backend_synthetic[name].as_json()
        wrong_examples += [f"{name}: {w}" for w in backend_corpus[name].wrong]
        wrong_examples += [f"{name}: {w}" for w in backend_synthetic[name].wrong]

    with tempfile.TemporaryDirectory(prefix="qrgate-decode-bench-") as tmp:
        work = Path(tmp)
        ap = args.anti_passback
        on_corpus = bench_device(corpus, work / "corpus", ap)
        on_synthetic = bench_device(synthetic, work / "synthetic", ap)
        burst = bench_burst(synthetic, work / "burst", ap)
        empty, flat_ms = bench_empty(synthetic, work / "empty", args.repeat)
        stages = bench_stages(synthetic, work / "stages", ap)
        profile = profile_device(synthetic, work / "profile", ap) if args.profile else ""

    device = on_corpus.tally.as_json()
    device["synthetic"] = on_synthetic.tally.as_json()
    device["synthetic"]["device_over_bare"] = rounded(on_synthetic.with_code.ratio())
    wrong_examples += [f"device: {w}" for w in on_corpus.tally.wrong + on_synthetic.tally.wrong]
    corpus_pairs = Paired(
        on_corpus.with_code.device_ms + on_corpus.without_code.device_ms,
        on_corpus.with_code.bare_ms + on_corpus.without_code.bare_ms,
        on_corpus.with_code.overhead_ms + on_corpus.without_code.overhead_ms,
    )
    code = on_synthetic.with_code
    device.update(
        {
            "empty_frame_ms": rounded(median(empty.device_ms)),
            "empty_frame_p95_ms": rounded(percentile(empty.device_ms, 0.95)),
            "bare_empty_frame_ms": rounded(median(empty.bare_ms)),
            "flat_frame_ms": rounded(median(flat_ms)),
            "code_frame_ms": rounded(median(code.device_ms)),
            "code_frame_p95_ms": rounded(percentile(code.device_ms, 0.95)),
            "code_overhead_ms": rounded(median(code.overhead_ms)),
            "bare_code_frame_ms": rounded(median(code.bare_ms)),
            "device_over_bare": rounded(code.ratio()),
            "device_over_bare_empty": rounded(empty.ratio()),
            "device_over_bare_corpus": rounded(corpus_pairs.ratio()),
            "to_signal_ms": spread(on_synthetic.to_signal_ms),
            "to_stored_ms": spread(on_synthetic.to_stored_ms),
            "worker_act_ms": spread(on_synthetic.act_ms),
            "to_stored_no_fsync_ms": spread(on_synthetic.no_fsync_to_stored_ms),
            "burst": burst,
            "anti_passback": ap,
            "stages_ms": stages,
        }
    )
    result["device"] = device
    result["corpus"] = str(args.corpus)
    result["synthetic_frames"] = {
        "with_code": sum(s.has_code for s in synthetic),
        "without_code": sum(s.no_code for s in synthetic),
        "seed": args.seed,
    }
    result["targets"] = targets(result)
    result["wrong_examples"] = wrong_examples[:40]

    if profile:
        print(profile)
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
