"""The relay, LEDs and buzzer through gpiozero on MockFactory pins, read back pin by pin."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from edgepoint.charging.actions import ConnectorStatus, Feedback
from edgepoint.config import HardwareConfig
from edgepoint.drivers.panel import Panel

HARDWARE = HardwareConfig(
    simulate=True,
    serial_port="/dev/null",
    serial_baudrate=115200,
    relay_pin=17,
    green_led_pin=27,
    red_led_pin=22,
    buzzer_pin=23,
    telemetry_timeout_s=10,
)


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
def panel(factory: MockFactory) -> Iterator[Panel]:
    p = Panel(HARDWARE, pin_factory=factory)
    yield p
    p.close()


def pin(factory: MockFactory, number: int) -> MockPin:
    return factory.pin(number)  # type: ignore[no-any-return]


def highs(p: MockPin) -> int:
    return sum(1 for s in p.states if s.state)


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_everything_is_off_at_construction(panel: Panel, factory: MockFactory) -> None:
    for number in (17, 27, 22, 23):
        assert pin(factory, number).function == "output", number
        assert pin(factory, number).state is False, number
    assert highs(pin(factory, 17)) == 0  # the relay never closed, not even for a moment
    assert panel.relay_closed is False


def test_set_relay_drives_the_relay_pin(panel: Panel, factory: MockFactory) -> None:
    relay = pin(factory, HARDWARE.relay_pin)
    panel.set_relay(True)
    assert relay.state is True and panel.relay_closed is True
    panel.set_relay(False)
    assert relay.state is False and panel.relay_closed is False
    panel.set_relay(True)
    assert relay.state is True
    # Only the relay moved.
    for number in (27, 22, 23):
        assert highs(pin(factory, number)) == 0


def test_close_opens_a_closed_relay(factory: MockFactory) -> None:
    panel = Panel(HARDWARE, pin_factory=factory)
    panel.set_relay(True)
    panel.close()
    relay = pin(factory, HARDWARE.relay_pin)
    assert relay.state is False
    assert relay.states[-1].state is False
    # Released: the pins can be claimed again (e.g. by a restarted panel).
    again = Panel(HARDWARE, pin_factory=factory)
    assert pin(factory, HARDWARE.relay_pin).state is False
    again.close()


def test_charging_lights_green_steadily(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(ConnectorStatus.CHARGING)
    assert green.state is True and red.state is False
    time.sleep(0.6)  # longer than a blink half-period
    assert green.state is True
    assert highs(green) == 1
    assert panel.leds == {"green": True, "red": False, "buzzer": False}


def test_faulted_blinks_red(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(ConnectorStatus.CHARGING)
    panel.show(ConnectorStatus.FAULTED)
    assert green.state is False
    assert eventually(lambda: highs(red) >= 2, timeout=2.5), red.states  # on, off, on
    assert green.state is False


def test_available_turns_both_leds_off(panel: Panel, factory: MockFactory) -> None:
    panel.show(ConnectorStatus.CHARGING)
    panel.show(ConnectorStatus.FAULTED)
    assert eventually(lambda: pin(factory, 22).state is True)  # the blink starts lit ...
    panel.show(ConnectorStatus.AVAILABLE)
    # ... and is stopped at once, well inside its 0.5 s on-time.
    assert pin(factory, 27).state is False and pin(factory, 22).state is False


@pytest.mark.parametrize("feedback", list(Feedback))
def test_every_feedback_sounds_the_buzzer(
    panel: Panel, factory: MockFactory, feedback: Feedback
) -> None:
    buzzer = pin(factory, HARDWARE.buzzer_pin)
    panel.signal(feedback)
    assert eventually(lambda: highs(buzzer) >= 1), f"{feedback}: buzzer never sounded"
    assert eventually(lambda: buzzer.state is False), f"{feedback}: buzzer stuck on"
    assert pin(factory, HARDWARE.relay_pin).state is False  # feedback never touches the relay


def test_rejected_also_flashes_red(panel: Panel, factory: MockFactory) -> None:
    panel.signal(Feedback.REJECTED)
    assert eventually(lambda: highs(pin(factory, 22)) >= 1)
