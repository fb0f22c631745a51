"""Smart charging on the charge point, in process: profiles kept in a real SQLite file, the
limit carried to a stand-in ESP32 and to the kiosk, boundaries, sessions, replies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import query

from edgepoint.chargepoint.settings import Settings
from edgepoint.chargepoint.smart_charging import (
    Outlet,
    SmartCharging,
    profile_from_ocpp,
    profile_to_ocpp,
)
from edgepoint.charging.events import ChargingPaused, Event, IdTag, SessionId
from edgepoint.charging.schedule import Kind, Purpose, RateUnit, Supply
from edgepoint.clock import SystemClock
from edgepoint.errors import DeviceError
from edgepoint.ocppj.validation import request_problem, response_problem
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.charging_profiles import ChargingProfileStore

pytestmark = pytest.mark.timeout(20)

RATED = 32.0
ALICE = IdTag("04A1B2C3")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cs_profile(
    pid: int,
    periods: list[tuple[int, float]],
    purpose: str = "TxDefaultProfile",
    kind: str = "Absolute",
    stack: int = 0,
    unit: str = "A",
    **schedule: Any,
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        k: schedule.pop(k) for k in ("transactionId", "recurrencyKind") if k in schedule
    }
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": {
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [{"startPeriod": s, "limit": v} for s, v in periods],
            **schedule,
        },
        **extra,
    }


@dataclass
class Esp32:
    """Acknowledges limits like the firmware, clamping at 25 A; can be made to fail."""

    sent: list[tuple[int, float]] = field(default_factory=list)
    failing: bool = False

    async def set_current_limit(self, channel: int, amps: float) -> float:
        self.sent.append((channel, amps))
        if self.failing:
            raise DeviceError("the ESP32 link is down")
        return min(amps, 25.0)


@dataclass
class Rig:
    smart: SmartCharging
    esp32: Esp32
    published: list[tuple[Event, int]]
    path: Path


async def eventually(what: str, check: Callable[[], bool], within: float = 5) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def rig_at(path: Path, *, run: bool = True) -> AsyncIterator[Rig]:
    store = await ChargePointStore.open(path)
    esp32 = Esp32()
    published: list[tuple[Event, int]] = []
    smart = SmartCharging(
        [Outlet(1, 1, Supply(230.0, 1)), Outlet(2, 3, Supply(230.0, 3))],
        ChargingProfileStore(store.db),
        Settings(number_of_connectors=2),
        SystemClock(),
        esp32,
        lambda event, cid: published.append((event, cid)),
        RATED,
        retry_s=0.1,
    )
    await smart.load()
    task = asyncio.create_task(smart.run()) if run else None
    try:
        yield Rig(smart, esp32, published, path)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()


@pytest.fixture(name="rig")
async def rig_fixture(tmp_path: Path) -> AsyncIterator[Rig]:
    async with rig_at(tmp_path / "edgepoint.db") as rig:
        yield rig


def view(rig: Rig, cid: int = 1) -> Any:
    return rig.smart.snapshot()[cid - 1]


# -- csChargingProfiles in and out ----------------------------------------------------------


def test_a_profile_reads_and_writes_back_as_ocpp() -> None:
    data = cs_profile(
        3,
        [(0, 16.0), (3600, 6.5)],
        kind="Recurring",
        stack=2,
        recurrencyKind="Weekly",
        startSchedule="2025-03-10T22:00:00.000Z",
        duration=7200,
        minChargingRate=6.0,
    )
    data |= {"validFrom": "2025-03-01T00:00:00.000Z", "validTo": "2026-03-01T00:00:00.000Z"}
    profile = profile_from_ocpp(data, datetime.now(UTC))
    assert (profile.kind, profile.recurrency, profile.stack_level) == (Kind.RECURRING, "Weekly", 2)
    assert profile_to_ocpp(profile) == data
    assert (
        request_problem("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": data})
        is None
    )


def test_an_absolute_profile_without_a_start_starts_when_received() -> None:
    received = datetime(2025, 3, 10, 12, tzinfo=UTC)
    profile = profile_from_ocpp(cs_profile(1, [(0, 16.0)]), received)
    assert profile.schedule.start == received
    relative = profile_from_ocpp(cs_profile(1, [(0, 16.0)], kind="Relative"), received)
    assert relative.schedule.start is None


def test_a_remote_starts_profile_must_be_a_tx_profile_that_names_no_transaction(
    rig: Rig,
) -> None:
    problem = rig.smart.remote_profile_problem
    assert problem(cs_profile(1, [(0, 16.0)], purpose="TxProfile", kind="Relative")) is None
    assert "TxProfile" in (problem(cs_profile(1, [(0, 16.0)])) or "")
    named = cs_profile(1, [(0, 16.0)], purpose="TxProfile", transactionId=5)
    assert "transaction" in (problem(named) or "")
    assert "stackLevel" in (
        problem(cs_profile(1, [(0, 16.0)], purpose="TxProfile", stack=99)) or ""
    )


# -- the limit, to the ESP32 and the kiosk ---------------------------------------------------


async def test_the_rating_goes_out_first_then_each_new_limit_in_amps(rig: Rig) -> None:
    await eventually(
        "the rating on both", lambda: sorted(rig.esp32.sent) == [(1, RATED), (3, RATED)]
    )
    # The firmware clamps at 25 A: its ack is what shows.
    assert view(rig).acknowledged_a == 25.0 and view(rig).limit_a is None
    assert await rig.smart.set_profile(0, cs_profile(1, [(0, 3680.0)], unit="W")) == "Accepted"
    await eventually("16 A on 1", lambda: (1, 16.0) in rig.esp32.sent)
    # Three phases wired: 3680 W is 16 A over three phases, 5.33 A each: less than the
    # pilot can offer (6 A), so connector 2 is paused at 0 A rather than shown charging.
    await eventually("0 A on 3", lambda: (3, 0.0) in rig.esp32.sent)
    assert (view(rig).limit_a, view(rig).commanded_a, view(rig).profile_ids) == (16.0, 16.0, (1,))
    assert view(rig, 2).limit_a == pytest.approx(5.333, abs=1e-3) and view(rig, 2).paused
    assert rig.published == [(ChargingPaused(True), 2)]


async def test_a_zero_limit_pauses_and_the_next_period_resumes(rig: Rig) -> None:
    start = datetime.now(UTC)
    profile = cs_profile(1, [(0, 0.0), (1, 10.0)], startSchedule=iso(start))
    assert await rig.smart.set_profile(1, profile) == "Accepted"
    await eventually("paused", lambda: (ChargingPaused(True), 1) in rig.published)
    assert view(rig).paused and (1, 0.0) in rig.esp32.sent
    # The boundary one second in: re-evaluated without anyone asking.
    await eventually("resumed", lambda: (ChargingPaused(False), 1) in rig.published, within=3)
    assert rig.esp32.sent[-1] == (1, 10.0) and not view(rig).paused
    assert rig.published == [(ChargingPaused(True), 1), (ChargingPaused(False), 1)]


async def test_a_failed_command_is_retried_until_the_esp32_takes_it(rig: Rig) -> None:
    await eventually("the rating", lambda: len(rig.esp32.sent) == 2)
    rig.esp32.failing = True
    await rig.smart.set_profile(0, cs_profile(1, [(0, 12.0)]))
    await eventually("refused", lambda: view(rig).error == "the ESP32 link is down")
    assert view(rig).acknowledged_a is None and view(rig).commanded_a == 12.0
    tries = len(rig.esp32.sent)
    await eventually("tried again", lambda: len(rig.esp32.sent) >= tries + 2)
    rig.esp32.failing = False
    await eventually("taken", lambda: view(rig).acknowledged_a == 12.0)
    assert view(rig).error is None


# -- sessions ------------------------------------------------------------------------------------


async def test_a_remote_starts_tx_profile_lives_as_long_as_its_session(rig: Rig) -> None:
    await rig.smart.set_profile(0, cs_profile(1, [(0, 20.0)]))
    tx = cs_profile(7, [(0, 8.0)], purpose="TxProfile", kind="Relative")
    rig.smart.session_began(1, SessionId("s1"), ALICE, datetime.now(UTC), tx)
    await eventually("8 A", lambda: view(rig).commanded_a == 8.0)
    assert view(rig).profile_ids == (7,)  # the session's own profile replaces the default
    # The CSMS confirms the transaction: a TxProfile naming it now fits the session.
    rig.smart.transaction_known(SessionId("s1"), 4242)
    named = cs_profile(
        8, [(0, 6.0)], purpose="TxProfile", kind="Relative", stack=1, transactionId=4242
    )
    assert await rig.smart.set_profile(1, named) == "Accepted"
    wrong = cs_profile(9, [(0, 6.0)], purpose="TxProfile", kind="Relative", transactionId=1)
    assert await rig.smart.set_profile(1, wrong) == "Rejected"
    await eventually("6 A", lambda: view(rig).commanded_a == 6.0)
    rig.smart.session_ended(1, SessionId("s1"))
    await eventually("20 A again", lambda: view(rig).commanded_a == 20.0)
    assert [i.profile.id for i in rig.smart.installed] == [1]
    # Neither TxProfile ever reached the database.
    assert query(rig.path, "SELECT profile_id FROM charging_profiles") == [(1,)]


async def test_the_charge_point_cap_is_shared_by_sessions(rig: Rig) -> None:
    await rig.smart.set_profile(0, cs_profile(1, [(0, 20.0)], purpose="ChargePointMaxProfile"))
    await eventually("20 A", lambda: view(rig).commanded_a == 20.0)
    rig.smart.session_began(1, SessionId("s1"), ALICE, datetime.now(UTC), None)
    rig.smart.session_began(2, SessionId("s2"), ALICE, datetime.now(UTC), None)
    await eventually(
        "10 A each", lambda: view(rig, 1).commanded_a == view(rig, 2).commanded_a == 10.0
    )
    rig.smart.session_ended(2, SessionId("s2"))
    await eventually("20 A", lambda: view(rig).commanded_a == 20.0)


# -- durability -----------------------------------------------------------------------------


async def test_profiles_are_stored_and_come_back_and_a_broken_row_is_dropped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edgepoint.db"
    async with rig_at(path, run=False) as rig:
        assert await rig.smart.set_profile(0, cs_profile(1, [(0, 16.0)])) == "Accepted"
        assert await rig.smart.set_profile(2, cs_profile(2, [(0, 10.0)], stack=1)) == "Accepted"
        # The same id replaces, in the database too.
        assert await rig.smart.set_profile(1, cs_profile(2, [(0, 12.0)], stack=1)) == "Accepted"
        assert await rig.smart.clear_profiles(profile_id=77) == 0
    rows = query(path, "SELECT profile_id, connector_id FROM charging_profiles ORDER BY 1")
    assert rows == [(1, 0), (2, 1)]
    store = await ChargePointStore.open(path)
    async with store.db.write() as db:
        await db.execute(
            "INSERT INTO charging_profiles VALUES (3, 0, 'not json', '2025-01-01T00:00:00Z')"
        )
    await store.close()
    async with rig_at(path, run=False) as rig:
        restored = [(i.connector_id, i.profile.id, i.profile.purpose) for i in rig.smart.installed]
        assert restored == [(0, 1, Purpose.TX_DEFAULT), (1, 2, Purpose.TX_DEFAULT)]
        assert await rig.smart.clear_profiles(connector_id=1) == 1
    assert query(path, "SELECT profile_id FROM charging_profiles") == [(1,)]


# -- GetCompositeSchedule -------------------------------------------------------------------


async def test_composite_schedule_replies_are_schema_valid(rig: Rig) -> None:
    await rig.smart.set_profile(0, cs_profile(1, [(0, 16.0), (600, 2.3)]))
    for cid, unit in ((1, RateUnit.AMPS), (2, RateUnit.WATTS), (0, None)):
        reply = rig.smart.composite_schedule(cid, 3600, unit)
        assert reply["status"] == "Accepted"
        assert response_problem("GetCompositeSchedule", reply) is None, reply
    assert rig.smart.composite_schedule(3, 60, None) == {"status": "Rejected"}
    assert rig.smart.composite_schedule(1, -1, None) == {"status": "Rejected"}
    watts = rig.smart.composite_schedule(2, 3600, RateUnit.WATTS)["chargingSchedule"]
    first, second = watts["chargingSchedulePeriod"]
    assert first == {"startPeriod": 0, "limit": 11040.0, "numberPhases": 3}
    assert (second["limit"], second["numberPhases"]) == (1587.0, 3)  # 2.3 A x 230 V x 3
    # Received and asked for in whole seconds: 600 s on, or 599 if a second ticked between.
    assert second["startPeriod"] in (599, 600)
