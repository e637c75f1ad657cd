"""Contact tracing: a brute-force oracle on random scenarios, then hand-built cases."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import pytest

from gateway import tracing
from gateway.categories import DEFAULTS, Category
from gateway.stays import Stay, rebuild_stays
from gateway.store import SQLiteStore
from gateway.tracing import Exposed, TraceResult, trace, venue_exposure

TZ = timezone(timedelta(hours=7))
BASE = int(datetime(2021, 7, 5, tzinfo=TZ).timestamp())
H = 3600
M = 60


def at(hours: float) -> int:
    """Epoch seconds ``hours`` after local midnight of the test day."""
    return BASE + round(hours * H)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    store = await SQLiteStore.open(tmp_path / "tracing.db")
    yield store._db
    await store.close()


async def add_sites(db: aiosqlite.Connection, sites: Sequence[tuple[str, str, int | None]]) -> None:
    """(site_id, category, threshold_s) with the category's default stay."""
    await db.executemany(
        "INSERT INTO sites (site_id, name, category, default_stay_s, threshold_s) "
        "VALUES (?, ?, ?, ?, ?)",
        [(s, s, c, DEFAULTS[Category(c)].default_stay_s, thr) for s, c, thr in sites],
    )


async def add_stays(db: aiosqlite.Connection, stays: Sequence[Stay]) -> None:
    await db.executemany(
        "INSERT INTO stays (subject, site_id, zone_id, trip_id, start_s, end_s, start_rule, "
        "end_rule, entry_id, exit_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [astuple(s) for s in stays],
    )


def stay(
    subject: str,
    site_id: str,
    start_h: float,
    end_h: float,
    *,
    zone: str = "",
    trip: int | None = None,
    rules: tuple[str, str] = ("entry", "exit"),
) -> Stay:
    return Stay(subject, site_id, zone, trip, at(start_h), at(end_h), *rules, None, None)


def totals(result: TraceResult) -> tuple[dict[str, int], dict[str, int]]:
    return (
        {e.subject: e.total_overlap_s for e in result.f1},
        {e.subject: e.total_overlap_s for e in result.f2},
    )


# --- the oracle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A generated site: category, threshold override, zones, vehicle trips."""

    site_id: str
    category: Category
    threshold_s: int | None
    zones: tuple[str, ...] = ()
    trips: tuple[tuple[int, int, int | None], ...] = ()

    def threshold(self) -> int:
        if self.threshold_s is not None:
            return self.threshold_s
        return DEFAULTS[self.category].threshold_s


@dataclass
class World:
    places: list[Place]
    people: list[str]
    checkins: list[tuple[str, str, str, int, bool]] = field(default_factory=list)
    # (device_id, subject, direction, at_s, accepted)


def oracle_contacts(
    stays: list[Stay],
    thresholds: dict[str, int],
    sources: set[str],
    excluded: set[str],
    window: tuple[int, int],
    threshold_s: int | None,
) -> list[tuple[str, str, str, int, int]]:
    """Every (subject, via, site, start, end) of every pair of stays, compared one by one."""
    found = []
    for a in stays:
        if a.subject not in sources:
            continue
        for b in stays:
            if b.subject in excluded or b.subject == a.subject or b.site_id != a.site_id:
                continue
            if a.zone_id != "" and b.zone_id != "" and a.zone_id != b.zone_id:
                continue
            if a.trip_id is not None and b.trip_id is not None and a.trip_id != b.trip_id:
                continue
            start = max(a.start_s, b.start_s, window[0])
            end = min(a.end_s, b.end_s, window[1])
            needed = thresholds[a.site_id] if threshold_s is None else threshold_s
            if end - start > 0 and end - start >= needed:
                found.append((b.subject, a.subject, a.site_id, start, end))
    return sorted(found)


