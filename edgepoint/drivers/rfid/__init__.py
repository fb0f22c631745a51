"""PN532 RFID reader: frame codec, chip emulator, emulated buses, links and the tap reader."""

from edgepoint.drivers.rfid.bus import EmulatedI2CBus, EmulatedSpiBus, EmulatedUart
from edgepoint.drivers.rfid.debounce import TapDebouncer
from edgepoint.drivers.rfid.emulator import EmulatorStats, Flicker, Pn532Emulator
from edgepoint.drivers.rfid.frames import ACK, NACK, FrameError, decode_frame, encode_frame
from edgepoint.drivers.rfid.link import (
    DeferredLink,
    I2cLink,
    Interface,
    IrqLine,
    Pn532Link,
    SpiLink,
    UartLink,
    emulated_link,
    hardware_link,
)
from edgepoint.drivers.rfid.reader import (
    ChipFault,
    Pn532Reader,
    ReaderStats,
    open_pn532_bus,
)

__all__ = [
    "ACK",
    "NACK",
    "ChipFault",
    "DeferredLink",
    "EmulatedI2CBus",
    "EmulatedSpiBus",
    "EmulatedUart",
    "EmulatorStats",
    "Flicker",
    "FrameError",
    "I2cLink",
    "Interface",
    "IrqLine",
    "Pn532Emulator",
    "Pn532Link",
    "Pn532Reader",
    "ReaderStats",
    "SpiLink",
    "TapDebouncer",
    "UartLink",
    "decode_frame",
    "emulated_link",
    "encode_frame",
    "hardware_link",
    "open_pn532_bus",
]
