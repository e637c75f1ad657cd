"""The dashboard API and pages against the real app on a real SQLite database, role by role.

Two sites: the factory 'may-a' (gates a-in, a-out) and the restaurant
'quan-b' (gate b-in). Check-ins go in through the store like ingest writes
them, with the identity sealed to a fresh authority key; stays are rebuilt by
the real code. A (the case) is at may-a for an hour, B overlaps 40 minutes
(F1), C is at quan-b (nobody's contact). Users: admin, health officer, and one
operator per site. Config pushes go through a real mosquitto.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import load_workbook

from broker.client import BusClient, ClientSettings
from broker.messages import CheckIn, DeviceState, Health, PersonalFields, utc_iso
from broker.mosquitto import BrokerLayout
from broker.passwords import new_password
from broker.sealing import Sealer, new_authority_key
from broker.topics import Channel, device_topic
from brokerkit import SyncClient, start_broker
from gateway.categories import Category
from gateway.config import DeviceEntry
from gateway.fleet import ConfigPublisher
from gateway.identity import pseudonym
from gateway.registry import SiteEntry, register_sites
from gateway.stays import rebuild_stays
from gateway.store import Arrival, SQLiteStore, StateChange, WriteBatch
from gateway.users import Role, add_user
from gateway.web.app import create_app
from gateway.web.context import WebContext
from gateway.web.throttle import LoginThrottle

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SUBJECT_KEY = b"province-subject-key-for-web-tests"
PASSWORD = "correct horse battery"
PEOPLE = {  # letter -> (id number, name, initials)
    "A": ("001203004567", "Nguyễn Thị Hồng Nhung", "N. T. H. Nhung"),
    "B": ("079099000001", "Đặng Văn Đức", "Đ. V. Đức"),
    "C": ("001099000002", "Trần Minh Khôi", "T. M. Khôi"),
}
USERS = {  # name -> (role, sites)
    "admin": (Role.ADMIN, []),
    "health": (Role.HEALTH, []),
    "op-a": (Role.OPERATOR, ["may-a"]),
    "op-b": (Role.OPERATOR, ["quan-b"]),
}
DEVICES = [
    DeviceEntry(device_id="a-in", site_id="may-a", gate="Cổng chính", direction="in"),
    DeviceEntry(device_id="a-out", site_id="may-a", gate="Cổng chính", direction="out"),
    DeviceEntry(device_id="b-in", site_id="quan-b", gate="Cửa", direction="in"),
]


def subject(letter: str) -> str:
    return pseudonym(SUBJECT_KEY, "cccd", PEOPLE[letter][0])


@dataclass
class World:
    """The database, keys and times the tests check against."""

    database: Path
    authority_private: str
    t0: datetime
    layout: BrokerLayout


async def build(database: Path, public_key: str, t0: datetime) -> None:
    store = await SQLiteStore.open(database)
    try:
        async with store.exclusive() as db:
            await register_sites(
                db,
                [
                    SiteEntry(site_id="may-a", name="May A", category=Category.FACTORY),
                    SiteEntry(site_id="quan-b", name="Quán B", category=Category.RESTAURANT),
                ],
            )
        await store.register_devices(DEVICES)
        await store.write(_batch(Sealer(public_key), t0))
        async with store.exclusive() as db:
            await rebuild_stays(db, [subject(x) for x in PEOPLE], tz=TZ)
            for name, (role, sites) in USERS.items():
                await add_user(db, name, role, PASSWORD, sites)
    finally:
        await store.close()


def _batch(sealer: Sealer, t0: datetime) -> WriteBatch:
    scans = [  # letter, device, minutes after t0
        ("A", "a-in", 0),
        ("B", "a-in", 10),
        ("B", "a-out", 50),
        ("A", "a-out", 60),
        ("C", "b-in", 5),
    ]
    arrivals = []
    for seq, (letter, device, minutes) in enumerate(scans, start=1):
        id_number, name, initials = PEOPLE[letter]
        site = "quan-b" if device == "b-in" else "may-a"
        record = CheckIn(
            seq=seq,
            scanned_at=t0 + timedelta(minutes=minutes),
            direction="out" if device == "a-out" else "in",
            kind="cccd",
            accepted=True,
            reason="ok",
            subject=subject(letter),
            sealed=sealer.seal(PersonalFields(id_number=id_number, name=name)),
            initials=initials,
        )
        arrivals.append(Arrival(device, site, f"s-{device}", record, utc_iso(t0)))
    health = Health(
        uptime_s=60, scans=3, accepted=3, rejected=0, outbox_depth=7, oldest_pending_s=4.0,
        median_decode_ms=12, camera_fps=10, clock_synced=True, direction="in",
    )  # fmt: skip
    online = DeviceState(status="online", firmware="1.2.0", health=health)
    states = [
        StateChange("a-in", online, utc_iso(t0)),
        StateChange("b-in", DeviceState(status="offline"), utc_iso(t0)),
    ]
    return WriteBatch(arrivals=arrivals, states=states)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerLayout, str]]:
    password = new_password()
    mosquitto, layout = start_broker(tmp_path_factory.mktemp("broker"), {"gateway": password})
    try:
        yield layout, password
    finally:
        mosquitto.stop()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, datetime]:
    """The database built once (password hashing is slow on purpose); each test copies it."""
    private, public = new_authority_key()
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    asyncio.run(build(path, public, t0))
    return path, private, t0


@pytest.fixture
def world(
    tmp_path: Path, broker: tuple[BrokerLayout, str], template: tuple[Path, str, datetime]
) -> World:
    source, private, t0 = template
    database = tmp_path / "gateway.db"
    with sqlite3.connect(source) as src, sqlite3.connect(database) as dest:
        src.backup(dest)
    return World(database, private, t0, broker[0])


@pytest.fixture
async def app_ctx(
    world: World, broker: tuple[BrokerLayout, str]
) -> AsyncIterator[tuple[WebContext, httpx.ASGITransport]]:
    layout, password = broker
    store = await SQLiteStore.open(world.database)
    client = BusClient(
        ClientSettings(
            client_id="web-test-gw", username="gateway", password=password, port=layout.port
        ),
        loop=asyncio.get_running_loop(),
    )
    client.start()
    await client.wait_connected(timeout=10)
    ctx = WebContext(
        database=world.database,
        tz=TZ,
        session_ttl_s=3600,
        publisher=ConfigPublisher(store, client),
        subject_key=SUBJECT_KEY,
    )
    app = create_app(ctx)
    try:
        async with app.router.lifespan_context(app):
            yield ctx, httpx.ASGITransport(app=app)
    finally:
        client.stop()
        await store.close()


Clients = dict[str, httpx.AsyncClient]


@pytest.fixture
async def clients(app_ctx: tuple[WebContext, httpx.ASGITransport]) -> AsyncIterator[Clients]:
    """One logged-in client per user (CSRF header set), and 'anon'."""
    transport = app_ctx[1]
    made: Clients = {}
    for name in [*USERS, "anon"]:
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        made[name] = client
        if name != "anon":
            r = await client.post("/api/session", json={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["X-CSRF-Token"] = r.json()["csrf"]
    yield made
    for client in made.values():
        await client.aclose()


def audit_rows(world: World) -> list[tuple[str, str, str, str]]:
    db = sqlite3.connect(world.database)
    try:
        return db.execute(
            "SELECT actor, action, target, purpose FROM audit_log ORDER BY id"
        ).fetchall()
    finally:
        db.close()


def trace_body(world: World, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "subject": subject("A"),
        "since": (world.t0 - timedelta(hours=1)).isoformat(),
        "until": (world.t0 + timedelta(hours=3)).isoformat(),
        "purpose": "F0 case 2026-118",
    }
    return body | extra


ANON_ROUTES = [
    ("GET", "/api/session"), ("DELETE", "/api/session"), ("GET", "/api/sites"),
    ("GET", "/api/devices"), ("GET", "/api/devices/a-in"), ("GET", "/api/devices/a-in/config"),
    ("PUT", "/api/devices/a-in/config"), ("GET", "/api/alerts"), ("GET", "/api/live"),
    ("POST", "/api/trace"), ("POST", "/api/trace/export"), ("GET", "/api/users"),
    ("POST", "/api/users"), ("PATCH", "/api/users/admin"), ("DELETE", "/api/users/admin"),
    ("PUT", "/api/sites/may-a"), ("GET", "/api/audit"), ("GET", "/api/rollout"),
    ("GET", "/api/rollout/file"), ("GET", "/api/sites/may-a/defaults"),
    ("PUT", "/api/sites/may-a/defaults"),
]  # fmt: skip


async def test_every_api_route_refuses_anonymous_requests(
    clients: Clients, app_ctx: tuple[WebContext, httpx.ASGITransport]
) -> None:
    spec = app_ctx[1].app.openapi()  # type: ignore[attr-defined]
    app_routes = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    listed = {(m, p.replace("a-in", "{device_id}").replace("may-a", "{site_id}")
               .replace("users/admin", "users/{username}")) for m, p in ANON_ROUTES}  # fmt: skip
    assert app_routes - {("POST", "/api/session")} == listed, "a route is not covered here"
    for method, path in ANON_ROUTES:
        r = await clients["anon"].request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code)
    for page in ["/", "/devices/a-in", "/live", "/trace", "/rollout", "/users"]:
        r = await clients["anon"].get(page)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), page


async def test_login_sets_a_strict_httponly_cookie_and_stores_only_its_hash(
    app_ctx: tuple[WebContext, httpx.ASGITransport], world: World
) -> None:
    async with httpx.AsyncClient(transport=app_ctx[1], base_url="http://testserver") as c:
        bad = await c.post("/api/session", json={"username": "admin", "password": "wrong pass!"})
        assert bad.status_code == 401
        nobody = await c.post("/api/session", json={"username": "nobody", "password": PASSWORD})
        assert nobody.status_code == 401
        assert "set-cookie" not in bad.headers
        r = await c.post("/api/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=3600" in cookie
        token = c.cookies["qrgate_session"]
        me = (await c.get("/api/session")).json()
        assert me["username"] == "admin" and me["role"] == "admin"
    db = sqlite3.connect(world.database)
    try:
        stored = [r[0] for r in db.execute("SELECT token_hash FROM sessions")]
        hashes = [r[0] for r in db.execute("SELECT password_hash FROM users")]
    finally:
        db.close()
    assert token not in stored and len(stored) == 1
    assert all(h.startswith("$argon2id$") for h in hashes) and PASSWORD not in hashes


async def test_sessions_expire_and_end_at_logout(clients: Clients, world: World) -> None:
    assert (await clients["health"].get("/api/session")).status_code == 200
    db = sqlite3.connect(world.database)
    try:
        with db:
            db.execute(
                "UPDATE sessions SET expires_s = ? WHERE username = 'health'",
                (int(time.time()) - 1,),
            )
    finally:
        db.close()
    assert (await clients["health"].get("/api/session")).status_code == 401
    admin = clients["admin"]
    no_csrf = await admin.delete("/api/session", headers={"X-CSRF-Token": "forged"})
    assert no_csrf.status_code == 403
    assert (await admin.delete("/api/session")).status_code == 204
    assert (await admin.get("/api/devices")).status_code == 401


async def test_operators_see_only_their_sites_devices(clients: Clients) -> None:
    admin = (await clients["admin"].get("/api/devices")).json()
    assert [d["device_id"] for d in admin] == ["a-in", "a-out", "b-in"]
    a_in = admin[0]
    assert a_in["online"] is True and a_in["firmware"] == "1.2.0"
    assert a_in["outbox_depth"] == 7 and a_in["oldest_pending_s"] == 4.0
    assert a_in["clock_synced"] is True and a_in["site_name"] == "May A"
    assert admin[2]["online"] is False
    op_a = (await clients["op-a"].get("/api/devices")).json()
    assert [d["device_id"] for d in op_a] == ["a-in", "a-out"]
    assert (await clients["op-a"].get("/api/devices?site=quan-b")).status_code == 404
    assert (await clients["op-a"].get("/api/devices/b-in")).status_code == 404
    assert (await clients["op-b"].get("/api/devices/a-in")).status_code == 404
    only_b = (await clients["admin"].get("/api/devices?site=quan-b")).json()
    assert [d["device_id"] for d in only_b] == ["b-in"]
    sites = (await clients["op-b"].get("/api/sites")).json()
    assert [s["site_id"] for s in sites] == ["quan-b"]
    alerts = (await clients["op-a"].get("/api/alerts")).json()
    assert all(a["device_id"] in ("a-in", "a-out") for a in alerts)
    assert any(a["device_id"] == "b-in" for a in (await clients["admin"].get("/api/alerts")).json())
    assert (await clients["admin"].get("/api/devices/nope")).status_code == 404


async def test_operators_never_get_personal_fields(clients: Clients) -> None:
    op = await clients["op-a"].get("/api/devices/a-in")
    assert op.status_code == 200
    checkins = op.json()["checkins"]
    assert len(checkins) == 2
    assert all(c["subject"] is None and c["initials"] is None for c in checkins)
    for letter, (id_number, name, initials) in PEOPLE.items():
        for secret in (subject(letter), initials, name, id_number):
            assert secret not in op.text
    health = (await clients["health"].get("/api/devices/a-in")).json()
    assert {c["subject"] for c in health["checkins"]} == {subject("A"), subject("B")}
    page = await clients["op-a"].get("/devices/a-in")
    assert page.status_code == 200 and "a-in" in page.text
    assert subject("A") not in page.text and "Nhung" not in page.text
    assert "Nhung" in (await clients["health"].get("/devices/a-in")).text


async def test_admin_pushes_a_config_through_the_broker(
    clients: Clients, world: World, app_ctx: tuple[WebContext, httpx.ASGITransport]
) -> None:
    for name in ("op-a", "health"):
        assert (await clients[name].get("/api/devices/a-in/config")).status_code == 403
        r = await clients[name].put("/api/devices/a-in/config", json={"patch": {}})
        assert r.status_code == 403
    before = (await clients["admin"].get("/api/devices/a-in/config")).json()
    assert before["desired_version"] == 0 and before["override"] == {}
    patch = {"health_interval_s": 5.0, "policy": {"anti_passback": "warn"}}
    forged = await clients["admin"].put(
        "/api/devices/a-in/config", json={"patch": patch}, headers={"X-CSRF-Token": "x"}
    )
    assert forged.status_code == 403
    bad = await clients["admin"].put(
        "/api/devices/a-in/config", json={"patch": {"health_interval_s": 0}}
    )
    assert bad.status_code == 400 and "health_interval_s" in bad.json()["detail"]
    r = await clients["admin"].put("/api/devices/a-in/config", json={"patch": patch})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    after = (await clients["admin"].get("/api/devices/a-in/config")).json()
    assert after["override"] == patch and after["desired_version"] == 1
    assert after["effective"]["health_interval_s"] == 5.0
    with SyncClient(world.layout, "web-test-watch", "gateway", _password(app_ctx)) as watch:
        watch.connect()
        watch.subscribe(device_topic("a-in", Channel.CONFIG))
        message = watch.next_message()
    assert message is not None and message.retain
    pushed = json.loads(message.payload)
    assert pushed["version"] == 1 and pushed["settings"]["health_interval_s"] == 5.0


def _password(app_ctx: tuple[WebContext, httpx.ASGITransport]) -> str:
    publisher = app_ctx[0].publisher
    assert publisher is not None
    return publisher._client.settings.password


async def test_live_counts_per_hour_per_site(clients: Clients, world: World) -> None:
    admin = (await clients["admin"].get("/api/live?hours=6")).json()
    assert len(admin["hours"]) == 6 and admin["total"] == 5
    by_site = {s["site_id"]: s["counts"] for s in admin["sites"]}
    assert sum(by_site["may-a"]) == 4 and sum(by_site["quan-b"]) == 1
    op = (await clients["op-b"].get("/api/live?hours=6")).json()
    assert [s["site_id"] for s in op["sites"]] == ["quan-b"] and op["total"] == 1
    assert (await clients["admin"].get("/api/live?hours=0")).status_code == 422


async def test_only_health_officers_trace_and_every_trace_is_audited(
    clients: Clients, world: World
) -> None:
    for name in ("admin", "op-a", "op-b"):
        r = await clients[name].post("/api/trace", json=trace_body(world))
        assert r.status_code == 403, name
    assert audit_rows(world) == []
    r = await clients["health"].post("/api/trace", json=trace_body(world))
    assert r.status_code == 200, r.text
    found = r.json()
    assert [p["subject"] for p in found["f1"]] == [subject("B")]
    assert found["f1"][0]["total_overlap_min"] == 40 and "name" not in found["f1"][0]
    assert audit_rows(world) == [
        ("health (web, health)", "trace", subject("A"), "F0 case 2026-118")
    ]
    named = await clients["health"].post(
        "/api/trace", json=trace_body(world, authority_key=world.authority_private)
    )
    assert named.json()["f1"][0]["name"] == PEOPLE["B"][1]
    assert [row[1] for row in audit_rows(world)] == ["trace", "trace", "decrypt"]


async def test_trace_requests_are_checked(clients: Clients, world: World) -> None:
    health = clients["health"]
    cases = [
        trace_body(world, site="may-a"),  # two targets
        trace_body(world, purpose=""),
        trace_body(world, until=world.t0.isoformat(), since=world.t0.isoformat()),
        trace_body(world, subject="not-hex"),
        trace_body(world, authority_key="not a key"),
        {**trace_body(world, site="nowhere"), "subject": None},
    ]  # fmt: skip
    for body in cases:
        r = await health.post("/api/trace", json=body)
        assert r.status_code in (400, 422), (body, r.status_code)
        assert r.json()["detail"]
    assert audit_rows(world) == []
    by_id = await health.post(
        "/api/trace", json={**trace_body(world), "subject": None, "id_number": PEOPLE["A"][0]}
    )
    assert [p["subject"] for p in by_id.json()["f1"]] == [subject("B")]
    venue = await health.post(
        "/api/trace", json={**trace_body(world), "subject": None, "site": "may-a"}
    )
    assert venue.status_code == 200
    assert {p["subject"] for p in venue.json()["people"]} == {subject("A"), subject("B")}
    assert [row[1] for row in audit_rows(world)] == ["trace", "venue"]


async def test_exports_are_files_and_audited(clients: Clients, world: World) -> None:
    body = trace_body(world, authority_key=world.authority_private)
    for name in ("admin", "op-a"):
        r = await clients[name].post("/api/trace/export?format=csv", json=body)
        assert r.status_code == 403
    r = await clients["health"].post("/api/trace/export?format=csv", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[1][0] == subject("B") and rows[1][1] == PEOPLE["B"][1] and rows[1][3] == "F1"
    x = await clients["health"].post("/api/trace/export?format=xlsx", json=body)
    sheet = load_workbook(io.BytesIO(x.content)).active
    assert sheet.cell(row=2, column=3).value == PEOPLE["B"][0]
    j = await clients["health"].post("/api/trace/export?format=json", json=trace_body(world))
    assert json.loads(j.content)["f1"][0]["subject"] == subject("B")
    bad = await clients["health"].post("/api/trace/export?format=pdf", json=body)
    assert bad.status_code == 422
    actions = [row[1] for row in audit_rows(world)]
    assert actions == ["export", "decrypt", "export", "decrypt", "export"]


async def test_admins_manage_users_and_changes_end_sessions(clients: Clients) -> None:
    new = {"username": "op-c", "role": "operator", "password": PASSWORD, "sites": ["may-a"]}
    for name in ("health", "op-a"):
        assert (await clients[name].get("/api/users")).status_code == 403
        assert (await clients[name].post("/api/users", json=new)).status_code == 403
    admin = clients["admin"]
    assert (await admin.post("/api/users", json=new)).status_code == 201
    assert (await admin.post("/api/users", json=new)).status_code == 409
    no_site = {**new, "username": "op-d", "sites": []}
    r = await admin.post("/api/users", json=no_site)
    assert r.status_code == 400 and "at least one site" in r.json()["detail"]
    names = [u["username"] for u in (await admin.get("/api/users")).json()]
    assert names == ["admin", "health", "op-a", "op-b", "op-c"]
    assert "password" not in (await admin.get("/api/users")).text
    moved = await admin.patch("/api/users/op-a", json={"sites": ["quan-b"]})
    assert moved.json()["sites"] == ["quan-b"]
    assert (await clients["op-a"].get("/api/devices")).status_code == 401
    assert (await admin.delete("/api/users/admin")).status_code == 409
    assert (await admin.delete("/api/users/op-b")).status_code == 204
    assert (await clients["op-b"].get("/api/devices")).status_code == 401
    assert (await admin.patch("/api/users/ghost", json={"disabled": True})).status_code == 404


async def test_admins_register_sites_and_read_the_audit_log(clients: Clients) -> None:
    site = {"site_id": "cho-c", "name": "Chợ C", "category": "market"}
    assert (await clients["op-a"].put("/api/sites/cho-c", json=site)).status_code == 403
    assert (await clients["admin"].put("/api/sites/cho-d", json=site)).status_code == 422
    assert (await clients["admin"].put("/api/sites/cho-c", json=site)).status_code == 200
    ids = [s["site_id"] for s in (await clients["admin"].get("/api/sites")).json()]
    assert "cho-c" in ids
    assert (await clients["health"].get("/api/audit")).status_code == 403
    assert (await clients["admin"].get("/api/audit")).json() == []


async def test_rollout_report_for_admins_and_health(clients: Clients, world: World) -> None:
    month = world.t0.astimezone(TZ).strftime("%Y-%m")
    assert (await clients["op-a"].get("/api/rollout")).status_code == 403
    report = await clients["health"].get(f"/api/rollout?month={month}")
    assert report.status_code == 200, report.text
    assert "may-a" in report.text
    xlsx = await clients["admin"].get(f"/api/rollout/file?month={month}&format=xlsx")
    assert xlsx.status_code == 200 and load_workbook(io.BytesIO(xlsx.content)).sheetnames
    assert (await clients["admin"].get("/api/rollout?month=2026-13")).status_code in (400, 422)
    page = await clients["admin"].get(f"/rollout?month={month}")
    assert page.status_code == 200 and "May A" in page.text


async def test_pages_by_role_and_language(clients: Clients) -> None:
    home = await clients["op-a"].get("/")
    assert home.status_code == 200 and "Thiết bị" in home.text
    assert "a-in" in home.text and "b-in" not in home.text
    assert (await clients["op-a"].get("/trace")).status_code == 403
    assert (await clients["op-a"].get("/users")).status_code == 403
    english = await clients["admin"].get("/?lang=en")
    assert "Devices" in english.text and "b-in" in english.text
    assert "qrgate_lang=en" in english.headers["set-cookie"]
    assert "Devices" in (await clients["admin"].get("/live")).text  # the cookie remembers
    assert (await clients["health"].get("/trace")).status_code == 200
    forged = await clients["admin"].post(
        "/users", data={"username": "x1", "role": "health", "password": PASSWORD, "csrf": "no"}
    )
    assert forged.status_code == 403


def test_every_template_key_has_both_languages() -> None:
    import re

    from gateway.web import i18n
    from gateway.web.app import static_dir

    keys: set[str] = set()
    for template in (static_dir().parent / "templates").glob("*.html"):
        keys |= set(re.findall(r"""t\(["']([a-z0-9_.]+)["']\)""", template.read_text()))
    keys |= {f"status.{s}" for s in ("online", "offline", "unknown")}
    keys |= {f"role.{r.value}" for r in Role} | {"dir.in", "dir.out"}
    missing = sorted(k for k in keys if k not in i18n.MESSAGES)
    assert not missing
    assert all(vi and en for vi, en in i18n.MESSAGES.values())


async def test_trace_page_by_id_number_never_echoes_it(clients: Clients, world: World) -> None:
    health = clients["health"]
    local = world.t0.astimezone(TZ).replace(tzinfo=None)
    form = {
        "csrf": health.headers["X-CSRF-Token"],
        "id_number": PEOPLE["A"][0],
        "since": (local - timedelta(hours=1)).isoformat(timespec="minutes"),
        "until": (local + timedelta(hours=3)).isoformat(timespec="minutes"),
        "levels": "2",
        "purpose": "page trace",
    }
    page = await health.post("/trace", data=form)
    assert page.status_code == 200, page.text
    assert subject("B") in page.text and 'id="f1"' in page.text
    assert PEOPLE["A"][0] not in page.text
    assert 'value="' + subject("A") + '"' in page.text  # the exports go by pseudonym
    export = await health.post("/trace/export", data={**form, "format": "csv"})
    assert export.status_code == 200 and subject("B") in export.text
    forged = await health.post("/trace", data={**form, "csrf": "forged"})
    assert forged.status_code == 403
    assert [row[1] for row in audit_rows(world)] == ["trace", "export"]


def _table(world: World, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(world.database)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_site_defaults_reach_the_sites_devices_and_overrides_win(
    clients: Clients, world: World, app_ctx: tuple[WebContext, httpx.ASGITransport]
) -> None:
    admin = clients["admin"]
    # a-out has its own interval before the site gets defaults: it must keep it.
    own = await admin.put("/api/devices/a-out/config", json={"patch": {"health_interval_s": 7.0}})
    assert own.status_code == 200 and own.json()["version"] == 1
    before = (await admin.get("/api/sites/may-a/defaults")).json()
    assert before["defaults"] == {} and before["revision"] == 0
    assert [d["device_id"] for d in before["devices"]] == ["a-in", "a-out"]
    defaults = {"health_interval_s": 5.0, "policy": {"anti_passback": "warn"}}
    forged = await admin.put(
        "/api/sites/may-a/defaults", json={"patch": defaults}, headers={"X-CSRF-Token": "x"}
    )
    assert forged.status_code == 403
    r = await admin.put("/api/sites/may-a/defaults", json={"patch": defaults})
    assert r.status_code == 200, r.text
    assert r.json() == {"site_id": "may-a", "revision": 1, "versions": {"a-in": 1, "a-out": 2}}
    a_in = (await admin.get("/api/devices/a-in/config")).json()
    assert a_in["desired_version"] == 1 and a_in["override"] == {}
    assert a_in["effective"]["health_interval_s"] == 5.0
    assert a_in["effective"]["policy"]["anti_passback"] == "warn"
    a_out = (await admin.get("/api/devices/a-out/config")).json()
    assert a_out["desired_version"] == 2
    assert a_out["effective"]["health_interval_s"] == 7.0  # its override wins
    assert a_out["effective"]["policy"]["anti_passback"] == "warn"  # the rest from the site
    b_in = (await admin.get("/api/devices/b-in/config")).json()
    assert b_in["desired_version"] == 0 and b_in["effective"]["health_interval_s"] == 30.0
    after = (await admin.get("/api/sites/may-a/defaults")).json()
    assert after["defaults"] == defaults and after["revision"] == 1
    keys = {d["device_id"]: d["override_keys"] for d in after["devices"]}
    assert keys == {"a-in": [], "a-out": ["health_interval_s"]}
    with SyncClient(world.layout, "web-test-site", "gateway", _password(app_ctx)) as watch:
        watch.connect()
        watch.subscribe(device_topic("a-in", Channel.CONFIG))
        message = watch.next_message()
    assert message is not None and message.retain
    pushed = json.loads(message.payload)
    assert pushed["version"] == 1 and pushed["settings"]["health_interval_s"] == 5.0
    # The same defaults again: a new revision, but no device's settings changed.
    again = await admin.put("/api/sites/may-a/defaults", json={"patch": defaults})
    assert again.json()["revision"] == 2 and again.json()["versions"] == {"a-in": 1, "a-out": 2}


async def test_invalid_site_defaults_change_nothing(clients: Clients, world: World) -> None:
    admin = clients["admin"]
    good = {"health_interval_s": 5.0}
    assert (await admin.put("/api/sites/may-a/defaults", json={"patch": good})).status_code == 200
    patches = _table(world, "SELECT * FROM settings_patches ORDER BY scope_kind, scope_id")
    desired_rows = _table(world, "SELECT device_id, version FROM desired_configs ORDER BY 1, 2")
    for bad, field in [
        ({"health_interval_s": 0}, "health_interval_s"),
        ({"policy": {"anti_passback": "sometimes"}}, "anti_passback"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ]:
        r = await admin.put("/api/sites/may-a/defaults", json={"patch": bad})
        assert r.status_code == 422, (bad, r.text)
        assert field in r.json()["detail"] and "a-in" in r.json()["detail"]
    assert _table(world, "SELECT * FROM settings_patches ORDER BY scope_kind, scope_id") == patches
    assert _table(world, "SELECT device_id, version FROM desired_configs ORDER BY 1, 2") == (
        desired_rows
    )
    view = (await admin.get("/api/sites/may-a/defaults")).json()
    assert view["defaults"] == good and view["revision"] == 1
    assert (await admin.get("/api/sites/nowhere/defaults")).status_code == 404
    assert (await admin.put("/api/sites/nowhere/defaults", json={"patch": {}})).status_code == 404
    assert (await admin.put("/api/sites/may-a/defaults", json={"patch": [1]})).status_code == 422


async def test_only_admins_read_or_set_site_defaults(clients: Clients, world: World) -> None:
    body = {"patch": {"health_interval_s": 5.0}}
    for name in ("op-a", "op-b", "health"):  # op-a's own site too: configs are for admins
        assert (await clients[name].get("/api/sites/may-a/defaults")).status_code == 403, name
        assert (await clients[name].put("/api/sites/may-a/defaults", json=body)).status_code == 403
        assert (await clients[name].get("/sites/may-a")).status_code == 403
        form = {"patch": "{}", "csrf": clients[name].headers["X-CSRF-Token"]}
        assert (await clients[name].post("/sites/may-a/defaults", data=form)).status_code == 403
    assert (await clients["anon"].put("/api/sites/may-a/defaults", json=body)).status_code == 401
    anon_page = await clients["anon"].get("/sites/may-a")
    assert anon_page.status_code == 303 and anon_page.headers["location"].startswith("/login")
    assert _table(world, "SELECT * FROM settings_patches") == []
    assert _table(world, "SELECT * FROM desired_configs") == []
    assert "/sites/may-a" not in (await clients["op-a"].get("/")).text


async def test_site_defaults_page_form(clients: Clients, world: World) -> None:
    admin = clients["admin"]
    assert 'href="/sites/may-a"' in (await admin.get("/")).text
    page = await admin.get("/sites/may-a")
    assert page.status_code == 200 and "a-in" in page.text and "b-in" not in page.text
    csrf = admin.headers["X-CSRF-Token"]
    bad = await admin.post(
        "/sites/may-a/defaults", data={"patch": '{"health_interval_s": 0}', "csrf": csrf}
    )
    assert bad.status_code == 400 and 'id="defaults-error"' in bad.text
    assert "health_interval_s" in bad.text
    not_json = await admin.post("/sites/may-a/defaults", data={"patch": "{oops", "csrf": csrf})
    assert not_json.status_code == 400
    assert _table(world, "SELECT * FROM settings_patches") == []
    forged = await admin.post(
        "/sites/may-a/defaults", data={"patch": '{"health_interval_s": 9}', "csrf": "no"}
    )
    assert forged.status_code == 403
    ok = await admin.post(
        "/sites/may-a/defaults", data={"patch": '{"health_interval_s": 9}', "csrf": csrf}
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/sites/may-a?pushed=1"
    assert _table(world, "SELECT device_id, version FROM desired_configs ORDER BY 1") == [
        ("a-in", 1),
        ("a-out", 1),
    ]
    shown = await admin.get(ok.headers["location"])
    assert 'id="pushed"' in shown.text and "health_interval_s" in shown.text
    assert (await admin.get("/sites/nowhere")).status_code == 404


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _from(app_ctx: tuple[WebContext, httpx.ASGITransport], address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app_ctx[1].app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def _login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/session", json={"username": username, "password": password})


async def test_failed_logins_are_throttled_per_user_name_and_address(
    app_ctx: tuple[WebContext, httpx.ASGITransport],
) -> None:
    clock = Clock()
    app_ctx[0].login_throttle = LoginThrottle(clock=clock)
    one, two = _from(app_ctx, "10.0.0.1"), _from(app_ctx, "10.0.0.2")
    async with one, two:
        for _ in range(5):
            assert (await _login(one, "admin", "wrong pass!")).status_code == 401
            clock.now += 1
        refused = await _login(one, "admin", PASSWORD)  # even the right password
        assert refused.status_code == 429 and "set-cookie" not in refused.headers
        assert "too many failed logins for this user name" in refused.json()["detail"]
        assert refused.headers["retry-after"] == str(15 * 60 - 5)
        assert (await _login(two, "ADMIN", PASSWORD)).status_code == 429  # name, any address
        assert (await _login(two, "health", PASSWORD)).status_code == 200
        by_address = await _login(one, "health", PASSWORD)
        assert by_address.status_code == 429 and "this address" in by_address.json()["detail"]
        page = await one.post("/login", data={"username": "health", "password": PASSWORD})
        assert page.status_code == 429 and 'id="login-throttled"' in page.text
        assert "15 phút" in page.text and "qrgate_session" not in page.headers.get("set-cookie", "")
        clock.now = 1000.0 + 15 * 60 - 1  # the first failure is still inside the window
        assert (await _login(two, "admin", PASSWORD)).status_code == 429
        clock.now = 1000.0 + 15 * 60  # now it has left: four in the window
        assert (await _login(two, "admin", PASSWORD)).status_code == 200
        assert (await _login(one, "health", PASSWORD)).status_code == 200


async def test_a_successful_login_resets_the_count_of_its_name_only(
    app_ctx: tuple[WebContext, httpx.ASGITransport],
) -> None:
    clock = Clock()
    app_ctx[0].login_throttle = LoginThrottle(clock=clock)
    three, four = _from(app_ctx, "10.0.0.3"), _from(app_ctx, "10.0.0.4")
    async with three, four:
        for _ in range(4):
            assert (await _login(three, "op-a", "wrong pass!")).status_code == 401
        assert (await _login(three, "op-a", PASSWORD)).status_code == 200
        for _ in range(5):  # the count starts again: five more tries before a refusal
            assert (await _login(three, "op-a", "wrong pass!")).status_code == 401
        assert (await _login(three, "op-a", PASSWORD)).status_code == 429
        # A guesser's own good login does not clear its failures against other names.
        for name in ("ghost-1", "ghost-2"):
            assert (await _login(four, name, "wrong pass!")).status_code == 401
        for _ in range(2):
            assert (await _login(four, "op-b", "wrong pass!")).status_code == 401
        assert (await _login(four, "op-b", PASSWORD)).status_code == 200
        for name in ("ghost-3", "ghost-4", "ghost-5"):  # two left from before: five
            assert (await _login(four, name, "wrong pass!")).status_code == 401
        assert (await _login(four, "op-b", PASSWORD)).status_code == 429


async def test_form_logins_count_toward_the_same_limit(
    app_ctx: tuple[WebContext, httpx.ASGITransport],
) -> None:
    clock = Clock()
    app_ctx[0].login_throttle = LoginThrottle(clock=clock)
    async with _from(app_ctx, "10.0.0.5") as five, _from(app_ctx, "10.0.0.6") as six:
        for _ in range(5):
            form = {"username": "health", "password": "wrong pass!"}
            assert (await five.post("/login", data=form)).status_code == 401
        english = await six.post(
            "/login?lang=en", data={"username": "health", "password": PASSWORD}
        )
        assert english.status_code == 429 and "Too many failed logins" in english.text
        assert english.headers["retry-after"] == str(15 * 60)
        assert (await _login(six, "health", PASSWORD)).status_code == 429
        clock.now += 15 * 60
        ok = await six.post("/login", data={"username": "health", "password": PASSWORD})
        assert ok.status_code == 303 and "qrgate_session" in ok.headers["set-cookie"]


async def test_rollout_report_as_two_csv_files(clients: Clients, world: World) -> None:
    month = world.t0.astimezone(TZ).strftime("%Y-%m")
    url = f"/api/rollout/file?month={month}&format="
    assert (await clients["op-a"].get(url + "csv")).status_code == 403
    summary = await clients["health"].get(url + "csv")
    assert summary.status_code == 200 and summary.headers["content-type"].startswith("text/csv")
    assert f'filename="rollout-{month}.csv"' in summary.headers["content-disposition"]
    assert summary.content.startswith(b"\xef\xbb\xbf")
    areas = list(csv.DictReader(io.StringIO(summary.content.decode("utf-8-sig"))))
    assert sum(int(a["check-ins"]) for a in areas) == 5
    assert {a["category"] for a in areas} >= {"factory", "restaurant"}
    daily = await clients["admin"].get(url + "csv-daily")
    assert daily.status_code == 200
    assert f'filename="rollout-{month}-daily.csv"' in daily.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(daily.content.decode("utf-8-sig"))))
    per_site: dict[str, int] = {}
    for row in rows:
        per_site[row["site id"]] = per_site.get(row["site id"], 0) + int(row["check-ins"])
    assert per_site == {"may-a": 4, "quan-b": 1}
    assert (await clients["admin"].get(url + "zip")).status_code == 422
    page = await clients["admin"].get(f"/rollout?month={month}")
    assert "format=csv-daily" in page.text and 'id="rollout-csv"' in page.text
