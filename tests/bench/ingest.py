"""End-to-end ingest benchmark: simulated devices -> Mosquitto -> gateway -> SQLite -> acks.

Usage::

    .venv/bin/python tests/bench/ingest.py [--devices 50] [--seconds 20] [--rate 2000]
                                          [--batch 100] [--backlog 2000] [--quick]

Everything runs on this machine over 127.0.0.1: a site generated with
:func:`provisioning.site.create_site` (one broker user and password per device),
its own Mosquitto started from the generated config, and the real gateway
process (``python -m gateway run --config ...``) writing the real tracing
database. The devices are simulated in ``--workers`` (1 or 2) load-generator
processes (this script with ``--worker``); each device is the product code
path: its own :class:`broker.client.BusClient` (client id = device id, MQTT v5,
its own user and password, persistent session), its own
:class:`device.outbox.Outbox` file and its own :class:`device.uplink.Uplink`.
A *scan* is ``outbox.append(...)`` of a valid ``CheckIn`` with a random subject
and ``scanned_at`` = the scan's wall-clock time, followed by ``uplink.wake()``;
it is done on the worker's event loop (a real device appends on its scanner
thread). An ack is applied by ``uplink.on_ack_message`` (outbox delete), exactly
as ``device.app`` does.

Phases, in this order (each with fresh worker processes; the outboxes, their
streams and sequence numbers, the broker sessions and the database carry on):

raw (``raw_ceiling_per_s``)
    Before the gateway ever connects (so no gateway session exists and nothing
    is queued for it), ``--raw-publishers`` bare paho publishers (device users,
    clean sessions, QoS 1) in the load-generator processes publish a
    one-record ``CheckInBatch`` payload (the size the devices send in (a)) on
    their check-in topics as fast as the receiving end keeps up, and a bare
    paho subscriber in its own process, logged in as the gateway user,
    receives ``qrgate/v1/dev/+/checkin`` at QoS 1 (paho acks each message).
    The subscriber keeps its receive count in a shared 8-byte file and the
    publishers keep at most 1,000 messages published but not yet received:
    without that end-to-end bound they outrun the subscriber, the broker
    drops the overflow, and the CPU they burn on it starves the subscriber on
    two cores. The ceiling is the subscriber's receive rate over the window.
(a) steady (``checkins_per_s``)
    Devices caught up, ``max_batch=1`` so every message carries one check-in.
    Closed loop: each device keeps at most ``--window`` scanned-but-unacked
    check-ins and scans again as soon as an ack frees room. Rate = check-ins
    whose ack reached their device (outbox row deleted) within the window,
    divided by the window. ``ratio`` = this / ``raw_ceiling_per_s``.
(c) paced (``p50_ms``, ``p99_ms``)
    ``--rate`` scans per second in total, paced on a schedule, spread
    round-robin over the devices, real ``max_batch`` (``--batch``). Latency of
    each scan in the window, scan-to-commit = the moment the broker forwards
    the gateway's ack covering it (seen by the "ack tap" below; the gateway
    publishes the ack right after its COMMIT) minus its scan time: commit plus
    one broker hop, so a tight upper bound. Also reported: scan-to-ack at the
    device (``scan_to_ack_*``: + the hop back and the device's own loop) and,
    as a lower bound, scan to ``received_at`` read back from the database (the
    moment the gateway's event loop took the message, before validation).
    The path is also cut into segments (p50/p99 each): ``device`` (scan ->
    the uplink hands the message to paho), ``to_gateway`` (-> ``received_at``),
    ``gateway`` (-> the broker forwards the ack covering it, timestamped by an
    "ack tap": a bare subscriber of every ack topic, as the gateway user, in its
    own process) and ``back`` (-> the ack is applied at the device). Every
    check-in's times go to ``logs/paced-timeline.csv`` of the run directory.
(b) backlog (``batched_checkins_per_s``)
    While the uplinks are not running (no connection yet), every outbox is
    filled with ``--backlog`` check-ins; then all devices connect, and once all
    are connected their uplinks start at one instant t0. Rate = all backlog
    check-ins / (time the last device has its last check-in acked - t0). The
    devices keep the product's ``ack_timeout_s`` (10 s): a device whose
    messages wait longer than that at the broker resends its oldest unacked
    message (counted as ``resends``; the gateway counts the re-sent check-ins
    as ``duplicates`` and stores them once).
direct (``gateway_direct_checkins_per_s``, a diagnostic)
    Bare paho publishers (no outbox, no uplink) publish valid one-record
    batches of fresh fake streams to the running gateway, each keeping at
    most 50 check-ins not yet acked (they subscribe to their ack topic);
    rate = rows committed per second (``max(id)`` read at the window edges).
    It shows what the gateway commits when the device side costs little; the
    rows of these fake streams are not part of the verification.

Verification at the end (``lost``, ``duplicated``): for every device its
outbox stream and last sequence number are read from its outbox file, and the
database must hold each (device, stream, seq) for seq 1..last exactly once.
``lost`` counts scanned check-ins neither in the database nor still pending
in the outbox, ``undelivered`` those still pending, ``duplicated`` rows beyond
the first for one (device, stream, seq).

CPU use of the gateway (all threads, its main thread, kernel time), Mosquitto,
the load generators, the raw subscriber, the whole machine and everything
else on it (``others``: this machine is shared) is read from ``/proc`` over
each window, and divided by the phase's rate into CPU microseconds per
check-in: which side is saturated, and what one check-in costs each process
whatever the noise. ``gateway_waiting_for_cpu`` is the time the gateway's
threads were ready to run but waited for a core (``/proc/.../schedstat``): a
gateway that is "waiting, not computing" on a busy machine waits there.
``--py-spy DIR`` records the gateway with ``py-spy --gil`` during each phase
and prints where the GIL time goes; ``--cprofile FILE`` runs the gateway under
cProfile and prints the top functions. Profiling perturbs the figures: use it on separate runs.

The run directory (``--keep DIR`` keeps it) holds the site, the tracing
database and ``logs/``: the gateway's and every worker's log, Mosquitto's log
under the site, and ``phases.jsonl`` (per phase: timing and worker results).

The outboxes live under ``--outbox-dir`` (default ``/dev/shm``): the outbox is
``synchronous=FULL``, and on this one disk the fsyncs of all simulated devices
(~0.4 ms each, measured) would serialise and measure the load generator, while
every real device fsyncs its own storage. The gateway's database stays on disk
in the run directory.

Everything binds 127.0.0.1, every loop is bounded in time, and every child
process and Mosquitto are stopped in ``finally`` blocks. The last line printed
is one JSON object with the results. Exit status 1 if a check-in was lost or
duplicated (or with ``--strict``, if a target was missed).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import bisect
import contextlib
import json
import logging
import math
import mmap
import os
import pstats
import queue
import random
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker.client import BusClient, ClientSettings
from broker.errors import BrokerStartError
from broker.launcher import Mosquitto, free_port, log_tail
from broker.messages import CheckIn, CheckInBatch, encode
from broker.secrets import read_password
from broker.topics import Channel, all_devices, device_topic
from device.outbox import Outbox
from device.uplink import Uplink
from provisioning.site import GATEWAY_USER, DeviceSpec, Site, create_site

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("bench.ingest")
SCRIPT = Path(__file__).resolve()

# Targets of the brief, for this 2-core machine with the broker on it.
TARGET_RATIO = 0.60
TARGET_BATCHED_PER_S = 50_000.0
TARGET_P99_MS = 250.0

ACK_TIMEOUT_S = 10.0  # the product default (provisioning.site.DeviceSpec)
CONNECT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0  # filling big outboxes takes a while
GO_TIMEOUT_S = 300.0
RAW_WINDOW = 200  # unacknowledged QoS 1 messages per bare publisher
# Raw ceiling: messages published but not yet received by the subscriber, all
# publishers together: well above the broker's 100 in flight to the subscriber,
# well below its queue of 10,000 (beyond which it drops).
RAW_IN_FLIGHT = 1000
DIRECT_IN_FLIGHT = 50  # direct phase: unacked check-ins per bare publisher
SPY_RATE = 250  # py-spy samples per second
# Hard bound on a worker process's life (plus twice its window), see worker_main.
WORKER_LIFETIME_S = READY_TIMEOUT_S + GO_TIMEOUT_S + 300.0
SEQ_MARKER = 987654321  # placeholder seq in a payload template
PHASES = ("raw", "steady", "paced", "backlog", "direct")


class BenchError(RuntimeError):
    """The benchmark could not run (a process failed, a wait timed out)."""


# --------------------------------------------------------------------------- shared


def make_checkin(seq: int, scanned: datetime, rng: random.Random) -> CheckIn:
    """A valid check-in as a gate makes it: accepted CCCD, random pseudonymous subject."""
    return CheckIn(
        seq=seq,
        scanned_at=scanned,
        direction="in",
        kind="cccd",
        accepted=True,
        reason="ok",
        subject=f"{rng.getrandbits(128):032x}",
        initials="N. V. A.",
    )


def one_record_template(device_id: str, stream: str) -> tuple[bytes, bytes]:
    """A one-record ``CheckInBatch`` payload split around its seq: prefix + seq + suffix."""
    record = make_checkin(SEQ_MARKER, datetime.now(UTC), random.Random(7))
    payload = encode(CheckInBatch(device_id=device_id, stream=stream, records=[record]))
    prefix, suffix = payload.split(str(SEQ_MARKER).encode())
    return prefix, suffix


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (NaN for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def emit(event: str, **data: object) -> None:
    """A worker's message to the controller: one JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def read_go(timeout: float) -> float:
    """Block until the controller's ``{"t0": ...}`` line; returns t0 (wall clock)."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise BenchError(f"no go from the controller within {timeout:.0f} s")
    line = sys.stdin.readline()
    if not line:
        raise BenchError("controller went away")
    return float(json.loads(line)["t0"])


def password_of(site_dir: Path, user: str) -> str:
    """A broker user's password from the site's secrets folder (as Site.password does)."""
    return read_password(site_dir / "secrets" / f"{user}.password")


def sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- device worker

Phase = Literal["steady", "paced", "backlog"]


@dataclass
class DeviceWorkerSpec:
    """What one load-generator process does in one phase."""

    phase: Phase
    site_dir: str
    host: str
    port: int
    devices: list[str]
    outbox_dir: str
    max_batch: int
    window: int = 8  # steady: scanned-but-unacked check-ins per device
    rate: float = 0.0  # paced: this worker's scans per second
    backlog: int = 0  # backlog: check-ins per device filled before the uplinks start
    warmup_s: float = 2.0
    seconds: float = 10.0
    drain_s: float = 60.0
    seed: int = 1


class CountingClient(BusClient):
    """The product BusClient, counting the messages handed to paho (and telling who asks)."""

    published = 0
    on_payload: Callable[[bytes], None] | None = None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        mid = super().publish(topic, payload, qos=qos, retain=retain)
        self.published += 1
        if self.on_payload is not None:
            self.on_payload(payload)
        return mid


class SimDevice:
    """One simulated gate: outbox + BusClient + Uplink of the product, and a stopwatch."""

    def __init__(
        self,
        device_id: str,
        spec: DeviceWorkerSpec,
        loop: asyncio.AbstractEventLoop,
        progress: asyncio.Event,
        rng: random.Random,
    ) -> None:
        self.device_id = device_id
        self._rng = rng
        self._progress = progress
        self.outbox = Outbox(Path(spec.outbox_dir) / f"{device_id}.db")
        self.ack_topic = device_topic(device_id, Channel.ACK)
        settings = ClientSettings(
            client_id=device_id,
            username=device_id,
            password=password_of(Path(spec.site_dir), device_id),
            host=spec.host,
            port=spec.port,
        )
        self.client = CountingClient(
            settings,
            loop=loop,
            subscriptions=[(self.ack_topic, 1)],
            on_message=self._on_message,
            on_connected=self._on_connected,
        )
        self.uplink = Uplink(
            device_id=device_id,
            outbox=self.outbox,
            client=self.client,
            max_batch=spec.max_batch,
            ack_timeout_s=ACK_TIMEOUT_S,
        )
        self.last_seq = self.outbox.last_seq()
        # Everything up to here was acked by earlier phases (acks are cumulative).
        self.mark = self.last_seq - self.outbox.depth()
        self.first_seq = self.last_seq + 1
        self.scan_times: dict[int, float] = {}
        # paced phase: when the uplink handed each check-in to paho, by seq
        self.publish_times: dict[int, float] = {}
        if spec.phase == "paced":
            self.client.on_payload = self._published
        # (seq, scan time, publish time or -1, ack applied time)
        self.acks: list[tuple[int, float, float, float]] = []
        self.done_at: float | None = None

    def scan(self) -> None:
        """A gate scan: durable append to the outbox, then wake the uplink."""
        now = time.time()
        scanned = datetime.fromtimestamp(now, UTC)
        record = self.outbox.append(lambda seq: make_checkin(seq, scanned, self._rng))
        self.scan_times[record.seq] = now
        self.last_seq = record.seq
        self.uplink.wake()

    @property
    def outstanding(self) -> int:
        return self.last_seq - self.mark

    def _on_connected(self) -> None:
        self.uplink.on_connected()

    def _published(self, payload: bytes) -> None:
        now = time.time()
        for record in json.loads(payload)["records"]:
            self.publish_times.setdefault(int(record["seq"]), now)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.ack_topic:
            return
        self.uplink.on_ack_message(payload)
        upto = self.uplink.acked_upto
        if upto <= self.mark:
            return
        now = time.time()
        for seq in range(self.mark + 1, upto + 1):
            scanned = self.scan_times.pop(seq, None)
            if scanned is not None:
                self.acks.append((seq, scanned, self.publish_times.pop(seq, -1.0), now))
        self.mark = upto
        if self.mark >= self.last_seq and self.done_at is None:
            self.done_at = now
        self._progress.set()


class _ResendCounter(logging.Handler):
    """Counts the uplink's "no ack ... resending" warnings: resends after ack_timeout_s."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.resends = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "resending" in record.getMessage():
            self.resends += 1


