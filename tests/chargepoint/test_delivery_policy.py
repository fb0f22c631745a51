"""Outbox delivery rules: every action class x failure kind x attempt count."""

from __future__ import annotations

import random

import pytest

from edgepoint.chargepoint.delivery import (
    MAX_TIMEOUT_BACKOFF_S,
    Decision,
    Failure,
    GiveUp,
    Park,
    Retry,
    RetryPolicy,
    after_failure,
)

BILLING = ["StartTransaction", "StopTransaction"]
DROPPABLE = ["MeterValues", "StatusNotification"]
ACTIONS = BILLING + DROPPABLE
REFUSALS = [Failure.REFUSED, Failure.BAD_REPLY]
POLICY = RetryPolicy(attempts=3, interval_s=60.0)
DETAIL = "CallError InternalError: database down"


def decide(
    action: str,
    failure: Failure,
    refusals: int = 1,
    timeouts: int = 0,
    policy: RetryPolicy = POLICY,
) -> Decision:
    return after_failure(action, failure, refusals, timeouts, policy, DETAIL)


def timeout_ceiling(timeouts: int) -> float:
    """The un-jittered wait after the n-th timeout in a row: 1, 2, 4, ... capped."""
    return min(MAX_TIMEOUT_BACKOFF_S, 2.0 ** min(timeouts - 1, 30))


# -- refusals (CALLERROR) and bad replies ---------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("failure", REFUSALS)
@pytest.mark.parametrize("attempts", [2, 3, 5, 100])
def test_refusals_below_the_limit_retry_after_interval_times_refusals(
    action: str, failure: Failure, attempts: int
) -> None:
    policy = RetryPolicy(attempts=attempts, interval_s=7.5)
    for refusals in range(1, attempts):
        decision = decide(action, failure, refusals, timeouts=0, policy=policy)
        assert decision == Retry(7.5 * refusals), refusals


@pytest.mark.parametrize("action", BILLING)
@pytest.mark.parametrize("failure", REFUSALS)
@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 100])
@pytest.mark.parametrize("beyond", [0, 1, 50])
def test_billing_at_or_beyond_the_limit_is_parked_never_dropped(
    action: str, failure: Failure, attempts: int, beyond: int
) -> None:
    refusals = attempts + beyond  # beyond: a parked message retried later and refused again
    decision = decide(action, failure, refusals, policy=RetryPolicy(attempts, 60.0))
    assert isinstance(decision, Park)
    assert failure.value in decision.reason
    assert f"{refusals} time(s)" in decision.reason
    assert DETAIL in decision.reason


@pytest.mark.parametrize("action", DROPPABLE)
@pytest.mark.parametrize("failure", REFUSALS)
@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 100])
@pytest.mark.parametrize("beyond", [0, 1, 50])
def test_non_billing_at_or_beyond_the_limit_goes_to_the_dead_letters(
    action: str, failure: Failure, attempts: int, beyond: int
) -> None:
    refusals = attempts + beyond
    decision = decide(action, failure, refusals, policy=RetryPolicy(attempts, 60.0))
    assert isinstance(decision, GiveUp)
    assert decision.kind == "dead"
    assert failure.value in decision.reason and DETAIL in decision.reason


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("attempts", [0, -1, -100])
def test_a_nonsense_attempt_count_still_allows_one_try(action: str, attempts: int) -> None:
    decision = decide(action, Failure.REFUSED, 1, policy=RetryPolicy(attempts, 60.0))
    assert isinstance(decision, Park if action in BILLING else GiveUp)


@pytest.mark.parametrize("action", ACTIONS)
def test_the_whole_refusal_sequence_with_the_default_policy(action: str) -> None:
    """TransactionMessageAttempts=3, RetryInterval=60: wait 60, then 120, then give up."""
    expected_last: type[Park] | type[GiveUp] = Park if action in BILLING else GiveUp
    decisions = [decide(action, Failure.REFUSED, n) for n in (1, 2, 3)]
    assert decisions[:2] == [Retry(60.0), Retry(120.0)]
    assert isinstance(decisions[2], expected_last)


