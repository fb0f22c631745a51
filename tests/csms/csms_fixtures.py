"""Fixtures for the embedded CSMS tests; import them by name (tests/csms has no conftest)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from csms_support import CP_ID, CP_KEY, TEST_ITERATIONS, FakeClock, RunningCsms

from edgepoint.csms.server import SiteCsms


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock(datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC))


@pytest.fixture(name="running")
async def running_fixture(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunningCsms]:
    csms = SiteCsms(
        tmp_path / "csms.db",
        "127.0.0.1",
        0,
        clock,
        heartbeat_interval=60,
        auth_iterations=TEST_ITERATIONS,
    )
    await csms.register_charge_point(CP_ID, CP_KEY)
    task = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.started.wait(), 5)
    try:
        yield RunningCsms(csms, task, clock)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
