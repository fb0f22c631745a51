"""SiteOperator against scripted chargers over real WebSockets: commands, errors, local lists."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import CP_ID, RunningCsms
from scripted_charger import SILENCE, Error, ScriptedCharger, scripted_charger, wait_until

from edgepoint.csms.db import CsmsStore
from edgepoint.csms.operator import (
    CSMS_TO_CHARGER_ACTIONS,
    ChargerOffline,
    CsmsNotRunning,
    SiteOperator,
)
from edgepoint.csms.site_records import UpdateType
from edgepoint.ocppj.errors import CallErrorReceived, InvalidMessage
from edgepoint.ocppj.validation import KNOWN_ACTIONS

WHEN = datetime(2025, 6, 2, 8, 30, tzinfo=UTC)
WHEN_TEXT = "2025-06-02T08:30:00.000Z"
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

Op = Callable[[SiteOperator], Awaitable[dict[str, Any]]]

# Each typed helper: how it is called, the CALL the charger must receive, and its reply.
HELPERS: list[tuple[str, Op, str, dict[str, Any], dict[str, Any]]] = [
    (
        "remote_start",
        lambda op: op.remote_start(CP_ID, "TAG1", 2),
        "RemoteStartTransaction",
        {"idTag": "TAG1", "connectorId": 2},
        {"status": "Accepted"},
    ),
    (
        "remote_start_profile",
        lambda op: op.remote_start(CP_ID, "TAG1", charging_profile=PROFILE),
        "RemoteStartTransaction",
        {"idTag": "TAG1", "chargingProfile": PROFILE},
        {"status": "Rejected"},
    ),
    (
        "remote_stop",
        lambda op: op.remote_stop(CP_ID, 42),
        "RemoteStopTransaction",
        {"transactionId": 42},
        {"status": "Accepted"},
    ),
    (
        "reset",
        lambda op: op.reset(CP_ID, "Soft"),
        "Reset",
        {"type": "Soft"},
        {"status": "Accepted"},
    ),
    (
        "unlock",
        lambda op: op.unlock(CP_ID, 1),
        "UnlockConnector",
        {"connectorId": 1},
        {"status": "UnlockFailed"},
    ),
    (
        "change_availability",
        lambda op: op.change_availability(CP_ID, 0, operative=False),
        "ChangeAvailability",
        {"connectorId": 0, "type": "Inoperative"},
        {"status": "Scheduled"},
    ),
    (
        "get_configuration_all",
        lambda op: op.get_configuration(CP_ID),
        "GetConfiguration",
        {},
        {"configurationKey": [{"key": "MeterValueSampleInterval", "readonly": False}]},
    ),
    (
        "get_configuration_keys",
        lambda op: op.get_configuration(CP_ID, ["HeartbeatInterval", "Nope"]),
        "GetConfiguration",
        {"key": ["HeartbeatInterval", "Nope"]},
        {"configurationKey": [], "unknownKey": ["HeartbeatInterval", "Nope"]},
    ),
    (
        "change_configuration",
        lambda op: op.change_configuration(CP_ID, "HeartbeatInterval", "120"),
        "ChangeConfiguration",
        {"key": "HeartbeatInterval", "value": "120"},
        {"status": "RebootRequired"},
    ),
    ("clear_cache", lambda op: op.clear_cache(CP_ID), "ClearCache", {}, {"status": "Accepted"}),
    (
        "trigger",
        lambda op: op.trigger(CP_ID, "StatusNotification", 1),
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "connectorId": 1},
        {"status": "Accepted"},
    ),
    (
        "get_local_list_version",
        lambda op: op.get_local_list_version(CP_ID),
        "GetLocalListVersion",
        {},
        {"listVersion": 17},
    ),
    (
        "data_transfer",
        lambda op: op.data_transfer(CP_ID, "com.example", "ping", "{}"),
        "DataTransfer",
        {"vendorId": "com.example", "messageId": "ping", "data": "{}"},
        {"status": "Accepted", "data": "pong"},
    ),
    (
        "reserve_now",
        lambda op: op.reserve_now(CP_ID, 1, "TAG1", WHEN, 5, parent_id_tag="FLEET"),
        "ReserveNow",
        {
            "connectorId": 1,
            "expiryDate": WHEN_TEXT,
            "idTag": "TAG1",
            "reservationId": 5,
            "parentIdTag": "FLEET",
        },
        {"status": "Occupied"},
    ),
    (
        "cancel_reservation",
        lambda op: op.cancel_reservation(CP_ID, 5),
        "CancelReservation",
        {"reservationId": 5},
        {"status": "Accepted"},
    ),
    (
        "set_charging_profile",
        lambda op: op.set_charging_profile(CP_ID, 0, PROFILE),
        "SetChargingProfile",
        {"connectorId": 0, "csChargingProfiles": PROFILE},
        {"status": "NotSupported"},
    ),
    (
        "clear_charging_profile",
        lambda op: op.clear_charging_profile(CP_ID, connector_id=1, purpose="TxProfile"),
        "ClearChargingProfile",
        {"connectorId": 1, "chargingProfilePurpose": "TxProfile"},
        {"status": "Unknown"},
    ),
    (
        "get_composite_schedule",
        lambda op: op.get_composite_schedule(CP_ID, 1, 3600, "W"),
        "GetCompositeSchedule",
        {"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"},
        {
            "status": "Accepted",
            "connectorId": 1,
            "scheduleStart": WHEN_TEXT,
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}],
            },
        },
    ),
    (
        "get_diagnostics",
        lambda op: op.get_diagnostics(
            CP_ID, "ftp://logs.example/up", retries=2, retry_interval_s=30, start_time=WHEN
        ),
        "GetDiagnostics",
        {
            "location": "ftp://logs.example/up",
            "retries": 2,
            "retryInterval": 30,
            "startTime": WHEN_TEXT,
        },
        {"fileName": "diag-2025.zip"},
    ),
    (
        "update_firmware",
        lambda op: op.update_firmware(CP_ID, "https://fw.example/1.2.bin", WHEN, retries=1),
        "UpdateFirmware",
        {"location": "https://fw.example/1.2.bin", "retrieveDate": WHEN_TEXT, "retries": 1},
        {},
    ),
]

# The security extension's CALLs, through the generic command.
SECURITY_CALLS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "CertificateSigned",
        {"certificateChain": "-----BEGIN CERTIFICATE-----"},
        {"status": "Accepted"},
    ),
    (
        "DeleteCertificate",
        {
            "certificateHashData": {
                "hashAlgorithm": "SHA256",
                "issuerNameHash": "aa",
                "issuerKeyHash": "bb",
                "serialNumber": "01",
            }
        },
        {"status": "NotFound"},
    ),
    (
        "ExtendedTriggerMessage",
        {"requestedMessage": "SignChargePointCertificate"},
        {"status": "Accepted"},
    ),
    (
        "GetInstalledCertificateIds",
        {"certificateType": "CentralSystemRootCertificate"},
        {"status": "NotFound"},
    ),
    (
        "GetLog",
        {"logType": "SecurityLog", "requestId": 3, "log": {"remoteLocation": "https://l.example"}},
        {"status": "Accepted", "filename": "security.log"},
    ),
    (
        "InstallCertificate",
        {"certificateType": "ManufacturerRootCertificate", "certificate": "-----BEGIN"},
        {"status": "Accepted"},
    ),
    (
        "SignedUpdateFirmware",
        {
            "requestId": 4,
            "firmware": {
                "location": "https://fw.example/2.0.bin",
                "retrieveDateTime": WHEN_TEXT,
                "signingCertificate": "-----BEGIN",
                "signature": "c2ln",
            },
        },
        {"status": "Accepted"},
    ),
]


def operator_of(running: RunningCsms) -> SiteOperator:
    return SiteOperator(running.csms, running.clock, default_timeout_s=5)


def store_of(running: RunningCsms) -> CsmsStore:
    store = running.csms.store
    assert store is not None
    return store


@pytest.mark.parametrize(
    ("op", "action", "expected", "reply"),
    [case[1:] for case in HELPERS],
    ids=[case[0] for case in HELPERS],
)
async def test_typed_command_round_trip(
    running: RunningCsms, op: Op, action: str, expected: dict[str, Any], reply: dict[str, Any]
) -> None:
    async with scripted_charger(running.port) as charger:
        charger.responders[action] = lambda _payload: reply
        answer = await op(operator_of(running))
    assert answer == reply
    assert [(r.action, r.payload) for r in charger.received] == [(action, expected)]
    assert charger.problems() == []


@pytest.mark.parametrize(
    ("action", "payload", "reply"), SECURITY_CALLS, ids=[c[0] for c in SECURITY_CALLS]
)
async def test_security_extension_calls_round_trip(
    running: RunningCsms, action: str, payload: dict[str, Any], reply: dict[str, Any]
) -> None:
    async with scripted_charger(running.port) as charger:
        charger.responders[action] = lambda _payload: reply
        answer = await operator_of(running).command(CP_ID, action, payload)
    assert answer == reply
    assert charger.calls(action) == [payload]
    assert charger.problems() == []


def test_every_csms_to_charger_action_is_known_to_ocpp() -> None:
    assert CSMS_TO_CHARGER_ACTIONS <= KNOWN_ACTIONS
    # What a charger sends is no operator command.
    assert not CSMS_TO_CHARGER_ACTIONS & {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "MeterValues",
        "StartTransaction",
        "StopTransaction",
        "Authorize",
        "SecurityEventNotification",
        "SignCertificate",
    }
    assert len(CSMS_TO_CHARGER_ACTIONS) == 26


async def test_offline_charger_raises_charger_offline(running: RunningCsms) -> None:
    operator = operator_of(running)
    with pytest.raises(ChargerOffline) as offline:
        await operator.reset(CP_ID, "Hard")
    assert offline.value.charge_point_id == CP_ID
    with pytest.raises(ChargerOffline):
        await operator.clear_cache("NEVER-REGISTERED")
    with pytest.raises(ChargerOffline):
        await operator.send_local_list(CP_ID, full=True)


async def test_call_error_is_raised_with_its_code(running: RunningCsms) -> None:
    async with scripted_charger(running.port) as charger:
        charger.responders["Reset"] = lambda _p: Error("NotSupported", "no resets here")
        with pytest.raises(CallErrorReceived) as refused:
            await operator_of(running).reset(CP_ID, "Hard")
    assert refused.value.code == "NotSupported"
    assert refused.value.description == "no resets here"


async def test_bad_request_is_refused_before_the_wire(running: RunningCsms) -> None:
    operator = operator_of(running)
    async with scripted_charger(running.port) as charger:
        with pytest.raises(InvalidMessage):
            await operator.reset(CP_ID, "Medium")  # type: ignore[arg-type]  # the point
        with pytest.raises(InvalidMessage):
            await operator.command(CP_ID, "RemoteStopTransaction", {"transactionId": "42"})
        with pytest.raises(InvalidMessage):
            await operator.command(CP_ID, "Heartbeat", {})  # a charger's CALL, not ours
        with pytest.raises(InvalidMessage):
            await operator.command(CP_ID, "Explode", {})
        # It still works for a good one, and nothing bad was sent before it.
        assert (await operator.clear_cache(CP_ID)) == {"status": "Accepted"}
    assert [r.action for r in charger.received] == ["ClearCache"]


async def test_silent_charger_times_out(running: RunningCsms) -> None:
    async with scripted_charger(running.port) as charger:
        charger.responders["UnlockConnector"] = lambda _p: SILENCE
        with pytest.raises(TimeoutError):
            await operator_of(running).unlock(CP_ID, 1, timeout_s=0.2)
        # The connection is still good for the next command.
        del charger.responders["UnlockConnector"]
        assert await operator_of(running).unlock(CP_ID, 2) == {"status": "Unlocked"}


async def test_connection_lost_mid_call_is_charger_offline(running: RunningCsms) -> None:
    operator = operator_of(running)
    async with scripted_charger(running.port) as charger:
        hang = asyncio.Event()

        async def hang_up(_payload: dict[str, Any]) -> Any:
            await charger.ws.close()
            await hang.wait()
            return SILENCE

        charger.responders["Reset"] = hang_up
        with pytest.raises(ChargerOffline):
            await operator.reset(CP_ID, "Soft")
    await wait_until(lambda: not operator.is_online(CP_ID))


async def test_operator_needs_a_running_csms(running: RunningCsms) -> None:
    running.task.cancel()
    await asyncio.gather(running.task, return_exceptions=True)
    with pytest.raises(CsmsNotRunning):
        await operator_of(running).send_local_list(CP_ID, full=True)


# -- SendLocalList from the tag table -----------------------------------------------------


async def add_site_tags(store: CsmsStore, now: datetime) -> None:
    await store.cards.add("ALICE", "Alice", date(2030, 1, 1))
    await store.cards.add("BOB", "Bob")
    await store.cards.block("BOB")
    await store.cards.add("CAROL", "Carol", now - timedelta(days=1))
    await store.cards.add("KID", "Kid", parent_id_tag="ALICE")


async def list_version(charger: ScriptedCharger, version: int) -> None:
    charger.responders["GetLocalListVersion"] = lambda _p: {"listVersion": version}


async def test_full_local_list_is_built_from_the_tags(running: RunningCsms) -> None:
    store = store_of(running)
    await add_site_tags(store, running.clock.now)
    async with scripted_charger(running.port) as charger:
        outcome = await operator_of(running).send_local_list(CP_ID, full=True)
    assert outcome.sent and outcome.update_type is UpdateType.FULL
    assert outcome.reply == {"status": "Accepted"}
    [sent] = charger.calls("SendLocalList")
    assert charger.problems() == []
    assert sent["updateType"] == "Full"
    assert sent["listVersion"] == outcome.list_version >= 2
    assert sent["localAuthorizationList"] == [
        {
            "idTag": "ALICE",
            "idTagInfo": {"status": "Accepted", "expiryDate": "2030-01-02T00:00:00.000Z"},
        },
        {"idTag": "BOB", "idTagInfo": {"status": "Blocked"}},
        {
            "idTag": "CAROL",
            "idTagInfo": {"status": "Expired", "expiryDate": "2025-05-31T12:00:00.000Z"},
        },
        {"idTag": "KID", "idTagInfo": {"status": "Accepted", "parentIdTag": "ALICE"}},
    ]
    # No GetLocalListVersion for a Full update.
    assert charger.calls("GetLocalListVersion") == []


async def test_differential_local_list_carries_only_the_changes(running: RunningCsms) -> None:
    store = store_of(running)
    operator = operator_of(running)
    await add_site_tags(store, running.clock.now)
    async with scripted_charger(running.port) as charger:
        first = await operator.send_local_list(CP_ID, full=False)  # nothing recorded: Full
        assert first.update_type is UpdateType.FULL and first.sent

        await store.cards.unblock("BOB")
        await store.cards.remove("CAROL")
        await store.cards.add("DAVE", "Dave")
        await store.cards.add("bob-friend", "Bob's friend")
        await list_version(charger, first.list_version)
        second = await operator.send_local_list(CP_ID, full=False)

        assert second.update_type is UpdateType.DIFFERENTIAL
        assert second.list_version == first.list_version + 1
        sent = charger.calls("SendLocalList")[-1]
        assert sent["updateType"] == "Differential"
        assert sent["listVersion"] == second.list_version
        assert sent["localAuthorizationList"] == [
            {"idTag": "BOB", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "bob-friend", "idTagInfo": {"status": "Accepted"}},
            {"idTag": "CAROL"},  # no idTagInfo: the charger deletes it
            {"idTag": "DAVE", "idTagInfo": {"status": "Accepted"}},
        ]

        # Nothing changed since: nothing to send.
        await list_version(charger, second.list_version)
        third = await operator.send_local_list(CP_ID, full=False)
        assert not third.sent and third.reply is None
        assert len(charger.calls("SendLocalList")) == 2

        # A tag that expires with time changes the list too.
        running.clock.now = datetime(2031, 1, 1, tzinfo=UTC)
        fourth = await operator.send_local_list(CP_ID, full=False)
        assert fourth.update_type is UpdateType.DIFFERENTIAL
        assert charger.calls("SendLocalList")[-1]["localAuthorizationList"] == [
            {
                "idTag": "ALICE",
                "idTagInfo": {"status": "Expired", "expiryDate": "2030-01-02T00:00:00.000Z"},
            }
        ]
    assert charger.problems() == []


async def test_differential_falls_back_to_full(running: RunningCsms) -> None:
    store = store_of(running)
    operator = operator_of(running)
    await add_site_tags(store, running.clock.now)
    async with scripted_charger(running.port) as charger:
        first = await operator.send_local_list(CP_ID, full=True)
        await store.cards.add("ERIN", "Erin")

        # The charger holds another version than the one we recorded (it was reset).
        await list_version(charger, 0)
        outcome = await operator.send_local_list(CP_ID, full=False)
        assert outcome.update_type is UpdateType.FULL
        assert len(charger.calls("SendLocalList")[-1]["localAuthorizationList"]) == 5

        # It says VersionMismatch to a Differential: Full follows at once.
        await store.cards.block("ERIN")
        await list_version(charger, outcome.list_version)
        replies = iter([{"status": "VersionMismatch"}, {"status": "Accepted"}])
        charger.responders["SendLocalList"] = lambda _p: next(replies)
        outcome = await operator.send_local_list(CP_ID, full=False)
        kinds = [call["updateType"] for call in charger.calls("SendLocalList")]
        assert kinds[-2:] == ["Differential", "Full"]
        assert outcome.update_type is UpdateType.FULL and outcome.reply == {"status": "Accepted"}

        # Failed: we no longer know what it holds, so the next one is Full.
        await store.cards.unblock("ERIN")
        await list_version(charger, outcome.list_version)
        charger.responders["SendLocalList"] = lambda _p: {"status": "Failed"}
        failed = await operator.send_local_list(CP_ID, full=False)
        assert failed.update_type is UpdateType.DIFFERENTIAL
        assert failed.reply == {"status": "Failed"}
        del charger.responders["SendLocalList"]
        retried = await operator.send_local_list(CP_ID, full=False)
        assert retried.update_type is UpdateType.FULL
        assert first.list_version < retried.list_version
    assert charger.problems() == []


async def test_local_list_versions_are_per_charger(running: RunningCsms) -> None:
    store = store_of(running)
    operator = operator_of(running)
    await running.csms.register_charge_point("CP-2", "another-key-of-16+")
    await add_site_tags(store, running.clock.now)
    async with (
        scripted_charger(running.port) as one,
        scripted_charger(running.port, "CP-2", "another-key-of-16+") as two,
    ):
        await operator.send_local_list(CP_ID, full=True)
        await store.cards.add("FRANK", "Frank")
        await list_version(
            one, (await operator.send_local_list("CP-2", full=True)).list_version - 1
        )
        update = await operator.send_local_list(CP_ID, full=False)
        assert update.update_type is UpdateType.DIFFERENTIAL
        assert one.calls("SendLocalList")[-1]["localAuthorizationList"] == [
            {"idTag": "FRANK", "idTagInfo": {"status": "Accepted"}}
        ]
        # CP-2 already has FRANK: it is up to date.
        await list_version(two, update.list_version)
        assert not (await operator.send_local_list("CP-2", full=False)).sent
