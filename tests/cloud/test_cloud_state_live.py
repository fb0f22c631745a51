"""The state publisher against a real Realtime Database server (firebase-server over HTTP).

What a driver page's Firebase JS SDK listener sees during a session, coalescing while
the server is unreachable, recovery, and how credential and rules errors are reported.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from support.fault_proxy import FaultProxy
from support.firebase_server import NAMESPACE, FirebaseServer, firebase_server, js_listener

from edgepoint.clock import SystemClock
from edgepoint.cloud.firebase import StatePublisher
from edgepoint.cloud.health import Health
from edgepoint.cloud.rtdb import EMULATOR_ENV, Rtdb
from edgepoint.cloud.state import ChargerView, SessionFacts

__all__ = ["firebase_server"]

IDLE = {"id": 1, "status": "Available", "phase": "Available", "session": None, "last_sample": None}


class FakeStation:
    """A status source that the test edits, with the Station's watch()."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {
            "version": "0.1.0",
            "clock_synced": True,
            "connectors": [dict(IDLE)],
            "links": {"csms": {"state": "online"}},
            "outbox": {"depth": 0, "oldest_created_at": None},
            "alarms": [],
        }
        self.reads = 0
        self._watchers: list[Callable[[], None]] = []
        self.started = datetime.now().astimezone()

    async def read(self) -> dict[str, Any]:
        self.reads += 1
        return copy.deepcopy(self.status)

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(notify)
        return lambda: self._watchers.remove(notify)

    def change(self, **connector: Any) -> None:
        self.status["connectors"][0].update(connector)
        for notify in list(self._watchers):
            notify()

    async def facts(self, session_id: str) -> SessionFacts:
        # Read when the session first shows: it started 65 s ago.
        return SessionFacts(
            session_id, "04A1C3D4", datetime.now().astimezone() - timedelta(seconds=65)
        )


@pytest.fixture
async def rig(
    firebase_server: FirebaseServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeStation, StatePublisher, FaultProxy, FirebaseServer]]:
    async with FaultProxy("127.0.0.1", firebase_server.port) as proxy:
        monkeypatch.setenv(EMULATOR_ENV, f"127.0.0.1:{proxy.port}")
        executor = ThreadPoolExecutor(2)
        rtdb = Rtdb(f"https://{NAMESPACE}.firebaseio.com", None, "EP-1", 2.0, executor)
        station = FakeStation()
        clock = SystemClock()
        publisher = StatePublisher(
            rtdb,
            "EP-1",
            station.read,
            station.watch,
            station.facts,
            ChargerView("EP-1", hold_s=1.0),
            clock,
            Health(clock),
            min_interval_s=0.5,
            pubkey="K" * 43 + "=",
        )
        task = asyncio.create_task(publisher.run())
        try:
            yield station, publisher, proxy, firebase_server
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            rtdb.close()
            executor.shutdown(wait=False, cancel_futures=True)


def charging(power_w: float = 22_100.0, energy_wh: int = 500) -> dict[str, Any]:
    return {
        "status": "Charging",
        "phase": "Charging",
        "relay_closed": True,
        "session": {"session_id": "s-1", "id_tag": "****C3D4", "energy_wh": energy_wh},
        "last_sample": {"power_w": power_w, "energy_wh": 100_000 + energy_wh},
    }


async def test_a_session_as_the_driver_page_sees_it(rig: Any) -> None:
    station, _, _, server = rig
    await server.wait_for("standby", lambda v: v and v["status"] == "STANDBY", "chargers/EP-1")
    assert server.get("stations/EP-1/pubkey") == "K" * 43 + "="
    async with js_listener(server, "chargers/EP-1") as page:
        await page.wait_for("STANDBY", lambda vs: vs[-1] and vs[-1]["status"] == "STANDBY")
        station.change(**charging())
        seen = await page.wait_for("CHARGING", lambda vs: vs[-1]["status"] == "CHARGING")
        doc = seen[-1]
        assert (doc["uid"], doc["username"]) == ("****C3D4", "User C3D4")
        assert (doc["power"], doc["energy"], doc["duration"]) == ("22.1 kW", "0.5 kWh", "00:01:05")
        last = datetime.fromisoformat(doc["last_updated"])
        assert last.utcoffset() == timedelta(0)
        assert abs((datetime.now().astimezone() - last).total_seconds()) < 5
        assert doc["session_id"] == "s-1" and doc["power_w"] == 22_100.0
        station.change(status="Available", phase="Available", session=None, relay_closed=False)
        await page.wait_for("FINISHED", lambda vs: vs[-1]["status"] == "FINISHED")
        finished_at = time.monotonic()
        await page.wait_for("STANDBY again", lambda vs: vs[-1]["status"] == "STANDBY")
        # The 1 s hold: FINISHED first, STANDBY a moment later, without any new change.
        assert 0.7 < time.monotonic() - finished_at < 3
        statuses = [v["status"] for v in page.values]
        assert statuses[-3:] == ["CHARGING", "FINISHED", "STANDBY"]
        assert page.values[-1]["uid"] == ""