def summed(contacts: list[tuple[str, str, str, int, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for subject, _, _, start, end in contacts:
        out[subject] = out.get(subject, 0) + end - start
    return out


def as_tuples(level: Sequence[Exposed]) -> list[tuple[str, str, str, int, int]]:
    return sorted(
        (c.subject, c.via, c.site_id, c.start_s, c.end_s) for e in level for c in e.contacts
    )


def random_world(rng: random.Random) -> World:
    places = [
        Place("cafe", Category.RESTAURANT, rng.choice([None, 300, 1200])),
        Place("plant", Category.FACTORY, rng.choice([None, 600]), zones=("z1", "z2")),
        Place("office", Category.OFFICE, None),
        Place("bus", Category.VEHICLE, rng.choice([None, 120]), trips=random_trips(rng)),
        Place("bar", Category.NIGHTLIFE, None, zones=("vip",)),
    ]
    people = [f"p{n:02d}" for n in range(rng.randint(8, 16))]
    world = World(places, people)
    for person in people:
        for _ in range(rng.randint(1, 5)):
            visit(rng, world, person, rng.choice(places))
    return world


def random_trips(rng: random.Random) -> tuple[tuple[int, int, int | None], ...]:
    trips: list[tuple[int, int, int | None]] = []
    start = at(6 + rng.random())
    for trip_id in range(1, rng.randint(3, 6)):
        end = start + rng.randint(20, 70) * M
        trips.append((trip_id, start, end))
        start = end + rng.randint(-20, 40) * M  # trips from two sources may overlap
    if rng.random() < 0.5:
        trips.append((len(trips) + 1, start, None))  # still under way
    return tuple(trips)


def visit(rng: random.Random, world: World, person: str, place: Place) -> None:
    """A visit: entry and exit, a missing exit, an exit without entry, or a refused scan."""
    gate = f"{place.site_id}-{rng.choice(('', *place.zones))}"
    start = at(6 + rng.random() * 12)
    if place.trips and rng.random() < 0.8:  # most people board while a trip is under way
        _, trip_start, trip_end = rng.choice(place.trips)
        start = trip_start + rng.randint(0, (trip_end or trip_start + H) - trip_start)
    end = start + rng.randint(1, 180) * M
    pattern = rng.choices(["both", "in", "out", "refused"], [5, 3, 2, 1])[0]
    if pattern in ("both", "in", "refused"):
        world.checkins.append((gate, person, "in", start, pattern != "refused"))
    if pattern in ("both", "out"):
        exit_gate = gate if rng.random() < 0.8 else f"{place.site_id}-"
        world.checkins.append((exit_gate, person, "out", end, True))


async def store_world(db: aiosqlite.Connection, world: World) -> list[Stay]:
    await add_sites(db, [(p.site_id, p.category.value, p.threshold_s) for p in world.places])
    for p in world.places:
        await db.executemany(
            "INSERT INTO zones (site_id, zone_id) VALUES (?, ?)", [(p.site_id, z) for z in p.zones]
        )
        await db.executemany(
            "INSERT INTO devices (device_id, site_id, zone_id) VALUES (?, ?, ?)",
            [(f"{p.site_id}-{z}", p.site_id, z) for z in ("", *p.zones)],
        )
        await db.executemany(
            "INSERT INTO trips (trip_id, site_id, start_s, end_s, source) VALUES (?, ?, ?, ?, ?)",
            [(i, p.site_id, s, e, "device") for i, s, e in p.trips],
        )
    rows = []
    for seq, (device, subject, direction, when, accepted) in enumerate(sorted(world.checkins)):
        stamp = datetime.fromtimestamp(when, UTC).isoformat()
        site_id = device.partition("-")[0]
        rows.append((device, seq, site_id, stamp, direction, int(accepted), subject, when))
    await db.executemany(
        "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
        "direction, kind, accepted, reason, subject, scanned_s) "
        "VALUES (?1, 's', ?2, ?3, ?4, ?4, ?5, 'cccd', ?6, 'ok', ?7, ?8)",
        rows,
    )
    await rebuild_stays(db, world.people, tz=TZ)
    async with db.execute(
        "SELECT subject, site_id, zone_id, trip_id, start_s, end_s, start_rule, end_rule, "
        "entry_id, exit_id FROM stays"
    ) as cur:
        return [Stay(*row) for row in await cur.fetchall()]


SEEDS = range(30)
# Per seed, how many longest stays of a site are read apart from the lookback: all of
# them (small worlds), none (every stay through the lookback), or a mix.
LONG_STAYS = (1000, 0, 3)


async def test_trace_matches_a_brute_force_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {"f1": 0, "f2": 0, "trip": 0, "zone": 0, "exit_only": 0, "missing_exit": 0}
    for seed in SEEDS:
        monkeypatch.setattr(tracing, "LONG_STAYS", LONG_STAYS[seed % len(LONG_STAYS)])
        rng = random.Random(seed)
        world = random_world(rng)
        store = await SQLiteStore.open(tmp_path / f"world-{seed}.db")
        try:
            stays = await store_world(store._db, world)
            for _ in range(3):
                await check_one_trace(store._db, rng, world, stays, seen, seed)
        finally:
            await store.close()
    # The comparisons above mean something only if the scenarios exercised every feature.
    assert all(count >= 5 for count in seen.values()), seen


async def check_one_trace(
    db: aiosqlite.Connection,
    rng: random.Random,
    world: World,
    stays: list[Stay],
    seen: dict[str, int],
    seed: int,
) -> None:
    index = rng.choice(world.people)
    since = at(rng.random() * 12)
    window = (since, since + rng.randint(2, 14) * H)
    threshold = rng.choice([None, None, 60, 900])
    result = await trace(db, index, since_s=window[0], until_s=window[1], threshold_s=threshold)
    thresholds = {p.site_id: p.threshold() for p in world.places}
    f1 = oracle_contacts(stays, thresholds, {index}, {index}, window, threshold)
    f1_people = set(summed(f1))
    f2 = oracle_contacts(stays, thresholds, f1_people, f1_people | {index}, window, threshold)
    why = f"seed {seed}, index {index}, window {window}, threshold {threshold}"
    assert totals(result) == (summed(f1), summed(f2)), why
    assert (as_tuples(result.f1), as_tuples(result.f2)) == (f1, f2), why
    for level in (result.f1, result.f2):
        ranked = [e.total_overlap_s for e in level]
        assert ranked == sorted(ranked, reverse=True), why
    count_features(seen, result, stays)


def count_features(seen: dict[str, int], result: TraceResult, stays: list[Stay]) -> None:
    seen["f1"] += bool(result.f1)
    seen["f2"] += bool(result.f2)
    contacts = [c for e in (*result.f1, *result.f2) for c in e.contacts]
    seen["trip"] += any(c.trip_id is not None for c in contacts)
    seen["zone"] += any(c.zone_id for c in contacts)
    people = {c.subject for c in contacts} | {c.via for c in contacts}
    mine = [s for s in stays if s.subject in people]
    seen["exit_only"] += any(s.entry_id is None for s in mine)
    seen["missing_exit"] += any(s.exit_id is None for s in mine)


# --- hand-built cases ------------------------------------------------------------------


async def test_f2_is_one_level_further_and_no_more(db: aiosqlite.Connection) -> None:
    await add_sites(db, [(s, "restaurant", None) for s in ("s1", "s2", "s3")])
    await add_stays(
        db,
        [
            stay("A", "s1", 10, 11),
            stay("B", "s1", 10.5, 12),
            stay("B", "s2", 13, 14),
            stay("C", "s2", 13.5, 15),
            stay("C", "s3", 16, 17),
            stay("D", "s3", 16.5, 18),
        ],
    )
    day = {"since_s": at(0), "until_s": at(24)}
    result = await trace(db, "A", **day)
    assert totals(result) == ({"B": 30 * M}, {"C": 30 * M})
    assert [c.via for c in result.f2[0].contacts] == ["B"]
    assert (await trace(db, "A", levels=1, **day)).f2 == ()
    assert totals(await trace(db, "B", **day)) == ({"A": 30 * M, "C": 30 * M}, {"D": 30 * M})
    before_b_moves = await trace(db, "A", since_s=at(0), until_s=at(13.25))
    assert totals(before_b_moves) == ({"B": 30 * M}, {})


async def test_subjects_of_any_length_and_script(db: aiosqlite.Connection) -> None:
    # Subjects are read from SQLite end to end and split by length; keys of one length
    # take a faster path than these: "ann", "bob", "Đa" are all 3 bytes, not all ASCII.
    key32, key64 = "0f" * 16, "e1" * 32
    await add_sites(db, [(s, "restaurant", None) for s in ("s1", "s2")])
    # Two days before, enough longer stays that those below are not among a site's
    # longest (read apart, one row each) but read as the bulk of stays are.
    earlier = [
        stay(f"e{n}", s, -48, -46) for n in range(tracing.LONG_STAYS + 1) for s in ("s1", "s2")
    ]
    await add_stays(
        db,
        [
            *earlier,
            stay("ann", "s1", 10, 11),
            stay("Đa", "s1", 10.5, 12),
            stay("bob", "s1", 10.25, 11),
            stay("Đa", "s2", 13, 14),
            stay(key32, "s2", 13.5, 15),
            stay(key64, "s2", 13, 14),
        ],
    )
    result = await trace(db, "ann", since_s=at(0), until_s=at(24))
    assert totals(result) == ({"bob": 45 * M, "Đa": 30 * M}, {key64: 60 * M, key32: 30 * M})
    assert [(c.subject, c.via) for e in result.f2 for c in e.contacts] == [
        (key64, "Đa"),
        (key32, "Đa"),
    ]


async def test_threshold_from_category_site_or_argument(db: aiosqlite.Connection) -> None:
    await add_sites(
        db, [("cafe", "restaurant", None), ("bar", "nightlife", None), ("desk", "office", 300)]
    )
    assert DEFAULTS[Category.RESTAURANT].threshold_s == 15 * M
    assert DEFAULTS[Category.NIGHTLIFE].threshold_s == 10 * M
    await add_stays(
        db,
        [
            stay("X", "cafe", 10, 11),
            stay("X", "bar", 12, 13),
            stay("X", "desk", 14, 15),
            stay("P", "cafe", 10.8, 11.5),  # 12 min
            stay("U", "cafe", 10.75, 11.5),  # 15 min: exactly the threshold
            stay("Q", "bar", 12.8, 13.5),  # 12 min
            stay("S", "desk", 14.9, 16),  # 6 min
        ],
    )
    day = {"since_s": at(0), "until_s": at(24)}
    by_site = await trace(db, "X", **day)
    assert totals(by_site)[0] == {"U": 15 * M, "Q": 12 * M, "S": 6 * M}
    by_argument = await trace(db, "X", threshold_s=12 * M, **day)
    assert totals(by_argument)[0] == {"U": 15 * M, "P": 12 * M, "Q": 12 * M}


async def test_zones_trips_self_and_certainty(db: aiosqlite.Connection) -> None:
    await add_sites(db, [("hall", "meeting", None), ("bus", "vehicle", None)])
    guessed_start = ("exit_minus_default", "exit")
    await add_stays(
        db,
        [
            stay("X", "hall", 10, 11, zone="a"),
            stay("X", "hall", 10.5, 11.5, zone="a"),  # overlaps X's own stay
            stay("Y", "hall", 10, 11, zone="b"),
            stay("Z", "hall", 10, 11, rules=guessed_start),
            stay("W", "hall", 10, 11, zone="a", rules=("entry", "shift_end")),
            stay("X", "bus", 12, 12.5, trip=1),
            stay("K", "bus", 12, 12.5, trip=2),
            stay("L", "bus", 12, 12.5),
            stay("N", "bus", 12, 12.5, trip=1, rules=("entry", "next_checkin")),
        ],
    )
    result = await trace(db, "X", since_s=at(0), until_s=at(24), levels=1)
    assert totals(result)[0] == {"Z": 90 * M, "W": 90 * M, "L": 30 * M, "N": 30 * M}
    certainty = {(c.subject, c.start_s): c.certainty for e in result.f1 for c in e.contacts}
    assert certainty == {
        ("Z", at(10)): "default_stay",
        ("Z", at(10.5)): "default_stay",
        ("W", at(10)): "shift_end",
        ("W", at(10.5)): "shift_end",
        ("L", at(12)): "exit",
        ("N", at(12)): "next_checkin",
    }
    zones = {(c.subject, c.zone_id, c.trip_id) for e in result.f1 for c in e.contacts}
    assert zones == {("Z", "a", None), ("W", "a", None), ("L", "", 1), ("N", "", 1)}


async def test_venue_exposure_with_margin(db: aiosqlite.Connection) -> None:
    await add_sites(db, [("inn", "lodging", None), ("cafe", "restaurant", None)])
    await add_stays(
        db,
        [
            stay("guest", "inn", -48, 30),  # a long stay: found although it began days ago
            stay("ends-at-margin", "inn", 9, 11),
            stay("ends-before", "inn", 9, 10.99),
            stay("starts-at-margin", "inn", 14, 15),
            stay("starts-after", "inn", 14.01, 15),
            stay("elsewhere", "cafe", 12, 13),
            stay("upstairs", "inn", 12.5, 13, zone="floor-2"),  # every zone of the site
            stay("downstairs", "inn", 15, 16, zone="floor-1"),
        ],
    )
    found = await venue_exposure(db, "inn", from_s=at(12), until_s=at(13))
    subjects = ["guest", "ends-at-margin", "upstairs", "starts-at-margin"]
    assert [s.subject for s in found] == subjects
    assert found[1] == stay("ends-at-margin", "inn", 9, 11)
    exact = await venue_exposure(db, "inn", from_s=at(12), until_s=at(13), margin_s=0)
    assert [s.subject for s in exact] == ["guest", "upstairs"]


async def test_unknown_subject_has_no_contacts(db: aiosqlite.Connection) -> None:
    result = await trace(db, "nobody", since_s=at(0), until_s=at(24))
    assert (result.index, result.f1, result.f2) == ("nobody", (), ())
    with pytest.raises(ValueError, match="levels"):
        await trace(db, "nobody", since_s=at(0), until_s=at(24), levels=3)


async def test_candidates_come_from_the_place_indexes(db: aiosqlite.Connection) -> None:
    plans = []
    for sql in (tracing._CANDIDATES, tracing._LONG_CANDIDATES):
        async with db.execute("EXPLAIN QUERY PLAN " + sql, ("[]",)) as cur:
            plans.append(" | ".join(str(row[3]) for row in await cur.fetchall()))
    short, long = plans
    # The reads drive the join; each is one bounded range of the covering index.
    assert short.index("SCAN r") < short.index("stays_place_cover"), short
    assert (
        "COVERING INDEX stays_place_cover (site_id=? AND zone_id=? AND start_s>? AND start_s<?)"
        in short
    ), short
    # The long stays of a site are the top of the length index.
    assert "stays_place_len (site_id=? AND <expr>>?)" in long, long
    async with db.execute("EXPLAIN QUERY PLAN " + tracing._SITE_FACTS, ("[]", 5)) as cur:
        facts = " | ".join(str(row[3]) for row in await cur.fetchall())
    assert "stays_place_len (site_id=?)" in facts and "TEMP B-TREE" not in facts, facts


@pytest.mark.parametrize("long_stays", [0, 1000], ids=["lookback", "read apart"])
async def test_stays_written_after_a_trace_are_found(
    db: aiosqlite.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long_stays: int
) -> None:
    monkeypatch.setattr(tracing, "LONG_STAYS", long_stays)
    await add_sites(db, [("inn", "lodging", None)])
    await add_stays(db, [stay("case", "inn", 10, 11), stay("short", "inn", 10, 11)])
    day = {"since_s": at(0), "until_s": at(24)}
    assert totals(await trace(db, "case", **day))[0] == {"short": H}
    # Longer than any stay seen by the first trace: the bound on stay length must follow.
    other = sqlite3.connect(tmp_path / "tracing.db", isolation_level=None)
    try:
        other.execute(
            "INSERT INTO stays (subject, site_id, start_s, end_s, start_rule, end_rule) "
            "VALUES ('guest', 'inn', ?, ?, 'entry', 'exit')",
            (at(-48), at(30)),
        )
    finally:
        other.close()
    assert totals(await trace(db, "case", **day))[0] == {"short": H, "guest": H}
    await add_stays(db, [stay("resident", "inn", -24 * 30, 10.5)])
    found = totals(await trace(db, "case", **day))[0]
    assert found == {"short": H, "guest": H, "resident": 30 * M}


async def test_long_stays_are_found_beyond_the_lookback(
    db: aiosqlite.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clinic: many 1 h visits, and residents of days; only the 2 longest are read apart,
    # so the lookback is the 3rd longest stay (2 days): the 5-day stay is found only apart.
    monkeypatch.setattr(tracing, "LONG_STAYS", 2)
    await add_sites(db, [("clinic", "healthcare", None)])
    visits = [stay(f"v{n:02d}", "clinic", n / 2 - 10, n / 2 - 9) for n in range(40)]
    residents = [
        stay("r5days", "clinic", -5 * 24, 12),
        stay("r3days", "clinic", -3 * 24, 9.5),
        stay("r2days", "clinic", -2 * 24 + 10.25, 10.25),
        stay("r1day", "clinic", -24 + 10.5, 10.5),
    ]
    await add_stays(db, [stay("case", "clinic", 9, 11), *visits, *residents])
    result = await trace(db, "case", since_s=at(0), until_s=at(24), levels=1)
    assert totals(result)[0] == {
        "r5days": 2 * H,
        "r3days": 30 * M,
        "r2days": 75 * M,
        "r1day": 90 * M,
        "v37": 30 * M,
        "v38": H,
        "v39": H,
    }
    assert [len(e.contacts) for e in result.f1] == [1] * 7
