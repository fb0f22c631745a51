"""Sans-I/O codec for what the Pi receives from the ESP32: telemetry frames and command acks."""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass
from enum import Enum, auto

from edgepoint.charging.events import TelemetrySample

PROTOCOL_VERSION = 1
START = b"$"
# The longest frame, from "$" through the checksum digits, terminator excluded.
MAX_FRAME_LEN = 256
# Sequence numbers run 1..SEQ_MAX and wrap back to 1; 0 is sent only as the first
# frame after an ESP32 boot, so a reboot can never be mistaken for a wrap.
SEQ_MAX = 65535
# Serial-number arithmetic (RFC 1982): a forward jump of up to half the ring is a
# gap of lost frames, anything further (or a step of zero) is a backwards move.
_SEQ_RING = SEQ_MAX
_SEQ_HALF = _SEQ_RING // 2

_DELIMS = re.compile(rb"[\r\n$]")
_EOL = re.compile(rb"[\r\n]")
_BODY = re.compile(rb"([^*]*)\*([0-9A-Fa-f]{4})")
_INT = re.compile(r"[0-9]{1,10}")
_DECIMAL = re.compile(r"-?[0-9]{1,9}(?:\.[0-9]{1,6})?")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
# Printable ASCII without the bytes that structure a frame.
_VALUE = re.compile(r"[\x20-\x7e]{0,64}")
_VALUE_FORBIDDEN = frozenset(",*$")
_POSITIONAL = 7  # version, seq, energy, power, current, voltage, temperature
# The one extra the receiver interprets: which meter of the ESP32 the frame is from.
# It is lifted into TelemetrySample.channel and never left in `extra`, so a sample
# has one source of truth and encode -> parse round-trips.
CHANNEL_KEY = "ch"
DEFAULT_CHANNEL = 1  # a frame without `ch` (single-meter firmware)
MAX_CHANNEL = 8
_CHANNEL = re.compile(f"[1-{MAX_CHANNEL}]")  # exactly one digit: no "01", no "+2", no spaces
# Acknowledgements of the Pi's commands share the line and the framing with telemetry;
# their payload starts with this field instead of the protocol version.
ACK_TAG = "A"
ACK_OK = "OK"
ACK_ERR = "ERR"
COMMAND_ID_MAX = 65535
_COMMAND_ID = re.compile(r"[0-9]{1,5}")
_REASON = re.compile(r"[a-z][a-z0-9-]{0,31}")


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    # crc_hqx is the same polynomial without reflection; seeding it with 0xFFFF
    # gives the CCITT-FALSE variant in C instead of a Python loop.
    return binascii.crc_hqx(data, 0xFFFF)


def next_seq(seq: int, step: int = 1) -> int:
    """Return the sequence number `step` frames after `seq`, wrapping 65535 -> 1."""
    if not 0 <= seq <= SEQ_MAX:
        raise ValueError(f"sequence number out of range: {seq}")
    if step < 1:
        raise ValueError(f"step must be at least 1: {step}")
    # 0 sits just before 1 on the ring: it is only ever the boot frame.
    return (seq - 1 + step) % _SEQ_RING + 1 if seq else (step - 1) % _SEQ_RING + 1