async def run_device_worker(spec: DeviceWorkerSpec) -> None:
    """One phase for a share of the devices; prints ``ready`` then ``result``."""
    resends = _ResendCounter()
    logging.getLogger("device.uplink").addHandler(resends)
    loop = asyncio.get_running_loop()
    progress = asyncio.Event()
    rng = random.Random(spec.seed)
    devices = [SimDevice(d, spec, loop, progress, rng) for d in spec.devices]
    tasks: list[asyncio.Task[None]] = []
    try:
        fill_s = 0.0
        if spec.phase == "backlog":
            started = time.perf_counter()
            for device in devices:
                for _ in range(spec.backlog):
                    device.scan()
                device.done_at = None
            fill_s = time.perf_counter() - started
        for device in devices:
            device.client.start()
        await asyncio.wait_for(
            asyncio.gather(*(d.client.wait_connected() for d in devices)), CONNECT_TIMEOUT_S
        )
        emit("ready", fill_s=fill_s, pending=sum(d.outstanding for d in devices))
        t0 = await loop.run_in_executor(None, read_go, GO_TIMEOUT_S)
        await asyncio.sleep(max(0.0, t0 - time.time()))
        tasks = [asyncio.create_task(d.uplink.run(), name=d.device_id) for d in devices]
        for task in tasks:
            task.add_done_callback(_report_crash)
        extra: dict[str, object] = {}
        if spec.phase == "steady":
            await _closed_loop(devices, progress, spec, t0)
        elif spec.phase == "paced":
            extra = await _paced(devices, spec, t0)
        drained = await _drain(devices, progress, t0 + spec.warmup_s + spec.seconds, spec)
        extra["resends"] = resends.resends
        emit("result", **_device_result(devices, spec, t0, drained), **extra)
    finally:
        await _cancel_all(tasks)
        for device in devices:
            device.client.stop()
            device.outbox.close()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the uplink tasks, again if one swallowed the cancellation (bounded).

    Python 3.11's ``asyncio.wait_for`` (used by ``Uplink.run``) can swallow a
    cancellation that arrives as the awaited event fires; such a task runs on.
    """
    for attempt in range(100):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        if attempt:
            logger.warning("%d uplink task(s) survived cancel #%d", len(pending), attempt)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("uplink of %s crashed", task.get_name(), exc_info=task.exception())


async def _closed_loop(
    devices: list[SimDevice], progress: asyncio.Event, spec: DeviceWorkerSpec, t0: float
) -> None:
    """Keep ``spec.window`` check-ins in flight per device until the window ends."""
    end = t0 + spec.warmup_s + spec.seconds
    while time.time() < end:
        for device in devices:
            while device.outstanding < spec.window:
                device.scan()
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), 0.1)


async def _paced(devices: list[SimDevice], spec: DeviceWorkerSpec, t0: float) -> dict[str, object]:
    """Scan at ``spec.rate`` per second on a fixed schedule, round-robin over devices."""
    end = t0 + spec.warmup_s + spec.seconds
    done = 0
    lags: list[float] = []
    while True:
        now = time.time()
        if now >= end:
            break
        due = int((now - t0) * spec.rate) + 1
        while done < due:
            lags.append(time.time() - (t0 + done / spec.rate))
            devices[done % len(devices)].scan()
            done += 1
        await asyncio.sleep(max(0.0, t0 + done / spec.rate - time.time()))
    return {
        "scheduled": done,
        "pacing_lag_p99_ms": percentile(lags, 99) * 1000.0,
        "pacing_lag_max_ms": max(lags, default=0.0) * 1000.0,
    }


async def _drain(
    devices: list[SimDevice], progress: asyncio.Event, not_before: float, spec: DeviceWorkerSpec
) -> bool:
    """Wait (bounded) until every scanned check-in of every device is acked."""
    deadline = max(time.time(), not_before) + spec.drain_s
    next_note = time.time() + 2.0
    while any(d.outstanding > 0 for d in devices):
        if time.time() > deadline:
            return False
        if time.time() > next_note:
            next_note += 2.0
            for d in devices:
                if d.outstanding > 0:
                    logger.warning(
                        "draining %s: last %d acked %d uplink sent %d acked %d depth %d conn %s",
                        d.device_id, d.last_seq, d.mark, d.uplink.sent_upto,
                        d.uplink.acked_upto, d.outbox.depth(), d.client.connected,
                    )  # fmt: skip
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), 0.1)
    return True


def _device_result(
    devices: list[SimDevice], spec: DeviceWorkerSpec, t0: float, drained: bool
) -> dict[str, object]:
    w0 = t0 + spec.warmup_s
    w1 = w0 + spec.seconds
    acks = [a for d in devices for a in d.acks]
    in_window = [a for a in acks if w0 <= a[3] < w1]
    scanned_in_window = [a for a in acks if w0 <= a[1] < w1]
    scans = sum(d.last_seq - d.first_seq + 1 for d in devices)
    messages = sum(d.client.published for d in devices)
    return {
        "drained": drained,
        "scans": scans,
        "acked": len(acks),
        "acked_in_window": len(in_window),
        "messages": messages,
        # acks of scans made inside the window: their scan-to-ack latencies, in ms
        "latencies_ms": [round((a[3] - a[1]) * 1000.0, 3) for a in scanned_in_window],
        "done_at": [d.done_at for d in devices],
        "undrained": sum(d.outstanding for d in devices),
        "stuck": [
            {
                "device": d.device_id,
                "last_seq": d.last_seq,
                "acked": d.mark,
                "uplink_sent_upto": d.uplink.sent_upto,
                "uplink_acked_upto": d.uplink.acked_upto,
                "connected": d.client.connected,
                "outbox_depth": d.outbox.depth(),
            }
            for d in devices
            if d.outstanding > 0
        ],
        "timelines": ([_timeline(d, w0, w1) for d in devices] if spec.phase == "paced" else []),
    }


def _timeline(device: SimDevice, w0: float, w1: float) -> dict[str, object]:
    """Per check-in scanned in [w0, w1) and acked: seq, scan, publish and ack times."""
    acked = [a for a in device.acks if w0 <= a[1] < w1]
    return {
        "device": device.device_id,
        "stream": device.outbox.stream,
        "seq": [a[0] for a in acked],
        "scan": [a[1] for a in acked],
        "publish": [a[2] for a in acked],
        "ack": [a[3] for a in acked],
    }


# --------------------------------------------------------------------------- raw workers


@dataclass
class RawSpec:
    """A bare paho publisher or subscriber process (raw ceiling, direct phase)."""

    site_dir: str
    host: str
    port: int
    users: list[str]  # publishers: device users; subscriber: [gateway user]
    warmup_s: float
    seconds: float
    # raw: file where the subscriber keeps its receive count, and the publishers' share
    # of the messages allowed in flight end to end (published, not yet received).
    counter_file: str = ""
    in_flight: int = 0
    share: float = 1.0  # this process's share of the subscriber's count
    # direct: valid payloads of a fresh fake stream per publisher, paced by the gateway's
    # acks: at most ``in_flight`` check-ins per publisher not yet acked.
    direct: bool = False


class Counter64:
    """One 64-bit counter in a small shared file (/dev/shm): written by one, read by many."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 - kept open for the mmap's lifetime
        self._map = mmap.mmap(self._file.fileno(), 8)

    @staticmethod
    def create(path: Path) -> None:
        path.write_bytes(bytes(8))

    def set(self, value: int) -> None:
        struct.pack_into("<q", self._map, 0, value)

    def get(self) -> int:
        value: int = struct.unpack_from("<q", self._map, 0)[0]
        return value

    def close(self) -> None:
        self._map.close()
        self._file.close()


