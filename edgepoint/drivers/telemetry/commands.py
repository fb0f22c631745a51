"""Sans-I/O codec of the Pi's commands to the ESP32: encoder (Pi side), parser (ESP32 side).

The ESP32 firmware has the same parser in C (hardware/firmware/src/protocol.c); both are
checked against hardware/vectors.json, so the rules below and the C code cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum, auto
from typing import TypeAlias

from edgepoint.drivers.telemetry.frames import (
    COMMAND_ID_MAX,
    MAX_CHANNEL,
    START,
    crc16_ccitt_false,
)

COMMAND_TAG = "C"
# From "$" through the last CRC digit, terminator excluded. The longest command
# (`$C,65535,PING,600000*XXXX`) is 25 bytes; the ESP32's line buffer is this big.
MAX_COMMAND_LEN = 64

PING_MIN_MS = 100
PING_MAX_MS = 600_000
LIMIT_MAX_A = 999.9


class Verb(StrEnum):
    """The command words of the Pi -> ESP32 direction."""

    PING = "PING"
    RELAY = "RLY"
    LIMIT = "LIM"


class Refusal(StrEnum):
    """Why the ESP32 answered a command with ERR (the reason token on the wire)."""

    UNKNOWN_VERB = "unknown-verb"
    BAD_ARGS = "bad-args"
    BAD_CHANNEL = "bad-channel"
    OUT_OF_RANGE = "out-of-range"


@dataclass(frozen=True, slots=True)
class WatchdogPing:
    """The Pi is alive; open the relays if no ping follows within `timeout_ms`."""

    timeout_ms: int


@dataclass(frozen=True, slots=True)
class RelayState:
    """The state the Pi commands for one channel's relay; the ack echoes the sensed contact."""

    channel: int
    closed: bool


@dataclass(frozen=True, slots=True)
class CurrentLimit:
    """The most current a channel may draw, in A (0 stops charging); smart charging sets it."""

    channel: int
    amps: float


Command: TypeAlias = WatchdogPing | RelayState | CurrentLimit


def encode_command(command_id: int, command: Command) -> bytes:
    """Encode one command frame, terminator included; a retry reuses `command_id`."""
    if not 1 <= command_id <= COMMAND_ID_MAX:
        raise ValueError(f"command id out of range 1..{COMMAND_ID_MAX}: {command_id}")
    match command:
        case WatchdogPing(timeout_ms=ms):
            if not PING_MIN_MS <= ms <= PING_MAX_MS:
                raise ValueError(f"watchdog timeout must be {PING_MIN_MS}..{PING_MAX_MS} ms: {ms}")
            args = [Verb.PING.value, str(ms)]
        case RelayState(channel=channel, closed=closed):
            args = [Verb.RELAY.value, _channel(channel), "1" if closed else "0"]
        case CurrentLimit(channel=channel, amps=amps):
            if not 0 <= amps <= LIMIT_MAX_A:
                raise ValueError(f"current limit must be 0..{LIMIT_MAX_A} A: {amps}")
            args = [Verb.LIMIT.value, _channel(channel), f"{amps:.1f}"]
    payload = ",".join([COMMAND_TAG, str(command_id), *args]).encode("ascii")
    return START + payload + b"*" + f"{crc16_ccitt_false(payload):04X}".encode("ascii") + b"\r\n"


def _channel(channel: int) -> str:
    if not 1 <= channel <= MAX_CHANNEL:
        raise ValueError(f"channel out of range 1..{MAX_CHANNEL}: {channel}")
    return str(channel)


# -- the ESP32's side ------------------------------------------------------------------


class LineError(StrEnum):
    """A line the ESP32 could not take as a command, and did not answer."""

    GARBAGE = "garbage"  # bytes outside a frame, a cut frame, no `*XXXX` at its end
    BAD_CHECKSUM = "bad_checksum"
    MALFORMED = "malformed"  # checksum right, but not a command with a usable id
    OVERLONG = "overlong"


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """A valid command: execute it, then acknowledge `command_id` with OK."""

    command_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class RefusedCommand:
    """A command with a usable id but something wrong: acknowledge it with ERR `reason`."""

    command_id: int
    reason: Refusal


CommandEvent: TypeAlias = ReceivedCommand | RefusedCommand | LineError