def encode_frame(sample: TelemetrySample) -> bytes:
    """Encode one sample as a complete frame line, terminator included."""
    if not 0 <= sample.seq <= SEQ_MAX:
        raise ValueError(f"seq out of range 0..{SEQ_MAX}: {sample.seq}")
    if sample.energy_wh < 0 or sample.energy_wh >= 10**10:
        raise ValueError(f"energy_wh out of range: {sample.energy_wh}")
    fields = [
        str(PROTOCOL_VERSION),
        str(sample.seq),
        str(sample.energy_wh),
        _format_decimal("power_w", sample.power_w, 1),
        _format_decimal("current_a", sample.current_a, 2),
        _format_decimal("voltage_v", sample.voltage_v, 1),
        _format_decimal("temperature_c", sample.temperature_c, 1),
    ]
    if not DEFAULT_CHANNEL <= sample.channel <= MAX_CHANNEL:
        raise ValueError(f"channel out of range 1..{MAX_CHANNEL}: {sample.channel}")
    # Channel 1 is left implicit so single-meter frames stay byte-identical to
    # what firmware without channels sends.
    if sample.channel != DEFAULT_CHANNEL:
        fields.append(f"{CHANNEL_KEY}={sample.channel}")
    for key, value in sample.extra:
        if not _KEY.fullmatch(key):
            raise ValueError(f"extra key not allowed: {key!r}")
        if key == CHANNEL_KEY:
            raise ValueError(f"{CHANNEL_KEY!r} is reserved: set TelemetrySample.channel instead")
        if not _VALUE.fullmatch(value) or _VALUE_FORBIDDEN.intersection(value):
            raise ValueError(f"extra value not allowed for {key}: {value!r}")
        fields.append(f"{key}={value}")
    return _frame(",".join(fields).encode("ascii"))


def _format_decimal(name: str, value: float, places: int) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite: {value}")
    text = f"{value:.{places}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]  # "-0.0" is legal but reads like a fault on a serial monitor
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{name} out of range: {value}")
    return text


@dataclass(frozen=True, slots=True)
class Ack:
    """The ESP32's answer to one command: OK with details (`rly=1`), or ERR with a reason."""

    command_id: int
    ok: bool
    fields: tuple[tuple[str, str], ...] = ()  # OK only: key=value details, in order
    reason: str | None = None  # ERR only: why the command was refused

    def field(self, key: str) -> str | None:
        """The value of the first detail called `key`, if any."""
        return next((value for name, value in self.fields if name == key), None)


def encode_ack(ack: Ack) -> bytes:
    """Encode an acknowledgement frame, terminator included (the ESP32's side; the emulator)."""
    if not 1 <= ack.command_id <= COMMAND_ID_MAX:
        raise ValueError(f"command id out of range 1..{COMMAND_ID_MAX}: {ack.command_id}")
    fields = [ACK_TAG, str(ack.command_id)]
    if ack.ok:
        if ack.reason is not None:
            raise ValueError("an OK ack carries no reason")
        fields.append(ACK_OK)
        for key, value in ack.fields:
            if not _KEY.fullmatch(key):
                raise ValueError(f"ack key not allowed: {key!r}")
            if not _VALUE.fullmatch(value) or _VALUE_FORBIDDEN.intersection(value):
                raise ValueError(f"ack value not allowed for {key}: {value!r}")
            fields.append(f"{key}={value}")
    else:
        if ack.fields or ack.reason is None or not _REASON.fullmatch(ack.reason):
            raise ValueError(f"an ERR ack carries one reason token and nothing else: {ack!r}")
        fields += [ACK_ERR, ack.reason]
    return _frame(",".join(fields).encode("ascii"))


def _frame(payload: bytes) -> bytes:
    frame = START + payload + b"*" + f"{crc16_ccitt_false(payload):04X}".encode("ascii")
    if len(frame) > MAX_FRAME_LEN:
        raise ValueError(f"frame would be {len(frame)} bytes, limit is {MAX_FRAME_LEN}")
    return frame + b"\r\n"


@dataclass(frozen=True, slots=True)
class TelemetryStats:
    """Counters of what the parser has seen so far; a snapshot, never updated in place."""

    frames_ok: int = 0
    bad_checksum: int = 0
    garbage: int = 0  # runs of bytes outside any frame, and frames cut short by a new "$"
    malformed: int = 0  # checksum right, version known, but fields unreadable
    overlong: int = 0
    bad_version: int = 0
    seq_gaps: int = 0  # frames missing between two good ones
    seq_resets: int = 0  # sequence went back (ESP32 reboot)
    bytes: int = 0
    acks: int = 0  # well-formed acknowledgements of the Pi's commands


