"""OCPP 1.6 Reservation, compliance-style: the real daemon against the strict scripted CSMS.

Reservation lifecycles end by use (StartTransaction's reservationId), cancelling or
expiry (StatusNotification back to Available); a reserved connector refuses other cards.
Every frame is checked against the schemas both ways.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scenario_support import Kiosk, running, scenario_config
from support.scripted_csms import Received, ScriptedCsms

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"
FRIEND = "04B0B0B0"  # another card of CARD's fleet (parentIdTag FLEET)
STRANGER = "04CAC0C0"
FLEET = "FLEET-7"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def in_minutes(minutes: float) -> str:
    return iso(datetime.now(UTC) + timedelta(minutes=minutes))


def reserve(
    connector: int, reservation_id: int, id_tag: str = CARD, expiry: str | None = None, **extra: str
) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "expiryDate": expiry or in_minutes(10),
        "idTag": id_tag,
        "reservationId": reservation_id,
        **extra,
    }


async def ready(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for(
        "online and Available with telemetry",
        lambda s: (
            s["links"]["csms"]["state"] == "online"
            and s["connector"]["status"] == "Available"
            and s["connector"]["last_sample"] is not None
            and s["outbox"]["depth"] == 0
        ),
    )


async def delivered(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for("an empty outbox", lambda s: s["outbox"]["depth"] == 0)


def statuses(csms: ScriptedCsms, cid: int = 1) -> list[str]:
    return [p["status"] for p in csms.payloads("StatusNotification") if p["connectorId"] == cid]


async def refused_tap(kiosk: Kiosk, card: str) -> dict[str, Any]:
    """Tap `card` and return the status once the kiosk has turned it down."""
    before = (await kiosk.status())["events_rejected"]
    await kiosk.present(card)
    return await kiosk.wait_for("the card refused", lambda s: s["events_rejected"] > before)


async def charging(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for(
        "charging with a transaction",
        lambda s: (
            s["connector"]["status"] == "Charging"
            and (s["connector"]["session"] or {}).get("transaction_id") is not None
        ),
    )


async def test_a_reserved_connector_refuses_other_cards_and_starts_for_its_own(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call("ReserveNow", reserve(1, 7))
        reserved = await kiosk.wait_for(
            "Reserved", lambda s: s["connector"]["status"] == "Reserved"
        )
        refused = await refused_tap(kiosk, STRANGER)
        await kiosk.present(CARD)
        await charging(kiosk)
        after = await delivered(kiosk)

    assert reply == {"status": "Accepted"}
    assert reserved["connector"]["reservation"] == {
        "reservation_id": 7,
        "connector_id": 1,
        "id_tag": "****B2C3",
        "expiry": reserved["connector"]["reservation"]["expiry"],
    }
    # The stranger was turned away without even asking the CSMS about the card.
    assert refused["connector"]["status"] == "Reserved"
    assert [p["idTag"] for p in csms.payloads("Authorize")] == [CARD]
    (start,) = csms.payloads("StartTransaction")
    assert (start["idTag"], start["reservationId"]) == (CARD, 7)
    assert statuses(csms) == ["Available", "Reserved", "Preparing", "Charging"]
    assert after["connector"]["reservation"] is None
    assert csms.violations == []


async def test_a_reservation_expires_back_to_available_and_the_connector_is_free_again(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call("ReserveNow", reserve(1, 8, expiry=in_minutes(3 / 60)))
        await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
        expired = await kiosk.wait_for(
            "Available after the expiry",
            lambda s: s["connector"]["status"] == "Available" and s["outbox"]["depth"] == 0,
        )
        # Nothing left of it: the stranger charges, without a reservationId.
        await kiosk.present(STRANGER)
        await charging(kiosk)
        await delivered(kiosk)
        # Gone for good: cancelling it now finds nothing.
        cancel = await csms.call("CancelReservation", {"reservationId": 8})

    assert reply == {"status": "Accepted"}
    assert expired["connector"]["reservation"] is None
    assert statuses(csms) == ["Available", "Reserved", "Available", "Preparing", "Charging"]
    assert "reservationId" not in csms.payloads("StartTransaction")[0]
    assert cancel == {"status": "Rejected"}
    assert csms.violations == []


async def test_cancel_reservation_frees_the_connector_once(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        await csms.call("ReserveNow", reserve(1, 9))
        await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
        first = await csms.call("CancelReservation", {"reservationId": 9})
        await kiosk.wait_for("Available", lambda s: s["connector"]["status"] == "Available")
        second = await csms.call("CancelReservation", {"reservationId": 9})
        unknown = await csms.call("CancelReservation", {"reservationId": 12345})
        await delivered(kiosk)

    assert first == {"status": "Accepted"}
    assert second == unknown == {"status": "Rejected"}
    assert statuses(csms) == ["Available", "Reserved", "Available"]
    assert csms.violations == []


async def test_a_reservation_for_a_parent_id_tag_takes_any_card_of_that_group(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:

        def authorize(call: Received) -> dict[str, Any]:
            info: dict[str, Any] = {"status": "Accepted"}
            if call.payload["idTag"] in (CARD, FRIEND):
                info["parentIdTag"] = FLEET
            return {"idTagInfo": info}

        csms.responders["Authorize"] = authorize
        await ready(kiosk)
        reply = await csms.call("ReserveNow", reserve(1, 10, parentIdTag=FLEET))
        await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
        # The stranger's card is valid, but not of the fleet: refused after its Authorize.
        await kiosk.present(STRANGER)
        refused = await kiosk.wait_for(
            "the stranger refused after its Authorize",
            lambda s: bool(csms.calls("Authorize")) and s["connector"]["phase"] == "Reserved",
        )
        await kiosk.present(FRIEND)
        await charging(kiosk)
        await delivered(kiosk)

    assert reply == {"status": "Accepted"}
    assert refused["connector"]["session"] is None
    assert [p["idTag"] for p in csms.payloads("Authorize")] == [STRANGER, FRIEND]
    (start,) = csms.payloads("StartTransaction")
    assert (start["idTag"], start["reservationId"]) == (FRIEND, 10)
    assert statuses(csms) == ["Available", "Reserved", "Preparing", "Charging"]
    assert csms.violations == []


async def test_reserve_now_answers_for_each_state_of_the_connector(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        answers = {
            "no such connector": await csms.call("ReserveNow", reserve(2, 1)),
            "already expired": await csms.call("ReserveNow", reserve(1, 1, expiry=in_minutes(-1))),
            # One connector: a reservation for any connector holds that one.
            "any connector": await csms.call("ReserveNow", reserve(0, 2)),
        }
        placed = await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
        answers["reserved for another"] = await csms.call("ReserveNow", reserve(1, 3, STRANGER))
        answers["any, none left"] = await csms.call("ReserveNow", reserve(0, 4, STRANGER))
        # The same reservation id again replaces it (here: another card, still Reserved).
        answers["the same id"] = await csms.call("ReserveNow", reserve(0, 2, STRANGER))
        await csms.call("CancelReservation", {"reservationId": 2})
        await kiosk.wait_for("Available", lambda s: s["connector"]["status"] == "Available")
        await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
        await kiosk.wait_for("Unavailable", lambda s: s["connector"]["status"] == "Unavailable")
        answers["inoperative"] = await csms.call("ReserveNow", reserve(1, 5))
        await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
        await kiosk.present(CARD)
        await charging(kiosk)
        answers["charging"] = await csms.call("ReserveNow", reserve(1, 6, STRANGER))
        await delivered(kiosk)

    assert {what: reply["status"] for what, reply in answers.items()} == {
        "no such connector": "Rejected",
        "already expired": "Rejected",
        "any connector": "Accepted",
        "reserved for another": "Occupied",
        "any, none left": "Occupied",
        "the same id": "Accepted",
        "inoperative": "Unavailable",
        "charging": "Occupied",
    }
    assert placed["connector"]["reservation"]["connector_id"] == 0  # as the CSMS asked
    # The replacement kept the connector Reserved: one Reserved, one Available.
    assert statuses(csms)[:3] == ["Available", "Reserved", "Available"]
    assert "reservationId" not in csms.payloads("StartTransaction")[0]
    assert csms.violations == []


async def test_a_remote_start_on_a_reserved_connector_is_for_the_reserved_card_only(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        await csms.call("ReserveNow", reserve(1, 11))
        await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
        stranger = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": STRANGER})
        # Without a connector: the one reserved for the card.
        own = await csms.call("RemoteStartTransaction", {"idTag": CARD})
        await charging(kiosk)
        await delivered(kiosk)

    assert stranger == {"status": "Rejected"} and own == {"status": "Accepted"}
    (start,) = csms.payloads("StartTransaction")
    assert (start["idTag"], start["reservationId"]) == (CARD, 11)
    assert csms.violations == []


async def test_a_reservation_survives_a_restart(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms:
        config = scenario_config(tmp_path, csms)
        async with running(config) as kiosk:
            await ready(kiosk)
            await csms.call("ReserveNow", reserve(1, 12))
            await kiosk.wait_for("Reserved", lambda s: s["connector"]["status"] == "Reserved")
            await delivered(kiosk)
        async with running(config) as kiosk:
            # With telemetry too: without a meter reading a card cannot start (no
            # meterStart), and under load the first sample can come after Reserved.
            again = await kiosk.wait_for(
                "Reserved after the restart, with telemetry",
                lambda s: (
                    s["connector"]["status"] == "Reserved"
                    and s["connector"]["last_sample"] is not None
                    and s["outbox"]["depth"] == 0
                ),
            )
            await kiosk.present(CARD)
            await charging(kiosk)
            await delivered(kiosk)

    assert again["connector"]["reservation"]["reservation_id"] == 12
    (start,) = csms.payloads("StartTransaction")
    assert start["reservationId"] == 12
    # The restart says Available first (every connector at boot), then Reserved again.
    assert statuses(csms)[-4:] == ["Available", "Reserved", "Preparing", "Charging"]
    assert csms.violations == []
