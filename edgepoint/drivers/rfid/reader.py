"""Poll a PN532 through the adafruit driver in a worker thread and publish each card tap once."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from adafruit_pn532.adafruit_pn532 import BusyError
from adafruit_pn532.i2c import PN532_I2C

from edgepoint import backoff
from edgepoint.charging.events import IdTag, TokenPresented
from edgepoint.drivers.rfid.bus import EmulatedI2CBus
from edgepoint.drivers.rfid.emulator import Pn532Emulator
from edgepoint.errors import DeviceError

log = logging.getLogger(__name__)

T = TypeVar("T")

Backoff = Callable[[int], float]
Publish = Callable[[TokenPresented], None]

# What the adafruit driver raises when a frame is garbled (RuntimeError), the bus
# fails (OSError), the chip is not ready when read (BusyError) or is not there at
# all during construction (ValueError from the bus probe).
DRIVER_ERRORS: tuple[type[Exception], ...] = (RuntimeError, OSError, BusyError, ValueError)


class Pn532Driver(Protocol):
    """The part of `adafruit_pn532.PN532` this reader uses."""

    @property
    def firmware_version(self) -> tuple[int, int, int, int]: ...

    def SAM_configuration(self) -> None: ...

    def read_passive_target(self, card_baud: int = ..., timeout: float = ...) -> Any: ...


DriverFactory = Callable[[Any], Pn532Driver]


def adafruit_driver(bus: Any) -> Pn532Driver:
    """Construct the real adafruit driver on `bus` (probes, wakes and identifies the chip)."""
    driver: Pn532Driver = PN532_I2C(bus)
    return driver


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A snapshot of what the reader has done since it was built."""

    polls: int = 0  # read_passive_target calls, failed ones included
    reads: int = 0  # polls that returned a UID
    published: int = 0  # TokenPresented events handed to the publisher
    errors: int = 0  # driver errors of any kind, connection attempts included
    last_error: str | None = None
    connects: int = 0  # successful chip initialisations
    connected: bool = False


class _ChipLost(Exception):
    """The chip stopped answering; the reader drops the driver and reconnects."""


_RECONNECT_ERRORS: tuple[type[Exception], ...] = (_ChipLost, *DRIVER_ERRORS)


