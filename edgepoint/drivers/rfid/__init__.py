"""PN532 RFID reader: frame codec, chip emulator, emulated I2C bus and the polling reader."""

from edgepoint.drivers.rfid.bus import EmulatedI2CBus
from edgepoint.drivers.rfid.emulator import EmulatorStats, Pn532Emulator
from edgepoint.drivers.rfid.frames import ACK, NACK, FrameError, decode_frame, encode_frame
from edgepoint.drivers.rfid.reader import (
    Pn532Reader,
    ReaderStats,
    open_pn532_bus,
)

__all__ = [
    "ACK",
    "NACK",
    "EmulatedI2CBus",
    "EmulatorStats",
    "FrameError",
    "Pn532Emulator",
    "Pn532Reader",
    "ReaderStats",
    "decode_frame",
    "encode_frame",
    "open_pn532_bus",
]
