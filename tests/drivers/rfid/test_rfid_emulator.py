"""The real adafruit PN532 driver against the emulated chip on emulated I2C, SPI and UART."""

from __future__ import annotations

import errno

import pytest
from adafruit_pn532.i2c import PN532_I2C
from adafruit_pn532.spi import PN532_SPI
from adafruit_pn532.uart import PN532_UART

from edgepoint.drivers.rfid.bus import EmulatedI2CBus, EmulatedSpiBus, EmulatedUart, reverse_bits
from edgepoint.drivers.rfid.emulator import (
    CMD_GET_FIRMWARE_VERSION,
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_SAM_CONFIGURATION,
    I2C_ADDRESS,
    Flicker,
    Pn532Emulator,
)
from edgepoint.drivers.rfid.frames import ACK, NACK, decode_frame, encode_frame

UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("04A1B2C3D4E5F6")
POLL = 0.05


class ManualClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chip(clock: ManualClock) -> Pn532Emulator:
    return Pn532Emulator(monotonic=clock)


@pytest.fixture
def bus(chip: Pn532Emulator) -> EmulatedI2CBus:
    return EmulatedI2CBus.with_pn532(chip)


@pytest.fixture
def pn532(bus: EmulatedI2CBus) -> PN532_I2C:
    driver = PN532_I2C(bus)
    driver.SAM_configuration()
    return driver


def transfer(bus: EmulatedI2CBus, frame: bytes) -> None:
    assert bus.try_lock()
    try:
        bus.writeto(I2C_ADDRESS, frame)
    finally:
        bus.unlock()


def read(bus: EmulatedI2CBus, count: int) -> bytes:
    buf = bytearray(count)
    assert bus.try_lock()
    try:
        bus.readfrom_into(I2C_ADDRESS, buf)
    finally:
        bus.unlock()
    return bytes(buf)


