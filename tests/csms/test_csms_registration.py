"""csms.db's charger identity: key versions, removal, pending ids, bulk import, migration 4."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from csms_fixtures import clock_fixture  # noqa: F401  (fixture)
from csms_support import TEST_ITERATIONS, FakeClock

from edgepoint.config import CsmsConfig
from edgepoint.csms.db import CsmsStore, PendingRepository, open_csms_store
from edgepoint.csms.ids import ChargePointId, CsmsError, InvalidIdentifierError
from edgepoint.csms.schema import MIGRATIONS
from edgepoint.csms.server import SiteCsms
from edgepoint.storage.worker import SqliteWorker

CP = ChargePointId("CP-1")
KEY = "0123456789abcdef0123"
OTHER_KEY = "fedcba9876543210fedc"


@pytest.fixture(name="store")
async def store_fixture(tmp_path: Path, clock: FakeClock) -> AsyncIterator[CsmsStore]:
    async with open_csms_store(
        tmp_path / "csms.db", clock, auth_iterations=TEST_ITERATIONS
    ) as opened:
        yield opened


async def key_version(store: CsmsStore, cp_id: str = CP) -> int | None:
    record = await store.charge_points.get(cp_id)
    return None if record is None else record.key_version


async def test_every_key_change_bumps_the_key_version(store: CsmsStore) -> None:
    charge_points = store.charge_points
    assert await charge_points.add(CP, KEY)
    assert await key_version(store) == 1
    assert not await charge_points.add(CP, OTHER_KEY)  # add never overwrites
    assert await charge_points.verify_auth_key(CP, KEY)
    assert await charge_points.rekey(CP, OTHER_KEY)
    assert await key_version(store) == 2
    assert await charge_points.verify_auth_key(CP, OTHER_KEY)
    assert not await charge_points.verify_auth_key(CP, KEY)
    await charge_points.set_auth_key(CP, KEY)
    assert await key_version(store) == 3
    assert not await charge_points.rekey("CP-9", KEY)  # rekey never registers
    assert await charge_points.get("CP-9") is None


async def test_a_removed_charger_is_unknown_but_keeps_its_history(
    store: CsmsStore, clock: FakeClock
) -> None:
    charge_points = store.charge_points
    await charge_points.set_auth_key(CP, KEY)
    outcome = await store.transactions.start(
        CP,
        1,
        "TAG1",
        meter_start=0,
        timestamp=clock.now,
        reservation_id=None,
        received_at=clock.now,
    )
    registered_at = (await charge_points.get(CP)).registered_at  # type: ignore[union-attr]

    assert await charge_points.remove(CP)
    assert not await charge_points.remove(CP)
    assert await charge_points.get(CP) is None
    assert await charge_points.list() == []
    assert not await charge_points.verify_auth_key(CP, KEY)
    assert not await charge_points.rekey(CP, OTHER_KEY)
    # Billing history stays: the transaction still names the charger.
    kept = await store.transactions.get(outcome.transaction_id)
    assert kept is not None and kept.charge_point_id == CP

    clock.now += timedelta(hours=1)
    assert await charge_points.add(CP, OTHER_KEY)  # registered again, with a fresh key
    again = await charge_points.get(CP)
    assert again is not None
    # Never back to a version a server may have cached before the removal.
    assert again.key_version == 3
    assert again.registered_at > registered_at
    assert await charge_points.verify_auth_key(CP, OTHER_KEY)


async def test_pending_ids_are_counted_bounded_and_leave_when_registered(
    store: CsmsStore, clock: FakeClock
) -> None:
    pending = PendingRepository(store.db, max_rows=3)
    start = clock.now
    for n in range(5):
        await pending.record(ChargePointId(f"X{n}"), "10.0.0.1", start + timedelta(seconds=n))
    await pending.record(ChargePointId("X3"), "10.0.0.9\n", start + timedelta(seconds=9))
    listed = await pending.list()
    assert [p.charge_point_id for p in listed] == ["X3", "X4", "X2"]
    x3 = listed[0]
    assert (x3.attempts, x3.last_address) == (2, "10.0.0.9?")  # no forged log lines
    assert (x3.first_seen, x3.last_seen) == (
        start + timedelta(seconds=3),
        start + timedelta(seconds=9),
    )

    await store.charge_points.add("X4", KEY)
    assert [p.charge_point_id for p in await pending.list()] == ["X3", "X2"]
    assert await pending.discard("X2")
    assert not await pending.discard("X2")
    assert await pending.get("X3") == x3
    assert await pending.get("X2") is None


async def test_register_many_is_all_or_nothing(store: CsmsStore) -> None:
    charge_points = store.charge_points
    await charge_points.set_auth_key("B-2", KEY)
    entries = [(f"B-{n}", f"{n:02d}-0123456789abcdef") for n in range(1, 6)]
    progress: list[tuple[int, int]] = []
    with pytest.raises(CsmsError, match="already registered: B-2"):
        await charge_points.register_many(entries, progress=lambda d, t: progress.append((d, t)))
    assert [r.id for r in await charge_points.list()] == ["B-2"]
    assert progress == [(n, 5) for n in range(1, 6)]

    assert await charge_points.register_many(entries, replace=True, workers=2) == 5
    assert [r.id for r in await charge_points.list()] == [f"B-{n}" for n in range(1, 6)]
    assert await key_version(store, "B-2") == 2
    for cp_id, key in entries:
        assert await charge_points.verify_auth_key(cp_id, key)

    with pytest.raises(CsmsError, match="more than once"):
        await charge_points.register_many([("C-1", KEY), ("C-1", OTHER_KEY)])
    with pytest.raises(InvalidIdentifierError):
        await charge_points.register_many([("C-1", KEY), ("C-2", "short")])
    assert await charge_points.get("C-1") is None


async def test_migration_4_keeps_registered_chargers(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "csms.db"
    old = await SqliteWorker.open(path, MIGRATIONS[:3])
    await old.write(
        lambda db: db.execute(
            "INSERT INTO charge_points (id, registered_at)"
            " VALUES ('OLD-1', '2025-01-01T00:00:00.000Z')"
        )
    )
    await old.close()
    async with open_csms_store(path, clock, auth_iterations=TEST_ITERATIONS) as store:
        record = await store.charge_points.get("OLD-1")
        assert record is not None and record.key_version == 0
        await store.charge_points.set_auth_key("OLD-1", KEY)
        assert await key_version(store, "OLD-1") == 1
        assert await store.pending.list() == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4


def test_a_configured_csms_keeps_pending_ids_in_csms_db(tmp_path: Path, clock: FakeClock) -> None:
    config = CsmsConfig(enabled=True, host="127.0.0.1", port=0, heartbeat_interval=60)
    csms = SiteCsms.from_config(config, tmp_path / "csms.db", clock)
    assert csms.pending is None  # `chargers pending` reads csms.db, even in another process
    assert SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock).pending is not None
