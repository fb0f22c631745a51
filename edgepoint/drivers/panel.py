"""The kiosk's relays (one per connector), status LEDs and buzzer, driven through gpiozero."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from gpiozero import LED, Buzzer, OutputDevice

from edgepoint.charging.actions import Feedback, Indication
from edgepoint.config import ConnectorConfig, HardwareConfig
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Light:
    """One LED's pattern: dark (on_s 0), steady (off_s 0) or blinking."""

    on_s: float = 0.0
    off_s: float = 0.0


DARK, STEADY = Light(), Light(on_s=1.0)


@dataclass(frozen=True, slots=True)
class LedPattern:
    """What the green and the red LED do together."""

    green: Light
    red: Light


# Readable from across a car park: green means you may charge, red means you may not;
# blinking means something is going on. Each state looks different from every other.
PATTERNS: Mapping[Indication, LedPattern] = {
    Indication.AVAILABLE: LedPattern(STEADY, DARK),
    # Still green (known cards charge), with a short red wink every 3 s.
    Indication.OFFLINE: LedPattern(STEADY, Light(0.1, 2.9)),
    Indication.AUTHORIZING: LedPattern(Light(0.1, 0.1), DARK),  # fast flicker: reading
    Indication.CHARGING: LedPattern(Light(1.0, 1.0), DARK),  # slow "breathing"
    Indication.SUSPENDED: LedPattern(Light(0.2, 1.8), DARK),
    Indication.FINISHING: LedPattern(Light(0.5, 0.5), DARK),
    Indication.UNAVAILABLE: LedPattern(DARK, STEADY),
    Indication.REFUSED: LedPattern(DARK, STEADY),  # for REFUSED_S, then the state again
    Indication.FAULT: LedPattern(DARK, Light(0.5, 0.5)),
}
REFUSED_S = 1.5


@dataclass(frozen=True, slots=True)
class Beeps:
    """A buzzer pattern: `count` beeps of `on_s`, `off_s` apart."""

    on_s: float
    off_s: float
    count: int


BEEPS: Mapping[Feedback, Beeps] = {
    Feedback.READING: Beeps(0.05, 0.05, 1),  # a click: the card was seen
    Feedback.ACCEPTED: Beeps(0.4, 0.1, 1),  # one long, pleasant beep
    Feedback.REJECTED: Beeps(0.1, 0.1, 3),  # three short: no
    Feedback.STOPPED: Beeps(0.15, 0.1, 2),
    Feedback.FAULT: Beeps(1.0, 0.1, 1),
}


def relay_off_levels(
    hardware: HardwareConfig, connectors: Sequence[ConnectorConfig] = ()
) -> dict[int, bool]:
    """The GPIO level (True: high) that opens each relay pin, by BCM pin number."""
    pins = [c.relay_pin for c in (tuple(connectors) or default_connectors(hardware))]
    return dict.fromkeys(pins, not hardware.relay_active_high)


