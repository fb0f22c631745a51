"""ChargePointStore on a real SQLite file: a state change commits with its message, or neither."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_harness import query

from edgepoint.chargepoint import messages
from edgepoint.charging.events import IdTag, SessionId, StopReason, TelemetrySample
from edgepoint.errors import StorageError
from edgepoint.storage.chargepoint import MIGRATIONS, ChargePointStore

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
CARD = IdTag("04A1B2C3")
S1 = SessionId("11111111-1111-4111-8111-111111111111")
S2 = SessionId("22222222-2222-4222-8222-222222222222")


def sample(energy_wh: int) -> TelemetrySample:
    return TelemetrySample(1, energy_wh, 7360.0, 32.0, 230.0, 25.0)


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


async def begin(store: ChargePointStore, sid: SessionId = S1, meter: int = 1000) -> None:
    start = messages.start_transaction(1, CARD, meter, T0)
    await store.begin_session(sid, 1, CARD, meter, T0, start)


async def test_begin_session_stores_the_session_and_its_start_together(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    assert query(db_path, "SELECT session_id, id_tag, meter_start_wh, state FROM sessions") == [
        (S1, CARD, 1000, "active")
    ]
    head = await store.outbox_head()
    assert head is not None
    assert (head.session_id, head.action, head.attempts) == (S1, "StartTransaction", 0)
    assert head.payload == {
        "connector_id": 1,
        "id_tag": CARD,
        "meter_start": 1000,
        "timestamp": "2025-06-01T12:00:00.000Z",
    }


async def test_begin_session_with_an_unencodable_message_stores_nothing(
    store: ChargePointStore, db_path: Path
) -> None:
    with pytest.raises(TypeError):
        await store.begin_session(S1, 1, CARD, 1000, T0, {"meter_start": object()})
    assert query(db_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert query(db_path, "SELECT COUNT(*) FROM outbox") == [(0,)]
    # The connection is usable afterwards (the transaction was rolled back, not left open).
    await begin(store)
    assert await store.outbox_depth() == 1


async def test_begin_session_whose_outbox_insert_fails_leaves_no_session(
    store: ChargePointStore, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk"
            " full (simulated)'); END"
        )
    with pytest.raises(StorageError, match="simulated"):
        await begin(store)
    assert query(db_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    assert await store.open_session() is None


async def test_end_session_closes_the_session_and_queues_the_stop_together(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    stop = messages.stop_transaction(CARD, 1500, StopReason.LOCAL, T0 + timedelta(minutes=5))
    await store.end_session(S1, CARD, 1500, "Local", T0 + timedelta(minutes=5), stop)
    assert query(
        db_path,
        "SELECT state, meter_stop_wh, stop_reason, stop_id_tag, stopped_at FROM sessions",
    ) == [("stopped", 1500, "Local", CARD, "2025-06-01T12:05:00.000Z")]
    actions = query(db_path, "SELECT action, session_id FROM outbox ORDER BY seq")
    assert actions == [("StartTransaction", S1), ("StopTransaction", S1)]
    assert await store.open_session() is None


async def test_end_session_whose_outbox_insert_fails_leaves_the_session_active(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.action = 'StopTransaction'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    stop = messages.stop_transaction(None, 1500, StopReason.OTHER, T0)
    with pytest.raises(StorageError):
        await store.end_session(S1, None, 1500, "Other", T0, stop)
    assert query(db_path, "SELECT state, meter_stop_wh, stop_reason FROM sessions") == [
        ("active", None, None)
    ]
    with pytest.raises(TypeError):
        await store.end_session(S1, None, 1500, "Other", T0, {"meter_stop": {1, 2}})
    open_row = await store.open_session()
    assert open_row is not None and open_row.session_id == S1
    assert await store.outbox_depth() == 1


async def test_outbox_head_is_first_in_first_out(store: ChargePointStore) -> None:
    await begin(store)
    for energy in (1001, 1002, 1003):
        await store.queue_meter_values(S1, T0, messages.meter_values(1, sample(energy), T0))
    stop = messages.stop_transaction(CARD, 1004, StopReason.LOCAL, T0)
    await store.end_session(S1, CARD, 1004, "Local", T0, stop)

    seen = []
    while (entry := await store.outbox_head()) is not None:
        # The head stays the head until it is acknowledged, however often it is read.
        assert await store.outbox_head() == entry
        energy = (
            entry.payload["meter_value"][0]["sampled_value"][0]["value"]
            if entry.action == "MeterValues"
            else ""
        )
        seen.append((entry.action, energy))
        await store.delivered(entry)
    assert seen == [
        ("StartTransaction", ""),
        ("MeterValues", "1001"),
        ("MeterValues", "1002"),
        ("MeterValues", "1003"),
        ("StopTransaction", ""),
    ]
    assert await store.outbox_depth() == 0


async def test_delivered_start_keeps_transaction_id_and_status_and_drops_the_entry(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    assert await store.transaction_id(S1) is None
    entry = await store.outbox_head()
    assert entry is not None
    await store.delivered(entry, 42, "Accepted")
    assert await store.transaction_id(S1) == 42
    assert query(db_path, "SELECT transaction_id, auth_status FROM sessions") == [(42, "Accepted")]
    assert await store.outbox_depth() == 0


async def test_delivered_start_is_all_or_nothing(store: ChargePointStore, db_path: Path) -> None:
    await begin(store)
    entry = await store.outbox_head()
    assert entry is not None
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER keep BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(StorageError):
        await store.delivered(entry, 42, "Accepted")
    # Neither half happened: no transaction id without the entry gone, so a resend
    # (which the CSMS answers with the same id) stores it later.
    assert await store.transaction_id(S1) is None
    assert await store.outbox_head() == entry


async def test_failed_attempt_counts_and_keeps_the_entry(store: ChargePointStore) -> None:
    await begin(store)
    entry = await store.outbox_head()
    assert entry is not None
    await store.failed_attempt(entry, "no answer (timeout)")
    await store.failed_attempt(entry, "no answer (timeout)")
    again = await store.outbox_head()
    assert again is not None and again.seq == entry.seq and again.attempts == 2


async def test_give_up_moves_the_entry_to_dead_letters_with_the_reason(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    await store.queue_meter_values(S1, T0, messages.meter_values(1, sample(1001), T0))
    entry = await store.outbox_head()
    assert entry is not None and entry.action == "StartTransaction"
    failed_at = T0 + timedelta(seconds=30)
    await store.give_up(entry, "CallError FormationViolationError: bad", failed_at)

    rows = query(
        db_path,
        "SELECT seq, session_id, action, payload, created_at, failed_at, reason FROM dead_letters",
    )
    assert len(rows) == 1
    seq, sid, action, payload, created_at, at, reason = rows[0]
    assert (seq, sid, action) == (entry.seq, S1, "StartTransaction")
    assert '"meter_start":1000' in payload
    assert created_at == "2025-06-01T12:00:00.000Z"
    assert at == "2025-06-01T12:00:30.000Z"
    assert reason == "CallError FormationViolationError: bad"
    assert await store.dead_letter_count() == 1
    head = await store.outbox_head()
    assert head is not None and head.action == "MeterValues"
    assert await store.outbox_depth() == 1


async def test_open_session_finds_the_active_session_only(store: ChargePointStore) -> None:
    assert await store.open_session() is None
    await begin(store, S1, 1000)
    stop = messages.stop_transaction(CARD, 1200, StopReason.LOCAL, T0)
    await store.end_session(S1, CARD, 1200, "Local", T0, stop)
    assert await store.open_session() is None
    start2 = messages.start_transaction(1, CARD, 1200, T0 + timedelta(minutes=1))
    await store.begin_session(S2, 1, CARD, 1200, T0 + timedelta(minutes=1), start2)
    row = await store.open_session()
    assert row is not None
    assert (row.session_id, row.id_tag, row.meter_start_wh, row.state) == (
        S2,
        CARD,
        1200,
        "active",
    )
    assert row.transaction_id is None and row.meter_stop_wh is None
    stopped = await store.session(S1)
    assert stopped is not None and (stopped.meter_stop_wh, stopped.stop_reason) == (1200, "Local")


async def test_migrates_from_scratch_and_reopens_with_the_data(db_path: Path) -> None:
    assert not await asyncio.to_thread(db_path.exists)
    store = await ChargePointStore.open(db_path)
    try:
        await begin(store)
    finally:
        await store.close()
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    tables = {row[0] for row in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"sessions", "outbox", "dead_letters", "sessions_state"} <= tables
    assert (await asyncio.to_thread(db_path.stat)).st_mode & 0o077 == 0

    again = await ChargePointStore.open(db_path)
    try:
        row = await again.open_session()
        assert row is not None and row.session_id == S1
        assert await again.outbox_depth() == 1
    finally:
        await again.close()
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_a_session_is_stopped_once_however_often_asked(
    store: ChargePointStore, db_path: Path
) -> None:
    await begin(store)
    at = T0 + timedelta(minutes=5)
    stop = messages.stop_transaction(CARD, 1500, StopReason.LOCAL, at)
    assert await store.end_session(S1, CARD, 1500, "Local", at, stop) is True
    assert await store.end_session(S1, None, 1600, "Reboot", at, stop) is False
    stops = query(db_path, "SELECT COUNT(*) FROM outbox WHERE action = 'StopTransaction'")
    assert stops == [(1,)]
    assert query(db_path, "SELECT meter_stop_wh, stop_reason FROM sessions") == [(1500, "Local")]


async def test_meter_values_keep_the_highest_reading_on_the_session(
    store: ChargePointStore,
) -> None:
    await begin(store)
    for reading in (1200, 1300, 1250):
        values = messages.meter_values(1, sample(reading), T0)
        await store.queue_meter_values(S1, T0, values, reading)
    row = await store.open_session()
    assert row is not None and row.last_reading_wh == 1300


async def test_refusals_are_counted_apart_from_timeouts(store: ChargePointStore) -> None:
    await begin(store)
    entry = await store.outbox_head()
    assert entry is not None
    await store.failed_attempt(entry, "no answer (timeout)")
    await store.failed_attempt(entry, "CallError InternalError", refused=True)
    again = await store.outbox_head()
    assert again is not None and (again.attempts, again.refusals) == (2, 1)
