"""Device-process benchmark: memory and CPU of ``python -m device run`` scanning at 10 fps.

Run: ``.venv/bin/python tests/bench/device.py [--seconds 60]`` (``--seconds 10`` for a
quick look). A table is printed, then one JSON object as the last line.

This file is named like the ``device`` package, which takes care: see the top of the code
(``sys.path``), and mypy checks it apart, as ``tests.bench.device`` (``make lint``).

What is measured, and how
-------------------------
* A real site: ``provisioning.site.create_site`` with one device whose frame source is a
  folder of synthetic 640x480 gate photos (``provisioning.photos.synthetic_photo``) read in
  name order, looping, at ``interval_s=0.1`` (10 frames per second), with gpiozero mock
  pins. The frames are laid out as visits: each of ``--visitors`` people shows the CCCD
  QR of a synthetic Vietnamese identity for ``--card-frames`` frames (different poses and
  difficulties), then ``--gap-frames`` frames show the room without a code. Every visit
  is one check-in (the other frames of it fall in the 3 s debounce); the loop shows the
  same people again a pass later, past the debounce, so check-ins keep coming.
* The site's own mosquitto (``broker.launcher.Mosquitto``) and gateway (``python -m
  gateway run``) run beside it, so the device really delivers: the check-ins stored at the
  gateway are counted at the end.
* ``python -m device run --config ...`` runs as a subprocess. Every second its resident
  memory (``VmRSS`` in ``/proc/<pid>/status``) and CPU time (utime + stime of
  ``/proc/<pid>/stat``, all threads) are read. ``rss_mb`` is the peak: the larger of
  ``VmHWM`` (the kernel's high-water mark) and the largest sample. ``cpu_percent`` is the
  CPU time used per second of wall time (percent of one core) from the moment the device
  has built its pipeline (its ``file frame source`` log line) for ``--seconds``; start-up
  time and CPU are reported apart. With a file source the CPU includes reading and
  decoding each PNG frame, which a camera does not cost: ``frame_load_ms`` (median CPU
  time, ``time.thread_time``, of ``device.camera.load_gray`` on these files, in this
  process; CPU time, as the device's share is, so a loaded machine does not inflate it)
  shows how much, and ``cpu_percent_without_frame_load`` takes 10 such loads a second
  off (an estimate).
* ``outbox_write_ms_p50/p99``: a real ``device.outbox.Outbox`` in a temporary directory
  on the same file system, ``--appends`` check-ins (sealed identity, as a site device
  writes them) appended one by one and each ``append`` timed; measured after the device
  has stopped. The same with the outbox switched to ``synchronous=NORMAL`` (no fsync per
  commit in WAL mode) is a what-if, to show what the fsync costs.
* Baseline: the RSS of a bare interpreter, of ``python -c "import device.app"``, and of
  every module the running device imports (``device.__main__`` plus the zxing backend,
  which ``device.decoder`` imports only when it builds the decoder); the standalone RSS
  cost of each third-party package ``device.app`` pulls in; and ``python -X importtime``
  self times summed per top-level package.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# Python puts a script's folder first on sys.path, so in this folder ``import device`` finds
# this file, not the package: for this script, and for every sibling script run from here
# (decode.py, ingest.py). Moving the folder to the end lets the package win; sibling
# modules stay importable.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))
if __name__ == "device":
    # A sibling script imported "device" and found this file: hand its import the package.
    # The import system takes whatever sys.modules["device"] holds once this file has run.
    del sys.modules["device"]
    sys.modules["device"] = importlib.import_module("device")

import argparse
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TextIO

from broker.launcher import Mosquitto, free_port
from broker.messages import CheckIn, PersonalFields
from broker.sealing import Sealer, new_authority_key
from broker.settings import FileSourceConfig
from device.camera import load_gray
from device.outbox import Outbox
from provisioning.people import synthetic_people
from provisioning.photos import synthetic_photo
from provisioning.site import DeviceSpec, Site, create_site

ROOT = Path(__file__).resolve().parents[2]
DEVICE_ID = "gate-1"
FRAME_INTERVAL_S = 0.1
DIFFICULTIES = (0.2, 0.5, 0.8)
READY_LINE = "file frame source:"
RSS_TARGET_MB = 80.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = 1024.0

# Packages the running device imports (third-party, and the stdlib's heaviest). pycose
# brings ecdsa, six and attrs with it; paho brings urllib.request and http.client.
PACKAGES = (
    "asyncio",
    "sqlite3",
    "numpy",
    "PIL.Image",
    "zxingcpp",
    "pydantic",
    "paho.mqtt.client",
    "gpiozero",
    "cryptography.x509",
    "pycose.messages",
    "ecdsa",
    "attr",
    "cbor2",
    "nacl.public",
)
# Packages that only one feature needs, and that would go together if it were made lazy.
GROUPS = {
    "badge COSE: pycose+ecdsa+attr": ("pycose.messages", "ecdsa", "attr"),
    "file source: PIL.Image": ("PIL.Image",),
}
_STATUS_SNIPPET = (
    "print(' '.join(l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith(('VmRSS:', 'VmHWM:'))))"
)


# --- frames and site -----------------------------------------------------------------------


def write_visits(
    folder: Path, *, visitors: int, card_frames: int, gap_frames: int, seed: int
) -> tuple[int, int]:
    """Write the frames of ``visitors`` visits in name order; returns (code, no-code) counts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = [p.card_text() for p in synthetic_people(visitors, seed=seed, today=date.today())]
    index = 0
    for visit, text in enumerate(texts):
        difficulty = DIFFICULTIES[visit % len(DIFFICULTIES)]
        shots: list[str | None] = [text] * card_frames + [None] * gap_frames
        for shot in shots:
            photo = synthetic_photo(shot, rng, difficulty=difficulty)
            photo.save(folder / f"{index:05d}.png", compress_level=1)
            index += 1
    return visitors * card_frames, visitors * gap_frames


