"""LED and buzzer patterns, observed on gpiozero's mock pins."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gpiozero
import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory

from broker.settings import SignalsConfig as PinsConfig
from device.signals import Signals

# Not the defaults, so the tests show the configured pins are the ones driven.
PINS = PinsConfig(green_led=5, red_led=6, buzzer=13)
ALL_PINS = (PINS.green_led, PINS.red_led, PINS.buzzer)

FAST = {"accept_light_s": 0.03, "accept_beep_s": 0.01, "reject_on_s": 0.01, "reject_off_s": 0.01}
# Long enough that a pattern is surely still running when the test looks.
SLOW = {"accept_light_s": 60.0, "accept_beep_s": 60.0, "reject_on_s": 60.0, "reject_off_s": 60.0}

DEADLINE_S = 5.0
# After a pattern looks finished, wait this long more so a wrong extra blink would show.
SETTLE_S = 0.2

ONE_PULSE = [False, True, False]
THREE_PULSES = [False, True, False, True, False, True, False]


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


def history(factory: MockFactory, pin: int) -> list[bool]:
    """Every level the pin has had, starting with its level before the test."""
    return [bool(change.state) for change in factory.pin(pin).states]


def level(factory: MockFactory, pin: int) -> bool:
    return bool(factory.pin(pin).state)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {DEADLINE_S} s")
        time.sleep(0.002)


def wait_for_histories(factory: MockFactory, expected: dict[int, list[bool]]) -> None:
    def reached() -> bool:
        return all(len(history(factory, pin)) >= len(want) for pin, want in expected.items())

    wait_until(reached)
    time.sleep(SETTLE_S)
    assert {pin: history(factory, pin) for pin in expected} == expected


def test_accept_lights_green_and_beeps_once(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **FAST) as signals:
        signals.accept()
        wait_for_histories(
            factory,
            {PINS.green_led: ONE_PULSE, PINS.buzzer: ONE_PULSE, PINS.red_led: [False]},
        )


def test_reject_blinks_red_and_beeps_three_times(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **FAST) as signals:
        signals.reject()
        wait_for_histories(
            factory,
            {PINS.red_led: THREE_PULSES, PINS.buzzer: THREE_PULSES, PINS.green_led: [False]},
        )


def test_accept_returns_while_the_pattern_runs(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **SLOW) as signals:
        signals.accept()
        # Had accept waited out its 60 s pattern, the pins would be low again.
        wait_until(lambda: level(factory, PINS.green_led) and level(factory, PINS.buzzer))
        assert history(factory, PINS.green_led) == [False, True]


def test_reject_returns_while_the_pattern_runs(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **SLOW) as signals:
        signals.reject()
        wait_until(lambda: level(factory, PINS.red_led) and level(factory, PINS.buzzer))
        assert history(factory, PINS.red_led) == [False, True]


def test_new_pattern_cancels_the_running_one(factory: MockFactory) -> None:
    # Only the reject pattern is long, so it is surely cut short by accept.
    with Signals(PINS, pin_factory=factory, **{**FAST, "reject_on_s": 60.0}) as signals:
        signals.reject()
        wait_until(lambda: level(factory, PINS.red_led))
        signals.accept()
        assert not level(factory, PINS.red_led)
        wait_for_histories(
            factory,
            {
                PINS.red_led: ONE_PULSE,
                PINS.green_led: ONE_PULSE,
                # The reject beep cut short, then the accept beep.
                PINS.buzzer: [False, True, False, True, False],
            },
        )


def test_close_mid_pattern_leaves_every_pin_low(factory: MockFactory) -> None:
    signals = Signals(PINS, pin_factory=factory, **SLOW)
    signals.reject()
    wait_until(lambda: level(factory, PINS.red_led))
    signals.close()
    assert [level(factory, pin) for pin in ALL_PINS] == [False, False, False]


def test_close_releases_the_pins_and_is_idempotent(factory: MockFactory) -> None:
    signals = Signals(PINS, pin_factory=factory, **FAST)
    signals.close()
    signals.close()
    for pin in ALL_PINS:
        with gpiozero.LED(pin, pin_factory=factory) as led:
            assert led.pin is factory.pin(pin)


def test_context_manager_closes(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **SLOW) as signals:
        signals.accept()
        wait_until(lambda: level(factory, PINS.green_led))
    assert [level(factory, pin) for pin in ALL_PINS] == [False, False, False]
    gpiozero.Buzzer(PINS.buzzer, pin_factory=factory).close()


def test_patterns_after_close_are_ignored(factory: MockFactory) -> None:
    signals = Signals(PINS, pin_factory=factory, **FAST)
    signals.close()
    signals.accept()
    signals.reject()
    time.sleep(SETTLE_S)
    assert [history(factory, pin) for pin in ALL_PINS] == [[False], [False], [False]]


def test_pin_in_use_releases_the_pins_already_opened(factory: MockFactory) -> None:
    with gpiozero.LED(PINS.red_led, pin_factory=factory):
        # Keeping the traceback keeps the half-built object alive, so gpiozero's
        # own __del__ cannot release the green pin behind our back.
        with pytest.raises(GPIOPinInUse) as caught:
            Signals(PINS, pin_factory=factory)
        with gpiozero.LED(PINS.green_led, pin_factory=factory) as green:
            assert green.pin is factory.pin(PINS.green_led)
        assert caught.tb is not None


def test_reject_cancels_a_running_accept(factory: MockFactory) -> None:
    with Signals(PINS, pin_factory=factory, **{**FAST, "accept_light_s": 60.0}) as signals:
        signals.accept()
        wait_until(lambda: level(factory, PINS.green_led))
        signals.reject()
        assert not level(factory, PINS.green_led)
        wait_for_histories(
            factory,
            {
                PINS.green_led: ONE_PULSE,
                PINS.red_led: THREE_PULSES,
                # The accept beep, then the three reject beeps.
                PINS.buzzer: [False, True, False, True, False, True, False, True, False],
            },
        )
