"""ChargePointStore on a real SQLite file: a state change commits with its messages, or neither."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_harness import query

from edgepoint.chargepoint import messages
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import IdTag, SessionId, StopReason, TelemetrySample
from edgepoint.errors import StorageError
from edgepoint.ocppj.validation import request_problem
from edgepoint.storage.chargepoint import (
    MIGRATIONS,
    ChargePointStore,
    OutboxEntry,
    OutboxSummary,
    UnreadableRow,
)
from edgepoint.storage.sqlite import Database

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
CARD = IdTag("04A1B2C3")
S1 = SessionId("11111111-1111-4111-8111-111111111111")
S2 = SessionId("22222222-2222-4222-8222-222222222222")
S3 = SessionId("33333333-3333-4333-8333-333333333333")
HEX_ID = re.compile(r"^[0-9a-f]{32}\Z")


def sample(energy_wh: int) -> TelemetrySample:
    return TelemetrySample(1, energy_wh, 7360.0, 32.0, 230.0, 25.0)


def new_id() -> str:
    return uuid.uuid4().hex


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(name="db_path")
def db_path_fixture(tmp_path: Path) -> Path:
    return tmp_path / "var" / "edgepoint.db"


@pytest.fixture(name="store")
async def store_fixture(db_path: Path) -> AsyncIterator[ChargePointStore]:
    store = await ChargePointStore.open(db_path)
    try:
        yield store
    finally:
        await store.close()


async def begin(
    store: ChargePointStore,
    sid: SessionId = S1,
    meter: int = 1000,
    when: datetime = T0,
    connector_id: int = 1,
) -> str:
    """Start a session as the kiosk does: the session row and its Start in one change."""
    message_id = new_id()
    async with store.change() as change:
        await change.begin_session(sid, connector_id, CARD, meter, when)
        start = messages.start_transaction(connector_id, CARD, meter, when)
        await change.enqueue("StartTransaction", start, when, message_id, sid)
    return message_id


async def meter(store: ChargePointStore, sid: SessionId, energy: int, when: datetime = T0) -> None:
    async with store.change() as change:
        payload = messages.meter_values(1, sample(energy), when)
        await change.enqueue("MeterValues", payload, when, new_id(), sid)
        await change.record_reading(sid, energy)


async def stop(
    store: ChargePointStore, sid: SessionId, meter_stop: int, when: datetime = T0
) -> bool:
    async with store.change() as change:
        ended = await change.end_session(sid, CARD, meter_stop, "Local", when)
        if ended:
            payload = messages.stop_transaction(CARD, meter_stop, StopReason.LOCAL, when)
            await change.enqueue("StopTransaction", payload, when, new_id(), sid)
    return ended


async def status(store: ChargePointStore, state: ConnectorStatus, when: datetime = T0) -> None:
    async with store.change() as change:
        payload = messages.status_notification(1, state, "NoError", when)
        await change.enqueue("StatusNotification", payload, when, new_id())


async def head(store: ChargePointStore) -> OutboxEntry:
    entry = await store.outbox_next()
    assert isinstance(entry, OutboxEntry), entry
    return entry


def energy_of(entry: OutboxEntry) -> str:
    return str(entry.payload["meterValue"][0]["sampledValue"][0]["value"])


def label(entry: OutboxEntry) -> tuple[str | None, str, str]:
    """(session, action, energy) of a queued message, for comparing queue orders."""
    return (
        entry.session_id,
        entry.action,
        energy_of(entry) if entry.action == "MeterValues" else "",
    )


async def drain(store: ChargePointStore) -> list[tuple[str | None, str, str]]:
    """Take every deliverable message in the order outbox_next hands them out."""
    seen = []
    while (entry := await store.outbox_next()) is not None:
        assert isinstance(entry, OutboxEntry), entry
        seen.append(label(entry))
        await store.delivered(entry)
    return seen


def refuse_inserts(db_path: Path, when: str = "1") -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN {when}"
            " BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END"
        )


# -- a state change and its messages: together or not at all -------------------------


async def test_a_session_and_its_start_commit_together_in_wire_form(
    store: ChargePointStore, db_path: Path
) -> None:
    message_id = await begin(store)
    assert query(db_path, "SELECT session_id, id_tag, meter_start_wh, state FROM sessions") == [
        (S1, CARD, 1000, "active")
    ]
    ((action, payload, stored_id, wire, created_at),) = query(
        db_path, "SELECT action, payload, message_id, wire, created_at FROM outbox"
    )
    expected = {
        "connectorId": 1,
        "idTag": CARD,
        "meterStart": 1000,
        "timestamp": "2025-06-01T12:00:00.000Z",
    }
    # Stored as it goes on the wire, under the id every resend will carry.
    assert (action, json.loads(payload), stored_id, wire) == (
        "StartTransaction",
        expected,
        message_id,
        1,
    )
    assert created_at == "2025-06-01T12:00:00.000Z"
    entry = await head(store)
    assert (entry.session_id, entry.action, entry.message_id, entry.payload) == (
        S1,
        "StartTransaction",
        message_id,
        expected,
    )
    assert (entry.attempts, entry.refusals, entry.parked) == (0, 0, False)
    assert request_problem("StartTransaction", entry.payload) is None


async def test_an_exception_inside_a_change_leaves_neither_session_nor_message(
    store: ChargePointStore, db_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="relay stuck"):
        async with store.change() as change:
            await change.begin_session(S1, 1, CARD, 1000, T0)
            start = messages.start_transaction(1, CARD, 1000, T0)
            await change.enqueue("StartTransaction", start, T0, new_id(), S1)
            await change.set_availability(1, False)
            raise RuntimeError("relay stuck")
    assert query(db_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert query(db_path, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert await store.availability() == {}
    # Rolled back, not left open: the next change works.
    await begin(store)
    assert await store.outbox_depth() == 1


async def test_a_message_that_cannot_be_encoded_stores_nothing(
    store: ChargePointStore, db_path: Path
) -> None:
    with pytest.raises(TypeError):
        async with store.change() as change:
            await change.begin_session(S1, 1, CARD, 1000, T0)
            await change.enqueue("StartTransaction", {"meterStart": object()}, T0, new_id(), S1)
    assert query(db_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert await store.outbox_depth() == 0
    assert await store.open_sessions() == []


async def test_a_session_whose_start_cannot_be_queued_is_not_stored(
    store: ChargePointStore, db_path: Path
) -> None:
    refuse_inserts(db_path)
    with pytest.raises(StorageError, match="simulated"):
        await begin(store)
    assert query(db_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert await store.open_sessions() == []


async def test_a_stop_commits_with_the_session_end_and_a_session_stops_once(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    assert await stop(store, S1, 1500, at(300)) is True
    assert query(
        db_path, "SELECT state, meter_stop_wh, stop_reason, stop_id_tag, stopped_at FROM sessions"
    ) == [("stopped", 1500, "Local", CARD, "2025-06-01T12:05:00.000Z")]
    assert query(db_path, "SELECT action, session_id FROM outbox ORDER BY seq") == [
        ("StartTransaction", S1),
        ("StopTransaction", S1),
    ]
    assert await stop(store, S1, 1600, at(400)) is False
    assert query(db_path, "SELECT COUNT(*) FROM outbox WHERE action = 'StopTransaction'") == [(1,)]
    assert query(db_path, "SELECT meter_stop_wh, stop_reason FROM sessions") == [(1500, "Local")]
    assert await store.open_sessions() == []


async def test_a_stop_that_cannot_be_queued_leaves_the_session_active(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    refuse_inserts(db_path, "NEW.action = 'StopTransaction'")
    with pytest.raises(StorageError):
        await stop(store, S1, 1500)
    assert query(db_path, "SELECT state, meter_stop_wh, stop_reason FROM sessions") == [
        ("active", None, None)
    ]
    (row,) = await store.open_sessions()
    assert row.session_id == S1
    assert await store.outbox_depth() == 1


async def test_meter_values_keep_the_highest_reading_on_the_session(
    store: ChargePointStore,
) -> None:
    await begin(store)
    for reading in (1200, 1300, 1250):
        await meter(store, S1, reading)
    row = await store.session(S1)
    assert row is not None and row.last_reading_wh == 1300


# -- the queue ------------------------------------------------------------------------


async def test_outbox_next_is_first_in_first_out_and_stays_until_delivered(
    store: ChargePointStore,
) -> None:
    await status(store, ConnectorStatus.PREPARING)
    await begin(store)
    for energy in (1001, 1002, 1003):
        await meter(store, S1, energy)
    await stop(store, S1, 1004)

    seen = []
    while (entry := await store.outbox_next()) is not None:
        assert isinstance(entry, OutboxEntry)
        # The head stays the head until acknowledged, however often it is read.
        assert await store.outbox_next() == entry
        seen.append(label(entry))
        await store.delivered(entry)
    assert seen == [
        (None, "StatusNotification", ""),
        (S1, "StartTransaction", ""),
        (S1, "MeterValues", "1001"),
        (S1, "MeterValues", "1002"),
        (S1, "MeterValues", "1003"),
        (S1, "StopTransaction", ""),
    ]
    assert await store.outbox_depth() == 0


async def test_a_parked_row_holds_back_its_own_session_but_not_the_others(
    store: ChargePointStore,
) -> None:
    await begin(store, S1)
    await meter(store, S1, 1001)
    await begin(store, S2, when=at(60), connector_id=2)
    await status(store, ConnectorStatus.CHARGING)
    await meter(store, S1, 1002)
    await stop(store, S1, 1003)
    await meter(store, S2, 2001)

    start = await head(store)
    assert (start.session_id, start.action) == (S1, "StartTransaction")
    await store.park(start, "refused 3 time(s): CallError InternalError", at(5))

    # The rest of S1 needs the Start's transactionId: it waits with it. S2 and the status go.
    nxt = await head(store)
    assert (nxt.session_id, nxt.action) == (S2, "StartTransaction")
    (parked,) = await store.outbox_parked()
    assert isinstance(parked, OutboxEntry)
    assert (parked.seq, parked.parked, parked.message_id) == (start.seq, True, start.message_id)
    summary = await store.outbox_summary()
    assert (summary.depth, summary.parked) == (7, 1)

    assert await drain(store) == [
        (S2, "StartTransaction", ""),
        (None, "StatusNotification", ""),
        (S2, "MeterValues", "2001"),
    ]
    assert await store.outbox_depth() == 4

    await store.unpark(parked)
    assert await store.outbox_parked() == []
    # Back at its own place, first in the queue, with the same id and a fresh count.
    again = await head(store)
    assert (again.seq, again.message_id, again.parked, again.refusals) == (
        start.seq,
        start.message_id,
        False,
        0,
    )
    assert await drain(store) == [
        (S1, "StartTransaction", ""),
        (S1, "MeterValues", "1001"),
        (S1, "MeterValues", "1002"),
        (S1, "StopTransaction", ""),
    ]


async def test_unpark_gives_a_fresh_count_of_refusals_but_keeps_the_tries(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    entry = await head(store)
    await store.failed_attempt(entry, "no answer (timeout)")
    for _ in range(3):
        await store.failed_attempt(entry, "CallError InternalError", refused=True)
    counted = await head(store)
    assert (counted.seq, counted.attempts, counted.refusals) == (entry.seq, 4, 3)
    assert query(db_path, "SELECT last_error FROM outbox") == [("CallError InternalError",)]

    await store.park(counted, "refused 3 time(s)", at(10))
    assert await store.outbox_next() is None
    assert query(db_path, "SELECT parked_at, last_error FROM outbox") == [
        ("2025-06-01T12:00:10.000Z", "refused 3 time(s)")
    ]
    await store.unpark(counted)
    back = await head(store)
    assert (back.attempts, back.refusals, back.parked) == (4, 0, False)


async def test_delivered_start_keeps_transaction_id_and_status_and_drops_the_row(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    await meter(store, S1, 1001)
    assert await store.transaction_id(S1) is None
    start = await head(store)
    await store.delivered(start, 42, "Accepted")
    assert await store.transaction_id(S1) == 42
    assert query(db_path, "SELECT transaction_id, auth_status FROM sessions") == [(42, "Accepted")]
    assert query(db_path, "SELECT action FROM outbox") == [("MeterValues",)]
    # Acknowledging a later message leaves the session's transaction alone.
    await store.delivered(await head(store))
    assert await store.transaction_id(S1) == 42
    assert await store.outbox_depth() == 0


async def test_delivered_is_all_or_nothing(store: ChargePointStore, db_path: Path) -> None:
    await begin(store)
    start = await head(store)
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER keep BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(StorageError):
        await store.delivered(start, 42, "Accepted")
    # Neither half: no transaction id while the Start is still queued (a resend stores it).
    assert await store.transaction_id(S1) is None
    assert query(db_path, "SELECT auth_status FROM sessions") == [(None,)]
    assert await store.outbox_next() == start


async def test_give_up_moves_rows_to_the_dead_letters_or_quarantine_with_the_reason(
    store: ChargePointStore, db_path: Path
) -> None:
    assert await store.outbox_summary() == OutboxSummary(0, 0, None, 0, 0, 0)
    await begin(store)
    await meter(store, S1, 1001, at(1))
    await meter(store, S1, 1002, at(2))
    await status(store, ConnectorStatus.CHARGING, at(3))
    start = await head(store)
    await store.delivered(start, 7, "Accepted")
    first = await head(store)
    await store.give_up(first.seq, "refused 3 time(s): CallError FormationViolation", at(30))
    second = await head(store)
    await store.give_up(second.seq, "not a valid OCPP 1.6 MeterValues", at(31), "quarantined")

    rows = query(
        db_path,
        "SELECT seq, session_id, action, payload, created_at, failed_at, reason, kind,"
        " message_id FROM dead_letters ORDER BY seq",
    )
    assert [(r[0], r[1], r[2], r[7], r[8]) for r in rows] == [
        (first.seq, S1, "MeterValues", "dead", first.message_id),
        (second.seq, S1, "MeterValues", "quarantined", second.message_id),
    ]
    assert json.loads(rows[0][3]) == first.payload  # kept as it would have been sent
    assert rows[0][4:7] == (
        "2025-06-01T12:00:01.000Z",
        "2025-06-01T12:00:30.000Z",
        "refused 3 time(s): CallError FormationViolation",
    )
    assert rows[1][6] == "not a valid OCPP 1.6 MeterValues"
    assert await store.dead_letter_count() == 2

    remaining = await head(store)
    assert remaining.action == "StatusNotification"
    assert await store.outbox_summary() == OutboxSummary(
        depth=1,
        parked=0,
        oldest_created_at="2025-06-01T12:00:03.000Z",
        dead_letters=1,
        quarantined=1,
        thinned_meter_values=0,
    )


async def test_outbox_summary_counts_depth_parked_and_the_oldest_message(
    store: ChargePointStore,
) -> None:
    await begin(store, S1, when=at(5))
    await status(store, ConnectorStatus.CHARGING, at(1))  # stamped earlier, queued later
    await begin(store, S2, when=at(9), connector_id=2)
    await store.park(await head(store), "refused", at(20))
    summary = await store.outbox_summary()
    assert (summary.depth, summary.parked, summary.oldest_created_at) == (
        3,
        1,
        "2025-06-01T12:00:01.000Z",
    )


# -- thinning -------------------------------------------------------------------------


async def queue_busy_session(store: ChargePointStore) -> None:
    """Status, Start, six MeterValues, a status, Stop: ten rows, six of them MeterValues."""
    await status(store, ConnectorStatus.PREPARING)
    await begin(store)
    for energy in (1001, 1002, 1003):
        await meter(store, S1, energy)
    await status(store, ConnectorStatus.SUSPENDED_EV)
    for energy in (1004, 1005, 1006):
        await meter(store, S1, energy)
    await stop(store, S1, 1007)


async def test_thinning_within_the_budget_drops_nothing(store: ChargePointStore) -> None:
    await queue_busy_session(store)
    assert await store.thin_meter_values(10) == 0
    assert await store.thin_meter_values(50_000) == 0
    assert await store.outbox_depth() == 10
    assert (await store.outbox_summary()).thinned_meter_values == 0


@pytest.mark.parametrize(
    ("budget", "kept"),
    [
        # Two over: the 2nd and 4th MeterValues go.
        (8, ["1001", "1003", "1005", "1006"]),
        # Far over: every other MeterValues goes, and nothing else, however far.
        (1, ["1001", "1003", "1005"]),
    ],
)
async def test_thinning_over_the_budget_drops_every_other_meter_values_only(
    store: ChargePointStore, budget: int, kept: list[str]
) -> None:
    await queue_busy_session(store)
    dropped = 6 - len(kept)
    assert await store.thin_meter_values(budget) == dropped
    seen = await drain(store)
    assert [energy for _, action, energy in seen if action == "MeterValues"] == kept
    assert [action for _, action, _ in seen if action != "MeterValues"] == [
        "StatusNotification",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
    ]
    summary = await store.outbox_summary()
    assert summary.thinned_meter_values == dropped
    assert summary.dead_letters == 0  # thinning is counted, not dead-lettered


async def test_thinning_never_drops_start_stop_or_status_and_counts_up(
    store: ChargePointStore,
) -> None:
    for sid, connector_id in ((S1, 1), (S2, 2), (S3, 3)):
        await begin(store, sid, connector_id=connector_id)
        await status(store, ConnectorStatus.CHARGING)
        await stop(store, sid, 2000)
    assert await store.thin_meter_values(1) == 0
    assert await store.outbox_depth() == 9

    await meter(store, S1, 1001)
    await meter(store, S1, 1002)
    assert await store.thin_meter_values(1) == 1
    await meter(store, S1, 1003)
    await meter(store, S1, 1004)
    assert await store.thin_meter_values(1) == 1
    assert (await store.outbox_summary()).thinned_meter_values == 2


# -- sessions and connectors ----------------------------------------------------------


async def test_open_sessions_gives_the_newest_active_session_per_connector(
    store: ChargePointStore,
) -> None:
    assert await store.open_sessions() == []
    old = SessionId("00000000-0000-4000-8000-000000000000")
    await begin(store, old, 100, T0, connector_id=1)
    await begin(store, S1, 1000, at(60), connector_id=1)  # a crash left `old` active too
    await begin(store, S2, 2000, at(30), connector_id=2)
    await begin(store, S3, 3000, at(10), connector_id=3)
    await stop(store, S3, 3100, at(20))

    rows = {row.connector_id: row for row in await store.open_sessions()}
    assert sorted(rows) == [1, 2]
    assert rows[1].session_id == S1 and rows[2].session_id == S2
    one = rows[1]
    assert (one.id_tag, one.meter_start_wh, one.started_at, one.state) == (
        CARD,
        1000,
        "2025-06-01T12:01:00.000Z",
        "active",
    )
    assert one.transaction_id is None and one.meter_stop_wh is None
    stopped = await store.session(S3)
    assert stopped is not None and (stopped.meter_stop_wh, stopped.stop_reason) == (3100, "Local")


async def test_availability_is_stored_per_connector_and_survives_a_restart(
    db_path: Path,
) -> None:
    store = await ChargePointStore.open(db_path)
    try:
        assert await store.availability() == {}
        async with store.change() as change:
            await change.set_availability(1, False)
            await change.set_availability(2, True)
        async with store.change() as change:
            await change.set_availability(2, False)
            await change.set_availability(1, True)
        assert await store.availability() == {1: True, 2: False}
    finally:
        await store.close()
    again = await ChargePointStore.open(db_path)
    try:
        assert await again.availability() == {1: True, 2: False}
    finally:
        await again.close()


# -- migrations -------------------------------------------------------------------------


async def test_migrates_from_scratch_and_reopens_with_the_data(db_path: Path) -> None:
    assert not await asyncio.to_thread(db_path.exists)
    store = await ChargePointStore.open(db_path)
    try:
        message_id = await begin(store)
    finally:
        await store.close()
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    tables = {row[0] for row in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"sessions", "outbox", "dead_letters", "connector_availability", "counters"} <= tables
    assert (await asyncio.to_thread(db_path.stat)).st_mode & 0o077 == 0

    again = await ChargePointStore.open(db_path)
    try:
        (row,) = await again.open_sessions()
        assert row.session_id == S1
        entry = await head(again)
        assert entry.message_id == message_id
    finally:
        await again.close()
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


V1_START = {
    "connector_id": 1,
    "id_tag": "X",
    "meter_start": 5,
    "timestamp": "2025-06-01T12:00:00.000Z",
}
V1_METER = {
    "connector_id": 1,
    "meter_value": [
        {
            "timestamp": "2025-06-01T12:00:01.000Z",
            "sampled_value": [
                {
                    "value": "6",
                    "context": "Sample.Periodic",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                }
            ],
        }
    ],
}
V1_STOP = {
    "id_tag": "X",
    "meter_stop": 7,
    "timestamp": "2025-06-01T12:00:02.000Z",
    "reason": "Local",
}


async def write_version_1(path: Path) -> None:
    """A file as edgepoint with schema version 1 left it: snake_case payloads, no ids."""
    db = await Database.open(path, MIGRATIONS[:1])
    rows: list[tuple[str | None, str, str]] = [
        (S1, "StartTransaction", json.dumps(V1_START)),
        (S1, "MeterValues", json.dumps(V1_METER)),
        (None, "StopTransaction", json.dumps(V1_STOP)),  # no session: no transactionId ever
        (S1, "MeterValues", '{"connector_id": 1, "meter_value": [{'),  # cut short
        (S1, "MeterValues", "[1, 2]"),  # JSON, but not an object
        (S1, "StopTransaction", json.dumps(V1_STOP)),
    ]
    try:
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO sessions (session_id, connector_id, id_tag, meter_start_wh,"
                " started_at, state) VALUES (?, 1, 'X', 5, '2025-06-01T12:00:00.000Z', 'active')",
                (S1,),
            )
            for sid, action, payload in rows:
                await conn.execute(
                    "INSERT INTO outbox (session_id, action, payload, created_at)"
                    " VALUES (?, ?, ?, '2025-06-01T12:00:00.000Z')",
                    (sid, action, payload),
                )
            await conn.execute(
                "INSERT INTO dead_letters (seq, session_id, action, payload, created_at,"
                " failed_at, reason) VALUES (99, NULL, 'MeterValues', '{}', 'a', 'b', 'old')"
            )
    finally:
        await db.close()
    assert query(path, "PRAGMA user_version") == [(1,)]


async def test_a_version_1_database_is_migrated_to_wire_form_with_message_ids(
    db_path: Path,
) -> None:
    await write_version_1(db_path)
    store = await ChargePointStore.open(db_path)
    try:
        assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert (await store.outbox_summary()).dead_letters == 1  # the old one, kind 'dead'
        items: list[OutboxEntry | UnreadableRow] = []
        while (item := await store.outbox_next()) is not None:
            # What is read is what is stored: the same message id on every read.
            assert await store.outbox_next() == item
            items.append(item)
            if isinstance(item, UnreadableRow):
                await store.give_up(item.seq, f"unreadable: {item.reason}", T0, "quarantined")
            else:
                await store.delivered(item, 77 if item.action == "StartTransaction" else None)
        summary = await store.outbox_summary()
        (session,) = await store.open_sessions()
    finally:
        await store.close()

    entries = [i for i in items if isinstance(i, OutboxEntry)]
    unreadable = [i for i in items if isinstance(i, UnreadableRow)]
    assert [e.action for e in entries] == ["StartTransaction", "MeterValues", "StopTransaction"]
    start, values, stop_entry = (e.payload for e in entries)
    assert start == {
        "connectorId": 1,
        "idTag": "X",
        "meterStart": 5,
        "timestamp": V1_START["timestamp"],
    }
    assert values == {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": "2025-06-01T12:00:01.000Z",
                "sampledValue": [
                    {
                        "value": "6",
                        "context": "Sample.Periodic",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    }
                ],
            }
        ],
    }
    assert stop_entry == {
        "idTag": "X",
        "meterStop": 7,
        "timestamp": "2025-06-01T12:00:02.000Z",
        "reason": "Local",
    }
    # Each is a valid OCPP 1.6 request once the send adds the transactionId.
    for entry in entries:
        payload = dict(entry.payload)
        if entry.action != "StartTransaction":
            payload["transactionId"] = 77
        assert request_problem(entry.action, payload) is None, entry
    ids = [e.message_id for e in entries]
    assert all(HEX_ID.match(i) for i in ids) and len(set(ids)) == 3

    assert [(u.seq, u.reason) for u in unreadable] == [
        (3, "StopTransaction without its session"),
        (4, unreadable[1].reason),
        (5, "payload is not a JSON object"),
    ]
    assert unreadable[1].reason.startswith("payload is not JSON")
    assert (summary.depth, summary.dead_letters, summary.quarantined) == (0, 1, 3)
    assert session.session_id == S1
    assert query(db_path, "SELECT transaction_id FROM sessions") == [(77,)]


async def test_an_unreadable_row_of_the_current_schema_is_reported_not_raised(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    with sqlite3.connect(db_path) as conn:
        for sid, action, payload, message_id in [
            (S1, "MeterValues", "{not json", "a" * 32),
            (S1, "StopTransaction", '"just a string"', "b" * 32),
            (None, "StopTransaction", "{}", "c" * 32),
            (S1, "MeterValues", "{}", None),
        ]:
            conn.execute(
                "INSERT INTO outbox (session_id, action, payload, created_at, message_id, wire)"
                " VALUES (?, ?, ?, '2025-06-01T12:00:00.000Z', ?, 1)",
                (sid, action, payload, message_id),
            )
    await store.delivered(await head(store), 5, "Accepted")
    reasons: list[str] = []
    while (item := await store.outbox_next()) is not None:
        assert isinstance(item, UnreadableRow), item
        reasons.append(item.reason)
        await store.give_up(item.seq, item.reason, T0, "quarantined")
    assert reasons[0].startswith("payload is not JSON")
    assert reasons[1:] == [
        "payload is not a JSON object",
        "StopTransaction without its session",
        "no message id",
    ]
    assert (await store.outbox_summary()).quarantined == 4
