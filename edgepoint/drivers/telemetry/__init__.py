"""ESP32 telemetry link: frame codec, pyserial reader, and the emulator that feeds it over a pty."""

from edgepoint.drivers.telemetry.emulator import Esp32Emulator, MeterChannel
from edgepoint.drivers.telemetry.frames import (
    MAX_CHANNEL,
    MAX_FRAME_LEN,
    PROTOCOL_VERSION,
    SEQ_MAX,
    TelemetryParser,
    TelemetryStats,
    encode_frame,
)
from edgepoint.drivers.telemetry.pty import open_pty
from edgepoint.drivers.telemetry.serial_reader import ReaderStats, SerialTelemetryReader

__all__ = [
    "MAX_CHANNEL",
    "MAX_FRAME_LEN",
    "PROTOCOL_VERSION",
    "SEQ_MAX",
    "Esp32Emulator",
    "MeterChannel",
    "ReaderStats",
    "SerialTelemetryReader",
    "TelemetryParser",
    "TelemetryStats",
    "encode_frame",
    "open_pty",
]
