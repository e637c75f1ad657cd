"""The registry of sites, zones, shifts and trips, schedule import and the registry commands."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite
import pytest
from pydantic import ValidationError

from broker.launcher import Mosquitto
from conftest import SiteMaker, StartService, db_rows
from gateway.categories import DEFAULTS, HOUR, MINUTE, Category
from gateway.config import DeviceEntry, GatewayBrokerConfig, GatewayConfig, load_config
from gateway.errors import StoreError
from gateway.registry import (
    NoOpenTrip,
    NotAVehicle,
    RegistryError,
    ScheduleError,
    ShiftEntry,
    SiteEntry,
    TripAlreadyOpen,
    TripOrderError,
    TripOverlap,
    TripRow,
    UnknownSite,
    ZoneEntry,
    add_trips,
    end_trip,
    register_sites,
    sites,
    start_trip,
)
from gateway.registry_cli import COMMANDS, add_cli, run_cli
from gateway.schedule import parse_time, read_schedule_csv
from gateway.store import SQLiteStore
from provisioning.errors import ProvisioningError
from provisioning.site import Site, create_site

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = int(datetime(2024, 5, 3, 6, 0, tzinfo=UTC).timestamp())
BUS = SiteEntry(site_id="bus-12", name="Tuyến 12", category=Category.VEHICLE)
SHOP = SiteEntry(site_id="shop-1", name="Cửa hàng", category=Category.MARKET)
FACTORY = SiteEntry(
    site_id="factory-1",
    name="Nhà máy may",
    category=Category.FACTORY,
    province="Bình Dương",
    threshold_min=10,
    zones=[ZoneEntry(zone_id="line-1", name="Chuyền 1"), ZoneEntry(zone_id="line-2")],
    shifts=[
        ShiftEntry(name="night", starts="22:00", ends="06:00"),
        ShiftEntry(name="day", starts="06:00", ends="14:00"),
    ],
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    store = await SQLiteStore.open(tmp_path / "tracing.db")
    yield store._db
    await store.close()


@pytest.fixture
async def registered(db: aiosqlite.Connection) -> aiosqlite.Connection:
    await register_sites(db, [FACTORY, BUS, SHOP])
    return db


async def rows(db: aiosqlite.Connection, sql: str) -> list[tuple[Any, ...]]:
    async with db.execute(sql) as cur:
        return [tuple(r) for r in await cur.fetchall()]


def site(**fields: Any) -> SiteEntry:
    return SiteEntry.model_validate({"site_id": "s-1", "name": "S", "category": "office", **fields})


# --- models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"category": "casino"}, "Input should be 'office'"),
        ({"site_id": "Bad Site"}, "site_id"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"default_stay_min": 0}, "greater than or equal to 1"),
        ({"zones": [{"zone_id": "a"}, {"zone_id": "b"}, {"zone_id": "a"}]}, "zone listed twice: a"),
        ({"zones": [{"zone_id": "Line 1"}]}, "zone_id"),
        (
            {"shifts": [{"name": "x", "starts": "06:00", "ends": "14:00"}] * 2},
            "shift listed twice: x",
        ),
        ({"shifts": [{"name": "x", "starts": "25:00", "ends": "06:00"}]}, "starts '25:00' is not"),
        ({"shifts": [{"name": "x", "starts": "06:00", "ends": "6:30"}]}, "ends '6:30' is not"),
        ({"shifts": [{"name": "x", "starts": "06:00", "ends": "06:00"}]}, "starts and ends at"),
        (
            {"category": "vehicle", "shifts": [{"name": "x", "starts": "06:00", "ends": "14:00"}]},
            "is a vehicle: its stays end with trips",
        ),
        ({"default_stay_min": 30, "threshold_min": 45}, "threshold 45 min exceeds"),
    ],
)
def test_bad_site_entries_are_refused_with_the_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        site(**fields)


def test_a_site_without_its_own_times_uses_its_category_defaults() -> None:
    plain = site(category="restaurant")
    assert plain.default_stay_s == DEFAULTS[Category.RESTAURANT].default_stay_s == HOUR
    assert plain.threshold_s == DEFAULTS[Category.RESTAURANT].threshold_s
    own = site(category="restaurant", default_stay_min=45, threshold_min=5)
    assert (own.default_stay_s, own.threshold_s) == (45 * MINUTE, 5 * MINUTE)


def gateway_config(tmp_path: Path, **fields: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site_id": "factory-1",
            "broker": GatewayBrokerConfig().model_dump(),
            "database": tmp_path / "tracing.db",
            **fields,
        }
    )


def device(device_id: str, site_id: str, zone: str = "") -> dict[str, str]:
    return {"device_id": device_id, "site_id": site_id, "zone": zone}


@pytest.mark.parametrize(
    ("devices", "site_list", "message"),
    [
        ([device("g-1", "factory-1", "line-9")], [FACTORY], "zone 'line-9' is not a zone of"),
        ([device("g-1", "factory-2")], [FACTORY], "site factory-2 is not a listed site"),
        ([device("g-1", "bus-12", "line-1")], [FACTORY, BUS], "not a zone of site bus-12"),
        ([], [FACTORY, FACTORY], "sites listed twice: factory-1"),
    ],
)
def test_gateway_config_refuses_devices_outside_its_sites(
    tmp_path: Path, devices: list[dict[str, str]], site_list: list[SiteEntry], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        gateway_config(tmp_path, devices=devices, sites=[s.model_dump() for s in site_list])


def test_gateway_config_with_sites_loads_from_its_file(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        devices=[device("g-1", "factory-1", "line-2"), device("bus-12-door", "bus-12")],
        sites=[FACTORY.model_dump(), BUS.model_dump()],
    )
    path = tmp_path / "gateway.json"
    path.write_text(config.model_dump_json(), encoding="utf-8")
    loaded = load_config(path)
    assert loaded.sites == [FACTORY, BUS]
    assert loaded.devices[0] == DeviceEntry(device_id="g-1", site_id="factory-1", zone="line-2")
    # Without a site list the devices are not checked against one: older configs still load.
    assert gateway_config(tmp_path, devices=[device("g-1", "elsewhere", "z")]).sites == []


# --- sites in the database --------------------------------------------------------------


async def test_registered_sites_read_back_with_zones_shifts_and_times(
    registered: aiosqlite.Connection,
) -> None:
    listed = {s.site_id: s for s in await sites(registered)}
    assert sorted(listed) == ["bus-12", "factory-1", "shop-1"]
    factory = listed["factory-1"]
    assert factory.zones == sorted(FACTORY.zones, key=lambda z: z.zone_id)
    assert [s.name for s in factory.shifts] == ["day", "night"]  # by start time
    assert factory.province == "Bình Dương"
    assert factory.threshold_min == 10
    # Stored is the stay in force, the category's when the site has none of its own.
    assert factory.default_stay_min == DEFAULTS[Category.FACTORY].default_stay_s // MINUTE
    assert listed["bus-12"].threshold_min is None
    stored = await rows(registered, "SELECT site_id, default_stay_s, threshold_s FROM sites")
    assert ("factory-1", 8 * HOUR, 10 * MINUTE) in stored
    assert ("bus-12", HOUR, None) in stored


async def test_registering_again_updates_and_replaces_zones_and_shifts(
    registered: aiosqlite.Connection,
) -> None:
    changed = FACTORY.model_copy(
        update={
            "name": "Nhà máy may 2",
            "threshold_min": None,
            "zones": [ZoneEntry(zone_id="line-3")],
            "shifts": [],
        }
    )
    await register_sites(registered, [changed])
    listed = {s.site_id: s for s in await sites(registered)}
    assert listed["factory-1"].name == "Nhà máy may 2"
    assert listed["factory-1"].threshold_min is None
    assert listed["factory-1"].zones == [ZoneEntry(zone_id="line-3")]
    assert listed["factory-1"].shifts == []
    assert set(listed) == {"bus-12", "factory-1", "shop-1"}  # unlisted sites are kept
    assert await rows(registered, "SELECT zone_id FROM zones") == [("line-3",)]


async def test_a_failed_registration_writes_nothing(registered: aiosqlite.Connection) -> None:
    with pytest.raises(RegistryError, match="site listed twice: shop-1"):
        await register_sites(registered, [SHOP, SHOP])
    renamed = BUS.model_copy(update={"name": "renamed"})
    # Only a model built without validation can repeat a zone: the database refuses it.
    broken = SiteEntry.model_construct(
        **{**SHOP.model_dump(), "zones": [ZoneEntry(zone_id="a"), ZoneEntry(zone_id="a")]}
    )
    with pytest.raises(StoreError, match="UNIQUE"):
        await register_sites(registered, [renamed, broken])
    assert not registered.in_transaction
    assert ("renamed",) not in await rows(registered, "SELECT name FROM sites")


# --- trips ------------------------------------------------------------------------------


async def test_a_trip_starts_and_ends(registered: aiosqlite.Connection) -> None:
    trip = await start_trip(registered, "bus-12", T0)
    assert await end_trip(registered, "bus-12", T0 + 1800) == trip
    next_trip = await start_trip(registered, "bus-12", T0 + 1800, source="schedule")
    assert next_trip != trip
    assert await rows(registered, "SELECT trip_id, start_s, end_s, source FROM trips") == [
        (trip, T0, T0 + 1800, "device"),
        (next_trip, T0 + 1800, None, "schedule"),
    ]


async def test_trip_commands_out_of_order_are_refused(registered: aiosqlite.Connection) -> None:
    with pytest.raises(NoOpenTrip, match="bus-12 has no open trip"):
        await end_trip(registered, "bus-12", T0)
    trip = await start_trip(registered, "bus-12", T0)
    with pytest.raises(TripAlreadyOpen, match=f"trip {trip} started .* is still open"):
        await start_trip(registered, "bus-12", T0 + 60)
    with pytest.raises(TripOrderError, match="at or before its start"):
        await end_trip(registered, "bus-12", T0)
    assert await rows(registered, "SELECT start_s, end_s FROM trips") == [(T0, None)]
    assert not registered.in_transaction


async def test_trips_only_of_registered_vehicles(registered: aiosqlite.Connection) -> None:
    with pytest.raises(NotAVehicle, match="shop-1 is a market, not a vehicle"):
        await start_trip(registered, "shop-1", T0)
    with pytest.raises(UnknownSite, match="bus-99 is not registered"):
        await start_trip(registered, "bus-99", T0)
    with pytest.raises(NotAVehicle):
        await end_trip(registered, "factory-1", T0)
    assert await rows(registered, "SELECT * FROM trips") == []


async def test_manual_trips_may_not_overlap_scheduled_ones(
    registered: aiosqlite.Connection,
) -> None:
    [scheduled] = await add_trips(registered, [TripRow("bus-12", T0 + 3600, T0 + 7200)])
    with pytest.raises(TripOverlap, match=f"overlaps trip {scheduled}"):
        await start_trip(registered, "bus-12", T0 + 3600)
    trip = await start_trip(registered, "bus-12", T0)
    with pytest.raises(TripOverlap, match=f"overlaps trip {scheduled}"):
        await end_trip(registered, "bus-12", T0 + 3601)
    assert await end_trip(registered, "bus-12", T0 + 3600) == trip  # touching is fine


# --- schedules --------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str, name: str = "trips.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_schedule_reads_offset_and_local_times(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "start,end,vehicle_site_id\n"
        "2024-05-03T13:00:00+07:00,2024-05-03T14:00:00+07:00,bus-12\n"
        "\n"
        "2024-05-03 14:30,2024-05-03 15:15,bus-12\n",
    )
    trips = read_schedule_csv(path)
    assert trips == [
        TripRow("bus-12", T0, T0 + 3600, f"{path} row 2"),
        TripRow("bus-12", T0 + 5400, T0 + 8100, f"{path} row 4"),
    ]


def test_bad_schedule_rows_are_all_reported_by_file_row_and_field(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "vehicle_site_id,start,end\n"
        "bus-12,2024-05-03 06:00,2024-05-03 07:00\n"
        "Bus 12,2024-05-03 08:00,2024-05-03 09:00\n"
        "bus-12,2024-05-03T08:00,2024-05-03 09:00\n"
        "bus-12,tomorrow,2024-05-03 09:00\n"
        "bus-12,2024-05-03 10:00,2024-05-03 09:00\n"
        "bus-12,2024-05-03 10:00\n",
    )
    with pytest.raises(ScheduleError) as caught:
        read_schedule_csv(path)
    assert caught.value.problems == (
        f"{path} row 3, field vehicle_site_id: 'Bus 12' is not a site id",
        f"{path} row 4, field start: '2024-05-03T08:00' has no UTC offset; add one or "
        "write local 'YYYY-MM-DD HH:MM'",
        f"{path} row 5, field start: 'tomorrow' is not a time: write ISO 8601 with offset "
        "(2024-05-03T06:30:00+07:00) or local 'YYYY-MM-DD HH:MM'",
        f"{path} row 6, field end: the trip ends at or before it starts",
        f"{path} row 7: 2 fields where 3 were expected",
    )
    assert "nothing imported (5 problems)" in str(caught.value)


def test_a_schedule_needs_its_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "bus-12,2024-05-03 06:00,2024-05-03 07:00\n")
    with pytest.raises(
        ScheduleError, match=r"row 1: header .* should be vehicle_site_id,start,end"
    ):
        read_schedule_csv(path)
    with pytest.raises(ScheduleError, match="cannot read"):
        read_schedule_csv(tmp_path / "missing.csv")


def test_local_times_skipped_by_a_clock_change_are_refused() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    with pytest.raises(ValueError, match="skipped or repeated in Europe/Berlin"):
        parse_time("2024-03-31 02:30", berlin)
    assert parse_time("2024-05-03 13:00", HCM) == parse_time("2024-05-03T06:00:00Z", HCM) == T0


async def test_a_schedule_is_imported_all_or_nothing(registered: aiosqlite.Connection) -> None:
    good = TripRow("bus-12", T0, T0 + 3600, "trips.csv row 2")
    rows_in = [
        good,
        TripRow("bus-12", T0 + 1800, T0 + 5400, "trips.csv row 3"),
        TripRow("shop-1", T0, T0 + 60, "trips.csv row 4"),
        TripRow("bus-99", T0, T0 + 60, "trips.csv row 5"),
    ]
    with pytest.raises(ScheduleError) as caught:
        await add_trips(registered, rows_in)
    assert caught.value.problems == (
        "trips.csv row 4: site shop-1 is a market, not a vehicle",
        "trips.csv row 5: site bus-99 is not registered",
        "trips.csv row 3: overlaps trips.csv row 2 of vehicle bus-12",
    )
    assert await rows(registered, "SELECT * FROM trips") == []
    assert not registered.in_transaction


async def test_a_schedule_may_be_imported_again_but_not_overlap_stored_trips(
    registered: aiosqlite.Connection,
) -> None:
    first = [TripRow("bus-12", T0, T0 + 3600), TripRow("bus-12", T0 + 3600, T0 + 7200)]
    ids = await add_trips(registered, first)
    assert len(ids) == 2
    assert await add_trips(registered, first) == []  # the same rows again: already stored
    with pytest.raises(ScheduleError, match=f"overlaps stored trip {ids[1]} of vehicle bus-12"):
        await add_trips(registered, [TripRow("bus-12", T0 + 7000, T0 + 9000, "row 9")])
    open_trip = await start_trip(registered, "bus-12", T0 + 10_000)
    with pytest.raises(ScheduleError, match=f"row 9: overlaps stored trip {open_trip}"):
        await add_trips(registered, [TripRow("bus-12", T0 + 20_000, T0 + 21_000, "row 9")])
    assert len(await rows(registered, "SELECT * FROM trips")) == 3


# --- the registry commands --------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    assert args.command in COMMANDS
    return args


async def cli(config: GatewayConfig, *argv: str) -> int:
    return await run_cli(parse(argv[0], "--config", "gateway.json", *argv[1:]), config)


async def test_registry_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(tmp_path, sites=[FACTORY.model_dump(), BUS.model_dump()])
    store = await SQLiteStore.open(config.database)
    await register_sites(store._db, config.sites)
    await store.close()

    assert await cli(config, "sites") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["site_id"] for s in listed] == ["bus-12", "factory-1"]

    assert await cli(config, "trip-start", "--site", "bus-12", "--at", "2024-05-03 13:00") == 0
    assert "started at 2024-05-03T06:00:00+00:00" in capsys.readouterr().out
    caplog.set_level(logging.ERROR)
    assert await cli(config, "trip-start", "--site", "bus-12") == 2
    assert "still open" in caplog.text
    assert await cli(config, "trip-end", "--site", "bus-12", "--at", "2024-05-03 13:00") == 2
    assert "at or before its start" in caplog.text
    assert await cli(config, "trip-end", "--site", "bus-12", "--at", "noon") == 2
    assert "--at: 'noon' is not a time" in caplog.text
    at = "2024-05-03T06:45:00Z"
    assert await cli(config, "trip-end", "--site", "bus-12", "--at", at) == 0
    assert "ended at 2024-05-03T06:45:00+00:00" in capsys.readouterr().out

    schedule = write_csv(tmp_path, "vehicle_site_id,start,end\nbus-12,2024-05-03 14:00,late\n")
    assert await cli(config, "import-trips", "--csv", str(schedule)) == 2
    assert f"{schedule} row 2, field end" in caplog.text
    schedule.write_text("vehicle_site_id,start,end\nbus-12,2024-05-03 16:00,2024-05-03 17:00\n")
    assert await cli(config, "import-trips", "--csv", str(schedule), "--tz", "UTC") == 0
    assert "1 trips imported" in capsys.readouterr().out
    assert await cli(config, "import-trips", "--csv", str(schedule), "--tz", "Mars/Base") == 2
    assert "unknown time zone 'Mars/Base'" in caplog.text

    store = await SQLiteStore.open(config.database)
    trips = await rows(store._db, "SELECT start_s, end_s, source FROM trips ORDER BY start_s")
    await store.close()
    assert trips == [(T0, T0 + 2700, "device"), (T0 + 10 * HOUR, T0 + 11 * HOUR, "schedule")]


# --- provisioning -----------------------------------------------------------------------


def test_a_provisioned_site_registers_itself(tmp_path: Path) -> None:
    made = create_site(tmp_path / "a", site_id="demo-factory", port=18830, devices=[])
    assert load_config(made.gateway_config).sites == [
        SiteEntry(site_id="demo-factory", name="demo-factory", category=Category.FACTORY)
    ]
    bus = SiteEntry(site_id="bus-7", name="Xe 7", category=Category.VEHICLE)
    made = create_site(tmp_path / "b", site_id="bus-7", port=18831, devices=[], site=bus)
    assert load_config(made.gateway_config).sites == [bus]
    with pytest.raises(ProvisioningError, match="site entry bus-7 is not site bus-8"):
        create_site(tmp_path / "c", site_id="bus-8", port=18832, devices=[], site=bus)
    assert not (tmp_path / "c").exists()


def test_the_gateway_registers_its_sites_at_start(
    make_site: SiteMaker, broker_for: Callable[[Site], Mosquitto], services: StartService
) -> None:
    site = make_site([])
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("registered 1 sites")
    assert db_rows(site, "SELECT site_id, name, category FROM sites") == [
        ("test-site", "test-site", "factory")
    ]
