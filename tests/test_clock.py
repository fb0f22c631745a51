"""The clock trusts the wall time only once NTP, the operator or the CSMS vouch for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgepoint.clock import (
    EARLIEST_PLAUSIBLE,
    SystemClock,
    TimeSource,
    clock_status,
    is_synced,
    iso_utc,
    kernel_clock_synced,
)

# A Pi that booted with fake-hwclock's time: plausible, and three months behind.
FAKE_HWCLOCK = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REAL_TIME = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Machine:
    """The system's clocks as the tests set them: the wall clock, monotonic time, NTP state."""

    def __init__(self, wall: datetime, synced: bool | None = False) -> None:
        self.wall_time = wall
        self.mono_time = 1000.0
        self.ntp: bool | None = synced

    def wall(self) -> datetime:
        return self.wall_time

    def mono(self) -> float:
        return self.mono_time

    def system_synced(self) -> bool | None:
        return self.ntp

    def advance(self, seconds: float) -> None:
        self.wall_time += timedelta(seconds=seconds)
        self.mono_time += seconds

    def clock(self, **kw: object) -> SystemClock:
        return SystemClock(
            system_synced=self.system_synced,
            wall=self.wall,
            mono=self.mono,
            **kw,  # type: ignore[arg-type]
        )


def test_the_kernel_is_asked_with_adjtimex() -> None:
    # Whatever this machine's NTP state: a yes or no from the kernel, not an exception.
    assert kernel_clock_synced() in (True, False)


def test_an_ntp_synchronised_clock_is_the_system_time_and_ignores_the_csms() -> None:
    machine = Machine(REAL_TIME, synced=True)
    clock = machine.clock()
    assert clock.source is TimeSource.SYSTEM and is_synced(clock)
    assert clock.adopt(REAL_TIME + timedelta(hours=5)) is False
    machine.advance(10)
    assert clock.utc_now() == REAL_TIME + timedelta(seconds=10)


def test_trust_rtc_makes_the_system_clock_trusted_without_ntp() -> None:
    machine = Machine(REAL_TIME, synced=False)
    clock = machine.clock(trust_system=True)
    assert clock.source is TimeSource.RTC and is_synced(clock)
    assert clock.adopt(REAL_TIME + timedelta(hours=5)) is False
    assert clock.utc_now() == REAL_TIME


def test_fake_hwclock_time_is_not_trusted_however_plausible() -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock = machine.clock()
    assert FAKE_HWCLOCK >= EARLIEST_PLAUSIBLE  # the old check would have trusted it
    assert not clock.synced and not is_synced(clock)
    assert clock.source is TimeSource.PROVISIONAL
    machine.advance(30)
    # Provisional: the boot time run on with the monotonic clock.
    assert clock.utc_now() == FAKE_HWCLOCK + timedelta(seconds=30)
    status = clock_status(clock)
    assert status["source"] == "provisional" and status["synced"] is False
    assert status["provisional_since"] == iso_utc(FAKE_HWCLOCK)


def test_a_pi_at_the_epoch_never_stamps_1970() -> None:
    machine = Machine(datetime(1970, 1, 1, 0, 0, 12, tzinfo=UTC), synced=None)
    clock = machine.clock()
    assert not clock.synced
    machine.advance(5)
    assert clock.utc_now() == EARLIEST_PLAUSIBLE + timedelta(seconds=5)
    assert iso_utc(clock.utc_now()).startswith("2025-")


def test_the_csms_time_is_taken_while_nothing_better_is_known() -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock = machine.clock()
    # A CSMS time that is itself implausible, or naive, is not taken.
    assert clock.adopt(datetime(2001, 1, 1, tzinfo=UTC)) is False
    assert clock.adopt(datetime(2030, 1, 1)) is False
    assert clock.adopt(REAL_TIME) is True
    assert clock.source is TimeSource.CSMS and is_synced(clock)
    machine.advance(2.5)
    assert clock.utc_now() == REAL_TIME + timedelta(seconds=2.5)
    assert clock.adopt(REAL_TIME + timedelta(days=1)) is False  # once is enough


def test_ntp_arriving_moves_a_csms_clock_to_the_system_time() -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock = machine.clock()
    clock.adopt(REAL_TIME)
    machine.wall_time = REAL_TIME + timedelta(seconds=0.2)  # NTP stepped the clock
    machine.ntp = True
    machine.advance(1.0)  # the kernel is asked at most once a second
    assert clock.source is TimeSource.SYSTEM
    assert clock.utc_now() == machine.wall_time


def test_a_held_clock_waits_for_its_stamps_to_be_corrected() -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock = machine.clock(hold=True)
    machine.advance(60)
    provisional = clock.utc_now()
    machine.wall_time = REAL_TIME  # NTP set the clock
    machine.ntp = True
    machine.advance(1)
    # Known, but still provisional until the caller applies the switch.
    assert clock.source is TimeSource.PROVISIONAL
    assert clock.utc_now() == provisional + timedelta(seconds=1)
    switch = clock.pending_switch()
    assert switch is not None and switch.source is TimeSource.SYSTEM
    assert switch.offset == REAL_TIME + timedelta(seconds=1) - (provisional + timedelta(seconds=1))
    clock.undo(switch)  # a failed correction: still provisional, still pending
    assert not clock.synced and clock.pending_switch() is not None
    clock.apply(switch)
    assert clock.synced and clock.utc_now() == machine.wall_time
    assert clock_status(clock)["last_correction_s"] == round(switch.offset.total_seconds(), 3)


def test_timestamps_sent_out_carry_utc_and_milliseconds() -> None:
    moment = datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=UTC)
    assert iso_utc(moment) == "2025-06-01T14:00:00.123Z"
    with pytest.raises(ValueError):
        iso_utc(datetime(2025, 6, 1))  # naive: refused


def test_any_other_clock_counts_as_set_when_plausible() -> None:
    class Fixed:
        def __init__(self, moment: datetime) -> None:
            self.moment = moment

        def monotonic(self) -> float:
            return 0.0

        def utc_now(self) -> datetime:
            return self.moment

    assert is_synced(Fixed(REAL_TIME))
    assert not is_synced(Fixed(datetime(1970, 1, 1, tzinfo=UTC)))
    assert clock_status(Fixed(REAL_TIME))["source"] == "injected"
