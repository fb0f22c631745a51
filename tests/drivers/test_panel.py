"""The relay, LEDs and buzzer through gpiozero on MockFactory pins, read back pin by pin."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from edgepoint.charging.actions import Feedback, Indication
from edgepoint.config import ConnectorConfig, HardwareConfig
from edgepoint.drivers.panel import BEEPS, PATTERNS, Panel, force_relays_open, relay_off_levels
from edgepoint.errors import DeviceError

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


# Three connectors; none of them on hardware.relay_pin, which must then stay unclaimed.
CONNECTORS = (
    ConnectorConfig(id=1, relay_pin=5, meter_channel=1),
    ConnectorConfig(id=2, relay_pin=6, meter_channel=2),
    ConnectorConfig(id=3, relay_pin=13, meter_channel=4),
)
RELAY_PINS = {c.id: c.relay_pin for c in CONNECTORS}
SHARED_PINS = (27, 22, 23)


@pytest.fixture
def multi(factory: MockFactory) -> Iterator[Panel]:
    p = Panel(HARDWARE, CONNECTORS, pin_factory=factory)
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


def test_available_lights_green_steadily(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(Indication.AVAILABLE)
    assert green.state is True and red.state is False
    time.sleep(0.6)  # longer than a blink half-period
    assert green.state is True
    assert highs(green) == 1
    assert panel.leds == {"green": True, "red": False, "buzzer": False}
    assert panel.indication is Indication.AVAILABLE


def test_charging_breathes_green(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(Indication.CHARGING)
    assert eventually(lambda: highs(green) >= 2, timeout=3.5), green.states  # on, off, on
    assert highs(red) == 0


def test_faulted_blinks_red(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(Indication.CHARGING)
    panel.show(Indication.FAULT)
    assert green.state is False
    assert eventually(lambda: highs(red) >= 2, timeout=2.5), red.states  # on, off, on
    assert green.state is False


def test_a_new_state_stops_a_blink_at_once(panel: Panel, factory: MockFactory) -> None:
    panel.show(Indication.FAULT)
    assert eventually(lambda: pin(factory, 22).state is True)  # the blink starts lit ...
    panel.show(Indication.AVAILABLE)
    # ... and is stopped at once, well inside its 0.5 s on-time.
    assert pin(factory, 27).state is True and pin(factory, 22).state is False
    time.sleep(0.6)
    assert pin(factory, 22).state is False


def test_every_state_has_its_own_pattern() -> None:
    assert set(PATTERNS) == set(Indication)
    steady = {i: p for i, p in PATTERNS.items() if i is not Indication.REFUSED}
    # Only the short REFUSED flash may look like another state (it never lasts).
    assert len(set(steady.values())) == len(steady)
    # Green only where a card may start a session, or one is running.
    greens = {i for i, p in PATTERNS.items() if p.green.on_s > 0}
    assert greens == {
        Indication.AVAILABLE,
        Indication.OFFLINE,
        Indication.AUTHORIZING,
        Indication.CHARGING,
        Indication.SUSPENDED,
        Indication.FINISHING,
    }


def test_offline_winks_red_over_steady_green(panel: Panel, factory: MockFactory) -> None:
    green, red = pin(factory, 27), pin(factory, 22)
    panel.show(Indication.OFFLINE)
    assert green.state is True
    assert eventually(lambda: highs(red) >= 1)
    assert eventually(lambda: red.state is False)  # a wink, not a light
    assert green.state is True and highs(green) == 1


def test_authorizing_flickers_green(panel: Panel, factory: MockFactory) -> None:
    panel.show(Indication.AUTHORIZING)
    assert eventually(lambda: highs(pin(factory, 27)) >= 3, timeout=1.0)
    assert highs(pin(factory, 22)) == 0


def test_a_refused_card_shows_red_then_the_state_again(factory: MockFactory) -> None:
    panel = Panel(HARDWARE, pin_factory=factory, refused_s=0.3)
    try:
        green, red = pin(factory, 27), pin(factory, 22)
        panel.show(Indication.AVAILABLE)
        panel.signal(Feedback.REJECTED)
        assert red.state is True and green.state is False
        # A state change during the flash waits for its end.
        panel.show(Indication.OFFLINE)
        assert red.state is True and green.state is False
        assert eventually(lambda: green.state is True, timeout=1.0)
        assert panel.indication is Indication.OFFLINE
        assert eventually(lambda: red.state is False)  # OFFLINE's wink, not REFUSED
    finally:
        panel.close()


def test_a_second_refusal_restarts_the_flash(factory: MockFactory) -> None:
    panel = Panel(HARDWARE, pin_factory=factory, refused_s=0.4)
    try:
        panel.show(Indication.AVAILABLE)
        panel.signal(Feedback.REJECTED)
        time.sleep(0.25)
        panel.signal(Feedback.REJECTED)
        time.sleep(0.25)  # past the first flash's end, inside the second's
        assert pin(factory, 22).state is True and pin(factory, 27).state is False
        assert eventually(lambda: pin(factory, 27).state is True)
    finally:
        panel.close()


def test_a_flash_never_lights_a_closed_panel(factory: MockFactory) -> None:
    panel = Panel(HARDWARE, pin_factory=factory, refused_s=0.1)
    panel.show(Indication.AVAILABLE)
    panel.signal(Feedback.REJECTED)
    panel.close()
    time.sleep(0.3)
    # Released pins: the timer did not claim them back to show AVAILABLE.
    assert pin(factory, 27).function == "input"


@pytest.mark.parametrize(
    ("feedback", "beeps"), [(Feedback.ACCEPTED, 1), (Feedback.REJECTED, 3), (Feedback.STOPPED, 2)]
)
def test_buzzer_patterns_for_accepted_refused_and_stopped(
    panel: Panel, factory: MockFactory, feedback: Feedback, beeps: int
) -> None:
    buzzer = pin(factory, HARDWARE.buzzer_pin)
    panel.signal(feedback)
    pattern = BEEPS[feedback]
    assert eventually(lambda: highs(buzzer) == beeps and buzzer.state is False, timeout=3)
    assert pattern.count == beeps
    time.sleep(pattern.on_s + pattern.off_s)
    assert highs(buzzer) == beeps  # and no more


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


def test_every_relay_starts_open_and_never_closed(multi: Panel, factory: MockFactory) -> None:
    for number in (*RELAY_PINS.values(), *SHARED_PINS):
        assert pin(factory, number).function == "output", number
        assert pin(factory, number).state is False, number
        assert highs(pin(factory, number)) == 0, number
    assert multi.connector_ids == (1, 2, 3)
    assert multi.relays == {1: False, 2: False, 3: False}
    assert multi.relay_closed is False
    # hardware.relay_pin is only the default for a kiosk without [[connector]] tables.
    assert pin(factory, HARDWARE.relay_pin).function != "output"


@pytest.mark.parametrize("connector_id", [1, 2, 3])
def test_each_connector_drives_only_its_own_relay(
    multi: Panel, factory: MockFactory, connector_id: int
) -> None:
    multi.set_relay(connector_id, True)
    assert multi.is_relay_closed(connector_id) is True
    assert multi.relays == {cid: cid == connector_id for cid in RELAY_PINS}
    assert multi.relay_closed is True  # "any relay closed"
    for cid, number in RELAY_PINS.items():
        assert pin(factory, number).state is (cid == connector_id), cid
        if cid != connector_id:
            assert highs(pin(factory, number)) == 0, cid
    multi.set_relay(connector_id, False)
    assert pin(factory, RELAY_PINS[connector_id]).state is False
    assert multi.relays == {1: False, 2: False, 3: False}
    for number in SHARED_PINS:
        assert highs(pin(factory, number)) == 0, number


def test_close_opens_every_relay_then_releases_the_pins(factory: MockFactory) -> None:
    panel = Panel(HARDWARE, CONNECTORS, pin_factory=factory)
    panel.set_relay(1, True)
    panel.set_relay(3, True)
    panel.close()
    for number in RELAY_PINS.values():
        assert pin(factory, number).state is False, number
    panel.close()  # a second close (e.g. from a finally after a failed shutdown) is harmless
    again = Panel(HARDWARE, CONNECTORS, pin_factory=factory)
    assert all(pin(factory, number).state is False for number in RELAY_PINS.values())
    again.close()


def test_a_connector_view_behaves_like_a_one_relay_panel(
    multi: Panel, factory: MockFactory
) -> None:
    second = multi.for_connector(2)
    second.set_relay(True)
    assert second.relay_closed is True
    assert multi.for_connector(1).relay_closed is False
    assert pin(factory, RELAY_PINS[2]).state is True
    assert pin(factory, RELAY_PINS[1]).state is False
    second.show(Indication.AVAILABLE)  # the LEDs are shared by all connectors
    assert pin(factory, 27).state is True
    with pytest.raises(KeyError):
        multi.for_connector(4)


def test_ambiguous_or_unknown_relay_calls_are_refused(multi: Panel, factory: MockFactory) -> None:
    with pytest.raises(TypeError):
        multi.set_relay(True)  # which one? never guess with several relays
    with pytest.raises(KeyError):
        multi.set_relay(4, True)
    with pytest.raises(TypeError):
        multi.set_relay(True, False)  # True == 1: a swapped call must not reach connector 1
    with pytest.raises(TypeError):
        multi.set_relay(2, 1)  # type: ignore[call-overload]
    assert all(highs(pin(factory, number)) == 0 for number in RELAY_PINS.values())


def test_single_connector_keeps_the_one_argument_form(panel: Panel, factory: MockFactory) -> None:
    # Without connectors: one connector, id 1, on hardware.relay_pin.
    assert panel.connector_ids == (1,)
    panel.set_relay(1, True)
    assert pin(factory, HARDWARE.relay_pin).state is True and panel.relay_closed is True
    panel.set_relay(False)
    assert pin(factory, HARDWARE.relay_pin).state is False and panel.is_relay_closed(1) is False
    with pytest.raises(TypeError):
        panel.set_relay(1)  # type: ignore[call-overload]  # an id is not a closed flag
    assert pin(factory, HARDWARE.relay_pin).state is False


@pytest.mark.parametrize(
    "connectors",
    [
        (ConnectorConfig(1, 5, 1), ConnectorConfig(1, 6, 2)),  # same id twice
        (ConnectorConfig(1, 5, 1), ConnectorConfig(2, 5, 2)),  # same relay twice
        (ConnectorConfig(1, 5, 1), ConnectorConfig(2, 27, 2)),  # relay on the green LED's pin
    ],
)
def test_conflicting_connectors_fail_and_release_every_pin(
    factory: MockFactory, connectors: tuple[ConnectorConfig, ...]
) -> None:
    with pytest.raises(DeviceError):
        Panel(HARDWARE, connectors, pin_factory=factory)
    # Nothing stays claimed: a correct panel can still be built on the same pins.
    Panel(HARDWARE, CONNECTORS, pin_factory=factory).close()


# -- relay polarity and the relay-off command ------------------------------------------

ACTIVE_LOW = replace(HARDWARE, relay_active_high=False)


def test_an_active_low_relay_starts_high_and_closes_low(factory: MockFactory) -> None:
    panel = Panel(ACTIVE_LOW, pin_factory=factory)
    relay = pin(factory, HARDWARE.relay_pin)
    # Claimed straight at the open (high) level: never driven low, not for a moment.
    assert relay.function == "output" and relay.state is True
    assert [s.state for s in relay.states[1:]] == [True]
    assert panel.relay_closed is False
    panel.set_relay(1, True)
    assert relay.state is False and panel.is_relay_closed(1) is True
    panel.close()
    assert relay.states[-1].state is True


@pytest.mark.parametrize(("hardware", "level"), [(HARDWARE, False), (ACTIVE_LOW, True)])
def test_relay_off_drives_every_relay_pin_to_its_open_level(
    factory: MockFactory, hardware: HardwareConfig, level: bool
) -> None:
    assert relay_off_levels(hardware, CONNECTORS) == dict.fromkeys(RELAY_PINS.values(), level)
    done = force_relays_open(hardware, CONNECTORS, pin_factory=factory)
    for number in RELAY_PINS.values():
        relay = pin(factory, number)
        # At the open level, and never at the other one on the way.
        assert relay.state is level, number
        assert all(s.state is level for s in relay.states[1:]), number
        assert relay.function == "input", number  # released for the daemon's next start
    assert len(done) == len(RELAY_PINS)
    for number in SHARED_PINS:
        assert pin(factory, number).function != "output"  # LEDs and buzzer untouched


def test_relay_off_holds_the_level_with_pinctrl_where_there_is_one(factory: MockFactory) -> None:
    ran: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, b"", b"")

    done = force_relays_open(
        ACTIVE_LOW, CONNECTORS, pin_factory=factory, pinctrl="/usr/bin/pinctrl", run=run
    )
    assert ran == [["/usr/bin/pinctrl", "set", str(n), "op", "dh"] for n in RELAY_PINS.values()]
    assert any("held high by pinctrl" in line for line in done)


def test_relay_off_on_a_pin_it_cannot_claim_fails_loudly(factory: MockFactory) -> None:
    holder = Panel(HARDWARE, pin_factory=factory)  # the pin is still claimed
    try:
        with pytest.raises(DeviceError, match="relay pin 17"):
            force_relays_open(HARDWARE, pin_factory=factory)
    finally:
        holder.close()
