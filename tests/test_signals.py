"""Lights, buzzer, relay and button patterns, observed on gpiozero's mock pins."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import gpiozero
import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPWMPin

from broker.settings import SignalsConfig
from device.signals import TONES, Signals

# Not the defaults, so the tests show the configured pins are the ones driven.
GREEN, RED, BUZZER, RELAY, BUTTON = 5, 6, 13, 19, 26
RGB_RED, RGB_GREEN, RGB_BLUE = 16, 20, 21
PULSE_S = 0.2

PAIR = SignalsConfig(
    green_led=GREEN, red_led=RED, buzzer=BUZZER, relay=RELAY, relay_pulse_s=PULSE_S, button=BUTTON
)
RGB = SignalsConfig(
    led="rgb",
    rgb_pins=(RGB_RED, RGB_GREEN, RGB_BLUE),
    buzzer=BUZZER,
    relay=RELAY,
    relay_pulse_s=PULSE_S,
)


class Durations(TypedDict, total=False):
    """The pattern timings Signals takes by keyword."""

    accept_light_s: float
    accept_beep_s: float
    reject_on_s: float
    reject_off_s: float
    link_on_s: float
    link_off_s: float
    ack_on_s: float
    ack_off_s: float


FAST = Durations(
    accept_light_s=0.03,
    accept_beep_s=0.01,
    reject_on_s=0.01,
    reject_off_s=0.01,
    link_on_s=0.02,
    link_off_s=0.02,
    ack_on_s=0.01,
    ack_off_s=0.01,
)
# Long enough that a pattern is surely still running when the test looks.
SLOW = Durations(
    accept_light_s=60.0,
    accept_beep_s=60.0,
    reject_on_s=60.0,
    reject_off_s=60.0,
    link_on_s=60.0,
    link_off_s=60.0,
    ack_on_s=60.0,
    ack_off_s=60.0,
)
# Amber stays lit, so what a pattern during link-down does shows in the histories.
STEADY_AMBER = FAST | Durations(link_on_s=60.0)

DEADLINE_S = 5.0
# After a pattern looks finished, wait this long more so a wrong extra change would show.
SETTLE_S = 0.2

ONE_PULSE = [False, True, False]
TWO_PULSES = [False, True, False, True, False]
THREE_PULSES = [False, True, False, True, False, True, False]


def with_changes(config: SignalsConfig, **changes: Any) -> SignalsConfig:
    return SignalsConfig.model_validate({**config.model_dump(), **changes})


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
def pwm_factory() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


def history(factory: MockFactory, pin: int) -> list[bool]:
    """Every level the pin has had, starting with its level before the test."""
    return [bool(change.state) for change in factory.pin(pin).states]


def level(factory: MockFactory, pin: int) -> bool:
    return bool(factory.pin(pin).state)


def playing(factory: MockFactory, pin: int) -> tuple[float | None, float]:
    """A PWM pin's frequency (None: stopped) and duty cycle."""
    mock = factory.pin(pin)
    return mock.frequency, float(mock.state)


def seconds_in_each_level(factory: MockFactory, pin: int) -> list[float]:
    """How long the pin stayed at each level before the next change."""
    return [change.timestamp for change in factory.pin(pin).states[1:]]


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


def test_accept_lights_green_beeps_once_and_pulses_the_relay(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **FAST) as signals:
        signals.accept()
        wait_for_histories(
            factory,
            {GREEN: ONE_PULSE, BUZZER: ONE_PULSE, RELAY: ONE_PULSE, RED: [False]},
        )
        assert seconds_in_each_level(factory, RELAY)[1] >= PULSE_S


def test_reject_blinks_red_and_beeps_three_times_and_leaves_the_relay(
    factory: MockFactory,
) -> None:
    with Signals(PAIR, pin_factory=factory, **FAST) as signals:
        signals.reject()
        wait_for_histories(
            factory,
            {RED: THREE_PULSES, BUZZER: THREE_PULSES, GREEN: [False], RELAY: [False]},
        )


