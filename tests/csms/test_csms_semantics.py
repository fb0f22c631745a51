"""What the embedded CSMS accepts, records and refuses: semantic checks, tag rules, bounds.

Chargers here are scripted raw WebSockets (exact frames, exact replies) against a real
SiteCsms on 127.0.0.1 with csms.db in tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from csms_fixtures import clock_fixture  # noqa: F401  (fixtures)
from csms_support import CP_ID, CP_KEY, TEST_ITERATIONS, FakeClock, open_ws
from daemon_harness import cli, write_config
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from edgepoint.clock import iso_utc
from edgepoint.csms.db import (
    DEFAULT_CONNECTOR_COUNT,
    MAX_ANOMALIES_PER_CHARGE_POINT,
    CsmsStore,
    open_csms_store,
)
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.limiter import ConnectionLimiter, CsmsLimits
from edgepoint.csms.records import (
    Anomaly,
    AnomalyKind,
    AnomalyReason,
    AuthorizationStatus,
    StopOutcome,
    TransactionRecord,
)
from edgepoint.csms.schema import MIGRATIONS
from edgepoint.csms.server import SiteCsms

CP1 = ChargePointId(CP_ID)
CP2 = ChargePointId("CP-2")
CP2_KEY = "another-key-of-16+"
# Generous enough that ordinary tests are never slowed; the bounds tests pass their own.
LIMITS = CsmsLimits(max_frame_bytes=8192, max_sampled_values=20, max_calls_per_s=1000)
ENERGY = "Energy.Active.Import.Register"


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Charger:
    """A scripted charge point on a raw WebSocket: exact frames out, exact replies in."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, action: str, payload: dict[str, Any], unique_id: str | None = None) -> str:
        unique_id = unique_id or f"m{next(self._ids)}"
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        return unique_id

    async def reply(self, unique_id: str) -> list[Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
            if frame[1] == unique_id:
                return list(frame)

    async def call(
        self, action: str, payload: dict[str, Any], unique_id: str | None = None
    ) -> list[Any]:
        return await self.reply(await self.send(action, payload, unique_id))

    async def ok(self, action: str, payload: dict[str, Any], unique_id: str | None = None) -> Any:
        frame = await self.call(action, payload, unique_id)
        assert frame[0] == 3, frame
        return frame[2]

    async def refused(self, action: str, payload: dict[str, Any]) -> str:
        frame = await self.call(action, payload)
        assert frame[0] == 4, frame
        return str(frame[2])

    # -- the messages, with plausible defaults ------------------------------------

    async def status(self, connector: int, status: str, at: datetime | None = None) -> Any:
        payload: dict[str, Any] = {
            "connectorId": connector,
            "errorCode": "NoError",
            "status": status,
        }
        if at is not None:
            payload["timestamp"] = ts(at)
        return await self.ok("StatusNotification", payload)

    def start_payload(self, connector: int, tag: str, meter: int, at: datetime) -> dict[str, Any]:
        return {"connectorId": connector, "idTag": tag, "meterStart": meter, "timestamp": ts(at)}

    async def start(self, connector: int, tag: str, meter: int, at: datetime) -> tuple[int, str]:
        reply = await self.ok("StartTransaction", self.start_payload(connector, tag, meter, at))
        return int(reply["transactionId"]), str(reply["idTagInfo"]["status"])

    def stop_payload(
        self, tx: int, meter: int, at: datetime, tag: str | None = None, **more: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"transactionId": tx, "meterStop": meter, "timestamp": ts(at)}
        if tag is not None:
            payload["idTag"] = tag
        return {**payload, **more}

    def meter_payload(
        self, connector: int, tx: int | None, readings: list[tuple[datetime, int]]
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "connectorId": connector,
            "meterValue": [
                {"timestamp": ts(at), "sampledValue": [{"value": str(wh), "measurand": ENERGY}]}
                for at, wh in readings
            ],
        }
        if tx is not None:
            payload["transactionId"] = tx
        return payload


class Site:
    """A SiteCsms with CP-1 and CP-2 registered, started with the limits a test wants."""

    def __init__(self, db_path: Path, clock: FakeClock) -> None:
        self.db_path = db_path
        self.clock = clock
        self.csms: SiteCsms | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, limits: CsmsLimits = LIMITS) -> None:
        csms = SiteCsms(
            self.db_path,
            "127.0.0.1",
            0,
            self.clock,
            heartbeat_interval=60,
            auth_iterations=TEST_ITERATIONS,
            limits=limits,
        )
        await csms.register_charge_point(CP_ID, CP_KEY)
        await csms.register_charge_point(CP2, CP2_KEY)
        self._task = asyncio.create_task(csms.run())
        await asyncio.wait_for(csms.started.wait(), 5)
        self.csms = csms

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def store(self) -> CsmsStore:
        assert self.csms is not None and self.csms.store is not None
        return self.csms.store

    @contextlib.asynccontextmanager
    async def charger(self, cp_id: str = CP_ID) -> AsyncIterator[Charger]:
        assert self.csms is not None
        key = CP_KEY if cp_id == CP_ID else CP2_KEY
        async with open_ws(self.csms.port, cp_id, key) as ws:
            yield Charger(ws)

    async def transaction(self, tx: int) -> TransactionRecord:
        record = await self.store.transactions.get(tx)
        assert record is not None
        return record

    async def anomalies(self, cp_id: str = CP_ID) -> list[tuple[str, str, str | None, int]]:
        """(kind, reason, action, count) of a charge point's anomalies, oldest first."""
        rows = await self.store.anomalies.list(cp_id)
        return [
            (r.anomaly.kind.value, r.anomaly.reason.value, r.anomaly.action, r.count)
            for r in reversed(rows)
        ]


