"""Smoke test of scripts/bench_csms.py: its load generator against a real SiteCsms in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgepoint.clock import SystemClock
from edgepoint.csms.server import SiteCsms
from edgepoint.ocppj.validation import request_problem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_csms

CHARGERS = bench_csms.charger_ids(5)


@pytest.fixture(name="csms")
async def csms_fixture(tmp_path: Path) -> AsyncIterator[SiteCsms]:
    # Cheap hashing keeps the test fast; the bench itself registers with the default.
    csms = SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, SystemClock(), auth_iterations=1_000)
    for cp_id in CHARGERS:
        await csms.register_charge_point(cp_id, bench_csms.password_for(cp_id))
    task = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.wait_started(), 5)
    try:
        yield csms
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_frames_are_valid_ocpp() -> None:
    frames = bench_csms.Frames("BENCH-0001", "t-")
    for action in (*bench_csms.ACTIONS, "BootNotification", "StatusNotification"):
        uid, text = frames.build(action)
        kind, sent_uid, sent_action, payload = json.loads(text)
        assert (kind, sent_uid, sent_action) == (2, uid, action)
        assert request_problem(action, payload) is None, text
    assert len({frames.build("Heartbeat")[0] for _ in range(100)}) == 100


@pytest.mark.timeout(10)
async def test_load_generator_counts_calls_and_latencies(csms: SiteCsms) -> None:
    fleet = bench_csms.Fleet(
        f"ws://127.0.0.1:{csms.port}/ocpp",
        [(cp_id, bench_csms.password_for(cp_id)) for cp_id in CHARGERS],
        tag="t",
        # Each charger from its own loopback address, as the bench runs them.
        sources=[bench_csms.loopback_source(n) for n in range(len(CHARGERS))],
    )
    try:
        online = bench_csms.online_summary(
            await fleet.connect(time.monotonic(), 5, "BootNotification")
        )
        assert online["online"] == 5 and online["errors"] == {}
        assert csms.connected_ids() == CHARGERS

        rate = 50.0  # calls/s in total, 10 per charger
        at = time.monotonic() + 0.05
        fleet.start_load(at, rate / 5, 5, reply_timeout=5)
        await asyncio.sleep(2.05)
        window_to = time.monotonic()
        answer = await fleet.stop_load(at, window_to)
        summary = bench_csms.load_summary([answer], window_to - at, rate, 5)

        assert summary["errors"] == {}, summary["errors"]
        assert 70 <= summary["completed"] <= 105, summary
        for action in bench_csms.ACTIONS:
            numbers = summary["actions"][action]
            assert numbers["completed"] > 0, action
            rtt = numbers["rtt_ms"]
            assert 0 < rtt["p50"] <= rtt["p99"] <= rtt["max"] < 5_000, (action, rtt)
        # MeterValues is half the mix.
        assert summary["actions"]["MeterValues"]["completed"] > summary["completed"] / 3
        store = csms.store
        assert store is not None
        assert await store.meter_values.list(CHARGERS[0])

        storm = bench_csms.online_summary(await fleet.storm(time.monotonic(), 5))
        assert storm["online"] == 5 and storm["all_online_s"] is not None
    finally:
        await fleet.close()
