"""What the outbox does after each try: the delivery rules as plain code, no I/O.

OCPP 1.6 §4.10 (transaction-related messages): a CallError is retried
TransactionMessageAttempts times, waiting TransactionMessageRetryInterval times the number of
tries so far. Beyond that the spec lets a charge point drop the message; we do not drop
billing: a StartTransaction or StopTransaction that exhausted its attempts is parked (an
alarm in `status`, retried later from its place in the queue) so later sessions can
move on, and MeterValues or StatusNotification go to the dead letters with the reason.
A timeout says nothing about the message (it may have arrived), so it never counts as a
refusal: the same message, with the same message id, is resent after a back-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edgepoint.backoff import exponential
from edgepoint.storage.chargepoint import BILLING_ACTIONS

# Until the CSMS confirms or refuses, a resend after a timeout waits at most this long.
MAX_TIMEOUT_BACKOFF_S = 60.0
# A parked Start/Stop is tried again this often (and at every new connection).
PARKED_RETRY_S = 900.0


class Failure(StrEnum):
    """How a try failed."""

    REFUSED = "refused"  # CALLERROR
    BAD_REPLY = "bad reply"  # a CALLRESULT that breaks the schema
    TIMEOUT = "timeout"  # no answer within the response timeout
    INVALID = "invalid"  # our stored message breaks the schema: it can never be sent


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The two configuration keys that govern retries of refused messages."""

    attempts: int  # TransactionMessageAttempts
    interval_s: float  # TransactionMessageRetryInterval


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the same message again (same message id) after `after_s`."""

    after_s: float


@dataclass(frozen=True, slots=True)
class Park:
    """Billing that keeps failing: set aside with an alarm, retried later, never dropped."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Move to the dead letters (`quarantined` for a message that can never be sent)."""

    reason: str
    kind: str = "dead"


Decision = Retry | Park | GiveUp


def after_failure(
    action: str,
    failure: Failure,
    refusals: int,
    timeouts: int,
    policy: RetryPolicy,
    detail: str,
) -> Decision:
    """Decide after a failed try; `refusals` and `timeouts` include this one."""
    if failure is Failure.INVALID:
        return GiveUp(f"not a valid OCPP 1.6 {action}, never sent: {detail}", "quarantined")
    if failure is Failure.TIMEOUT:
        return Retry(exponential(timeouts - 1, base_s=1.0, cap_s=MAX_TIMEOUT_BACKOFF_S))
    reason = f"{failure} {refusals} time(s): {detail}"
    if refusals < max(1, policy.attempts):
        return Retry(policy.interval_s * refusals)
    if action in BILLING_ACTIONS:
        return Park(reason)
    return GiveUp(reason)
