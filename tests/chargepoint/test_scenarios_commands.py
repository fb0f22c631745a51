"""OCPP 1.6 compliance-style scenarios for every CSMS -> charge point command.

The real daemon runs against the strict scripted CSMS, which validates every frame both
ways; each test ends by checking that nothing the charge point sent broke the schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from scenario_support import Kiosk, running, scenario_config
from support import scripted_csms
from support.scripted_csms import Received, ScriptedCsms, now_iso

from edgepoint.chargepoint.settings import REGISTRY

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"


# -- helpers ------------------------------------------------------------------------------


def two_connectors(config: Path) -> Path:
    """Give the kiosk of `config` a second connector (its own relay and meter channel)."""
    with config.open("a") as file:
        file.write(
            "[[connector]]\nid = 1\nrelay_pin = 17\nmeter_channel = 1\n"
            "[[connector]]\nid = 2\nrelay_pin = 24\nmeter_channel = 2\n"
        )
    return config


async def ready(kiosk: Kiosk, connectors: int = 1) -> dict[str, Any]:
    """Online, every connector Available and metered, the boot's messages delivered."""
    return await kiosk.wait_for(
        "online and Available with telemetry",
        lambda s: (
            s["links"]["csms"]["state"] == "online"
            and len(s["connectors"]) == connectors
            and all(
                c["status"] == "Available" and c["last_sample"] is not None for c in s["connectors"]
            )
            and s["outbox"]["depth"] == 0
        ),
    )


async def charge(kiosk: Kiosk, card: str = CARD, cid: int = 1) -> int:
    """Tap `card` and wait until its session charges with a transaction id; return the id."""
    await kiosk.present(card)
    status = await kiosk.wait_for(
        f"connector {cid} charging with a transaction id",
        lambda s: (
            s["connectors"][cid - 1]["status"] == "Charging"
            and (s["connectors"][cid - 1]["session"] or {}).get("transaction_id") is not None
        ),
    )
    tx: int = status["connectors"][cid - 1]["session"]["transaction_id"]
    return tx


async def charge_offline(kiosk: Kiosk, card: str) -> None:
    """Tap `card` and wait until its session charges (no CSMS: no transaction id yet)."""
    await kiosk.present(card)
    await kiosk.wait_for(
        "charging",
        lambda s: s["connector"]["status"] == "Charging" and s["connector"]["session"] is not None,
    )


async def drained(kiosk: Kiosk) -> dict[str, Any]:
    """Everything stored so far went out and was confirmed."""
    return await kiosk.wait_for("an empty outbox", lambda s: s["outbox"]["depth"] == 0)


def statuses(csms: ScriptedCsms, cid: int) -> list[str]:
    return [p["status"] for p in csms.payloads("StatusNotification") if p["connectorId"] == cid]


def daemon_log(kiosk: Kiosk) -> str:
    return kiosk.daemon.log.read_text(errors="replace")