@pytest.fixture(name="site")
async def site_fixture(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Site]:
    site = Site(tmp_path / "csms.db", clock)
    await site.start()
    try:
        yield site
    finally:
        await site.stop()


@pytest.fixture(name="idle_site")
async def idle_site_fixture(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Site]:
    """Not started: the test starts it with its own limits."""
    site = Site(tmp_path / "csms.db", clock)
    try:
        yield site
    finally:
        await site.stop()


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; return its close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return ws.close_code


# == semantic checks ================================================================


async def test_connector_ids_within_the_declared_count(site: Site) -> None:
    store, clock = site.store, site.clock
    assert DEFAULT_CONNECTOR_COUNT == 10
    async with site.charger() as cp:
        await cp.status(0, "Available")  # connector 0: the charge point itself
        await cp.status(10, "Available")
        for bad in (11, 99, -1):
            assert (
                await cp.refused(
                    "StatusNotification",
                    {"connectorId": bad, "errorCode": "NoError", "status": "Available"},
                )
                == "PropertyConstraintViolation"
            )
        assert (
            await cp.refused("StartTransaction", cp.start_payload(0, "TAG", 0, clock.now))
            == "PropertyConstraintViolation"
        )
        assert (
            await cp.refused("StartTransaction", cp.start_payload(11, "TAG", 0, clock.now))
            == "PropertyConstraintViolation"
        )
        # MeterValues on connector 0 is the main meter: fine without a transaction only.
        await cp.ok("MeterValues", cp.meter_payload(0, None, [(clock.now, 5)]))
        assert (
            await cp.refused("MeterValues", cp.meter_payload(0, 1, [(clock.now, 5)]))
            == "PropertyConstraintViolation"
        )
        assert (
            await cp.refused("MeterValues", cp.meter_payload(11, None, [(clock.now, 5)]))
            == "PropertyConstraintViolation"
        )
        assert [c.connector_id for c in await store.connectors.list(CP1)] == [0, 10]

        # The operator declares 12 connectors; the session re-reads it within a minute.
        assert await store.charge_points.set_connector_count(CP_ID, 12)
        clock.now += timedelta(seconds=61)
        await cp.status(12, "Available")
        assert (
            await cp.refused(
                "StatusNotification",
                {"connectorId": 13, "errorCode": "NoError", "status": "Available"},
            )
            == "PropertyConstraintViolation"
        )

    record = await store.charge_points.get(CP_ID)
    assert record is not None and record.connector_count == 12
    assert [c.connector_id for c in await store.connectors.list(CP1)] == [0, 10, 12]
    assert await store.transactions.list() == []
    refused = [a for a in await site.anomalies() if a[1] == "connector_out_of_range"]
    # Three StatusNotifications in a row that differ only in the id are separate rows.
    assert [(kind, action) for kind, _, action, _ in refused] == [
        ("refused", "StatusNotification"),
        ("refused", "StatusNotification"),
        ("refused", "StatusNotification"),
        ("refused", "StartTransaction"),
        ("refused", "StartTransaction"),
        ("refused", "MeterValues"),
        ("refused", "MeterValues"),
        ("refused", "StatusNotification"),
    ]
    (row,) = [r for r in await store.anomalies.list(CP_ID) if "13" in r.anomaly.detail]
    assert row.anomaly.detail == "connectorId 13 is outside 0..12"


async def test_negative_meter_start_is_refused_and_recorded(site: Site) -> None:
    await site.store.cards.add("TAG")
    async with site.charger() as cp:
        payload = cp.start_payload(1, "TAG", -5, site.clock.now)
        assert await cp.refused("StartTransaction", payload) == "PropertyConstraintViolation"
        assert await cp.refused("StartTransaction", payload) == "PropertyConstraintViolation"
    assert await site.store.transactions.list() == []
    # The retry is counted on the same row.
    assert await site.anomalies() == [("refused", "negative_meter_start", "StartTransaction", 2)]


