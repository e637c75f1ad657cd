"""The gate's green and red LEDs and its buzzer, driven through gpiozero."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from types import TracebackType

import gpiozero

from broker.settings import SignalsConfig as PinsConfig

logger = logging.getLogger(__name__)


class Signals:
    """Green/red LEDs and a buzzer driven by gpiozero; patterns run in the background.

    gpiozero's own blink threads play each pattern, so ``accept`` and
    ``reject`` return at once and never slow the scan loop. A new pattern
    first switches everything off, which stops the running one: a blink
    thread stopped half-way leaves its pin high.
    """

    ACCEPT_LIGHT_S = 0.6
    ACCEPT_BEEP_S = 0.15
    REJECT_ON_S = 0.15
    REJECT_OFF_S = 0.15
    REJECT_TIMES = 3

    def __init__(
        self,
        pins: PinsConfig,
        *,
        pin_factory: gpiozero.Factory | None = None,
        accept_light_s: float = ACCEPT_LIGHT_S,
        accept_beep_s: float = ACCEPT_BEEP_S,
        reject_on_s: float = REJECT_ON_S,
        reject_off_s: float = REJECT_OFF_S,
    ) -> None:
        self._accept_light_s = accept_light_s
        self._accept_beep_s = accept_beep_s
        self._reject_on_s = reject_on_s
        self._reject_off_s = reject_off_s
        self._lock = threading.Lock()
        self._closed = False
        # If a later pin cannot be opened, the ones already opened are released.
        with ExitStack() as opened:
            self._green = opened.enter_context(
                gpiozero.LED(pins.green_led, pin_factory=pin_factory)
            )
            self._red = opened.enter_context(gpiozero.LED(pins.red_led, pin_factory=pin_factory))
            self._buzzer = opened.enter_context(
                gpiozero.Buzzer(pins.buzzer, pin_factory=pin_factory)
            )
            opened.pop_all()
        self._devices = (self._green, self._red, self._buzzer)

    def accept(self) -> None:
        """Light the green LED and beep once, in the background."""
        with self._lock:
            if not self._usable("accept"):
                return
            self._all_off()
            self._green.blink(on_time=self._accept_light_s, off_time=0, n=1, background=True)
            self._buzzer.beep(on_time=self._accept_beep_s, off_time=0, n=1, background=True)

    def reject(self) -> None:
        """Blink the red LED and beep in step, three times, in the background."""
        with self._lock:
            if not self._usable("reject"):
                return
            self._all_off()
            for device in (self._red, self._buzzer):
                device.blink(
                    on_time=self._reject_on_s,
                    off_time=self._reject_off_s,
                    n=self.REJECT_TIMES,
                    background=True,
                )

    def close(self) -> None:
        """Switch everything off and release the pins; closing twice does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Every device is released even if switching one off fails.
            with ExitStack() as release:
                for device in self._devices:
                    release.callback(device.close)
                # Closing a pin does not drive it low, so switch off first.
                self._all_off()

    def __enter__(self) -> Signals:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _usable(self, pattern: str) -> bool:
        if self._closed:
            logger.warning("signal pattern %s requested after close; ignored", pattern)
            return False
        logger.debug("signal pattern %s", pattern)
        return True

    def _all_off(self) -> None:
        # off() also stops and joins a device's blink thread.
        for device in self._devices:
            device.off()
