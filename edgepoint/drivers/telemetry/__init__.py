"""ESP32 link: frame and command codecs, the pyserial link, and the emulator behind a pty."""

from edgepoint.drivers.telemetry.commands import (
    Command,
    CurrentLimit,
    RelayState,
    WatchdogPing,
    encode_command,
)
from edgepoint.drivers.telemetry.emulator import Esp32Emulator, MeterChannel
from edgepoint.drivers.telemetry.frames import (
    MAX_CHANNEL,
    MAX_FRAME_LEN,
    PROTOCOL_VERSION,
    SEQ_MAX,
    Ack,
    TelemetryParser,
    TelemetryStats,
    encode_frame,
)
from edgepoint.drivers.telemetry.pty import open_pty
from edgepoint.drivers.telemetry.serial_reader import (
    ChannelState,
    CommandFailed,
    CommandStats,
    ReaderStats,
    SerialTelemetryReader,
)

__all__ = [
    "MAX_CHANNEL",
    "MAX_FRAME_LEN",
    "PROTOCOL_VERSION",
    "SEQ_MAX",
    "Ack",
    "ChannelState",
    "Command",
    "CommandFailed",
    "CommandStats",
    "CurrentLimit",
    "Esp32Emulator",
    "MeterChannel",
    "ReaderStats",
    "RelayState",
    "SerialTelemetryReader",
    "TelemetryParser",
    "TelemetryStats",
    "WatchdogPing",
    "encode_command",
    "encode_frame",
    "open_pty",
]
