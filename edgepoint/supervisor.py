"""Supervised services: a service that fails is logged, shown in `status` and restarted.

DESIGN invariant 9: only the kiosk loop may stop the daemon. The CSMS link, the outbox
sender, the embedded CSMS and the control API run under `Supervisor.keep`, which turns
any exception (or an unexpected return) into a restart after a jittered back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgepoint.backoff import exponential
from edgepoint.clock import Clock
from edgepoint.logthrottle import ThrottledLog

log = logging.getLogger(__name__)

# A service that ran this long before failing starts its back-off from the beginning.
HEALTHY_RUN_S = 60.0


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """One supervised service as `status` shows it."""

    name: str
    state: str  # running | restarting
    restarts: int
    last_error: str


@dataclass(slots=True)
class _Service:
    state: str = "running"
    restarts: int = 0
    last_error: str = ""


class Supervisor:
    """Runs services forever, each restarted with back-off when it fails."""

    def __init__(
        self, clock: Clock, backoff: Callable[[int], float] = lambda n: exponential(n, cap_s=30.0)
    ) -> None:
        self._clock = clock
        self._backoff = backoff
        self._services: dict[str, _Service] = {}
        self._throttled = ThrottledLog(log)

    def snapshot(self) -> tuple[ServiceSnapshot, ...]:
        return tuple(
            ServiceSnapshot(name, s.state, s.restarts, s.last_error)
            for name, s in sorted(self._services.items())
        )

    async def keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` until cancelled, restarting it whenever it fails or returns."""
        service = self._services.setdefault(name, _Service())
        attempt = 0
        while True:
            service.state = "running"
            started = self._clock.monotonic()
            try:
                await run()
                service.last_error = "stopped by itself"
            except asyncio.CancelledError:
                raise
            except Exception as err:
                service.last_error = f"{type(err).__name__}: {err}"[:300]
                self._throttled.log(
                    logging.ERROR,
                    f"{name} {type(err).__name__}",
                    "service %s failed (restarting): %s",
                    name,
                    service.last_error,
                    exc_info=True,
                )
            if self._clock.monotonic() - started > HEALTHY_RUN_S:
                attempt = 0
            service.restarts += 1
            service.state = "restarting"
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
