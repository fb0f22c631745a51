"""End-to-end tests of the telemetry link: emulator on a real pty, real pyserial reader."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepoint.backoff import exponential
from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry import (
    Esp32Emulator,
    MeterChannel,
    SerialTelemetryReader,
    open_pty,
)

pytestmark = pytest.mark.timeout(10)

INTERVAL = 0.01


def fast_retry(attempt: int) -> float:
    return exponential(attempt, base_s=0.01, cap_s=0.05)


class Relay:
    def __init__(self) -> None:
        self.closed = False

    def __call__(self) -> bool:
        return self.closed


class Received:
    def __init__(self) -> None:
        self.samples: list[TelemetrySample] = []
        self.times: list[float] = []

    def __call__(self, sample: TelemetrySample) -> None:
        self.samples.append(sample)
        self.times.append(time.monotonic())

    @property
    def seqs(self) -> list[int]:
        return [s.seq for s in self.samples]


class Tasks:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Ptys:
    """Opens ptys for a test and closes whatever master is still open afterwards."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def new(self) -> tuple[int, str]:
        master, path = open_pty()
        self.open.add(master)
        return master, path

    def close(self, master: int) -> None:
        self.open.discard(master)
        os.close(master)


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    tasks = Tasks()
    yield tasks
    await tasks.stop()


@pytest.fixture
def ptys() -> Iterator[Ptys]:
    ptys = Ptys()
    yield ptys
    for master in list(ptys.open):
        ptys.close(master)


async def until(condition: Callable[[], bool]) -> None:
    try:
        async with asyncio.timeout(3.0):
            # Polling, because the conditions are other objects' counters.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError("condition not met in time") from None


async def start_link(
    tasks: Tasks, ptys: Ptys, relay: Relay, **emulator_kw: Any
) -> tuple[Esp32Emulator, SerialTelemetryReader, Received]:
    master, path = ptys.new()
    reader = SerialTelemetryReader(path, backoff=fast_retry)
    received = Received()
    tasks.start(reader.run(received))
    # pyserial flushes the input queue when it opens the port: start the ESP32
    # only then, so that frame 0 is the first one the reader sees.
    await until(lambda: reader.stats.connected)
    emulator = Esp32Emulator(master, relay_closed=relay, interval_s=INTERVAL, **emulator_kw)
    tasks.start(emulator.run())
    return emulator, reader, received


async def test_samples_arrive_in_order_and_energy_follows_the_relay(
    tasks: Tasks, ptys: Ptys
) -> None:
    relay = Relay()
    # 360 kW makes 100 Wh/s: large enough to measure over a fraction of a second.
    power = 360_000.0
    emulator, reader, received = await start_link(
        tasks, ptys, relay, charge_power_w=power, energy_wh=1000
    )
    await until(lambda: len(received.samples) >= 10)
    assert {s.energy_wh for s in received.samples} == {1000}

    relay.closed = True
    closed_at = time.monotonic()
    await asyncio.sleep(0.5)
    relay.closed = False
    opened_at = time.monotonic()
    await asyncio.sleep(0.2)
    frames_sent = emulator.frames_sent
    await until(lambda: received.samples[-1].seq == emulator.last_seq)

    assert received.seqs == list(range(frames_sent))
    assert reader.stats.frames.seq_gaps == reader.stats.frames.seq_resets == 0
    energies = [s.energy_wh for s in received.samples]
    assert energies == sorted(energies)
    charging = [s for s in received.samples if s.power_w > 0]
    idle_after = received.samples[received.samples.index(charging[-1]) + 1 :]
    # Rises only while closed: every frame after the relay opened repeats the last value.
    assert idle_after
    assert {s.energy_wh for s in idle_after} == {charging[-1].energy_wh}
    assert emulator.energy_wh == charging[-1].energy_wh
    expected = power / 3600.0 * (opened_at - closed_at)
    assert charging[-1].energy_wh - 1000 == pytest.approx(expected, rel=0.15, abs=3)


