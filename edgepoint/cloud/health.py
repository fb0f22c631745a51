"""How each cloud output is doing, for `status`, and the retry timing that goes with it."""

from __future__ import annotations

from dataclasses import dataclass

from edgepoint.backoff import exponential
from edgepoint.clock import Clock, iso_utc
from edgepoint.cloud.errors import CloudFault

# A fault (credentials, rules) is retried this rarely: an operator fixing the rules
# sees it recover within minutes, and a fleet of misconfigured Pis stays quiet.
FAULT_RETRY_S = 300.0


def network_backoff(attempt: int) -> float:
    """Seconds before retry `attempt` after a network failure: 1 s doubling to 2 min, jittered."""
    return exponential(attempt, base_s=1.0, cap_s=120.0)


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """One output as `status` shows it."""

    state: str  # starting | ok | waiting | retrying | fault
    detail: str  # the last error, or what it waits for
    last_ok_at: str | None
    failures: int  # consecutive failed attempts


class Health:
    """The state of one output; the service that owns it updates it as it goes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.state = "starting"
        self.detail = ""
        self.last_ok_at: str | None = None
        self.failures = 0

    def ok(self) -> None:
        self.state, self.detail, self.failures = "ok", "", 0
        self.last_ok_at = iso_utc(self._clock.utc_now())

    def waiting(self, why: str) -> None:
        self.state, self.detail = "waiting", why

    def failed(self, err: Exception) -> float:
        """Record a failure; return how long to wait before the next try."""
        self.failures += 1
        self.detail = str(err)[:500]
        if isinstance(err, CloudFault):
            self.state = "fault"
            return FAULT_RETRY_S
        self.state = "retrying"
        return network_backoff(self.failures - 1)

    @property
    def fault(self) -> str | None:
        return self.detail if self.state == "fault" else None

    def snapshot(self) -> HealthSnapshot:
        return HealthSnapshot(self.state, self.detail, self.last_ok_at, self.failures)
