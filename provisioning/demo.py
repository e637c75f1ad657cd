"""Site in a box: a broker, the gateway and simulated gates, on this machine.

Generates a site with simulated gate devices (each with its own broker
credentials and gpiozero's mock pins), QR frames of synthetic people, then runs
Mosquitto, the gateway and the devices as separate processes. Each decision is
shown as it happens; at the end the devices are stopped (they deliver what
they hold first) and the outboxes are compared with the tracing database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from broker.launcher import Mosquitto, free_port
from broker.settings import FileSourceConfig
from device.decision import initials
from gateway import users
from gateway.config import GatewayConfig, load_config
from gateway.identity import pseudonym, read_subject_key
from provisioning.census import Census, take_census
from provisioning.people import NOT_CREDENTIALS, Person, synthetic_people, write_frames
from provisioning.site import DeviceSpec, Site, create_site

logger = logging.getLogger(__name__)

GATES = [
    ("gate-1", "Cổng chính", "in"),
    ("gate-2", "Cổng chính", "out"),
    ("gate-3", "Cổng B", "in"),
]


def gate_texts(people_texts: list[str], rng: random.Random) -> list[str | None]:
    """What one gate's camera sees: each person's card, some other codes, some empty frames."""
    texts: list[str | None] = [*people_texts, *NOT_CREDENTIALS]
    texts += [None] * (len(texts) // 4)
    rng.shuffle(texts)
    return texts


def build_site(workdir: Path, *, people: int, seed: int, interval_s: float) -> Site:
    """A fresh demo site under ``workdir`` with frames for every gate."""
    site_dir = workdir / "site"
    if site_dir.exists():
        shutil.rmtree(site_dir)
    rng = random.Random(seed)
    texts = [p.card_text() for p in synthetic_people(people, seed=seed, today=date.today())]
    specs = []
    for i, (device_id, gate, direction) in enumerate(GATES):
        frames = site_dir / "frames" / device_id
        write_frames(frames, gate_texts(texts, rng), seed=seed + i)
        source = FileSourceConfig(
            paths=[frames], loop=True, shuffle_seed=seed + i, interval_s=interval_s
        )
        specs.append(DeviceSpec(device_id, gate, direction, source, pin_factory="mock"))  # type: ignore[arg-type]
    return create_site(site_dir, site_id="demo-factory", port=free_port(), devices=specs)


async def _relay(name: str, stream: asyncio.StreamReader | None, show_all: bool) -> None:
    if stream is None:
        return
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        message = line.split(": ", 1)[-1]
        if (
            show_all
            or " ACCEPT " in line
            or " REJECT " in line
            or "WARNING" in line
            or "ERROR" in line
        ):
            print(f"{line[11:19]} [{name:<7}] {message}", flush=True)


class Children:
    """The demo's child processes and the tasks relaying their output."""

    def __init__(self) -> None:
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.relays: list[asyncio.Task[None]] = []

    async def spawn(self, name: str, module: str, config: Path) -> asyncio.subprocess.Process:
        proc = await _spawn(module, config)
        self.procs[name] = proc
        self.relays.append(asyncio.create_task(_relay(name, proc.stderr, show_all=False)))
        return proc

    async def first_exit(self) -> str:
        """Wait until any child exits; returns its name."""
        waits = {asyncio.create_task(p.wait()): n for n, p in self.procs.items()}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]


async def _spawn(module: str, config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the rest in order
    )  # fmt: skip


async def _stop(procs: list[asyncio.subprocess.Process], timeout: float) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            logger.error("process %d did not stop; killing it", proc.pid)
            proc.kill()
            await proc.wait()


