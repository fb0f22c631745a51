"""Serial link to the ESP32: publishes telemetry, sends acknowledged commands, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import serial

from edgepoint.backoff import local_device
from edgepoint.charging.events import TelemetrySample
from edgepoint.drivers.telemetry.commands import (
    Command,
    CurrentLimit,
    RelayState,
    WatchdogPing,
    encode_command,
)
from edgepoint.drivers.telemetry.frames import (
    COMMAND_ID_MAX,
    Ack,
    TelemetryParser,
    TelemetryStats,
)
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

# Enough for several frames per wake-up without letting one read hog the loop.
_MAX_READ = 4096

# Extras of the firmware's frames that the link interprets (hardware/PROTOCOL.md).
RELAY_KEY = "rly"
TRIP_KEY = "trip"
LIMIT_KEY = "lim"

# The firmware answers within a few ms; a USB-serial adapter may hold bytes for up
# to 16 ms each way. Three attempts at 0.3 s ride out a lost or garbled frame and
# still give up in about a second.
ACK_TIMEOUT_S = 0.3
ATTEMPTS = 3
# How long the ESP32 waits for the next ping before it opens its relays. The kiosk
# pings once a second and opens the relays itself after a 5 s stall; this is the
# backstop for a Pi that can no longer do even that.
WATCHDOG_TIMEOUT_S = 10.0


class CommandFailed(DeviceError):
    """A command was not carried out: link down, refused by the firmware, or never acked."""

    def __init__(self, command: Command, reason: str, ack: Ack | None = None) -> None:
        super().__init__(f"{command}: {reason}")
        self.command = command
        self.reason = reason
        self.ack = ack


class _LinkLost(Exception):
    """The port closed while a command waited for its ack."""


@dataclass(frozen=True, slots=True)
class CommandStats:
    """What the command side of the link has done."""

    sent: int = 0  # command frames written, retries included
    acked: int = 0  # commands answered OK
    refused: int = 0  # commands answered ERR
    retries: int = 0  # frames sent again after an ack timeout
    timeouts: int = 0  # commands given up after the last attempt
    stray_acks: int = 0  # acks for no command in flight (late ones)
    pings: int = 0  # watchdog pings acknowledged
    pings_failed: int = 0  # pings asked for while the link was down, or not acked
    resyncs: int = 0  # standing relay/limit states sent again (reconnect, ESP32 reboot)


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One meter channel as the firmware last reported it."""

    channel: int
    relay_echo: bool | None  # the contact as sensed; None: not reported (yet)
    watchdog_tripped: bool  # the firmware's watchdog holds its relay open
    current_limit_a: float | None  # the limit in force; None: none reported


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """Snapshot of the serial link: parser counters, connection history, commands."""

    frames: TelemetryStats
    connected: bool
    open_attempts: int
    open_failures: int
    reconnects: int  # successful opens after the first one
    disconnects: int  # open ports that failed under us (unplug, I/O error)
    last_sample_at: float | None  # monotonic seconds, None before the first sample
    last_error: str | None
    esp32_reboots: int = 0  # sequence restarts seen (= frames.seq_resets)
    commands: CommandStats = CommandStats()
    channels: tuple[ChannelState, ...] = ()