@pytest.mark.parametrize(
    ("pattern", "pins"),
    [("accept", (GREEN, BUZZER, RELAY)), ("reject", (RED, BUZZER))],
)
def test_patterns_return_while_they_run(
    factory: MockFactory, pattern: str, pins: tuple[int, ...]
) -> None:
    slow = with_changes(PAIR, relay_pulse_s=30)
    with Signals(slow, pin_factory=factory, **SLOW) as signals:
        getattr(signals, pattern)()
        # Had the call waited out its 60 s pattern, the pins would be low again.
        wait_until(lambda: all(level(factory, pin) for pin in pins))
        assert [history(factory, pin) for pin in pins] == [[False, True]] * len(pins)


def test_accept_cancels_a_running_reject(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **(FAST | Durations(reject_on_s=60.0))) as signals:
        signals.reject()
        wait_until(lambda: level(factory, RED))
        signals.accept()
        wait_for_histories(
            factory,
            {
                RED: ONE_PULSE,
                GREEN: ONE_PULSE,
                # The reject beep cut short, then the accept beep.
                BUZZER: [False, True, False, True, False],
                RELAY: ONE_PULSE,
            },
        )


def test_reject_cancels_a_running_accept_but_not_its_relay_pulse(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **(FAST | Durations(accept_light_s=60.0))) as signals:
        signals.accept()
        wait_until(lambda: level(factory, GREEN))
        signals.reject()
        wait_for_histories(
            factory,
            {
                GREEN: ONE_PULSE,
                RED: THREE_PULSES,
                # The accept beep, then the three reject beeps.
                BUZZER: [False, True, False, True, False, True, False, True, False],
                RELAY: ONE_PULSE,
            },
        )
        assert seconds_in_each_level(factory, RELAY)[1] >= PULSE_S


def test_accept_during_a_relay_pulse_extends_it(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **FAST) as signals:
        signals.accept()
        wait_until(lambda: level(factory, RELAY))
        time.sleep(PULSE_S / 2)
        signals.accept()
        wait_for_histories(factory, {RELAY: ONE_PULSE})
        # Held from the first accept until a whole pulse after the second.
        assert seconds_in_each_level(factory, RELAY)[1] >= 1.5 * PULSE_S


def test_active_low_relay_inverts_the_levels(factory: MockFactory) -> None:
    active_low = with_changes(PAIR, relay_active_high=False)
    with Signals(active_low, pin_factory=factory, **FAST) as signals:
        assert level(factory, RELAY)
        factory.pin(RELAY).clear_states()
        signals.accept()
        wait_for_histories(factory, {RELAY: [True, False, True]})
        assert seconds_in_each_level(factory, RELAY)[1] >= PULSE_S
    assert level(factory, RELAY)


def test_rgb_accept_lights_the_green_channel(factory: MockFactory) -> None:
    with Signals(RGB, pin_factory=factory, **FAST) as signals:
        signals.accept()
        wait_for_histories(
            factory,
            {
                RGB_GREEN: ONE_PULSE,
                RGB_RED: [False],
                RGB_BLUE: [False],
                BUZZER: ONE_PULSE,
                RELAY: ONE_PULSE,
            },
        )


def test_rgb_reject_blinks_the_red_channel(factory: MockFactory) -> None:
    with Signals(RGB, pin_factory=factory, **FAST) as signals:
        signals.reject()
        wait_for_histories(
            factory,
            {RGB_RED: THREE_PULSES, RGB_GREEN: [False], RGB_BLUE: [False], RELAY: [False]},
        )


def test_rgb_amber_is_red_and_green(factory: MockFactory) -> None:
    with Signals(RGB, pin_factory=factory, **STEADY_AMBER) as signals:
        signals.link_down(True)
        wait_until(lambda: level(factory, RGB_RED) and level(factory, RGB_GREEN))
        assert not level(factory, RGB_BLUE)
        signals.link_down(False)
        wait_for_histories(factory, {RGB_RED: ONE_PULSE, RGB_GREEN: ONE_PULSE, RGB_BLUE: [False]})


def test_common_anode_rgb_inverts_the_levels(factory: MockFactory) -> None:
    anode = with_changes(RGB, rgb_common_anode=True)
    with Signals(anode, pin_factory=factory, **FAST) as signals:
        assert [level(factory, pin) for pin in (RGB_RED, RGB_GREEN, RGB_BLUE)] == [True] * 3
        for pin in (RGB_RED, RGB_GREEN, RGB_BLUE):
            factory.pin(pin).clear_states()
        signals.accept()
        wait_for_histories(
            factory, {RGB_GREEN: [True, False, True], RGB_RED: [True], RGB_BLUE: [True]}
        )
    assert [level(factory, pin) for pin in (RGB_RED, RGB_GREEN, RGB_BLUE)] == [True] * 3


