"""Watch a PN532 through the adafruit driver in a worker thread and publish each card tap once.

How it stays cheap and never misses a short tap: the chip is told once to look for
a card (InListPassiveTarget) and then looks by itself, however long it takes; the
reader only asks whether an answer is there: it waits on the IRQ line when one is
wired (no bus traffic at all while idle), else it reads the one-byte status every
`poll_interval_s`. The chip latches the answer, so a card shown for a moment while
the Pi is busy (starting up) is still read when the reader next looks. Right after
a read the chip is told to look again at once.

Faults (no ACK, bus errors, an unplugged board, a chip that is not a PN532) end
the session: the reader reconnects with backoff and reports a fault until the chip
answers again. Nothing here raises out of `run()` but cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from adafruit_pn532.adafruit_pn532 import BusyError

from edgepoint import backoff
from edgepoint.charging.events import IdTag, TokenPresented
from edgepoint.drivers.rfid.bus import EmulatedI2CBus
from edgepoint.drivers.rfid.debounce import TapDebouncer
from edgepoint.drivers.rfid.emulator import (
    CMD_IN_LIST_PASSIVE_TARGET,
    UID_SIZES,
    Pn532Emulator,
)
from edgepoint.drivers.rfid.link import (
    I2cLink,
    Interface,
    IrqLine,
    Pn532Driver,
    Pn532Link,
    hardware_link,
)
from edgepoint.errors import DeviceError
from edgepoint.redact import mask_id_tag

log = logging.getLogger(__name__)

T = TypeVar("T")

Backoff = Callable[[int], float]
Publish = Callable[[TokenPresented], None]

PN532_IC = 0x32  # GetFirmwareVersion's first byte on every PN532
# Longest answer to InListPassiveTarget for one type A target: NbTg, Tg, ATQA (2),
# SAK, NFCIDLength, a 10-byte UID, and ATS bytes of ISO 14443-4 cards.
_TARGET_RESPONSE_LEN = 64
# A wait in the worker returns by the next health check, and at least this often.
_WAIT_BUDGET_MAX_S = 5.0

# What the adafruit driver raises when a frame is garbled (RuntimeError), the bus
# fails (OSError), the chip is not ready when read (BusyError) or is not there at
# all during construction (ValueError from the bus probe).
DRIVER_ERRORS: tuple[type[Exception], ...] = (RuntimeError, OSError, BusyError, ValueError)


class ChipFault(DeviceError):
    """The chip answered wrongly or not at all (no ACK, not a PN532, bad target data)."""


class _ChipLost(Exception):
    """The chip stopped answering; the reader drops the driver and reconnects."""


# Failures of one exchange: counted, and the session goes on until too many in a row.
CHIP_ERRORS: tuple[type[Exception], ...] = (*DRIVER_ERRORS, ChipFault)
_EXPECTED: tuple[type[Exception], ...] = (*CHIP_ERRORS, _ChipLost)


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A snapshot of what the reader has done since it was built."""

    interface: str = Interface.I2C.value
    irq: bool = False  # waiting on the IRQ line (else polling the status byte)
    connected: bool = False
    fault: str | None = None  # why no card can be read now; None while the reader works
    firmware: str | None = None  # "1.6" once a chip answered
    connects: int = 0  # successful chip initialisations
    arms: int = 0  # InListPassiveTarget commands: the chip then looks by itself
    probes: int = 0  # status reads while waiting (none with the IRQ line)
    reads: int = 0  # card UIDs read
    published: int = 0  # TokenPresented events handed to the publisher
    repeats: int = 0  # reads of a card still held, not a new tap
    health_checks: int = 0  # GetFirmwareVersion asked while idle (a reset chip is silent)
    errors: int = 0  # driver errors of any kind, connection attempts included
    last_error: str | None = None


