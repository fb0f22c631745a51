"""Tests for the ESP32 emulator's meter model, driven tick by tick with a fake clock."""

from __future__ import annotations

import random

import pytest

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.emulator import Esp32Emulator, MeterChannel
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
    # The firmware's extras, then the contact as it senses it.
    assert charging.extra == (("fw", "emu-1"), ("rly", "1"))
    assert idle[-1].extra == (("fw", "emu-1"), ("rly", "0"))


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


def open_relay() -> bool:
    return False


@pytest.mark.parametrize(
    "kw",
    [
        {},  # no meter at all
        {"relay_closed": open_relay, "channels": [MeterChannel(2, open_relay)]},  # both forms
        {"channels": [MeterChannel(2, open_relay), MeterChannel(2, open_relay)]},
        {"channels": [MeterChannel(0, open_relay)]},
        {"channels": [MeterChannel(9, open_relay)]},
        {"relay_closed": open_relay, "extra": (("ch", "2"),)},
    ],
)
def test_invalid_channel_setups_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Esp32Emulator(None, **kw)  # type: ignore[arg-type]


def make_multi(
    numbers: tuple[int, ...], **kw: object
) -> tuple[Esp32Emulator, FakeClock, dict[int, Relay], TelemetryParser]:
    clock = FakeClock()
    relays = {n: Relay() for n in numbers}
    emulator = Esp32Emulator(
        None,
        channels=[MeterChannel(n, relays[n]) for n in numbers],
        clock=clock,
        rng=random.Random(3),
        **kw,  # type: ignore[arg-type]
    )
    return emulator, clock, relays, TelemetryParser()


def interval(
    emulator: Esp32Emulator, clock: FakeClock, parser: TelemetryParser, dt: float = 1.0
) -> list[TelemetrySample]:
    clock.now += dt
    return parser.feed(emulator.tick())


def test_one_frame_per_channel_per_interval_in_channel_order() -> None:
    # Given out of order: the frames still go out 1, 2, 4, like the firmware's loop.
    emulator, clock, _, parser = make_multi((4, 1, 2))
    assert emulator.channels == (1, 2, 4)
    samples = [s for _ in range(3) for s in interval(emulator, clock, parser)]
    assert [s.channel for s in samples] == [1, 2, 4] * 3
    # One sequence counter for the whole ESP32, shared by its channels.
    assert [s.seq for s in samples] == list(range(9))
    assert emulator.last_seq == 8
    assert parser.stats.seq_gaps == parser.stats.seq_resets == 0
    assert all(s.extra == (("fw", "emu-1"), ("rly", "0")) for s in samples)


def test_power_flows_only_on_the_channel_whose_relay_is_closed() -> None:
    emulator, clock, relays, parser = make_multi((1, 2, 3), charge_power_w=3600.0, energy_wh=100)
    interval(emulator, clock, parser)
    relays[2].closed = True
    for _ in range(4):
        by_channel = {s.channel: s for s in interval(emulator, clock, parser)}
    assert by_channel[2].power_w == 3600.0 and by_channel[2].energy_wh == 104
    for idle in (1, 3):
        assert by_channel[idle].power_w == 0 and by_channel[idle].current_a == 0
        assert by_channel[idle].energy_wh == 100
    relays[2].closed = False
    relays[3].closed = True
    by_channel = {s.channel: s for s in interval(emulator, clock, parser)}
    assert [by_channel[n].energy_wh for n in (1, 2, 3)] == [100, 104, 101]
    assert [emulator.energy_wh_of(n) for n in (1, 2, 3)] == [100, 104, 101]
    assert emulator.energy_wh == 100  # the lowest channel's register
    with pytest.raises(KeyError):
        emulator.energy_wh_of(4)


def test_each_channel_may_start_from_its_own_register() -> None:
    clock = FakeClock()
    emulator = Esp32Emulator(
        None,
        channels=[MeterChannel(1, open_relay), MeterChannel(2, open_relay, energy_wh=88012)],
        energy_wh=123460,
        clock=clock,
    )
    samples = TelemetryParser().feed(emulator.tick())
    assert [(s.channel, s.energy_wh) for s in samples] == [(1, 123460), (2, 88012)]


def test_single_channel_forms_send_identical_bytes() -> None:
    # relay_closed=... is shorthand for one meter on channel 1: same frames, no `ch`.
    def frames(**kw: object) -> list[bytes]:
        clock = FakeClock()
        emulator = Esp32Emulator(
            None,
            clock=clock,
            rng=random.Random(5),
            charge_power_w=1800.0,
            **kw,  # type: ignore[arg-type]
        )
        out = []
        for _ in range(5):
            clock.now += 1
            out.append(emulator.tick())
        return out

    legacy = frames(relay_closed=lambda: True)
    assert legacy == frames(channels=[MeterChannel(1, lambda: True)])
    assert all(b"ch=" not in frame for frame in legacy)


def test_reboot_with_several_channels_is_one_reset_and_keeps_every_register() -> None:
    emulator, clock, relays, parser = make_multi((1, 2), charge_power_w=1800.0)
    relays[1].closed = relays[2].closed = True
    emulator.tick()
    for _ in range(3):
        interval(emulator, clock, parser)  # 1.5 Wh on each
    emulator.reboot()
    after = interval(emulator, clock, parser, dt=0.0)
    assert [(s.seq, s.channel, s.energy_wh) for s in after] == [(0, 1, 1), (1, 2, 1)]
    assert parser.stats.seq_resets == 1


def test_corrupt_next_breaks_one_frame_of_one_channel() -> None:
    emulator, clock, _, parser = make_multi((1, 2))
    interval(emulator, clock, parser)
    emulator.corrupt_next()
    assert [(s.seq, s.channel) for s in interval(emulator, clock, parser)] == [(3, 2)]
    assert [s.seq for s in interval(emulator, clock, parser)] == [4, 5]
    assert parser.stats.bad_checksum == 1
    assert parser.stats.seq_gaps == 1