def test_tonal_buzzer_plays_high_for_accept_and_low_for_reject(
    pwm_factory: MockFactory,
) -> None:
    tonal = with_changes(PAIR, buzzer_type="tonal")
    with Signals(tonal, pin_factory=pwm_factory, **SLOW) as signals:
        assert playing(pwm_factory, BUZZER) == (None, 0)
        signals.accept()
        wait_until(lambda: playing(pwm_factory, BUZZER)[0] is not None)
        accept_hz, accept_duty = playing(pwm_factory, BUZZER)
        signals.reject()
        wait_until(lambda: playing(pwm_factory, BUZZER)[0] not in (None, accept_hz))
        reject_hz, reject_duty = playing(pwm_factory, BUZZER)
    assert (accept_hz, reject_hz) == pytest.approx(
        (TONES["high"].frequency, TONES["low"].frequency)
    )
    assert reject_hz is not None and accept_hz is not None and reject_hz < accept_hz
    assert (accept_duty, reject_duty) == (0.5, 0.5)
    assert playing(pwm_factory, BUZZER) == (None, 0)


def test_tonal_buzzer_beeps_once_for_accept(pwm_factory: MockFactory) -> None:
    tonal = with_changes(PAIR, buzzer_type="tonal")
    with Signals(tonal, pin_factory=pwm_factory, **FAST) as signals:
        signals.accept()
        wait_for_histories(pwm_factory, {BUZZER: ONE_PULSE, GREEN: ONE_PULSE})


def test_no_buzzer_still_lights(factory: MockFactory) -> None:
    silent = with_changes(PAIR, buzzer=None)
    with Signals(silent, pin_factory=factory, **FAST) as signals:
        signals.reject()
        wait_for_histories(factory, {RED: THREE_PULSES, BUZZER: [False]})


def test_link_down_blinks_amber_until_link_up(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **FAST) as signals:
        signals.link_down(True)
        wait_until(lambda: history(factory, GREEN).count(True) >= 3)
        signals.link_down(False)
        wait_until(lambda: not level(factory, GREEN) and not level(factory, RED))
        time.sleep(SETTLE_S)
        green, red = history(factory, GREEN), history(factory, RED)
        assert green.count(True) >= 3
        # Alternating levels, ending low: each change is a blink, not a glitch.
        assert green == [i % 2 == 1 for i in range(len(green))]
        assert green[-1] is False
        assert red == green
        assert history(factory, BUZZER) == [False]
        assert history(factory, RELAY) == [False]
        time.sleep(SETTLE_S)
        assert history(factory, GREEN) == green


def test_link_down_lights_green_and_red_together(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **STEADY_AMBER) as signals:
        signals.link_down(True)
        wait_until(lambda: level(factory, GREEN) and level(factory, RED))


def test_reject_during_link_down_then_amber_resumes(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **STEADY_AMBER) as signals:
        signals.link_down(True)
        wait_until(lambda: level(factory, GREEN) and level(factory, RED))
        signals.reject()
        wait_for_histories(
            factory,
            {
                # Amber, off for the reject, amber again.
                GREEN: [False, True, False, True],
                RED: [False, True, *THREE_PULSES, True],
                BUZZER: THREE_PULSES,
                RELAY: [False],
            },
        )


def test_amber_does_not_resume_once_the_link_is_up(factory: MockFactory) -> None:
    slow_accept = STEADY_AMBER | Durations(accept_light_s=0.3)
    with Signals(PAIR, pin_factory=factory, **slow_accept) as signals:
        signals.link_down(True)
        wait_until(lambda: level(factory, RED))
        signals.accept()
        signals.link_down(False)
        wait_for_histories(factory, {GREEN: TWO_PULSES, RED: ONE_PULSE})


def test_button_press_calls_on_button_once(factory: MockFactory) -> None:
    presses: list[None] = []
    with Signals(PAIR, pin_factory=factory, on_button=lambda: presses.append(None)):
        button = factory.pin(BUTTON)
        for expected in (1, 2):
            button.drive_low()
            wait_until(lambda: len(presses) >= expected)  # noqa: B023
            button.drive_high()
            time.sleep(SETTLE_S)
            assert len(presses) == expected


