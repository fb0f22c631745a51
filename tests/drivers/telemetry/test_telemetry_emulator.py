"""Tests for the ESP32 emulator's meter model, driven tick by tick with a fake clock."""

from __future__ import annotations

import random

import pytest

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.emulator import Esp32Emulator
from edgepoint.drivers.telemetry.frames import SEQ_MAX, TelemetryParser


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Relay:
    def __init__(self) -> None:
        self.closed = False

    def __call__(self) -> bool:
        return self.closed


def make(**kw: object) -> tuple[Esp32Emulator, FakeClock, Relay, TelemetryParser]:
    clock, relay = FakeClock(), Relay()
    emulator = Esp32Emulator(
        None,
        relay_closed=relay,
        clock=clock,
        rng=random.Random(3),
        **kw,  # type: ignore[arg-type]
    )
    return emulator, clock, relay, TelemetryParser()


def step(
    emulator: Esp32Emulator, clock: FakeClock, parser: TelemetryParser, dt: float = 1.0
) -> TelemetrySample:
    clock.now += dt
    (sample,) = parser.feed(emulator.tick())
    return sample


def test_register_rises_at_charge_power_only_while_relay_closed() -> None:
    emulator, clock, relay, parser = make(charge_power_w=3600.0, energy_wh=500)
    first = parser.feed(emulator.tick())[0]
    assert first.energy_wh == 500
    assert [step(emulator, clock, parser).energy_wh for _ in range(3)] == [500] * 3
    relay.closed = True
    # 3600 W for 1 s is exactly 1 Wh per frame.
    assert [step(emulator, clock, parser).energy_wh for _ in range(5)] == [501, 502, 503, 504, 505]
    relay.closed = False
    assert [step(emulator, clock, parser).energy_wh for _ in range(3)] == [505] * 3
    assert emulator.energy_wh == 505


def test_register_accumulates_fractions_and_reports_the_floor() -> None:
    emulator, clock, relay, parser = make(charge_power_w=1000.0)
    relay.closed = True
    emulator.tick()
    # 1000 W for 1 s is 0.2777… Wh: the first whole Wh appears on the fourth frame.
    energies = [step(emulator, clock, parser).energy_wh for _ in range(8)]
    assert energies == [0, 0, 0, 1, 1, 1, 1, 2]


def test_readings_follow_the_relay() -> None:
    emulator, clock, relay, parser = make(charge_power_w=7360.0)
    emulator.tick()
    idle = [step(emulator, clock, parser) for _ in range(200)]
    assert all(s.power_w == 0 and s.current_a == 0 for s in idle)
    assert all(229.0 <= s.voltage_v <= 231.0 for s in idle)
    # Temperature drifts, but only a little.
    temperatures = [s.temperature_c for s in idle]
    assert len(set(temperatures)) > 1
    assert all(23.0 <= t <= 27.0 for t in temperatures)
    relay.closed = True
    charging = step(emulator, clock, parser)
    assert charging.power_w == 7360.0
    assert charging.current_a == pytest.approx(7360.0 / 230.0, abs=0.2)
    assert charging.extra == (("fw", "emu-1"),)


def test_sequence_starts_at_zero_and_wraps_to_one() -> None:
    emulator, clock, _, parser = make()
    assert emulator.last_seq is None
    assert [step(emulator, clock, parser).seq for _ in range(3)] == [0, 1, 2]
    wrapping, clock, _, parser = make(first_seq=SEQ_MAX - 1)
    assert [step(wrapping, clock, parser).seq for _ in range(3)] == [SEQ_MAX - 1, SEQ_MAX, 1]
    assert wrapping.last_seq == 1
    assert parser.stats.seq_gaps == parser.stats.seq_resets == 0


def test_skip_seq_shows_up_as_a_gap() -> None:
    emulator, clock, _, parser = make()
    step(emulator, clock, parser)
    emulator.skip_seq(4)
    assert step(emulator, clock, parser).seq == 5
    assert parser.stats.seq_gaps == 4


def test_corrupt_next_breaks_exactly_one_checksum() -> None:
    emulator, clock, _, parser = make()
    step(emulator, clock, parser)
    emulator.corrupt_next()
    clock.now += 1
    assert parser.feed(emulator.tick()) == []
    assert step(emulator, clock, parser).seq == 2
    assert parser.stats.bad_checksum == 1
    assert parser.stats.seq_gaps == 1  # the corrupted frame used up its number


def test_reboot_restarts_sequence_and_keeps_whole_watt_hours() -> None:
    emulator, clock, relay, parser = make(charge_power_w=1800.0)
    relay.closed = True
    emulator.tick()
    for _ in range(3):
        step(emulator, clock, parser)  # 1.5 Wh
    emulator.reboot()
    relay.closed = False
    after = step(emulator, clock, parser)
    assert (after.seq, after.energy_wh) == (0, 1)
    relay.closed = True
    # The half Wh held in RAM was lost with the reboot.
    assert step(emulator, clock, parser).energy_wh == 1
    assert step(emulator, clock, parser).energy_wh == 2
    assert parser.stats.seq_resets == 1


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Esp32Emulator(None, relay_closed=lambda: False, interval_s=0)
    with pytest.raises(ValueError):
        Esp32Emulator(None, relay_closed=lambda: False, first_seq=SEQ_MAX + 1)
    with pytest.raises(ValueError):
        Esp32Emulator(None, relay_closed=lambda: False).skip_seq(0)