def open_port(port: str, baudrate: int) -> serial.Serial:
    """Open the port non-blocking and for us alone; a missing device becomes DeviceError."""
    try:
        # timeout=0 makes read() return at once with what is buffered; exclusive
        # (flock) keeps `edgepoint doctor` from reading frames meant for the daemon.
        return serial.Serial(port, baudrate, timeout=0, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as err:
        raise DeviceError(f"cannot open {port}: {err}") from err


class SerialTelemetryReader:
    """Keeps the ESP32 link open, reconnecting with backoff; publishes samples, sends commands.

    Commands go one at a time (the firmware answers them in order): a frame,
    then up to `ack_timeout_s` for its ack, again with the same id up to
    `attempts` times. Relay states and current limits are standing orders: sent
    again after a reconnect and after the ESP32 rebooted (its RAM forgot them).
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        parser: TelemetryParser | None = None,
        backoff: Callable[[int], float] = local_device,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        attempts: int = ATTEMPTS,
        watchdog_timeout_s: float = WATCHDOG_TIMEOUT_S,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1: {attempts}")
        self._port_name = port
        self._baudrate = baudrate
        self._parser = parser if parser is not None else TelemetryParser()
        self._backoff = backoff
        self._monotonic = monotonic
        self._sleep = sleep
        self._ack_timeout_s = ack_timeout_s
        self._attempts = attempts
        self._ping = WatchdogPing(round(watchdog_timeout_s * 1000))
        encode_command(1, self._ping)  # a timeout out of range fails here, not at run time
        self._connected = False
        self._ever_connected = False
        self._open_attempts = 0
        self._open_failures = 0
        self._reconnects = 0
        self._disconnects = 0
        self._last_sample_at: float | None = None
        self._last_error: str | None = None
        self._samples_this_link = False
        # The command side.
        self._serial: serial.Serial | None = None
        self._lock = asyncio.Lock()
        self._waiting: tuple[int, asyncio.Future[Ack]] | None = None
        # Random start: ids of a previous run still in flight cannot match ours.
        self._next_id = random.randint(1, COMMAND_ID_MAX)
        self._wake = asyncio.Event()
        self._ping_wanted = False
        self._resync_wanted = False
        self._relays: dict[int, bool] = {}  # standing: what the Pi commands per channel
        self._relays_unsent: set[int] = set()
        self._limits: dict[int, float] = {}  # standing: current limit per channel
        self._echo: dict[int, bool] = {}
        self._tripped: dict[int, bool] = {}
        self._limit_seen: dict[int, float] = {}
        self._sent = self._acked = self._refused = self._retries = self._timeouts = 0
        self._stray_acks = self._pings = self._pings_failed = self._resyncs = 0

    @property
    def port(self) -> str:
        """The device path this reader opens."""
        return self._port_name

    @property
    def connected(self) -> bool:
        """Whether the port is open now."""
        return self._connected

    @property
    def last_sample_at(self) -> float | None:
        """Monotonic time of the last good sample; the daemon's staleness signal."""
        return self._last_sample_at

    @property
    def stats(self) -> ReaderStats:
        """A snapshot of parser, link and command counters and of each channel's state."""
        frames = self._parser.stats
        numbers = sorted({*self._echo, *self._tripped, *self._limit_seen})
        return ReaderStats(
            frames=frames,
            connected=self._connected,
            open_attempts=self._open_attempts,
            open_failures=self._open_failures,
            reconnects=self._reconnects,
            disconnects=self._disconnects,
            last_sample_at=self._last_sample_at,
            last_error=self._last_error,
            esp32_reboots=frames.seq_resets,
            commands=CommandStats(
                sent=self._sent,
                acked=self._acked,
                refused=self._refused,
                retries=self._retries,
                timeouts=self._timeouts,
                stray_acks=self._stray_acks,
                pings=self._pings,
                pings_failed=self._pings_failed,
                resyncs=self._resyncs,
            ),
            channels=tuple(
                ChannelState(
                    channel=n,
                    relay_echo=self._echo.get(n),
                    watchdog_tripped=self._tripped.get(n, False),
                    current_limit_a=self._limit_seen.get(n),
                )
                for n in numbers
            ),
        )

    # -- what the kiosk uses (edgepoint.kiosk.Esp32Port) --------------------------------

    def ping_watchdog(self) -> None:
        """Ask for a watchdog ping to be sent; returns at once (the link's task sends it).

        Not retried: the next ping is due within the second anyway. Pings asked for
        while one is on its way are merged into it.
        """
        if not self._connected:
            self._pings_failed += 1
            return
        self._ping_wanted = True
        self._wake.set()

    def relay_echo(self, channel: int) -> bool | None:
        """The contact of this channel as the ESP32 last sensed it; None when unknown."""
        return self._echo.get(channel)

    def report_relay(self, channel: int, closed: bool) -> None:
        """Tell the firmware the state the Pi commands for a relay; returns at once.

        Reporting `closed=False` also releases a channel the firmware's watchdog
        cut. The state stands: it is sent again after a reconnect or an ESP32 reboot.
        """
        self._relays[channel] = closed
        self._relays_unsent.add(channel)
        self._wake.set()

    def watchdog_tripped(self, channel: int) -> bool:
        """Whether the ESP32 reports that its watchdog holds this channel's relay open."""
        return self._tripped.get(channel, False)

    async def set_current_limit(self, channel: int, amps: float) -> float:
        """Set a channel's current limit; return the limit the firmware applied (it may clamp).

        The limit stands: it is sent again after a reconnect or an ESP32 reboot.
        Raises CommandFailed when the firmware refused it or did not answer.
        """
        command = CurrentLimit(channel, amps)
        encode_command(1, command)  # refuse a bad channel or value before it stands
        self._limits[channel] = amps
        ack = await self.send_command(command)
        applied = ack.field(LIMIT_KEY)
        return float(applied) if applied is not None else amps

    async def send_command(self, command: Command, *, attempts: int | None = None) -> Ack:
        """Send one command and return its OK ack; retried on ack timeout (same id).

        Raises CommandFailed when the link is down, the firmware answers ERR, or no
        ack came after the last attempt.
        """
        tries = self._attempts if attempts is None else attempts
        async with self._lock:
            command_id = self._take_id()
            frame = encode_command(command_id, command)
            loop = asyncio.get_running_loop()
            for attempt in range(tries):
                port = self._serial
                if port is None:
                    raise CommandFailed(command, "the ESP32 link is down")
                future: asyncio.Future[Ack] = loop.create_future()
                self._waiting = (command_id, future)
                try:
                    self._write(port, frame, command)
                    self._sent += 1
                    self._retries += attempt > 0
                    async with asyncio.timeout(self._ack_timeout_s):
                        ack = await future
                except TimeoutError:
                    continue
                except _LinkLost:
                    raise CommandFailed(command, "the ESP32 link went down") from None
                finally:
                    self._waiting = None
                if not ack.ok:
                    self._refused += 1
                    raise CommandFailed(command, f"refused by the ESP32: {ack.reason}", ack)
                self._acked += 1
                self._note_ack(command, ack)
                return ack
            self._timeouts += 1
            raise CommandFailed(command, f"no ack after {tries} attempt(s)")

    def _take_id(self) -> int:
        command_id = self._next_id
        self._next_id = command_id % COMMAND_ID_MAX + 1
        return command_id

    def _write(self, port: serial.Serial, frame: bytes, command: Command) -> None:
        # os.write on pyserial's non-blocking fd: pyserial's own write() spins on a
        # full buffer with write_timeout=0 and blocks the loop without one. A short
        # write leaves half a frame, which the firmware drops as garbage; the retry
        # sends it whole.
        try:
            written = os.write(port.fileno(), frame)
        except BlockingIOError:
            written = 0
        except OSError as err:
            raise CommandFailed(command, f"write failed: {err}") from err
        if written != len(frame):
            log.debug("telemetry: command frame cut short (%d of %d bytes)", written, len(frame))

    def _note_ack(self, command: Command, ack: Ack) -> None:
        if isinstance(command, RelayState) and (echo := ack.field(RELAY_KEY)) is not None:
            self._echo[command.channel] = echo == "1"
        elif isinstance(command, CurrentLimit) and (limit := ack.field(LIMIT_KEY)) is not None:
            with contextlib.suppress(ValueError):
                self._limit_seen[command.channel] = float(limit)

    # -- the link ---------------------------------------------------------------------------

    async def run(self, publish: Callable[[TelemetrySample], None]) -> None:
        """Read, publish and send until cancelled; an unplugged ESP32 is retried, never raised."""
        failures = 0
        while True:
            if failures:
                # The backoff counts retries from 0, like every other retry loop here.
                await self._sleep(self._backoff(failures - 1))
            self._open_attempts += 1
            try:
                port = open_port(self._port_name, self._baudrate)
            except DeviceError as err:
                failures += 1
                self._open_failures += 1
                self._note_error(err, first=failures == 1)
                continue
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._connected = True
            self._serial = port
            self._samples_this_link = False
            # A frame cut in half by the unplug must not be glued to the first
            # bytes after the replug.
            self._parser.discard_partial()
            log.info("telemetry port %s open", self._port_name)
            try:
                await self._serve(port, publish)
            except DeviceError as err:
                self._disconnects += 1
                self._note_error(err, first=True)
            finally:
                self._connected = False
                self._serial = None
                self._forget_link()
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()
            # A port that opens but dies before delivering anything (a flapping
            # USB link) keeps backing off; one that worked starts over quickly.
            failures = 1 if self._samples_this_link else failures + 1

    def _forget_link(self) -> None:
        # What the firmware reported is unknown while nobody hears it.
        self._echo.clear()
        self._tripped.clear()
        self._limit_seen.clear()
        self._ping_wanted = False
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(_LinkLost())

    async def _serve(self, port: serial.Serial, publish: Callable[[TelemetrySample], None]) -> None:
        courier = asyncio.create_task(self._courier(), name="esp32 commands")
        try:
            await self._pump(port, publish)
        finally:
            courier.cancel()
            # wait(), not `await courier` under suppress(CancelledError): that would
            # also swallow a cancellation of this task arriving meanwhile (the port
            # died, then run() was cancelled), and run() would go on for ever.
            await asyncio.wait({courier})

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
        # Whatever stood before this link (relays, limits) is sent again on it.
        self._resync_wanted = bool(self._relays or self._limits)
        self._wake.set()
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = port.read(min(port.in_waiting or 1, _MAX_READ))
                except (serial.SerialException, OSError) as err:
                    raise DeviceError(f"{self._port_name} lost: {err}") from err
                if not data:
                    continue
                resets = self._parser.stats.seq_resets
                items = self._parser.feed_all(data)
                if self._parser.stats.seq_resets != resets:
                    log.warning("telemetry: the ESP32 restarted (its frame count began again)")
                    self._resync_wanted = True
                    self._wake.set()
                for item in items:
                    if isinstance(item, Ack):
                        self._take_ack(item)
                        continue
                    self._samples_this_link = True
                    self._last_sample_at = self._monotonic()
                    self._note_sample(item)
                    publish(item)
        finally:
            loop.remove_reader(fd)

    def _take_ack(self, ack: Ack) -> None:
        waiting = self._waiting
        if waiting is not None and waiting[0] == ack.command_id and not waiting[1].done():
            waiting[1].set_result(ack)
        else:
            self._stray_acks += 1

    def _note_sample(self, sample: TelemetrySample) -> None:
        tripped = False
        for key, value in sample.extra:
            if key == RELAY_KEY:
                self._echo[sample.channel] = value == "1"
            elif key == TRIP_KEY:
                tripped = value == "1"
            elif key == LIMIT_KEY:
                with contextlib.suppress(ValueError):
                    self._limit_seen[sample.channel] = float(value)
        self._tripped[sample.channel] = tripped

    async def _courier(self) -> None:
        """Send what was asked for without waiting (pings, relay reports, resyncs), in turn."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._ping_wanted:
                self._ping_wanted = False
                try:
                    await self.send_command(self._ping, attempts=1)
                    self._pings += 1
                except CommandFailed as err:
                    self._pings_failed += 1
                    log.debug("telemetry: watchdog ping: %s", err)
            if self._resync_wanted:
                self._resync_wanted = False
                self._relays_unsent.update(self._relays)
                self._resyncs += len(self._relays)
                for channel, amps in sorted(self._limits.items()):
                    self._resyncs += 1
                    await self._try(CurrentLimit(channel, amps))
            while self._relays_unsent:
                channel = min(self._relays_unsent)
                self._relays_unsent.discard(channel)
                await self._try(RelayState(channel, self._relays[channel]))

    async def _try(self, command: Command) -> None:
        try:
            await self.send_command(command)
        except CommandFailed as err:
            log.warning("telemetry: %s", err)