async def run_site(site: Site, duration: float) -> None:
    """Run broker, gateway and devices for ``duration`` seconds or until Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children = Children()
    with Mosquitto(site.broker):
        print(f"broker    mosquitto on {site.host}:{site.port} (config {site.broker.conf})")
        gateway = await children.spawn("gateway", "gateway", site.gateway_config)
        devices = [
            await children.spawn(d, "device", site.device_config(d)) for d in site.device_ids
        ]
        print(f"gateway   database {site.database}")
        print(f"devices   {', '.join(site.device_ids)} scanning for {duration:.0f} s (Ctrl-C ends)")
        exited = asyncio.create_task(children.first_exit())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {exited, stopped}, timeout=duration, return_when="FIRST_COMPLETED"
        )
        if exited in done:
            print(f"{exited.result()} exited early; stopping the site", file=sys.stderr)
        exited.cancel()
        stopped.cancel()
        print("stopping: devices deliver what they hold, then the gateway stops")
        await _stop(devices, timeout=20)
        await _stop([gateway], timeout=10)
        await asyncio.wait(children.relays, timeout=5)


def summary_table(census: Census, site: Site) -> str:
    rows = [
        ("scanned", census.scanned),
        ("accepted", census.accepted),
        ("rejected", census.rejected),
        ("stored in the tracing database", census.stored),
        ("still in device outboxes", census.pending),
        ("stored twice", census.duplicates),
        ("lost", census.lost),
        ("refused messages", census.refused_messages),
    ]
    lines = [f"  {label:<32}{value:>8}" for label, value in rows]
    return "\n".join(["", "summary", *lines, f"  database: {site.database}"])


def pick_index_case(site: Site, people: list[Person]) -> Person | None:
    """Someone still inside (no exit scan yet): the case whose contacts matter most."""
    key = read_subject_key(site.directory / "secrets" / "subject.key")
    db = sqlite3.connect(f"file:{site.database}?mode=ro", uri=True)
    try:
        inside = {
            subject
            for (subject,) in db.execute("SELECT subject FROM stays WHERE end_rule='default_stay'")
        }
    finally:
        db.close()
    return next((p for p in people if pseudonym(key, "cccd", p.id_number) in inside), None)


def demo_trace(site: Site, index: Person, since: datetime) -> str:
    """Trace one person as the health department would: audited, decrypted with its key."""
    started = time.monotonic()
    # People still inside have stays that run to their default end (8 h at a factory):
    # the window reaches that far so those future hours count, as they will.
    until = datetime.now(UTC) + timedelta(hours=12)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--log-level", "WARNING", "trace",
         "--config", str(site.gateway_config), "--id-number", "-",
         "--subject-key-file", str(site.directory / "secrets" / "subject.key"),
         "--key", str(site.authority_key), "--since", since.isoformat(),
         "--until", until.isoformat(),
         "--actor", "demo", "--purpose", "site-in-a-box demo trace"],
        input=index.id_number, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    elapsed_ms = (time.monotonic() - started) * 1000
    if result.returncode != 0:
        return f"trace failed: {result.stderr.strip()[-300:]}"
    found = json.loads(result.stdout)
    return (
        f"trace of {initials(index.name)} (audited, decrypted with the authority key): "
        f"{len(found['f1'])} F1, {len(found['f2'])} F2 "
        f"({elapsed_ms:.0f} ms including process start)"
    )


def enable_dashboard(site: Site, port: int) -> tuple[str, Path]:
    """Serve the gateway's dashboard on ``port`` with an admin whose password goes to a secret."""
    config = json.loads(site.gateway_config.read_text(encoding="utf-8"))
    config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    site.gateway_config.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    password = secrets.token_urlsafe(18)
    secret = site.directory / "secrets" / "dashboard-admin.password"
    secret.touch(mode=0o600)
    secret.write_text(password + "\n", encoding="utf-8")
    asyncio.run(_add_admin(load_config(site.gateway_config), password))
    return f"http://127.0.0.1:{port}/", secret


async def _add_admin(config: GatewayConfig, password: str) -> None:
    db = await users.connect_or_create(config)
    try:
        await users.add_user(db, "admin", users.Role.ADMIN, password, [])
    finally:
        await db.close()


def run_demo(workdir: Path, *, duration: float, people: int = 40, seed: int = 7) -> int:
    """The whole demo; returns the process exit code (0 when nothing was lost)."""
    site = build_site(workdir.resolve(), people=people, seed=seed, interval_s=0.4)
    url, secret = enable_dashboard(site, free_port())
    print(f"dashboard {url} (user admin, password in {secret})")
    started = datetime.now(UTC)
    asyncio.run(run_site(site, duration))
    census = take_census(site.database, {d: site.outbox(d) for d in site.device_ids})
    print(summary_table(census, site))
    index = pick_index_case(site, synthetic_people(people, seed=seed, today=date.today()))
    if index is not None:
        print(demo_trace(site, index, started - timedelta(minutes=1)))
    print(json.dumps({**census.as_dict(), "database": str(site.database)}, ensure_ascii=False))
    return 0 if census.lost == 0 and census.duplicates == 0 else 1
