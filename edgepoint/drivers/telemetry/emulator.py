"""ESP32 emulator on a pty master: telemetry frames out, the Pi's commands in, a watchdog."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.commands import (
    CommandParser,
    CurrentLimit,
    LineError,
    ReceivedCommand,
    RelayState,
    Verb,
    WatchdogPing,
)
from edgepoint.drivers.telemetry.frames import (
    CHANNEL_KEY,
    DEFAULT_CHANNEL,
    MAX_CHANNEL,
    SEQ_MAX,
    Ack,
    encode_ack,
    encode_frame,
    next_seq,
)
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

# A UART has no flow control towards a Pi that is not reading: bytes beyond what
# the kernel buffers are lost. Past this much unsent output whole frames are
# dropped instead of queueing without bound.
DEFAULT_MAX_PENDING = 4096
# While nobody holds the pty's slave open its master reads as EIO and polls as
# hung up, so the emulator stops watching it and looks again this often.
_INPUT_PROBE_S = 0.05
# Extras the firmware adds to every frame of a channel (PROTOCOL.md, "Commands").
RELAY_KEY = "rly"  # the relay contact as sensed: 1 closed, 0 open
TRIP_KEY = "trip"  # 1 while the watchdog holds this channel's relay open
LIMIT_KEY = "lim"  # the current limit in force, in A


@dataclass(frozen=True, slots=True)
class MeterChannel:
    """One meter of the simulated ESP32 and the relay contact whose current it measures."""

    number: int  # the frames' `ch` field, 1..MAX_CHANNEL
    relay_closed: Callable[[], bool]
    # Register on first boot (nothing in NVS yet); None takes the emulator's energy_wh.
    energy_wh: float | None = None


class _Meter:
    """The running state of one channel (the register and its sensors)."""

    __slots__ = ("energy", "forced", "number", "relay_closed", "temperature")

    def __init__(
        self, number: int, relay_closed: Callable[[], bool], energy: float, temperature: float
    ) -> None:
        self.number = number
        self.relay_closed = relay_closed
        self.energy = energy  # fractional Wh; frames carry the floor
        self.temperature = temperature
        self.forced: dict[str, float] = {}  # reading name -> value reported instead


class Esp32Emulator:
    """Meters simulated chargers and sends frames like the ESP32 firmware does.

    Either `relay_closed` (one meter, channel 1: the original single-connector
    form) or `channels` (one frame per channel per interval, ascending).

    The firmware's own relay sits in series with each of the Pi's relays. With
    `watchdog`, it behaves as the real firmware's: open from boot until the first
    watchdog ping, open again (and latched open) once pings stop for the timeout the
    last ping carried, until the Pi reports that channel's relay open (RLY ch 0).
    Without it the firmware's relay is always closed (a board without one), and
    pings are only acknowledged.
    """

    def __init__(
        self,
        fd: int | None,
        *,
        relay_closed: Callable[[], bool] | None = None,
        channels: Sequence[MeterChannel] = (),
        charge_power_w: float = 7360.0,
        interval_s: float = 1.0,
        energy_wh: float = 0.0,
        voltage_v: float = 230.0,
        temperature_c: float = 25.0,
        first_seq: int = 0,
        extra: tuple[tuple[str, str], ...] = (("fw", "emu-1"),),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        nvs: Path | None = None,
        watchdog: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive: {interval_s}")
        if not 0 <= first_seq <= SEQ_MAX:
            raise ValueError(f"first_seq out of range: {first_seq}")
        if (relay_closed is None) == (not channels):
            raise ValueError("give exactly one of relay_closed (one meter) or channels")
        if relay_closed is not None:
            channels = (MeterChannel(DEFAULT_CHANNEL, relay_closed),)
        if any(key == CHANNEL_KEY for key, _ in extra):
            raise ValueError(f"{CHANNEL_KEY!r} is set per channel, not through extra")
        numbers = [channel.number for channel in channels]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"meter channels repeat: {numbers}")
        if not all(DEFAULT_CHANNEL <= n <= MAX_CHANNEL for n in numbers):
            raise ValueError(f"meter channels must be 1..{MAX_CHANNEL}: {numbers}")
        self._charge_power_w = charge_power_w
        self._interval_s = interval_s
        # The firmware keeps its registers in NVS across power cycles (PROTOCOL.md); with
        # `nvs` the twin does too, so a crashed session closes on the real reading.
        # Registers of channels not configured this run are kept and written back,
        # as a real ESP32 would keep them whatever the Pi's configuration.
        self._nvs = nvs
        self._stored = _load_registers(nvs)
        self._meters: list[_Meter] = []
        for channel in sorted(channels, key=lambda channel: channel.number):
            first_boot = energy_wh if channel.energy_wh is None else channel.energy_wh
            energy = float(self._stored.get(channel.number, first_boot))
            self._meters.append(_Meter(channel.number, channel.relay_closed, energy, temperature_c))
        # A first-boot value is written only once it changes, like the firmware's.
        self._stored.update((meter.number, math.floor(meter.energy)) for meter in self._meters)
        self._voltage_v = voltage_v
        self._temperature_base = temperature_c
        self._next_seq = first_seq
        self._last_seq: int | None = None
        self._extra = extra
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(1)
        self._max_pending = max_pending
        self._last_tick: float | None = None
        self._corrupt_next = False
        self._paused = False
        self._pending = bytearray()
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_fd: int | None = None
        self._write_error: OSError | None = None
        self._frames_sent = 0
        self._frames_dropped = 0
        # The command side: what the Pi asked for and the firmware's own relay.
        self._commands = CommandParser()
        self._watchdog = watchdog
        self._ping_timeout_s: float | None = None  # None: no ping since boot
        self._last_ping = 0.0
        self._expired = False  # pings stopped; the channels below were cut for it
        self._latched: set[int] = set()
        self._limits: dict[int, float] = {}
        self._executed: Counter[str] = Counter()
        self._line_errors: Counter[str] = Counter()
        self._trips = 0
        self._drop_commands = 0
        self._acks_sent = 0
        self._reading_fd: int | None = None
        self._probe: asyncio.TimerHandle | None = None
        if fd is not None:
            self.attach(fd)

    @property
    def channels(self) -> tuple[int, ...]:
        """The simulated meter channels, in the order their frames are sent."""
        return tuple(meter.number for meter in self._meters)

    @property
    def energy_wh(self) -> int:
        """The lowest channel's register as the frames report it (whole Wh)."""
        return math.floor(self._meters[0].energy)

    def energy_wh_of(self, channel: int) -> int:
        """One channel's register as the frames report it (whole Wh)."""
        return math.floor(self._meter(channel).energy)

    @property
    def last_seq(self) -> int | None:
        """Sequence number of the last frame produced (sent or not), None before the first."""
        return self._last_seq

    @property
    def frames_sent(self) -> int:
        """Frames handed to the pty (possibly still in the local write buffer)."""
        return self._frames_sent

    @property
    def frames_dropped(self) -> int:
        """Frames lost because the reader did not keep up."""
        return self._frames_dropped

    @property
    def paused(self) -> bool:
        """Whether the serial link is currently silent."""
        return self._paused

    def attach(self, fd: int) -> None:
        """Plug into a pty master; the emulator never closes it (the owner does)."""
        self.detach()
        os.set_blocking(fd, False)
        self._fd = fd
        self._watch_input()

    def detach(self) -> None:
        """Unplug from the current fd, dropping unsent output, so its owner may close it."""
        self._stop_writer()
        self._stop_reading()
        self._pending.clear()
        self._fd = None

    # -- the command side ------------------------------------------------------------

    @property
    def commands_executed(self) -> Mapping[str, int]:
        """Commands executed so far, by verb (PING, RLY, LIM)."""
        return dict(self._executed)

    @property
    def command_errors(self) -> Mapping[str, int]:
        """Lines the firmware could not take as commands, by kind (bad_checksum...)."""
        return dict(self._line_errors)

    @property
    def acks_sent(self) -> int:
        """Acknowledgements handed to the pty."""
        return self._acks_sent

    @property
    def watchdog_trips(self) -> int:
        """How often the pings stopped long enough for the firmware to open its relays."""
        self._check_watchdog()
        return self._trips

    def watchdog_tripped(self, channel: int = DEFAULT_CHANNEL) -> bool:
        """Whether the watchdog holds this channel's relay open (until RLY ch 0)."""
        self._check_watchdog()
        return channel in self._latched

    def esp32_relay_closed(self, channel: int = DEFAULT_CHANNEL) -> bool:
        """The firmware's own relay of this channel (always closed without `watchdog`)."""
        if not self._watchdog:
            return True
        self._check_watchdog()
        return self._alive() and channel not in self._latched

    def contact_closed(self, channel: int = DEFAULT_CHANNEL) -> bool:
        """The contact as the firmware senses it: the Pi's relay and its own, in series."""
        meter = self._meter(channel)
        return meter.relay_closed() and self.esp32_relay_closed(channel)

    def current_limit(self, channel: int = DEFAULT_CHANNEL) -> float | None:
        """The limit the Pi set for this channel, in A; None when it set none."""
        return self._limits.get(channel)

    def drop_commands(self, count: int) -> None:
        """Fault injection: lose the next `count` commands on the wire (no execution, no ack)."""
        if count < 0:
            raise ValueError(f"count must not be negative: {count}")
        self._drop_commands = count

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the Pi, execute the commands in them; return the acks to send."""
        return b"".join(self._answer(data))

    def _answer(self, data: bytes) -> list[bytes]:
        acks: list[bytes] = []
        for event in self._commands.feed(data):
            if isinstance(event, LineError):
                self._line_errors[event.value] += 1
                continue
            if self._drop_commands:
                self._drop_commands -= 1
                continue
            if isinstance(event, ReceivedCommand):
                ack = self._execute(event)
            else:
                ack = Ack(event.command_id, ok=False, reason=event.reason.value)
            acks.append(encode_ack(ack))
        return acks

    def _execute(self, received: ReceivedCommand) -> Ack:
        now = self._clock()
        command = received.command
        if isinstance(command, WatchdogPing):
            self._executed[Verb.PING.value] += 1
            self._check_watchdog(now)
            self._ping_timeout_s = command.timeout_ms / 1000.0
            self._last_ping = now
            self._expired = False  # the latched channels stay open: see RLY
            return Ack(received.command_id, ok=True)
        if not any(meter.number == command.channel for meter in self._meters):
            return Ack(received.command_id, ok=False, reason="bad-channel")
        if isinstance(command, RelayState):
            self._executed[Verb.RELAY.value] += 1
            if not command.closed:
                # The Pi has seen the cut and opened its own relay: the latch may go.
                self._latched.discard(command.channel)
            sensed = self.contact_closed(command.channel)
            return Ack(received.command_id, ok=True, fields=((RELAY_KEY, _flag(sensed)),))
        assert isinstance(command, CurrentLimit)
        self._executed[Verb.LIMIT.value] += 1
        self._limits[command.channel] = command.amps
        return Ack(received.command_id, ok=True, fields=((LIMIT_KEY, f"{command.amps:.1f}"),))

    def _alive(self) -> bool:
        if self._ping_timeout_s is None:
            return False
        return self._clock() - self._last_ping <= self._ping_timeout_s

    def _check_watchdog(self, now: float | None = None) -> None:
        if not self._watchdog or self._ping_timeout_s is None or self._expired:
            return
        now = self._clock() if now is None else now
        if now - self._last_ping > self._ping_timeout_s:
            self._expired = True
            self._trips += 1
            self._latched.update(meter.number for meter in self._meters)
            log.warning(
                "simulated ESP32: no watchdog ping for %.1f s: its relays open",
                now - self._last_ping,
            )

    def _meter(self, channel: int) -> _Meter:
        for meter in self._meters:
            if meter.number == channel:
                return meter
        raise KeyError(f"no meter channel {channel}")

    def pause(self) -> None:
        """Cut the link: frames are still produced and numbered but never reach the pty."""
        self._paused = True

    def resume(self) -> None:
        """Restore the link; the reader will see the frames sent into the void as a gap."""
        self._paused = False

    def reboot(self) -> None:
        """Restart the firmware: the next frame has seq 0, each register keeps its whole Wh.

        What lived in RAM is gone: current limits, the watchdog (unarmed again, so the
        firmware's relays stay open until the next ping) and its latches.
        """
        # NVS keeps the integer registers; the fractions lived only in RAM.
        for meter in self._meters:
            meter.energy = math.floor(meter.energy)
        self._next_seq = 0
        self._limits.clear()
        self._ping_timeout_s = None
        self._expired = False
        self._latched.clear()
        self._commands = CommandParser()

    def force(
        self,
        channel: int = DEFAULT_CHANNEL,
        *,
        temperature_c: float | None = None,
        current_a: float | None = None,
        voltage_v: float | None = None,
        energy_wh: float | None = None,
    ) -> None:
        """Fault injection: report these readings on `channel` instead of the simulated
        ones until `release`; `energy_wh` sets the register itself (it may go backwards)."""
        meter = next(m for m in self._meters if m.number == channel)
        if energy_wh is not None:
            meter.energy = energy_wh
        readings = {"temperature_c": temperature_c, "current_a": current_a, "voltage_v": voltage_v}
        meter.forced.update({k: v for k, v in readings.items() if v is not None})

    def release(self, channel: int = DEFAULT_CHANNEL) -> None:
        """Back to simulated readings on `channel`."""
        next(m for m in self._meters if m.number == channel).forced.clear()

    def corrupt_next(self) -> None:
        """Send the next frame with a wrong checksum (a bit flip on the wire)."""
        self._corrupt_next = True

    def skip_seq(self, n: int) -> None:
        """Advance the sequence as if `n` frames had been lost on the way."""
        if n < 1:
            raise ValueError(f"skip_seq needs n >= 1: {n}")
        self._next_seq = next_seq(self._next_seq, n)

    def inject_garbage(self, data: bytes) -> None:
        """Write raw bytes onto the line right now, e.g. boot-loader noise."""
        if self._fd is not None and not self._paused:
            self._send(data)

    def tick(self) -> bytes:
        """Advance the meters to the clock's now and return this interval's frames (no I/O)."""
        return b"".join(self._produce_frames())

    def _produce_frames(self) -> list[bytes]:
        now = self._clock()
        elapsed = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        frames: list[bytes] = []
        for meter in self._meters:
            # The relay is sampled once per frame, so an edge is credited to whole
            # intervals: a contact that just opened accrues nothing more.
            closed = self.contact_closed(meter.number)
            meter.energy += self._power(meter, closed) * elapsed / 3600.0
            frames.append(self._encode(meter, closed))
        # Once per interval and before any of its frames leaves: a reading the
        # Pi has seen is never lost to a power cut.
        self._save_registers()
        return frames

    def _encode(self, meter: _Meter, closed: bool) -> bytes:
        rng = self._rng
        voltage = meter.forced.get("voltage_v", self._voltage_v + rng.uniform(-1.0, 1.0))
        power = self._power(meter, closed)
        # A small random walk kept near the starting value, like a sensor in a calm cabinet.
        meter.temperature += rng.uniform(-0.05, 0.05)
        meter.temperature += (self._temperature_base - meter.temperature) * 0.01
        seq = self._next_seq
        self._last_seq = seq
        self._next_seq = next_seq(seq)
        frame = encode_frame(
            TelemetrySample(
                seq=seq,
                energy_wh=math.floor(meter.energy),
                power_w=power,
                current_a=meter.forced.get("current_a", power / voltage),
                voltage_v=voltage,
                temperature_c=meter.forced.get("temperature_c", meter.temperature),
                extra=self._extra + self._status_fields(meter.number, closed),
                channel=meter.number,
            )
        )
        if self._corrupt_next:
            self._corrupt_next = False
            frame = _flip_checksum(frame)
        return frame

    def _power(self, meter: _Meter, closed: bool) -> float:
        """What the car draws: the charge power, capped by the current limit in force."""
        if not closed:
            return 0.0
        limit = self._limits.get(meter.number)
        if limit is None:
            return self._charge_power_w
        return min(self._charge_power_w, limit * self._voltage_v)

    def _status_fields(self, channel: int, closed: bool) -> tuple[tuple[str, str], ...]:
        fields = [(RELAY_KEY, _flag(closed))]
        if channel in self._latched:
            fields.append((TRIP_KEY, "1"))
        if (limit := self._limits.get(channel)) is not None:
            fields.append((LIMIT_KEY, f"{limit:.1f}"))
        return tuple(fields)

    def _save_registers(self) -> None:
        """Persist the whole-Wh registers that changed (one atomic replace for all)."""
        if self._nvs is None:
            return
        registers = dict(self._stored)
        registers.update((meter.number, math.floor(meter.energy)) for meter in self._meters)
        if registers == self._stored:
            return
        self._stored = registers
        scratch = self._nvs.with_suffix(".tmp")
        scratch.write_text(_format_registers(registers), encoding="ascii")
        os.replace(scratch, self._nvs)

    async def run(self) -> None:
        """Produce a frame every interval and answer commands until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._watch_input()
        try:
            while True:
                if self._write_error is not None:
                    err, self._write_error = self._write_error, None
                    raise DeviceError(f"emulator could not write to the pty: {err}") from err
                # Frame by frame, so a full pty drops whole frames, never a batch.
                for frame in self._produce_frames():
                    if self._fd is not None and not self._paused and self._send(frame):
                        self._frames_sent += 1
                await asyncio.sleep(self._interval_s)
        finally:
            self._stop_writer()
            self._stop_reading()
            self._loop = None

    def _watch_input(self) -> None:
        """Answer the Pi's commands as they come; while its side is closed, look now and then."""
        loop, fd = self._loop, self._fd
        if loop is None or fd is None or self._reading_fd is not None:
            return
        self._probe = None
        if self._read_input(fd):
            loop.add_reader(fd, self._on_input)
            self._reading_fd = fd
        else:
            # Watching a master without a slave would wake the loop without end.
            self._probe = loop.call_later(_INPUT_PROBE_S, self._watch_input)

    def _on_input(self) -> None:
        fd = self._reading_fd
        if fd is not None and not self._read_input(fd):
            self._stop_reading()
            self._watch_input()

    def _read_input(self, fd: int) -> bool:
        """Take what the Pi sent; False once its side of the pty is closed (EIO)."""
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            if self._paused:
                continue  # a cut link loses both directions
            for ack in self._answer(data):
                if self._send(ack):
                    self._acks_sent += 1

    def _stop_reading(self) -> None:
        if self._reading_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._reading_fd)
        self._reading_fd = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _send(self, data: bytes) -> bool:
        if len(self._pending) + len(data) > self._max_pending:
            self._frames_dropped += 1
            return False
        self._pending += data
        self._flush()
        return True

    def _flush(self) -> None:
        fd = self._fd
        if fd is None:
            return
        while self._pending:
            try:
                written = os.write(fd, self._pending)
            except BlockingIOError:
                break
            except OSError as err:
                # Raised from run() so a broken simulation fails loudly instead of
                # looking like an unplugged ESP32.
                log.error("emulator write failed: %s", err)
                self._write_error = err
                self._pending.clear()
                break
            del self._pending[:written]
        if self._pending:
            self._start_writer(fd)
        else:
            self._stop_writer()

    def _start_writer(self, fd: int) -> None:
        if self._writer_fd is None and self._loop is not None:
            self._loop.add_writer(fd, self._flush)
            self._writer_fd = fd

    def _stop_writer(self) -> None:
        if self._writer_fd is not None and self._loop is not None:
            self._loop.remove_writer(self._writer_fd)
        self._writer_fd = None


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _flip_checksum(frame: bytes) -> bytes:
    # The last checksum digit sits just before "\r\n"; any other hex digit there
    # keeps the frame well-formed but wrong.
    digit = frame[-3:-2]
    return frame[:-3] + (b"0" if digit != b"0" else b"1") + frame[-2:]


