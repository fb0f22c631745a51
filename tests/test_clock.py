"""The wall clock borrows the CSMS's time only while the system clock is not set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgepoint import clock as clock_module
from edgepoint.clock import SystemClock, is_synced, iso_utc


def test_a_set_system_clock_ignores_the_csms_time() -> None:
    clock = SystemClock()
    assert clock.adopt(datetime(2030, 1, 1, tzinfo=UTC)) is False
    assert abs(clock.utc_now() - datetime.now(UTC)) < timedelta(seconds=1)


def test_an_unset_system_clock_runs_on_from_the_csms_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Make today's real time look like a Pi that booted at fake-hwclock's saved time.
    monkeypatch.setattr(
        clock_module, "EARLIEST_PLAUSIBLE", datetime.now(UTC) + timedelta(days=3650)
    )
    clock = SystemClock()
    assert not is_synced(clock)
    csms_time = datetime.now(UTC) + timedelta(days=3660)
    # A CSMS time that is itself implausible is not taken.
    assert clock.adopt(datetime(2001, 1, 1, tzinfo=UTC)) is False
    assert clock.adopt(csms_time) is True
    now = clock.utc_now()
    assert csms_time <= now < csms_time + timedelta(seconds=1)
    assert is_synced(clock)


def test_timestamps_sent_out_carry_utc_and_milliseconds() -> None:
    moment = datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=UTC)
    assert iso_utc(moment) == "2025-06-01T14:00:00.123Z"
    with pytest.raises(ValueError):
        iso_utc(datetime(2025, 6, 1))  # naive: refused