class _State(Enum):
    OUTSIDE = auto()  # between frames: every byte is garbage until "$"
    IN_FRAME = auto()  # after "$": collecting up to MAX_FRAME_LEN bytes
    SKIPPING = auto()  # frame got too long: dropping bytes until it ends


class TelemetryParser:
    """Turns a byte stream from the ESP32 into validated samples, counting everything else."""

    def __init__(self) -> None:
        self._state = _State.OUTSIDE
        self._frame = bytearray()
        self._in_garbage = False
        self._last_seq: int | None = None
        # Plain ints while parsing; the frozen snapshot is built on demand.
        self._frames_ok = 0
        self._bad_checksum = 0
        self._garbage = 0
        self._malformed = 0
        self._overlong = 0
        self._bad_version = 0
        self._seq_gaps = 0
        self._seq_resets = 0
        self._bytes = 0
        self._acks = 0

    @property
    def stats(self) -> TelemetryStats:
        """A snapshot of the counters."""
        return TelemetryStats(
            frames_ok=self._frames_ok,
            bad_checksum=self._bad_checksum,
            garbage=self._garbage,
            malformed=self._malformed,
            overlong=self._overlong,
            bad_version=self._bad_version,
            seq_gaps=self._seq_gaps,
            seq_resets=self._seq_resets,
            bytes=self._bytes,
            acks=self._acks,
        )

    @property
    def last_seq(self) -> int | None:
        """Sequence number of the last good frame, None before the first."""
        return self._last_seq

    def discard_partial(self) -> None:
        """Forget a half-received frame, e.g. after the port was closed and reopened."""
        # Sequence tracking survives on purpose: frames lost while the link was
        # down must still show up as a gap (or a reset, if the ESP32 rebooted).
        self._state = _State.OUTSIDE
        self._frame.clear()
        self._in_garbage = False

    def feed(self, data: bytes) -> list[TelemetrySample]:
        """Consume received bytes; return the samples of every frame completed by them.

        Acknowledgements in `data` are counted and dropped: a receiver that sends
        commands uses `feed_all`.
        """
        return [item for item in self.feed_all(data) if isinstance(item, TelemetrySample)]

    def feed_all(self, data: bytes) -> list[TelemetrySample | Ack]:
        """Consume received bytes; return the samples and acks they complete, in line order."""
        self._bytes += len(data)
        samples: list[TelemetrySample | Ack] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state is _State.OUTSIDE:
                start = data.find(START, pos)
                self._count_garbage(data[pos : start if start >= 0 else end])
                if start < 0:
                    break
                self._begin_frame()
                pos = start + 1
                continue
            match = _DELIMS.search(data, pos)
            stop = match.start() if match else end
            if self._state is _State.IN_FRAME:
                # +1 for the "$" that is not kept in the buffer.
                if len(self._frame) + (stop - pos) + 1 > MAX_FRAME_LEN:
                    self._overlong += 1
                    self._frame.clear()
                    self._state = _State.SKIPPING
                    pos = stop  # the delimiter, if any, is handled in SKIPPING
                    continue
                self._frame += data[pos:stop]
            if match is None:
                break
            pos = stop + 1
            if data[stop : stop + 1] == START:
                if self._state is _State.IN_FRAME:
                    self._garbage += 1  # a new frame began before this one ended
                self._begin_frame()
                continue
            if self._state is _State.IN_FRAME:
                sample = self._parse(bytes(self._frame))
                if sample is not None:
                    samples.append(sample)
            self._frame.clear()
            self._state = _State.OUTSIDE
        return samples

    def _begin_frame(self) -> None:
        self._state = _State.IN_FRAME
        self._frame.clear()
        self._in_garbage = False

    def _count_garbage(self, chunk: bytes) -> None:
        # Count runs, not bytes: one noisy line is one event however long it is,
        # and a run split across two feeds is still one event.
        for index, piece in enumerate(_EOL.split(chunk)):
            if index:
                self._in_garbage = False
            if piece and not self._in_garbage:
                self._garbage += 1
                self._in_garbage = True

    def _parse(self, body: bytes) -> TelemetrySample | Ack | None:
        if not body:
            self._garbage += 1  # a lone "$"
            return None
        framed = _BODY.fullmatch(body)
        if framed is None:
            self._garbage += 1
            return None
        payload, crc_text = framed.group(1), framed.group(2)
        if crc16_ccitt_false(payload) != int(crc_text, 16):
            self._bad_checksum += 1
            return None
        try:
            fields = payload.decode("ascii").split(",")
        except UnicodeDecodeError:
            self._malformed += 1
            return None
        if fields[0] == ACK_TAG:
            ack = _fields_to_ack(fields[1:])
            if ack is None:
                self._malformed += 1
            else:
                self._acks += 1
            return ack
        if not _INT.fullmatch(fields[0]):
            self._malformed += 1
            return None
        if int(fields[0]) != PROTOCOL_VERSION:
            self._bad_version += 1
            return None
        sample = _fields_to_sample(fields)
        if sample is None:
            self._malformed += 1
            return None
        self._track_seq(sample.seq)
        self._frames_ok += 1
        return sample

    def _track_seq(self, seq: int) -> None:
        # One counter for the whole stream, whatever the frame's channel: the ESP32
        # numbers frames in the order it sends them, so frames of several meters
        # interleave as 1, 2, 3 ... and a per-channel view is never needed here.
        last, self._last_seq = self._last_seq, seq
        if last is None:
            return
        if seq == 0:
            self._seq_resets += 1
            return
        # Distance forward on the ring 1..SEQ_MAX; the boot frame 0 sits just before 1.
        step = seq - last if last == 0 else (seq - last) % _SEQ_RING
        if step == 0 or step > _SEQ_HALF:
            self._seq_resets += 1
        else:
            self._seq_gaps += step - 1


