"""Load management: the sharing arithmetic, and profiles sent to scripted chargers as they go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import RunningCsms
from scripted_charger import Error, ScriptedCharger, scripted_charger, wait_until

from edgepoint.csms.load import Demand, LoadBalancer, share_power, tx_profile
from edgepoint.csms.site_db import LoadLimitRepository
from edgepoint.csms.site_records import LimitState
from edgepoint.ocppj.validation import request_problem

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CP2, KEY2 = "CP-2", "another-key-of-16+"


def demand(tx: int, minute: int) -> Demand:
    return Demand(tx, T0 + timedelta(minutes=minute))


# -- the arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "demands", "minimum", "expected"),
    [
        (11000, [], 1380, {}),
        (11000, [demand(1, 0)], 1380, {1: 11000}),
        (11000, [demand(1, 0), demand(2, 1)], 1380, {1: 5500, 2: 5500}),
        # Rounded down: the shares never add up to more than the limit.
        (10000, [demand(1, 0), demand(2, 1), demand(3, 2)], 1380, {1: 3333, 2: 3333, 3: 3333}),
        # Only two can have the minimum: the third (latest start) is paused.
        (3000, [demand(1, 0), demand(2, 1), demand(3, 2)], 1380, {1: 1500, 2: 1500, 3: 0}),
        # Order is by start time, not by transaction id (offline replays come late).
        (3000, [demand(1, 5), demand(2, 1), demand(3, 2)], 1380, {1: 0, 2: 1500, 3: 1500}),
        # Same start: the lower transaction id first.
        (2000, [demand(9, 0), demand(4, 0)], 1380, {4: 2000, 9: 0}),
        # Not even one minimum: everyone paused.
        (1000, [demand(1, 0), demand(2, 1)], 1380, {1: 0, 2: 0}),
        # No minimum: equal shares however small.
        (1000, [demand(1, 0), demand(2, 1), demand(3, 2)], 0, {1: 333, 2: 333, 3: 333}),
        (0, [demand(1, 0)], 0, {1: 0}),
        # Limit off: nobody limited.
        (None, [demand(1, 0), demand(2, 1)], 1380, {1: None, 2: None}),
    ],
)
def test_share_power(
    limit: int | None, demands: list[Demand], minimum: int, expected: dict[int, int | None]
) -> None:
    assert share_power(limit, demands, minimum) == expected


def test_shares_as_sessions_come_and_go() -> None:
    """A day at a 7.4 kW site with a 2 kW minimum."""
    running: list[Demand] = []

    def shares() -> dict[int, int | None]:
        result = share_power(7400, running, 2000)
        served = [w for w in result.values() if w]
        assert sum(w for w in result.values() if w) <= 7400
        assert all(w >= 2000 for w in served)
        return result

    running.append(demand(1, 0))
    assert shares() == {1: 7400}
    running.append(demand(2, 10))
    assert shares() == {1: 3700, 2: 3700}
    running.append(demand(3, 20))
    assert shares() == {1: 2466, 2: 2466, 3: 2466}
    running.append(demand(4, 30))  # 4 x 2000 > 7400: the newest waits
    assert shares() == {1: 2466, 2: 2466, 3: 2466, 4: 0}
    running.remove(demand(2, 10))  # one leaves: the waiting one gets a share
    assert shares() == {1: 2466, 3: 2466, 4: 2466}
    running.remove(demand(1, 0))
    running.remove(demand(3, 20))
    assert shares() == {4: 7400}
    running.clear()
    assert shares() == {}


def test_share_power_refuses_negative_limits() -> None:
    with pytest.raises(ValueError):
        share_power(-1, [demand(1, 0)], 0)
    with pytest.raises(ValueError):
        LoadBalancer(None, None, site_limit_w=-5)  # type: ignore[arg-type]  # fails first


def test_tx_profile_is_a_valid_set_charging_profile() -> None:
    profile = tx_profile(42, 3680, 0)
    assert (
        request_problem("SetChargingProfile", {"connectorId": 2, "csChargingProfiles": profile})
        is None
    )
    assert profile["chargingProfilePurpose"] == "TxProfile"
    assert profile["transactionId"] == 42
    assert profile["chargingSchedule"] == {
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 3680}],
    }


# -- the service against scripted chargers -----------------------------------------------


@contextlib.asynccontextmanager
async def balancing(
    running: RunningCsms, limit: int | None, *, poll: float = 0.05, minimum: int = 1380
) -> AsyncIterator[LoadBalancer]:
    balancer = LoadBalancer(
        running.csms,
        running.clock,
        site_limit_w=limit,
        min_per_connector_w=minimum,
        poll_interval_s=poll,
        call_timeout_s=2,
    )
    task = asyncio.create_task(balancer.run())
    try:
        yield balancer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def limits_for(charger: ScriptedCharger) -> list[tuple[int, int, float]]:
    """(connector, transaction, W) of every SetChargingProfile the charger received."""
    return [
        (
            call["connectorId"],
            call["csChargingProfiles"]["transactionId"],
            call["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
        )
        for call in charger.calls("SetChargingProfile")
    ]


def at(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


async def test_profiles_follow_sessions_on_two_chargers(running: RunningCsms) -> None:
    await running.csms.register_charge_point(CP2, KEY2)
    async with (
        balancing(running, 11000) as balancer,
        scripted_charger(running.port) as one,
        scripted_charger(running.port, CP2, KEY2) as two,
    ):
        a = await one.start_transaction(1, "TAG-A", 100, at(1))
        await one.wait_calls("SetChargingProfile", 1)
        assert limits_for(one) == [(1, a, 11000)]

        b = await two.start_transaction(2, "TAG-B", 500, at(2))
        await one.wait_calls("SetChargingProfile", 2)
        await two.wait_calls("SetChargingProfile", 1)
        assert limits_for(one) == [(1, a, 11000), (1, a, 5500)]
        assert limits_for(two) == [(2, b, 5500)]

        await one.stop_transaction(a, 900, at(30))
        await two.wait_calls("SetChargingProfile", 2)
        assert limits_for(two) == [(2, b, 5500), (2, b, 11000)]
        await wait_until(lambda: [lim.transaction_id for lim in balancer.limits()] == [b])
        [left] = balancer.limits()
        await wait_until(lambda: balancer.limits()[0].state is LimitState.ACCEPTED)
        assert balancer.limits()[0].applied_w == 11000 and left.connector_id == 2

        await two.stop_transaction(b, 1500, at(40))
        await wait_until(lambda: balancer.limits() == [])
        rounds = balancer.rounds
        await wait_until(lambda: balancer.rounds > rounds + 2)
        # Nothing more was sent for stopped transactions.
        assert len(one.calls("SetChargingProfile")) == 2
        assert len(two.calls("SetChargingProfile")) == 2
    assert one.problems() == [] and two.problems() == []
    store = running.csms.store
    assert store is not None
    assert await LoadLimitRepository(store.db).list() == []


async def test_paused_connector_gets_zero_then_a_share(running: RunningCsms) -> None:
    async with (
        balancing(running, 3000) as balancer,
        scripted_charger(running.port) as charger,
    ):
        a = await charger.start_transaction(1, "TAG-A", 0, at(1))
        b = await charger.start_transaction(2, "TAG-B", 0, at(2))
        c = await charger.start_transaction(3, "TAG-C", 0, at(3))
        balancer.poke()

        def final() -> dict[int, float]:
            return {tx: w for _, tx, w in limits_for(charger)}

        await wait_until(lambda: final() == {a: 1500, b: 1500, c: 0})
        await charger.stop_transaction(a, 10, at(20))
        await wait_until(lambda: final() == {a: 1500, b: 1500, c: 1500})
        # c is on connector 3 and was paused with a 0 W profile of its own transaction.
        assert (3, c, 0) in limits_for(charger)


async def test_offline_charger_gets_its_limit_on_reconnect(running: RunningCsms) -> None:
    await running.csms.register_charge_point(CP2, KEY2)
    async with balancing(running, 8000) as balancer, scripted_charger(running.port) as one:
        async with scripted_charger(running.port, CP2, KEY2) as two:
            b = await two.start_transaction(1, "TAG-B", 0, at(1))
            await two.wait_calls("SetChargingProfile", 1)
            assert limits_for(two) == [(1, b, 8000)]
        await wait_until(lambda: CP2 not in running.csms.connected_ids())

        a = await one.start_transaction(1, "TAG-A", 0, at(5))
        await one.wait_calls("SetChargingProfile", 1)
        assert limits_for(one) == [(1, a, 4000)]

        def state_of(tx: int) -> LimitState | None:
            return next((lim.state for lim in balancer.limits() if lim.transaction_id == tx), None)

        await wait_until(lambda: state_of(b) is LimitState.OFFLINE)
        # Recorded in csms.db too.
        store = running.csms.store
        assert store is not None
        saved = {lim.transaction_id: lim for lim in await LoadLimitRepository(store.db).list()}
        assert saved[b].state is LimitState.OFFLINE
        assert (saved[b].limit_w, saved[b].applied_w) == (4000, 8000)

        async with scripted_charger(running.port, CP2, KEY2) as again:
            await again.wait_calls("SetChargingProfile", 1)
            assert limits_for(again) == [(1, b, 4000)]
            await wait_until(lambda: state_of(b) is LimitState.ACCEPTED)
        assert again.problems() == []


async def test_refusals_and_call_errors_are_recorded(running: RunningCsms) -> None:
    await running.csms.register_charge_point(CP2, KEY2)
    async with (
        balancing(running, 6000) as balancer,
        scripted_charger(running.port) as one,
        scripted_charger(running.port, CP2, KEY2) as two,
    ):
        one.responders["SetChargingProfile"] = lambda _p: {"status": "NotSupported"}
        two.responders["SetChargingProfile"] = lambda _p: Error("InternalError", "boom")
        a = await one.start_transaction(1, "TAG-A", 0, at(1))
        b = await two.start_transaction(1, "TAG-B", 0, at(2))

        def detail(tx: int) -> tuple[LimitState, str | None] | None:
            for lim in balancer.limits():
                if lim.transaction_id == tx:
                    return lim.state, lim.detail
            return None

        await wait_until(
            lambda: (
                detail(a) == (LimitState.REFUSED, "SetChargingProfile: NotSupported")
                and detail(b) == (LimitState.FAILED, "CallError InternalError: boom")
            )
        )
        # Not retried in a loop: the next try waits retry_after_s (the test clock stands still).
        sent = (len(one.calls("SetChargingProfile")), len(two.calls("SetChargingProfile")))
        rounds = balancer.rounds
        await wait_until(lambda: balancer.rounds > rounds + 3)
        assert (len(one.calls("SetChargingProfile")), len(two.calls("SetChargingProfile"))) == sent

        # After the retry delay it tries again, and an acceptance is recorded.
        del two.responders["SetChargingProfile"]
        running.clock.now += timedelta(seconds=61)
        balancer.poke()
        await wait_until(lambda: detail(b) == (LimitState.ACCEPTED, None))
        assert [lim.applied_w for lim in balancer.limits() if lim.transaction_id == b] == [3000]


async def test_reductions_are_answered_before_increases(running: RunningCsms) -> None:
    """A paused connector gets its share only once the reduction under way is answered."""
    await running.csms.register_charge_point(CP2, KEY2)
    async with (
        balancing(running, 3000) as balancer,
        scripted_charger(running.port) as one,
        scripted_charger(running.port, CP2, KEY2) as two,
    ):
        a = await one.start_transaction(1, "TAG-A", 0, at(1))
        b = await one.start_transaction(2, "TAG-B", 0, at(2))
        c = await two.start_transaction(1, "TAG-C", 0, at(3))
        await wait_until(
            lambda: (
                {tx: w for _, tx, w in limits_for(one) + limits_for(two)}
                == {a: 1500, b: 1500, c: 0}
            )
        )

        release = asyncio.Event()

        async def slow_accept(_payload: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            return {"status": "Accepted"}

        one.responders["SetChargingProfile"] = slow_accept
        sent_to_one = len(one.calls("SetChargingProfile"))
        # d is new, so unlimited until told: it is cut to 0 W, and the charger is slow.
        d = await one.start_transaction(3, "TAG-D", 0, at(11))
        await one.wait_calls("SetChargingProfile", sent_to_one + 1)
        assert limits_for(one)[-1] == (3, d, 0)
        # b leaves: c may have 1500 W, but not while d may still draw without limit.
        await one.stop_transaction(b, 10, at(12))
        rounds = balancer.rounds
        await wait_until(lambda: balancer.rounds > rounds + 3)
        assert limits_for(two) == [(1, c, 0)]
        release.set()
        await two.wait_calls("SetChargingProfile", 2)
        assert limits_for(two) == [(1, c, 0), (1, c, 1500)]


async def test_site_limit_off_clears_our_profiles(running: RunningCsms) -> None:
    async with (
        balancing(running, 7000) as balancer,
        scripted_charger(running.port) as charger,
    ):
        a = await charger.start_transaction(1, "TAG-A", 0, at(1))
        await charger.wait_calls("SetChargingProfile", 1)
        balancer.set_site_limit(None)
        [cleared] = await charger.wait_calls("ClearChargingProfile", 1)
        assert cleared == {"id": a}
        await wait_until(lambda: balancer.limits()[0].applied_w is None)
        balancer.set_site_limit(3000)
        await charger.wait_calls("SetChargingProfile", 2)
        assert limits_for(charger)[-1] == (1, a, 3000)
    assert charger.problems() == []


async def test_balancer_waits_for_the_csms_and_survives_its_restart(
    running: RunningCsms,
) -> None:
    async with balancing(running, 5000) as balancer:
        async with scripted_charger(running.port) as charger:
            a = await charger.start_transaction(1, "TAG-A", 0, at(1))
            await charger.wait_calls("SetChargingProfile", 1)
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
        rounds = balancer.rounds
        await asyncio.sleep(0.2)
        assert balancer.rounds == rounds  # no database: no passes, no crash
        running.task = asyncio.create_task(running.csms.run())
        await asyncio.wait_for(running.csms.started.wait(), 5)
        await wait_until(lambda: balancer.rounds > rounds)
        # The limit it had is known again from csms.db: nothing resent.
        assert [(lim.transaction_id, lim.applied_w) for lim in balancer.limits()] == [(a, 5000)]
