"""Injectable clock: monotonic for intervals, UTC wall time for timestamps sent out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

# A Pi without an RTC boots at its last saved time or at the epoch; any wall clock
# before this instant cannot be real, so we refuse to stamp messages with it.
EARLIEST_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """What the rest of the code needs to know about time."""

    def monotonic(self) -> float: ...

    def utc_now(self) -> datetime: ...


class SystemClock:
    """The real clock, which can borrow a trusted time (the CSMS's) while its own is unset.

    Until the system clock is plausible, a time adopted from the CSMS (BootNotification or
    Heartbeat currentTime) is carried forward on the monotonic clock, so timestamps stay
    right on a Pi that booted without network time or an RTC.
    """

    def __init__(self) -> None:
        self._adopted: tuple[datetime, float] | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def utc_now(self) -> datetime:
        now = datetime.now(UTC)
        if self._adopted is None or now >= EARLIEST_PLAUSIBLE:
            return now
        moment, at = self._adopted
        return moment + timedelta(seconds=time.monotonic() - at)

    def adopt(self, trusted: datetime) -> bool:
        """Use `trusted` while the system clock is unset; True when it was adopted."""
        if datetime.now(UTC) >= EARLIEST_PLAUSIBLE or trusted < EARLIEST_PLAUSIBLE:
            return False
        self._adopted = (trusted.astimezone(UTC), time.monotonic())
        return True


def is_synced(clock: Clock) -> bool:
    """Tell whether the wall clock looks set (NTP, RTC or a time taken from the CSMS)."""
    return clock.utc_now() >= EARLIEST_PLAUSIBLE


def iso_utc(moment: datetime) -> str:
    """Format a timestamp as OCPP wants it: ISO-8601, UTC, with an explicit offset."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps sent out must carry UTC")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