async def test_several_channels_share_the_link_and_only_a_closed_relay_meters(
    tasks: Tasks, ptys: Ptys
) -> None:
    master, path = ptys.new()
    reader = SerialTelemetryReader(path, backoff=fast_retry)
    received = Received()
    tasks.start(reader.run(received))
    await until(lambda: reader.stats.connected)
    relays = {1: Relay(), 2: Relay(), 3: Relay()}
    relays[2].closed = True
    emulator = Esp32Emulator(
        master,
        channels=[MeterChannel(n, relay, energy_wh=1000 * n) for n, relay in relays.items()],
        charge_power_w=360_000.0,  # 100 Wh/s
        interval_s=INTERVAL,
    )
    tasks.start(emulator.run())
    await until(lambda: len(received.samples) >= 30)
    relays[2].closed = False
    await asyncio.sleep(0.05)
    frames_sent = emulator.frames_sent
    await until(lambda: received.samples[-1].seq == emulator.last_seq)

    # Every frame of every channel arrived, numbered by one counter.
    assert received.seqs == list(range(frames_sent))
    assert reader.stats.frames.seq_gaps == reader.stats.frames.seq_resets == 0
    channels = [s.channel for s in received.samples]
    assert channels == [1, 2, 3] * (len(channels) // 3)
    energy = {n: [s.energy_wh for s in received.samples if s.channel == n] for n in relays}
    assert set(energy[1]) == {1000} and set(energy[3]) == {3000}
    assert energy[2] == sorted(energy[2]) and energy[2][-1] > 2000
    assert energy[2][-1] == emulator.energy_wh_of(2)


async def test_garbage_and_corrupt_frames_are_counted_and_skipped(tasks: Tasks, ptys: Ptys) -> None:
    emulator, reader, received = await start_link(tasks, ptys, Relay())
    await until(lambda: len(received.samples) >= 3)
    emulator.inject_garbage(b"\x00\xffboot noise\r\n")
    await until(lambda: len(received.samples) >= 6)
    emulator.corrupt_next()
    await until(lambda: len(received.samples) >= 10)
    emulator.inject_garbage(b"no line end, glued to the next frame ")
    await until(lambda: len(received.samples) >= 14)

    frames = reader.stats.frames
    assert frames.garbage == 2
    assert frames.bad_checksum == 1
    assert frames.seq_gaps == 1  # only the corrupted frame is missing
    seqs = received.seqs
    assert len(seqs) == seqs[-1]  # 0..n with exactly one number absent
    assert seqs == sorted(seqs)


async def test_pause_silences_the_link_and_resume_brings_it_back(tasks: Tasks, ptys: Ptys) -> None:
    emulator, reader, received = await start_link(tasks, ptys, Relay())
    await until(lambda: len(received.samples) >= 3)
    emulator.pause()
    await asyncio.sleep(5 * INTERVAL)  # let frames already in the pty drain
    count, last_at = len(received.samples), reader.last_sample_at
    assert last_at is not None
    await asyncio.sleep(0.15)
    assert len(received.samples) == count
    assert reader.last_sample_at == last_at
    assert reader.stats.connected  # silence is not an unplug: the port stays open

    emulator.resume()
    await until(lambda: len(received.samples) >= count + 3)
    assert reader.last_sample_at is not None and reader.last_sample_at > last_at
    # The ESP32 kept numbering while its frames went nowhere.
    assert reader.stats.frames.seq_gaps >= 5


async def test_reader_waits_for_a_missing_port_and_follows_unplug_and_replug(
    tasks: Tasks, ptys: Ptys, tmp_path: Path
) -> None:
    # udev gives the real ESP32 a stable symlink; the pty behind it changes on replug.
    link = tmp_path / "ttyESP32"
    reader = SerialTelemetryReader(str(link), backoff=fast_retry)
    received = Received()
    reader_task = tasks.start(reader.run(received))
    await until(lambda: reader.stats.open_failures >= 3)
    assert not reader_task.done()
    assert reader.stats.last_error is not None and "ttyESP32" in reader.stats.last_error
    assert reader.last_sample_at is None

    master, path = ptys.new()
    link.symlink_to(path)
    emulator = Esp32Emulator(master, relay_closed=lambda: False, interval_s=INTERVAL)
    tasks.start(emulator.run())
    await until(lambda: len(received.samples) >= 3)
    assert reader.stats.reconnects == 0

    # Unplug: the device node disappears under the open port.
    emulator.detach()
    ptys.close(master)
    link.unlink()
    await until(lambda: reader.stats.disconnects == 1)
    failures = reader.stats.open_failures
    await until(lambda: reader.stats.open_failures >= failures + 2)
    before = len(received.samples)

    # Replug: the ESP32 powers up again, so it starts over at frame 0.
    master, path = ptys.new()
    link.symlink_to(path)
    await until(lambda: reader.stats.connected)
    emulator.reboot()
    emulator.attach(master)
    await until(lambda: len(received.samples) >= before + 3)
    stats = reader.stats
    assert stats.reconnects == 1
    assert stats.frames.seq_resets == 1
    assert received.samples[before].seq == 0

    started = time.monotonic()
    reader_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader_task
    assert time.monotonic() - started < 1.0
    assert not reader.stats.connected


async def test_cancel_during_a_long_backoff_is_immediate(tasks: Tasks, tmp_path: Path) -> None:
    reader = SerialTelemetryReader(str(tmp_path / "absent"), backoff=lambda attempt: 30.0)
    task = tasks.start(reader.run(lambda sample: None))
    await until(lambda: reader.stats.open_failures == 1)
    started = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert reader.stats.open_attempts == 1


async def test_emulator_never_blocks_the_loop_when_nobody_reads(tasks: Tasks, ptys: Ptys) -> None:
    master, path = ptys.new()
    emulator = Esp32Emulator(
        master, relay_closed=lambda: True, interval_s=0.001, extra=(("pad", "x" * 64),)
    )
    tasks.start(emulator.run())
    # No reader: the pty fills up, then the emulator must drop frames, not wait.
    started = time.monotonic()
    for _ in range(50):
        emulator.inject_garbage(b"#" * 1000 + b"\r\n")
    await until(lambda: emulator.frames_dropped > 0)
    lag_started = time.monotonic()
    await asyncio.sleep(0.01)
    assert time.monotonic() - lag_started < 0.2
    assert time.monotonic() - started < 3.0

    # A reader that finally shows up gets clean frames (pyserial flushes the backlog on open).
    reader = SerialTelemetryReader(path, backoff=fast_retry)
    received = Received()
    tasks.start(reader.run(received))
    await until(lambda: len(received.samples) >= 5)


async def test_retries_follow_the_injected_backoff(tmp_path: Path) -> None:
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 5:
            raise asyncio.CancelledError

    reader = SerialTelemetryReader(
        str(tmp_path / "absent"), backoff=lambda attempt: float(attempt), sleep=record
    )
    with pytest.raises(asyncio.CancelledError):
        await reader.run(lambda sample: None)
    assert delays == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert reader.stats.open_attempts == reader.stats.open_failures == 5
