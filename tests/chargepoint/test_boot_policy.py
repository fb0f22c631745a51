"""BootNotification.conf rules: registration, clamped intervals, the CSMS's clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edgepoint.chargepoint.boot import (
    DEFAULT_RETRY_S,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    BootOutcome,
    Registration,
    on_boot_reply,
)

NOON = "2024-05-01T12:00:00Z"
NOON_UTC = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
OWN_HEARTBEAT_S = 300


def reply(status: str, interval: int, current_time: Any = NOON) -> dict[str, Any]:
    return {"status": status, "interval": interval, "currentTime": current_time}


def test_limits_are_sane() -> None:
    assert MIN_INTERVAL_S == 1
    assert MIN_INTERVAL_S <= DEFAULT_RETRY_S <= MAX_INTERVAL_S == 86_400


@pytest.mark.parametrize("status", list(Registration))
def test_registration_and_a_normal_interval_are_taken_as_given(status: Registration) -> None:
    outcome = on_boot_reply(reply(status.value, 120), OWN_HEARTBEAT_S)
    assert outcome == BootOutcome(status, 120, NOON_UTC)


# -- Accepted: the interval is the heartbeat -----------------------------------------


@pytest.mark.parametrize("interval", [0, -1, -86_400, -(2**31)])
def test_accepted_without_a_usable_interval_keeps_our_own_heartbeat(interval: int) -> None:
    outcome = on_boot_reply(reply("Accepted", interval), OWN_HEARTBEAT_S)
    assert outcome.registration is Registration.ACCEPTED
    assert outcome.interval_s == OWN_HEARTBEAT_S


@pytest.mark.parametrize(
    ("own", "expected"),
    [(0, MIN_INTERVAL_S), (-5, MIN_INTERVAL_S), (10**9, MAX_INTERVAL_S), (45, 45)],
)
def test_our_own_fallback_heartbeat_is_clamped_too(own: int, expected: int) -> None:
    assert on_boot_reply(reply("Accepted", 0), own).interval_s == expected


# -- Pending / Rejected: the interval is the wait before booting again ---------------


@pytest.mark.parametrize("status", ["Pending", "Rejected"])
@pytest.mark.parametrize("interval", [0, -1, -(2**31)])
def test_pending_or_rejected_without_usable_interval_waits_the_default(
    status: str, interval: int
) -> None:
    # Our heartbeat is no measure of how long to wait for a registration.
    outcome = on_boot_reply(reply(status, interval), own_heartbeat_s=7)
    assert outcome.registration is Registration(status)
    assert outcome.interval_s == DEFAULT_RETRY_S


# -- clamping of what the CSMS gives ------------------------------------------------


@pytest.mark.parametrize("status", list(Registration))
@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (1, 1),  # the smallest sensible interval is kept
        (2, 2),
        (MAX_INTERVAL_S, MAX_INTERVAL_S),
        (MAX_INTERVAL_S + 1, MAX_INTERVAL_S),
        (2**31 - 1, MAX_INTERVAL_S),  # largest int32: would mean never again
    ],
)
def test_given_interval_is_clamped(status: Registration, interval: int, expected: int) -> None:
    assert on_boot_reply(reply(status.value, interval), OWN_HEARTBEAT_S).interval_s == expected


@pytest.mark.parametrize("status", list(Registration))
@pytest.mark.parametrize("interval", [-(2**31), -1, 0, 1, 59, 3600, 2**31 - 1])
@pytest.mark.parametrize("own", [-1, 0, 1, 300, 10**9])
def test_interval_is_always_within_bounds(status: Registration, interval: int, own: int) -> None:
    """Whatever the CSMS or our settings say, never a tight loop and never forever."""
    outcome = on_boot_reply(reply(status.value, interval), own)
    assert MIN_INTERVAL_S <= outcome.interval_s <= MAX_INTERVAL_S
    assert isinstance(outcome.interval_s, int)


# -- currentTime ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NOON, NOON_UTC),
        ("2024-05-01t12:00:00z", NOON_UTC),
        ("2024-05-01T14:00:00+02:00", NOON_UTC),  # converted to UTC
        ("2024-05-01T07:30:00-04:30", NOON_UTC),
        ("2024-05-01T12:00:00.250Z", NOON_UTC.replace(microsecond=250_000)),
        ("2024-05-01T12:00:00.123456789Z", NOON_UTC.replace(microsecond=123_456)),
        ("2024-02-29T23:59:59+00:00", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_current_time_is_parsed_into_aware_utc(text: str, expected: datetime) -> None:
    csms_time = on_boot_reply(reply("Accepted", 60, text), OWN_HEARTBEAT_S).csms_time
    assert csms_time == expected
    assert csms_time is not None and csms_time.utcoffset() == UTC.utcoffset(None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-05-01T12:00:00",  # no offset: local time of what zone?
        "2024-05-01",
        "2024-13-01T12:00:00Z",  # month 13
        "2023-02-29T12:00:00Z",  # not a leap year
        "2024-05-01T25:00:00Z",
        "2024-05-01T12:00:00+25:00",
        "1714564800",
        12345,
        None,
    ],
)
@pytest.mark.parametrize("status", list(Registration))
def test_bad_current_time_is_none_and_the_rest_still_applies(
    text: Any, status: Registration
) -> None:
    outcome = on_boot_reply(reply(status.value, 120, text), OWN_HEARTBEAT_S)
    assert outcome == BootOutcome(status, 120, None)


def test_outcome_is_frozen() -> None:
    outcome = on_boot_reply(reply("Accepted", 60), OWN_HEARTBEAT_S)
    with pytest.raises(AttributeError):
        outcome.interval_s = 1  # type: ignore[misc]