def _fields_to_ack(fields: list[str]) -> Ack | None:
    """`<id>,OK[,k=v]...` or `<id>,ERR,<reason>`; None when anything is off."""
    if len(fields) < 2 or not _COMMAND_ID.fullmatch(fields[0]):
        return None
    command_id = int(fields[0])
    if not 1 <= command_id <= COMMAND_ID_MAX:
        return None
    status, rest = fields[1], fields[2:]
    if status == ACK_ERR:
        if len(rest) != 1 or not _REASON.fullmatch(rest[0]):
            return None
        return Ack(command_id, ok=False, reason=rest[0])
    if status != ACK_OK:
        return None
    details: list[tuple[str, str]] = []
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            return None
        details.append((key, value))
    return Ack(command_id, ok=True, fields=tuple(details))


def _fields_to_sample(fields: list[str]) -> TelemetrySample | None:
    if len(fields) < _POSITIONAL:
        return None
    seq_text, energy_text, *measured = fields[1:_POSITIONAL]
    if not _INT.fullmatch(seq_text) or not _INT.fullmatch(energy_text):
        return None
    if not all(_DECIMAL.fullmatch(text) for text in measured):
        return None
    seq = int(seq_text)
    if seq > SEQ_MAX:
        return None
    extra: list[tuple[str, str]] = []
    channel: int | None = None
    for item in fields[_POSITIONAL:]:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            return None
        if key != CHANNEL_KEY:
            extra.append((key, value))
        elif channel is None and _CHANNEL.fullmatch(value):
            channel = int(value)
        else:
            # A bad or repeated channel cannot be attributed to a meter, and guessing
            # would credit energy to the wrong connector.
            return None
    power, current, voltage, temperature = (float(text) for text in measured)
    return TelemetrySample(
        seq=seq,
        energy_wh=int(energy_text),
        power_w=power,
        current_a=current,
        voltage_v=voltage,
        temperature_c=temperature,
        extra=tuple(extra),
        channel=DEFAULT_CHANNEL if channel is None else channel,
    )