class _Flags:
    """State a paho client's callbacks share with the thread that drives it."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused = ""
        self.acked = 0
        self.failed = 0
        self.received = 0
        self.counter: Counter64 | None = None
        self.stream = ""
        self.acked_upto = 0


def _bare_client(client_id: str, user: str, password: str) -> tuple[Client, _Flags]:
    flags = _Flags()
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5
    )
    client.username_pw_set(user, password)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)

    def on_connect(_c: Client, _u: Any, _f: ConnectFlags, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            flags.refused = str(rc)
        else:
            flags.connected.set()

    def on_publish(_c: Client, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        flags.acked += 1
        if rc.is_failure:
            flags.failed += 1

    def on_subscribe(_c: Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            flags.refused = ", ".join(str(rc) for rc in rcs)
        else:
            flags.subscribed.set()

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        flags.received += 1
        if flags.counter is not None:
            flags.counter.set(flags.received)
        elif flags.stream:  # a direct-phase publisher: an ack from the gateway
            ack = json.loads(message.payload)
            if ack.get("stream") == flags.stream:
                flags.acked_upto = max(flags.acked_upto, int(ack["upto"]))

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    return client, flags


def _connect(client: Client, flags: _Flags, spec: RawSpec, *, threaded: bool = True) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect(spec.host, spec.port, keepalive=30, clean_start=True, properties=props)
    if threaded:
        client.loop_start()
    _wait_flag(client, flags, flags.connected, threaded, "CONNACK")


def _wait_flag(
    client: Client, flags: _Flags, flag: threading.Event, threaded: bool, what: str
) -> None:
    """Wait for a callback's flag; without a network thread, run paho's loop meanwhile."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not flag.is_set():
        if flags.refused or time.monotonic() > deadline:
            raise BenchError(f"bare client: no {what}: {flags.refused or 'timeout'}")
        if threaded:
            flag.wait(0.05)
        else:
            client.loop(timeout=0.05)


def _subscribe(client: Client, flags: _Flags, topic: str, *, threaded: bool = True) -> None:
    client.subscribe(topic, qos=1)
    _wait_flag(client, flags, flags.subscribed, threaded, f"SUBACK for {topic}")


def run_ack_tap(spec: RawSpec) -> None:
    """Timestamp every ack as the broker forwards it, until told to stop (bounded).

    A bare subscriber in its own process, logged in as the gateway user (which
    may read the ack topics), so the time the gateway published an ack is seen
    without waiting for a busy load generator to read it.
    """
    user = spec.users[0]
    client, flags = _bare_client(
        f"bench-ack-tap-{os.getpid()}", user, password_of(Path(spec.site_dir), user)
    )
    seen: list[tuple[float, bytes | bytearray]] = []
    client.on_message = lambda _c, _u, message: seen.append((time.time(), message.payload))
    try:
        _connect(client, flags, spec)
        _subscribe(client, flags, all_devices(Channel.ACK))
        emit("ready")
        read_go(spec.seconds)  # the controller's stop (the "t0" in it is ignored)
    finally:
        client.disconnect()
        client.loop_stop()
    by_stream: dict[str, list[tuple[float, int]]] = {}
    for at, payload in list(seen):
        ack = json.loads(payload)
        by_stream.setdefault(str(ack["stream"]), []).append((at, int(ack["upto"])))
    emit("result", acks=by_stream)


def run_raw_subscriber(spec: RawSpec) -> None:
    """Receive every device's check-in topic at QoS 1 as the gateway user; count."""
    user = spec.users[0]
    client, flags = _bare_client(
        f"bench-raw-sub-{os.getpid()}", user, password_of(Path(spec.site_dir), user)
    )
    flags.counter = Counter64(spec.counter_file)
    try:
        _connect(client, flags, spec)
        _subscribe(client, flags, all_devices(Channel.CHECKIN))
        emit("ready")
        t0 = read_go(GO_TIMEOUT_S)
        sleep_until(t0 + spec.warmup_s)
        w0, c0 = time.time(), flags.received
        sleep_until(t0 + spec.warmup_s + spec.seconds)
        w1, c1 = time.time(), flags.received
        sleep_until(w1 + 1.0)
        emit("result", window_s=w1 - w0, received_in_window=c1 - c0, received=flags.received)
    finally:
        client.disconnect()
        client.loop_stop()
        flags.counter.close()


@dataclass
class _Publisher:
    client: Client
    flags: _Flags
    topic: str
    prefix: bytes
    suffix: bytes
    sent: int = 0
    refused: int = 0