# NVS file: one register per line, `<channel>=<wh>`. A file holding only channel 1
# is written as a bare `<wh>` line, the format of the single-meter emulator, so
# old and new emulators read each other's files; a bare line always means channel 1.
_NVS_LINE = re.compile(r"(?:([1-9])=)?([0-9]{1,10})")


def _format_registers(registers: Mapping[int, int]) -> str:
    if registers.keys() == {DEFAULT_CHANNEL}:
        return f"{registers[DEFAULT_CHANNEL]}\n"
    return "".join(f"{number}={wh}\n" for number, wh in sorted(registers.items()))


def _load_registers(nvs: Path | None) -> dict[int, int]:
    """The registers saved in `nvs`; none on first start or for an unreadable file."""
    if nvs is None:
        return {}
    try:
        text = nvs.read_text(encoding="ascii")
    except (OSError, ValueError):
        return {}
    registers: dict[int, int] = {}
    for line in text.splitlines():
        match = _NVS_LINE.fullmatch(line.strip())
        if match is None:
            return _unreadable(nvs, line)
        number = int(match.group(1) or DEFAULT_CHANNEL)
        if number > MAX_CHANNEL or number in registers:
            return _unreadable(nvs, line)
        registers[number] = int(match.group(2))
    return registers


def _unreadable(nvs: Path, line: str) -> dict[int, int]:
    # All or nothing: a file with one bad line is not trusted for the others either,
    # and the configured first-boot values apply (like a blank flash).
    log.warning(
        "simulated NVS %s unreadable at %r: starting from the configured registers", nvs, line
    )
    return {}