def force_relays_open(
    hardware: HardwareConfig,
    connectors: Sequence[ConnectorConfig] = (),
    *,
    pin_factory: Any = None,
    pinctrl: str | None = None,
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> list[str]:
    """Drive every relay pin to its open level, for a process other than the daemon
    (`edgepoint relay-off`, the unit's ExecStopPost after a kill -9, OOM or abort).

    gpiozero drives the level, then releases the pin, which makes it an input again:
    from then on the relay board's pull resistor holds it open (docs/interlocks.md).
    Where Raspberry Pi OS's `pinctrl` exists (`pinctrl="auto"` looks it up) the pin is
    then left driven at the open level, with no process holding it. Returns what was done.
    """
    done: list[str] = []
    levels = relay_off_levels(hardware, connectors)
    for pin, high in levels.items():
        try:
            device = OutputDevice(
                pin,
                active_high=hardware.relay_active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        except Exception as err:  # gpiozero raises many unrelated types for a bad setup
            raise DeviceError(f"cannot drive relay pin {pin}: {err}") from err
        device.close()
        done.append(f"GPIO{pin} driven {'high' if high else 'low'} (relay open)")
    tool = shutil.which("pinctrl") if pinctrl == "auto" else pinctrl
    if tool is None:
        return done
    for pin, high in levels.items():
        command = [tool, "set", str(pin), "op", "dh" if high else "dl"]
        try:
            result = run(command, capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            done.append(f"pinctrl failed for GPIO{pin}: {err}")
            continue
        if result.returncode != 0:
            done.append(f"pinctrl failed for GPIO{pin}: {result.stderr.decode(errors='replace')}")
        else:
            done.append(f"GPIO{pin} held {'high' if high else 'low'} by pinctrl")
    return done


def default_connectors(hardware: HardwareConfig) -> tuple[ConnectorConfig, ...]:
    """The single connector of a kiosk without [[connector]] tables."""
    return (ConnectorConfig(id=1, relay_pin=hardware.relay_pin, meter_channel=1),)


class Panel:
    """One relay per connector + shared green/red LED and buzzer.

    Every relay starts open and is opened again on close. The LEDs show one `Indication`
    (`show`); a refused card flashes REFUSED over it for `refused_s` (`signal`).
    """

    def __init__(
        self,
        hardware: HardwareConfig,
        connectors: Sequence[ConnectorConfig] = (),
        pin_factory: Any = None,
        refused_s: float = REFUSED_S,
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
                # Claimed straight at the open level (active-low boards: high).
                relay = OutputDevice(
                    connector.relay_pin,
                    active_high=hardware.relay_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
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
        self._refused_s = refused_s
        # The LEDs are driven from the loop and from the flash timer's thread.
        self._lights = threading.Lock()
        self._indication = Indication.UNAVAILABLE  # until the kiosk says otherwise
        self._flash: threading.Timer | None = None

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

    @property
    def indication(self) -> Indication:
        """The state the LEDs show (under a REFUSED flash, if one is running)."""
        return self._indication

    def show(self, indication: Indication, /) -> None:
        """Show the kiosk's state on the LEDs, at once (or when a flash ends)."""
        with self._lights:
            self._indication = indication
            if self._flash is None and not self._closed:
                self._light(PATTERNS[indication])

    def signal(self, feedback: Feedback, /) -> None:
        """Short feedback for the driver, within a blink of the tap."""
        beeps = BEEPS[feedback]
        self._buzzer.beep(on_time=beeps.on_s, off_time=beeps.off_s, n=beeps.count)
        if feedback is Feedback.REJECTED:
            self._flash_refused()

    def _flash_refused(self) -> None:
        with self._lights:
            if self._closed:
                return
            if self._flash is not None:
                self._flash.cancel()
            self._light(PATTERNS[Indication.REFUSED])
            timer = threading.Timer(self._refused_s, lambda: self._end_flash(timer))
            timer.daemon = True  # never keeps the process alive
            self._flash = timer
            timer.start()

    def _end_flash(self, timer: threading.Timer) -> None:
        with self._lights:
            if self._flash is not timer or self._closed:
                return  # superseded by a newer flash, or the panel is gone
            self._flash = None
            self._light(PATTERNS[self._indication])

    def _light(self, pattern: LedPattern) -> None:
        for led, light in ((self._green, pattern.green), (self._red, pattern.red)):
            if light.on_s <= 0:
                led.off()
            elif light.off_s <= 0:
                led.on()
            else:
                led.blink(on_time=light.on_s, off_time=light.off_s)

    @property
    def leds(self) -> dict[str, bool]:
        return {
            "green": bool(self._green.value),
            "red": bool(self._red.value),
            "buzzer": bool(self._buzzer.value),
        }

    def close(self) -> None:
        """Open every relay, then release every pin; safe to call twice."""
        with self._lights:
            if self._closed:
                return
            self._closed = True
            if self._flash is not None:
                self._flash.cancel()
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

    def show(self, indication: Indication, /) -> None:
        self._panel.show(indication)

    def signal(self, feedback: Feedback, /) -> None:
        self._panel.signal(feedback)
