"""The kiosk's relay, status LEDs and buzzer, driven through gpiozero."""

from __future__ import annotations

import logging
from typing import Any

from gpiozero import LED, Buzzer, OutputDevice

from edgepoint.charging.actions import ConnectorStatus, Feedback
from edgepoint.config import HardwareConfig
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)


class Panel:
    """Relay + green/red LED + buzzer. The relay starts open and is opened again on close."""

    def __init__(self, hardware: HardwareConfig, pin_factory: Any = None) -> None:
        # pin_factory is passed per device rather than set on gpiozero.Device globally,
        # so tests and the simulator can each have their own MockFactory.
        try:
            self._relay = OutputDevice(
                hardware.relay_pin, initial_value=False, pin_factory=pin_factory
            )
            self._green = LED(hardware.green_led_pin, pin_factory=pin_factory)
            self._red = LED(hardware.red_led_pin, pin_factory=pin_factory)
            self._buzzer = Buzzer(hardware.buzzer_pin, pin_factory=pin_factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad setup
            raise DeviceError(f"cannot set up GPIO: {err}") from err

    @classmethod
    def simulated(cls, hardware: HardwareConfig) -> Panel:
        from gpiozero.pins.mock import MockFactory

        return cls(hardware, pin_factory=MockFactory())

    @property
    def relay_closed(self) -> bool:
        return bool(self._relay.value)

    def set_relay(self, closed: bool) -> None:
        if closed:
            self._relay.on()
        else:
            self._relay.off()
        log.info("relay %s", "closed" if closed else "open")

    def show(self, status: ConnectorStatus) -> None:
        """Steady LED pattern for the connector status."""
        self._green.off()
        self._red.off()
        if status is ConnectorStatus.CHARGING:
            self._green.on()
        elif status in (ConnectorStatus.PREPARING, ConnectorStatus.FINISHING):
            self._green.blink(on_time=0.5, off_time=0.5)
        elif status is ConnectorStatus.FAULTED:
            self._red.blink(on_time=0.5, off_time=0.5)

    def signal(self, feedback: Feedback) -> None:
        """Short feedback for the driver, within a blink of the tap."""
        if feedback is Feedback.READING:
            self._buzzer.beep(on_time=0.05, off_time=0.05, n=1)
        elif feedback is Feedback.ACCEPTED:
            self._buzzer.beep(on_time=0.2, off_time=0.1, n=1)
        elif feedback is Feedback.STOPPED:
            self._buzzer.beep(on_time=0.15, off_time=0.1, n=2)
        elif feedback is Feedback.REJECTED:
            self._red.blink(on_time=1.5, off_time=0.1, n=1)
            self._buzzer.beep(on_time=0.1, off_time=0.1, n=3)
        elif feedback is Feedback.FAULT:
            self._buzzer.beep(on_time=1.0, off_time=0.1, n=1)

    @property
    def leds(self) -> dict[str, bool]:
        return {
            "green": bool(self._green.value),
            "red": bool(self._red.value),
            "buzzer": bool(self._buzzer.value),
        }

    def close(self) -> None:
        """Open the relay, then release every pin."""
        self._relay.off()
        for device in (self._relay, self._green, self._red, self._buzzer):
            device.close()
