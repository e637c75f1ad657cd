"""The dashboard end to end in headless Chromium, over a real site.

A generated site runs its own mosquitto, the gateway (serving the dashboard
on a free port) and one gate reading QR frames of synthetic people. Users are
made with ``python -m gateway user add``. In the browser: the admin logs in,
sees the gate online, pushes a config and sees the applied version change;
the live chart fills; a health officer traces a person and downloads the CSV;
the gate's process stops and the admin's page shows it offline, all without
a reload.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from broker.launcher import Mosquitto, free_port
from conftest import ROOT, SiteMaker, StartService, db_rows, wait_until
from device.config import load_config
from provisioning.site import Site

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-test-password"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        yield browser
        browser.close()


def enable_web(site: Site) -> int:
    port = free_port()
    config = json.loads(site.gateway_config.read_text(encoding="utf-8"))
    config["web"] = {"enabled": True, "port": port, "subject_key_file": str(site.subject_key)}
    site.gateway_config.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return port


def add_user(site: Site, name: str, role: str, *sites: str) -> None:
    extra = [a for s in sites for a in ("--site", s)]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "user", "add", "--config", str(site.gateway_config),
         "--username", name, "--role", role, *extra],
        input=PASSWORD + "\n", cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"user {name} added" in result.stdout


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_in(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/login?next=/")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    expect(page.locator("header .who")).to_contain_text(name)


def test_dashboard_end_to_end(
    tmp_path: Path,
    make_site: SiteMaker,
    people_frames: tuple[list[str], list[Path]],
    broker_for: Callable[[Site], Mosquitto],
    services: StartService,
    browser: Browser,
) -> None:
    site = make_site([people_frames[1][:12]], interval_s=0.2)
    port = enable_web(site)
    base = f"http://127.0.0.1:{port}"
    add_user(site, "admin", "admin")
    add_user(site, "health", "health")
    broker_for(site)
    services("gateway", site.gateway_config).wait_log("granted", 2)
    wait_until(lambda: listening(port), "the dashboard port")
    device = services("device", site.device_config("gate-1"))

    admin = browser.new_context(accept_downloads=True).new_page()
    admin.set_default_timeout(TIMEOUT_MS)
    log_in(admin, base, "admin")
    row = admin.locator("#device-gate-1")
    expect(row).to_have_attribute("data-status", "online")

    # Push a config from the device page; the applied version follows without a reload.
    admin.click("#device-gate-1 a")
    expect(admin.locator("#applied-version")).to_have_text("0")
    settings = load_config(site.device_config("gate-1")).settings().model_dump(mode="json")
    settings["health_interval_s"] = 2.0
    admin.fill("#patch", json.dumps(settings))
    admin.click("#push")
    expect(admin.locator("#pushed")).to_contain_text("1")
    expect(admin.locator("#desired-version")).to_have_text("1")
    expect(admin.locator("#applied-version")).to_have_text("1")
    applied = db_rows(site, "SELECT config_version FROM devices WHERE device_id='gate-1'")
    assert applied == [(1,)]

    # The live chart fills from the check-ins of the last hours.
    wait_until(lambda: len(db_rows(site, "SELECT 1 FROM stays")) >= 10, "stays of 10 people")
    admin.goto(f"{base}/live?lang=en")
    expect(admin.locator("h1")).to_have_text("Check-ins per hour per site")
    expect(admin.locator("#live-total")).not_to_have_text("0")
    datasets = admin.evaluate("window.qrgateLiveChart.data.datasets.length")
    assert datasets == 1

    # A health officer traces one person and downloads the CSV.
    subject = str(db_rows(site, "SELECT subject FROM stays ORDER BY id LIMIT 1")[0][0])
    officer = browser.new_context(accept_downloads=True).new_page()
    officer.set_default_timeout(TIMEOUT_MS)
    log_in(officer, base, "health")
    officer.goto(f"{base}/trace")
    officer.fill("#subject", subject)
    until = (datetime.now() + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M")
    officer.fill("#until", until)
    officer.fill("#threshold", "1")
    officer.fill("#purpose", "browser test case")
    officer.click("#run-trace")
    f1_rows = officer.locator("#f1 tbody tr")
    expect(officer.locator("#trace-result")).to_be_visible()
    assert f1_rows.count() >= 9
    with officer.expect_download() as download_info:
        officer.click("#export-csv")
    path = download_info.value.path()
    text = Path(path).read_bytes().decode("utf-8")
    assert text.startswith("\ufeffsubject,name,ID number,level")
    lines = text.splitlines()
    assert len(lines) >= 10 and all(",F1," in line or ",F2," in line for line in lines[1:])
    actions = db_rows(
        site, "SELECT actor, action, target FROM audit_log WHERE actor != 'system' ORDER BY id"
    )
    assert actions == [
        ("health (web, health)", "trace", subject),
        ("health (web, health)", "export", subject),
    ]

    # The gate's process stops: the admin's devices page shows it offline by itself.
    admin.goto(f"{base}/")
    expect(row).to_have_attribute("data-status", "online")
    assert device.stop() == 0
    expect(row).to_have_attribute("data-status", "offline")
    expect(row.locator(".status-text")).to_have_text("Offline")  # English kept by the cookie
