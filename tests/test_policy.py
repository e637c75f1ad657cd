"""The gate policy: kinds, deny lists, health passes, anti-passback, direction, kept state."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from broker.settings import PolicyConfig
from device.credentials import Verdict
from device.decision import subject_key
from device.policy import Judgement, Policy, PolicyError, name_tokens

KEY = b"k" * 32
T0 = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)
WINDOW = 3600.0

AN = Verdict(
    kind="cccd",
    accepted=True,
    reason="ok",
    id_number="001064012345",
    name="Nguyễn Văn An",
    date_of_birth="1964-08-15",
)
BINH = replace(AN, id_number="079090000111", name="Trần Thị Bình", date_of_birth="1990-02-01")
DUNG = replace(AN, id_number="001185000222", name="Đặng Thị Dung", date_of_birth="1985-11-30")
AN_PASS = Verdict(
    kind="dcc",
    accepted=True,
    reason="ok",
    id_number="URN:UVCI:01:VN:AN",
    name="VAN AN NGUYEN",  # given names first, as a health pass may have it
    date_of_birth="1964-08-15",
)
BINH_PASS = replace(
    AN_PASS, id_number="URN:UVCI:01:VN:BINH", name="Thi Binh Tran", date_of_birth="1990"
)
DUNG_PASS = replace(
    AN_PASS, id_number="URN:UVCI:01:VN:DUNG", name="DUNG DANG THI", date_of_birth="1985"
)
BADGE = Verdict(
    kind="badge",
    accepted=True,
    reason="ok",
    id_number="E-0042",
    name="NGUYEN VAN AN",
    credential_id="b-1",
)
EXPIRED_AN = replace(AN, accepted=False, reason="cccd_expired")
NO_SUBJECT = Verdict(kind="cccd", accepted=True, reason="ok")


def subject_of(verdict: Verdict) -> str | None:
    return subject_key(KEY, verdict.kind, verdict.id_number) if verdict.id_number else None


def ok(direction: Literal["in", "out"] = "in", *warnings: str) -> Judgement:
    return Judgement(True, "ok", direction, warnings)


def refused(reason: str, direction: Literal["in", "out"] = "in") -> Judgement:
    return Judgement(False, reason, direction, ())


@dataclass(frozen=True)
class Scan:
    verdict: Verdict
    at_s: float
    expect: Judgement


class Toggle:
    """Press the direction button."""


@dataclass(frozen=True)
class Case:
    config: dict[str, Any]
    steps: Sequence[Scan | Toggle]
    direction: Literal["in", "out"] = "in"


HEALTH = {"require_health_pass": True, "health_pass_window_s": 120}
BUTTON = {"direction_mode": "button"}


def passback(mode: str) -> dict[str, Any]:
    return {"anti_passback": mode, "passback_window_s": WINDOW}


CASES: dict[str, Case] = {
    "all kinds accepted by default": Case(
        {}, [Scan(AN, 0, ok()), Scan(BADGE, 1, ok()), Scan(AN_PASS, 2, ok())]
    ),
    "kind not accepted": Case(
        {"accept_kinds": ["badge"]},
        [Scan(AN, 0, refused("kind_not_accepted")), Scan(BADGE, 1, ok())],
    ),
    "deny list": Case(
        {"deny_subjects": [subject_of(AN)]},
        [Scan(AN, 0, refused("denied")), Scan(BINH, 1, ok())],
    ),
    "revoked badge": Case(
        {"revoked_badges": ["b-1"]},
        [
            Scan(BADGE, 0, refused("badge_revoked")),
            Scan(replace(BADGE, credential_id="b-2"), 1, ok()),
        ],
    ),
    "rejected verdict keeps its own reason": Case(
        {"accept_kinds": ["badge"], "deny_subjects": [subject_of(AN)]},
        [Scan(EXPIRED_AN, 0, refused("cccd_expired"))],
    ),
    "rejected verdict keeps its direction": Case(
        {}, [Scan(EXPIRED_AN, 0, refused("cccd_expired", "out"))], direction="out"
    ),
    "verdict warnings are kept": Case(
        {}, [Scan(replace(AN, warnings=("expires_soon",)), 0, ok("in", "expires_soon"))]
    ),
    "health pass missing": Case(HEALTH, [Scan(AN, 0, refused("health_pass_required"))]),
    "health pass with diacritics and reversed name order": Case(
        HEALTH, [Scan(AN_PASS, 0, ok()), Scan(AN, 30, ok())]
    ),
    "health pass for Đ": Case(HEALTH, [Scan(DUNG_PASS, 0, ok()), Scan(DUNG, 5, ok())]),
    "health pass with birth year only": Case(
        HEALTH, [Scan(BINH_PASS, 0, ok()), Scan(BINH, 5, ok())]
    ),
    "health pass with birth month": Case(
        HEALTH,
        [Scan(replace(AN_PASS, date_of_birth="1964-08"), 0, ok()), Scan(AN, 5, ok())],
    ),
    "health pass with another birth month": Case(
        HEALTH,
        [
            Scan(replace(AN_PASS, date_of_birth="1964-09"), 0, ok()),
            Scan(AN, 5, refused("health_pass_required")),
        ],
    ),
    "health pass with another birth date": Case(
        HEALTH,
        [
            Scan(replace(AN_PASS, date_of_birth="1964-08-16"), 0, ok()),
            Scan(AN, 5, refused("health_pass_required")),
        ],
    ),
    "health pass of someone else": Case(
        HEALTH, [Scan(BINH_PASS, 0, ok()), Scan(AN, 5, refused("health_pass_required"))]
    ),
    "health pass with one name more": Case(
        HEALTH,
        [
            Scan(replace(AN_PASS, name="VAN AN NGUYEN NGUYEN"), 0, ok()),
            Scan(AN, 5, refused("health_pass_required")),
        ],
    ),
    "health pass expired": Case(
        HEALTH,
        [
            Scan(AN_PASS, 0, ok()),
            Scan(AN, 119, ok()),
            Scan(AN, 121, refused("health_pass_required")),
        ],
    ),
    "health pass rejected by its reader is not remembered": Case(
        HEALTH,
        [
            Scan(
                replace(AN_PASS, accepted=False, reason="dcc_signature"),
                0,
                refused("dcc_signature"),
            ),
            Scan(AN, 5, refused("health_pass_required")),
        ],
    ),
    "health pass of a denied person is not remembered": Case(
        {**HEALTH, "deny_subjects": [subject_of(AN_PASS)]},
        [Scan(AN_PASS, 0, refused("denied")), Scan(AN, 5, refused("health_pass_required"))],
    ),
    "health pass matches a badge by name": Case(
        HEALTH, [Scan(AN_PASS, 0, ok()), Scan(BADGE, 5, ok())]
    ),
    "health passes of a family, then their cards": Case(
        HEALTH,
        [
            Scan(AN_PASS, 0, ok()),
            Scan(BINH_PASS, 5, ok()),
            Scan(BINH, 10, ok()),
            Scan(AN, 15, ok()),
            Scan(AN, 20, ok()),
        ],
    ),
    "no health pass needed to leave": Case(
        {**HEALTH, **BUTTON}, [Toggle(), Scan(AN, 0, ok("out"))]
    ),
    "passback off": Case(passback("off"), [Scan(AN, 0, ok()), Scan(AN, 10, ok())]),
    "passback warn": Case(
        passback("warn"),
        [
            Scan(replace(AN, warnings=("expires_soon",)), 0, ok("in", "expires_soon")),
            Scan(replace(AN, warnings=("expires_soon",)), 10, ok("in", "expires_soon", "passback")),
        ],
    ),
    "passback warn records the new entry": Case(
        passback("warn"),
        [
            Scan(AN, 0, ok()),
            Scan(AN, WINDOW - 10, ok("in", "passback")),
            Scan(AN, WINDOW + 10, ok("in", "passback")),
        ],
    ),
    "passback reject": Case(
        passback("reject"),
        [Scan(AN, 0, ok()), Scan(AN, 10, refused("passback")), Scan(BINH, 20, ok())],
    ),
    "passback window expires, a refusal does not extend it": Case(
        passback("reject"),
        [Scan(AN, 0, ok()), Scan(AN, WINDOW - 10, refused("passback")), Scan(AN, WINDOW + 1, ok())],
    ),
    "passback cleared by going out": Case(
        {**passback("reject"), **BUTTON},
        [
            Scan(AN, 0, ok()),
            Toggle(),
            Scan(AN, 10, ok("out")),
            Toggle(),
            Scan(AN, 20, ok()),
            Scan(AN, 30, refused("passback")),
        ],
    ),
    "passback ignores rejected verdicts": Case(
        passback("reject"), [Scan(EXPIRED_AN, 0, refused("cccd_expired")), Scan(AN, 10, ok())]
    ),
    "passback ignores policy refusals": Case(
        {**passback("reject"), "revoked_badges": ["b-1"]},
        [
            Scan(BADGE, 0, refused("badge_revoked")),
            Scan(replace(BADGE, credential_id="b-2"), 10, ok()),
        ],
    ),
    "passback needs a subject": Case(
        passback("reject"), [Scan(NO_SUBJECT, 0, ok()), Scan(NO_SUBJECT, 10, ok())]
    ),
    "passback after a clock stepped back": Case(
        passback("reject"), [Scan(AN, 100, ok()), Scan(AN, 40, refused("passback"))]
    ),
    "fixed direction out": Case({}, [Scan(AN, 0, ok("out"))], direction="out"),
    "button toggles the direction": Case(
        BUTTON, [Scan(AN, 0, ok()), Toggle(), Scan(AN, 1, ok("out")), Toggle(), Scan(AN, 2, ok())]
    ),
}


def expected(steps: Sequence[Scan | Toggle]) -> list[Judgement]:
    return [s.expect for s in steps if isinstance(s, Scan)]


def run(policy: Policy, steps: Sequence[Scan | Toggle]) -> list[Judgement]:
    results: list[Judgement] = []
    for step in steps:
        if isinstance(step, Toggle):
            policy.toggle_direction()
            continue
        at = T0 + timedelta(seconds=step.at_s)
        results.append(policy.judge(step.verdict, subject_of(step.verdict), now=at))
    return results


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_policy(case: Case, tmp_path: Path) -> None:
    policy = Policy(
        PolicyConfig(**case.config), direction=case.direction, state_path=tmp_path / "policy.db"
    )
    try:
        assert run(policy, case.steps) == expected(case.steps)
    finally:
        policy.close()


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("Nguyễn Văn An", ("AN", "NGUYEN", "VAN")),
        ("  an   nguyen\tvan ", ("AN", "NGUYEN", "VAN")),
        ("NGUYEN<VAN<<AN", ("AN", "NGUYEN", "VAN")),
        ("Đặng Thị Dung", ("DANG", "DUNG", "THI")),
        ("đỗ ĐỨC Ưng", ("DO", "DUC", "UNG")),
        ("Lê Lê", ("LE", "LE")),
        ("", ()),
    ],
)
def test_name_tokens(name: str, tokens: tuple[str, ...]) -> None:
    assert name_tokens(name) == tokens


def test_toggle_in_fixed_mode_is_an_error() -> None:
    policy = Policy(PolicyConfig(), direction="in")
    with pytest.raises(PolicyError):
        policy.toggle_direction()
    assert policy.direction == "in"
    policy.close()


def test_passback_and_direction_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "policy.db"
    config = PolicyConfig(anti_passback="reject", direction_mode="button")
    first = Policy(config, direction="in", state_path=path)
    steps: list[Scan | Toggle] = [Scan(AN, 0, ok()), Toggle(), Toggle()]
    assert run(first, steps) == expected(steps)
    assert first.toggle_direction() == "out"
    first.close()

    again = Policy(config, direction="in", state_path=path)
    assert again.direction == "out", "the button's last choice, not the constructor's"
    assert again.toggle_direction() == "in"
    steps = [Scan(AN, 10, refused("passback")), Scan(BINH, 11, ok())]
    assert run(again, steps) == expected(steps)
    again.close()


def test_fixed_mode_ignores_a_stored_button_direction(tmp_path: Path) -> None:
    path = tmp_path / "policy.db"
    button = Policy(PolicyConfig(direction_mode="button"), direction="in", state_path=path)
    button.toggle_direction()
    button.close()
    fixed = Policy(PolicyConfig(), direction="in", state_path=path)
    assert fixed.direction == "in"
    fixed.close()


def test_without_a_state_path_nothing_survives(tmp_path: Path) -> None:
    config = PolicyConfig(anti_passback="reject")
    first = Policy(config, direction="in")
    steps = [Scan(AN, 0, ok()), Scan(AN, 1, refused("passback"))]
    assert run(first, steps) == expected(steps)
    first.close()
    again = Policy(config, direction="in")
    assert run(again, [Scan(AN, 2, ok())]) == [ok()]
    again.close()
    assert list(tmp_path.iterdir()) == []


def test_old_entries_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "policy.db"
    policy = Policy(
        PolicyConfig(anti_passback="warn", passback_window_s=WINDOW),
        direction="in",
        state_path=path,
    )
    steps = [Scan(AN, 0, ok()), Scan(DUNG, 10, ok()), Scan(BINH, WINDOW + 5, ok())]
    assert run(policy, steps) == expected(steps)
    policy.close()
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT subject FROM open_entry").fetchall()
    assert {s for (s,) in rows} == {subject_of(DUNG), subject_of(BINH)}, "AN's entry has expired"


def test_an_unusable_state_path_is_a_policy_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PolicyError):
        Policy(PolicyConfig(), direction="in", state_path=blocker / "policy.db")