# -- timeouts: the message may have arrived, so they never count as refusals -------------


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("refusals", [0, 1, 2, 3, 10])
@pytest.mark.parametrize("timeouts", [1, 2, 3, 6, 7, 20, 10_000])
def test_timeout_always_retries_within_the_bounded_back_off(
    action: str, refusals: int, timeouts: int
) -> None:
    # `refusals` at or past TransactionMessageAttempts must not park or drop on a timeout.
    ceiling = timeout_ceiling(timeouts)
    for _ in range(50):
        decision = decide(action, Failure.TIMEOUT, refusals, timeouts)
        assert isinstance(decision, Retry)
        assert ceiling / 2 <= decision.after_s <= ceiling <= MAX_TIMEOUT_BACKOFF_S


def test_timeout_back_off_grows_exponentially_then_caps() -> None:
    random.seed(7)
    # The lower bound (half the ceiling, from the half-range jitter) doubles each time.
    floors = [timeout_ceiling(n) / 2 for n in range(1, 9)]
    assert floors == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for n in range(1, 9):
        waits = [decide("StopTransaction", Failure.TIMEOUT, 0, n) for _ in range(200)]
        afters = [w.after_s for w in waits if isinstance(w, Retry)]
        assert len(afters) == 200
        assert min(afters) >= floors[n - 1] and max(afters) <= 2 * floors[n - 1]
        # Jittered: a fleet that timed out together does not resend in lockstep.
        assert len(set(afters)) > 1


@pytest.mark.parametrize("action", ACTIONS)
def test_timeouts_between_refusals_do_not_bring_parking_closer(action: str) -> None:
    """Drive the counters the way the outbox does: only refusals and bad replies count."""
    refusals = timeouts = 0
    script = [Failure.REFUSED, *[Failure.TIMEOUT] * 12, Failure.BAD_REPLY, Failure.TIMEOUT]
    for failure in script:
        refusals += failure in REFUSALS
        timeouts += failure is Failure.TIMEOUT
        assert isinstance(decide(action, failure, refusals, timeouts), Retry), failure
    refusals += 1
    final = decide(action, Failure.REFUSED, refusals, timeouts)
    assert isinstance(final, Park if action in BILLING else GiveUp)


# -- a stored message that breaks the schema can never be sent ---------------------------


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(("refusals", "timeouts"), [(0, 0), (1, 0), (0, 5), (2, 3), (99, 99)])
def test_invalid_is_quarantined_for_every_action_at_once(
    action: str, refusals: int, timeouts: int
) -> None:
    decision = decide(action, Failure.INVALID, refusals, timeouts)
    assert isinstance(decision, GiveUp)
    assert decision.kind == "quarantined"
    assert action in decision.reason and DETAIL in decision.reason


# -- the full matrix at a glance -----------------------------------------------------------


def expected(action: str, failure: Failure, refusals: int, attempts: int) -> type:
    if failure is Failure.INVALID:
        return GiveUp
    if failure is Failure.TIMEOUT or refusals < attempts:
        return Retry
    return Park if action in BILLING else GiveUp


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("failure", list(Failure))
def test_every_action_failure_and_count(action: str, failure: Failure) -> None:
    policy = RetryPolicy(attempts=4, interval_s=10.0)
    for refusals in range(0, 8):
        decision = decide(action, failure, refusals, timeouts=refusals + 1, policy=policy)
        assert type(decision) is expected(action, failure, refusals, 4), refusals
        if isinstance(decision, GiveUp):
            assert decision.kind == ("quarantined" if failure is Failure.INVALID else "dead")
        if isinstance(decision, Retry) and failure in REFUSALS:
            assert decision.after_s == 10.0 * refusals
