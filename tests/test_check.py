"""``python -m device check``: the technician's interface, run as scripts run it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import ROOT
from provisioning.badges import generate_issuer_key, issue_badge
from provisioning.people import synthetic_people, write_frames

DCC_SUITE = ROOT.parent / "shared" / "corpus" / "dcc-testdata"


def check(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "device", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "one JSON object, one line"
    out: dict[str, Any] = json.loads(lines[0])
    assert {"kind", "accepted", "reason"} <= out.keys()
    return out


def test_cccd_text_and_image(tmp_path: Path) -> None:
    person = synthetic_people(1, seed=21, today=date.today())[0]
    out = check(person.card_text())
    assert (out["kind"], out["accepted"], out["reason"], out["source"]) == (
        "cccd",
        True,
        "ok",
        "text",
    )
    assert person.id_number not in json.dumps(out), "the full ID number is never printed"
    assert person.name not in json.dumps(out, ensure_ascii=False)
    assert out["id_number"].startswith(person.id_number[:3]) and "*" in out["id_number"]
    assert out["birth_year"] == str(person.date_of_birth.year)

    [frame] = write_frames(tmp_path / "frames", [person.card_text()], seed=2)
    from_image = check(str(frame))
    assert (from_image["source"], from_image["accepted"]) == ("image", True)
    [blank] = write_frames(tmp_path / "blank", [None], seed=3)
    assert check(str(blank))["reason"] == "no_code_found"


def test_rejections_say_why() -> None:
    person = synthetic_people(1, seed=22, today=date.today())[0]
    future = person.card_text().rsplit("|", 1)[0] + "|01012099"
    assert check(future)["reason"] == "cccd_future_date"
    assert check("https://example.vn/")["reason"] == "unrecognized"


def test_badge_with_and_without_the_issuer_keys(tmp_path: Path) -> None:
    key = generate_issuer_key("site-a-1")
    now = datetime.now(UTC)
    badge = issue_badge(
        key,
        subject_id="NV-0042",
        name="Trần Thị Hồng Nhung",
        site_id="factory-a",
        zones=["xuong-1"],
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=30),
    )
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"site-a-1": key.public_text()}))
    ok = check(badge.text, "--badge-keys", str(keys), "--site", "factory-a")
    assert (ok["kind"], ok["accepted"], ok["zones"], ok["name"]) == (
        "badge",
        True,
        ["xuong-1"],
        "T. T. H. Nhung",
    )
    assert check(badge.text, "--badge-keys", str(keys), "--site", "factory-b")["reason"] == (
        "badge_wrong_site"
    )
    assert check(badge.text)["reason"] == "badge_unknown_key"
    later = (now + timedelta(days=31)).isoformat()
    assert check(badge.text, "--badge-keys", str(keys), "--at", later)["reason"] == "badge_expired"


@pytest.mark.skipif(not DCC_SUITE.exists(), reason="shared DCC test suite not present")
def test_health_pass_against_a_trust_file(tmp_path: Path) -> None:
    case = json.loads((DCC_SUITE / "AT" / "2DCode" / "raw" / "1.json").read_text())
    cert = x509.load_der_x509_certificate(base64.b64decode(case["TESTCTX"]["CERTIFICATE"]))
    trust = tmp_path / "signers.pem"
    trust.write_bytes(cert.public_bytes(Encoding.PEM))
    clock = case["TESTCTX"]["VALIDATIONCLOCK"]
    ok = check(case["PREFIX"], "--trust", str(trust), "--at", clock)
    assert (ok["kind"], ok["accepted"], ok["reason"]) == ("dcc", True, "ok")
    assert ok["details"]["type"] == "vaccination"
    assert check(case["PREFIX"], "--at", clock)["reason"] == "dcc_unknown_signer"
    expired = check(case["PREFIX"], "--trust", str(trust), "--at", "2030-01-01T00:00:00+00:00")
    assert expired["accepted"] is False
