"""Contact tracing at province scale: how long the health department waits for F1 and F2.

Usage::

    .venv/bin/python tests/bench/trace.py            # full scale: 10M check-ins, a few minutes
    .venv/bin/python tests/bench/trace.py --checkins 200000 --people 20000 --sites 200  # < 1 min

Options: ``--checkins N --days 30 --sites 2000 --people 500000 --seed 1 --db PATH
--queries 50 --baseline 10``.

What it does and measures:

1. **Generate** a province with :mod:`provincegen` (seeded numpy: sites of the
   directives' categories with zones, shifts and bus trips; commuters on shifts;
   visits to markets, restaurants, buses...; entries, exits, lost scans, rejected
   scans; 32-hex pseudonymous subjects).
2. **Load** it into a database created by :meth:`gateway.store.SQLiteStore.open`
   (so the schema is the real, migrated one) with plain :mod:`sqlite3`:
   ``synchronous=OFF`` for the load only, one transaction, ``executemany`` from
   generators; the check-in indexes are dropped during the insert and recreated
   from their own ``sqlite_master`` text afterwards (same schema, sorted build).
   Then **build the stays** with :func:`gateway.stays.rebuild_all_stays`.
   The database is kept (default under ``/tmp/qrgate-bench/``) with a ``.json``
   sidecar; a later run with the same arguments whose row counts match reuses it
   and reports the times of the run that built it. If ``gateway/stays.py`` changed
   since (its fingerprint is in the sidecar), the check-ins are reused and only the
   stays are rebuilt, and timed.
3. **Trace**: ``--queries`` subjects drawn at random (seeded) among those with
   stays, each with a random 14-day window (local midnights) in which they have a
   stay. Each is traced with :func:`gateway.tracing.trace` at ``levels=1`` (F1)
   and ``levels=2`` (F2) on one read-only aiosqlite connection
   (``file:...?mode=ro``), warmed with one untimed trace first. Wall time per
   call, median and p99 (nearest rank; with fewer than 100 queries the p99 is
   the maximum, and the table says so). A person's contacts are made when first
   read, so after each F2 every contact of every F2 person is read and that time
   is reported apart ("F2 contacts": what an export of the whole F2 adds).
4. **Baseline**: for ``--baseline`` of those subjects and a 1-day window, a brute
   force F1 that reads every stay of the window (a full scan of ``stays``, no
   index) into numpy and compares it pairwise with the subject's stays, timed
   against ``trace(levels=1)`` on the same inputs. The two F1 subject sets must
   be equal (the script fails otherwise); ``bruteforce_ratio`` is the brute-force
   median over the indexed median.

Output: a table, then as the last line one JSON object (``checkins``,
``f1_median_ms``, ``f1_p99_ms``, ``f2_median_ms``, ``f2_p99_ms``,
``bruteforce_ratio`` and more). Targets on a 2-core machine: F1 <= 50 ms, F2 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import aiosqlite
import numpy as np
from provincegen import (
    DAY,
    T0,
    VERSION,
    Params,
    Province,
    add_args,
    checkin_rows,
    generate,
    params_of,
)

import gateway.stays
from gateway.categories import DEFAULTS, Category
from gateway.stays import rebuild_all_stays
from gateway.store import SQLiteStore
from gateway.tracing import trace

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
WINDOW_DAYS = 14
PROVINCE = "Bình Dương"

CHECKIN_COLUMNS = (
    "device_id, stream, seq, site_id, scanned_at, received_at, direction, kind, accepted, "
    "reason, subject, warnings, scanned_s, clock_synced, initials"
)


@dataclass(slots=True)
class Built:
    """How the database was built (kept in the sidecar so a reuse can report it)."""

    params: dict[str, int]
    generator: int  # provincegen.VERSION
    checkins: int
    stays: int
    generate_s: float
    load_s: float
    insert_s: float
    index_s: float
    stays_s: float
    stays_code: str  # fingerprint of gateway/stays.py that built the stays
    extra: dict[str, int] = field(default_factory=dict)


def stays_code() -> str:
    """Fingerprint of the stay rules in force: stays built by other rules are rebuilt."""
    return hashlib.sha256(Path(gateway.stays.__file__).read_bytes()).hexdigest()[:16]


def default_db(p: Params) -> Path:
    """Where the database of ``p`` lives unless ``--db`` says otherwise."""
    name = f"province-c{p.checkins}-d{p.days}-s{p.sites}-p{p.people}-seed{p.seed}.db"
    return Path("/tmp/qrgate-bench") / name


def sidecar(path: Path) -> Path:
    """The JSON file describing how ``path`` was built."""
    return path.with_name(path.name + ".json")


def reusable(path: Path, p: Params) -> Built | None:
    """The build record of ``path`` if it holds exactly the check-ins of ``p``.

    Its stays are current if ``stays_code`` matches and their count is the recorded one.
    """
    meta = sidecar(path)
    if not path.exists() or not meta.exists():
        return None
    try:
        built = Built(**json.loads(meta.read_text()))
    except (ValueError, TypeError):
        return None
    if built.params != asdict(p) or built.generator != VERSION:
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("checkins", "sites", "stays")
        ]
        if counts[2] != built.stays:
            built.stays_code = ""  # not the stays that were recorded: rebuild them
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return built if counts[:2] == [p.checkins, p.sites] else None


def remove_db(path: Path) -> None:
    """Delete a database, its WAL files and sidecar."""
    for extra in ("", "-wal", "-shm", ".json"):
        path.with_name(path.name + extra).unlink(missing_ok=True)


async def _create(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.close()


def load(path: Path, prov: Province) -> tuple[float, float]:
    """Create ``path`` with the gateway's migrations and bulk-load ``prov`` into it.

    Returns (insert seconds, index seconds) for the check-ins.
    """
    asyncio.run(_create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # For the load only (a crash means starting over; the sidecar is written last):
        # no journal at all, which halves the load against WAL (each page is written
        # once, not to the WAL then to the database); WAL again when done.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-2000000")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA threads=2")  # sorter helper threads for CREATE INDEX
        conn.execute("BEGIN")
        _load_registry(conn, prov)
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type='index' AND tbl_name='checkins' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        began = time.perf_counter()
        conn.executemany(
            f"INSERT INTO checkins ({CHECKIN_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            checkin_rows(prov),
        )
        inserted = time.perf_counter()
        for _, sql in indexes:
            conn.execute(sql)
        indexed = time.perf_counter()
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return inserted - began, indexed - inserted


def _load_registry(conn: sqlite3.Connection, prov: Province) -> None:
    s = prov.sites
    conn.executemany(
        "INSERT INTO sites (site_id, name, category, province, district, default_stay_s, "
        "threshold_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (s.ids[i], s.names[i], s.category(i).value, PROVINCE, s.districts[i],
             int(s.default_stay_s[i]), s.threshold_s[i])
            for i in range(len(s.ids))
        ),
    )  # fmt: skip
    zone_word = {Category.FACTORY: "Xưởng", Category.HEALTHCARE: "Khoa", Category.SCHOOL: "Khối"}
    conn.executemany(
        "INSERT INTO zones (site_id, zone_id, name) VALUES (?, ?, ?)",
        (
            (s.ids[i], f"z{z + 1}", f"{zone_word.get(s.category(i), 'Khu')} {z + 1}")
            for i in range(len(s.ids))
            for z in range(int(s.n_zones[i]))
        ),
    )
    conn.executemany(
        "INSERT INTO shifts (site_id, name, starts, ends) VALUES (?, ?, ?, ?)", prov.shifts
    )
    conn.executemany(
        "INSERT INTO trips (site_id, start_s, end_s, source) VALUES (?, ?, ?, 'schedule')",
        prov.trips,
    )
    d = prov.devices
    conn.executemany(
        "INSERT INTO devices (device_id, site_id, gate, direction, zone_id, status) "
        "VALUES (?, ?, ?, ?, ?, 'online')",
        (
            (d.ids[i], s.ids[int(d.site[i])], d.gate[i], d.direction[i], d.zone[i])
            for i in range(len(d.ids))
        ),
    )
    last_seq = np.zeros(len(d.ids), np.int64)
    np.maximum.at(last_seq, prov.checkins.device, prov.checkins.seq)
    updated = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime(prov.params.t_end))
    conn.executemany(
        "INSERT INTO streams (device_id, stream, acked_upto, updated_at) VALUES (?, ?, ?, ?)",
        ((d.ids[i], d.stream[i], int(last_seq[i]), updated) for i in range(len(d.ids))),
    )


def build_stays(path: Path) -> int:
    """Build the stays with the gateway's own code; returns how many there are."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        conn.execute("PRAGMA temp_store=MEMORY")
        rebuild_all_stays(conn, tz=TZ)
        if conn.in_transaction:
            conn.execute("COMMIT")
        count = int(conn.execute("SELECT count(*) FROM stays").fetchone()[0])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return count


