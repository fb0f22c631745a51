"""Pi -> ESP32 commands: the emulated firmware executes them, the serial link sends and retries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgepoint.backoff import exponential
from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry import Esp32Emulator, SerialTelemetryReader, open_pty
from edgepoint.drivers.telemetry.commands import (
    CurrentLimit,
    RelayState,
    WatchdogPing,
    encode_command,
)
from edgepoint.drivers.telemetry.frames import Ack, TelemetryParser
from edgepoint.drivers.telemetry.serial_reader import CommandFailed

pytestmark = pytest.mark.timeout(10)

INTERVAL = 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Relay:
    """The Pi's relay of one channel, as the emulated meter sees it."""

    def __init__(self, closed: bool = True) -> None:
        self.closed = closed

    def __call__(self) -> bool:
        return self.closed


def firmware(**kw: Any) -> tuple[Esp32Emulator, FakeClock, Relay, TelemetryParser]:
    clock, relay = FakeClock(), Relay()
    emulator = Esp32Emulator(
        None, relay_closed=relay, clock=clock, rng=random.Random(5), charge_power_w=3600.0, **kw
    )
    return emulator, clock, relay, TelemetryParser()


def exchange(emulator: Esp32Emulator, command_id: int, command: Any) -> Ack:
    parser = TelemetryParser()
    (ack,) = parser.feed_all(emulator.receive(encode_command(command_id, command)))
    assert isinstance(ack, Ack)
    return ack


def frame(emulator: Esp32Emulator, clock: FakeClock, parser: TelemetryParser) -> TelemetrySample:
    clock.now += 1.0
    (sample,) = parser.feed(emulator.tick())
    return sample


# -- the emulated firmware, sans I/O ------------------------------------------------------


def test_without_a_watchdog_the_firmware_relay_is_always_closed_and_pings_are_acked() -> None:
    emulator, clock, _, parser = firmware()
    assert emulator.esp32_relay_closed(1)
    assert exchange(emulator, 1, WatchdogPing(500)) == Ack(1, ok=True)
    clock.now += 60
    assert emulator.esp32_relay_closed(1)
    assert emulator.watchdog_trips == 0
    assert ("rly", "1") in frame(emulator, clock, parser).extra


def test_firmware_relay_waits_for_the_first_ping_then_opens_when_pings_stop() -> None:
    emulator, clock, relay, parser = firmware(watchdog=True, energy_wh=100)
    frame(emulator, clock, parser)
    # Booted: its own relay is open until the Pi shows it is alive.
    sample = frame(emulator, clock, parser)
    assert not emulator.esp32_relay_closed(1)
    assert sample.power_w == 0 and ("rly", "0") in sample.extra
    assert sample.energy_wh == 100

    exchange(emulator, 1, WatchdogPing(2000))
    sample = frame(emulator, clock, parser)  # 1 s after the ping
    assert sample.power_w == 3600.0 and ("rly", "1") in sample.extra
    assert sample.energy_wh == 101

    # No ping for more than 2 s: the firmware opens its relay by itself.
    clock.now += 1.5
    sample = frame(emulator, clock, parser)
    assert emulator.watchdog_trips == 1
    assert emulator.watchdog_tripped(1)
    assert sample.power_w == 0 and sample.current_a == 0
    assert ("rly", "0") in sample.extra and ("trip", "1") in sample.extra
    energy = sample.energy_wh

    # Pings alone do not close it again: the Pi must first report its relay open.
    exchange(emulator, 2, WatchdogPing(2000))
    assert not emulator.esp32_relay_closed(1)
    assert frame(emulator, clock, parser).energy_wh == energy
    relay.closed = False  # the Pi has opened its own relay (the connector faulted)
    ack = exchange(emulator, 3, RelayState(1, closed=False))
    assert ack == Ack(3, ok=True, fields=(("rly", "0"),))
    assert not emulator.watchdog_tripped(1)
    assert emulator.esp32_relay_closed(1)
    relay.closed = True  # the next session
    sample = frame(emulator, clock, parser)
    assert ("trip", "1") not in sample.extra and sample.power_w == 3600.0
    assert emulator.watchdog_trips == 1


def test_relay_report_is_answered_with_the_sensed_contact() -> None:
    emulator, _, relay, _ = firmware()
    relay.closed = False
    assert exchange(emulator, 7, RelayState(1, closed=True)).field("rly") == "0"
    relay.closed = True
    assert exchange(emulator, 8, RelayState(1, closed=True)).field("rly") == "1"
    assert emulator.commands_executed == {"RLY": 2}