def make_site(directory: Path, frames: Path) -> Site:
    source = FileSourceConfig(paths=[frames], loop=True, interval_s=FRAME_INTERVAL_S)
    spec = DeviceSpec(
        device_id=DEVICE_ID, gate="bench gate", frame_source=source, pin_factory="mock"
    )
    return create_site(directory, site_id="bench-site", port=free_port(), devices=[spec])


class Process:
    """A ``python -m MODULE run --config FILE`` process with its output in a log file."""

    def __init__(self, module: str, config: Path, log: Path) -> None:
        self.log = log
        self._handle: TextIO = log.open("w", encoding="utf-8")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(config)],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._handle.close()
        return int(self.proc.returncode)


# --- /proc sampling ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    rss_mb: float
    hwm_mb: float
    cpu_s: float
    threads: int


def read_sample(pid: int, started: float) -> Sample | None:
    """RSS, peak RSS, CPU seconds and threads of ``pid`` now; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
    rest = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(rest[11]) + int(rest[12])) / CLOCK_TICKS
    return Sample(
        at_s=time.monotonic() - started,
        rss_mb=_kb(fields.get("VmRSS", "0 kB")) / PAGE_KB,
        hwm_mb=_kb(fields.get("VmHWM", "0 kB")) / PAGE_KB,
        cpu_s=cpu_s,
        threads=int(fields.get("Threads", "0").strip()),
    )


def _kb(text: str) -> float:
    return float(text.split()[0])


@dataclass
class Run:
    """Samples of one device run and the moments that split it."""

    samples: list[Sample] = field(default_factory=list)
    ready: Sample | None = None
    end: Sample | None = None


def watch_device(device: Process, seconds: float, startup_timeout: float) -> Run:
    """Sample every second: until the pipeline is built, then for ``seconds`` more."""
    run = Run()
    deadline = device.started + startup_timeout
    while run.end is None:
        sample = read_sample(device.pid, device.started)
        if sample is None or not device.alive():
            raise SystemExit(f"the device exited early:\n{device.log_text()[-3000:]}")
        run.samples.append(sample)
        if run.ready is None:
            if READY_LINE in device.log_text():
                run.ready = sample
            elif time.monotonic() > deadline:
                raise SystemExit(f"the device did not start:\n{device.log_text()[-3000:]}")
            time.sleep(0.1)
            continue
        if sample.at_s - run.ready.at_s >= seconds:
            run.end = sample
            break
        time.sleep(max(0.0, 1.0 - (time.monotonic() - device.started - sample.at_s)))
    return run


# --- delivery ------------------------------------------------------------------------------


def query(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def delivery(site: Site) -> dict[str, int]:
    """Check-ins the device made, and those the gateway stored."""
    next_seq = query(site.outbox(DEVICE_ID), "SELECT value FROM meta WHERE key='next_seq'")
    pending = query(site.outbox(DEVICE_ID), "SELECT count(*) FROM outbox")
    stored = query(site.database, "SELECT count(*) FROM checkins WHERE device_id = ?", (DEVICE_ID,))
    return {
        "checkins": int(next_seq[0][0]) - 1 if next_seq else 0,
        "stored_at_gateway": int(stored[0][0]) if stored else 0,
        "pending_in_outbox": int(pending[0][0]) if pending else 0,
    }


# --- outbox latency ------------------------------------------------------------------------


def outbox_latency(folder: Path, appends: int, synchronous: str | None) -> dict[str, float]:
    """p50, p99 and max ms of ``Outbox.append`` for ``appends`` sealed check-ins."""
    outbox = Outbox(folder / "outbox.db")
    if synchronous is not None:  # a what-if; the device always runs synchronous=FULL
        outbox._db.execute(f"PRAGMA synchronous={synchronous}")
    _, authority = new_authority_key()
    person = synthetic_people(1, seed=3, today=date.today())[0]
    sealed = Sealer(authority).seal(
        PersonalFields(
            id_number=person.id_number,
            name=person.name,
            date_of_birth=person.date_of_birth.isoformat(),
        )
    )

    def build(seq: int) -> CheckIn:
        return CheckIn(
            seq=seq,
            scanned_at=datetime.now(UTC),
            direction="in",
            kind="cccd",
            accepted=True,
            reason="ok",
            subject="0123456789abcdef0123456789abcdef",
            sealed=sealed,
            initials="N. V. An",
        )

    times = []
    try:
        for _ in range(appends):
            started = time.perf_counter()
            outbox.append(build)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        outbox.close()
    return {
        "p50": round(statistics.median(times), 3),
        "p99": round(percentile(times, 0.99), 3),
        "max": round(max(times), 3),
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- import baseline -----------------------------------------------------------------------


def import_rss(modules: Sequence[str]) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of a fresh interpreter after importing ``modules``."""
    code = "".join(f"import {m}\n" for m in modules) + _STATUS_SNIPPET
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]) / PAGE_KB, float(out[1]) / PAGE_KB