_BODY = re.compile(rb"([^*]*)\*([0-9A-Fa-f]{4})")
_DELIMS = re.compile(rb"[\r\n$]")
_EOL = b"\r\n"
_ID = re.compile(r"[0-9]{1,5}")
_MS = re.compile(r"[0-9]{1,6}")
_DIGIT = re.compile(r"[0-9]")
_AMPS = re.compile(r"[0-9]{1,3}(?:\.[0-9])?")


class _State(Enum):
    OUTSIDE = auto()
    IN_FRAME = auto()
    SKIPPING = auto()


class CommandParser:
    """Turns the bytes the Pi sends into command events, byte for byte like the firmware's C.

    Events come in the order the C parser reports them: a run of noise when it
    starts, a frame cut by a new `$` at that `$`, an overlong frame when it
    overflows, every other line at its end of line.
    """

    def __init__(self) -> None:
        self._state = _State.OUTSIDE
        self._frame = bytearray()
        self._in_garbage = False

    def feed(self, data: bytes) -> list[CommandEvent]:
        """Consume received bytes; return the events they complete."""
        events: list[CommandEvent] = []
        for byte in data:
            event = self._feed_byte(byte)
            if event is not None:
                events.append(event)
        return events

    def _feed_byte(self, byte: int) -> CommandEvent | None:
        eol = byte in _EOL
        if byte == START[0]:
            cut = self._state is _State.IN_FRAME
            self._state = _State.IN_FRAME
            self._frame.clear()
            self._in_garbage = False
            return LineError.GARBAGE if cut else None
        if self._state is _State.OUTSIDE:
            if eol:
                self._in_garbage = False
                return None
            if self._in_garbage:
                return None
            self._in_garbage = True
            return LineError.GARBAGE
        if self._state is _State.SKIPPING:
            if eol:
                self._state = _State.OUTSIDE
            return None
        if eol:
            self._state = _State.OUTSIDE
            return parse_command_line(bytes(self._frame))
        if len(self._frame) + 1 >= MAX_COMMAND_LEN:  # +1 for the "$"
            self._state = _State.SKIPPING
            self._frame.clear()
            return LineError.OVERLONG
        self._frame.append(byte)
        return None


def parse_command_line(body: bytes) -> CommandEvent:
    """Judge the bytes between `$` and the end of line (exclusive both)."""
    framed = _BODY.fullmatch(body)
    if framed is None:
        return LineError.GARBAGE
    payload, crc_text = framed.group(1), framed.group(2)
    if crc16_ccitt_false(payload) != int(crc_text, 16):
        return LineError.BAD_CHECKSUM
    # latin-1 maps every byte to one character, so a stray high byte fails the
    # patterns below instead of raising; the patterns only accept ASCII digits.
    fields = payload.decode("latin-1").split(",")
    if len(fields) < 3 or fields[0] != COMMAND_TAG or not _ID.fullmatch(fields[1]):
        return LineError.MALFORMED
    command_id = int(fields[1])
    if not 1 <= command_id <= COMMAND_ID_MAX:
        return LineError.MALFORMED
    verb, args = fields[2], fields[3:]
    result = _parse_args(verb, args)
    if isinstance(result, Refusal):
        return RefusedCommand(command_id, result)
    return ReceivedCommand(command_id, result)


def _parse_args(verb: str, args: list[str]) -> Command | Refusal:
    if verb == Verb.PING:
        if len(args) != 1 or not _MS.fullmatch(args[0]):
            return Refusal.BAD_ARGS
        ms = int(args[0])
        if not PING_MIN_MS <= ms <= PING_MAX_MS:
            return Refusal.OUT_OF_RANGE
        return WatchdogPing(ms)
    if verb == Verb.RELAY:
        if len(args) != 2 or not _DIGIT.fullmatch(args[0]) or args[1] not in ("0", "1"):
            return Refusal.BAD_ARGS
        channel = int(args[0])
        if not 1 <= channel <= MAX_CHANNEL:
            return Refusal.BAD_CHANNEL
        return RelayState(channel, args[1] == "1")
    if verb == Verb.LIMIT:
        if len(args) != 2 or not _DIGIT.fullmatch(args[0]) or not _AMPS.fullmatch(args[1]):
            return Refusal.BAD_ARGS
        channel = int(args[0])
        if not 1 <= channel <= MAX_CHANNEL:
            return Refusal.BAD_CHANNEL
        return CurrentLimit(channel, float(args[1]))
    return Refusal.UNKNOWN_VERB