def test_current_limit_caps_the_power_and_stands_in_the_frames() -> None:
    emulator, clock, _, parser = firmware()
    frame(emulator, clock, parser)
    assert exchange(emulator, 4, CurrentLimit(1, 6.0)) == Ack(4, ok=True, fields=(("lim", "6.0"),))
    assert emulator.current_limit(1) == 6.0
    sample = frame(emulator, clock, parser)
    assert sample.power_w == pytest.approx(6.0 * 230.0)
    assert ("lim", "6.0") in sample.extra
    # A reboot forgets what lived in RAM.
    emulator.reboot()
    assert emulator.current_limit(1) is None
    assert frame(emulator, clock, parser).power_w == 3600.0


def test_commands_for_a_channel_it_does_not_meter_are_refused() -> None:
    emulator, _, _, _ = firmware()
    assert exchange(emulator, 5, RelayState(2, closed=True)) == Ack(
        5, ok=False, reason="bad-channel"
    )
    assert exchange(emulator, 6, CurrentLimit(3, 16.0)).reason == "bad-channel"


def test_lost_and_garbled_commands_get_no_answer() -> None:
    emulator, _, _, _ = firmware()
    emulator.drop_commands(1)
    assert emulator.receive(encode_command(1, WatchdogPing(1000))) == b""
    garbled = bytearray(encode_command(2, WatchdogPing(1000)))
    garbled[4] ^= 0x01
    assert emulator.receive(bytes(garbled)) == b""
    assert emulator.command_errors == {"bad_checksum": 1}
    assert emulator.receive(encode_command(3, WatchdogPing(1000))) != b""


# -- the serial link over a pty, against the emulator -------------------------------------


def fast_retry(attempt: int) -> float:
    return exponential(attempt, base_s=0.01, cap_s=0.05)


async def until(condition: Callable[[], bool], within_s: float = 3.0) -> None:
    try:
        async with asyncio.timeout(within_s):
            # Polling, because the conditions are other objects' counters.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError("condition not met in time") from None


class Tasks:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    tasks = Tasks()
    yield tasks
    await tasks.stop()


@dataclass
class Link:
    emulator: Esp32Emulator
    reader: SerialTelemetryReader
    samples: list[TelemetrySample]
    relay: Relay
    master: int
    path: Path


@pytest.fixture
def masters() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


async def start_link(
    tasks: Tasks, masters: list[int], tmp_path: Path, *, watchdog: bool = False, **reader_kw: Any
) -> Link:
    master, pts = open_pty()
    masters.append(master)
    # The udev symlink, as on the Pi: replugging points it at a new device.
    path = tmp_path / "edgepoint-esp32"
    path.symlink_to(pts)
    reader_kw.setdefault("ack_timeout_s", 0.1)
    reader = SerialTelemetryReader(str(path), backoff=fast_retry, **reader_kw)
    samples: list[TelemetrySample] = []
    tasks.start(reader.run(samples.append))
    await until(lambda: reader.connected)
    relay = Relay()
    emulator = Esp32Emulator(master, relay_closed=relay, interval_s=INTERVAL, watchdog=watchdog)
    tasks.start(emulator.run())
    await until(lambda: len(samples) >= 2)
    return Link(emulator, reader, samples, relay, master, path)


async def test_a_command_is_acked_and_its_echo_recorded(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path)
    assert link.reader.relay_echo(1) is True  # from the frames' rly field
    link.relay.closed = False
    ack = await link.reader.send_command(RelayState(1, closed=False))
    assert ack.ok and ack.field("rly") == "0"
    assert link.reader.relay_echo(1) is False
    stats = link.reader.stats.commands
    assert (stats.sent, stats.acked, stats.retries, stats.timeouts) == (1, 1, 0, 0)
    assert link.emulator.commands_executed == {"RLY": 1}


async def test_an_unanswered_command_is_retried_with_the_same_id(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path)
    link.emulator.drop_commands(2)
    assert await link.reader.set_current_limit(1, 10.0) == 10.0
    stats = link.reader.stats.commands
    assert (stats.sent, stats.retries, stats.acked) == (3, 2, 1)
    assert link.emulator.current_limit(1) == 10.0
    await until(lambda: link.reader.stats.channels[0].current_limit_a == 10.0)


async def test_a_command_never_answered_fails_after_its_attempts(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path, attempts=2)
    link.emulator.drop_commands(10)
    with pytest.raises(CommandFailed, match="no ack after 2 attempt"):
        await link.reader.send_command(CurrentLimit(1, 16.0))
    stats = link.reader.stats.commands
    assert (stats.sent, stats.timeouts, stats.acked) == (2, 1, 0)
    assert link.emulator.current_limit(1) is None


async def test_a_refused_command_fails_at_once(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path)
    with pytest.raises(CommandFailed, match="bad-channel") as info:
        await link.reader.send_command(RelayState(4, closed=True))
    assert info.value.ack is not None and not info.value.ack.ok
    assert link.reader.stats.commands.refused == 1
    assert link.reader.stats.commands.sent == 1