async def wait_log(kiosk: Kiosk, text: str, within_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while text not in daemon_log(kiosk):
        assert asyncio.get_running_loop().time() < deadline, f"{text!r} never logged\n" + (
            kiosk.daemon.tail()
        )
        await asyncio.sleep(0.05)


def config_values(reply: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {e["key"]: (e["readonly"], e.get("value", "")) for e in reply["configurationKey"]}


async def get_value(csms: ScriptedCsms, key: str) -> str:
    reply = await csms.call("GetConfiguration", {"key": [key]})
    value: str = config_values(reply)[key][1]
    return value


@contextlib.asynccontextmanager
async def offline_capable(
    tmp_path: Path,
) -> AsyncIterator[tuple[ScriptedCsms, Kiosk, Callable[[], Awaitable[None]]]]:
    """A CSMS and a daemon where the CSMS can be taken away while the daemon keeps running."""
    async with contextlib.AsyncExitStack() as stack:
        online = contextlib.AsyncExitStack()
        stack.push_async_callback(online.aclose)
        csms = await online.enter_async_context(ScriptedCsms())
        kiosk = await stack.enter_async_context(running(scenario_config(tmp_path, csms)))
        yield csms, kiosk, online.aclose


# -- GetConfiguration / ChangeConfiguration ---------------------------------------------------


async def test_get_configuration_reports_every_key_with_its_readonly_flag(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        everything = await csms.call("GetConfiguration", {})
        empty_list = await csms.call("GetConfiguration", {"key": []})
        some = await csms.call(
            "GetConfiguration",
            {
                "key": [
                    "HeartbeatInterval",
                    "NumberOfConnectors",
                    "NoSuchKey",
                    "meterValueSampleInterval",
                ]
            },
        )
        # More keys than GetConfigurationMaxKeys: a partial answer would look complete.
        too_many = await csms.call("GetConfiguration", {"key": [f"K{n}" for n in range(51)]})

    assert csms.violations == []
    values = config_values(everything)
    assert set(values) == set(REGISTRY)
    assert "unknownKey" not in everything
    assert {key: readonly for key, (readonly, _) in values.items()} == {
        name: d.readonly for name, d in REGISTRY.items()
    }
    # What config.toml set, what the CSMS's boot reply set, and what follows the hardware.
    assert values["MeterValueSampleInterval"] == (False, "1")
    assert values["HeartbeatInterval"] == (False, str(csms.heartbeat_interval))
    assert values["NumberOfConnectors"] == (True, "1")
    assert config_values(empty_list) == values
    # Only the keys asked for; a key is matched in any case, an unknown one is named back.
    assert config_values(some) == {
        "HeartbeatInterval": (False, str(csms.heartbeat_interval)),
        "NumberOfConnectors": (True, "1"),
        "MeterValueSampleInterval": (False, "1"),
    }
    assert some["unknownKey"] == ["NoSuchKey"]
    assert values["GetConfigurationMaxKeys"] == (True, "50")
    assert too_many == ("error", "OccurenceConstraintViolation")


async def test_change_configuration_accepts_rejects_and_reads_back(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)

        async def change(key: str, value: str) -> str:
            reply = await csms.call("ChangeConfiguration", {"key": key, "value": value})
            status: str = reply["status"]
            return status

        assert await change("BlinkRepeat", "7") == "Accepted"
        assert await get_value(csms, "BlinkRepeat") == "7"
        assert await change("LocalPreAuthorize", "True") == "Accepted"
        assert await get_value(csms, "LocalPreAuthorize") == "true"  # OCPP's spelling
        assert await change("NumberOfConnectors", "2") == "Rejected"  # read-only
        assert await change("HeartbeatInterval", "soon") == "Rejected"  # not an integer
        assert await change("BlinkRepeat", "99") == "Rejected"  # out of range
        assert await change("MeterValuesSampledData", "Frequency") == "Rejected"  # no such meter
        assert await change("NoSuchKey", "1") == "NotSupported"
        # A refused change leaves the value as it was.
        assert await get_value(csms, "BlinkRepeat") == "7"
        assert await get_value(csms, "NumberOfConnectors") == "1"

    assert csms.violations == []


async def test_a_configuration_change_survives_a_restart(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms:
        config = scenario_config(tmp_path, csms)
        async with running(config) as kiosk:
            await ready(kiosk)
            for key, value in (("BlinkRepeat", "5"), ("MeterValueSampleInterval", "2")):
                reply = await csms.call("ChangeConfiguration", {"key": key, "value": value})
                assert reply == {"status": "Accepted"}
        # Killed, not stopped: an Accepted change was stored before it was answered.
        async with running(config) as kiosk:
            await csms.wait_calls("BootNotification", 2)
            await ready(kiosk)
            assert await get_value(csms, "BlinkRepeat") == "5"
            # config.toml still says 1, as when the CSMS changed it: the CSMS's value holds.
            assert await get_value(csms, "MeterValueSampleInterval") == "2"

    assert csms.violations == []


async def test_meter_values_follow_a_changed_sample_interval(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms:
        config = scenario_config(tmp_path, csms, ocpp__MeterValueSampleInterval=3600)
        async with running(config) as kiosk:
            await ready(kiosk)
            tx = await charge(kiosk)
            # An hour apart: nothing sampled yet. Then once a second.
            assert csms.payloads("MeterValues") == []
            reply = await csms.call(
                "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "1"}
            )
            assert reply == {"status": "Accepted"}
            await csms.wait_calls("MeterValues", 3)
            # 0: no sampled MeterValues at all (OCPP 1.6 §9.1).
            reply = await csms.call(
                "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "0"}
            )
            assert reply == {"status": "Accepted"}
            await drained(kiosk)
            sampled = len(csms.payloads("MeterValues"))
            await asyncio.sleep(1.5)  # more than the old interval: nothing may come
            assert len(csms.payloads("MeterValues")) == sampled

    assert csms.violations == []
    stamps = [
        datetime.fromisoformat(p["meterValue"][0]["timestamp"])
        for p in csms.payloads("MeterValues")
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert gaps and all(0.8 <= gap <= 1.6 for gap in gaps), gaps
    assert all(p["transactionId"] == tx for p in csms.payloads("MeterValues"))
    contexts = {
        v.get("context")
        for p in csms.payloads("MeterValues")
        for v in p["meterValue"][0]["sampledValue"]
    }
    assert contexts == {"Sample.Periodic"}


async def test_heartbeats_follow_a_changed_heartbeat_interval(tmp_path: Path) -> None:
    beats: list[float] = []

    def beat(call: Received) -> dict[str, Any]:
        beats.append(asyncio.get_running_loop().time())
        return {"currentTime": now_iso()}

    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        csms.responders["Heartbeat"] = beat
        await ready(kiosk)
        assert beats == []  # every 300 s, as the boot reply said
        changed_at = asyncio.get_running_loop().time()
        reply = await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"})
        assert reply == {"status": "Accepted"}
        await csms.wait_calls("Heartbeat", 3, within_s=6)
        assert await get_value(csms, "HeartbeatInterval") == "1"

    assert csms.violations == []
    assert all(b.payload == {} for b in csms.calls("Heartbeat"))
    # The first beat follows the new interval at once, not after the old 300 s.
    gaps = [b - a for a, b in itertools.pairwise([changed_at, *beats])]
    assert all(0.8 <= gap <= 2.0 for gap in gaps), gaps


async def test_clear_cache_forgets_cards_the_csms_accepted(tmp_path: Path) -> None:
    async with offline_capable(tmp_path) as (csms, kiosk, take_csms_away):
        await ready(kiosk)
        await charge(kiosk)  # the CSMS accepted the card: it is cached
        await kiosk.present(CARD)
        await csms.wait_calls("StopTransaction")
        await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        assert await csms.call("ClearCache", {}) == {"status": "Accepted"}
        await wait_log(kiosk, "authorization cache cleared (1 entries)")
        violations = list(csms.violations)
        await take_csms_away()
        await kiosk.wait_for("offline", lambda s: s["links"]["csms"]["state"] != "online")
        # Offline, the card is unknown now (AllowOfflineTxForUnknownId is false): refused.
        await kiosk.present(CARD)
        await wait_log(kiosk, "card ****B2C3: Unavailable (None)")
        status = await kiosk.status()
        assert status["connector"]["session"] is None
        assert status["connector"]["status"] == "Available"

    assert violations == []


# -- DataTransfer, actions we do not implement ------------------------------------------------


async def test_data_transfer_answers_unknown_vendor(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call(
            "DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": "{}"}
        )
    assert reply == {"status": "UnknownVendorId"}
    assert csms.violations == []


async def test_unsupported_and_unknown_actions_get_call_errors_logged_without_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "SECRET0042"
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        # A charge point's own request, sent to it: a 1.6 action it does not answer.
        unsupported = await csms.call("Authorize", {"idTag": secret})
        # Not an OCPP 1.6 action: the scripted CSMS would refuse to send it, so let it.
        monkeypatch.setattr(scripted_csms, "request_problem", lambda action, payload: None)
        teleport = await csms.call("Teleport", {"idTag": secret})
        # The link is still up and answering afterwards.
        assert (await csms.call("DataTransfer", {"vendorId": "x"}))["status"] == "UnknownVendorId"
        await wait_log(kiosk, "Teleport refused with NotImplemented")

    assert unsupported == ("error", "NotSupported")
    assert teleport == ("error", "NotImplemented")
    log = daemon_log(kiosk)
    assert "INFO edgepoint.chargepoint.link: CSMS: Authorize refused with NotSupported" in log
    assert "INFO edgepoint.chargepoint.link: CSMS: Teleport refused with NotImplemented" in log
    assert secret not in log
    assert "Traceback" not in log
    assert csms.violations == []


# -- RemoteStartTransaction / RemoteStopTransaction -----------------------------------------


async def test_remote_start_on_an_available_connector_starts_with_that_id_tag(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "REMOTE-1"})
        assert reply == {"status": "Accepted"}
        (start,) = [r.payload for r in await csms.wait_calls("StartTransaction")]
        status = await kiosk.wait_for(
            "charging", lambda s: (s["connector"]["session"] or {}).get("transaction_id") == 1001
        )
        assert status["connector"]["relay_closed"] is True
        # Without connectorId, the first Available connector; a busy one refuses.
        busy = await csms.call("RemoteStartTransaction", {"idTag": "REMOTE-2"})

    assert csms.violations == []
    assert start["connectorId"] == 1 and start["idTag"] == "REMOTE-1"
    # AuthorizeRemoteTxRequests is false by default: the CSMS's request is the authorization.
    assert csms.calls("Authorize") == []
    assert busy == {"status": "Rejected"}
    assert len(csms.calls("StartTransaction")) == 1


async def test_remote_start_is_authorized_first_when_asked_and_a_blocked_tag_gets_nothing(
    tmp_path: Path,
) -> None:
    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, ocpp__AuthorizeRemoteTxRequests=True)) as kiosk,
    ):
        csms.id_tags["BLOCKED-1"] = "Blocked"
        await ready(kiosk)
        blocked = await csms.call(
            "RemoteStartTransaction", {"connectorId": 1, "idTag": "BLOCKED-1"}
        )
        await csms.wait_calls("Authorize")
        await kiosk.wait_for(
            "the verdict",
            lambda s: s["connector"]["phase"] == "Available" and s["outbox"]["depth"] == 0,
        )
        assert csms.calls("StartTransaction") == []
        assert (await kiosk.status())["connector"]["relay_closed"] is False

        accepted = await csms.call(
            "RemoteStartTransaction", {"connectorId": 1, "idTag": "REMOTE-1"}
        )
        await csms.wait_calls("StartTransaction")
        await kiosk.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")

    assert csms.violations == []
    # The request is accepted (the connector is free); the card is decided afterwards.
    assert blocked == {"status": "Accepted"} and accepted == {"status": "Accepted"}
    flow = [
        (r.action, r.payload.get("idTag"))
        for r in csms.received
        if r.action in ("Authorize", "StartTransaction")
    ]
    assert flow == [
        ("Authorize", "BLOCKED-1"),
        ("Authorize", "REMOTE-1"),
        ("StartTransaction", "REMOTE-1"),
    ]


async def test_remote_start_is_rejected_on_a_busy_or_unknown_connector(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        unknown = await csms.call("RemoteStartTransaction", {"connectorId": 2, "idTag": "REMOTE-1"})
        zero = await csms.call("RemoteStartTransaction", {"connectorId": 0, "idTag": "REMOTE-1"})
        await charge(kiosk)
        busy = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "REMOTE-1"})
        await drained(kiosk)

    assert csms.violations == []
    assert unknown == zero == busy == {"status": "Rejected"}
    (start,) = csms.payloads("StartTransaction")
    assert start["idTag"] == CARD


async def test_remote_stop_stops_the_running_transaction_and_rejects_unknown_ids(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        tx = await charge(kiosk)
        unknown = await csms.call("RemoteStopTransaction", {"transactionId": tx + 1000})
        assert (await kiosk.status())["connector"]["status"] == "Charging"
        stopped = await csms.call("RemoteStopTransaction", {"transactionId": tx})
        (stop,) = [r.payload for r in await csms.wait_calls("StopTransaction")]
        await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        again = await csms.call("RemoteStopTransaction", {"transactionId": tx})
        await drained(kiosk)

    assert csms.violations == []
    assert unknown == {"status": "Rejected"}
    assert stopped == {"status": "Accepted"}
    assert again == {"status": "Rejected"}  # the transaction is over
    assert stop["transactionId"] == tx and stop["reason"] == "Remote"
    assert "idTag" not in stop  # nobody presented a card to stop it
    assert statuses(csms, 1)[-3:] == ["Charging", "Finishing", "Available"]


# -- ChangeAvailability -------------------------------------------------------------------------


async def test_an_idle_connector_made_inoperative_refuses_cards_until_operative(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
        assert reply == {"status": "Accepted"}
        await csms.wait_for("Unavailable", lambda: statuses(csms, 1)[-1] == "Unavailable")
        status = await kiosk.wait_for(
            "unavailable", lambda s: s["connector"]["status"] == "Unavailable"
        )
        assert status["connector"]["operative"] is False
        refused = status["events_rejected"]
        await kiosk.present(CARD)
        await kiosk.wait_for("the tap refused", lambda s: s["events_rejected"] > refused)
        # A remote start is refused as well.
        remote = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "REMOTE-1"})
        assert remote == {"status": "Rejected"}

        reply = await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
        assert reply == {"status": "Accepted"}
        await csms.wait_for("Available", lambda: statuses(csms, 1)[-1] == "Available")
        await charge(kiosk)
        await drained(kiosk)

    assert csms.violations == []
    assert csms.calls("Authorize")[0].payload == {"idTag": CARD}
    assert len(csms.calls("Authorize")) == 1  # the refused tap never reached the CSMS
    # Connector 0 (the charge point) stayed Available throughout.
    assert statuses(csms, 0) == ["Available"]
    assert statuses(csms, 1) == ["Available", "Unavailable", "Available", "Preparing", "Charging"]


async def test_inoperative_during_a_session_is_scheduled_until_the_session_ends(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        tx = await charge(kiosk)
        reply = await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
        assert reply == {"status": "Scheduled"}
        await csms.wait_calls("MeterValues", 1)
        status = await drained(kiosk)
        # The session goes on: still charging, relay closed, no Unavailable yet.
        assert status["connector"]["status"] == "Charging"
        assert status["connector"]["relay_closed"] is True
        assert "Unavailable" not in statuses(csms, 1)
        await kiosk.present(CARD)
        await csms.wait_calls("StopTransaction")
        await csms.wait_for("Unavailable", lambda: statuses(csms, 1)[-1] == "Unavailable")
        await kiosk.wait_for("unavailable", lambda s: s["connector"]["status"] == "Unavailable")

    assert csms.violations == []
    (stop,) = csms.payloads("StopTransaction")
    assert stop["transactionId"] == tx and stop["reason"] == "Local"
    assert statuses(csms, 1)[-3:] == ["Charging", "Finishing", "Unavailable"]
    assert "Available" not in statuses(csms, 1)[2:]  # never Available in between


async def test_connector_zero_changes_every_connector(tmp_path: Path) -> None:
    async with (
        ScriptedCsms() as csms,
        running(two_connectors(scenario_config(tmp_path, csms))) as kiosk,
    ):
        await ready(kiosk, connectors=2)
        off = await csms.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
        await csms.wait_for(
            "all Unavailable",
            lambda: all(statuses(csms, c)[-1:] == ["Unavailable"] for c in (0, 1, 2)),
        )
        status = await kiosk.wait_for(
            "unavailable",
            lambda s: all(c["status"] == "Unavailable" for c in s["connectors"]),
        )
        assert [c["operative"] for c in status["connectors"]] == [False, False]
        on = await csms.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
        await csms.wait_for(
            "all Available",
            lambda: all(statuses(csms, c)[-1:] == ["Available"] for c in (0, 1, 2)),
        )
        await ready(kiosk, connectors=2)
        unknown = await csms.call("ChangeAvailability", {"connectorId": 3, "type": "Inoperative"})

    assert csms.violations == []
    assert off == on == {"status": "Accepted"}
    # No such connector: a well-formed request the charge point cannot carry out.
    assert unknown == {"status": "Rejected"}
    for cid in (0, 1, 2):
        assert statuses(csms, cid) == ["Available", "Unavailable", "Available"], cid


async def test_availability_survives_a_restart(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms:
        config = two_connectors(scenario_config(tmp_path, csms))
        async with running(config) as kiosk:
            await ready(kiosk, connectors=2)
            reply = await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
            assert reply == {"status": "Accepted"}
            await csms.wait_for("Unavailable", lambda: statuses(csms, 1)[-1:] == ["Unavailable"])
        booted = len(csms.calls("StatusNotification"))
        # Killed: nothing but the stored availability can bring Inoperative back.
        async with running(config) as kiosk:
            await csms.wait_calls("BootNotification", 2)
            status = await kiosk.wait_for(
                "restarted",
                lambda s: (
                    s["links"]["csms"]["state"] == "online"
                    and s["outbox"]["depth"] == 0
                    and all(c["last_sample"] is not None for c in s["connectors"])
                ),
            )
            after_restart = {
                p["connectorId"]: p["status"] for p in csms.payloads("StatusNotification")[booted:]
            }
            assert [c["status"] for c in status["connectors"]] == ["Unavailable", "Available"]
            assert [c["operative"] for c in status["connectors"]] == [False, True]
            # A card goes to the connector that is Available, not to the first one.
            await kiosk.present(CARD)
            await kiosk.wait_for(
                "charging on 2", lambda s: s["connectors"][1]["status"] == "Charging"
            )
            # And back: connector 1 is Operative again, also after the next restart.
            reply = await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
            assert reply == {"status": "Accepted"}
            await csms.wait_for("Available", lambda: statuses(csms, 1)[-1:] == ["Available"])
        async with running(config) as kiosk:
            await csms.wait_calls("BootNotification", 3)
            await kiosk.wait_for(
                "connector 1 available",
                lambda s: (
                    s["connectors"][0]["status"] == "Available" and s["connectors"][0]["operative"]
                ),
            )

    assert csms.violations == []
    assert after_restart == {0: "Available", 1: "Unavailable", 2: "Available"}
    assert statuses(csms, 1)[-1] == "Available"


# -- UnlockConnector -----------------------------------------------------------------------------


async def test_unlock_during_a_session_stops_it_with_reason_unlock_command(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        tx = await charge(kiosk)
        unlocked = await csms.call("UnlockConnector", {"connectorId": 1})
        (stop,) = [r.payload for r in await csms.wait_calls("StopTransaction")]
        status = await kiosk.wait_for(
            "available", lambda s: s["connector"]["status"] == "Available"
        )
        assert status["connector"]["relay_closed"] is False
        idle = await csms.call("UnlockConnector", {"connectorId": 1})
        missing = await csms.call("UnlockConnector", {"connectorId": 2})
        await drained(kiosk)

    assert csms.violations == []
    assert unlocked == idle == {"status": "Unlocked"}  # no cable lock: the cable is free
    assert missing == {"status": "NotSupported"}
    assert stop["transactionId"] == tx and stop["reason"] == "UnlockCommand"
    assert len(csms.calls("StopTransaction")) == 1
    assert statuses(csms, 1)[-3:] == ["Charging", "Finishing", "Available"]


# -- Reset -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "reason"), [("Soft", "SoftReset"), ("Hard", "HardReset")])
async def test_reset_stops_the_session_then_the_daemon_comes_back_by_itself(
    tmp_path: Path, kind: str, reason: str
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        pid = kiosk.daemon.proc.pid if kiosk.daemon.proc else None
        tx = await charge(kiosk)
        reply = await csms.call("Reset", {"type": kind})
        await csms.wait_calls("BootNotification", 2)
        status = await kiosk.wait_for(
            "back, Available and idle",
            lambda s: (
                s["links"]["csms"]["state"] == "online"
                and s["connector"]["status"] == "Available"
                and s["connector"]["last_sample"] is not None
                and s["outbox"]["depth"] == 0
            ),
        )
        # The same process (exec), not a new one started by someone else.
        assert kiosk.daemon.proc is not None and kiosk.daemon.proc.pid == pid
        assert kiosk.daemon.proc.poll() is None
        # A session after the reset works and gets the next transaction.
        await charge(kiosk)

    assert csms.violations == []
    assert reply == {"status": "Accepted"}
    assert status["connector"]["session"] is None and status["connector"]["relay_closed"] is False
    stops = csms.calls("StopTransaction")
    assert [s.payload["transactionId"] for s in stops] == [tx]  # exactly once
    assert stops[0].payload["reason"] == reason
    boots = csms.calls("BootNotification")
    # Stopped before the restart: on the first connection, before the second boot.
    assert stops[0].connection == 1 and boots[1].connection == 2
    assert csms.received.index(stops[0]) < csms.received.index(boots[1])
    # The restarted charge point reports where it stands: everything Available.
    after = csms.received[csms.received.index(boots[1]) :]
    first_reports = [
        (r.payload["connectorId"], r.payload["status"])
        for r in after
        if r.action == "StatusNotification"
    ][:2]
    assert sorted(first_reports) == [(0, "Available"), (1, "Available")]
    assert "restarting" in daemon_log(kiosk)


# -- TriggerMessage --------------------------------------------------------------------------------


async def test_trigger_message_sends_each_message_after_its_confirmation(tmp_path: Path) -> None:
    async with (
        ScriptedCsms() as csms,
        running(two_connectors(scenario_config(tmp_path, csms))) as kiosk,
    ):
        await ready(kiosk, connectors=2)
        # Each triggered message must come after TriggerMessage.conf. Frames from one
        # connection are handled in order, and a responder holds up the ones behind it:
        # so the reply was in before the triggered message iff the call is done by then.
        pending: list[asyncio.Task[Any]] = []
        after_conf: list[tuple[str, bool]] = []

        answers: dict[str, dict[str, Any]] = {
            "BootNotification": {"status": "Accepted", "interval": csms.heartbeat_interval},
            "Heartbeat": {},
        }

        def note(action: str) -> Callable[[Received], Any]:
            async def respond(call: Received) -> dict[str, Any]:
                triggered_by = pending[-1]  # the next trigger waits for this call
                await asyncio.sleep(0.05)
                after_conf.append((action, triggered_by.done()))
                answer = dict(answers.get(action, {}))
                if action in answers:
                    answer["currentTime"] = now_iso()
                return answer

            return respond

        async def trigger(message: str, n: int = 1, **extra: Any) -> Any:
            action = message
            before = len(csms.calls(action))
            payload: dict[str, Any] = {"requestedMessage": message, **extra}
            pending.append(asyncio.ensure_future(csms.call("TriggerMessage", payload)))
            reply = await pending[-1]
            if reply == {"status": "Accepted"}:
                await csms.wait_calls(action, before + n)
            return reply

        for action in (
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "MeterValues",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
        ):
            csms.responders[action] = note(action)

        replies = {
            "boot": await trigger("BootNotification"),
            "heartbeat": await trigger("Heartbeat"),
            "status 2": await trigger("StatusNotification", connectorId=2),
            "status all": await trigger("StatusNotification", n=3),
            "meter 1": await trigger("MeterValues", connectorId=1),
            "diagnostics": await trigger("DiagnosticsStatusNotification"),
            "firmware": await trigger("FirmwareStatusNotification"),
            "status 3": await trigger("StatusNotification", connectorId=3),
            "meter 3": await trigger("MeterValues", connectorId=3),
        }
        await drained(kiosk)

    assert csms.violations == []
    rejected = {"status 3", "meter 3"}
    assert all(replies[k] == {"status": "Accepted"} for k in replies.keys() - rejected), replies
    assert all(replies[k] == {"status": "Rejected"} for k in rejected), replies
    assert after_conf and all(done for _, done in after_conf), after_conf
    # One triggered message per trigger (three StatusNotifications for "all").
    assert [a for a, _ in after_conf] == [
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        *["StatusNotification"] * 3,
        "MeterValues",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ]
    triggered_statuses = csms.payloads("StatusNotification")[-4:]
    assert [p["connectorId"] for p in triggered_statuses] == [2, 0, 1, 2]
    assert all(p["status"] == "Available" for p in triggered_statuses)
    (meter,) = csms.payloads("MeterValues")
    assert meter["connectorId"] == 1 and "transactionId" not in meter
    assert {v["context"] for v in meter["meterValue"][0]["sampledValue"]} == {"Trigger"}
    assert csms.payloads("DiagnosticsStatusNotification") == [{"status": "Idle"}]
    assert csms.payloads("FirmwareStatusNotification") == [{"status": "Idle"}]
    # A triggered BootNotification does not start a new connection or a new boot sequence.
    assert {r.connection for r in csms.received} == {1}


async def test_triggered_meter_values_carry_the_transaction_of_a_running_session(
    tmp_path: Path,
) -> None:
    # No sampled MeterValues: every MeterValues the CSMS sees is a triggered one.
    async with ScriptedCsms() as csms:
        config = two_connectors(scenario_config(tmp_path, csms, ocpp__MeterValueSampleInterval=0))
        async with running(config) as kiosk:
            await ready(kiosk, connectors=2)
            tx = await charge(kiosk)
            reply = await csms.call("TriggerMessage", {"requestedMessage": "MeterValues"})
            await csms.wait_calls("MeterValues", 2)
            await drained(kiosk)

    assert csms.violations == []
    assert reply == {"status": "Accepted"}
    by_connector = {p["connectorId"]: p for p in csms.payloads("MeterValues")}
    assert by_connector[1]["transactionId"] == tx
    assert "transactionId" not in by_connector[2]
    contexts = {
        v["context"] for p in by_connector.values() for v in p["meterValue"][0]["sampledValue"]
    }
    assert contexts == {"Trigger"}


# -- Local Auth List Management ------------------------------------------------------------

LISTED = "04AAAA01"  # Accepted in the list
BLOCKED = "04AAAA02"  # Blocked in the list
LATER = "04AAAA03"  # added by a differential update
DROPPED = "04AAAA04"  # removed by a differential update
STRANGER = "04AAAA05"  # never listed


def entry(tag: str, status: str | None = "Accepted") -> dict[str, Any]:
    return {"idTag": tag} if status is None else {"idTag": tag, "idTagInfo": {"status": status}}


async def test_send_local_list_full_then_differential_and_the_list_decides_offline(
    tmp_path: Path,
) -> None:
    async with offline_capable(tmp_path) as (csms, kiosk, take_csms_away):
        await ready(kiosk)

        async def version() -> int:
            reply = await csms.call("GetLocalListVersion", {})
            found: int = reply["listVersion"]
            return found

        async def send(update: str, list_version: int, entries: list[dict[str, Any]]) -> str:
            payload = {
                "listVersion": list_version,
                "updateType": update,
                "localAuthorizationList": entries,
            }
            status: str = (await csms.call("SendLocalList", payload))["status"]
            return status

        versions = [await version()]
        full = await send(
            "Full",
            1,
            [
                entry(LISTED),
                entry(BLOCKED, "Accepted"),
                entry(DROPPED),
                entry("04AAAA09", "Blocked"),
            ],
        )
        versions.append(await version())
        differential = await send(
            "Differential",
            2,
            [
                entry(LATER),  # add
                entry(BLOCKED, "Blocked"),  # update
                entry(DROPPED, None),  # remove
            ],
        )
        versions.append(await version())
        stale = await send("Differential", 2, [entry(STRANGER)])
        too_long = await send("Full", 3, [entry(f"T{n:05}") for n in range(1001)])
        versions.append(await version())

        violations = list(csms.violations)
        await take_csms_away()
        await kiosk.wait_for("offline", lambda s: s["links"]["csms"]["state"] != "online")

        # Offline: the list decides (LocalAuthorizeOffline true).
        await charge_offline(kiosk, LISTED)
        await kiosk.present(LISTED)
        await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        await charge_offline(kiosk, LATER)
        await kiosk.present(LATER)
        await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        # Blocked in the list; removed from it (and listed cards are never cached); never
        # listed. AllowOfflineTxForUnknownId is false: the last two are unknown, refused.
        for card, verdict in (
            (BLOCKED, "Blocked (LocalList)"),
            (DROPPED, "Unavailable (None)"),
            (STRANGER, "Unavailable (None)"),
        ):
            await kiosk.present(card)
            await wait_log(kiosk, f"card ****{card[-4:]}: {verdict}")
            status = await kiosk.wait_for("idle", lambda s: s["connector"]["phase"] == "Available")
            assert status["connector"]["session"] is None
            assert status["connector"]["relay_closed"] is False

    assert violations == []
    assert versions == [0, 1, 2, 2]
    assert (full, differential, stale, too_long) == (
        "Accepted",
        "Accepted",
        "VersionMismatch",
        "Failed",
    )
    log = daemon_log(kiosk)
    assert f"card ****{LISTED[-4:]}: Accepted (LocalList)" in log
    assert f"card ****{LATER[-4:]}: Accepted (LocalList)" in log
    # Not one of them asked the CSMS: it was the list's call, never an Authorize.
    assert csms.calls("Authorize") == []
