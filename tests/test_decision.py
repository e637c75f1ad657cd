"""Decisions: debounce, rejections as check-ins, pseudonymous subjects, nothing personal shown."""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from broker.sealing import Opener, Sealer, SealingError, new_authority_key
from device.decision import Decider, initials, subject_key
from provisioning.people import synthetic_people

KEY = b"k" * 32
NOW = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def decider(clock: Clock, debounce_s: float = 3.0) -> Decider:
    return Decider(
        key=KEY, direction="in", debounce_s=debounce_s, monotonic=clock, wall_clock=lambda: NOW
    )


def test_same_code_within_the_window_is_one_event() -> None:
    clock = Clock()
    d = decider(clock)
    card = synthetic_people(1, seed=5, today=date(2026, 11, 23))[0].card_text()
    assert d.decide(card) is not None
    clock.t += 1.0
    assert d.decide(card) is None
    clock.t += 2.5  # still held in front of the camera: the window restarts at each sighting
    assert d.decide(card) is None
    clock.t += 3.1
    assert d.decide(card) is not None


def test_different_codes_are_separate_events() -> None:
    clock = Clock()
    d = decider(clock)
    a, b = (p.card_text() for p in synthetic_people(2, seed=6, today=date(2026, 11, 23)))
    assert d.decide(a) is not None
    assert d.decide(b) is not None


def test_accepted_card_becomes_a_pseudonymous_check_in() -> None:
    person = synthetic_people(1, seed=7, today=date(2026, 11, 23))[0]
    decision = decider(Clock()).decide(person.card_text())
    assert decision is not None and decision.accepted
    record = decision.checkin(seq=9)
    assert (record.seq, record.kind, record.reason, record.direction) == (9, "cccd", "ok", "in")
    assert record.subject == subject_key(KEY, "cccd", person.id_number)
    assert person.id_number not in record.subject
    assert record.sealed is None, "no authority key configured: no identity leaves the gate"
    assert record.initials == initials(person.name)
    shown = decision.describe()
    assert person.id_number not in shown and person.name not in shown
    assert shown.startswith("ACCEPT")


def test_rejections_are_check_ins_with_their_reason() -> None:
    d = decider(Clock())
    other = d.decide("https://example.vn/menu")
    assert other is not None and not other.accepted
    record = other.checkin(seq=1)
    assert (record.kind, record.reason, record.subject, record.sealed) == (
        "unrecognized",
        "unrecognized",
        None,
        None,
    )
    person = synthetic_people(1, seed=8, today=date(2026, 11, 23))[0]
    future = person.card_text().rsplit("|", 1)[0] + "|01012099"
    bad = d.decide(future)
    assert bad is not None and not bad.accepted
    assert bad.checkin(seq=2).reason == "cccd_future_date"
    assert bad.subject == subject_key(KEY, "cccd", person.id_number), "who tried is kept"


def test_subject_key_depends_on_the_province_key() -> None:
    assert subject_key(KEY, "cccd", "001099012345") != subject_key(
        b"x" * 32, "cccd", "001099012345"
    )
    assert len(subject_key(KEY, "cccd", "001099012345")) == 32


def test_identity_is_sealed_to_the_health_authority() -> None:
    private, public = new_authority_key()
    d = Decider(
        key=KEY,
        debounce_s=3.0,
        monotonic=Clock(),
        wall_clock=lambda: NOW,
        sealer=Sealer(public),
    )
    person = synthetic_people(1, seed=9, today=date(2026, 11, 23))[0]
    decision = d.decide(person.card_text())
    assert decision is not None
    record = decision.checkin(seq=1)
    assert record.sealed is not None
    payload = record.model_dump_json()
    assert person.id_number not in payload and person.name not in payload
    key_file = Path(tempfile.mkdtemp()) / "authority.key"
    key_file.write_text(private)
    opened = Opener.from_file(key_file).open(record.sealed)
    assert (opened.id_number, opened.name) == (person.id_number, person.name)
    assert opened.date_of_birth == person.date_of_birth.isoformat()
    _, other_public = new_authority_key()
    other = Decider(
        key=KEY, debounce_s=3.0, monotonic=Clock(), wall_clock=lambda: NOW,
        sealer=Sealer(other_public),
    )  # fmt: skip
    foreign = other.decide(person.card_text())
    assert foreign is not None and foreign.sealed is not None
    with pytest.raises(SealingError):
        Opener.from_file(key_file).open(foreign.sealed)
