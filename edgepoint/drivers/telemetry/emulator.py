"""ESP32 meter emulator: writes real telemetry frames into a pty master for simulation and tests."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.frames import (
    CHANNEL_KEY,
    DEFAULT_CHANNEL,
    MAX_CHANNEL,
    SEQ_MAX,
    encode_frame,
    next_seq,
)
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

# A UART has no flow control towards a Pi that is not reading: bytes beyond what
# the kernel buffers are lost. Past this much unsent output whole frames are
# dropped instead of queueing without bound.
DEFAULT_MAX_PENDING = 4096


@dataclass(frozen=True, slots=True)
class MeterChannel:
    """One meter of the simulated ESP32 and the relay contact whose current it measures."""

    number: int  # the frames' `ch` field, 1..MAX_CHANNEL
    relay_closed: Callable[[], bool]
    # Register on first boot (nothing in NVS yet); None takes the emulator's energy_wh.
    energy_wh: float | None = None


class _Meter:
    """The running state of one channel (the register and its sensors)."""

    __slots__ = ("energy", "number", "relay_closed", "temperature")

    def __init__(
        self, number: int, relay_closed: Callable[[], bool], energy: float, temperature: float
    ) -> None:
        self.number = number
        self.relay_closed = relay_closed
        self.energy = energy  # fractional Wh; frames carry the floor
        self.temperature = temperature


class Esp32Emulator:
    """Meters simulated chargers and sends frames like the ESP32 firmware does.

    Either `relay_closed` (one meter, channel 1: the original single-connector
    form) or `channels` (one frame per channel per interval, ascending).
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
        for meter in self._meters:
            if meter.number == channel:
                return math.floor(meter.energy)
        raise KeyError(f"no meter channel {channel}")

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

    def detach(self) -> None:
        """Unplug from the current fd, dropping unsent output, so its owner may close it."""
        self._stop_writer()
        self._pending.clear()
        self._fd = None

    def pause(self) -> None:
        """Cut the link: frames are still produced and numbered but never reach the pty."""
        self._paused = True

    def resume(self) -> None:
        """Restore the link; the reader will see the frames sent into the void as a gap."""
        self._paused = False

    def reboot(self) -> None:
        """Restart the firmware: the next frame has seq 0, each register keeps its whole Wh."""
        # NVS keeps the integer registers; the fractions lived only in RAM.
        for meter in self._meters:
            meter.energy = math.floor(meter.energy)
        self._next_seq = 0

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
            closed = meter.relay_closed()
            if closed:
                meter.energy += self._charge_power_w * elapsed / 3600.0
            frames.append(self._encode(meter, closed))
        # Once per interval and before any of its frames leaves: a reading the
        # Pi has seen is never lost to a power cut.
        self._save_registers()
        return frames

    def _encode(self, meter: _Meter, closed: bool) -> bytes:
        rng = self._rng
        voltage = self._voltage_v + rng.uniform(-1.0, 1.0)
        power = self._charge_power_w if closed else 0.0
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
                current_a=power / voltage,
                voltage_v=voltage,
                temperature_c=meter.temperature,
                extra=self._extra,
                channel=meter.number,
            )
        )
        if self._corrupt_next:
            self._corrupt_next = False
            frame = _flip_checksum(frame)
        return frame

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
        """Produce a frame every interval until cancelled."""
        self._loop = asyncio.get_running_loop()
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
            self._loop = None

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