def run_raw_publishers(spec: RawSpec) -> None:
    """Publish one-record payloads at QoS 1 as fast as the receiving end keeps up.

    Raw: this process keeps at most ``in_flight`` messages published but not yet
    counted by the subscriber (its share of the subscriber's count), so no CPU
    goes into messages the broker would drop. Direct: each publisher keeps at
    most ``in_flight`` check-ins not yet acked by the gateway.

    All publishers of the process are driven from this one thread with paho's
    external-loop API (``loop_read``/``loop_write``/``loop_misc`` on ``select``):
    without a network thread ``publish()`` writes to the socket itself, so the
    publishers spend their CPU on MQTT, not on thread hand-offs and the GIL.
    """
    pubs: list[_Publisher] = []
    counter = Counter64(spec.counter_file) if spec.counter_file else None
    try:
        for user in spec.users:
            client, flags = _bare_client(
                f"bench-raw-{user}-{os.getpid()}", user, password_of(Path(spec.site_dir), user)
            )
            flags.stream = secrets.token_hex(16)
            prefix, suffix = one_record_template(user, flags.stream)
            pubs.append(
                _Publisher(client, flags, device_topic(user, Channel.CHECKIN), prefix, suffix)
            )
            _connect(client, flags, spec, threaded=False)
            if spec.direct:
                _subscribe(client, flags, device_topic(user, Channel.ACK), threaded=False)
        by_socket: dict[socket.socket, _Publisher] = {}
        for pub in pubs:
            sock = pub.client.socket()
            if not isinstance(sock, socket.socket):
                raise BenchError(f"{pub.topic}: no plain TCP socket")
            by_socket[sock] = pub
        emit("ready")
        t0 = read_go(GO_TIMEOUT_S)
        sleep_until(t0)
        end = t0 + spec.warmup_s + spec.seconds + 0.5
        fixed = pubs[0].prefix + b"1" + pubs[0].suffix
        sent_total = 0
        next_misc = time.monotonic() + 1.0
        while time.time() < end:
            progressed = False
            for pub in pubs:
                while pub.sent - pub.flags.acked < RAW_WINDOW:
                    if spec.direct:
                        if pub.sent - pub.flags.acked_upto >= spec.in_flight:
                            break
                        payload = pub.prefix + str(pub.sent + 1).encode() + pub.suffix
                    else:
                        if counter is not None and sent_total - counter.get() * spec.share >= (
                            spec.in_flight
                        ):
                            break
                        payload = fixed
                    info = pub.client.publish(pub.topic, payload, qos=1)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        pub.refused += 1
                        break
                    pub.sent += 1
                    sent_total += 1
                    progressed = True
            writers = [sock for sock, pub in by_socket.items() if pub.client.want_write()]
            readable, writable, _ = select.select(
                list(by_socket), writers, [], 0.0 if progressed else 0.001
            )
            for sock in readable:
                by_socket[sock].client.loop_read()
            for sock in writable:
                by_socket[sock].client.loop_write()
            if time.monotonic() > next_misc:
                next_misc += 1.0
                for pub in pubs:
                    pub.client.loop_misc()
        emit(
            "result",
            sent=sent_total,
            acked=sum(p.flags.acked for p in pubs),
            failed=sum(p.flags.failed for p in pubs),
            refused=sum(p.refused for p in pubs),
            payload_bytes=len(fixed),
        )
    finally:
        for pub in pubs:
            with contextlib.suppress(Exception):
                pub.client.disconnect()
                pub.client.loop(timeout=0.1)
        if counter is not None:
            counter.close()