def import_times(module: str) -> dict[str, float]:
    """``-X importtime`` self times of importing ``module``, summed per top-level package (ms)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    totals: dict[str, float] = defaultdict(float)
    line = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")
    for match in line.finditer(err):
        totals[match.group(3).split(".")[0]] += int(match.group(1)) / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def baseline(repeat: int) -> dict[str, Any]:
    """RSS of the interpreter, of ``import device.app`` and of what the device loads.

    A package's ``alone`` cost is its import into a bare interpreter; its ``marginal`` cost
    is what the import of all of ``PACKAGES`` saves without it: what making it lazy (or
    dropping it) would save, given the others stay.
    """
    runtime = ["device.__main__", "device.decoder_zxing"]

    def rss(modules: Sequence[str]) -> float:
        return statistics.median(import_rss(modules)[0] for _ in range(repeat))

    python = rss([])
    everything = rss(PACKAGES)
    packages = {
        name: {
            "alone": round(rss([name]) - python, 1),
            "marginal": round(everything - rss([p for p in PACKAGES if p != name]), 1) + 0.0,
        }
        for name in PACKAGES
    }
    groups = {
        name: round(everything - rss([p for p in PACKAGES if p not in members]), 1)
        for name, members in GROUPS.items()
    }
    times = [import_times("device.app") for _ in range(repeat)]
    names = set().union(*times)
    per_package = {n: statistics.median(t.get(n, 0.0) for t in times) for n in names}
    top = sorted(per_package.items(), key=lambda kv: -kv[1])[:15]
    return {
        "python_rss_mb": round(python, 1),
        "import_device_app_rss_mb": round(rss(["device.app"]), 1),
        "import_device_runtime_rss_mb": round(rss(runtime), 1),
        "import_packages_rss_mb": round(everything, 1),
        "package_rss_mb": dict(sorted(packages.items(), key=lambda kv: -kv[1]["marginal"])),
        "group_marginal_rss_mb": groups,
        "import_ms_total": round(sum(per_package.values()), 1),
        "import_ms_by_package": {name: round(ms, 1) for name, ms in top},
    }


# --- report --------------------------------------------------------------------------------


def print_table(result: dict[str, Any], run: Run) -> None:
    print(f"device run: {result['seconds']} s at 10 fps after start-up")
    print(f"{'t (s)':>7} {'RSS MB':>8} {'peak MB':>8} {'CPU s':>7} {'threads':>7}")
    step = max(1, len(run.samples) // 15)
    shown = run.samples[::step] + ([run.end] if run.end else [])
    for s in shown:
        print(f"{s.at_s:7.1f} {s.rss_mb:8.1f} {s.hwm_mb:8.1f} {s.cpu_s:7.2f} {s.threads:7d}")
    print()
    rows = [
        ("rss_mb (peak)", result["rss_mb"], f"target <= {RSS_TARGET_MB:.0f}"),
        ("rss_mb at ready / end", f"{result['rss_mb_ready']} / {result['rss_mb_end']}", ""),
        ("cpu_percent (one core)", result["cpu_percent"], "steady, after start-up"),
        ("  less PNG reads (estimate)", result["cpu_percent_without_frame_load"], ""),
        ("startup_s / startup_cpu_s", f"{result['startup_s']} / {result['startup_cpu_s']}", ""),
        ("frame_load_ms (PNG read)", result["frame_load_ms"], "CPU ms; file source only"),
        (
            "outbox_write_ms p50/p99",
            f"{result['outbox_write_ms_p50']} / {result['outbox_write_ms_p99']}",
            "synchronous=FULL",
        ),
        (
            "  what-if synchronous=NORMAL",
            f"{result['outbox_nosync_ms']['p50']} / {result['outbox_nosync_ms']['p99']}",
            "no fsync per commit",
        ),
        (
            "check-ins / stored / pending",
            f"{result['delivery']['checkins']} / "
            f"{result['delivery']['stored_at_gateway']} / "
            f"{result['delivery']['pending_in_outbox']}",
            f"exit code {result['exit_code']}",
        ),
    ]
    for name, value, note in rows:
        print(f"{name:<30} {value!s:>16}  {note}")
    base = result["baseline"]
    print()
    print(
        f"baseline RSS: python {base['python_rss_mb']} MB, import device.app "
        f"{base['import_device_app_rss_mb']} MB, device run imports "
        f"{base['import_device_runtime_rss_mb']} MB"
    )
    print(
        f"RSS of importing all of {len(PACKAGES)} packages: {base['import_packages_rss_mb']} MB;"
        " per package (MB): marginal (saved if made lazy) / alone (into bare python)"
    )
    for name, cost in base["package_rss_mb"].items():
        print(f"  {name:<20} {cost['marginal']:>6} / {cost['alone']}")
    for name, saved in base["group_marginal_rss_mb"].items():
        print(f"  {name:<34} {saved:>6} marginal, together")
    print(f"import device.app: {base['import_ms_total']} ms; self time by package (ms):")
    print("  " + ", ".join(f"{k} {v}" for k, v in base["import_ms_by_package"].items()))
    verdict = "met" if result["rss_mb"] <= RSS_TARGET_MB else "MISSED"
    print()
    print(f"target RSS <= {RSS_TARGET_MB:.0f} MB: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="scanning time measured")
    parser.add_argument("--visitors", type=int, default=20)
    parser.add_argument("--card-frames", type=int, default=5)
    parser.add_argument("--gap-frames", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--appends", type=int, default=1000, help="outbox appends timed")
    parser.add_argument("--baseline-repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the site here and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="qrgate-device-bench-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        frames = work / "frames"
        code_frames, empty_frames = write_visits(
            frames,
            visitors=args.visitors,
            card_frames=args.card_frames,
            gap_frames=args.gap_frames,
            seed=args.seed,
        )
        images = sorted(frames.glob("*.png"))
        time_load(images[0])  # PIL's first open loads its plugins
        load_ms = [time_load(p) for p in images[:60]]
        site = make_site(work / "site", frames)
        broker = Mosquitto(site.broker)
        broker.start()
        gateway = device = None
        try:
            gateway = Process("gateway", site.gateway_config, work / "gateway.log")
            wait_for(gateway, "connected to", 60)
            device = Process("device", site.device_config(DEVICE_ID), work / "device.log")
            run = watch_device(device, args.seconds, startup_timeout=120)
            exit_code = device.stop()
            time.sleep(1.0)
            delivered = delivery(site)
        finally:
            for process in (device, gateway):
                if process is not None:
                    process.stop()
            broker.stop()
        latency = outbox_latency(_fresh(work / "outbox-full"), args.appends, None)
        nosync = outbox_latency(_fresh(work / "outbox-normal"), args.appends, "NORMAL")

    assert run.ready is not None and run.end is not None
    window = run.end.at_s - run.ready.at_s
    base = baseline(args.baseline_repeat)
    result: dict[str, Any] = {
        "rss_mb": round(max(run.end.hwm_mb, *(s.rss_mb for s in run.samples)), 1),
        "cpu_percent": round(100 * (run.end.cpu_s - run.ready.cpu_s) / window, 1),
        "outbox_write_ms_p99": latency["p99"],
        "outbox_write_ms_p50": latency["p50"],
        "outbox_write_ms_max": latency["max"],
        "outbox_nosync_ms": nosync,
        "rss_mb_ready": round(run.ready.rss_mb, 1),
        "rss_mb_end": round(run.end.rss_mb, 1),
        "startup_s": round(run.ready.at_s, 2),
        "startup_cpu_s": round(run.ready.cpu_s, 2),
        "threads": run.end.threads,
        "seconds": round(window, 1),
        "frames": {"with_code": code_frames, "without_code": empty_frames},
        "frame_load_ms": round(statistics.median(load_ms), 3),
        # What the file source's PNG reads cost at 10 fps, taken off: a camera's share.
        "cpu_percent_without_frame_load": round(
            100 * (run.end.cpu_s - run.ready.cpu_s) / window
            - statistics.median(load_ms) / 1000 / FRAME_INTERVAL_S * 100,
            1,
        ),
        "delivery": delivered,
        "exit_code": exit_code,
        "baseline": base,
    }
    result["rss_target_met"] = result["rss_mb"] <= RSS_TARGET_MB
    print_table(result, run)
    print(json.dumps(result))
    return 0


def time_load(path: Path) -> float:
    """CPU ms of reading one frame file (this thread's CPU time, not wall time)."""
    started = time.thread_time()
    load_gray(path)
    return (time.thread_time() - started) * 1000


def wait_for(process: Process, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log_text():
        if not process.alive() or time.monotonic() > deadline:
            raise SystemExit(f"{text!r} not seen:\n{process.log_text()[-3000:]}")
        time.sleep(0.1)


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=False)
    return folder


if __name__ == "__main__":
    sys.exit(main())
