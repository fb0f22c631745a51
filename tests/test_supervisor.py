"""Supervised services restart after a failure and show it; cancellation still stops them."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edgepoint.clock import SystemClock
from edgepoint.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


async def test_a_failing_service_is_restarted_with_backoff_and_reported() -> None:
    waits: list[int] = []

    def backoff(attempt: int) -> float:
        waits.append(attempt)
        return 0.0

    supervisor = Supervisor(SystemClock(), backoff)
    runs = 0
    third_run = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        third_run.set()
        await asyncio.Event().wait()  # healthy from now on

    task = asyncio.create_task(supervisor.keep("flaky", flaky))
    await asyncio.wait_for(third_run.wait(), 5)
    (snapshot,) = supervisor.snapshot()
    assert (snapshot.name, snapshot.state, snapshot.restarts) == ("flaky", "running", 2)
    assert snapshot.last_error == "RuntimeError: boom 2"
    assert waits == [0, 1]  # the back-off grows while it keeps failing
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_service_that_returns_is_started_again() -> None:
    supervisor = Supervisor(SystemClock(), lambda attempt: 0.0)
    runs = 0
    again = asyncio.Event()

    async def quits() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            again.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(supervisor.keep("quits", quits))
    await asyncio.wait_for(again.wait(), 5)
    assert supervisor.snapshot()[0].last_error == "stopped by itself"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_base_exceptions_other_than_cancellation_are_not_swallowed() -> None:
    supervisor = Supervisor(SystemClock(), lambda attempt: 0.0)

    async def exits() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        await supervisor.keep("exits", exits)