def prepare(path: Path, p: Params) -> tuple[Built, str]:
    """A database holding the province of ``p`` and how it came to be.

    Reused if it is there; if only the stay rules changed, its stays are rebuilt.
    """
    built = reusable(path, p)
    if built is not None and built.stays_code == stays_code():
        return built, "reused (times of the run that built it)"
    if built is not None:
        print("check-ins reused; gateway/stays.py changed: rebuilding the stays...", flush=True)
        began = time.perf_counter()
        built.stays = build_stays(path)
        built.stays_s = time.perf_counter() - began
        built.stays_code = stays_code()
        sidecar(path).write_text(json.dumps(asdict(built), indent=1))
        return built, "check-ins reused (load time of the run that built it), stays rebuilt now"
    remove_db(path)
    began = time.perf_counter()
    prov = generate(p)
    generated = time.perf_counter()
    print(f"generated {len(prov.checkins):,} check-ins in {generated - began:.1f} s", flush=True)
    insert_s, index_s = load(path, prov)
    loaded = time.perf_counter()
    print(f"loaded in {loaded - generated:.1f} s; building stays...", flush=True)
    stays = build_stays(path)
    built = Built(
        params=asdict(p),
        generator=VERSION,
        checkins=len(prov.checkins),
        stays=stays,
        generate_s=generated - began,
        load_s=loaded - generated,
        insert_s=insert_s,
        index_s=index_s,
        stays_s=time.perf_counter() - loaded,
        stays_code=stays_code(),
        extra=prov.stats,
    )
    sidecar(path).write_text(json.dumps(asdict(built), indent=1))
    return built, "built now"


