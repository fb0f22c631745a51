"""A charge point's whole session against the CSMS over a real WebSocket, and retries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import CP_ID, RunningCsms, exchange, ocpp_client, open_ws
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppClient
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus, ResetStatus

from edgepoint.csms.db import CsmsStore
from edgepoint.csms.records import StopOutcome
from edgepoint.ocppj.errors import CallErrorReceived, ConnectionLost, InvalidMessage, InvalidReply
from edgepoint.ocppj.validation import KNOWN_ACTIONS

START_TS = "2025-06-01T12:01:00.000Z"


def store_of(running: RunningCsms) -> CsmsStore:
    store = running.csms.store
    assert store is not None
    return store


async def test_full_session_is_persisted(running: RunningCsms) -> None:
    store = store_of(running)
    now = running.clock.now
    await store.cards.add("ACCEPTED1", "Alice", date(2030, 1, 1))
    await store.cards.add("BLOCKED1", "Bob")
    await store.cards.block("BLOCKED1")
    await store.cards.add("EXPIRED1", "Carol", now - timedelta(days=1))

    async with ocpp_client(running.port) as cp:
        boot = await cp.call(
            call.BootNotification(
                charge_point_vendor="Edge",
                charge_point_model="Kiosk",
                firmware_version="1.2.3",
            ),
            suppress=False,
        )
        assert boot.status == RegistrationStatus.accepted
        assert boot.interval == 60
        sent_time = datetime.fromisoformat(boot.current_time)
        assert sent_time.utcoffset() == timedelta(0)
        assert sent_time == now

        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Available"),
            suppress=False,
        )
        heartbeat = await cp.call(call.Heartbeat(), suppress=False)
        assert datetime.fromisoformat(heartbeat.current_time) == now

        verdicts = {}
        for tag in ("ACCEPTED1", "BLOCKED1", "EXPIRED1", "UNKNOWN1"):
            reply = await cp.call(call.Authorize(id_tag=tag), suppress=False)
            verdicts[tag] = reply.id_tag_info["status"]
        assert verdicts == {
            "ACCEPTED1": AuthorizationStatus.accepted,
            "BLOCKED1": AuthorizationStatus.blocked,
            "EXPIRED1": AuthorizationStatus.expired,
            "UNKNOWN1": AuthorizationStatus.invalid,
        }

        started = await cp.call(
            call.StartTransaction(
                connector_id=1, id_tag="ACCEPTED1", meter_start=1000, timestamp=START_TS
            ),
            suppress=False,
        )
        assert started.id_tag_info["status"] == AuthorizationStatus.accepted
        assert started.id_tag_info["expiry_date"] == "2030-01-02T00:00:00.000Z"
        tx = started.transaction_id

        await cp.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=tx,
                meter_value=[
                    {
                        "timestamp": "2025-06-01T12:02:00Z",
                        "sampledValue": [
                            {"value": "1500", "measurand": "Energy.Active.Import.Register"},
                            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                        ],
                    }
                ],
            ),
            suppress=False,
        )
        stopped = await cp.call(
            call.StopTransaction(
                meter_stop=2500,
                timestamp="2025-06-01T12:30:00+00:00",
                transaction_id=tx,
                reason="EVDisconnected",
                id_tag="ACCEPTED1",
                transaction_data=[
                    {
                        "timestamp": "2025-06-01T12:30:00Z",
                        "sampledValue": [{"value": "2500", "context": "Transaction.End"}],
                    }
                ],
            ),
            suppress=False,
        )
        assert stopped.id_tag_info["status"] == AuthorizationStatus.accepted

    record = await store.charge_points.get(CP_ID)
    assert record is not None
    assert (record.vendor, record.model, record.firmware) == ("Edge", "Kiosk", "1.2.3")
    assert record.last_boot_at == now and record.last_heartbeat_at == now

    (connector,) = await store.connectors.list(CP_ID)
    assert (connector.connector_id, connector.status, connector.error_code) == (
        1,
        "Available",
        "NoError",
    )

    transaction = await store.transactions.get(tx)
    assert transaction is not None
    assert transaction.charge_point_id == CP_ID
    assert transaction.id_tag == "ACCEPTED1"
    assert transaction.meter_start == 1000
    assert transaction.start_timestamp == datetime(2025, 6, 1, 12, 1, tzinfo=UTC)
    assert transaction.meter_stop == 2500
    assert transaction.stop_timestamp == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert transaction.stop_reason == "EVDisconnected"
    assert transaction.stop_id_tag == "ACCEPTED1"

    samples = await store.meter_values.list(CP_ID, transaction_id=tx)
    assert [
        (s.sample.measurand, s.sample.value, s.sample.unit, s.sample.context) for s in samples
    ] == [
        ("Energy.Active.Import.Register", "1500", "Wh", "Sample.Periodic"),
        ("Power.Active.Import", "7.2", "kW", "Sample.Periodic"),
        ("Energy.Active.Import.Register", "2500", "Wh", "Transaction.End"),
    ]
    assert all(s.connector_id == 1 for s in samples)


async def test_retried_messages_are_applied_once(running: RunningCsms) -> None:
    store = store_of(running)
    await store.cards.add("ACCEPTED1")
    start = call.StartTransaction(
        connector_id=1, id_tag="ACCEPTED1", meter_start=10, timestamp=START_TS
    )
    async with ocpp_client(running.port) as cp:
        first = await cp.call(start, suppress=False)
        again = await cp.call(start, suppress=False)
        assert again.transaction_id == first.transaction_id
        tx = first.transaction_id

        meter = call.MeterValues(
            connector_id=1,
            transaction_id=tx,
            meter_value=[
                {
                    "timestamp": "2025-06-01T12:05:00Z",
                    "sampledValue": [
                        {"value": "50"},
                        {"value": "230", "measurand": "Voltage", "phase": "L1", "unit": "V"},
                    ],
                }
            ],
        )
        await cp.call(meter, suppress=False)
        await cp.call(meter, suppress=False)

        stop = call.StopTransaction(
            meter_stop=99, timestamp="2025-06-01T12:10:00Z", transaction_id=tx
        )
        await cp.call(stop, suppress=False)
        # A retry, even one that differs, must not rewrite a stopped transaction.
        late = call.StopTransaction(
            meter_stop=12345, timestamp="2025-06-01T13:00:00Z", transaction_id=tx
        )
        reply = await cp.call(late, suppress=False)
        assert reply.id_tag_info is None

        # The id is never reused for a different start.
        other = await cp.call(
            call.StartTransaction(
                connector_id=1, id_tag="ACCEPTED1", meter_start=99, timestamp="2025-06-01T12:11:00Z"
            ),
            suppress=False,
        )
        assert other.transaction_id != tx

    transactions = await store.transactions.list(CP_ID)
    assert len(transactions) == 2
    first_tx = await store.transactions.get(tx)
    assert first_tx is not None
    assert first_tx.meter_stop == 99
    assert first_tx.stop_reason == "Local"
    assert len(await store.meter_values.list(CP_ID, transaction_id=tx)) == 2


async def test_start_with_unknown_tag_still_gets_a_transaction(running: RunningCsms) -> None:
    store = store_of(running)
    async with ocpp_client(running.port) as cp:
        reply = await cp.call(
            call.StartTransaction(
                connector_id=2, id_tag="NOBODY", meter_start=0, timestamp=START_TS
            ),
            suppress=False,
        )
        assert reply.id_tag_info["status"] == AuthorizationStatus.invalid
        stop = await cp.call(
            call.StopTransaction(meter_stop=0, timestamp=START_TS, transaction_id=987654),
            suppress=False,
        )
        assert stop.id_tag_info is None
    transaction = await store.transactions.get(reply.transaction_id)
    assert transaction is not None
    assert transaction.id_tag_status == "Invalid"
    assert (await store.transactions.get(987654)) is None
    assert (
        await store.transactions.stop(
            transaction.charge_point_id,
            987654,
            meter_stop=0,
            timestamp=running.clock.now,
            reason="Local",
            id_tag=None,
        )
        == StopOutcome.UNKNOWN
    )


class ResettableClient(OcppClient):
    @on(Action.reset)
    def on_reset(self, type: str, **_: object) -> call_result.Reset:
        return call_result.Reset(status=ResetStatus.accepted)


async def test_csms_can_call_the_charge_point(running: RunningCsms) -> None:
    async with ocpp_client(running.port, kind=ResettableClient) as cp:
        await cp.call(call.Heartbeat(), suppress=False)  # the session is registered by now
        session = running.csms.session(CP_ID)
        assert session is not None
        assert await session.call("Reset", {"type": "Soft"}) == {"status": "Accepted"}
        # The client has no UnlockConnector handler: its CALLERROR reaches our call().
        with pytest.raises(CallErrorReceived) as refused:
            await session.call("UnlockConnector", {"connectorId": 1})
        assert refused.value.action == "UnlockConnector"
        # Ours breaks the schema: refused before it reaches the wire.
        with pytest.raises(InvalidMessage):
            await session.call("Reset", {"type": "Sideways"})
        # The session still works after all of that, both ways.
        assert await session.call("Reset", {"type": "Hard"}, timeout=5) == {"status": "Accepted"}
        await cp.call(call.Heartbeat(), suppress=False)
        assert session.endpoint.stats.stray_replies == 0


async def test_operator_call_reply_problems(running: RunningCsms) -> None:
    """A bad reply, no reply, a late reply, then the charge point leaves mid-call."""
    async with open_ws(running.port) as ws:
        await exchange(ws, '[2,"hb","Heartbeat",{}]')
        session = running.csms.session(CP_ID)
        assert session is not None
        asked = asyncio.create_task(session.call("ClearCache", {}))
        sent = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([3, sent[1], {"status": "Maybe"}]))
        with pytest.raises(InvalidReply):
            await asked
        with pytest.raises(TimeoutError):
            await session.call("Reset", {"type": "Soft"}, timeout=0.2)
        (late,) = [json.loads(await asyncio.wait_for(ws.recv(), 5))]
        assert late[0] == 2 and late[2] == "Reset"
        pending = asyncio.create_task(session.call("ClearCache", {}))
        sent = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert sent[2] == "ClearCache"
        # The late reply to the Reset is dropped, not taken for the ClearCache's.
        await ws.send(json.dumps([3, late[1], {"status": "Accepted"}]))
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, 5)
    assert session.endpoint.stats.stray_replies == 1


async def test_only_the_handled_actions_are_accepted(running: RunningCsms) -> None:
    async with open_ws(running.port) as ws:
        await exchange(ws, '[2,"hb","Heartbeat",{}]')
        session = running.csms.session(CP_ID)
        assert session is not None
    assert session.actions == {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "Authorize",
        "StartTransaction",
        "StopTransaction",
        "MeterValues",
        "DataTransfer",
        "FirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "SecurityEventNotification",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
    }
    assert session.actions <= KNOWN_ACTIONS
