"""OCPP 1.6 compliance-style scenarios: the real daemon against a strict scripted CSMS."""

from __future__ import annotations

from pathlib import Path

import pytest
from scenario_support import running, scenario_config
from support.scripted_csms import ScriptedCsms

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"


async def test_a_session_is_boot_status_authorize_start_meter_stop_in_order(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await csms.wait_calls("BootNotification")
        await kiosk.wait_for("online", lambda s: s["links"]["csms"]["state"] == "online")
        await kiosk.wait_for("telemetry", lambda s: s["connector"]["last_sample"] is not None)
        await kiosk.tap(CARD)
        await kiosk.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")
        await csms.wait_calls("MeterValues", 2)
        await kiosk.tap(CARD)
        await csms.wait_calls("StopTransaction")
        await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        await csms.wait_for(
            "Available after the stop",
            lambda: csms.payloads("StatusNotification")[-1]["status"] == "Available",
        )

    assert csms.violations == []
    actions = [r.action for r in csms.received]
    assert actions[0] == "BootNotification"
    # Connector 0 and connector 1 report where they stand after the boot.
    first = [p for p in csms.payloads("StatusNotification")[:2]]
    assert {p["connectorId"] for p in first} == {0, 1}
    transaction = [
        (r.action, r.payload.get("status"))
        for r in csms.received
        if r.action in ("StartTransaction", "StopTransaction", "StatusNotification")
        and r.payload.get("connectorId", 1) == 1
    ]
    start = transaction.index(("StartTransaction", None))
    stop = transaction.index(("StopTransaction", None))
    # The CSMS sees Preparing, then the start, then Charging; Finishing, the stop, Available.
    assert transaction[start - 1] == ("StatusNotification", "Preparing")
    assert transaction[start + 1] == ("StatusNotification", "Charging")
    assert transaction[stop - 1] == ("StatusNotification", "Finishing")
    assert transaction[stop + 1] == ("StatusNotification", "Available")
    (start_payload,) = csms.payloads("StartTransaction")
    (stop_payload,) = csms.payloads("StopTransaction")
    tx = 1001
    assert stop_payload["transactionId"] == tx and stop_payload["reason"] == "Local"
    assert all(p["transactionId"] == tx for p in csms.payloads("MeterValues"))
    assert start_payload["meterStart"] <= stop_payload["meterStop"]
    # Every message went once: no unique id was seen twice.
    ids = [r.unique_id for r in csms.received]
    assert len(ids) == len(set(ids))