def test_failing_button_handler_is_logged(
    factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("handler bug")

    with Signals(PAIR, pin_factory=factory, on_button=broken):
        factory.pin(BUTTON).drive_low()
        wait_until(lambda: "button handler failed" in caplog.text)
        factory.pin(BUTTON).drive_high()
    assert any(record.levelno == logging.ERROR for record in caplog.records)


@pytest.mark.parametrize(("direction", "lit", "dark"), [("in", GREEN, RED), ("out", RED, GREEN)])
def test_direction_changed_blinks_twice_without_sound(
    factory: MockFactory, direction: str, lit: int, dark: int
) -> None:
    with Signals(PAIR, pin_factory=factory, **FAST) as signals:
        signals.direction_changed(direction)
        wait_for_histories(
            factory, {lit: TWO_PULSES, dark: [False], BUZZER: [False], RELAY: [False]}
        )


def test_unknown_direction_is_refused(factory: MockFactory) -> None:
    with (
        Signals(PAIR, pin_factory=factory, **FAST) as signals,
        pytest.raises(ValueError, match="sideways"),
    ):
        signals.direction_changed("sideways")


@pytest.mark.parametrize("config", [PAIR, RGB], ids=["pair", "rgb"])
def test_close_mid_pattern_leaves_every_pin_low(
    factory: MockFactory, config: SignalsConfig
) -> None:
    signals = Signals(with_changes(config, relay_pulse_s=30), pin_factory=factory, **SLOW)
    signals.accept()
    signals.link_down(True)
    wait_until(lambda: level(factory, BUZZER) and level(factory, RELAY))
    signals.close()
    outputs = [pin for pin in config.used_pins() if pin != BUTTON]
    assert {pin: level(factory, pin) for pin in outputs} == dict.fromkeys(outputs, False)


def test_close_releases_the_pins_and_is_idempotent(factory: MockFactory) -> None:
    signals = Signals(PAIR, pin_factory=factory, **FAST)
    signals.close()
    signals.close()
    for pin in PAIR.used_pins():
        with gpiozero.LED(pin, pin_factory=factory) as led:
            assert led.pin is factory.pin(pin)


def test_context_manager_closes(factory: MockFactory) -> None:
    with Signals(PAIR, pin_factory=factory, **SLOW) as signals:
        signals.accept()
        wait_until(lambda: level(factory, GREEN))
    assert [level(factory, pin) for pin in (GREEN, RED, BUZZER, RELAY)] == [False] * 4
    gpiozero.Buzzer(BUZZER, pin_factory=factory).close()


def test_patterns_after_close_are_ignored(factory: MockFactory) -> None:
    signals = Signals(PAIR, pin_factory=factory, **FAST)
    signals.close()
    signals.accept()
    signals.reject()
    signals.direction_changed("in")
    signals.link_down(True)
    time.sleep(SETTLE_S)
    assert [history(factory, pin) for pin in (GREEN, RED, BUZZER, RELAY)] == [[False]] * 4


def test_pin_in_use_releases_the_pins_already_opened(factory: MockFactory) -> None:
    with gpiozero.LED(RELAY, pin_factory=factory):
        # Keeping the traceback keeps the half-built object alive, so gpiozero's
        # own __del__ cannot release the other pins behind our back.
        with pytest.raises(GPIOPinInUse) as caught:
            Signals(PAIR, pin_factory=factory)
        for pin in (GREEN, RED, BUZZER):
            with gpiozero.LED(pin, pin_factory=factory) as led:
                assert led.pin is factory.pin(pin)
        assert caught.tb is not None


def test_release_pulses_the_relay_without_a_beep(factory: MockFactory) -> None:
    config = SignalsConfig(green_led=5, red_led=6, buzzer=13, relay=19, relay_pulse_s=0.2)
    with Signals(config, pin_factory=factory) as signals:
        signals.release()
        wait_until(lambda: history(factory, 19) == [False, True, False])
        wait_until(lambda: True in history(factory, 5) and not level(factory, 5))
    assert True not in history(factory, 13), "release is silent"
    assert True not in history(factory, 6)