async def test_telemetry_is_coalesced_to_the_minimum_interval(rig: Any) -> None:
    station, publisher, _, server = rig
    station.change(**charging())
    await server.wait_for("charging", lambda v: v and v["status"] == "CHARGING", "chargers/EP-1")
    before = publisher.stats()
    started = time.monotonic()
    for n in range(40):  # 20 samples a second for 2 s
        station.change(**charging(power_w=7000.0 + n, energy_wh=500 + n))
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    await server.wait_for("the last sample", lambda v: v["power_w"] == 7039.0, "chargers/EP-1")
    after = publisher.stats()
    writes = after.writes - before.writes
    assert after.notifications - before.notifications == 40
    # 0.5 s minimum interval: about elapsed / 0.5 writes (+1 for the last), never 40.
    assert writes <= elapsed / 0.5 + 2, writes
    # The status is read at most every 0.2 s, not once per sample either.
    assert after.evaluations - before.evaluations <= elapsed / 0.2 + 3


async def test_offline_keeps_only_the_latest_and_publishes_it_once(rig: Any) -> None:
    station, publisher, proxy, server = rig
    await server.wait_for("standby", lambda v: v and v["status"] == "STANDBY", "chargers/EP-1")
    await proxy.refuse_new(True)
    await proxy.reset()
    station.change(**charging())  # a state change: tried at once, fails
    await _until(lambda: publisher.health.state == "retrying")
    writes = publisher.stats().writes
    for n in range(30):
        station.change(**charging(energy_wh=600 + n))
        await asyncio.sleep(0.01)
    assert server.get("chargers/EP-1")["status"] == "STANDBY"  # nothing got through
    await proxy.refuse_new(False)
    await server.wait_for("the latest", lambda v: v["energy_wh"] == 629, "chargers/EP-1")
    await _until(lambda: publisher.health.state == "ok")
    await asyncio.sleep(1.0)
    # One write carried the newest state: no backlog replayed after the outage.
    assert publisher.stats().writes - writes == 1
    assert server.get("chargers/EP-1")["status"] == "CHARGING"


@pytest.mark.parametrize(
    ("code", "message"),
    [(401, "the credentials were refused"), (403, "permission denied by the database rules")],
)
async def test_credentials_and_rules_errors_are_faults_without_a_retry_storm(
    rig: Any, code: int, message: str
) -> None:
    station, publisher, proxy, server = rig
    await server.wait_for("standby", lambda v: v and v["status"] == "STANDBY", "chargers/EP-1")
    await proxy.http_error(code)
    await proxy.reset()
    station.change(**charging())
    await _until(lambda: publisher.health.state == "fault")
    assert message in publisher.health.detail
    tries = proxy.stats.accepted
    for n in range(20):
        station.change(**charging(energy_wh=n))
        await asyncio.sleep(0.05)
    assert proxy.stats.accepted == tries  # waits FAULT_RETRY_S (5 min), not a storm


async def test_network_errors_back_off(rig: Any) -> None:
    station, publisher, proxy, server = rig
    await server.wait_for("standby", lambda v: v and v["status"] == "STANDBY", "chargers/EP-1")
    # 502: firebase-admin itself retries 500 and 503 (four times); this it leaves to us.
    await proxy.http_error(502)
    await proxy.reset()
    station.change(**charging())
    await _until(lambda: publisher.health.failures >= 2, within_s=10)
    assert publisher.health.state == "retrying"
    # Back-off doubles from 1 s: within 3 s at most three tries, however many changes.
    tries_before = proxy.stats.accepted
    for n in range(30):
        station.change(**charging(energy_wh=n))
        await asyncio.sleep(0.1)
    assert proxy.stats.accepted - tries_before <= 3
    await proxy.http_error(None)
    await server.wait_for("recovery", lambda v: v["status"] == "CHARGING", "chargers/EP-1", 15)


async def _until(check: Callable[[], bool], within_s: float = 5) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
