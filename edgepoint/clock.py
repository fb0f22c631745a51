"""Injectable clock: monotonic for intervals, UTC wall time for timestamps sent out."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

# A Pi without an RTC boots at its last saved time or at the epoch; any wall clock
# before this instant cannot be real, so we refuse to stamp messages with it.
EARLIEST_PLAUSIBLE = datetime(2025, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """What the rest of the code needs to know about time."""

    def monotonic(self) -> float: ...

    def utc_now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def utc_now(self) -> datetime:
        return datetime.now(UTC)


def is_synced(clock: Clock) -> bool:
    """Tell whether the wall clock looks set (NTP or RTC), not stuck near 1970."""
    return clock.utc_now() >= EARLIEST_PLAUSIBLE


def iso_utc(moment: datetime) -> str:
    """Format a timestamp as OCPP wants it: ISO-8601, UTC, with an explicit offset."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps sent out must carry UTC")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