def worker_main(kind: str, spec_json: str) -> int:
    """Entry point of a ``--worker`` process."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    data = json.loads(spec_json)
    # Whatever happens to the controller, no worker outlives its phase by long:
    # SIGALRM's default action ends the process.
    signal.alarm(int(WORKER_LIFETIME_S + 2 * float(data.get("seconds", 0.0))))
    if kind == "devices":
        asyncio.run(run_device_worker(DeviceWorkerSpec(**data)))
    elif kind == "raw-sub":
        run_raw_subscriber(RawSpec(**data))
    elif kind == "raw-pub":
        run_raw_publishers(RawSpec(**data))
    elif kind == "ack-tap":
        run_ack_tap(RawSpec(**data))
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    return 0


# --------------------------------------------------------------------------- controller


class WorkerProc:
    """A worker subprocess speaking JSON lines on stdin/stdout; stderr goes to a log."""

    def __init__(self, kind: str, spec: DeviceWorkerSpec | RawSpec, log: Path) -> None:
        self.kind = kind
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--worker", kind, "--spec", json.dumps(asdict(spec))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line with ``event``; BenchError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(
                    f"{self.kind} worker: no {event!r} within {timeout:.0f} s; "
                    f"log:\n{log_tail(self.log)}"
                ) from None
            if line is None:
                self.proc.wait(5)
                raise BenchError(
                    f"{self.kind} worker exited ({self.proc.returncode}) before {event!r}; "
                    f"log:\n{log_tail(self.log)}"
                )
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == event:
                    return message

    def go(self, t0: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"t0": t0}) + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# ---- CPU accounting from /proc

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(path: Path) -> float:
    """utime + stime of a process or thread, in seconds (0 if it is gone)."""
    user, system = _proc_user_sys(path)
    return user + system


def _proc_user_sys(path: Path) -> tuple[float, float]:
    """(utime, stime) of a process or thread, in seconds ((0, 0) if it is gone)."""
    try:
        text = path.read_text()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _runqueue_wait(task: Path) -> float:
    """Seconds a thread was ready to run but waited for a CPU (0 if it is gone)."""
    try:
        return int((task / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, in seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[str, float]
    kernel: dict[str, float]  # the system-time part of procs
    gateway_threads: dict[int, float]
    machine: tuple[float, float]
    gateway_waits: float = 0.0  # run-queue wait of all gateway threads, seconds


class CpuWatch:
    """CPU seconds of named processes (and the gateway's threads) between two snapshots."""

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {}
        self.gateway_pid: int | None = None

    def snapshot(self) -> CpuSnapshot:
        times = {
            name: [_proc_user_sys(Path(f"/proc/{pid}/stat")) for pid in pids]
            for name, pids in self.pids.items()
        }
        procs = {name: sum(u + k for u, k in values) for name, values in times.items()}
        kernel = {name: sum(k for _, k in values) for name, values in times.items()}
        threads: dict[int, float] = {}
        waits = 0.0
        if self.gateway_pid is not None:
            task_dir = Path(f"/proc/{self.gateway_pid}/task")
            with contextlib.suppress(OSError):
                for tid in task_dir.iterdir():
                    threads[int(tid.name)] = _proc_cpu(tid / "stat")
                    waits += _runqueue_wait(tid)
        return CpuSnapshot(time.time(), procs, kernel, threads, _machine_cpu(), waits)

    def usage(self, a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
        """Percent of one core per process; the machine's busy percent of all cores."""
        wall = max(1e-6, b.at - a.at)
        out = {name: 100.0 * (b.procs[name] - a.procs.get(name, 0.0)) / wall for name in b.procs}
        for name in ("gateway", "loadgen", "mosquitto"):
            if name in b.kernel:
                out[f"{name}_kernel"] = 100.0 * (b.kernel[name] - a.kernel.get(name, 0.0)) / wall
        if self.gateway_pid is not None:
            deltas = {
                tid: b.gateway_threads[tid] - a.gateway_threads.get(tid, 0.0)
                for tid in b.gateway_threads
            }
            out["gateway_main_thread"] = 100.0 * deltas.get(self.gateway_pid, 0.0) / wall
            others = sorted((v for t, v in deltas.items() if t != self.gateway_pid), reverse=True)
            for i, value in enumerate(others[:2]):
                out[f"gateway_thread_{i + 2}"] = 100.0 * value / wall
            # Runnable gateway threads waiting for a core (a busy machine), not for I/O
            # or locks: in % of one core, summed over threads, like the CPU figures.
            out["gateway_waiting_for_cpu"] = 100.0 * (b.gateway_waits - a.gateway_waits) / wall
        busy = b.machine[0] - a.machine[0]
        total = max(1e-6, b.machine[1] - a.machine[1])
        ours = sum(b.procs[name] - a.procs.get(name, 0.0) for name in b.procs)
        out["machine_busy_of_all_cores"] = 100.0 * busy / total
        # Everything else on this shared machine (other people's jobs), same unit.
        out["others_of_all_cores"] = max(0.0, 100.0 * (busy - ours) / total)
        return {k: round(v, 1) for k, v in out.items()}


# ---- py-spy


class SpyRecorder:
    """``py-spy record`` of the gateway for each phase (raw collapsed stacks)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.exe = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            beside = Path(sys.executable).with_name("py-spy")
            self.exe = str(beside) if beside.exists() else shutil.which("py-spy")
            if self.exe is None:
                raise BenchError("--py-spy needs py-spy (pip install py-spy into the venv)")
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Path | None = None
        self.summaries: dict[str, list[str]] = {}

    def start(self, pid: int, phase: str, duration: float) -> None:
        if self.exe is None or self.directory is None:
            return
        self._out = self.directory / f"gateway-{phase}.txt"
        self._phase = phase
        self._proc = subprocess.Popen(
            [
                self.exe, "record", "--pid", str(pid), "--threads", "--gil", "--nonblocking",
                "--rate", str(SPY_RATE), "--format", "raw",
                "--duration", str(max(1, math.ceil(duration))), "--output", str(self._out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._started = time.time()

    def stop(self) -> None:
        proc, out = self._proc, self._out
        if proc is None or out is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        if out.exists():
            self.summaries[self._phase] = summarise_spy(out, time.time() - self._started)


# Where the gateway's Python time goes: the first matching rule (most specific first) wins.
_SPY_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("stays rebuild (StayKeeper)", ("rebuild_stays", "StayKeeper")),
    ("ack encode + paho publish", ("Gateway._send_ack",)),
    ("JSON decode (json.loads)", ("loads (json/",)),
    ("pydantic validation", ("model_validate", "BaseModel.__init__", "model_post_init")),
    ("row building (_checkin_row)", ("_checkin_row",)),
    ("stream marks", ("StreamMark.advanced",)),
    ("topic parsing", ("parse_topic",)),
    ("aiosqlite round trips, loop side (BEGIN, executemany, COMMIT)", ("SQLiteStore.",)),
    ("ingest (other)", ("Ingestor.ingest", "Ingestor._accept")),
    ("paho -> handler hand-off (submit)", ("Ingestor.submit", "BusClient._handle")),
    ("call_soon_threadsafe (aiosqlite thread)", ("call_soon_threadsafe",)),
    ("paho: read + parse packets", ("_packet_read", "_handle_publish", "_packet_handle")),
    ("paho: write packets / PUBACKs", ("_packet_write", "_send_puback", "_packet_queue")),
    ("paho: socket callbacks", ("BusClient._readable", "BusClient._writable")),
    ("aiosqlite worker (Python side)", ("_connection_worker_thread",)),
    ("asyncio loop machinery", ("_run_once", "BaseEventLoop")),
]


def summarise_spy(path: Path, seconds: float) -> list[str]:
    """GIL samples (``py-spy --gil``): share of wall time per thread, and by rule overall.

    Only the thread holding the GIL is sampled, so this is where the gateway's
    Python time goes; SQLite's own C work runs without the GIL and shows in the
    /proc per-thread CPU instead.
    """
    per_thread: Counter[str] = Counter()
    per_rule: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        if thread == "MainThread":
            role = "event loop (main thread)"
        elif any("aiosqlite" in f for f in frames):
            role = "aiosqlite thread"
        else:
            role = thread
        per_thread[role] += count
        rule = next(
            (name for name, keys in _SPY_RULES if any(k in f for f in frames for k in keys)),
            "other: " + (frames[-1].split(" (")[0] if len(frames) > 1 else "?"),
        )
        per_rule[rule] += count
    total = sum(per_thread.values())
    expected = max(1.0, seconds * SPY_RATE)
    lines = [f"  GIL held {100.0 * total / expected:.0f}% of the time; by thread:"]
    lines += [
        f"      {100.0 * n / expected:5.1f}% of wall time  {role}"
        for role, n in per_thread.most_common()
    ]
    lines.append("  GIL time by activity:")
    lines += [
        f"      {100.0 * n / max(1, total):5.1f}%  {rule}" for rule, n in per_rule.most_common(14)
    ]
    return lines


# ---- the run


@dataclass
class Settings:
    devices: int
    workers: int
    seconds: float
    warmup: float
    rate: float
    batch: int
    backlog: int
    window: int
    raw_seconds: float
    raw_publishers: int
    direct_seconds: float
    drain_s: float


@dataclass
class Results:
    raw: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    paced: dict[str, Any] = field(default_factory=dict)
    backlog: dict[str, Any] = field(default_factory=dict)
    direct: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, int] = field(default_factory=dict)
    gateway_counts: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


def split(items: Sequence[str], parts: int) -> list[list[str]]:
    """``items`` dealt into ``parts`` non-empty lists."""
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


class Bench:
    """Owns the run directory, Mosquitto, the gateway and the workers of one run."""

    def __init__(self, settings: Settings, run_dir: Path, outbox_dir: Path) -> None:
        self.s = settings
        self.run_dir = run_dir
        self.outbox_dir = outbox_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.site: Site | None = None
        self.broker: Mosquitto | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_log = self.logs / "gateway.log"
        self.workers: list[WorkerProc] = []
        self.cpu = CpuWatch()
        self.spy = SpyRecorder(None)
        self.results = Results()
        self.device_ids = [f"bench-{i + 1:03d}" for i in range(settings.devices)]
        self._ready: list[dict[str, Any]] = []

    def _raw_spec(self, users: list[str], seconds: float, **kw: Any) -> RawSpec:
        assert self.site is not None
        return RawSpec(
            site_dir=str(self.site.directory),
            host=self.site.host,
            port=self.site.port,
            users=users,
            warmup_s=self.s.warmup,
            seconds=seconds,
            **kw,
        )

    # -- infrastructure

    def start_site_and_broker(self) -> None:
        for attempt in range(3):
            site_dir = self.run_dir / f"site-{attempt}"
            self.site = create_site(
                site_dir,
                site_id="bench-site",
                port=free_port(),
                devices=[DeviceSpec(device_id=d, gate="bench") for d in self.device_ids],
            )
            self.broker = Mosquitto(self.site.broker)
            try:
                self.broker.start()
            except BrokerStartError as exc:
                # free_port is racy: another process may take the port first.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                continue
            assert self.broker.pid is not None
            self.cpu.pids["mosquitto"] = [self.broker.pid]
            return

    def start_gateway(self, cprofile: Path | None) -> None:
        assert self.site is not None
        command = [sys.executable]
        if cprofile is not None:
            command += ["-m", "cProfile", "-o", str(cprofile)]
        command += ["-m", "gateway", "run", "--config", str(self.site.gateway_config)]
        with self.gateway_log.open("ab") as log:
            self.gateway = subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT)
        self.cpu.pids["gateway"] = [self.gateway.pid]
        self.cpu.gateway_pid = self.gateway.pid
        deadline = time.monotonic() + 60.0
        while self._gateway_log().count("granted") < 2:
            if self.gateway.poll() is not None:
                raise BenchError(f"gateway exited:\n{log_tail(self.gateway_log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"gateway not subscribed in 60 s:\n{log_tail(self.gateway_log)}")
            time.sleep(0.05)

    def stop_gateway(self) -> None:
        proc = self.gateway
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.gateway = None
        for line in self._gateway_log().splitlines():
            if "gateway stopped:" in line:
                with contextlib.suppress(ValueError, SyntaxError):
                    counts = ast.literal_eval(line.split("gateway stopped:", 1)[1].strip())
                    self.results.gateway_counts = {str(k): int(v) for k, v in counts.items()}

    def _gateway_log(self) -> str:
        return self.gateway_log.read_text(errors="replace") if self.gateway_log.exists() else ""

    def close(self) -> None:
        self.spy.stop()
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        with contextlib.suppress(Exception):
            self.stop_gateway()
        if self.broker is not None:
            self.broker.stop()

    # -- phases

    def _launch(
        self, kind: str, specs: Sequence[DeviceWorkerSpec | RawSpec], name: str
    ) -> list[WorkerProc]:
        started = [
            WorkerProc(kind, spec, self.logs / f"{name}-{i}.log") for i, spec in enumerate(specs)
        ]
        self.workers.extend(started)
        return started

    def _finish(self, workers: list[WorkerProc]) -> None:
        for worker in workers:
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                worker.stop()
            self.workers.remove(worker)
            worker.stop()

    def phase_raw(self) -> None:
        s = self.s
        counter = self.outbox_dir / "raw-received.count"
        Counter64.create(counter)
        sub = self._launch(
            "raw-sub",
            [self._raw_spec([GATEWAY_USER], s.raw_seconds, counter_file=str(counter))],
            "raw-sub",
        )
        pub_users = self.device_ids[: max(1, s.raw_publishers)]
        shares = split(pub_users, s.workers)
        pubs = self._launch(
            "raw-pub",
            [
                self._raw_spec(
                    users,
                    s.raw_seconds,
                    counter_file=str(counter),
                    in_flight=RAW_IN_FLIGHT // len(shares),
                    share=len(users) / len(pub_users),
                )
                for users in shares
            ],
            "raw-pub",
        )
        results = self._run_synchronised(
            "raw", sub + pubs, window=(s.warmup, s.warmup + s.raw_seconds), spy=False
        )
        sub_result, pub_results = results[0], results[1:]
        window = float(sub_result["window_s"])
        self.results.raw = {
            "raw_ceiling_per_s": sub_result["received_in_window"] / window,
            "published": sum(int(r["sent"]) for r in pub_results),
            "publish_failed": sum(int(r["failed"]) + int(r["refused"]) for r in pub_results),
            "payload_bytes": pub_results[0]["payload_bytes"],
            "publishers": len(pub_users),
        }

    def _device_specs(self, phase: Phase, **kw: Any) -> list[DeviceWorkerSpec]:
        assert self.site is not None
        shares = split(self.device_ids, self.s.workers)
        specs = []
        for i, share in enumerate(shares):
            values: dict[str, Any] = {
                "warmup_s": self.s.warmup,
                "seconds": self.s.seconds,
                "drain_s": self.s.drain_s,
                "seed": secrets.randbits(32) + i,
                **kw,
            }
            spec = DeviceWorkerSpec(
                phase=phase,
                site_dir=str(self.site.directory),
                host=self.site.host,
                port=self.site.port,
                devices=share,
                outbox_dir=str(self.outbox_dir),
                **values,
            )
            if phase == "paced":
                spec.rate = self.s.rate * len(share) / len(self.device_ids)
            specs.append(spec)
        return specs

    def phase_steady(self) -> None:
        s = self.s
        workers = self._launch(
            "devices", self._device_specs("steady", max_batch=1, window=s.window), "steady"
        )
        results = self._run_synchronised("steady", workers, window=(s.warmup, s.warmup + s.seconds))
        latencies = [x for r in results for x in r["latencies_ms"]]
        acked = sum(int(r["acked_in_window"]) for r in results)
        scans = sum(int(r["scans"]) for r in results)
        messages = sum(int(r["messages"]) for r in results)
        self.results.steady = {
            "checkins_per_s": acked / s.seconds,
            "scans": scans,
            "messages": messages,
            "records_per_message": scans / max(1, messages),
            "p50_ms_saturated": percentile(latencies, 50),
            "p99_ms_saturated": percentile(latencies, 99),
            "drained": all(r["drained"] for r in results),
            "resends": sum(int(r.get("resends", 0)) for r in results),
        }

    def phase_paced(self) -> None:
        s = self.s
        bound = s.warmup + s.seconds + s.drain_s + READY_TIMEOUT_S + 60.0
        (tap,) = self._launch("ack-tap", [self._raw_spec([GATEWAY_USER], bound)], "ack-tap")
        tap.expect("ready", READY_TIMEOUT_S)
        workers = self._launch("devices", self._device_specs("paced", max_batch=s.batch), "paced")
        results = self._run_synchronised("paced", workers, window=(s.warmup, s.warmup + s.seconds))
        tap.go(0.0)  # stop
        acks: dict[str, list[tuple[float, int]]] = tap.expect("result", 60.0)["acks"]
        self._finish([tap])
        latencies = [x for r in results for x in r["latencies_ms"]]
        scans = sum(int(r["scans"]) for r in results)
        messages = sum(int(r["messages"]) for r in results)
        segments = self._segments([t for r in results for t in r["timelines"]], acks)
        self.results.paced = {
            "offered_per_s": scans / (s.warmup + s.seconds),
            "scans": scans,
            "messages": messages,
            "records_per_message": scans / max(1, messages),
            # scan -> the broker forwards the ack the gateway publishes right after its
            # COMMIT (ack tap): scan-to-commit plus one broker hop, the latency targeted.
            "p50_ms": percentile(segments["scan_to_commit"], 50),
            "p99_ms": percentile(segments["scan_to_commit"], 99),
            "scan_to_ack_p50_ms": percentile(latencies, 50),
            "scan_to_ack_p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=math.nan),
            "latency_samples": len(latencies),
            "scan_to_gateway_p50_ms": percentile(segments["scan_to_gateway"], 50),
            "scan_to_gateway_p99_ms": percentile(segments["scan_to_gateway"], 99),
            "segments_ms": {
                name: {"p50": percentile(values, 50), "p99": percentile(values, 99)}
                for name, values in segments.items()
            },
            "pacing_lag_p99_ms": max(float(r["pacing_lag_p99_ms"]) for r in results),
            "drained": all(r["drained"] for r in results),
            "resends": sum(int(r.get("resends", 0)) for r in results),
        }

    def phase_backlog(self) -> None:
        s = self.s
        workers = self._launch(
            "devices",
            self._device_specs("backlog", max_batch=s.batch, backlog=s.backlog, warmup_s=0.0),
            "backlog",
        )
        results, t0 = self._run_synchronised_t0("backlog", workers, window=None)
        done = [t for r in results for t in r["done_at"]]
        total = sum(int(r["acked"]) for r in results)
        messages = sum(int(r["messages"]) for r in results)
        finished = all(t is not None for t in done) and all(r["drained"] for r in results)
        elapsed = (max(t for t in done if t is not None) - t0) if any(done) else math.nan
        self.results.backlog = {
            "batched_checkins_per_s": total / elapsed if finished else 0.0,
            "backlog_checkins": s.backlog * len(self.device_ids),
            "acked": total,
            "seconds": elapsed,
            "messages": messages,
            "records_per_message": total / max(1, messages),
            "fill_s": max(float(r.get("fill_s", 0.0)) for r in self._ready),
            "drained": finished,
            "resends": sum(int(r.get("resends", 0)) for r in results),
        }

    def phase_direct(self) -> None:
        s = self.s
        pub_users = self.device_ids[: max(1, s.raw_publishers)]
        pubs = self._launch(
            "raw-pub",
            [
                self._raw_spec(users, s.direct_seconds, direct=True, in_flight=DIRECT_IN_FLIGHT)
                for users in split(pub_users, s.workers)
            ],
            "direct",
        )
        marks: list[tuple[float, int]] = []
        results = self._run_synchronised(
            "direct",
            pubs,
            window=(s.warmup, s.warmup + s.direct_seconds),
            at_window_edges=lambda: marks.append((time.time(), self._max_checkin_id())),
        )
        (a_t, a_id), (b_t, b_id) = marks
        self.results.direct = {
            "gateway_direct_checkins_per_s": (b_id - a_id) / (b_t - a_t),
            "published": sum(int(r["sent"]) for r in results),
        }

    def _run_synchronised(
        self,
        name: str,
        workers: list[WorkerProc],
        *,
        window: tuple[float, float] | None,
        spy: bool = True,
        at_window_edges: Callable[[], None] | None = None,
    ) -> list[dict[str, Any]]:
        results, _ = self._run_synchronised_t0(
            name, workers, window=window, spy=spy, at_window_edges=at_window_edges
        )
        return results

    def _run_synchronised_t0(
        self,
        name: str,
        workers: list[WorkerProc],
        *,
        window: tuple[float, float] | None,
        spy: bool = True,
        at_window_edges: Callable[[], None] | None = None,
    ) -> tuple[list[dict[str, Any]], float]:
        """Wait for every worker's ready, start all at one t0, sample CPU, collect results."""
        launched = time.time()
        self._ready = [w.expect("ready", READY_TIMEOUT_S) for w in workers]
        ready_at = time.time()
        self.cpu.pids["loadgen"] = [w.pid for w in workers if w.kind != "raw-sub"]
        self.cpu.pids["raw_sub"] = [w.pid for w in workers if w.kind == "raw-sub"]
        t0 = time.time() + 0.5
        for worker in workers:
            worker.go(t0)
        w0, w1 = (t0 + window[0], t0 + window[1]) if window else (t0, math.nan)
        sleep_until(w0)
        before = self.cpu.snapshot()
        if at_window_edges is not None:
            at_window_edges()
        if spy and self.gateway is not None:
            self.spy.start(self.gateway.pid, name, (w1 - w0) if window else 600.0)
        after: CpuSnapshot | None = None
        if window:
            sleep_until(w1)
            after = self.cpu.snapshot()
            if at_window_edges is not None:
                at_window_edges()
            self.spy.stop()
        budget = self.s.drain_s + (window[1] if window else 0.0) + 120.0
        results = [w.expect("result", budget) for w in workers]
        results_at = time.time()
        if after is None:
            after = self.cpu.snapshot()
            self.spy.stop()
        self.results.cpu[name] = self.cpu.usage(before, after)
        self._finish(workers)
        timing = {
            "ready_s": round(ready_at - launched, 2),
            "results_after_t0_s": round(results_at - t0, 2),
            "exit_s": round(time.time() - results_at, 2),
        }
        brief = [
            {k: v for k, v in r.items() if k not in ("latencies_ms", "timelines")} for r in results
        ]
        with (self.logs / "phases.jsonl").open("a") as out:
            out.write(
                json.dumps({"phase": name, "t0": t0, "timing": timing, "workers": brief}) + "\n"
            )
        return results, t0

    # -- database reads

    def _db(self) -> sqlite3.Connection:
        assert self.site is not None
        return sqlite3.connect(f"file:{self.site.database}?mode=ro", uri=True, timeout=10)

    def _max_checkin_id(self) -> int:
        db = self._db()
        try:
            (value,) = db.execute("SELECT coalesce(max(id), 0) FROM checkins").fetchone()
            return int(value)
        finally:
            db.close()

    def _segments(
        self, timelines: list[dict[str, Any]], acks: dict[str, list[tuple[float, int]]]
    ) -> dict[str, list[float]]:
        """Split scan-to-ack with ``received_at`` (database) and the ack tap's times.

        device: scan -> the uplink hands the message to paho (outbox append, wake,
        read back, encode); to_gateway: -> the gateway's event loop takes it
        (device paho, broker, gateway paho, hand-off); gateway: -> the
        broker forwards the ack that covers it (ingest queue, validation, commit,
        ack publish); back: -> the ack is applied at the device (device paho on
        its event loop, outbox delete). received_at is truncated to the millisecond.
        """
        out: dict[str, list[float]] = {
            "scan_to_gateway": [],
            "scan_to_commit": [],
            "device": [],
            "to_gateway": [],
            "gateway": [],
            "back": [],
        }
        db = self._db()
        csv = (self.logs / "paced-timeline.csv").open("w")
        csv.write("device,seq,scan,publish,received,ack_published,ack_applied\n")
        try:
            for t in timelines:
                if not t["seq"]:
                    continue
                received = {
                    int(seq): datetime.fromisoformat(at).timestamp()
                    for seq, at in db.execute(
                        "SELECT seq, received_at FROM checkins "
                        "WHERE device_id=? AND stream=? AND seq BETWEEN ? AND ?",
                        (t["device"], t["stream"], min(t["seq"]), max(t["seq"])),
                    )
                }
                # acks only grow, so the first (upto, time) >= seq is the covering one
                tapped = sorted(acks.get(str(t["stream"]), []), key=lambda x: (x[1], x[0]))
                uptos = [upto for _, upto in tapped]
                for seq, scan, pub, ack in zip(
                    t["seq"], t["scan"], t["publish"], t["ack"], strict=True
                ):
                    got = received.get(int(seq))
                    if got is None:
                        continue
                    out["scan_to_gateway"].append((got - scan) * 1000.0)
                    i = bisect.bisect_left(uptos, int(seq))
                    acked_at = tapped[i][0] if i < len(tapped) else math.nan
                    if i < len(tapped):
                        out["scan_to_commit"].append((acked_at - scan) * 1000.0)
                        out["gateway"].append((acked_at - got) * 1000.0)
                        out["back"].append((ack - acked_at) * 1000.0)
                    csv.write(
                        f"{t['device']},{seq},{scan:.6f},{pub:.6f},{got:.3f},"
                        f"{acked_at:.6f},{ack:.6f}\n"
                    )
                    if pub > 0:
                        out["device"].append((pub - scan) * 1000.0)
                        out["to_gateway"].append((got - pub) * 1000.0)
        finally:
            db.close()
            csv.close()
        return out

    def verify(self) -> None:
        """Every scanned (device, stream, seq) stored exactly once."""
        db = self._db()
        lost = duplicated = undelivered = extra = scanned = 0
        try:
            for device_id in self.device_ids:
                outbox = Outbox(self.outbox_dir / f"{device_id}.db")
                try:
                    stream, last = outbox.stream, outbox.last_seq()
                    pending = {r.seq for r in outbox.pending(limit=10**9)}
                finally:
                    outbox.close()
                scanned += last
                stored = dict(
                    db.execute(
                        "SELECT seq, count(*) FROM checkins WHERE device_id=? AND stream=? "
                        "GROUP BY seq",
                        (device_id, stream),
                    ).fetchall()
                )
                missing = {s for s in range(1, last + 1) if s not in stored}
                lost += len(missing - pending)
                undelivered += len(missing & pending)
                duplicated += sum(int(c) - 1 for c in stored.values() if int(c) > 1)
                extra += sum(1 for s in stored if not 1 <= int(s) <= last)
            (refused,) = db.execute("SELECT count(*) FROM rejected_messages").fetchone()
        finally:
            db.close()
        self.results.verify = {
            "scanned": scanned,
            "lost": lost,
            "duplicated": duplicated,
            "undelivered": undelivered,
            "unexpected_rows": extra,
            "rejected_messages": int(refused),
        }


def print_cprofile(path: Path) -> None:
    if not path.exists():
        print(f"(no cProfile output at {path})")
        return
    print(f"\n== gateway cProfile ({path}), top 25 by own time")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(25)


def report(
    bench: Bench, elapsed: float, stream: TextIO = sys.stdout
) -> tuple[dict[str, Any], bool]:
    """Print the table and return the JSON summary and whether every target was met."""
    r = bench.results
    s = bench.s
    raw = float(r.raw.get("raw_ceiling_per_s", math.nan))
    per_s = float(r.steady.get("checkins_per_s", math.nan))
    batched = float(r.backlog.get("batched_checkins_per_s", math.nan))
    p50 = float(r.paced.get("p50_ms", math.nan))
    p99 = float(r.paced.get("p99_ms", math.nan))
    ratio = per_s / raw if raw > 0 else math.nan
    lost = int(r.verify.get("lost", -1))
    duplicated = int(r.verify.get("duplicated", -1))
    met = {
        "ratio": ratio >= TARGET_RATIO,
        "batched": batched >= TARGET_BATCHED_PER_S,
        "p99": p99 < TARGET_P99_MS,
        "exactly_once": lost == 0 and duplicated == 0,
    }
    rates = {
        "raw": raw,
        "steady": per_s,
        "paced": float(r.paced.get("offered_per_s", math.nan)),
        "backlog": batched,
        "direct": float(r.direct.get("gateway_direct_checkins_per_s", math.nan)),
    }
    per_item: dict[str, dict[str, int]] = {}
    for phase, usage in r.cpu.items():
        rate = rates.get(phase, math.nan)
        if rate > 0:
            per_item[phase] = {
                name: round(pct / 100.0 * 1e6 / rate)
                for name, pct in usage.items()
                if pct > 0 and "of_all_cores" not in name and "waiting" not in name
            }

    def us(phase: str, name: str) -> float:
        return float(per_item.get(phase, {}).get(name, math.nan))

    sub_us = us("raw", "raw_sub")
    gw_us = us("steady", "gateway")
    gw_batched_us = us("backlog", "gateway")
    # The same comparison as ``ratio`` in CPU per message, which the noise of this
    # shared machine moves far less than throughput: bare subscriber / gateway.
    cpu_ratio = sub_us / gw_us if gw_us > 0 else math.nan

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        print(f"{name:<46} {value:>14}  {target:<22} {verdict}", file=stream)

    print(
        f"\nqrgate ingest bench: {s.devices} devices in {s.workers} load generator(s), "
        f"{elapsed:.0f} s total",
        file=stream,
    )
    print("-" * 92, file=stream)
    row("raw QoS 1 ceiling (bare paho sub), msg/s", f"{raw:,.0f}")
    row("  payload bytes / publishers", f"{r.raw.get('payload_bytes')} / {r.raw.get('publishers')}")
    row(
        "(a) check-ins/s, 1 per message, end to end",
        f"{per_s:,.0f}",
        f">= {TARGET_RATIO:.0%} of ceiling",
        None,
    )
    row("    ratio to raw ceiling", f"{ratio:.2f}", f">= {TARGET_RATIO:.2f}", met["ratio"])
    row(
        "    scan-to-ack p50 / p99 at saturation, ms",
        f"{r.steady.get('p50_ms_saturated', math.nan):.0f} / "
        f"{r.steady.get('p99_ms_saturated', math.nan):.0f}",
    )
    row("    records per message", f"{r.steady.get('records_per_message', math.nan):.2f}")
    row(
        "    CPU us per check-in: gateway / devices",
        f"{gw_us:,.0f} / {us('steady', 'loadgen'):,.0f}",
    )
    row(
        "    raw subscriber CPU us per message",
        f"{sub_us:,.0f}",
    )
    row("    CPU ratio: raw sub / gateway per message", f"{cpu_ratio:.2f}")
    row(
        "(b) batched catch-up check-ins/s",
        f"{batched:,.0f}",
        f">= {TARGET_BATCHED_PER_S:,.0f}",
        met["batched"],
    )
    row(
        "    backlog / seconds / records per message",
        f"{r.backlog.get('backlog_checkins')} / {r.backlog.get('seconds', math.nan):.2f} / "
        f"{r.backlog.get('records_per_message', math.nan):.0f}",
    )
    row(
        "    uplink resends after ack_timeout_s (a/c/b)",
        f"{r.steady.get('resends', '-')}/{r.paced.get('resends', '-')}/"
        f"{r.backlog.get('resends', '-')}",
    )
    row(
        "    gateway CPU us per check-in (1 core: /s)",
        f"{gw_batched_us:,.0f} ({1e6 / gw_batched_us if gw_batched_us > 0 else math.nan:,.0f})",
    )
    row(
        f"(c) offered {s.rate:,.0f}/s: achieved scans/s",
        f"{r.paced.get('offered_per_s', math.nan):,.0f}",
    )
    row("    scan-to-commit p50, ms (ack tap)", f"{p50:.1f}")
    row("    scan-to-commit p99, ms (ack tap)", f"{p99:.1f}", f"< {TARGET_P99_MS:.0f}", met["p99"])
    row(
        "    scan-to-ack at the device p50 / p99, ms",
        f"{r.paced.get('scan_to_ack_p50_ms', math.nan):.0f} / "
        f"{r.paced.get('scan_to_ack_p99_ms', math.nan):.0f}",
    )
    row(
        "    scan-to-gateway p50 / p99 (lower bound), ms",
        f"{r.paced.get('scan_to_gateway_p50_ms', math.nan):.0f} / "
        f"{r.paced.get('scan_to_gateway_p99_ms', math.nan):.0f}",
    )
    for name, seg in r.paced.get("segments_ms", {}).items():
        if name not in ("scan_to_gateway", "scan_to_commit"):
            row(f"      segment {name} p50 / p99, ms", f"{seg['p50']:.0f} / {seg['p99']:.0f}")
    row("    records per message", f"{r.paced.get('records_per_message', math.nan):.2f}")
    if r.direct:
        row(
            "gateway fed by bare publishers, commits/s",
            f"{r.direct.get('gateway_direct_checkins_per_s', math.nan):,.0f}",
        )
    v = r.verify
    row("scanned check-ins (all phases)", f"{v.get('scanned', 0):,}")
    row("lost / duplicated", f"{lost} / {duplicated}", "0 / 0", met["exactly_once"])
    row(
        "undelivered / unexpected rows / refused msgs",
        f"{v.get('undelivered')} / {v.get('unexpected_rows')} / {v.get('rejected_messages')}",
    )
    if r.gateway_counts:
        row("gateway counters", json.dumps(r.gateway_counts))
    print("-" * 92, file=stream)
    print("CPU, % of one core (machine: % of all cores):", file=stream)
    for phase, usage in r.cpu.items():
        print(f"  {phase:<8} {json.dumps(usage)}", file=stream)
    print("CPU microseconds per check-in (raw: per message):", file=stream)
    for phase, costs in per_item.items():
        print(f"  {phase:<8} {json.dumps(costs)}", file=stream)
    for phase, lines in bench.spy.summaries.items():
        print(f"py-spy, gateway, phase {phase}:", file=stream)
        for line in lines:
            print(line, file=stream)

    def num(x: float, digits: int = 1) -> float | None:
        return None if math.isnan(x) else round(x, digits)

    summary: dict[str, Any] = {
        "checkins_per_s": num(per_s),
        "batched_checkins_per_s": num(batched),
        "raw_ceiling_per_s": num(raw),
        "ratio": num(ratio, 3),
        "p50_ms": num(p50, 2),
        "p99_ms": num(p99, 2),
        "lost": lost,
        "duplicated": duplicated,
        "undelivered": v.get("undelivered"),
        "gateway_duplicates": r.gateway_counts.get("duplicates"),
        "resends": {
            "steady": r.steady.get("resends"),
            "paced": r.paced.get("resends"),
            "backlog": r.backlog.get("resends"),
        },
        "scanned": v.get("scanned"),
        "scan_to_ack_p50_ms": num(float(r.paced.get("scan_to_ack_p50_ms", math.nan)), 2),
        "scan_to_ack_p99_ms": num(float(r.paced.get("scan_to_ack_p99_ms", math.nan)), 2),
        "scan_to_gateway_p50_ms": num(float(r.paced.get("scan_to_gateway_p50_ms", math.nan)), 2),
        "scan_to_gateway_p99_ms": num(float(r.paced.get("scan_to_gateway_p99_ms", math.nan)), 2),
        "offered_per_s": num(float(r.paced.get("offered_per_s", math.nan))),
        "latency_segments_ms": r.paced.get("segments_ms"),
        "gateway_direct_checkins_per_s": num(
            float(r.direct.get("gateway_direct_checkins_per_s", math.nan))
        ),
        "devices": s.devices,
        "workers": s.workers,
        "targets_met": met,
        "cpu": r.cpu,
        "cpu_us_per_checkin": per_item,
        "gateway_us_per_checkin": num(gw_us),
        "gateway_us_per_checkin_batched": num(gw_batched_us),
        "raw_sub_us_per_msg": num(sub_us),
        "cpu_ratio": num(cpu_ratio, 3),
        "code": code_version(),
        "elapsed_s": round(elapsed, 1),
    }
    return summary, all(met.values())


def code_version() -> str:
    """``git describe --always --dirty`` of the measured tree (read-only), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    p.add_argument("--workers", type=int, default=2, choices=[1, 2], help="load generators")
    p.add_argument("--seconds", type=float, default=20.0, help="window of (a) and (c)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    p.add_argument("--rate", type=float, default=2000.0, help="(c) offered scans per second")
    p.add_argument("--batch", type=int, default=100, help="max_batch for (b) and (c)")
    p.add_argument("--backlog", type=int, default=2000, help="(b) check-ins per device")
    p.add_argument("--window", type=int, default=8, help="(a) unacked check-ins per device")
    p.add_argument("--raw-seconds", type=float, default=10.0, help="window of the raw ceiling")
    p.add_argument("--raw-publishers", type=int, default=8, help="bare publishers (raw, direct)")
    p.add_argument("--direct-seconds", type=float, default=8.0, help="0 skips the direct phase")
    p.add_argument("--drain", type=float, default=60.0, help="bound on waiting for acks")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="about 30 s: fewer devices, short windows")
    p.add_argument("--keep", type=Path, help="keep logs, site and database in this directory")
    p.add_argument("--outbox-dir", type=Path, help="parent of the outbox files (default /dev/shm)")
    p.add_argument("--py-spy", type=Path, help="record the gateway with py-spy into this folder")
    p.add_argument("--cprofile", type=Path, help="run the gateway under cProfile, output here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.devices = min(args.devices, 20)
        args.seconds = min(args.seconds, 3.0)
        args.warmup = min(args.warmup, 1.0)
        args.backlog = min(args.backlog, 1000)
        args.raw_seconds = min(args.raw_seconds, 2.0)
        args.direct_seconds = min(args.direct_seconds, 2.0)
        args.drain = min(args.drain, 30.0)
    if args.devices < 1 or args.batch < 1 or args.window < 1 or args.rate <= 0:
        p.error("--devices, --batch, --window and --rate must be positive")
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def run_directories(keep: Path | None, outbox_parent: Path | None) -> Iterator[tuple[Path, Path]]:
    """The run directory (kept only with --keep) and the outbox directory."""
    shm = Path("/dev/shm")
    parent = outbox_parent or (shm if shm.is_dir() else None)
    with contextlib.ExitStack() as stack:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            run_dir = Path(tempfile.mkdtemp(prefix="ingest-", dir=keep))
        else:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qrgate-bench-")))
        outbox_dir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="qrgate-outbox-", dir=parent))
        )
        yield run_dir, outbox_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec)
    settings = Settings(
        devices=args.devices,
        workers=args.workers,
        seconds=args.seconds,
        warmup=args.warmup,
        rate=args.rate,
        batch=args.batch,
        backlog=args.backlog,
        window=args.window,
        raw_seconds=args.raw_seconds,
        raw_publishers=min(args.raw_publishers, args.devices),
        direct_seconds=args.direct_seconds,
        drain_s=args.drain,
    )
    started = time.monotonic()
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the finally blocks stop
    # the workers, the gateway and mosquitto.
    signal.signal(signal.SIGTERM, _terminate)
    with run_directories(args.keep, args.outbox_dir) as (run_dir, outbox_dir):
        bench = Bench(settings, run_dir, outbox_dir)
        bench.spy = SpyRecorder(args.py_spy)
        try:
            step("site and broker")
            bench.start_site_and_broker()
            if "raw" in args.phases:
                step("raw ceiling")
                bench.phase_raw()
            step("gateway")
            bench.start_gateway(args.cprofile)
            if "steady" in args.phases:
                step("(a) steady, one check-in per message")
                bench.phase_steady()
            if "paced" in args.phases:
                step("(c) paced latency")
                bench.phase_paced()
            if "backlog" in args.phases:
                step("(b) backlog catch-up")
                bench.phase_backlog()
            if "direct" in args.phases and settings.direct_seconds > 0:
                step("gateway fed by bare publishers")
                bench.phase_direct()
            bench.stop_gateway()
            bench.verify()
        finally:
            bench.close()
        if args.keep is not None:
            print(f"run kept in {run_dir} (outboxes were in {outbox_dir})")
    if args.cprofile is not None:
        print_cprofile(args.cprofile)
    summary, all_met = report(bench, time.monotonic() - started)
    print(json.dumps(summary))
    if summary["lost"] != 0 or summary["duplicated"] != 0:
        return 1
    return 1 if args.strict and not all_met else 0


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def step(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
