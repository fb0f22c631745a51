"""Serial pump: reads the ESP32 port with pyserial, feeds the frame parser, publishes samples."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import serial

from edgepoint.backoff import local_device
from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.frames import TelemetryParser, TelemetryStats
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

# Enough for several frames per wake-up without letting one read hog the loop.
_MAX_READ = 4096


# A replugged ESP32 should be back within seconds, and retrying an absent
# device node costs nothing, so the cap is much lower than for network links.
@dataclass(frozen=True, slots=True)
class ReaderStats:
    """Snapshot of the serial link: parser counters plus connection history."""

    frames: TelemetryStats
    connected: bool
    open_attempts: int
    open_failures: int
    reconnects: int  # successful opens after the first one
    disconnects: int  # open ports that failed under us (unplug, I/O error)
    last_sample_at: float | None  # monotonic seconds, None before the first sample
    last_error: str | None


def open_port(port: str, baudrate: int) -> serial.Serial:
    """Open the port non-blocking; a missing or unusable device becomes DeviceError."""
    try:
        # timeout=0 makes read() return at once with what is buffered.
        return serial.Serial(port, baudrate, timeout=0)
    except (serial.SerialException, OSError, ValueError) as err:
        raise DeviceError(f"cannot open {port}: {err}") from err


class SerialTelemetryReader:
    """Keeps the ESP32 link open, reconnecting with backoff, and publishes every good sample."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        parser: TelemetryParser | None = None,
        backoff: Callable[[int], float] = local_device,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._port = port
        self._baudrate = baudrate
        self._parser = parser if parser is not None else TelemetryParser()
        self._backoff = backoff
        self._monotonic = monotonic
        self._sleep = sleep
        self._connected = False
        self._ever_connected = False
        self._open_attempts = 0
        self._open_failures = 0
        self._reconnects = 0
        self._disconnects = 0
        self._last_sample_at: float | None = None
        self._last_error: str | None = None
        self._samples_this_link = False

    @property
    def port(self) -> str:
        """The device path this reader opens."""
        return self._port

    @property
    def last_sample_at(self) -> float | None:
        """Monotonic time of the last good sample; the daemon's staleness signal."""
        return self._last_sample_at

    @property
    def stats(self) -> ReaderStats:
        """A snapshot of parser and link counters."""
        return ReaderStats(
            frames=self._parser.stats,
            connected=self._connected,
            open_attempts=self._open_attempts,
            open_failures=self._open_failures,
            reconnects=self._reconnects,
            disconnects=self._disconnects,
            last_sample_at=self._last_sample_at,
            last_error=self._last_error,
        )

    async def run(self, publish: Callable[[TelemetrySample], None]) -> None:
        """Read and publish until cancelled; an unplugged ESP32 is retried, never raised."""
        failures = 0
        while True:
            if failures:
                # The backoff counts retries from 0, like every other retry loop here.
                await self._sleep(self._backoff(failures - 1))
            self._open_attempts += 1
            try:
                port = open_port(self._port, self._baudrate)
            except DeviceError as err:
                failures += 1
                self._open_failures += 1
                self._note_error(err, first=failures == 1)
                continue
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._connected = True
            self._samples_this_link = False
            # A frame cut in half by the unplug must not be glued to the first
            # bytes after the replug.
            self._parser.discard_partial()
            log.info("telemetry port %s open", self._port)
            try:
                await self._pump(port, publish)
            except DeviceError as err:
                self._disconnects += 1
                self._note_error(err, first=True)
            finally:
                self._connected = False
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()
            # A port that opens but dies before delivering anything (a flapping
            # USB link) keeps backing off; one that worked starts over quickly.
            failures = 1 if self._samples_this_link else failures + 1

    def _note_error(self, err: DeviceError, *, first: bool) -> None:
        self._last_error = str(err)
        # One warning per outage, the retries at debug: an unplugged ESP32
        # should not fill the journal.
        log.log(logging.WARNING if first else logging.DEBUG, "telemetry: %s", self._last_error)

    async def _pump(self, port: serial.Serial, publish: Callable[[TelemetrySample], None]) -> None:
        # add_reader instead of a worker thread: the fd is a plain tty on Linux,
        # the loop wakes only when bytes arrive, cancellation is immediate, and
        # there is no thread to join when the port vanishes mid-read.
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        fd = port.fileno()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = port.read(min(port.in_waiting or 1, _MAX_READ))
                except (serial.SerialException, OSError) as err:
                    raise DeviceError(f"{self._port} lost: {err}") from err
                if not data:
                    continue
                samples = self._parser.feed(data)
                if samples:
                    self._samples_this_link = True
                    self._last_sample_at = self._monotonic()
                for sample in samples:
                    publish(sample)
        finally:
            loop.remove_reader(fd)
