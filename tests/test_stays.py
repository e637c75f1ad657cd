"""Stays from check-ins: one hand-made scenario per rule, then the rebuild against SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import aiosqlite
import pytest

from gateway.categories import DEFAULTS, Category
from gateway.errors import StoreError
from gateway.staykeeper import CHUNK_TARGET_S, MAX_CHUNK, MIN_CHUNK, StayKeeper, next_chunk
from gateway.stays import (
    Scan,
    SiteRules,
    Stay,
    build_stays,
    clock_corrections,
    load_rules,
    rebuild_all_stays,
    rebuild_stays,
)
from gateway.store import SQLiteStore

TZ = timezone(timedelta(hours=7))
DAY0 = datetime(2021, 7, 5, tzinfo=TZ)  # a Monday, local midnight


def t(text: str) -> int:
    """Epoch seconds of local 'HH:MM' on day 0, or '+N HH:MM' N days later."""
    days, _, hhmm = text.rpartition(" ")
    hours, minutes = hhmm.split(":")
    offset = timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes))
    return int((DAY0 + offset).timestamp())


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def site(
    site_id: str,
    category: Category,
    default_stay_s: int,
    *,
    shifts: Sequence[tuple[str, str]] = (),
    trips: Sequence[tuple[int, str, str | None]] = (),
) -> SiteRules:
    return SiteRules(
        site_id=site_id,
        category=category,
        default_stay_s=default_stay_s,
        threshold_s=DEFAULTS[category].threshold_s,
        shifts=tuple((minutes(a), minutes(b)) for a, b in shifts),
        trips=tuple((i, t(a), None if b is None else t(b)) for i, a, b in trips),
    )


RULES = {
    r.site_id: r
    for r in [
        site("shop", Category.RESTAURANT, 3600),
        site("office", Category.OFFICE, 8 * 3600),
        site(
            "plant",
            Category.FACTORY,
            8 * 3600,
            shifts=[("06:00", "14:00"), ("14:00", "22:00"), ("22:00", "06:00")],
        ),
        site(
            "bus",
            Category.VEHICLE,
            3600,
            trips=[(1, "07:00", "07:50"), (2, "08:00", "08:50"), (3, "09:00", None)],
        ),
        site("hall", Category.MEETING, 3 * 3600),
        site("inn", Category.LODGING, 12 * 3600),
    ]
}

ScanSpec = tuple[str, str, Literal["in", "out"], str]  # site, zone, direction, time
# site, zone, trip, start, end, start rule, end rule, entry scan no., exit scan no. (1-based)
StaySpec = tuple[str, str, int | None, str, str, str, str, int | None, int | None]

SCENARIOS: dict[str, tuple[list[ScanSpec], list[StaySpec]]] = {
    "exit closes the stay": (
        [("shop", "", "in", "12:00"), ("shop", "", "out", "12:40")],
        [("shop", "", None, "12:00", "12:40", "entry", "exit", 1, 2)],
    ),
    "next check-in elsewhere": (
        [
            ("shop", "", "in", "12:00"),
            ("office", "", "in", "12:30"),
            ("office", "", "out", "17:10"),
        ],
        [
            ("shop", "", None, "12:00", "12:30", "entry", "next_checkin", 1, None),
            ("office", "", None, "12:30", "17:10", "entry", "exit", 2, 3),
        ],
    ),
    "next entry at the same site": (
        [("shop", "", "in", "12:00"), ("shop", "", "in", "12:20"), ("shop", "", "out", "12:50")],
        [
            ("shop", "", None, "12:00", "12:20", "entry", "next_checkin", 1, None),
            ("shop", "", None, "12:20", "12:50", "entry", "exit", 2, 3),
        ],
    ),
    "next check-in, but never past the default stay": (
        [("shop", "", "in", "12:00"), ("office", "", "in", "14:00")],
        [
            ("shop", "", None, "12:00", "13:00", "entry", "default_stay", 1, None),
            ("office", "", None, "14:00", "22:00", "entry", "default_stay", 2, None),
        ],
    ),
    "default stay": (
        [("office", "", "in", "09:00")],
        [("office", "", None, "09:00", "17:00", "entry", "default_stay", 1, None)],
    ),
    "unregistered site: factory defaults": (
        [("kiosk", "", "in", "09:00")],
        [("kiosk", "", None, "09:00", "17:00", "entry", "default_stay", 1, None)],
    ),
    "trip end": (
        [("bus", "", "in", "07:10"), ("office", "", "in", "09:30")],
        [
            ("bus", "", 1, "07:10", "07:50", "entry", "trip_end", 1, None),
            ("office", "", None, "09:30", "17:30", "entry", "default_stay", 2, None),
        ],
    ),
    "open trip: no trip end": (
        [("bus", "", "in", "09:10")],
        [("bus", "", 3, "09:10", "10:10", "entry", "default_stay", 1, None)],
    ),
    "on a vehicle outside every trip": (
        [("bus", "", "in", "06:00")],
        [("bus", "", None, "06:00", "07:00", "entry", "default_stay", 1, None)],
    ),
    "exit after the trip ended still closes it": (
        [("bus", "", "in", "07:10"), ("bus", "", "out", "07:55")],
        [("bus", "", 1, "07:10", "07:55", "entry", "exit", 1, 2)],
    ),
    "exit in a later trip does not match the entry": (
        [("bus", "", "in", "07:10"), ("bus", "", "out", "08:30")],
        [
            ("bus", "", 1, "07:10", "07:50", "entry", "trip_end", 1, None),
            ("bus", "", 2, "08:00", "08:30", "trip_start", "exit", None, 2),
        ],
    ),
    "shift end": (
        [("plant", "", "in", "13:00")],
        [("plant", "", None, "13:00", "14:00", "entry", "shift_end", 1, None)],
    ),
    "overnight shift ends the next morning": (
        [("plant", "", "in", "23:00")],
        [("plant", "", None, "23:00", "+1 06:00", "entry", "shift_end", 1, None)],
    ),
    "after midnight, in the overnight shift": (
        [("plant", "", "in", "02:00")],
        [("plant", "", None, "02:00", "06:00", "entry", "shift_end", 1, None)],
    ),
    "scanning in early belongs to the coming shift, not the ending one": (
        [("plant", "", "in", "05:45")],  # the 06:00-14:00 shift: its end is after the default
        [("plant", "", None, "05:45", "13:45", "entry", "default_stay", 1, None)],
    ),
    "earliest bound wins: next check-in before the shift end": (
        [("plant", "", "in", "13:20"), ("shop", "", "in", "13:50")],
        [
            ("plant", "", None, "13:20", "13:50", "entry", "next_checkin", 1, None),
            ("shop", "", None, "13:50", "14:50", "entry", "default_stay", 2, None),
        ],
    ),
    "earliest bound wins: shift end before the next check-in": (
        [("plant", "", "in", "13:20"), ("shop", "", "in", "14:30")],
        [
            ("plant", "", None, "13:20", "14:00", "entry", "shift_end", 1, None),
            ("shop", "", None, "14:30", "15:30", "entry", "default_stay", 2, None),
        ],
    ),
    "earliest bound wins: trip end before default stay and next check-in": (
        [("bus", "", "in", "08:20"), ("shop", "", "in", "09:30")],
        [
            ("bus", "", 2, "08:20", "08:50", "entry", "trip_end", 1, None),
            ("shop", "", None, "09:30", "10:30", "entry", "default_stay", 2, None),
        ],
    ),
    "exit without entry: exit minus default stay": (
        [("shop", "", "out", "12:40")],
        [("shop", "", None, "11:40", "12:40", "exit_minus_default", "exit", None, 1)],
    ),
    "exit without entry: not before the previous scan": (
        [
            ("office", "", "in", "09:00"),
            ("office", "", "out", "12:00"),
            ("shop", "", "out", "12:30"),
        ],
        [
            ("office", "", None, "09:00", "12:00", "entry", "exit", 1, 2),
            ("shop", "", None, "12:00", "12:30", "previous_checkin", "exit", None, 3),
        ],
    ),
    "exit without entry: not before the trip start": (
        [("bus", "", "out", "08:30")],
        [("bus", "", 2, "08:00", "08:30", "trip_start", "exit", None, 1)],
    ),
    "exit elsewhere closes the open entry and starts at it": (
        [("shop", "", "in", "12:00"), ("office", "", "out", "12:30")],
        [
            ("shop", "", None, "12:00", "12:30", "entry", "next_checkin", 1, None),
            ("office", "", None, "12:00", "12:30", "previous_checkin", "exit", None, 2),
        ],
    ),
    "zones: exit in the same zone": (
        [("hall", "a", "in", "10:00"), ("hall", "a", "out", "11:00")],
        [("hall", "a", None, "10:00", "11:00", "entry", "exit", 1, 2)],
    ),
    "zones: exit at a gate without zone": (
        [("hall", "a", "in", "10:00"), ("hall", "", "out", "11:00")],
        [("hall", "a", None, "10:00", "11:00", "entry", "exit", 1, 2)],
    ),
    "zones: exit from another zone": (
        [("hall", "a", "in", "10:00"), ("hall", "b", "out", "10:30")],
        [
            ("hall", "a", None, "10:00", "10:30", "entry", "next_checkin", 1, None),
            ("hall", "b", None, "10:00", "10:30", "previous_checkin", "exit", None, 2),
        ],
    ),
    "an exit days later is not the entry's exit": (
        [("office", "", "in", "09:00"), ("office", "", "out", "+2 17:00")],
        [
            ("office", "", None, "09:00", "17:00", "entry", "default_stay", 1, None),
            ("office", "", None, "+2 09:00", "+2 17:00", "exit_minus_default", "exit", None, 2),
        ],
    ),
    "a stay of days where people live": (
        [("inn", "", "in", "14:00"), ("inn", "", "out", "+3 11:00")],
        [("inn", "", None, "14:00", "+3 11:00", "entry", "exit", 1, 2)],
    ),
    "zero-length stays are dropped": (
        [("shop", "", "in", "12:00"), ("shop", "", "out", "12:00"), ("shop", "", "out", "12:00")],
        [],
    ),
}


def scans_of(specs: Sequence[ScanSpec], subject: str = "p1") -> list[Scan]:
    return [
        Scan(id=n, subject=subject, site_id=s, zone_id=z, direction=d, at_s=t(when))
        for n, (s, z, d, when) in enumerate(specs, start=1)
    ]


def stay_of(spec: StaySpec, subject: str = "p1") -> Stay:
    site_id, zone, trip, start, end, start_rule, end_rule, entry, exit_ = spec
    return Stay(subject, site_id, zone, trip, t(start), t(end), start_rule, end_rule, entry, exit_)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_build_stays(name: str) -> None:
    scans, expected = SCENARIOS[name]
    assert build_stays(scans_of(scans), RULES, tz=TZ) == [stay_of(s) for s in expected]


def test_build_stays_takes_one_subject() -> None:
    scans = [
        *scans_of([("shop", "", "in", "12:00")]),
        *scans_of([("shop", "", "in", "13:00")], "p2"),
    ]
    with pytest.raises(ValueError, match="one subject"):
        build_stays(scans, RULES, tz=TZ)


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


BEHIND = 3 * 86400  # an unsynced Raspberry Pi clock, days behind after a reboot


def test_clock_corrections_shift_each_run_by_its_promptest_delivery() -> None:
    true = [t("08:00"), t("09:00"), t("10:00")]
    rows = [
        # one run: delivered 2 s, 2 h and 5 s late; the clock is BEHIND
        (1, "gate-1", "s", 1, true[0] - BEHIND, iso(true[0] + 2)),
        (2, "gate-1", "s", 2, true[1] - BEHIND, iso(true[1] + 7200)),
        (3, "gate-1", "s", 3, true[2] - BEHIND, iso(true[2] + 5)),
        # device time goes back: a reboot, a new clock, 5 days behind
        (4, "gate-1", "s", 4, true[2] + 600 - 5 * 86400, iso(true[2] + 600 + 30)),
        # a seq gap (a synced check-in in between): a new run
        (5, "gate-1", "s", 6, true[2] + 900 + 3600, iso(true[2] + 900 + 3600 + 60)),
        # another device, another clock
        (6, "gate-2", "s", 1, true[0] - 100, iso(true[0] + 1)),
    ]
    assert clock_corrections(reversed(rows)) == {
        1: true[0] + 2,
        2: true[1] + 2,
        3: true[2] + 2,
        4: true[2] + 600 + 30,
        5: true[2] + 900 + 3600 + 60,
        6: true[0] + 1,
    }


# --- against SQLite ------------------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    store = await SQLiteStore.open(tmp_path / "tracing.db")
    await registry(store._db)
    yield store._db
    await store.close()


async def registry(db: aiosqlite.Connection) -> None:
    await db.executescript(
        f"""
        BEGIN;
        INSERT INTO sites (site_id, name, category, default_stay_s, threshold_s) VALUES
            ('plant', 'Plant', 'factory', 28800, NULL),
            ('bus', 'Bus 12', 'vehicle', 3600, NULL),
            ('shop', 'Shop', 'restaurant', 3600, 600);
        INSERT INTO zones (site_id, zone_id) VALUES ('plant', 'w1'), ('plant', 'w2');
        INSERT INTO shifts VALUES ('plant', 'day', '06:00', '14:00'),
                                  ('plant', 'night', '22:00', '06:00');
        INSERT INTO trips (trip_id, site_id, start_s, end_s, source) VALUES
            (7, 'bus', {t("07:00")}, {t("07:50")}, 'device');
        INSERT INTO devices (device_id, site_id, direction, zone_id) VALUES
            ('plant-w1', 'plant', 'in', 'w1'), ('plant-w2', 'plant', 'out', 'w2'),
            ('bus-1', 'bus', 'in', ''), ('shop-1', 'shop', 'in', 'w1'),
            ('kiosk-1', 'kiosk', 'in', '');
        COMMIT;
        """
    )


CheckinSpec = tuple[
    str, str, str, str, bool, int
]  # device, subject, direction, time, accepted, seq


async def add_checkins(
    db: aiosqlite.Connection,
    specs: Sequence[CheckinSpec],
    *,
    clock_s: int = 0,
    delays: Sequence[int] = (),
) -> None:
    """Check-ins at local times; ``clock_s`` ≠ 0: an unsynced device clock off by that much."""
    rows: list[tuple[object, ...]] = []
    for n, (device, subject, direction, when, accepted, seq) in enumerate(specs):
        shown = t(when) + clock_s
        received = t(when) + (delays[n] if delays else 1)
        site_id = device.rpartition("-")[0]
        synced, reason = int(clock_s == 0), "ok" if accepted else "denied"
        row = (device, "s", seq, site_id, iso(shown), iso(received), direction, "cccd")
        rows.append((*row, int(accepted), reason, subject, synced, shown))
    await db.executemany(
        "INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at, received_at, "
        "direction, kind, accepted, reason, subject, clock_synced, scanned_s) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


async def stays_table(db: aiosqlite.Connection) -> list[tuple[object, ...]]:
    async with db.execute(
        "SELECT subject, site_id, zone_id, trip_id, start_s, end_s, start_rule, end_rule, "
        "entry_id IS NOT NULL, exit_id IS NOT NULL FROM stays "
        "ORDER BY subject, start_s, site_id, zone_id"
    ) as cur:
        return [tuple(row) for row in await cur.fetchall()]


async def seed_day(db: aiosqlite.Connection) -> None:
    await add_checkins(
        db,
        [
            ("bus-1", "ann", "in", "07:05", True, 1),
            ("plant-w1", "ann", "in", "07:58", True, 1),
            ("plant-w2", "ann", "out", "12:00", True, 1),  # another zone: not ann's exit
            ("shop-1", "ann", "in", "12:10", False, 1),  # refused: she never entered
            ("kiosk-1", "bob", "in", "08:00", True, 1),
            ("bus-1", "bob", "in", "07:20", False, 2),  # refused
            ("shop-1", "cat", "in", "12:30", True, 2),
        ],
    )
    # Ann's 13:00 scan comes from a gate whose clock is a day behind; it reached the
    # gateway two hours late, but another scan of that clock arrived within 3 s.
    await add_checkins(
        db,
        [("plant-w1", "ann", "in", "13:00", True, 2), ("plant-w1", "dan", "in", "13:05", True, 3)],
        clock_s=-86400,
        delays=[7200, 3],
    )


EXPECTED_DAY = [
    ("ann", "bus", "", 7, t("07:05"), t("07:50"), "entry", "trip_end", 1, 0),
    ("ann", "plant", "w1", None, t("07:58"), t("12:00"), "entry", "next_checkin", 1, 0),
    ("ann", "plant", "w2", None, t("07:58"), t("12:00"), "previous_checkin", "exit", 0, 1),
    # 13:00 scanned, read as 13:00 + 3 s: the clock offset from dan's prompt delivery
    ("ann", "plant", "w1", None, t("13:00") + 3, t("14:00"), "entry", "shift_end", 1, 0),
    ("bob", "kiosk", "", None, t("08:00"), t("16:00"), "entry", "default_stay", 1, 0),
    ("cat", "shop", "", None, t("12:30"), t("13:30"), "entry", "default_stay", 1, 0),
    ("dan", "plant", "w1", None, t("13:05") + 3, t("14:00"), "entry", "shift_end", 1, 0),
]


async def test_rebuild_stays_replaces_the_stays_of_those_subjects(db: aiosqlite.Connection) -> None:
    await seed_day(db)
    await db.executemany(
        "INSERT INTO stays (subject, site_id, start_s, end_s, start_rule, end_rule) "
        "VALUES (?, 'old', 0, 10, 'entry', 'exit')",
        [("ann",), ("eve",)],
    )
    written = await rebuild_stays(db, ["ann", "bob", "cat", "dan"], tz=TZ)
    assert written == len(EXPECTED_DAY)
    eve_untouched = ("eve", "old", "", None, 0, 10, "entry", "exit", 0, 0)
    assert await stays_table(db) == [*EXPECTED_DAY, eve_untouched]
    assert not db.in_transaction
    assert await rebuild_stays(db, ["ann"], tz=TZ) == 4, "rebuilding again replaces, not adds"
    assert await stays_table(db) == [*EXPECTED_DAY, eve_untouched]


async def test_rebuild_stays_rolls_back_on_error(db: aiosqlite.Connection) -> None:
    await seed_day(db)
    await rebuild_stays(db, ["ann"], tz=TZ)
    before = await stays_table(db)
    await db.execute(
        "CREATE TRIGGER no_stays BEFORE INSERT ON stays BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(StoreError, match="cannot rebuild stays"):
        await rebuild_stays(db, ["ann", "bob"], tz=TZ)
    assert not db.in_transaction
    assert await stays_table(db) == before


async def test_load_rules(db: aiosqlite.Connection) -> None:
    rules = await load_rules(db)
    assert set(rules) == {"plant", "bus", "shop", "kiosk"}
    assert rules["plant"].shifts == ((6 * 60, 14 * 60), (22 * 60, 6 * 60))
    assert rules["bus"].trips == ((7, t("07:00"), t("07:50")),)
    assert rules["shop"].threshold_s == 600
    assert rules["plant"].threshold_s == DEFAULTS[Category.FACTORY].threshold_s
    assert rules["kiosk"].category is Category.FACTORY  # a device's site missing from sites
    only = await load_rules(db, sites=["shop", "nowhere"])
    assert set(only) == {"shop", "nowhere"}


async def test_rebuild_all_stays_in_small_pages_matches_rebuild_stays(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    await seed_day(db)
    many = [
        ("shop-1", "fay", "in" if n % 2 else "out", f"{8 + n}:00", True, 10 + n) for n in range(9)
    ]
    await add_checkins(db, many)  # fay alone has more check-ins than a page
    await rebuild_stays(db, ["ann", "bob", "cat", "dan", "fay"], tz=TZ)
    expected = await stays_table(db)
    assert expected[: len(EXPECTED_DAY)] == EXPECTED_DAY
    await db.execute("DELETE FROM stays WHERE subject = 'cat'")
    await db.execute(
        "INSERT INTO stays (subject, site_id, start_s, end_s, start_rule, end_rule) "
        "VALUES ('zed', 'old', 0, 10, 'entry', 'exit')"  # zed has no check-ins any more
    )
    conn = sqlite3.connect(tmp_path / "tracing.db", isolation_level=None)
    try:
        assert rebuild_all_stays(conn, tz=TZ, batch=3) == len(expected)
        assert not conn.in_transaction
    finally:
        conn.close()
    assert await stays_table(db) == expected


async def test_stay_keeper_rebuilds_marked_subjects_in_chunks(db: aiosqlite.Connection) -> None:
    await seed_day(db)
    keeper = StayKeeper(SQLiteStore(db, Path("tracing.db")), tz=TZ, first_chunk=1)
    keeper.mark({"ann", "bob"})
    keeper.mark({"cat", "dan", ""})
    assert await keeper.flush() == 5
    assert await stays_table(db) == EXPECTED_DAY
    assert keeper.rebuilt == 5
    assert not db.in_transaction
    assert await keeper.flush() == 0, "nothing is marked twice"


async def test_stay_keeper_keeps_subjects_marked_when_a_rebuild_fails(
    db: aiosqlite.Connection,
) -> None:
    await seed_day(db)
    keeper = StayKeeper(SQLiteStore(db, Path("tracing.db")), tz=TZ, first_chunk=2)
    await db.execute(
        "CREATE TRIGGER no_stays BEFORE INSERT ON stays BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    keeper.mark({"ann", "bob", "cat", "dan"})
    with pytest.raises(StoreError, match="cannot rebuild stays"):
        await keeper.flush()
    assert not db.in_transaction
    await db.execute("DROP TRIGGER no_stays")
    assert await keeper.flush() == 4, "the failed subjects are rebuilt next round"
    assert await stays_table(db) == EXPECTED_DAY


def test_keeper_chunks_follow_the_time_they_take() -> None:
    target = CHUNK_TARGET_S
    assert next_chunk(100, target) == 100
    assert next_chunk(100, target * 4) == 25, "a slow chunk shrinks the next"
    assert next_chunk(100, target / 10) == 200, "a fast one at most doubles it"
    assert next_chunk(100, 10.0) == MIN_CHUNK
    assert next_chunk(MAX_CHUNK, 0.0) == MAX_CHUNK
