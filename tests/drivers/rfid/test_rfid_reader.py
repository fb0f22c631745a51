"""The async Pn532Reader over the real adafruit driver, emulated buses and the emulated chip."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from edgepoint.charging.events import IdTag, TokenPresented
from edgepoint.drivers.rfid.bus import EmulatedI2CBus
from edgepoint.drivers.rfid.debounce import TapDebouncer
from edgepoint.drivers.rfid.emulator import (
    CMD_IN_LIST_PASSIVE_TARGET,
    I2C_ADDRESS,
    Flicker,
    Pn532Emulator,
)
from edgepoint.drivers.rfid.link import Interface, IrqLine, emulated_link
from edgepoint.drivers.rfid.reader import (
    Pn532Reader,
    ReaderStats,
    open_pn532_bus,
    target_uid,
)
from edgepoint.errors import DeviceError

UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("04A1B2C3D4E5F6")
UID10 = bytes.fromhex("0102030405060708090A")
IRQ_PIN = 16

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


@pytest.fixture
def chip() -> Pn532Emulator:
    return Pn532Emulator()


@pytest.fixture
def bus(chip: Pn532Emulator) -> EmulatedI2CBus:
    return EmulatedI2CBus.with_pn532(chip)


def make_reader(bus: object, **kw: object) -> Pn532Reader:
    options: dict[str, object] = {
        "poll_interval_s": 0.02,
        "removal_s": 0.5,
        "stall_timeout_s": 2.0,
        "backoff": lambda attempt: 0.05,
    }
    options.update(kw)
    return Pn532Reader(bus, **options)  # type: ignore[arg-type]


def tags(seen: list[TokenPresented]) -> list[str]:
    return [event.id_tag for event in seen]


async def test_one_event_per_presentation_even_when_the_card_dwells(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        chip.present_card(UID7, dwell_s=0.4)
        await until(lambda: chip.card_in_field() is None)
        await asyncio.sleep(0.1)
    assert seen == [TokenPresented(id_tag=IdTag("04A1B2C3D4E5F6"))]
    stats = reader.stats
    assert stats.reads >= 2  # the held card answered again and again
    assert stats.published == 1 and stats.repeats == stats.reads - 1
    assert stats.errors == 0


@pytest.mark.parametrize(
    ("uid", "tag"),
    [(UID4, "DEADBEEF"), (UID7, "04A1B2C3D4E5F6"), (UID10, "0102030405060708090A")],
    ids=["4-byte", "7-byte", "10-byte"],
)
async def test_uid_becomes_upper_case_hex(
    chip: Pn532Emulator, bus: EmulatedI2CBus, uid: bytes, tag: str
) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        chip.present_card(uid)
        await until(lambda: len(seen) == 1)
    assert tags(seen) == [tag]


async def test_same_card_after_removal_is_a_new_tap_and_another_card_at_once(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, removal_s=0.3)
    async with running(reader) as seen:
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: len(seen) == 1)
        chip.remove_card()
        await asyncio.sleep(0.1)  # taken away only briefly: still the same presentation
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: reader.stats.repeats >= 3)
        assert len(seen) == 1
        chip.remove_card()
        await asyncio.sleep(0.5)  # away for longer than removal_s
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: len(seen) == 2)
        chip.present_card(UID7, dwell_s=10)  # a different card replaces it at once
        await until(lambda: len(seen) == 3)
    assert tags(seen) == ["DEADBEEF", "DEADBEEF", "04A1B2C3D4E5F6"]


async def test_a_flickering_held_card_is_one_tap(chip: Pn532Emulator, bus: EmulatedI2CBus) -> None:
    # A real reader loses a card held still now and then; one missed look must not
    # re-arm the tap, or the second "tap" would stop the session just started.
    chip.flicker = Flicker(on_s=0.05, off_s=0.15)
    reader = make_reader(bus, removal_s=0.5)
    async with running(reader) as seen:
        chip.present_card(UID7, dwell_s=1.5)
        await until(lambda: chip.card_in_field() is None)
        await asyncio.sleep(0.1)
        assert tags(seen) == ["04A1B2C3D4E5F6"]
        assert reader.stats.reads >= 4  # it was seen again, and again, between the gaps
        # Taken away for longer than removal_s, then shown again: a new tap.
        await asyncio.sleep(0.5)
        chip.present_card(UID7, dwell_s=0.3)
        await until(lambda: len(seen) == 2)


async def test_a_held_card_read_late_each_time_is_still_one_tap(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    # A host that gets round to the chip only every 0.3 s (a loaded CPU, here a long
    # poll interval) reads each latched sighting later than removal_s after arming it;
    # the field was never seen empty, so the card held for 1.2 s is one tap, not four
    # (the second would stop the session the first started).
    reader = make_reader(bus, poll_interval_s=0.3, removal_s=0.2)
    async with running(reader) as seen:
        chip.present_card(UID4, dwell_s=1.2)
        await until(lambda: chip.card_in_field() is None, within_s=5)
        await until(lambda: reader.stats.reads >= 3)
        assert tags(seen) == ["DEADBEEF"]
        # Away, and seen away for longer than removal_s: the next one is a new tap.
        await asyncio.sleep(0.8)
        chip.present_card(UID4, dwell_s=0.5)
        await until(lambda: len(seen) == 2, within_s=5)


async def test_a_short_tap_while_the_loop_is_busy_is_still_read(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    # At start-up the loop is busy for longer than a card's dwell; the chip latches
    # the card by itself, so the reader finds it when it next gets to look.
    reader = make_reader(bus, poll_interval_s=0.1)
    async with running(reader) as seen:
        await until(lambda: reader.stats.arms >= 1)
        chip.present_card(UID4, dwell_s=0.3)
        time.sleep(0.6)  # noqa: ASYNC251 - blocks the loop past the dwell, as a busy start-up does
        assert chip.card_in_field() is None
        await until(lambda: len(seen) == 1)
    assert tags(seen) == ["DEADBEEF"]


async def test_idle_reader_arms_once_and_only_peeks_at_the_status(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, poll_interval_s=0.05, health_check_s=60)
    async with running(reader):
        await until(lambda: reader.stats.connected)
        polls = chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET)
        probes = reader.stats.probes
        await asyncio.sleep(0.5)
        # No command frames while idle: the chip looks for cards by itself.
        assert chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET) == polls == 1
        assert 5 <= reader.stats.probes - probes <= 12  # about one per poll interval


async def test_with_the_irq_line_an_idle_reader_does_not_touch_the_bus(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    irq = IrqLine.emulated(chip, IRQ_PIN)
    reader = make_reader(bus, irq=irq, health_check_s=60)
    try:
        async with running(reader) as seen:
            await until(lambda: reader.stats.connected)
            before = chip.stats.status_reads
            await asyncio.sleep(0.3)
            assert chip.stats.status_reads == before
            assert reader.stats.probes == 0 and reader.stats.irq
            started = time.monotonic()
            chip.present_card(UID7)
            await until(lambda: len(seen) == 1)
            assert time.monotonic() - started < 0.2
            # A flickering card comes back by itself; the line says so.
            chip.remove_card()
            chip.flicker = Flicker(on_s=0.05, off_s=0.1)
            await asyncio.sleep(0.7)
            chip.present_card(UID4, dwell_s=0.6)
            await until(lambda: len(seen) == 2)
            await asyncio.sleep(0.7)
        assert tags(seen) == ["04A1B2C3D4E5F6", "DEADBEEF"]
    finally:
        irq.close()


@pytest.mark.parametrize("interface", [Interface.SPI, Interface.UART], ids=["spi", "uart"])
async def test_spi_and_uart_links_read_cards_too(chip: Pn532Emulator, interface: Interface) -> None:
    reader = make_reader(emulated_link(chip, interface))
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        assert reader.stats.interface == interface.value
        assert reader.stats.firmware == "1.6"
        chip.present_card(UID10, dwell_s=0.3)
        await until(lambda: len(seen) == 1)
        chip.present_card(UID4, dwell_s=0.3)
        await until(lambda: len(seen) == 2)
    assert tags(seen) == ["0102030405060708090A", "DEADBEEF"]
    assert reader.stats.errors == 0


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
    assert stats.connects == 1 and stats.fault is None
    assert seen == [TokenPresented(id_tag=IdTag("DEADBEEF"))]


async def test_cancel_is_prompt_and_the_worker_stops(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, poll_interval_s=0.1)
    task = asyncio.create_task(reader.run(lambda event: None))
    await until(lambda: reader.stats.probes >= 2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert not reader.stats.connected
    await asyncio.sleep(0.2)  # the worker notices the stop within one poll interval
    reads = chip.stats.status_reads
    await asyncio.sleep(0.3)
    assert chip.stats.status_reads == reads
    assert chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET) == 1


async def test_unreachable_chip_is_a_fault_retried_with_backoff_until_it_answers(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.02

    bus.detach(I2C_ADDRESS)
    reader = Pn532Reader(bus, poll_interval_s=0.05, backoff=backoff)
    async with running(reader) as seen:
        await until(lambda: len(attempts) >= 3)
        assert not reader.stats.connected
        assert reader.reader_faulted()
        assert reader.fault is not None and "No I2C device" in reader.fault
        bus.attach(I2C_ADDRESS)
        await until(lambda: reader.stats.connected)
        assert not reader.reader_faulted() and reader.fault is None
        chip.present_card(UID4)
        await until(lambda: len(seen) == 1)
    assert attempts[:3] == [0, 1, 2]


async def test_reader_unplugged_and_back(chip: Pn532Emulator, bus: EmulatedI2CBus) -> None:
    reader = make_reader(bus)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        assert not reader.reader_faulted()
        bus.detach(I2C_ADDRESS)  # the status peeks fail at once (EREMOTEIO)
        await until(reader.reader_faulted)
        assert not reader.stats.connected
        bus.attach(I2C_ADDRESS)
        await until(lambda: reader.stats.connects == 2)
        assert not reader.reader_faulted()
        chip.present_card(UID7)
        await until(lambda: len(seen) == 1)


async def test_a_chip_that_stops_acking_is_a_fault_until_it_answers_again(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    irq = IrqLine.emulated(chip, IRQ_PIN)
    # With the IRQ line nothing touches the bus while idle: the health check finds it.
    reader = make_reader(bus, irq=irq, health_check_s=0.1, ack_timeout_s=0.05)
    try:
        async with running(reader) as seen:
            await until(lambda: reader.stats.connected)
            chip.hang()
            await until(reader.reader_faulted, within_s=5)
            chip.hang(False)
            await until(lambda: not reader.reader_faulted(), within_s=5)
            chip.present_card(UID4)
            await until(lambda: len(seen) == 1)
        assert reader.stats.health_checks >= 1
    finally:
        irq.close()


async def test_a_chip_that_is_no_pn532_is_a_fault(chip: Pn532Emulator, bus: EmulatedI2CBus) -> None:
    chip.set_firmware(bytes((0x31, 0x01, 0x06, 0x07)))  # a PN531 answers 0x31
    reader = make_reader(bus)
    async with running(reader) as seen:
        await until(reader.reader_faulted)
        assert reader.fault is not None and "not a PN532" in reader.fault
        chip.set_firmware(bytes((0x32, 0x01, 0x06, 0x07)))
        await until(lambda: reader.stats.connected)
        chip.present_card(UID7)
        await until(lambda: len(seen) == 1)


async def test_a_card_lying_on_the_reader_through_a_fault_is_not_a_second_tap(
    chip: Pn532Emulator, bus: EmulatedI2CBus
) -> None:
    reader = make_reader(bus, removal_s=0.2)
    async with running(reader) as seen:
        chip.present_card(UID4, dwell_s=10)
        await until(lambda: len(seen) == 1)
        bus.detach(I2C_ADDRESS)
        await until(reader.reader_faulted)
        await asyncio.sleep(0.4)  # longer than removal_s, but the reader was blind
        bus.attach(I2C_ADDRESS)
        await until(lambda: reader.stats.connects == 2)
        await until(lambda: reader.stats.repeats >= 1)
    assert tags(seen) == ["DEADBEEF"]


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
    reader = make_reader(EmulatedI2CBus({I2C_ADDRESS: device}), stall_timeout_s=1.5)
    async with running(reader) as seen:
        await until(lambda: reader.stats.connected)
        device.released.clear()
        await until(lambda: not reader.stats.connected)
        assert reader.fault is not None and "stalled" in reader.fault
        device.released.set()
        await until(lambda: reader.stats.connects == 2, within_s=5)
        chip.present_card(UID4)
        await until(lambda: len(seen) == 1)


def test_target_uid_parsing() -> None:
    header = bytes.fromhex("01 01 00 04 08")
    assert target_uid(header + b"\x04" + UID4) == UID4
    assert target_uid(header + b"\x0a" + UID10) == UID10
    assert target_uid(b"\x00") is None
    with pytest.raises(DeviceError, match="5-byte UID"):
        target_uid(header + b"\x05" + bytes(5))
    with pytest.raises(DeviceError, match="too short"):
        target_uid(b"\x01\x01")


def test_debouncer_counts_only_absence_it_watched() -> None:
    debouncer = TapDebouncer(removal_s=1.0)
    assert debouncer.seen(UID4)
    debouncer.watching(0.1)
    debouncer.empty(0.9)
    assert not debouncer.seen(UID4)  # missed for 0.8 s: flicker
    debouncer.watching(1.0)
    debouncer.watching(1.5)  # a health check re-arms: still watching since 1.0
    debouncer.empty(1.7)
    debouncer.empty(2.0)
    assert debouncer.seen(UID4)  # seen empty for 1.0 s: taken away and back
    debouncer.watching(2.1)
    debouncer.empty(5.0)
    debouncer.blind()
    debouncer.watching(9.0)
    assert not debouncer.seen(UID4)  # the reader was blind from 5.0 to 9.0
    assert debouncer.seen(UID7)  # another card


def test_a_late_read_of_a_held_card_is_no_evidence_of_absence() -> None:
    """The chip latched the card when it was armed; the host read it seconds later (a
    loaded CPU): no look found the field empty, so it is the same presentation."""
    debouncer = TapDebouncer(removal_s=0.2)
    assert debouncer.seen(UID4)
    debouncer.watching(10.0)
    assert not debouncer.seen(UID4)  # read at 13.0, say: nothing was seen empty
    debouncer.watching(13.0)
    debouncer.empty(13.05)  # one look found nothing, 50 ms after arming
    assert not debouncer.seen(UID4)


def test_stats_are_an_immutable_snapshot() -> None:
    stats = ReaderStats()
    with pytest.raises(AttributeError):
        stats.reads = 3  # type: ignore[misc]


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
