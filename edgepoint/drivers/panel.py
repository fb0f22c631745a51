"""The kiosk's relays (one per connector), status LEDs and buzzer, driven through gpiozero."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, overload

from gpiozero import LED, Buzzer, OutputDevice

from edgepoint.charging.actions import ConnectorStatus, Feedback
from edgepoint.config import ConnectorConfig, HardwareConfig
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)


def default_connectors(hardware: HardwareConfig) -> tuple[ConnectorConfig, ...]:
    """The single connector of a kiosk without [[connector]] tables."""
    return (ConnectorConfig(id=1, relay_pin=hardware.relay_pin, meter_channel=1),)


class Panel:
    """One relay per connector + shared green/red LED and buzzer.

    Every relay starts open and is opened again on close.
    """

    def __init__(
        self,
        hardware: HardwareConfig,
        connectors: Sequence[ConnectorConfig] = (),
        pin_factory: Any = None,
    ) -> None:
        connectors = tuple(connectors) or default_connectors(hardware)
        ids = [c.id for c in connectors]
        pins = [c.relay_pin for c in connectors]
        if len(set(ids)) != len(ids):
            raise DeviceError(f"connector ids repeat: {ids}")
        if len(set(pins)) != len(pins):
            raise DeviceError(f"relay pins repeat: {pins}")
        # pin_factory is passed per device rather than set on gpiozero.Device globally,
        # so tests and the simulator can each have their own MockFactory.
        self._relays: dict[int, OutputDevice] = {}
        claimed: list[Any] = []
        try:
            # Relays first: they are driven low before any other pin is claimed.
            for connector in connectors:
                relay = OutputDevice(
                    connector.relay_pin, initial_value=False, pin_factory=pin_factory
                )
                claimed.append(relay)
                self._relays[connector.id] = relay
            self._green = LED(hardware.green_led_pin, pin_factory=pin_factory)
            claimed.append(self._green)
            self._red = LED(hardware.red_led_pin, pin_factory=pin_factory)
            claimed.append(self._red)
            self._buzzer = Buzzer(hardware.buzzer_pin, pin_factory=pin_factory)
        except Exception as err:  # gpiozero raises many unrelated types for a bad setup
            # Release what was claimed, so a retry (or another process) can have the pins.
            for device in claimed:
                with contextlib.suppress(Exception):
                    device.close()
            raise DeviceError(f"cannot set up GPIO: {err}") from err
        self._closed = False

    @classmethod
    def simulated(
        cls, hardware: HardwareConfig, connectors: Sequence[ConnectorConfig] = ()
    ) -> Panel:
        """A panel on gpiozero's MockFactory pins."""
        from gpiozero.pins.mock import MockFactory

        return cls(hardware, connectors, pin_factory=MockFactory())

    @property
    def connector_ids(self) -> tuple[int, ...]:
        """The connectors that have a relay, in configuration order."""
        return tuple(self._relays)

    @property
    def relays(self) -> Mapping[int, bool]:
        """Whether each connector's relay is closed, by connector id (a snapshot)."""
        return {cid: bool(relay.value) for cid, relay in self._relays.items()}

    def is_relay_closed(self, connector_id: int) -> bool:
        """Whether this connector's relay is closed (energised)."""
        return bool(self._relay(connector_id).value)

    @property
    def relay_closed(self) -> bool:
        """Whether any relay is closed; with one connector, that connector's relay."""
        return any(bool(relay.value) for relay in self._relays.values())

    @overload
    def set_relay(self, closed: bool, /) -> None: ...
    @overload
    def set_relay(self, connector_id: int, closed: bool, /) -> None: ...
    def set_relay(self, *args: Any) -> None:
        """Close or open one connector's relay: `set_relay(connector_id, closed)`.

        `set_relay(closed)` is the single-connector form, refused when there are several.
        """
        if len(args) == 2 and isinstance(args[1], bool):
            connector_id, closed = args
        elif len(args) == 1 and isinstance(args[0], bool) and len(self._relays) == 1:
            # Which relay a bare True means is a guess with several: never energise one.
            (connector_id,), (closed,) = self._relays.keys(), args
        else:
            # Strict on types: set_relay(2) must not read as "close the only relay".
            raise TypeError(f"set_relay(connector_id, closed: bool) expected, got {args!r}")
        relay = self._relay(connector_id)
        if closed:
            relay.on()
        else:
            relay.off()
        log.info("relay %d %s", connector_id, "closed" if closed else "open")

    def for_connector(self, connector_id: int) -> ConnectorPanel:
        """This connector's relay with the shared LEDs and buzzer, shaped like a one-relay panel."""
        self._relay(connector_id)  # fail now rather than at the first set_relay
        return ConnectorPanel(self, connector_id)

    def _relay(self, connector_id: int) -> OutputDevice:
        if isinstance(connector_id, bool):  # True == 1 as a dict key
            raise TypeError(f"connector id must be an int, got {connector_id!r}")
        try:
            return self._relays[connector_id]
        except KeyError:
            raise KeyError(f"no relay for connector {connector_id}") from None

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
        """Open every relay, then release every pin; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        failures: list[Exception] = []
        # All relays are opened before any pin is released, and one relay that
        # fails to open does not keep the others energised.
        for cid, relay in self._relays.items():
            try:
                relay.off()
            except Exception as err:
                log.error("relay %d could not be opened: %s", cid, err)
                failures.append(err)
        for device in (*self._relays.values(), self._green, self._red, self._buzzer):
            try:
                device.close()
            except Exception as err:
                failures.append(err)
        if failures:
            raise DeviceError(f"GPIO release failed: {failures[0]}") from failures[0]


class ConnectorPanel:
    """One connector's view of the panel: its own relay, the shared LEDs and buzzer."""

    def __init__(self, panel: Panel, connector_id: int) -> None:
        self._panel = panel
        self._connector_id = connector_id

    @property
    def connector_id(self) -> int:
        return self._connector_id

    @property
    def relay_closed(self) -> bool:
        return self._panel.is_relay_closed(self._connector_id)

    def set_relay(self, closed: bool) -> None:
        self._panel.set_relay(self._connector_id, closed)

    def show(self, status: ConnectorStatus) -> None:
        self._panel.show(status)

    def signal(self, feedback: Feedback) -> None:
        self._panel.signal(feedback)