def test_driver_identifies_and_configures_the_chip(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    assert pn532.firmware_version == (0x32, 1, 6, 7)
    # The constructor wakes the chip (SAM) and reads the version once itself.
    assert chip.commands_seen(CMD_GET_FIRMWARE_VERSION) == 2
    assert chip.commands_seen(CMD_SAM_CONFIGURATION) == 2
    assert chip.stats.syntax_errors == 0


def test_no_card_reads_as_none(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    assert pn532.read_passive_target(timeout=POLL) is None
    assert chip.commands_seen(CMD_IN_LIST_PASSIVE_TARGET) == 1


@pytest.mark.parametrize("uid", [UID4, UID7], ids=["4-byte", "7-byte"])
def test_presented_uid_is_read(pn532: PN532_I2C, chip: Pn532Emulator, uid: bytes) -> None:
    chip.present_card(uid)
    assert pn532.read_passive_target(timeout=POLL) == uid
    # Real chips answer every poll while the card stays; debouncing is the reader's job.
    assert pn532.read_passive_target(timeout=POLL) == uid


def test_card_leaves_after_its_dwell_time(
    pn532: PN532_I2C, chip: Pn532Emulator, clock: ManualClock
) -> None:
    chip.present_card(UID4, dwell_s=0.3)
    clock.now += 0.29
    assert pn532.read_passive_target(timeout=POLL) == UID4
    clock.now += 0.01
    assert pn532.read_passive_target(timeout=POLL) is None
    assert chip.card_in_field() is None


def test_removed_card_is_gone(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    chip.present_card(UID4, dwell_s=60)
    chip.remove_card()
    assert pn532.read_passive_target(timeout=POLL) is None


def test_card_arriving_while_a_poll_waits_answers_that_poll(
    pn532: PN532_I2C, chip: Pn532Emulator
) -> None:
    assert pn532.listen_for_passive_target(timeout=POLL)
    assert pn532.get_passive_target(timeout=POLL) is None
    chip.present_card(UID7)
    assert pn532.get_passive_target(timeout=POLL) == UID7


def test_corrupted_response_raises_and_the_next_read_works(
    pn532: PN532_I2C, chip: Pn532Emulator
) -> None:
    chip.present_card(UID4)
    chip.corrupt_next_response()
    with pytest.raises(RuntimeError, match="checksum"):
        pn532.read_passive_target(timeout=POLL)
    assert pn532.read_passive_target(timeout=POLL) == UID4


def test_triple_size_uid_is_refused_by_the_driver(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    chip.present_card(bytes(range(1, 11)))
    with pytest.raises(RuntimeError, match="long UID"):
        pn532.read_passive_target(timeout=POLL)


def test_unknown_command_is_acked_then_answered_with_the_syntax_error_frame(
    pn532: PN532_I2C, chip: Pn532Emulator
) -> None:
    with pytest.raises(RuntimeError, match="unexpected command response"):
        pn532.call_function(0x04, response_length=8, timeout=POLL)  # GetGeneralStatus
    assert chip.stats.syntax_errors == 1
    assert pn532.firmware_version == (0x32, 1, 6, 7)


def test_status_byte_peeks_and_a_full_read_takes_the_frame(
    bus: EmulatedI2CBus, chip: Pn532Emulator
) -> None:
    assert read(bus, 1) == b"\x00"
    transfer(bus, encode_frame(b"\xd4\x02"))
    assert read(bus, 1) == b"\x01"
    assert read(bus, 1) == b"\x01"
    assert read(bus, 1 + len(ACK)) == b"\x01" + ACK
    raw = read(bus, 1 + 20)
    assert raw[0] == 0x01
    assert decode_frame(raw[1:]) == bytes.fromhex("d5 03 32 01 06 07")
    assert read(bus, 8) == bytes(8)


def test_frame_with_bad_checksum_gets_no_ack(bus: EmulatedI2CBus, chip: Pn532Emulator) -> None:
    frame = bytearray(encode_frame(b"\xd4\x02"))
    frame[-2] ^= 0x01
    transfer(bus, bytes(frame))
    assert read(bus, 1) == b"\x00"
    assert chip.stats.bad_frames == 1
    assert chip.commands_seen(CMD_GET_FIRMWARE_VERSION) == 0


def test_host_ack_aborts_and_nack_repeats_the_last_response(
    bus: EmulatedI2CBus, chip: Pn532Emulator
) -> None:
    transfer(bus, encode_frame(b"\xd4\x4a\x01\x00"))
    assert read(bus, 7) == b"\x01" + ACK
    transfer(bus, ACK)
    chip.present_card(UID4)
    assert read(bus, 1) == b"\x00"
    assert chip.stats.aborts == 1

    transfer(bus, encode_frame(b"\xd4\x02"))
    read(bus, 7)
    first = read(bus, 14)
    transfer(bus, NACK)
    assert read(bus, 14) == first


def test_new_command_replaces_a_pending_one(bus: EmulatedI2CBus, chip: Pn532Emulator) -> None:
    transfer(bus, encode_frame(b"\xd4\x4a\x01\x00"))
    transfer(bus, encode_frame(b"\xd4\x02"))
    assert read(bus, 7) == b"\x01" + ACK
    assert decode_frame(read(bus, 14)[1:])[:2] == b"\xd5\x03"
    chip.present_card(UID4)
    assert read(bus, 1) == b"\x00"


def test_present_card_validates_its_input(chip: Pn532Emulator) -> None:
    with pytest.raises(ValueError, match="4, 7 or 10"):
        chip.present_card(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="dwell"):
        chip.present_card(UID4, dwell_s=0)


def test_bus_answers_only_at_the_pn532_address(bus: EmulatedI2CBus) -> None:
    assert bus.scan() == [I2C_ADDRESS]
    assert bus.try_lock()
    assert not bus.try_lock()
    try:
        with pytest.raises(OSError) as info:
            bus.writeto(0x50, b"\x00")
        assert info.value.errno == errno.EREMOTEIO
        with pytest.raises(OSError):
            bus.readfrom_into(0x50, bytearray(1))
    finally:
        bus.unlock()
    with pytest.raises(RuntimeError, match="lock"):
        bus.writeto(I2C_ADDRESS, b"")


def test_detached_chip_fails_the_driver_probe(bus: EmulatedI2CBus) -> None:
    bus.detach(I2C_ADDRESS)
    assert bus.scan() == []
    with pytest.raises(ValueError, match="No I2C device"):
        PN532_I2C(bus)
    bus.attach(I2C_ADDRESS)
    assert PN532_I2C(bus).firmware_version == (0x32, 1, 6, 7)


def test_deinit_closes_the_bus(bus: EmulatedI2CBus) -> None:
    with bus:
        pass
    with pytest.raises(OSError):
        bus.scan()


# -- latching, flicker, IRQ and faults -------------------------------------------------


def test_card_shown_and_gone_while_a_listen_waits_is_latched(
    pn532: PN532_I2C, chip: Pn532Emulator, clock: ManualClock
) -> None:
    # The chip retries on its own: a host that looks only after the card has left
    # still gets it, as it would from a real PN532 with MxRtyPassiveActivation 0xFF.
    assert pn532.listen_for_passive_target(timeout=POLL)
    chip.present_card(UID4, dwell_s=0.3)
    clock.now += 5.0
    assert chip.card_in_field() is None
    assert pn532.get_passive_target(timeout=POLL) == UID4
    # The next listen starts after the card left: nothing.
    assert pn532.read_passive_target(timeout=POLL) is None


def test_flicker_hides_a_held_card_in_its_off_phases(
    pn532: PN532_I2C, chip: Pn532Emulator, clock: ManualClock
) -> None:
    chip.flicker = Flicker(on_s=0.1, off_s=0.2)
    chip.present_card(UID7, dwell_s=10)
    clock.now += 0.05  # on
    assert pn532.read_passive_target(timeout=POLL) == UID7
    clock.now += 0.1  # 0.15: off
    assert pn532.listen_for_passive_target(timeout=POLL)
    assert pn532.get_passive_target(timeout=POLL) is None
    assert chip.card_in_field() == UID7  # still in the field, just not seen
    clock.now += 0.2  # 0.35: on again, and the waiting listen sees it
    assert pn532.get_passive_target(timeout=POLL) == UID7


def test_flicker_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        Flicker(on_s=0.1, off_s=0)


def test_irq_line_follows_the_waiting_frame(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    levels: list[bool] = []
    chip.connect_irq(levels.append)
    assert levels == [False]
    assert pn532.listen_for_passive_target(timeout=POLL)  # ACK ready, then taken
    assert levels == [False, True, False]
    chip.present_card(UID4)
    assert levels[-1] is True  # the answer waits: the line is asserted
    assert pn532.get_passive_target(timeout=POLL) == UID4
    assert levels[-1] is False
    chip.connect_irq(None)


def test_hung_chip_gives_no_ack_until_it_recovers(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    chip.hang()
    assert not pn532.listen_for_passive_target(timeout=POLL)
    with pytest.raises(RuntimeError, match="Failed to detect"):
        pn532.firmware_version  # noqa: B018 - the property is the call
    chip.hang(False)
    assert pn532.firmware_version == (0x32, 1, 6, 7)


def test_wrong_firmware_answer_is_passed_through(pn532: PN532_I2C, chip: Pn532Emulator) -> None:
    chip.set_firmware(bytes((0x31, 0x01, 0x02, 0x07)))
    assert pn532.firmware_version == (0x31, 1, 2, 7)


def test_spi_bus_carries_the_real_driver(chip: Pn532Emulator) -> None:
    spi = EmulatedSpiBus(chip)
    driver = PN532_SPI(spi, spi.cs)
    assert driver.firmware_version == (0x32, 1, 6, 7)
    chip.present_card(UID7)
    assert driver.read_passive_target(timeout=POLL) == UID7
    assert spi.cs.value is True  # deselected between exchanges
    spi.detach()  # MISO floats high: the chip never looks ready
    with pytest.raises(RuntimeError):
        driver.firmware_version  # noqa: B018
    spi.attach()
    assert driver.firmware_version == (0x32, 1, 6, 7)


def test_uart_carries_the_real_driver(chip: Pn532Emulator) -> None:
    uart = EmulatedUart(chip)
    driver = PN532_UART(uart)
    assert driver.firmware_version == (0x32, 1, 6, 7)
    chip.present_card(UID4)
    assert driver.read_passive_target(timeout=POLL) == UID4
    uart.unplug()
    with pytest.raises(OSError):
        uart.in_waiting  # noqa: B018 - what the reader's status peek sees
    # The driver takes the failed write for a missing answer.
    with pytest.raises(RuntimeError, match="Failed to detect"):
        driver.firmware_version  # noqa: B018
    uart.replug()
    assert driver.firmware_version == (0x32, 1, 6, 7)


def test_bit_reversal_round_trips() -> None:
    assert reverse_bits(0x01) == 0x80
    assert reverse_bits(0x02) == 0x40
    assert all(reverse_bits(reverse_bits(b)) == b for b in range(256))
