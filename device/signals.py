"""The gate's lights, buzzer, relay and button, driven through gpiozero."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal

import gpiozero
from gpiozero.tones import Tone

from broker.settings import SignalsConfig

logger = logging.getLogger(__name__)

Colour = tuple[int, int, int]
"""(red, green, blue), each 0 or 1: the RGB LED is driven without PWM."""
Pitch = Literal["high", "low"]

OFF: Colour = (0, 0, 0)
GREEN: Colour = (0, 1, 0)
RED: Colour = (1, 0, 0)
AMBER: Colour = (1, 1, 0)

# A passive piezo is loudest around 2-4 kHz; an octave apart is told apart at once.
TONES: dict[Pitch, Tone] = {"high": Tone("C7"), "low": Tone("C6")}
# Wide enough a range for both tones (TonalBuzzer refuses tones outside it).
_MID_TONE = Tone("A5")
_OCTAVES = 2

ShowLights = Callable[[Colour], None]
PlaySound = Callable[[Pitch | None], None]
_Cue = tuple[float, Callable[[], None]]


@dataclass(frozen=True)
class _Pattern:
    """Actions to run so many seconds after the pattern starts; it lasts ``length_s``."""

    cues: tuple[_Cue, ...]
    length_s: float

    @classmethod
    def of(cls, cues: list[_Cue], length_s: float) -> _Pattern:
        # A stable sort: actions due at the same time keep their order.
        return cls(tuple(sorted(cues, key=lambda cue: cue[0])), length_s)


class Signals:
    """A gate's lights, buzzer, relay and button; patterns play in the background.

    The lights are a green/red LED pair or one RGB LED (``config.led``), the
    buzzer an active one or a passive piezo played with tones, and both the
    relay and the button are optional. One worker thread owns the lights and
    the buzzer, so ``accept`` and the other patterns only post a pattern and
    return at once, never slowing the scan loop. A new pattern switches the
    lights and buzzer off before it starts, so nothing of the one it replaces
    stays on. While the link is down the lights blink amber whenever no other
    pattern is playing.

    The relay is pulsed by gpiozero's own blink thread and is left alone by
    every other pattern: a reject right after an accept must not shut the door
    on the person just let through.

    ``on_button`` runs on gpiozero's event thread, not the caller's. It must
    only hand the press over to the caller's event loop (for instance with
    ``loop.call_soon_threadsafe``) and return.
    """

    ACCEPT_LIGHT_S = 0.6
    ACCEPT_BEEP_S = 0.15
    REJECT_ON_S = 0.15
    REJECT_OFF_S = 0.15
    REJECT_TIMES = 3
    LINK_ON_S = 1.0
    LINK_OFF_S = 1.0
    ACK_ON_S = 0.1
    ACK_OFF_S = 0.1
    ACK_TIMES = 2
    # Enrollment patterns are long and distinct: they answer a technician, not a passer-by.
    ENROLLED_ON_S = 0.2
    ENROLLED_OFF_S = 0.2
    ENROLLED_TIMES = 5
    ENROLL_FAILED_S = 2.0

    def __init__(
        self,
        config: SignalsConfig,
        *,
        pin_factory: gpiozero.Factory | None = None,
        on_button: Callable[[], None] | None = None,
        accept_light_s: float = ACCEPT_LIGHT_S,
        accept_beep_s: float = ACCEPT_BEEP_S,
        reject_on_s: float = REJECT_ON_S,
        reject_off_s: float = REJECT_OFF_S,
        link_on_s: float = LINK_ON_S,
        link_off_s: float = LINK_OFF_S,
        ack_on_s: float = ACK_ON_S,
        ack_off_s: float = ACK_OFF_S,
    ) -> None:
        self._relay_pulse_s = config.relay_pulse_s
        self._link_on_s = link_on_s
        self._link_off_s = link_off_s
        self._on_button = on_button
        self._open(config, pin_factory)
        self._accept = self._accept_pattern(accept_light_s, accept_beep_s)
        self._reject = self._blinks(RED, "low", self.REJECT_TIMES, reject_on_s, reject_off_s)
        self._acks = {
            "in": self._blinks(GREEN, None, self.ACK_TIMES, ack_on_s, ack_off_s),
            "out": self._blinks(RED, None, self.ACK_TIMES, ack_on_s, ack_off_s),
        }
        # Guards everything below; the worker holds it except while it waits.
        self._cond = threading.Condition()
        self._closing = threading.Lock()
        self._closed = False
        self._link_down = False
        self._posted: _Pattern | None = None
        self._cues: deque[_Cue] = deque()
        self._pattern_end = 0.0
        self._amber_lit = False
        self._amber_toggle_at = 0.0
        self._worker = threading.Thread(target=self._run, name="signals", daemon=True)
        self._worker.start()

    def accept(self) -> None:
        """Light green and beep once; pulse the relay if there is one."""
        with self._cond:
            if not self._usable("accept"):
                return
            self._post(self._accept)
            if self._relay is not None:
                # Restarting the blink restarts the pulse; the pin stays high meanwhile.
                self._relay.blink(on_time=self._relay_pulse_s, off_time=0, n=1, background=True)

    def release(self) -> None:
        """The exit button: pulse the relay to let someone out, with the green light only."""
        with self._cond:
            if not self._usable("release"):
                return
            self._post(self._acks["in"])
            if self._relay is not None:
                self._relay.blink(on_time=self._relay_pulse_s, off_time=0, n=1, background=True)

    def reject(self) -> None:
        """Blink red and beep low in step, three times; the relay is not touched."""
        with self._cond:
            if self._usable("reject"):
                self._post(self._reject)

    def direction_changed(self, direction: str) -> None:
        """Acknowledge a new direction: two quick green blinks for "in", two red for "out"."""
        pattern = self._acks.get(direction)
        if pattern is None:
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        with self._cond:
            if self._usable(f"direction {direction}"):
                self._post(pattern)

    def enrolled(self) -> float:
        """Enrollment done: five green blinks with a high beep each; returns its length (s)."""
        on, off = self.ENROLLED_ON_S, self.ENROLLED_OFF_S
        pattern = self._blinks(GREEN, "high", self.ENROLLED_TIMES, on, off)
        with self._cond:
            if self._usable("enrolled"):
                self._post(pattern)
        return pattern.length_s

    def enroll_failed(self) -> float:
        """Enrollment refused or failed: red and a low tone, long; returns its length (s)."""
        pattern = self._blinks(RED, "low", 1, self.ENROLL_FAILED_S, self.ENROLLED_OFF_S)
        with self._cond:
            if self._usable("enroll failed"):
                self._post(pattern)
        return pattern.length_s

    def link_down(self, down: bool) -> None:
        """Blink amber slowly while ``down``, between whatever other patterns play."""
        with self._cond:
            if self._closed or down == self._link_down:
                return
            logger.debug("signals: link %s", "down" if down else "up")
            self._link_down = down
            self._cond.notify()

    def close(self) -> None:
        """Switch everything off and release the pins; closing twice does nothing."""
        # A second close waits here until the first has switched everything off.
        with self._closing:
            with self._cond:
                if self._closed:
                    return
                self._closed = True
                self._cond.notify()
            self._worker.join()
            # Every device is released even if switching one off fails.
            with self._release:
                # Closing a pin does not switch it off.
                self._silence()
                if self._relay is not None:
                    self._relay.off()

    def __enter__(self) -> Signals:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self, config: SignalsConfig, pin_factory: Any) -> None:
        # If a later pin cannot be opened, the ones already opened are released.
        with ExitStack() as opened:
            self._show = _open_lights(config, pin_factory, opened)
            self._play = _open_sound(config, pin_factory, opened)
            self._relay: Any = None
            if config.relay is not None:
                self._relay = opened.enter_context(
                    gpiozero.DigitalOutputDevice(
                        config.relay,
                        active_high=config.relay_active_high,
                        initial_value=False,
                        pin_factory=pin_factory,
                    )
                )
            if config.button is not None:
                button = gpiozero.Button(
                    config.button, pull_up=True, bounce_time=0.05, pin_factory=pin_factory
                )
                opened.enter_context(button)
                button.when_pressed = self._pressed
            # Closed last in first out: the button goes first, so no press arrives mid-close.
            self._release = opened.pop_all()

    def _accept_pattern(self, light_s: float, beep_s: float) -> _Pattern:
        cues: list[_Cue] = [
            (0.0, partial(self._show, GREEN)),
            (0.0, partial(self._play, "high")),
            (beep_s, partial(self._play, None)),
            (light_s, partial(self._show, OFF)),
        ]
        return _Pattern.of(cues, max(light_s, beep_s))

    def _blinks(
        self, colour: Colour, pitch: Pitch | None, times: int, on_s: float, off_s: float
    ) -> _Pattern:
        cues: list[_Cue] = []
        for i in range(times):
            start = i * (on_s + off_s)
            cues += [(start, partial(self._show, colour)), (start + on_s, partial(self._show, OFF))]
            if pitch is not None:
                cues += [
                    (start, partial(self._play, pitch)),
                    (start + on_s, partial(self._play, None)),
                ]
        # The last off time is part of the pattern, so a resumed amber blink
        # does not read as one blink more.
        return _Pattern.of(cues, times * (on_s + off_s))

    def _usable(self, pattern: str) -> bool:
        if self._closed:
            logger.warning("signal pattern %s requested after close; ignored", pattern)
            return False
        logger.debug("signal pattern %s", pattern)
        return True

    def _post(self, pattern: _Pattern) -> None:
        self._posted = pattern
        self._cond.notify()

    def _pressed(self) -> None:
        if self._on_button is None:
            return
        try:
            self._on_button()
        except Exception:
            # Raised on gpiozero's thread, it would end up nowhere but stderr.
            logger.exception("button handler failed")

    def _silence(self) -> None:
        self._show(OFF)
        self._play(None)

    def _run(self) -> None:
        try:
            with self._cond:
                while not self._closed:
                    self._cond.wait(self._tick(time.monotonic()))
        except Exception:
            # Else only the thread's stderr would tell why the lights went still.
            logger.exception("signal worker failed; lights and buzzer stop changing")

    def _tick(self, now: float) -> float | None:
        """Do what is due at ``now``; return how long until something else is."""
        if self._posted is not None:
            self._start(self._posted, now)
            self._posted = None
        while self._cues and self._cues[0][0] <= now:
            self._cues.popleft()[1]()
        if self._cues:
            return self._cues[0][0] - now
        if now < self._pattern_end:
            return self._pattern_end - now
        return self._amber(now)

    def _start(self, pattern: _Pattern, now: float) -> None:
        self._silence()
        self._amber_lit = False
        self._amber_toggle_at = 0.0
        self._cues = deque((now + at_s, action) for at_s, action in pattern.cues)
        self._pattern_end = now + pattern.length_s

    def _amber(self, now: float) -> float | None:
        if not self._link_down:
            if self._amber_lit:
                self._show(OFF)
            self._amber_lit = False
            self._amber_toggle_at = 0.0
            return None
        if now >= self._amber_toggle_at:
            self._amber_lit = not self._amber_lit
            self._show(AMBER if self._amber_lit else OFF)
            self._amber_toggle_at = now + (self._link_on_s if self._amber_lit else self._link_off_s)
        return self._amber_toggle_at - now


def _open_lights(config: SignalsConfig, pin_factory: Any, opened: ExitStack) -> ShowLights:
    if config.led == "rgb":
        if config.rgb_pins is None:
            raise ValueError("led 'rgb' needs rgb_pins (red, green, blue)")
        # Without PWM: no software-PWM threads next to the decoder, and any pin
        # factory will do. Amber is then full red plus full green.
        rgb = opened.enter_context(
            gpiozero.RGBLED(
                *config.rgb_pins,
                active_high=not config.rgb_common_anode,
                pwm=False,
                pin_factory=pin_factory,
            )
        )

        def show_rgb(colour: Colour) -> None:
            rgb.value = colour

        return show_rgb
    green = opened.enter_context(gpiozero.LED(config.green_led, pin_factory=pin_factory))
    red = opened.enter_context(gpiozero.LED(config.red_led, pin_factory=pin_factory))

    def show_pair(colour: Colour) -> None:
        green.value = colour[1]
        red.value = colour[0]

    return show_pair


def _open_sound(config: SignalsConfig, pin_factory: Any, opened: ExitStack) -> PlaySound:
    if config.buzzer is None:
        return _no_sound
    if config.buzzer_type == "tonal":
        tonal = opened.enter_context(
            gpiozero.TonalBuzzer(
                config.buzzer, mid_tone=_MID_TONE, octaves=_OCTAVES, pin_factory=pin_factory
            )
        )

        def play_tone(pitch: Pitch | None) -> None:
            if pitch is None:
                tonal.stop()
            else:
                tonal.play(TONES[pitch])

        return play_tone
    buzzer = opened.enter_context(gpiozero.Buzzer(config.buzzer, pin_factory=pin_factory))

    def beep(pitch: Pitch | None) -> None:
        buzzer.value = pitch is not None

    return beep


def _no_sound(pitch: Pitch | None) -> None:
    pass
