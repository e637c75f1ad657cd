"""Decisions: debounce, rejections as check-ins, pseudonymous subjects, nothing personal shown."""

from __future__ import annotations

from datetime import UTC, date, datetime

from device.decision import Decider, subject_key
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
    assert record.personal is not None and record.personal.id_number == person.id_number
    shown = decision.describe()
    assert person.id_number not in shown and person.name not in shown
    assert shown.startswith("ACCEPT")


def test_rejections_are_check_ins_with_their_reason() -> None:
    d = decider(Clock())
    other = d.decide("https://example.vn/menu")
    assert other is not None and not other.accepted
    record = other.checkin(seq=1)
    assert (record.kind, record.reason, record.subject, record.personal) == (
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
