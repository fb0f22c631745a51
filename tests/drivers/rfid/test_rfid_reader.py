"""The async Pn532Reader over the real adafruit driver, the emulated bus and the emulated chip."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from edgepoint.charging.events import IdTag, TokenPresented
from edgepoint.drivers.rfid.bus import EmulatedI2CBus
from edgepoint.drivers.rfid.emulator import CMD_IN_LIST_PASSIVE_TARGET, I2C_ADDRESS, Pn532Emulator
from edgepoint.drivers.rfid.reader import (
    Pn532Reader,
    ReaderStats,
    open_pn532_bus,
)
from edgepoint.errors import DeviceError

UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("04A1B2C3D4E5F6")

pytestmark = pytest.mark.timeout(10)


async def until(condition: Callable[[], bool], within_s: float = 3.0) -> None:
    async with asyncio.timeout(within_s):
        # Polling on purpose: the conditions read stats that have no event to wait on.
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(reader: Pn532Reader) -> AsyncIterator[list[TokenPresented]]:
    seen: list[TokenPresented] = []
    task = asyncio.create_task(reader.run(seen.append))
    try:
        yield seen
    finally:
        task.cancel()
        # Bounded, so a reader that ignores cancellation fails here instead of hanging.
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, "reader.run() did not stop when cancelled"
        assert task.cancelled()


async def polls_after(reader: Pn532Reader, count: int) -> None:
    """Wait until `count` more polls have finished, so the chip's state has been seen."""
    target = reader.stats.polls + count
    await until(lambda: reader.stats.polls >= target)


@pytest.fixture
def chip() -> Pn532Emulator:
    return Pn532Emulator()


@pytest.fixture
def bus(chip: Pn532Emulator) -> EmulatedI2CBus:
    return EmulatedI2CBus.with_pn532(chip)


def make_reader(
    bus: EmulatedI2CBus,
    *,
    poll_timeout_s: float = 0.05,
    health_check_s: float = 5.0,
    stall_timeout_s: float = 2.0,
) -> Pn532Reader:
    return Pn532Reader(
        bus,
        poll_timeout_s=poll_timeout_s,
        backoff=lambda attempt: 0.05,
        health_check_s=health_check_s,
        stall_timeout_s=stall_timeout_s,
    )


async def test_one_event_per_presentation_even_when_the_card_dwells(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        chip.present_card(UID7, dwell_s=0.4)
        await until(lambda: chip.card_in_field() is None)
        await polls_after(reader, 2)
    assert seen == [TokenPresented(id_tag=IdTag("04A1B2C3D4E5F6"))]
    assert reader.stats.reads >= 2
    assert reader.stats.published == 1
    assert reader.stats.errors == 0


async def test_same_card_again_after_removal_is_a_new_presentation(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: len(seen) == 1)
        chip.remove_card()
        await polls_after(reader, 2)
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: len(seen) == 2)
        chip.present_card(UID7, dwell_s=10)  # a different card replaces it at once
        await until(lambda: len(seen) == 3)
    assert [event.id_tag for event in seen] == ["DEADBEEF", "DEADBEEF", "04A1B2C3D4E5F6"]


async def test_corrupted_frame_is_counted_and_the_next_tap_arrives(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        chip.corrupt_next_response()
        chip.present_card(UID4, dwell_s=0.2)
        await until(lambda: len(seen) == 1)
    stats = reader.stats
    assert stats.errors == 1
    assert stats.last_error is not None and "checksum" in stats.last_error
    assert stats.connects == 1
    assert seen == [TokenPresented(id_tag=IdTag("DEADBEEF"))]


async def test_cancel_is_prompt_and_the_worker_stops_polling(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, poll_timeout_s=0.1)
    task = asyncio.create_task(reader.run(lambda event: None))
    await until(lambda: reader.stats.polls >= 2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert not reader.stats.connected
    await asyncio.sleep(0.3)  # one in-flight poll may still finish in its thread
    polls = chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET)
    await asyncio.sleep(0.3)
    assert chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET) == polls


async def test_unreachable_chip_is_retried_with_backoff_until_it_answers(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.02

    bus.detach(I2C_ADDRESS)
    reader = Pn532Reader(bus, poll_timeout_s=0.05, backoff=backoff)
    async with running(reader) as seen:
        await until(lambda: len(attempts) >= 3)
        assert not reader.stats.connected
        assert reader.stats.last_error is not None and "No I2C device" in reader.stats.last_error
        bus.attach(I2C_ADDRESS)
        await until(lambda: reader.stats.connected)
        chip.present_card(UID4)
        await until(lambda: len(seen) == 1)
    assert attempts[:3] == [0, 1, 2]


async def test_unplugged_chip_is_noticed_by_the_health_check_and_reconnected(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, health_check_s=0.1)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        bus.detach(I2C_ADDRESS)
        await until(lambda: not reader.stats.connected)
        bus.attach(I2C_ADDRESS)
        await until(lambda: reader.stats.connects == 2)
        chip.present_card(UID7)
        await until(lambda: len(seen) == 1)


class StretchingChip:
    """The emulated chip behind a slave that can hold the clock low, hanging every read."""

    def __init__(self, chip: Pn532Emulator) -> None:
        self.chip = chip
        self.released = threading.Event()
        self.released.set()

    def i2c_write(self, data: bytes) -> None:
        self.chip.i2c_write(data)

    def i2c_read(self, count: int) -> bytes:
        self.released.wait()
        return self.chip.i2c_read(count)


async def test_stalled_bus_is_abandoned_and_the_reader_reconnects(chip: Pn532Emulator) -> None:
    device = StretchingChip(chip)
    reader = make_reader(EmulatedI2CBus({I2C_ADDRESS: device}), stall_timeout_s=0.3)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        device.released.clear()
        await until(lambda: not reader.stats.connected)
        assert reader.stats.last_error is not None and "stalled" in reader.stats.last_error
        device.released.set()
        await until(lambda: reader.stats.connects == 2)
        chip.present_card(UID4)
        await until(lambda: len(seen) == 1)


def test_stats_are_an_immutable_snapshot() -> None:
    stats = ReaderStats()
    with pytest.raises(AttributeError):
        stats.polls = 3  # type: ignore[misc]


def test_simulated_bus_carries_the_given_emulator(chip: Pn532Emulator) -> None:
    bus = open_pn532_bus(simulate=True, emulator=chip)
    assert isinstance(bus, EmulatedI2CBus)
    assert bus.scan() == [I2C_ADDRESS]
    chip.present_card(UID4)
    assert chip.card_in_field() == UID4


def test_hardware_bus_failure_is_a_device_error() -> None:
    try:
        bus = open_pn532_bus(simulate=False, emulator=None)
    except DeviceError as err:
        assert err.__cause__ is not None
    else:
        bus.deinit()
        pytest.skip("a real I2C bus is present on this machine")
