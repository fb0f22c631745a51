"""The CSMS's control API commands over a real socket, against scripted raw-WebSocket chargers."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from csms_fixtures import clock_fixture  # noqa: F401  (fixture)
from csms_support import CP_ID, CP_KEY, TEST_ITERATIONS, FakeClock, open_ws
from scripted_charger import SILENCE, Error, scripted_charger, wait_until
from websockets.exceptions import InvalidStatus

from edgepoint.control.api import Access, ControlApi
from edgepoint.control.client import request
from edgepoint.control.server import ControlServer
from edgepoint.csms.api import COMMAND_FLAGS, mask_tags, register_csms_commands
from edgepoint.csms.load import LoadBalancer
from edgepoint.csms.operator import SiteOperator
from edgepoint.csms.reports import SiteReports
from edgepoint.csms.server import SiteCsms
from edgepoint.errors import ControlError

pytestmark = pytest.mark.timeout(30)

CP2_ID = "CP-2"
CP2_KEY = "fedcba9876543210fedc"
CARD = "04A1B2C3"
SITE_LIMIT_W = 7400
PROFILE = {
    "chargingProfileId": 7,
    "stackLevel": 1,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Relative",
    "chargingSchedule": {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
    },
}


@dataclass
class Site:
    """A running SiteCsms whose commands are served on a control socket."""

    csms: SiteCsms
    balancer: LoadBalancer
    sock: Path
    clock: FakeClock
    tasks: list[asyncio.Task[None]]

    @property
    def port(self) -> int:
        return self.csms.port

    async def ask(self, cmd: str, **args: Any) -> Any:
        return await request(self.sock, cmd, **args)

    async def refused(self, cmd: str, **args: Any) -> ControlError:
        with pytest.raises(ControlError) as caught:
            await self.ask(cmd, **args)
        return caught.value

    def start_balancer(self) -> None:
        self.tasks.append(asyncio.create_task(self.balancer.run()))


@pytest.fixture(name="sock")
def sock_fixture() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="ep-api-", dir="/tmp"))
    try:
        yield folder / "csms.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build(csms: SiteCsms, clock: FakeClock) -> tuple[ControlApi, LoadBalancer]:
    operator = SiteOperator(csms, clock, default_timeout_s=5)
    balancer = LoadBalancer(
        csms, clock, site_limit_w=SITE_LIMIT_W, poll_interval_s=0.05, call_timeout_s=5
    )
    api = ControlApi()
    register_csms_commands(api, csms, operator, SiteReports(csms, clock), balancer)
    return api, balancer


@pytest.fixture(name="site")
async def site_fixture(tmp_path: Path, sock: Path, clock: FakeClock) -> AsyncIterator[Site]:
    csms = SiteCsms(
        tmp_path / "csms.db",
        "127.0.0.1",
        0,
        clock,
        heartbeat_interval=60,
        auth_iterations=TEST_ITERATIONS,
        store_pending=True,
    )
    await csms.register_charge_point(CP_ID, CP_KEY)
    await csms.register_charge_point(CP2_ID, CP2_KEY)
    api, balancer = build(csms, clock)
    server = ControlServer(sock, api, Access(os.geteuid(), os.getegid(), "test-group"))
    tasks = [asyncio.create_task(csms.run()), asyncio.create_task(server.run())]
    await asyncio.wait_for(csms.started.wait(), 5)
    await wait_until(sock.exists)
    try:
        yield Site(csms, balancer, sock, clock, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the command table ----------------------------------------------------------------------


def test_every_flagged_command_is_registered_with_its_flags(
    tmp_path: Path, clock: FakeClock
) -> None:
    api, _ = build(SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock), clock)
    described = {c["name"]: c for c in api.describe(may_act=True)}
    assert set(described) == set(COMMAND_FLAGS)
    for name, (mutates, hardware) in COMMAND_FLAGS.items():
        assert (described[name]["mutates"], described[name]["hardware"]) == (
            mutates or hardware,
            hardware,
        ), name
        # What the daemon's socket forwards to the CSMS service.
        assert name.split(".")[0] in ("chargers", "transactions", "csms", "load"), name
    queries = {"chargers.list", "chargers.show", "transactions.list", "csms.status"}
    assert all(COMMAND_FLAGS[name] == (False, False) for name in queries)
    for name in ("reset", "remote_start", "remote_stop", "unlock", "availability"):
        assert COMMAND_FLAGS[f"chargers.{name}"] == (True, True), name
    for name in ("set_charging_profile", "update_firmware", "get_diagnostics", "reserve_now"):
        assert COMMAND_FLAGS[f"chargers.{name}"] == (True, True), name
    for name in ("change_configuration", "clear_cache", "send_local_list"):
        assert COMMAND_FLAGS[f"chargers.{name}"] == (True, False), name
    # Card ids are private arguments: the audit log masks them.
    assert api.command("chargers.remote_start").private == {"id_tag"}  # type: ignore[union-attr]


async def test_a_csms_that_is_not_serving_is_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    csms = SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock)
    api, _ = build(csms, clock)
    for name, args in (
        ("chargers.list", {}),
        ("transactions.list", {}),
        ("chargers.reset", {"charger": CP_ID, "type": "Soft"}),
    ):
        command = api.command(name)
        assert command is not None
        with pytest.raises(ControlError) as caught:
            await command.handler(**args)
        assert caught.value.code == "unavailable", name
    status = await api.command("csms.status").handler()  # type: ignore[union-attr]
    assert status["listening"] is False and status["connected"] == []


def test_card_ids_are_masked_anywhere_in_a_result() -> None:
    masked = mask_tags(
        {"idTag": CARD, "list": [{"id_tag": "DEADBEEF", "parentIdTag": "P1"}], "n": 3}
    )
    assert masked == {
        "idTag": "****B2C3",
        "list": [{"id_tag": "****BEEF", "parentIdTag": "****1"}],
        "n": 3,
    }


# -- queries --------------------------------------------------------------------------------


def status_notification(connector: int, status: str, error: str = "NoError") -> dict[str, Any]:
    return {
        "connectorId": connector,
        "errorCode": error,
        "status": status,
        "timestamp": "2025-06-01T11:00:00Z",
    }


async def test_chargers_list_show_and_status(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        await charger.call("StatusNotification", status_notification(1, "Available"))
        await charger.call("StatusNotification", status_notification(2, "Faulted", "GroundFailure"))
        refused = await charger.call("StatusNotification", status_notification(99, "Available"))
        assert refused == ("error", "PropertyConstraintViolation")

        chargers = {c["id"]: c for c in await site.ask("chargers.list")}
        assert set(chargers) == {CP_ID, CP2_ID}
        one = chargers[CP_ID]
        assert (one["online"], chargers[CP2_ID]["online"]) == (True, False)
        assert (one["vendor"], one["model"]) == ("Test", "Scripted")
        assert [(c["connector_id"], c["status"], c["error_code"]) for c in one["connectors"]] == [
            (1, "Available", "NoError"),
            (2, "Faulted", "GroundFailure"),
        ]
        assert one["health"]["error_share"] == 0.5
        assert one["last_seen"] is not None and chargers[CP2_ID]["last_seen"] is None
        assert all(c["health"] is None for c in await site.ask("chargers.list", health=False))

        shown = await site.ask("chargers.show", charger=CP_ID)
        assert shown["online"] is True
        assert [c["status"] for c in shown["connectors"]] == ["Available", "Faulted"]
        assert shown["connectors"][1]["in_error"] is True
        assert [(a["kind"], a["reason"], a["action"]) for a in shown["anomalies"]] == [
            ("refused", "connector_out_of_range", "StatusNotification")
        ]
        assert shown["limiter"]["calls"] >= 4  # boot and three statuses
        assert shown["calls"]["calls_refused"] == 1
        offline = await site.ask("chargers.show", charger=CP2_ID)
        assert (offline["online"], offline["limiter"], offline["anomalies"]) == (False, None, [])
        missing = await site.refused("chargers.show", charger="CP-9")
        assert missing.code == "not_found"

        status = await site.ask("csms.status")
        assert status["listening"] is True and status["port"] == site.port
        assert status["connected"] == [CP_ID]
        assert status["worker"]["writes"] > 0
        assert status["pending"] == 0 and status["site_limit_w"] == SITE_LIMIT_W


async def test_unknown_chargers_are_pending_in_csms_db(site: Site) -> None:
    for _ in range(2):
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(site.port, "NEW-1", "whatever-0123456789"):
                pass
        assert refused.value.response.status_code == 404
    assert site.csms.pending is None  # kept in csms.db, where `chargers admit` finds it
    pending = await site.ask("chargers.pending")
    assert [(p["id"], p["attempts"], p["last_address"]) for p in pending] == [
        ("NEW-1", 2, "127.0.0.1")
    ]
    assert pending[0]["first_seen"] == pending[0]["last_seen"] == "2025-06-01T12:00:00.000Z"
    assert (await site.ask("csms.status"))["refused"] == {"404": 2}


async def test_transactions_list_and_show(site: Site) -> None:
    store = site.csms.store
    assert store is not None
    await store.cards.add(CARD, "Alice")
    async with scripted_charger(site.port) as charger:
        first = await charger.start_transaction(1, CARD, 1000, "2025-06-01T10:00:00Z")
        await charger.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": first,
                "meterValue": [
                    {
                        "timestamp": "2025-06-01T10:30:00Z",
                        "sampledValue": [{"value": "1.5", "unit": "kWh"}],
                    }
                ],
            },
        )
        await charger.stop_transaction(first, 2500, "2025-06-01T11:00:00Z")
        second = await charger.start_transaction(2, CARD, 5000, "2025-06-01T11:30:00Z")

    rows = await site.ask("transactions.list")
    assert [row["transaction_id"] for row in rows] == [second, first]
    assert {row["id_tag"] for row in rows} == {"****B2C3"}  # never the card id itself
    done = rows[1]
    assert (done["energy_wh"], done["live"], done["meter_start"], done["meter_stop"]) == (
        1500,
        False,
        1000,
        2500,
    )
    assert (rows[0]["live"], rows[0]["stopped_at"]) == (True, None)
    ids = [row["transaction_id"] for row in await site.ask("transactions.list", live=True)]
    assert ids == [second]
    ids = [row["transaction_id"] for row in await site.ask("transactions.list", live=False)]
    assert ids == [first]
    assert await site.ask("transactions.list", charger=CP2_ID) == []
    since = await site.ask("transactions.list", since="2025-06-01T13:00:00+02:00")
    assert [row["transaction_id"] for row in since] == [second]
    assert len(await site.ask("transactions.list", charger=CP_ID, limit=1)) == 1
    for args in ({"since": "2025-06-01 11:00"}, {"limit": 0}, {"live": "yes"}):
        assert (await site.refused("transactions.list", **args)).code == "bad_request", args

    shown = await site.ask("transactions.show", transaction=first)
    assert shown["id_tag"] == "****B2C3" and shown["id_tag_status"] == "Accepted"
    assert [(s["value"], s["unit"], s["connector_id"]) for s in shown["meter_values"]] == [
        ("1.5", "kWh", 1)
    ]
    assert shown["meter_values"][0]["timestamp"] == "2025-06-01T10:30:00.000Z"
    assert (await site.refused("transactions.show", transaction=999)).code == "not_found"


async def test_load_limits_follow_the_running_transactions(site: Site) -> None:
    site.start_balancer()
    async with scripted_charger(site.port) as charger:
        tx = await charger.start_transaction(1, CARD, 0, "2025-06-01T11:00:00Z")
        await charger.wait_calls("SetChargingProfile")

        async def accepted() -> dict[str, Any]:
            async with asyncio.timeout(5):
                while True:
                    limits: dict[str, Any] = await site.ask("load.limits")
                    if limits["limits"] and limits["limits"][0]["state"] == "accepted":
                        return limits
                    await asyncio.sleep(0.02)

        limits = await accepted()
        assert (limits["enabled"], limits["site_limit_w"]) == (True, SITE_LIMIT_W)
        (limit,) = limits["limits"]
        assert (limit["transaction_id"], limit["charge_point_id"], limit["connector_id"]) == (
            tx,
            CP_ID,
            1,
        )
        assert (limit["limit_w"], limit["applied_w"]) == (SITE_LIMIT_W, SITE_LIMIT_W)
        shown = await site.ask("chargers.show", charger=CP_ID)
        assert [x["transaction_id"] for x in shown["load_limits"]] == [tx]


async def test_load_limits_without_load_management(tmp_path: Path, clock: FakeClock) -> None:
    csms = SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock)
    api = ControlApi()
    register_csms_commands(api, csms, SiteOperator(csms, clock), SiteReports(csms, clock), None)
    command = api.command("load.limits")
    assert command is not None
    assert await command.handler() == {
        "enabled": False,
        "site_limit_w": None,
        "rounds": 0,
        "limits": [],
    }


# -- operator commands ----------------------------------------------------------------------

DEFAULT = object()  # the scripted charger's own plausible reply

# (command, its args besides `charger`, the CALL the charger must get, the reply it gives)
COMMANDS: list[tuple[str, dict[str, Any], str, dict[str, Any], Any]] = [
    (
        "chargers.remote_start",
        {"id_tag": CARD, "connector": 2},
        "RemoteStartTransaction",
        {"idTag": CARD, "connectorId": 2},
        {"status": "Accepted"},
    ),
    (
        "chargers.remote_start",
        {"id_tag": CARD, "charging_profile": {**PROFILE, "chargingProfilePurpose": "TxProfile"}},
        "RemoteStartTransaction",
        {"idTag": CARD, "chargingProfile": {**PROFILE, "chargingProfilePurpose": "TxProfile"}},
        {"status": "Rejected"},
    ),
    (
        "chargers.remote_stop",
        {"transaction": 42},
        "RemoteStopTransaction",
        {"transactionId": 42},
        {"status": "Accepted"},
    ),
    ("chargers.reset", {"type": "Hard"}, "Reset", {"type": "Hard"}, {"status": "Accepted"}),
    ("chargers.reset", {"type": "Soft"}, "Reset", {"type": "Soft"}, {"status": "Rejected"}),
    (
        "chargers.unlock",
        {"connector": 2},
        "UnlockConnector",
        {"connectorId": 2},
        {"status": "Unlocked"},
    ),
    (
        "chargers.availability",
        {"connector": 0, "operative": False},
        "ChangeAvailability",
        {"connectorId": 0, "type": "Inoperative"},
        {"status": "Scheduled"},
    ),
    (
        "chargers.availability",
        {"connector": 1, "operative": True},
        "ChangeAvailability",
        {"connectorId": 1, "type": "Operative"},
        {"status": "Accepted"},
    ),
    (
        "chargers.get_configuration",
        {"keys": ["HeartbeatInterval", "Nope"]},
        "GetConfiguration",
        {"key": ["HeartbeatInterval", "Nope"]},
        {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
            "unknownKey": ["Nope"],
        },
    ),
    ("chargers.get_configuration", {}, "GetConfiguration", {}, DEFAULT),
    (
        "chargers.change_configuration",
        {"key": "HeartbeatInterval", "value": "120"},
        "ChangeConfiguration",
        {"key": "HeartbeatInterval", "value": "120"},
        {"status": "RebootRequired"},
    ),
    ("chargers.clear_cache", {}, "ClearCache", {}, {"status": "Accepted"}),
    (
        "chargers.trigger",
        {"message": "StatusNotification", "connector": 1},
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "connectorId": 1},
        {"status": "Accepted"},
    ),
    (
        "chargers.trigger",
        {"message": "Heartbeat"},
        "TriggerMessage",
        {"requestedMessage": "Heartbeat"},
        {"status": "NotImplemented"},
    ),
    ("chargers.get_local_list_version", {}, "GetLocalListVersion", {}, {"listVersion": 4}),
    (
        "chargers.data_transfer",
        {"vendor_id": "com.example", "message_id": "ping", "data": "x"},
        "DataTransfer",
        {"vendorId": "com.example", "messageId": "ping", "data": "x"},
        {"status": "Accepted", "data": "pong"},
    ),
    (
        "chargers.reserve_now",
        {
            "connector": 1,
            "id_tag": CARD,
            "expiry": "2025-06-01T15:00:00+02:00",
            "reservation": 5,
            "parent_id_tag": "PARENT01",
        },
        "ReserveNow",
        {
            "connectorId": 1,
            "idTag": CARD,
            "expiryDate": "2025-06-01T13:00:00.000Z",
            "reservationId": 5,
            "parentIdTag": "PARENT01",
        },
        {"status": "Occupied"},
    ),
    (
        "chargers.cancel_reservation",
        {"reservation": 5},
        "CancelReservation",
        {"reservationId": 5},
        {"status": "Accepted"},
    ),
    (
        "chargers.set_charging_profile",
        {"connector": 1, "profile": PROFILE},
        "SetChargingProfile",
        {"connectorId": 1, "csChargingProfiles": PROFILE},
        {"status": "Accepted"},
    ),
    (
        "chargers.clear_charging_profile",
        {"profile": 3},
        "ClearChargingProfile",
        {"id": 3},
        {"status": "Unknown"},
    ),
    (
        "chargers.clear_charging_profile",
        {"connector": 1, "purpose": "TxProfile", "stack_level": 0},
        "ClearChargingProfile",
        {"connectorId": 1, "chargingProfilePurpose": "TxProfile", "stackLevel": 0},
        {"status": "Accepted"},
    ),
    (
        "chargers.get_composite_schedule",
        {"connector": 1, "duration": 3600, "rate_unit": "W"},
        "GetCompositeSchedule",
        {"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"},
        DEFAULT,
    ),
    (
        "chargers.get_diagnostics",
        {"location": "ftp://diag.example/up", "retries": 2, "start_time": "2025-06-01T00:00:00Z"},
        "GetDiagnostics",
        {
            "location": "ftp://diag.example/up",
            "retries": 2,
            "startTime": "2025-06-01T00:00:00.000Z",
        },
        DEFAULT,
    ),
    (
        "chargers.update_firmware",
        {
            "location": "https://fw.example/1.2.bin",
            "retrieve_date": "2025-06-02T03:00:00Z",
            "retries": 1,
            "retry_interval": 60,
        },
        "UpdateFirmware",
        {
            "location": "https://fw.example/1.2.bin",
            "retrieveDate": "2025-06-02T03:00:00.000Z",
            "retries": 1,
            "retryInterval": 60,
        },
        {},
    ),
    (
        "chargers.call",
        {"action": "GetLocalListVersion", "payload": {}},
        "GetLocalListVersion",
        {},
        {"listVersion": 9},
    ),
]


@pytest.mark.parametrize(
    ("command", "args", "action", "sent", "reply"),
    COMMANDS,
    ids=[f"{c[0]}-{n}" for n, c in enumerate(COMMANDS)],
)
async def test_operator_command_round_trip(
    site: Site, command: str, args: dict[str, Any], action: str, sent: dict[str, Any], reply: Any
) -> None:
    async with scripted_charger(site.port) as charger:
        if reply is not DEFAULT:
            charger.responders[action] = lambda _payload: reply
        answer = await site.ask(command, charger=CP_ID, **args)
        assert charger.calls(action) == [sent]
        assert charger.problems() == []
        if reply is DEFAULT:
            assert answer and isinstance(answer, dict)
        else:
            assert answer == reply


async def test_every_charger_command_is_covered_by_a_round_trip() -> None:
    tested = {case[0] for case in COMMANDS} | {"chargers.send_local_list", "chargers.disconnect"}
    charger_commands = {name for name in COMMAND_FLAGS if name.startswith("chargers.")}
    assert charger_commands - {"chargers.list", "chargers.show", "chargers.pending"} == tested


async def test_remote_start_logs_the_caller_with_the_card_masked(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgepoint.control.api")
    async with scripted_charger(site.port):
        await site.ask("chargers.remote_start", charger=CP_ID, id_tag=CARD)
    audit = [r.getMessage() for r in caplog.records if "chargers.remote_start" in r.getMessage()]
    assert len(audit) == 1
    assert "****B2C3" in audit[0] and CARD not in audit[0]


async def test_send_local_list_full_then_nothing_to_send(site: Site) -> None:
    store = site.csms.store
    assert store is not None
    await store.cards.add(CARD, "Alice")
    await store.cards.add("DEADBEEF", "Bob")
    async with scripted_charger(site.port) as charger:
        outcome = await site.ask("chargers.send_local_list", charger=CP_ID, full=True)
        assert outcome["update_type"] == "Full" and outcome["entries"] == 2
        assert (outcome["sent"], outcome["reply"]) == (True, {"status": "Accepted"})
        (update,) = charger.calls("SendLocalList")
        # The charger gets the real card ids; only our answers mask them.
        assert {e["idTag"] for e in update["localAuthorizationList"]} == {CARD, "DEADBEEF"}
        version = outcome["list_version"]
        charger.responders["GetLocalListVersion"] = lambda _p: {"listVersion": version}
        again = await site.ask("chargers.send_local_list", charger=CP_ID)
        assert (again["update_type"], again["sent"], again["reply"]) == (
            "Differential",
            False,
            None,
        )
        assert len(charger.calls("SendLocalList")) == 1


# -- failures -------------------------------------------------------------------------------


async def test_offline_and_unknown_chargers(site: Site) -> None:
    offline = await site.refused("chargers.reset", charger=CP2_ID, type="Soft")
    assert offline.code == "unavailable" and CP2_ID in str(offline)
    unknown = await site.refused("chargers.unlock", charger="CP-9", connector=1)
    assert unknown.code == "not_found"


async def test_a_call_error_fails_with_the_chargers_code(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        charger.responders["Reset"] = lambda _p: Error("NotSupported", "no resets here")
        failed = await site.refused("chargers.reset", charger=CP_ID, type="Hard")
    assert failed.code == "failed"
    assert "NotSupported" in str(failed) and "no resets here" in str(failed)


async def test_a_silent_charger_fails_with_no_answer(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        charger.responders["ClearCache"] = lambda _p: SILENCE
        failed = await site.refused("chargers.clear_cache", charger=CP_ID, timeout_s=0.3)
    assert failed.code == "failed" and "no answer" in str(failed)


async def test_a_connection_lost_mid_call_is_unavailable(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        hang = asyncio.Event()

        async def hang_up(_payload: dict[str, Any]) -> Any:
            await charger.ws.close()
            await hang.wait()
            return SILENCE

        charger.responders["Reset"] = hang_up
        lost = await site.refused("chargers.reset", charger=CP_ID, type="Soft")
    assert lost.code == "unavailable"


async def test_bad_requests_are_refused_before_the_wire(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        for command, args in (
            ("chargers.reset", {"type": "Medium"}),
            ("chargers.reset", {}),  # missing argument
            ("chargers.reset", {"type": "Soft", "timeout_s": 0}),
            ("chargers.unlock", {"connector": "1"}),
            ("chargers.trigger", {"message": "Coffee"}),
            ("chargers.call", {"action": "Heartbeat", "payload": {}}),  # not a CSMS CALL
            ("chargers.call", {"action": "Reset", "payload": {"type": "Medium"}}),
            ("chargers.get_configuration", {"keys": [1, 2]}),
            ("chargers.get_composite_schedule", {"connector": 1, "duration": 60, "rate_unit": "V"}),
            (
                "chargers.reserve_now",
                {"connector": 1, "id_tag": CARD, "expiry": "2025-06-01T15:00:00", "reservation": 1},
            ),
            ("chargers.update_firmware", {"location": "x", "retrieve_date": "tomorrow"}),
        ):
            refused = await site.refused(command, charger=CP_ID, **args)
            assert refused.code == "bad_request", (command, args, refused)
        assert charger.received == []


# -- disconnect ------------------------------------------------------------------------------


async def test_disconnect_closes_the_connection_and_records_why(site: Site) -> None:
    async with scripted_charger(site.port) as charger:
        answer = await site.ask("chargers.disconnect", charger=CP_ID, reason="re-keyed")
        assert answer == {"disconnected": True}
        await asyncio.wait_for(charger.ws.wait_closed(), 5)
        assert (charger.ws.close_code, charger.ws.close_reason) == (1008, "re-keyed")
    await wait_until(lambda: CP_ID not in site.csms.connected_ids())
    shown = await site.ask("chargers.show", charger=CP_ID)
    assert [(a["kind"], a["reason"], a["detail"]) for a in shown["anomalies"]] == [
        ("disconnected", "operator_disconnect", "re-keyed")
    ]
    assert await site.ask("chargers.disconnect", charger=CP_ID) == {"disconnected": False}


async def test_a_key_changed_by_another_process_is_not_served_from_the_cache(
    site: Site, tmp_path: Path
) -> None:
    from edgepoint.csms.db import open_csms_store

    async with scripted_charger(site.port):
        pass  # the key is verified once and cached
    # The CLI re-keys from its own process: nobody calls forget() on the server.
    new_key = "a-new-key-0123456789"
    async with open_csms_store(
        tmp_path / "csms.db", site.clock, auth_iterations=TEST_ITERATIONS
    ) as other:
        assert await other.charge_points.rekey(CP_ID, new_key)
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(site.port, CP_ID, CP_KEY):
            pass
    assert refused.value.response.status_code == 401
    async with scripted_charger(site.port, CP_ID, new_key):
        pass
    async with open_csms_store(
        tmp_path / "csms.db", site.clock, auth_iterations=TEST_ITERATIONS
    ) as other:
        assert await other.charge_points.remove(CP_ID)
    with pytest.raises(InvalidStatus) as gone:
        async with open_ws(site.port, CP_ID, new_key):
            pass
    assert gone.value.response.status_code == 404
    assert [p["id"] for p in await site.ask("chargers.pending")] == [CP_ID]
    assert CP_ID not in {c["id"] for c in await site.ask("chargers.list")}