class Pn532Reader:
    """Owns one PN532 on one I2C bus: connects, polls, debounces, reconnects with backoff.

    The adafruit driver blocks (it sleeps between status polls), so every call
    into it runs on a single dedicated worker thread. A dedicated thread rather
    than the loop's shared pool keeps a tap from queueing behind slow cloud
    calls, and it serialises access to the chip. Each call is one poll, so a
    cancelled run() leaves at most one poll (about 2 * poll_timeout_s) finishing
    in the background. `stall_timeout_s` must exceed a connect, which the driver
    may stretch to about 5 s with a chip that answers slowly.
    """

    def __init__(
        self,
        bus: Any,
        *,
        poll_timeout_s: float = 0.1,
        backoff: Backoff = backoff.local_device,
        driver_factory: DriverFactory = adafruit_driver,
        max_consecutive_errors: int = 5,
        health_check_s: float = 5.0,
        stall_timeout_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._poll_timeout_s = poll_timeout_s
        self._backoff = backoff
        self._driver_factory = driver_factory
        self._max_consecutive_errors = max_consecutive_errors
        self._health_check_s = health_check_s
        self._stall_timeout_s = stall_timeout_s
        self._monotonic = monotonic
        self._stats = ReaderStats()
        # Survives reconnects on purpose: a card left lying on the reader through a
        # chip hiccup must not count as a second tap (which would stop the session).
        self._last_uid: bytes | None = None
        # Reconnect attempts since the chip last answered a poll; drives the backoff.
        self._attempt = 0

    @property
    def stats(self) -> ReaderStats:
        """Counters so far, as an immutable snapshot."""
        return self._stats

    async def run(self, publish: Publish) -> None:
        """Poll until cancelled, calling `publish` on the event loop once per card presentation."""
        while True:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pn532")
            try:
                driver = await self._call(executor, self._connect)
                self._stats = replace(
                    self._stats, connects=self._stats.connects + 1, connected=True
                )
                log.info("PN532 ready on I2C")
                await self._poll_until_lost(executor, driver, publish)
            except _RECONNECT_ERRORS as err:
                self._note_error(err)
            finally:
                self._stats = replace(self._stats, connected=False)
                # A stuck or in-flight call keeps its thread; it ends on its own
                # within one poll timeout, and nobody waits for it.
                executor.shutdown(wait=False, cancel_futures=True)
            delay = self._backoff(self._attempt)
            self._attempt += 1
            log.warning("PN532 unreachable (%s); retrying in %.1f s", self._stats.last_error, delay)
            await asyncio.sleep(delay)

    async def _poll_until_lost(
        self, executor: ThreadPoolExecutor, driver: Pn532Driver, publish: Publish
    ) -> None:
        consecutive_errors = 0
        last_check = self._monotonic()
        while True:
            started = self._monotonic()
            try:
                uid = await self._call(executor, lambda: self._read_uid(driver))
            except DRIVER_ERRORS as err:
                uid = None
                self._stats = replace(self._stats, polls=self._stats.polls + 1)
                self._note_error(err)
                consecutive_errors += 1
                if consecutive_errors >= self._max_consecutive_errors:
                    raise _ChipLost(f"{consecutive_errors} failed polls in a row") from err
            else:
                consecutive_errors = 0
                self._attempt = 0
                self._stats = replace(
                    self._stats,
                    polls=self._stats.polls + 1,
                    reads=self._stats.reads + (uid is not None),
                )
                if uid is None:
                    self._last_uid = None
                    # The driver reports a vanished chip as "no card", so ask it for
                    # its version now and then while the field is empty.
                    if started - last_check >= self._health_check_s:
                        last_check = started
                        await self._call(executor, lambda: driver.firmware_version)
                elif uid != self._last_uid:
                    self._last_uid = uid
                    self._stats = replace(self._stats, published=self._stats.published + 1)
                    publish(TokenPresented(id_tag=IdTag(uid.hex().upper())))
            # A card in the field (or a garbled answer) returns at once; without
            # this pause the worker would spin on the bus thousands of times a
            # second. An empty field already waits in the chip, so it costs nothing.
            rest = self._poll_timeout_s - (self._monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    def _connect(self) -> Pn532Driver:
        driver = self._driver_factory(self._bus)
        driver.SAM_configuration()
        return driver

    def _read_uid(self, driver: Pn532Driver) -> bytes | None:
        uid = driver.read_passive_target(timeout=self._poll_timeout_s)
        return None if uid is None else bytes(uid)

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        future = asyncio.get_running_loop().run_in_executor(executor, fn)
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that
        # arrives just as the call completes, and then run() never stops.
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                return await future
        except TimeoutError as err:
            raise _ChipLost(f"PN532 call stalled for over {self._stall_timeout_s} s") from err

    def _note_error(self, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"
        self._stats = replace(self._stats, errors=self._stats.errors + 1, last_error=text)
        log.debug("PN532 error: %s", text)


def open_pn532_bus(simulate: bool, emulator: Pn532Emulator | None = None) -> Any:
    """Return the I2C bus the PN532 sits on: emulated when simulating, else the Pi's I2C1.

    Blinka detects the board when `board` is imported and fails off a Pi, so the
    hardware modules are imported here and only when asked for.
    """
    if simulate:
        return EmulatedI2CBus.with_pn532(emulator if emulator is not None else Pn532Emulator())
    try:
        board = importlib.import_module("board")
        busio = importlib.import_module("busio")
        return busio.I2C(board.SCL, board.SDA)
    except (ImportError, AttributeError, OSError, RuntimeError, ValueError) as err:
        raise DeviceError(f"cannot open the I2C bus for the PN532: {err}") from err