# --- queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One subject to trace over [since_s, until_s)."""

    subject: str
    since_s: int
    until_s: int


def pick_queries(path: Path, p: Params, count: int) -> list[Query]:
    """``count`` distinct random subjects, each with a window in which they have a stay."""
    rng = np.random.default_rng([p.seed, 14])
    window = min(WINDOW_DAYS, p.days)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        subjects = [row[0] for row in conn.execute("SELECT DISTINCT subject FROM stays")]
        subjects.sort()
        picked: list[Query] = []
        seen: set[str] = set()
        while len(picked) < min(count, len(subjects)):
            subject = subjects[int(rng.integers(len(subjects)))]
            since = T0 + int(rng.integers(0, p.days - window + 1)) * DAY
            until = since + window * DAY
            if subject in seen:
                continue
            has = conn.execute(
                "SELECT 1 FROM stays WHERE subject=? AND start_s < ? AND end_s > ? LIMIT 1",
                (subject, until, since),
            ).fetchone()
            if has:
                seen.add(subject)
                picked.append(Query(subject, since, until))
    finally:
        conn.close()
    return picked


@dataclass(slots=True)
class Timings:
    """Per-query results of one level."""

    ms: list[float] = field(default_factory=list)
    contacts: list[int] = field(default_factory=list)
    # Time to then make every Contact of the level (made lazily, when first read).
    made_ms: list[float] = field(default_factory=list)
    pairs: list[int] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.ms)

    def p99(self) -> float:
        return percentile(self.ms, 99)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with fewer than 100 values the 99th is the maximum."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def run_traces(
    path: Path, queries: list[Query], *, verbose: bool = False
) -> tuple[Timings, Timings]:
    """Time F1 (levels=1) then F2 (levels=2) per query on one read-only connection."""
    f1, f2 = Timings(), Timings()
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
        warm = queries[0]
        await trace(db, warm.subject, since_s=warm.since_s, until_s=warm.until_s, levels=2)
        for q in queries:
            began = time.perf_counter()
            r1 = await trace(db, q.subject, since_s=q.since_s, until_s=q.until_s, levels=1)
            f1.ms.append((time.perf_counter() - began) * 1000)
            f1.contacts.append(len(r1.f1))
            began = time.perf_counter()
            r2 = await trace(db, q.subject, since_s=q.since_s, until_s=q.until_s, levels=2)
            f2.ms.append((time.perf_counter() - began) * 1000)
            f2.contacts.append(len(r2.f2))
            began = time.perf_counter()
            f2.pairs.append(sum(1 for e in r2.f2 for _ in e.contacts))
            f2.made_ms.append((time.perf_counter() - began) * 1000)
            if verbose:
                print(
                    f"  {q.subject[:12]} F1 {len(r1.f1):5d} in {f1.ms[-1]:8.1f} ms, "
                    f"F2 {len(r2.f2):6d} in {f2.ms[-1]:9.1f} ms, "
                    f"{f2.pairs[-1]:8d} contacts made in {f2.made_ms[-1]:8.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return f1, f2


# --- brute force ---------------------------------------------------------------------


def site_thresholds(path: Path) -> dict[str, int]:
    """Contact threshold in force per site: its own or its category's."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT site_id, category, threshold_s FROM sites").fetchall()
    finally:
        conn.close()
    return {
        site: own if own is not None else DEFAULTS[Category(cat)].threshold_s
        for site, cat, own in rows
    }


def brute_f1(conn: sqlite3.Connection, q: Query, thresholds: dict[str, int]) -> set[str]:
    """F1 of ``q`` from every stay of the window, compared pairwise in numpy.

    The rules of :mod:`gateway.tracing`, restated: same site; same zone unless
    either is ''; same trip unless either is NULL; the case's stay clipped to the
    window; overlap at least the site's threshold (each pair on its own).
    ``stays`` has no index on the time alone, so this reads the whole table.
    """
    rows = conn.execute(
        "SELECT subject, site_id, zone_id, coalesce(trip_id, -1), start_s, end_s FROM stays "
        "WHERE start_s < ? AND end_s > ?",
        (q.until_s, q.since_s),
    ).fetchall()
    if not rows:
        return set()
    subject_col, site_col, zone_col, trip_col, start_col, end_col = zip(*rows, strict=True)
    subject = np.array(subject_col, dtype=object)
    site = np.array(site_col, dtype=object)
    zone = np.array(zone_col, dtype=object)
    trip = np.array(trip_col, dtype=np.int64)
    start = np.array(start_col, dtype=np.int64)
    end = np.array(end_col, dtype=np.int64)
    others = subject != q.subject
    found: set[str] = set()
    for i in np.flatnonzero(~others).tolist():
        s, e = max(int(start[i]), q.since_s), min(int(end[i]), q.until_s)
        meets = others & (site == site[i])
        if zone[i]:
            meets &= (zone == "") | (zone == zone[i])
        if trip[i] >= 0:
            meets &= (trip < 0) | (trip == trip[i])
        overlap = np.minimum(end, e) - np.maximum(start, s)
        meets &= overlap >= max(thresholds[str(site[i])], 1)
        found.update(subject[meets].tolist())
    return found


def one_day(conn: sqlite3.Connection, q: Query) -> Query:
    """``q`` narrowed to the local day of the subject's first stay in its window."""
    first = conn.execute(
        "SELECT min(start_s) FROM stays WHERE subject=? AND start_s >= ? AND start_s < ?",
        (q.subject, q.since_s, q.until_s),
    ).fetchone()[0]
    start = q.since_s if first is None else T0 + (int(first) - T0) // DAY * DAY
    return Query(q.subject, start, start + DAY)


async def run_baseline(
    path: Path, queries: list[Query]
) -> tuple[list[float], list[float], list[int]]:
    """Brute-force and indexed F1 times (ms) and F1 sizes on 1-day windows; asserts equality."""
    thresholds = site_thresholds(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    brute_ms: list[float] = []
    indexed_ms: list[float] = []
    sizes: list[int] = []
    try:
        async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
            days = [one_day(conn, q) for q in queries]
            warm = days[0]
            await trace(db, warm.subject, since_s=warm.since_s, until_s=warm.until_s, levels=1)
            for q in days:
                began = time.perf_counter()
                brute = brute_f1(conn, q, thresholds)
                brute_ms.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                r = await trace(db, q.subject, since_s=q.since_s, until_s=q.until_s, levels=1)
                indexed_ms.append((time.perf_counter() - began) * 1000)
                indexed = {e.subject for e in r.f1}
                if brute != indexed:
                    raise AssertionError(
                        f"F1 of {q.subject} [{q.since_s}, {q.until_s}): brute force finds "
                        f"{len(brute)}, trace {len(indexed)}; only brute: "
                        f"{sorted(brute - indexed)[:5]}, only trace: {sorted(indexed - brute)[:5]}"
                    )
                sizes.append(len(indexed))
    finally:
        conn.close()
    return brute_ms, indexed_ms, sizes


# --- report --------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """``n`` bytes in GB or MB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_args(parser)
    parser.add_argument("--db", type=Path, help="database path (default under /tmp/qrgate-bench)")
    parser.add_argument("--queries", type=int, default=50, help="subjects to trace")
    parser.add_argument("--baseline", type=int, default=10, help="subjects for the brute force")
    parser.add_argument("--rebuild", action="store_true", help="build even if a database matches")
    parser.add_argument("--verbose", action="store_true", help="print each query's times")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.baseline < 1 or args.days < 1 or args.checkins < 1:
        parser.error("--queries, --baseline, --days and --checkins must be at least 1")
    p = params_of(args)
    path: Path = args.db or default_db(p)
    if args.rebuild:
        remove_db(path)
    built, how = prepare(path, p)
    queries = pick_queries(path, p, args.queries)
    f1, f2 = asyncio.run(run_traces(path, queries, verbose=args.verbose))
    brute_ms, indexed_ms, sizes = asyncio.run(run_baseline(path, queries[: args.baseline]))
    ratio = statistics.median(brute_ms) / statistics.median(indexed_ms)
    size = path.stat().st_size
    n = len(queries)
    p99_note = "max: fewer than 100 queries" if n < 100 else "nearest rank"
    rows = [
        ("scale", f"{built.checkins:,} check-ins, {p.days} days, {p.sites:,} sites, "
                  f"{p.people:,} people, seed {p.seed}"),
        ("database", f"{path} ({human_bytes(size)}), {how}"),
        ("generate", f"{built.generate_s:.1f} s"),
        ("load", f"{built.load_s:.1f} s (check-in rows {built.insert_s:.1f} s, "
                 f"indexes {built.index_s:.1f} s)"),
        ("stays", f"{built.stays:,} built in {built.stays_s:.1f} s"),
        ("F1 levels=1", f"median {f1.median():.1f} ms, p99 {f1.p99():.1f} ms ({p99_note}), "
                        f"{n} queries x 14 days, mean {statistics.mean(f1.contacts):.0f} contacts"),
        ("F2 levels=2", f"median {f2.median():.1f} ms, p99 {f2.p99():.1f} ms ({p99_note}), "
                        f"mean {statistics.mean(f2.contacts):.0f} F2 subjects"),
        ("F2 contacts", f"all made after the F2: median {statistics.median(f2.made_ms):.1f} ms, "
                        f"p99 {percentile(f2.made_ms, 99):.1f} ms, "
                        f"mean {statistics.mean(f2.pairs):.0f} contacts"),
        ("brute force", f"{len(brute_ms)} subjects x 1 day: full scan "
                        f"{statistics.median(brute_ms):.0f} ms vs trace "
                        f"{statistics.median(indexed_ms):.1f} ms median, ratio {ratio:.0f}x, "
                        f"same F1 sets (mean {statistics.mean(sizes):.0f} F1)"),
        ("targets", f"F1 <= 50 ms: {'met' if f1.p99() <= 50 else 'MISSED'} (p99); "
                    f"F2 <= 1 s: {'met' if f2.p99() <= 1000 else 'MISSED'} (p99)"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    summary = {
        "checkins": built.checkins,
        "days": p.days,
        "sites": p.sites,
        "people": p.people,
        "seed": p.seed,
        "stays": built.stays,
        "db_bytes": size,
        "cached": how != "built now",
        "stays_rebuilt": how != "reused (times of the run that built it)",
        "generate_s": round(built.generate_s, 2),
        "load_s": round(built.load_s, 2),
        "stays_build_s": round(built.stays_s, 2),
        "queries": n,
        "f1_median_ms": round(f1.median(), 2),
        "f1_p99_ms": round(f1.p99(), 2),
        "f2_median_ms": round(f2.median(), 2),
        "f2_p99_ms": round(f2.p99(), 2),
        "f2_contacts_made_median_ms": round(statistics.median(f2.made_ms), 2),
        "f2_contacts_made_p99_ms": round(percentile(f2.made_ms, 99), 2),
        "f2_mean_pairs": round(statistics.mean(f2.pairs), 1),
        "f1_mean_contacts": round(statistics.mean(f1.contacts), 1),
        "f2_mean_contacts": round(statistics.mean(f2.contacts), 1),
        "baseline_queries": len(brute_ms),
        "bruteforce_median_ms": round(statistics.median(brute_ms), 2),
        "indexed_median_ms": round(statistics.median(indexed_ms), 2),
        "bruteforce_ratio": round(ratio, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
