"""OCPP 1.6 Smart Charging, compliance-style: the real daemon against the strict scripted CSMS.

Each limit is followed to the emulated ESP32: the daemon's status shows what the profiles
say, what it commanded and what the firmware acknowledged, and the ESP32's own telemetry
reports the limit in force (`lim`). Every frame is checked against the schemas both ways.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scenario_support import Kiosk, running, scenario_config
from support.scripted_csms import ScriptedCsms

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"
OTHER = "04D4E5F6"
# The test configuration's [safety] max_current_a is 1000: the most the LIM command carries.
RATED = 999.9


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cs_profile(
    pid: int,
    periods: list[tuple[int, float]],
    *,
    purpose: str = "TxDefaultProfile",
    kind: str = "Absolute",
    stack: int = 0,
    unit: str = "A",
    **extra: Any,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods],
    }
    for key in ("startSchedule", "duration"):
        if key in extra:
            schedule[key] = extra.pop(key)
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
        **extra,
    }


async def set_profile(csms: ScriptedCsms, connector: int, profile: dict[str, Any]) -> str:
    reply = await csms.call(
        "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": profile}
    )
    status: str = reply["status"]
    return status


def limit(status: dict[str, Any], cid: int = 1) -> dict[str, Any]:
    found: dict[str, Any] = status["connectors"][cid - 1]["charging_limit"]
    return found


def esp32_limit(status: dict[str, Any], channel: int = 1) -> float | None:
    """The limit the emulated ESP32 reports in force (its ack and its frames' `lim`)."""
    for state in status["telemetry"]["reader"]["channels"]:
        if state["channel"] == channel:
            value: float | None = state["current_limit_a"]
            return value
    return None


def applied(amps: float, cid: int = 1) -> Any:
    """A status check: the connector's limit is `amps`, commanded and acknowledged."""
    return lambda s: (
        limit(s, cid)["commanded_a"] == amps
        and limit(s, cid)["acknowledged_a"] == amps
        and esp32_limit(s, cid) == amps
    )


async def ready(kiosk: Kiosk, connectors: int = 1) -> dict[str, Any]:
    """Online, Available, metered, the boot's messages delivered, the rating applied."""
    return await kiosk.wait_for(
        "online and Available with telemetry, the rating applied",
        lambda s: (
            s["links"]["csms"]["state"] == "online"
            and all(
                c["status"] == "Available" and c["last_sample"] is not None for c in s["connectors"]
            )
            and s["outbox"]["depth"] == 0
            and all(applied(RATED, c)(s) for c in range(1, connectors + 1))
        ),
    )


async def charge(kiosk: Kiosk, card: str = CARD, cid: int = 1) -> dict[str, Any]:
    await kiosk.present(card)
    return await kiosk.wait_for(
        f"connector {cid} in a transaction",
        lambda s: (s["connectors"][cid - 1]["session"] or {}).get("transaction_id") is not None,
    )


def statuses(csms: ScriptedCsms, cid: int) -> list[str]:
    return [p["status"] for p in csms.payloads("StatusNotification") if p["connectorId"] == cid]


def periods(reply: dict[str, Any]) -> list[tuple[int, float]]:
    return [
        (p["startPeriod"], p["limit"]) for p in reply["chargingSchedule"]["chargingSchedulePeriod"]
    ]


def two_connectors(config: Path) -> Path:
    with config.open("a") as file:
        file.write(
            "[[connector]]\nid = 1\nrelay_pin = 17\nmeter_channel = 1\n"
            "[[connector]]\nid = 2\nrelay_pin = 24\nmeter_channel = 2\n"
        )
    return config


# -- SetChargingProfile -> the ESP32; GetCompositeSchedule ------------------------------


async def test_a_default_profile_reaches_the_esp32_and_the_composite_schedule_shows_it(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        profiles = await csms.call("GetConfiguration", {"key": ["SupportedFeatureProfiles"]})
        # Absolute without startSchedule: it starts when received.
        assert await set_profile(csms, 0, cs_profile(1, [(0, 16.0)])) == "Accepted"
        status = await kiosk.wait_for("16 A at the ESP32", applied(16.0))
        assert limit(status)["limit_a"] == 16.0 and limit(status)["profile_ids"] == [1]
        assert limit(status)["paused"] is False
        # The emulated car now draws at most 16 A (at the emulator's 230 V).
        await charge(kiosk)
        charging = await kiosk.wait_for(
            "the car limited",
            lambda s: (
                (sample := s["connector"]["last_sample"]) is not None
                and 3000 < sample["power_w"] <= 16 * 230
            ),
        )
        assert charging["connector"]["status"] == "Charging"
        in_amps = await csms.call(
            "GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"}
        )
        in_watts = await csms.call(
            "GetCompositeSchedule", {"connectorId": 1, "duration": 600, "chargingRateUnit": "W"}
        )
        default_unit = await csms.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
        grid = await csms.call("GetCompositeSchedule", {"connectorId": 0, "duration": 60})
        unknown = await csms.call("GetCompositeSchedule", {"connectorId": 3, "duration": 60})

    assert {"SmartCharging", "Reservation"} <= set(
        profiles["configurationKey"][0]["value"].split(",")
    )
    assert in_amps["status"] == "Accepted" and in_amps["connectorId"] == 1
    assert in_amps["chargingSchedule"]["duration"] == 3600
    assert in_amps["chargingSchedule"]["chargingRateUnit"] == "A"
    assert in_amps["scheduleStart"] == in_amps["chargingSchedule"]["startSchedule"]
    assert periods(in_amps) == [(0, 16.0)]
    assert in_amps["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] == 1
    assert periods(in_watts) == [(0, 3680.0)]  # 16 A x 230 V x 1 phase
    assert default_unit["chargingSchedule"]["chargingRateUnit"] == "A"
    # Connector 0: the grid connection, which no ChargePointMaxProfile limits here.
    assert periods(grid) == [(0, RATED)]
    assert unknown == {"status": "Rejected"}
    assert csms.violations == []


async def test_a_recurring_profile_in_watts_and_its_composite_across_midnight(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    # Daily from one hour ago: 2300 W (10 A) for two hours, then 6 A as 1380 W.
    daily = cs_profile(
        2,
        [(0, 2300.0), (7200, 1380.0)],
        kind="Recurring",
        recurrencyKind="Daily",
        startSchedule=iso(now - timedelta(hours=1)),
        unit="W",
    )
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        assert await set_profile(csms, 1, daily) == "Accepted"
        status = await kiosk.wait_for("10 A at the ESP32", applied(10.0))
        reply = await csms.call(
            "GetCompositeSchedule",
            {"connectorId": 1, "duration": 2 * 86_400, "chargingRateUnit": "W"},
        )

    start = datetime.fromisoformat(reply["scheduleStart"])
    # Whole seconds from the start: the first boundary is where 10 A ends (now + 1 h).
    ends = int((now + timedelta(hours=1) - start).total_seconds())
    hour = 3600
    # About an hour left of 10 A, 22 h of 6 A, 2 h of 10 A, 22 h of 6 A, 10 A again.
    assert periods(reply) == [
        (0, 2300.0),
        (ends, 1380.0),
        (ends + 22 * hour, 2300.0),
        (ends + 24 * hour, 1380.0),
        (ends + 46 * hour, 2300.0),
    ]
    next_change = datetime.fromisoformat(limit(status)["next_change_at"])
    assert next_change == now + timedelta(hours=1)
    assert csms.violations == []


async def test_a_higher_stack_limits_only_inside_its_validity_window(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        now = datetime.now(UTC).replace(microsecond=0)
        opens, closes = now + timedelta(seconds=3), now + timedelta(seconds=5)
        base = cs_profile(1, [(0, 16.0)], startSchedule=iso(now))
        # Higher, but valid for two seconds only: the lower one before and after it;
        # the charge point follows the window by itself (no message moves the limit).
        window = cs_profile(
            2,
            [(0, 10.0)],
            stack=1,
            startSchedule=iso(now),
            validFrom=iso(opens),
            validTo=iso(closes),
        )
        answers = [await set_profile(csms, 1, base), await set_profile(csms, 1, window)]
        reply = await csms.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
        before = await kiosk.wait_for("16 A before the window", applied(16.0))
        inside = await kiosk.wait_for("10 A inside the window", applied(10.0))
        after = await kiosk.wait_for("16 A after the window", applied(16.0))

    assert answers == ["Accepted", "Accepted"]
    start = datetime.fromisoformat(reply["scheduleStart"])
    offset = int((opens - start).total_seconds())
    assert offset > 0, "asked after the window opened: the machine is far too slow"
    assert periods(reply) == [(0, 16.0), (offset, 10.0), (offset + 2, 16.0)]
    assert limit(before)["profile_ids"] == [1]
    assert datetime.fromisoformat(limit(before)["next_change_at"]) == opens
    assert limit(inside)["profile_ids"] == [2]
    assert datetime.fromisoformat(limit(inside)["next_change_at"]) == closes
    assert limit(after)["profile_ids"] == [1]
    assert csms.violations == []


async def test_a_zero_limit_pauses_the_session_and_the_next_period_resumes_it(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        started = await charge(kiosk)
        session = started["connector"]["session"]
        # The transaction's own profile: nothing for 3 s, then 10 A.
        tx_profile = cs_profile(
            3,
            [(0, 0.0), (3, 10.0)],
            purpose="TxProfile",
            startSchedule=iso(datetime.now(UTC)),
            transactionId=session["transaction_id"],
        )
        assert await set_profile(csms, 1, tx_profile) == "Accepted"
        paused = await kiosk.wait_for(
            "paused at 0 A",
            lambda s: s["connector"]["status"] == "SuspendedEVSE" and applied(0.0)(s),
        )
        held = await kiosk.wait_for(
            "the car drawing nothing",
            lambda s: (
                s["connector"]["last_sample"]["power_w"] == 0.0
                and s["connector"]["status"] == "SuspendedEVSE"
            ),
        )
        resumed = await kiosk.wait_for(
            "charging again at 10 A",
            lambda s: s["connector"]["status"] == "Charging" and applied(10.0)(s),
        )
        await kiosk.wait_for("all delivered", lambda s: s["outbox"]["depth"] == 0)

    for state in (paused, held):
        assert state["connector"]["phase"] == "Paused" and limit(state)["paused"] is True
        # The session goes on: same session, same transaction; the relay stays closed
        # (the ESP32 holds the car at 0 A).
        assert state["connector"]["session"]["session_id"] == session["session_id"]
        assert state["connector"]["relay_closed"] is True
    assert resumed["connector"]["session"]["transaction_id"] == session["transaction_id"]
    assert statuses(csms, 1)[-3:] == ["Charging", "SuspendedEVSE", "Charging"]
    assert csms.calls("StopTransaction") == []
    assert csms.violations == []


async def test_a_remote_start_with_a_tx_profile_limits_that_transaction_only(
    tmp_path: Path,
) -> None:
    tx_profile = cs_profile(5, [(0, 8.0)], purpose="TxProfile", kind="Relative", stack=1)
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        wrong = await csms.call(
            "RemoteStartTransaction",
            {"connectorId": 1, "idTag": CARD, "chargingProfile": cs_profile(6, [(0, 8.0)])},
        )
        reply = await csms.call(
            "RemoteStartTransaction",
            {"connectorId": 1, "idTag": CARD, "chargingProfile": tx_profile},
        )
        status = await kiosk.wait_for(
            "8 A for the new transaction",
            lambda s: (
                s["connector"]["status"] == "Charging"
                and applied(8.0)(s)
                and s["connector"]["session"]["transaction_id"] is not None
            ),
        )
        composite = await csms.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
        tx = status["connector"]["session"]["transaction_id"]
        stopped = await csms.call("RemoteStopTransaction", {"transactionId": tx})
        await kiosk.wait_for(
            "the rating back once it ended",
            lambda s: s["connector"]["status"] == "Available" and applied(RATED)(s),
        )
        after = await csms.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})

    assert wrong == {"status": "Rejected"}  # a RemoteStart's profile must be a TxProfile
    assert reply == {"status": "Accepted"} and stopped == {"status": "Accepted"}
    assert limit(status)["profile_ids"] == [5]
    assert periods(composite) == [(0, 8.0)]
    assert periods(after) == [(0, RATED)]  # the TxProfile ended with its transaction
    assert len(csms.calls("StartTransaction")) == 1
    assert csms.violations == []


async def test_profiles_survive_a_restart_and_clearing_lifts_the_limit(tmp_path: Path) -> None:
    cap = cs_profile(1, [(0, 2300.0)], purpose="ChargePointMaxProfile", unit="W")
    async with ScriptedCsms() as csms:
        config = scenario_config(tmp_path, csms)
        async with running(config) as kiosk:
            await ready(kiosk)
            assert await set_profile(csms, 0, cap) == "Accepted"
            await kiosk.wait_for("10 A (2300 W at 230 V)", applied(10.0))
        async with running(config) as kiosk:
            again = await kiosk.wait_for("10 A again after the restart", applied(10.0))
            cleared = await csms.call("ClearChargingProfile", {"id": 1})
            twice = await csms.call("ClearChargingProfile", {"id": 1})
            await kiosk.wait_for("the rating", applied(RATED))
            nothing = await csms.call(
                "ClearChargingProfile", {"connectorId": 0, "chargingProfilePurpose": "TxProfile"}
            )

    assert limit(again)["profile_ids"] == [1]
    assert cleared == {"status": "Accepted"}
    assert twice == {"status": "Unknown"} and nothing == {"status": "Unknown"}
    assert csms.violations == []


async def test_profiles_the_charge_point_cannot_keep_are_rejected(tmp_path: Path) -> None:
    now = iso(datetime.now(UTC))
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        refused = {
            "stack level above ChargeProfileMaxStackLevel": await set_profile(
                csms, 0, cs_profile(1, [(0, 16.0)], stack=11)
            ),
            "more periods than ChargingScheduleMaxPeriods": await set_profile(
                csms, 0, cs_profile(1, [(n * 60, 16.0) for n in range(49)])
            ),
            "a TxProfile without a transaction": await set_profile(
                csms, 1, cs_profile(1, [(0, 16.0)], purpose="TxProfile")
            ),
            "a ChargePointMaxProfile on connector 1": await set_profile(
                csms, 1, cs_profile(1, [(0, 16.0)], purpose="ChargePointMaxProfile")
            ),
            "no such connector": await set_profile(csms, 2, cs_profile(1, [(0, 16.0)])),
            "Recurring without its kind": await set_profile(
                csms, 0, cs_profile(1, [(0, 16.0)], kind="Recurring", startSchedule=now)
            ),
        }
        installed = [
            await set_profile(csms, 0, cs_profile(n, [(0, 32.0)], stack=n % 11))
            for n in range(1, 11)
        ] + [
            await set_profile(csms, 1, cs_profile(n, [(0, 32.0)], stack=n % 11))
            for n in range(11, 21)
        ]
        one_too_many = await set_profile(csms, 1, cs_profile(21, [(0, 32.0)], stack=10))
        # The same id replaces rather than adds: still room for it. At connector 0's top
        # stack level, connector 1's own default wins.
        replaced = await set_profile(csms, 1, cs_profile(20, [(0, 20.0)], stack=10))
        await kiosk.wait_for("20 A", applied(20.0))
        cleared = await csms.call("ClearChargingProfile", {})
        await kiosk.wait_for("the rating", applied(RATED))

    assert set(refused.values()) == {"Rejected"}, refused
    assert installed == ["Accepted"] * 20
    assert one_too_many == "Rejected" and replaced == "Accepted"
    assert cleared == {"status": "Accepted"}
    assert csms.violations == []


async def test_the_charge_point_cap_is_shared_by_the_connectors_in_session(
    tmp_path: Path,
) -> None:
    cap = cs_profile(1, [(0, 20.0)], purpose="ChargePointMaxProfile")
    async with ScriptedCsms() as csms:
        config = two_connectors(scenario_config(tmp_path, csms))
        async with running(config) as kiosk:
            await ready(kiosk, connectors=2)
            assert await set_profile(csms, 0, cap) == "Accepted"
            await kiosk.wait_for(
                "20 A on both", lambda s: applied(20.0, 1)(s) and applied(20.0, 2)(s)
            )
            await charge(kiosk, CARD, 1)
            alone = await kiosk.wait_for("one session: all 20 A", applied(20.0, 1))
            await charge(kiosk, OTHER, 2)
            shared = await kiosk.wait_for(
                "two sessions: 10 A each", lambda s: applied(10.0, 1)(s) and applied(10.0, 2)(s)
            )
            grid = await csms.call("GetCompositeSchedule", {"connectorId": 0, "duration": 60})

    assert alone["connectors"][1]["session"] is None
    assert all(c["status"] == "Charging" for c in shared["connectors"])
    assert periods(grid) == [(0, 20.0)]
    assert csms.violations == []
