"""Injectable clock: monotonic for intervals, UTC wall time trusted only once synchronised.

A Pi without an RTC boots at fake-hwclock's saved time (plausible, and wrong by however
long it was off) or at the epoch. So the wall clock counts as synchronised only when
the kernel says so (an NTP client disciplines it: systemd-timesyncd, chrony, ntpd), when
the operator says the system clock is right without NTP (`[clock] trust_rtc`, a
battery-backed RTC), or once the CSMS's currentTime was applied. Until then the time is
*provisional*: the last trusted time (or the system clock, whichever is later, never
before EARLIEST_PLAUSIBLE) run on with the monotonic clock. When the time becomes known,
the offset between the two is what `timesync.TimeKeeper` adds to the provisional stamps
already stored, and only then does the clock switch (so nothing is stamped in between).

The kernel's view is read with adjtimex(2) in read-only mode (no privilege needed), the
same test as systemd's `timedatectl` NTPSynchronized: the estimated maximum error is
below 16 s. The STA_UNSYNC flag is not used: systemd-timesyncd sets it on purpose to keep
the kernel from writing the RTC, while the clock is synchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger(__name__)

# No wall clock before this instant can be real; provisional time never starts earlier.
EARLIEST_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC)
# The kernel's maximum error (µs) at which it calls the clock unsynchronised (NTP_PHASE_LIMIT).
_MAXERROR_UNSYNCED_US = 16_000_000
# How often the kernel is asked, at most: adjtimex is cheap, but utc_now is called a lot.
_KERNEL_CHECK_S = 1.0


class Clock(Protocol):
    """What the rest of the code needs to know about time."""

    def monotonic(self) -> float: ...

    def utc_now(self) -> datetime: ...


class TimeSource(StrEnum):
    """Where the wall time comes from."""

    SYSTEM = "system"  # the kernel says an NTP client synchronised the system clock
    RTC = "rtc"  # [clock] trust_rtc: the system clock is right without NTP
    CSMS = "csms"  # the CSMS's currentTime, run on with the monotonic clock
    PROVISIONAL = "provisional"  # last trusted time + monotonic; corrected once known


@dataclass(frozen=True, slots=True)
class Epoch:
    """Where provisional time starts: a wall time and the monotonic reading it belongs to."""

    wall: datetime
    mono: float


@dataclass(frozen=True, slots=True)
class Switch:
    """Provisional time becoming trusted: what to add to the stamps taken before."""

    source: TimeSource
    offset: timedelta  # trusted minus provisional, the same for every provisional stamp
    epoch: Epoch
    provisional_now: datetime  # the provisional reading when the switch was computed
    csms_time: tuple[datetime, float] | None  # the CSMS's time and its monotonic reading


@dataclass(frozen=True, slots=True)
class ClockSnapshot:
    """The clock as `status` shows it."""

    synced: bool
    source: str
    provisional_since: str | None  # where provisional time started (its own reckoning)
    last_correction_s: float | None  # what the last switch added to provisional stamps
    kernel_synced: bool | None  # adjtimex's view; None: not available


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex (linux/timex.h), with room to spare at the end for newer kernels."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 32),
    ]


_libc: Any = None


def kernel_clock_synced() -> bool | None:
    """Whether the kernel calls the system clock synchronised; None when it cannot tell.

    adjtimex with modes 0 only reads. A seccomp filter that denies @clock (systemd's
    ProtectClock=) makes it fail: then None, which counts as not synchronised.
    """
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        timex = _Timex()
        if _libc.adjtimex(ctypes.byref(timex)) < 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(timex.maxerror) < _MAXERROR_UNSYNCED_US


def _system_wall() -> datetime:
    return datetime.now(UTC)


class SystemClock:
    """The real clock: system time once trusted, provisional time until then.

    With `hold=True` (the daemon) a time that becomes known waits in `pending_switch()`
    until the caller has corrected what was stamped provisionally and calls `apply()`;
    otherwise (the CSMS process, the CLI) the clock switches as soon as it knows.
    `start_provisional` continues an epoch of an earlier run even if NTP has meanwhile
    synchronised the system clock, so that the earlier run's stamps get corrected too.
    """

    def __init__(
        self,
        *,
        trust_system: bool = False,
        hold: bool = False,
        epoch: Epoch | None = None,
        start_provisional: bool = False,
        system_synced: Callable[[], bool | None] = kernel_clock_synced,
        wall: Callable[[], datetime] = _system_wall,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._system_synced = system_synced
        self._wall = wall
        self._mono = mono
        self._hold = hold
        self._kernel: bool | None = system_synced()
        self._kernel_checked = mono()
        self._csms: tuple[datetime, float] | None = None
        self._pending: TimeSource | None = None
        self._last_switch: Switch | None = None
        if trust_system:
            self._source = TimeSource.RTC
        elif self._kernel and not start_provisional:
            self._source = TimeSource.SYSTEM
        else:
            self._source = TimeSource.PROVISIONAL
        self.epoch = epoch or Epoch(max(wall(), EARLIEST_PLAUSIBLE), mono())

    # -- reading ---------------------------------------------------------------------

    def monotonic(self) -> float:
        return self._mono()

    def utc_now(self) -> datetime:
        source = self._notice()
        if source in (TimeSource.SYSTEM, TimeSource.RTC):
            return self._wall()
        if source is TimeSource.CSMS and self._csms is not None:
            moment, at = self._csms
            return moment + timedelta(seconds=self._mono() - at)
        return self.provisional_now()

    def provisional_now(self) -> datetime:
        """The provisional reckoning: the epoch's wall time run on with the monotonic clock."""
        return self.epoch.wall + timedelta(seconds=self._mono() - self.epoch.mono)

    @property
    def synced(self) -> bool:
        """Whether timestamps are trusted (signing, status); provisional time is not."""
        return self._notice() is not TimeSource.PROVISIONAL

    @property
    def source(self) -> TimeSource:
        return self._notice()

    def snapshot(self) -> ClockSnapshot:
        source = self._notice()
        last = self._last_switch
        return ClockSnapshot(
            synced=source is not TimeSource.PROVISIONAL,
            source=source.value,
            provisional_since=iso_utc(self.epoch.wall)
            if source is TimeSource.PROVISIONAL
            else None,
            last_correction_s=None if last is None else round(last.offset.total_seconds(), 3),
            kernel_synced=self._kernel,
        )

    # -- learning the time ---------------------------------------------------------------

    def adopt(self, trusted: datetime) -> bool:
        """Take the CSMS's time while nothing better is known; True when it was taken."""
        if trusted.tzinfo is None or trusted < EARLIEST_PLAUSIBLE:
            return False
        if self._notice() is not TimeSource.PROVISIONAL or self._pending is not None:
            return False
        self._csms = (trusted.astimezone(UTC), self._mono())
        self._learn(TimeSource.CSMS)
        return True

    def pending_switch(self) -> Switch | None:
        """The switch a held clock waits for: the trusted time and the offset to apply."""
        self._notice()
        if self._pending is None or self._source is not TimeSource.PROVISIONAL:
            return None
        provisional = self.provisional_now()
        if self._pending is TimeSource.CSMS and self._csms is not None:
            moment, at = self._csms
            trusted = moment + timedelta(seconds=self._mono() - at)
        else:
            trusted = self._wall()
        return Switch(self._pending, trusted - provisional, self.epoch, provisional, self._csms)

    def apply(self, switch: Switch) -> None:
        """Trust the time from now on (after the stamps taken before were corrected)."""
        self._source = switch.source
        self._pending = None
        self._last_switch = switch
        log.warning(
            "wall clock trusted (%s): provisional stamps since %s moved by %+.3f s",
            switch.source,
            iso_utc(switch.epoch.wall),
            switch.offset.total_seconds(),
        )

    def undo(self, switch: Switch) -> None:
        """Back to provisional time: correcting the stamps failed, it is tried again."""
        self._source = TimeSource.PROVISIONAL
        self._pending = switch.source
        self._last_switch = None

    def _learn(self, source: TimeSource) -> None:
        if self._hold:
            self._pending = source
        else:
            self.apply(Switch(source, timedelta(0), self.epoch, self.provisional_now(), self._csms))

    def _notice(self) -> TimeSource:
        """Follow the kernel: a provisional or CSMS clock moves to NTP once it is there."""
        if self._source in (TimeSource.PROVISIONAL, TimeSource.CSMS):
            now = self._mono()
            if now - self._kernel_checked >= _KERNEL_CHECK_S:
                self._kernel_checked = now
                self._kernel = self._system_synced()
            if self._kernel:
                if self._source is TimeSource.CSMS:
                    # Both are trusted; NTP is the better of the two. No correction: the
                    # CSMS's time was right to within the network's delay.
                    self._source = TimeSource.SYSTEM
                elif self._pending is None:
                    self._learn(TimeSource.SYSTEM)
        return self._source


def is_synced(clock: Clock) -> bool:
    """Whether the clock's time may be trusted (signed into the ledger, shown as set).

    The daemon's SystemClock knows; any other clock (a test's) counts as set when its
    time is plausible.
    """
    if isinstance(clock, SystemClock):
        return clock.synced
    return clock.utc_now() >= EARLIEST_PLAUSIBLE


def clock_status(clock: Clock) -> dict[str, Any]:
    """The clock's state for `status`: synchronised or not, and from where."""
    if isinstance(clock, SystemClock):
        snap = clock.snapshot()
        return {
            "synced": snap.synced,
            "source": snap.source,
            "provisional_since": snap.provisional_since,
            "last_correction_s": snap.last_correction_s,
            "kernel_synced": snap.kernel_synced,
        }
    return {
        "synced": is_synced(clock),
        "source": "injected",
        "provisional_since": None,
        "last_correction_s": None,
        "kernel_synced": None,
    }


def iso_utc(moment: datetime) -> str:
    """Format a timestamp as OCPP wants it: ISO-8601, UTC, with an explicit offset."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps sent out must carry UTC")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
