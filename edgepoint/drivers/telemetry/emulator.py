"""ESP32 meter emulator: writes real telemetry frames into a pty master for simulation and tests."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.frames import SEQ_MAX, encode_frame, next_seq
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

# A UART has no flow control towards a Pi that is not reading: bytes beyond what
# the kernel buffers are lost. Past this much unsent output whole frames are
# dropped instead of queueing without bound.
DEFAULT_MAX_PENDING = 4096


class Esp32Emulator:
    """Meters a simulated charger and sends frames like the ESP32 firmware does."""

    def __init__(
        self,
        fd: int | None,
        *,
        relay_closed: Callable[[], bool],
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
        self._relay_closed = relay_closed
        self._charge_power_w = charge_power_w
        self._interval_s = interval_s
        # The firmware keeps its register in NVS across power cycles (PROTOCOL.md); with
        # `nvs` the twin does too, so a crashed session closes on the real reading.
        self._nvs = nvs
        self._energy = float(_load_register(nvs, energy_wh))  # fractional; frames carry floor
        self._saved_wh = self.energy_wh
        self._voltage_v = voltage_v
        self._temperature_base = temperature_c
        self._temperature_c = temperature_c
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
    def energy_wh(self) -> int:
        """The energy register as the frames report it (whole Wh)."""
        return math.floor(self._energy)

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
        """Restart the firmware: the next frame has seq 0, the register keeps its whole Wh."""
        # NVS keeps the integer register; the fraction lived only in RAM.
        self._energy = math.floor(self._energy)
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
        """Advance the meter to the clock's now and return the next frame (no I/O)."""
        now = self._clock()
        elapsed = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        # The relay is sampled once per frame, so an edge is credited to whole
        # intervals: a contact that just opened accrues nothing more.
        closed = self._relay_closed()
        if closed:
            self._energy += self._charge_power_w * elapsed / 3600.0
            self._save_register()
        rng = self._rng
        voltage = self._voltage_v + rng.uniform(-1.0, 1.0)
        power = self._charge_power_w if closed else 0.0
        # A small random walk kept near the starting value, like a sensor in a calm cabinet.
        self._temperature_c += rng.uniform(-0.05, 0.05)
        self._temperature_c += (self._temperature_base - self._temperature_c) * 0.01
        seq = self._next_seq
        self._last_seq = seq
        self._next_seq = next_seq(seq)
        frame = encode_frame(
            TelemetrySample(
                seq=seq,
                energy_wh=self.energy_wh,
                power_w=power,
                current_a=power / voltage,
                voltage_v=voltage,
                temperature_c=self._temperature_c,
                extra=self._extra,
            )
        )
        if self._corrupt_next:
            self._corrupt_next = False
            frame = _flip_checksum(frame)
        return frame

    def _save_register(self) -> None:
        """Persist the whole-Wh register before the frame carrying it leaves (atomic replace)."""
        if self._nvs is None or self.energy_wh == self._saved_wh:
            return
        self._saved_wh = self.energy_wh
        scratch = self._nvs.with_suffix(".tmp")
        scratch.write_text(f"{self._saved_wh}\n", encoding="ascii")
        os.replace(scratch, self._nvs)

    async def run(self) -> None:
        """Produce a frame every interval until cancelled."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                if self._write_error is not None:
                    err, self._write_error = self._write_error, None
                    raise DeviceError(f"emulator could not write to the pty: {err}") from err
                frame = self.tick()
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


def _load_register(nvs: Path | None, default: float) -> float:
    """The register saved in `nvs`, or `default` on first start or a torn file."""
    if nvs is None:
        return default
    try:
        return int(nvs.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return default