async def test_a_transaction_belongs_to_the_charger_that_started_it(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("TAG", max_concurrent_tx=2)
    async with site.charger(CP2) as other, site.charger() as cp:
        theirs, _ = await other.start(1, "TAG", 100, now)
        meter = cp.meter_payload(1, theirs, [(now + timedelta(minutes=1), 150)])
        assert await cp.refused("MeterValues", meter) == "PropertyConstraintViolation"
        stop = cp.stop_payload(theirs, 200, now + timedelta(minutes=2), "TAG")
        assert await cp.refused("StopTransaction", stop) == "PropertyConstraintViolation"

        # CP-2's own messages about it still work.
        await other.ok("MeterValues", other.meter_payload(1, theirs, [(now, 120)]))

    transaction = await site.transaction(theirs)
    assert transaction.charge_point_id == CP2 and transaction.stop_timestamp is None
    assert [v.sample.value for v in await store.meter_values.list(CP2)] == ["120"]
    assert await store.meter_values.list(CP_ID) == []
    assert await site.anomalies() == [
        ("refused", "foreign_transaction", "MeterValues", 1),
        ("refused", "foreign_transaction", "StopTransaction", 1),
    ]
    assert await site.anomalies(CP2) == []


async def test_unknown_transactions_are_answered_and_flagged(site: Site) -> None:
    now = site.clock.now
    async with site.charger() as cp:
        await cp.ok("MeterValues", cp.meter_payload(1, 4242, [(now, 10)]))
        assert await cp.ok("StopTransaction", cp.stop_payload(4242, 20, now)) == {}
    (sample,) = await site.store.meter_values.list(CP_ID)
    # Kept, but not under an id that a later transaction could be given.
    assert (sample.transaction_id, sample.sample.value) == (None, "10")
    assert await site.anomalies() == [
        ("flagged", "unknown_transaction", "MeterValues", 1),
        ("flagged", "unknown_transaction", "StopTransaction", 1),
    ]


async def test_meter_going_backwards_is_stored_flagged_and_answered(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("TAG")
    async with site.charger() as cp:
        tx, status = await cp.start(1, "TAG", 1000, now)
        assert status == "Accepted"
        await cp.ok("MeterValues", cp.meter_payload(1, tx, [(now + timedelta(minutes=1), 1500)]))
        assert not (await site.transaction(tx)).meter_backwards
        backwards = cp.meter_payload(1, tx, [(now + timedelta(minutes=2), 1400)])
        await cp.ok("MeterValues", backwards)
        await cp.ok("MeterValues", backwards)  # a retry: stored once, flagged once
        assert (await site.transaction(tx)).meter_backwards

        stop = cp.stop_payload(tx, 900, now + timedelta(minutes=3), "TAG")
        first = await cp.ok("StopTransaction", stop)
        assert first == {"idTagInfo": {"status": "Accepted"}}
        assert await cp.ok("StopTransaction", stop) == first  # the retry: same answer

        # A reading below meterStart flags a transaction too.
        tx2, _ = await cp.start(2, "TAG", 5000, now)
        await cp.ok("MeterValues", cp.meter_payload(2, tx2, [(now + timedelta(minutes=1), 4999)]))

    stopped = await site.transaction(tx)
    assert (stopped.meter_start, stopped.meter_stop, stopped.meter_backwards) == (1000, 900, True)
    assert stopped.stop_timestamp == now + timedelta(minutes=3)
    assert [v.sample.value for v in await store.meter_values.list(CP_ID, transaction_id=tx)] == [
        "1500",
        "1400",
    ]
    assert (await site.transaction(tx2)).meter_backwards
    assert await site.anomalies() == [
        ("flagged", "meter_backwards", "MeterValues", 1),
        ("flagged", "meter_backwards", "StopTransaction", 1),
        ("flagged", "meter_backwards", "MeterValues", 1),
    ]
    details = [r.anomaly.detail for r in await store.anomalies.list(CP_ID)]
    assert "meterStop 900 Wh is below meterStart 1000 Wh" in details


async def test_second_start_on_a_busy_connector_supersedes_the_open_one(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("ALICE")
    await store.cards.add("BOB")
    later = now + timedelta(minutes=10)
    async with site.charger() as cp:
        first, _ = await cp.start(1, "ALICE", 100, now)
        second, status = await cp.start(1, "BOB", 300, later)
        assert status == "Accepted"
        old = await site.transaction(first)
        assert (old.superseded_by, old.stop_timestamp, old.meter_stop) == (second, later, None)

        # The Stop of the first transaction arrives late: it fills in the real end.
        end = now + timedelta(minutes=5)
        assert await cp.ok("StopTransaction", cp.stop_payload(first, 250, end, "ALICE")) == {
            "idTagInfo": {"status": "Accepted"}
        }
        # The same tag again on the same connector: its old transaction is closed, so
        # the tag is under its limit again.
        third, status = await cp.start(1, "BOB", 400, later + timedelta(minutes=10))
        assert status == "Accepted"

    closed = await site.transaction(first)
    assert (closed.meter_stop, closed.stop_timestamp, closed.superseded_by) == (250, end, second)
    assert (await site.transaction(second)).superseded_by == third
    assert (await site.transaction(third)).stop_timestamp is None
    assert await site.anomalies() == [
        ("flagged", "superseded", "StartTransaction", 1),
        ("flagged", "superseded", "StartTransaction", 1),
    ]
    (row,) = [r for r in await store.anomalies.list(CP_ID) if r.anomaly.transaction_id == first]
    assert f"transaction {second} started" in row.anomaly.detail


async def test_a_start_older_than_the_open_one_does_not_close_it(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("TAG", max_concurrent_tx=2)
    async with site.charger() as cp:
        newer, _ = await cp.start(1, "TAG", 500, now)
        older, status = await cp.start(1, "TAG", 100, now - timedelta(hours=1))
        assert status == "Accepted"
    assert (await site.transaction(newer)).stop_timestamp is None
    assert (await site.transaction(older)).stop_timestamp is None
    assert await site.anomalies() == [("flagged", "out_of_order_start", "StartTransaction", 1)]


# == tags ===========================================================================


async def test_concurrent_transaction_limit_per_tag(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("SOLO")  # limit 1 by default
    await store.cards.add("FLEET", max_concurrent_tx=2)
    async with site.charger() as cp, site.charger(CP2) as other:
        tx, status = await cp.start(1, "SOLO", 0, now)
        assert status == "Accepted"
        authorize = await cp.ok("Authorize", {"idTag": "solo"})  # CiString: any case
        assert authorize == {"idTagInfo": {"status": "ConcurrentTx"}}

        # A start elsewhere is recorded (a CSMS must answer a start) and told ConcurrentTx.
        start = other.start_payload(1, "SOLO", 0, now + timedelta(minutes=1))
        over = await other.ok("StartTransaction", start)
        assert over["idTagInfo"] == {"status": "ConcurrentTx"}
        assert await other.ok("StartTransaction", start) == over  # retried: same answer
        assert (await site.transaction(over["transactionId"])).id_tag_status == "ConcurrentTx"

        # ConcurrentTx only concerns starts: the stop of the running one is Accepted.
        stop = other.stop_payload(over["transactionId"], 0, now + timedelta(minutes=2), "SOLO")
        assert await other.ok("StopTransaction", stop) == {"idTagInfo": {"status": "Accepted"}}
        stop = cp.stop_payload(tx, 10, now + timedelta(minutes=3), "SOLO")
        assert await cp.ok("StopTransaction", stop) == {"idTagInfo": {"status": "Accepted"}}
        assert await cp.ok("Authorize", {"idTag": "SOLO"}) == {"idTagInfo": {"status": "Accepted"}}

        assert (await cp.start(2, "FLEET", 0, now))[1] == "Accepted"
        assert (await other.start(2, "FLEET", 0, now))[1] == "Accepted"
        assert (await other.start(3, "FLEET", 0, now))[1] == "ConcurrentTx"

    assert len(await store.transactions.list()) == 5


async def test_parent_id_tag_rules(site: Site) -> None:
    store, clock = site.store, site.clock
    now = clock.now
    await store.cards.add("PARENT", expires=now + timedelta(days=30))
    await store.cards.add(
        "CHILD", parent_id_tag="PARENT", expires=now + timedelta(days=90), max_concurrent_tx=5
    )
    await store.cards.add("GROUPED", parent_id_tag="JUST-A-GROUP")  # no such tag: a label
    await store.cards.add("LOOP-A", parent_id_tag="LOOP-B")
    await store.cards.add("LOOP-B", parent_id_tag="LOOP-A")

    async def authorize(cp: Charger, tag: str) -> dict[str, Any]:
        reply = await cp.ok("Authorize", {"idTag": tag})
        return dict(reply["idTagInfo"])

    async with site.charger() as cp:
        # Accepted, with the parent, and the earliest expiry of the chain.
        assert await authorize(cp, "CHILD") == {
            "status": "Accepted",
            "parentIdTag": "PARENT",
            "expiryDate": iso_utc(now + timedelta(days=30)),
        }
        assert (await authorize(cp, "GROUPED"))["status"] == "Accepted"
        assert (await authorize(cp, "LOOP-A"))["status"] == "Accepted"  # and no hang

        await store.cards.block("PARENT")
        assert (await authorize(cp, "CHILD"))["status"] == "Blocked"
        # StartTransaction re-checks: a child of a blocked parent is told Blocked.
        tx, status = await cp.start(1, "CHILD", 0, now)
        assert status == "Blocked"
        await store.cards.unblock("PARENT")
        assert (await authorize(cp, "CHILD"))["status"] == "Accepted"

        clock.now = now + timedelta(days=31)  # the parent expired, the child has not
        assert (await authorize(cp, "CHILD"))["status"] == "Expired"
        assert (await authorize(cp, "PARENT"))["status"] == "Expired"

        # Both rules come from the same database as the CLI writes.
        assert await store.cards.set_parent("CHILD", None)
        assert (await authorize(cp, "CHILD"))["status"] == "Accepted"
    assert (await site.transaction(tx)).id_tag_status == "Blocked"


async def test_start_transaction_rechecks_the_tag(site: Site) -> None:
    store, clock = site.store, site.clock
    now = clock.now
    await store.cards.add("CARD", expires=now + timedelta(hours=1))
    async with site.charger() as cp:
        assert await cp.ok("Authorize", {"idTag": "CARD"}) == {
            "idTagInfo": {"status": "Accepted", "expiryDate": "2025-06-01T13:00:00.000Z"}
        }
        await store.cards.block("CARD")  # blocked between the tap and the start
        blocked, status = await cp.start(1, "CARD", 0, now)
        assert status == "Blocked"
        await store.cards.unblock("CARD")
        clock.now = now + timedelta(hours=2)
        expired, status = await cp.start(2, "CARD", 0, clock.now)
        assert status == "Expired"
        unknown, status = await cp.start(3, "NOBODY", 0, clock.now)
        assert status == "Invalid"
    statuses = [(await site.transaction(t)).id_tag_status for t in (blocked, expired, unknown)]
    assert statuses == ["Blocked", "Expired", "Invalid"]


async def test_start_and_stop_twice_are_recorded_once_and_answered_the_same(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("CARD")
    async with site.charger() as cp:
        start = cp.start_payload(1, "CARD", 10, now)
        first = await cp.ok("StartTransaction", start, unique_id="start-1")
        # The same message id again (a resend) and a new id (a retry after a reconnect).
        assert await cp.ok("StartTransaction", start, unique_id="start-1") == first
        # Blocking the card later does not change the answer to a repeat of the start.
        await store.cards.block("CARD")
        assert await cp.ok("StartTransaction", start) == first
        tx = first["transactionId"]

        stop = cp.stop_payload(tx, 50, now + timedelta(minutes=5), reason="EVDisconnected")
        assert await cp.ok("StopTransaction", stop) == {}
        assert await cp.ok("StopTransaction", stop) == {}
        differing = cp.stop_payload(tx, 999, now + timedelta(hours=1))
        assert await cp.ok("StopTransaction", differing) == {}

    (stored,) = await store.transactions.list()
    assert (stored.transaction_id, stored.meter_stop, stored.stop_reason) == (
        tx,
        50,
        "EVDisconnected",
    )
    assert stored.id_tag_status == "Accepted"
    assert await site.anomalies() == []


async def test_reconnect_without_boot_and_offline_replay_with_old_timestamps(site: Site) -> None:
    store, clock = site.store, site.clock
    await store.cards.add("CARD")
    booted_at = clock.now
    async with site.charger() as cp:
        boot = {"chargePointVendor": "Acme", "chargePointModel": "X1"}
        assert (await cp.ok("BootNotification", boot))["status"] == "Accepted"
        await cp.status(1, "Available", booted_at)

    # Offline for an hour, the charger charged a car and queued everything; it reconnects
    # and replays the queue without a new BootNotification.
    clock.now = booted_at + timedelta(hours=1)
    replayed_at = clock.now
    early = booted_at - timedelta(minutes=30)  # its queue is older than what we hold

    async def replay(cp: Charger) -> int:
        await cp.status(1, "Charging", early)
        tx, status = await cp.start(1, "CARD", 2000, early)
        assert status == "Accepted"
        readings = [(early + timedelta(minutes=m), 2000 + 100 * m) for m in (1, 2, 3)]
        await cp.ok("MeterValues", cp.meter_payload(1, tx, readings))
        await cp.ok("StopTransaction", cp.stop_payload(tx, 2400, early + timedelta(minutes=4)))
        await cp.status(1, "Available", early + timedelta(minutes=4))
        return tx

    async with site.charger() as cp:
        tx = await replay(cp)
    # The answers were lost with the connection: the charger replays it all once more.
    clock.now = replayed_at + timedelta(minutes=2)
    async with site.charger() as cp:
        assert await replay(cp) == tx

    (transaction,) = await store.transactions.list()
    assert (transaction.start_timestamp, transaction.stop_timestamp) == (
        early,
        early + timedelta(minutes=4),
    )
    assert (transaction.meter_start, transaction.meter_stop) == (2000, 2400)
    values = await store.meter_values.list(CP_ID, transaction_id=tx)
    assert [(v.sample.timestamp, v.sample.value) for v in values] == [
        (early + timedelta(minutes=m), str(2000 + 100 * m)) for m in (1, 2, 3)
    ]
    # Older statuses did not overwrite the newer one.
    (connector,) = await store.connectors.list(CP_ID)
    assert (connector.status, connector.timestamp) == ("Available", booted_at)
    record = await store.charge_points.get(CP_ID)
    assert record is not None
    assert record.last_boot_at == booted_at
    assert record.last_seen_at == replayed_at + timedelta(minutes=2)
    assert await site.anomalies() == []


async def test_a_status_from_the_future_does_not_lock_out_later_ones(site: Site) -> None:
    now = site.clock.now
    async with site.charger() as cp:
        await cp.status(1, "Faulted", now + timedelta(days=365))  # a charger with a bad clock
        (stored,) = await site.store.connectors.list(CP_ID)
        assert (stored.status, stored.timestamp) == ("Faulted", now)
        site.clock.now = now + timedelta(minutes=1)
        await cp.status(1, "Available", site.clock.now)
        await cp.status(1, "Preparing", now + timedelta(minutes=3))  # a little ahead is fine
    (stored,) = await site.store.connectors.list(CP_ID)
    assert (stored.status, stored.timestamp) == ("Preparing", now + timedelta(minutes=3))
    assert await site.anomalies() == [("flagged", "future_timestamp", "StatusNotification", 1)]


async def test_other_notifications_are_recorded(site: Site) -> None:
    async with site.charger() as cp:
        assert await cp.ok("DataTransfer", {"vendorId": "acme", "data": "x"}) == {
            "status": "UnknownVendorId"
        }
        await cp.ok("FirmwareStatusNotification", {"status": "Downloading"})
        await cp.ok("DiagnosticsStatusNotification", {"status": "Uploaded"})
        # The strict layer still refuses a date-time without an offset.
        naive = cp.start_payload(1, "CARD", 0, site.clock.now)
        naive["timestamp"] = "2025-06-01T12:00:00"
        assert await cp.refused("StartTransaction", naive) == "TypeConstraintViolation"
    record = await site.store.charge_points.get(CP_ID)
    assert record is not None
    assert (record.firmware_status, record.diagnostics_status) == ("Downloading", "Uploaded")


# == bounds =========================================================================


async def test_too_many_sampled_values_are_refused_before_storage(site: Site) -> None:
    store, now = site.store, site.clock.now
    await store.cards.add("CARD")

    def entries(count: int, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
        return [
            {
                "timestamp": ts(now + timedelta(seconds=n)),
                "sampledValue": [{"value": str(n), "measurand": "Voltage", "context": context}],
            }
            for n in range(count)
        ]

    async with site.charger() as cp:
        tx, _ = await cp.start(1, "CARD", 0, now)
        too_many = {"connectorId": 1, "transactionId": tx, "meterValue": entries(21)}
        assert await cp.refused("MeterValues", too_many) == "OccurenceConstraintViolation"
        assert await store.meter_values.list(CP_ID) == []
        await cp.ok("MeterValues", {**too_many, "meterValue": entries(20)})

        # A stop is billing: never refused, its begin and end readings kept.
        data = [*entries(1, "Transaction.Begin"), *entries(30), *entries(1, "Transaction.End")]
        data[-1]["timestamp"] = ts(now + timedelta(hours=1))
        stop = cp.stop_payload(tx, 100, now + timedelta(hours=1), transactionData=data)
        assert await cp.ok("StopTransaction", stop) == {}

    assert (await site.transaction(tx)).meter_stop == 100
    contexts = [v.sample.context for v in await store.meter_values.list(CP_ID)]
    assert contexts.count("Sample.Periodic") == 20
    assert contexts.count("Transaction.Begin") == contexts.count("Transaction.End") == 1
    assert await site.anomalies() == [
        ("refused", "too_many_sampled_values", "MeterValues", 1),
        ("flagged", "too_many_sampled_values", "StopTransaction", 1),
    ]


async def test_an_oversized_frame_closes_the_connection_and_is_recorded(site: Site) -> None:
    padding = "x" * LIMITS.max_frame_bytes
    async with site.charger() as cp:
        await cp.ok("Heartbeat", {})
        await cp.ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "v", "data": padding}]))
        assert await closed_code(cp.ws) == 1009
    async with site.charger() as cp:  # and it may come back
        await cp.ok("Heartbeat", {})
    assert await site.anomalies() == [("disconnected", "frame_too_big", None, 1)]


async def test_bad_frames_disconnect_but_semantic_refusals_do_not(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with site.charger() as cp:
        # Refusals of well-formed messages are the charger's data, not abuse.
        for _ in range(3 * LIMITS.max_bad_frames):
            await cp.refused(
                "StatusNotification",
                {"connectorId": 99, "errorCode": "NoError", "status": "Available"},
            )
        await cp.ok("Heartbeat", {})
        # Garbage is abuse: over the limit, the charger is disconnected.
        for n in range(LIMITS.max_bad_frames + 5):
            with contextlib.suppress(ConnectionClosed):
                await cp.ws.send(f'[2,"g{n}","Heartbeat",{{]')
        assert await closed_code(cp.ws) == 1008
    anomalies = await site.anomalies()
    assert anomalies == [
        ("refused", "connector_out_of_range", "StatusNotification", 3 * LIMITS.max_bad_frames),
        ("disconnected", "too_many_bad_frames", None, 1),
    ]
    # The log says it once, not once per refusal.
    lines = [r for r in caplog.records if "connector_out_of_range" in r.getMessage()]
    assert len(lines) == 1


async def test_a_pipelining_flooder_is_disconnected_while_another_charger_stays_fast(
    idle_site: Site,
) -> None:
    await idle_site.start(CsmsLimits(max_calls_per_s=5, burst_s=4, max_bad_frames=10))
    async with idle_site.charger() as flooder, idle_site.charger(CP2) as good:
        for n in range(200):
            with contextlib.suppress(ConnectionClosed):
                await flooder.send("Heartbeat", {}, unique_id=f"f{n}")
        latencies = []
        for _ in range(10):
            begun = time.perf_counter()
            await good.ok("Heartbeat", {})
            latencies.append(time.perf_counter() - begun)
        assert await closed_code(flooder.ws) == 1008
        assert max(latencies) < 1.0, latencies  # in practice a few ms
    assert await idle_site.anomalies() == [("disconnected", "too_many_bad_frames", None, 1)]
    assert await idle_site.anomalies(CP2) == []


async def test_a_fast_charger_is_slowed_not_refused_while_another_stays_fast(
    idle_site: Site,
) -> None:
    rate = 40.0
    await idle_site.start(CsmsLimits(max_calls_per_s=rate, burst_s=0.25, max_bad_frames=10))
    assert idle_site.csms is not None

    async def hammer(cp: Charger, calls: int) -> float:
        begun = time.perf_counter()
        for _ in range(calls):
            await cp.ok("Heartbeat", {})  # waits for each answer, as OCPP-J asks
        return time.perf_counter() - begun

    async with idle_site.charger() as fast, idle_site.charger(CP2) as calm:
        hammering = asyncio.create_task(hammer(fast, 50))
        latencies = []
        while not hammering.done():
            begun = time.perf_counter()
            await calm.ok("Heartbeat", {})
            latencies.append(time.perf_counter() - begun)
            await asyncio.sleep(0.1)  # a calm charger's pace
        elapsed = await hammering
        session = idle_site.csms.session(CP_ID)
        assert session is not None
        throttled = session.limiter.snapshot()
    # 50 calls, 10 of them in the burst, the other 40 one every 1/rate second at least.
    assert elapsed >= 0.8 * (50 - rate * 0.25) / rate
    assert throttled.delayed_calls >= 35
    assert max(latencies) < 0.5, latencies
    assert await idle_site.anomalies() == []  # slowed down, never refused or dropped


def test_the_limiter_delays_calls_and_leaks_bad_frames() -> None:
    now = [0.0]
    limiter = ConnectionLimiter(
        CsmsLimits(max_calls_per_s=10, burst_s=0.5, max_bad_frames=4, bad_window_s=2),
        monotonic=lambda: now[0],
    )
    assert [limiter.delay_for_call() for _ in range(5)] == [0.0] * 5  # the burst
    assert limiter.delay_for_call() == pytest.approx(0.1)
    assert limiter.delay_for_call() == pytest.approx(0.2)  # queued behind the previous one
    now[0] += 1.0  # 10 tokens come back, capped at the burst of 5
    assert [limiter.delay_for_call() for _ in range(3)] == [0.0] * 3
    assert not limiter.note_bad_total(4)
    assert limiter.note_bad_total(5)
    now[0] += 1.0  # half the window: 2 leak out
    assert not limiter.note_bad_total(5)
    assert not limiter.note_bad_total(4)  # counts only go up; a lower total adds nothing


# == storage ========================================================================


async def test_anomalies_are_bounded_per_charge_point_and_repeats_counted(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with open_csms_store(
        tmp_path / "csms.db", clock, auth_iterations=TEST_ITERATIONS
    ) as store:
        await store.charge_points.set_auth_key(CP_ID, CP_KEY)
        await store.charge_points.set_auth_key(CP2, CP2_KEY)
        same = Anomaly(AnomalyKind.REFUSED, AnomalyReason.NEGATIVE_METER_START, "X", "d")
        await store.anomalies.record(CP1, same)
        await store.anomalies.record(CP1, same)
        await store.anomalies.record(CP2, same)
        (row,) = await store.anomalies.list(CP_ID)
        assert row.count == 2
        for n in range(MAX_ANOMALIES_PER_CHARGE_POINT + 50):
            await store.anomalies.record(
                CP1, Anomaly(AnomalyKind.FLAGGED, AnomalyReason.METER_BACKWARDS, "X", f"#{n}")
            )
        kept = await store.anomalies.list(CP_ID, limit=1000)
        assert len(kept) == MAX_ANOMALIES_PER_CHARGE_POINT
        assert kept[0].anomaly.detail == f"#{MAX_ANOMALIES_PER_CHARGE_POINT + 49}"
        assert len(await store.anomalies.list(CP2)) == 1  # the others' rows are theirs
        # A detail is stored printable and short, whatever a handler put in it.
        await store.anomalies.record(
            CP1, Anomaly(AnomalyKind.FLAGGED, AnomalyReason.METER_BACKWARDS, "X", "a\nb" * 500)
        )
        newest = (await store.anomalies.list(CP_ID, limit=1))[0].anomaly.detail
        assert newest.startswith("a?b") and len(newest) == 200


async def test_migration_2_keeps_version_1_data(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "csms.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0] + ";PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO charge_points (id, registered_at) VALUES (?, ?)",
            (CP_ID, "2025-01-01T00:00:00.000Z"),
        )
        db.execute("INSERT INTO id_tags (id_tag, status, created_at) VALUES ('OLD', 'Accepted', ?)",
                   ("2025-01-01T00:00:00.000Z",))  # fmt: skip
        for meter_stop, stopped in ((20, "2025-01-01T02:00:00.000Z"), (None, None)):
            db.execute(
                """
                INSERT INTO transactions (charge_point_id, connector_id, id_tag, id_tag_status,
                    meter_start, start_timestamp, meter_stop, stop_timestamp, received_at)
                VALUES (?, 1, 'OLD', 'Accepted', 10, ?, ?, ?, ?)
                """,
                (CP_ID, stopped or "2025-01-01T03:00:00.000Z", meter_stop, stopped,
                 "2025-01-01T01:00:00.000Z"),
            )  # fmt: skip
    async with open_csms_store(path, clock, auth_iterations=TEST_ITERATIONS) as store:
        card = await store.cards.get("OLD")
        assert card is not None and card.max_concurrent_tx == 1
        record = await store.charge_points.get(CP_ID)
        assert record is not None and record.connector_count is None
        done, running = await store.transactions.list()
        # The stop recorded before the migration is still a stop: a retry changes nothing.
        outcome = await store.transactions.stop(
            CP1,
            done.transaction_id,
            meter_stop=99,
            timestamp=clock.now,
            reason="Local",
            id_tag=None,
        )
        assert outcome is StopOutcome.ALREADY_STOPPED
        assert running.stop_timestamp is None
        # The open transaction counts against the tag's limit.
        verdict = await store.cards.check("OLD", clock.now)
        assert verdict.status is AuthorizationStatus.CONCURRENT_TX
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4


def test_cards_add_takes_a_parent_and_a_concurrency_limit(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli(config, "cards", "add", "CHILD", "--parent", "FLEET", "--max-concurrent", "2")
    cli(config, "cards", "add", "PLAIN")
    rows = {row["id_tag"]: row for row in json.loads(cli(config, "cards", "list", "--json").stdout)}
    assert (rows["CHILD"]["parent_id_tag"], rows["CHILD"]["max_concurrent_tx"]) == ("FLEET", 2)
    assert (rows["PLAIN"]["parent_id_tag"], rows["PLAIN"]["max_concurrent_tx"]) == (None, 1)
    for bad in ("0", "two"):
        result = cli(config, "cards", "add", "X1", "--max-concurrent", bad, check=False)
        assert result.returncode == 2 and "not a whole number" in result.stderr
    own = cli(config, "cards", "add", "SELF", "--parent", "self", check=False)
    assert own.returncode == 1 and "own parent" in own.stderr
    assert "Traceback" not in own.stderr