async def test_commands_fail_while_the_link_is_down(tmp_path: Path) -> None:
    reader = SerialTelemetryReader(str(tmp_path / "absent"))
    with pytest.raises(CommandFailed, match="down"):
        await reader.send_command(WatchdogPing(1000))
    reader.ping_watchdog()  # returns at once, nothing to send it on
    assert reader.stats.commands.pings_failed == 1
    assert reader.relay_echo(1) is None


async def test_pings_keep_the_firmware_relay_closed_and_their_end_opens_it(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path, watchdog=True, watchdog_timeout_s=0.2)
    assert not link.emulator.esp32_relay_closed(1)  # booted, no ping yet
    await until(lambda: link.reader.relay_echo(1) is False)

    async def kiosk_loop() -> None:
        while True:
            link.reader.ping_watchdog()
            await asyncio.sleep(0.05)

    pinging = tasks.start(kiosk_loop())
    await until(lambda: link.emulator.esp32_relay_closed(1))
    await until(lambda: link.reader.relay_echo(1) is True)
    energy = link.emulator.energy_wh
    await until(lambda: link.emulator.energy_wh > energy)

    # The loop stops turning: no more pings, and the firmware opens its relay.
    pinging.cancel()
    await until(lambda: link.emulator.watchdog_trips == 1)
    await until(lambda: link.reader.watchdog_tripped(1) and link.reader.relay_echo(1) is False)
    stopped = link.samples[-1]
    assert stopped.power_w == 0
    assert link.reader.stats.commands.pings > 0

    # The Pi recovers: reports its relay open (the latch goes), then pings again.
    link.relay.closed = False
    link.reader.report_relay(1, closed=False)
    await until(lambda: not link.emulator.watchdog_tripped(1))
    tasks.start(kiosk_loop())
    await until(lambda: link.emulator.esp32_relay_closed(1))
    await until(lambda: not link.reader.watchdog_tripped(1))
    link.relay.closed = True
    await until(lambda: link.reader.relay_echo(1) is True)


async def test_serial_unplugged_and_replugged_mid_stream(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path, ack_timeout_s=0.2)
    reader, emulator = link.reader, link.emulator
    assert await reader.set_current_limit(1, 16.0) == 16.0
    reader.report_relay(1, closed=True)
    await until(lambda: emulator.commands_executed.get("RLY") == 1)
    before = len(link.samples)

    # Unplug mid-stream: the device node disappears under the open port.
    emulator.detach()
    os.close(link.master)
    masters.remove(link.master)
    link.path.unlink()
    await until(lambda: reader.stats.disconnects == 1)
    assert reader.relay_echo(1) is None  # nobody hears the ESP32 now
    with pytest.raises(CommandFailed, match="down"):
        await reader.send_command(WatchdogPing(1000))
    failures = reader.stats.open_failures
    await until(lambda: reader.stats.open_failures >= failures + 2)

    # Replug: a new device behind the same symlink; the ESP32 powered up afresh.
    master, pts = open_pty()
    masters.append(master)
    link.path.symlink_to(pts)
    await until(lambda: reader.connected)
    emulator.reboot()
    emulator.attach(master)
    await until(lambda: len(link.samples) >= before + 5)
    stats = reader.stats
    assert stats.reconnects == 1
    assert stats.esp32_reboots == 1
    assert link.samples[before].seq == 0
    # The standing orders reach the rebooted firmware again, without being asked.
    await until(lambda: emulator.current_limit(1) == 16.0)
    # (The counters are the emulator object's, kept through its reboot; what the link
    # wrote before the firmware listened may reach it too: commands are idempotent.)
    await until(lambda: emulator.commands_executed.get("RLY", 0) >= 2 and reader.relay_echo(1))
    assert reader.stats.commands.resyncs >= 2


async def test_a_command_waiting_for_its_ack_fails_when_the_port_dies(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path, ack_timeout_s=2.0)
    link.emulator.drop_commands(1)
    pending = asyncio.create_task(link.reader.send_command(CurrentLimit(1, 8.0)))
    await until(lambda: link.reader.stats.commands.sent == 1)
    link.emulator.detach()
    os.close(link.master)
    masters.remove(link.master)
    with pytest.raises(CommandFailed, match="went down"):
        await pending


async def test_an_esp32_reboot_brings_the_limit_back(
    tasks: Tasks, masters: list[int], tmp_path: Path
) -> None:
    link = await start_link(tasks, masters, tmp_path)
    await link.reader.set_current_limit(1, 12.5)
    link.emulator.reboot()  # a brown-out: the link stays, the RAM is gone
    assert link.emulator.current_limit(1) is None
    await until(lambda: link.reader.stats.esp32_reboots == 1)
    await until(lambda: link.emulator.current_limit(1) == 12.5)
    assert link.reader.stats.connected and link.reader.stats.reconnects == 0