class Pn532Reader:
    """Owns one PN532: connects, waits for cards, debounces, reconnects with backoff.

    The adafruit driver blocks (it sleeps between status polls), so every call
    into it runs on one dedicated worker thread, which also serialises access to
    the chip. `stall_timeout_s` must exceed a connect, which the driver may stretch
    to about 5 s with a chip that answers slowly.
    """

    def __init__(
        self,
        link: Pn532Link | Any,
        *,
        irq: IrqLine | None = None,
        poll_interval_s: float = 0.2,
        removal_s: float = 1.0,
        health_check_s: float = 5.0,
        ack_timeout_s: float = 0.5,
        stall_timeout_s: float = 10.0,
        max_consecutive_errors: int = 3,
        backoff: Backoff = backoff.local_device,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # A bare bus (the first version's signature) is the emulated I2C bus's.
        self._link: Pn532Link = link if hasattr(link, "open_driver") else I2cLink(link)
        self._irq = irq
        self._poll_interval_s = poll_interval_s
        self._health_check_s = health_check_s
        self._ack_timeout_s = ack_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._max_consecutive_errors = max_consecutive_errors
        self._backoff = backoff
        self._monotonic = monotonic
        self._debouncer = TapDebouncer(removal_s)
        self._stats = ReaderStats(interface=self._link.interface.value, irq=irq is not None)
        # Reconnect attempts since the chip last answered; drives the backoff.
        self._attempt = 0
        # Per session: the worker thread and what stops or wakes its waits.
        self._executor: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Counted in the worker thread (a call abandoned after a stall may still
        # finish there), copied into the snapshot.
        self._probes = 0
        self._arms = 0

    @property
    def link(self) -> Pn532Link:
        """How the chip is reached."""
        return self._link

    @property
    def stats(self) -> ReaderStats:
        """Counters so far, as an immutable snapshot."""
        return replace(self._stats, probes=self._probes, arms=self._arms)

    @property
    def fault(self) -> str | None:
        """Why no card can be read now (the chip is gone or wrong); None while it works."""
        return self._stats.fault

    def reader_faulted(self) -> bool:
        """True while the reader is gone or failing: no taps can be read (kiosk's ReaderHealth)."""
        return self._stats.fault is not None

    async def run(self, publish: Publish) -> None:
        """Read cards until cancelled, calling `publish` on the loop once per presentation."""
        while True:
            self._stop = threading.Event()
            self._wake = threading.Event()
            self._edge_at: float | None = None
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pn532", initializer=_name_os_thread
            )
            if self._irq is not None:
                self._irq.on_assert(self._on_irq)
            try:
                await self._session(publish)
            except Exception as err:  # a reader fault is data, never a crash (DESIGN.md)
                self._lose(err)
            finally:
                self._stop.set()
                self._wake.set()
                if self._irq is not None:
                    self._irq.on_assert(None)
                self._stats = replace(self._stats, connected=False)
                # A stuck call keeps its thread; it ends on its own (a wait within
                # its budget, a stretched transfer when the bus lets go).
                self._executor.shutdown(wait=False, cancel_futures=True)
            delay = self._backoff(self._attempt)
            self._attempt += 1
            log.debug("PN532: retrying in %.2f s", delay)
            await asyncio.sleep(delay)

    # -- on the loop ---------------------------------------------------------------------

    async def _session(self, publish: Publish) -> None:
        driver, version, armed_at = await self._call(self._connect)
        self._connected(version)
        self._debouncer.watching(armed_at)
        armed = True
        last_check = self._monotonic()
        errors = 0
        while True:
            try:
                if not armed:
                    armed_at = await self._call(lambda: self._arm(driver))
                    armed = True
                    self._debouncer.watching(armed_at)
                # One worker call per health check while idle: every hop between the
                # loop and the thread costs a wake-up, and idle is most of the day.
                until_check = last_check + self._health_check_s - self._monotonic()
                budget = min(max(until_check, 0.0), _WAIT_BUDGET_MAX_S, self._stall_timeout_s / 2)
                ready, empty_at = await self._call(functools.partial(self._wait, budget))
                if empty_at is not None:
                    self._debouncer.empty(empty_at)
                if ready:
                    armed = False
                    uid, armed_at = await self._call(lambda: self._collect(driver))
                    armed = True
                    if uid is not None:
                        self._on_card(uid, publish)
                    self._debouncer.watching(armed_at)
                    errors = 0
                    if uid is not None:
                        # A held card answers every look at once: not more than this often.
                        await asyncio.sleep(self._poll_interval_s)
                elif self._monotonic() - last_check >= self._health_check_s:
                    # The driver cannot tell a chip that reset itself (and forgot the
                    # command) from an empty field: ask it who it is now and then.
                    armed = False
                    last_check = self._monotonic()
                    self._stats = replace(self._stats, health_checks=self._stats.health_checks + 1)
                    armed_at = await self._call(lambda: self._health(driver))
                    armed = True
                    self._debouncer.watching(armed_at)
                    errors = 0
            except CHIP_ERRORS as err:
                armed = False
                self._note_error(err)
                # What the chip saw while failing cannot count as the card's absence.
                self._debouncer.blind()
                errors += 1
                if errors >= self._max_consecutive_errors:
                    raise _ChipLost(f"{errors} failed exchanges in a row: {err}") from err

    def _connected(self, version: tuple[int, ...]) -> None:
        was = self._stats.fault
        self._attempt = 0
        self._stats = replace(
            self._stats,
            connects=self._stats.connects + 1,
            connected=True,
            fault=None,
            firmware=f"{version[1]}.{version[2]}",
        )
        if was:
            log.warning(
                "PN532 back over %s (firmware %s)", self._link.describe(), self._stats.firmware
            )
        else:
            log.info(
                "PN532 ready over %s (firmware %s)", self._link.describe(), self._stats.firmware
            )

    def _lose(self, err: Exception) -> None:
        first = self._stats.fault is None
        self._note_error(err)
        self._debouncer.blind()
        self._stats = replace(self._stats, fault=self._stats.last_error, connected=False)
        if first:
            # One error per outage; the retries go to debug, or an unplugged reader
            # would fill the journal.
            log.error(
                "PN532 over %s out of order (%s): no card can be read; reconnecting",
                self._link.describe(),
                self._stats.fault,
                exc_info=not isinstance(err, _EXPECTED),
            )

    def _on_card(self, uid: bytes, publish: Publish) -> None:
        self._stats = replace(self._stats, reads=self._stats.reads + 1)
        if not self._debouncer.seen(uid):
            self._stats = replace(self._stats, repeats=self._stats.repeats + 1)
            return
        tag = IdTag(uid.hex().upper())
        self._stats = replace(self._stats, published=self._stats.published + 1)
        log.info("card %s presented", mask_id_tag(tag))
        publish(TokenPresented(id_tag=tag))

    async def _call(self, fn: Callable[[], T]) -> T:
        assert self._executor is not None
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
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

    # -- in the worker thread --------------------------------------------------------------

    def _connect(self) -> tuple[Pn532Driver, tuple[int, ...], float]:
        driver = self._link.open_driver()
        version = _checked_firmware(driver)
        return driver, version, self._arm(driver)

    def _arm(self, driver: Pn532Driver) -> float:
        """Tell the chip to look for one type A card until it finds one; when it was told."""
        if not driver.listen_for_passive_target(timeout=self._ack_timeout_s):
            raise ChipFault("no ACK to InListPassiveTarget")
        self._arms += 1
        return self._monotonic()

    def _on_irq(self) -> None:
        """The IRQ line went active (gpiozero's thread): the chip found a card just now."""
        self._edge_at = self._monotonic()
        self._wake.set()

    def _wait(self, budget_s: float) -> tuple[bool, float | None]:
        """Wait up to `budget_s` for the chip's answer: on the IRQ line, else by polling.

        Returns whether an answer is ready and when a look last found the field empty
        (None: no look did), which is the debouncer's only evidence of a card's absence.
        """
        deadline = self._monotonic() + budget_s
        empty_at: float | None = None
        while not self._stop.is_set():
            looked_at = self._monotonic()
            if self._irq is not None:
                if self._irq.asserted():
                    if empty_at is not None and self._edge_at is not None:
                        # Empty until the edge, however late this thread saw it.
                        empty_at = max(empty_at, min(self._edge_at, looked_at))
                    return True, empty_at
            else:
                self._probes += 1
                if self._link.response_ready():
                    return True, empty_at
            empty_at = looked_at
            left = deadline - self._monotonic()
            if left <= 0:
                return False, empty_at
            if self._irq is not None:
                self._wake.wait(left)
                self._wake.clear()
            else:
                # time.sleep, not an Event: a timed Event.wait costs about twice the
                # CPU per wake-up, and this runs ten times a second all day. A stop
                # is then seen within one poll interval.
                time.sleep(min(self._poll_interval_s, left))
        return False, empty_at

    def _collect(self, driver: Pn532Driver) -> tuple[bytes | None, float]:
        """Read the answer, then have the chip look again at once; (UID, armed at)."""
        response = driver.process_response(
            CMD_IN_LIST_PASSIVE_TARGET,
            response_length=_TARGET_RESPONSE_LEN,
            timeout=self._ack_timeout_s,
        )
        uid = None if response is None else target_uid(bytes(response))
        return uid, self._arm(driver)

    def _health(self, driver: Pn532Driver) -> float:
        _checked_firmware(driver)
        return self._arm(driver)


def _name_os_thread() -> None:
    """Name the worker thread for the OS too, so `top -H` and /proc show "pn532"."""
    # Python (before 3.14) names threads for itself only; prctl(PR_SET_NAME) is Linux's.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, b"pn532", 0, 0, 0)


def _checked_firmware(driver: Pn532Driver) -> tuple[int, ...]:
    version = tuple(driver.firmware_version)
    if len(version) != 4 or version[0] != PN532_IC:
        raise ChipFault(f"not a PN532: GetFirmwareVersion answered {bytes(version).hex(' ')}")
    return version


def target_uid(response: bytes) -> bytes | None:
    """The UID in an InListPassiveTarget answer (NbTg, Tg, ATQA, SAK, length, UID...).

    Unlike the adafruit driver's own parsing (which refuses UIDs longer than 7
    bytes) this takes the 10-byte UIDs of triple-size cards too.
    """
    if not response or response[0] == 0:
        return None  # the chip gave up looking (a finite MxRtyPassiveActivation)
    if len(response) < 6:
        raise ChipFault(f"target data too short: {response.hex(' ')}")
    size = response[5]
    if size not in UID_SIZES or len(response) < 6 + size:
        raise ChipFault(f"target data with a {size}-byte UID: {response.hex(' ')}")
    return response[6 : 6 + size]


def open_pn532_bus(simulate: bool, emulator: Pn532Emulator | None = None) -> Any:
    """Return the I2C bus the PN532 sits on: emulated when simulating, else the Pi's I2C1."""
    if simulate:
        return EmulatedI2CBus.with_pn532(emulator if emulator is not None else Pn532Emulator())
    link = hardware_link(Interface.I2C)
    assert isinstance(link, I2cLink)
    return link.bus
