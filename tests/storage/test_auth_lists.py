"""AuthListStore on a real SQLite file: the local list, its version, and the bounded cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgepoint.charging.authorization import (
    TagEntry,
    UpdateStatus,
    UpdateType,
    apply_local_list,
)
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.errors import StorageError
from edgepoint.storage.auth_lists import AUTH_LISTS_SCHEMA, AuthListStore
from edgepoint.storage.sqlite import Database

A = AuthorizationStatus
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ALICE = IdTag("04A1B2C3")
BOB = IdTag("04FFEE11")
CAROL = IdTag("04C0FFEE")
DAVE = IdTag("04DADADA")


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(name="db_path")
def db_path_fixture(tmp_path: Path) -> Path:
    return tmp_path / "var" / "edgepoint.db"


@pytest.fixture(name="db")
async def db_fixture(db_path: Path) -> AsyncIterator[Database]:
    db = await Database.open(db_path, [AUTH_LISTS_SCHEMA])
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture(name="store")
def store_fixture(db: Database) -> AuthListStore:
    return AuthListStore(db, cache_max_entries=3)


async def test_a_new_database_has_an_empty_list_at_version_0_and_an_empty_cache(
    store: AuthListStore,
) -> None:
    assert await store.local_list_version() == 0
    assert await store.local_list() == {}
    assert await store.list_entry(ALICE) is None
    assert await store.cache_entry(ALICE) is None
    assert await store.cache_size() == 0


async def test_replace_local_list_round_trips_entries_and_version(store: AuthListStore) -> None:
    expiry = datetime.fromisoformat("2026-01-31T23:59:59.250+01:00")
    entries = {
        ALICE: TagEntry(A.ACCEPTED, expiry, "FLEET-1"),
        BOB: TagEntry(A.BLOCKED),
    }
    await store.replace_local_list(7, entries)
    assert await store.local_list_version() == 7
    assert await store.local_list() == entries
    alice = await store.list_entry(ALICE)
    assert alice == entries[ALICE]
    assert alice is not None and alice.expiry is not None
    assert alice.expiry.utcoffset() == timedelta(0), "read back as an aware UTC datetime"

    await store.replace_local_list(8, {CAROL: TagEntry(A.ACCEPTED)})
    assert await store.local_list() == {CAROL: TagEntry(A.ACCEPTED)}
    assert await store.list_entry(ALICE) is None


async def test_expiry_is_stored_as_iso_utc_text(store: AuthListStore, db: Database) -> None:
    expiry = datetime.fromisoformat("2026-01-31T23:59:59+01:00")
    await store.replace_local_list(1, {ALICE: TagEntry(A.ACCEPTED, expiry)})
    async with db.read() as conn, conn.execute("SELECT expiry FROM local_list") as cur:
        row = await cur.fetchone()
    assert row is not None and row[0] == "2026-01-31T22:59:59.000Z"


async def test_idtags_are_looked_up_without_regard_to_case(store: AuthListStore) -> None:
    await store.replace_local_list(1, {ALICE: TagEntry(A.ACCEPTED)})
    await store.store_cache(BOB, TagEntry(A.BLOCKED), at(0))
    assert await store.list_entry(IdTag("04a1b2c3")) == TagEntry(A.ACCEPTED)
    assert await store.cache_entry(IdTag("04ffee11")) == TagEntry(A.BLOCKED)


async def test_a_failed_replace_leaves_the_old_list_and_version(store: AuthListStore) -> None:
    await store.replace_local_list(3, {ALICE: TagEntry(A.ACCEPTED)})
    # The same card twice (CiString: case-insensitive) breaks the primary key mid-way.
    clash = {BOB: TagEntry(A.ACCEPTED), IdTag("04ffee11"): TagEntry(A.BLOCKED)}
    with pytest.raises(StorageError):
        await store.replace_local_list(4, clash)
    assert await store.local_list_version() == 3
    assert await store.local_list() == {ALICE: TagEntry(A.ACCEPTED)}


async def test_the_list_survives_a_restart(db_path: Path) -> None:
    db = await Database.open(db_path, [AUTH_LISTS_SCHEMA])
    await AuthListStore(db).replace_local_list(5, {ALICE: TagEntry(A.ACCEPTED)})
    await AuthListStore(db).store_cache(BOB, TagEntry(A.INVALID), at(0))
    await db.close()

    db = await Database.open(db_path, [AUTH_LISTS_SCHEMA])
    try:
        again = AuthListStore(db)
        assert await again.local_list_version() == 5
        assert await again.list_entry(ALICE) == TagEntry(A.ACCEPTED)
        assert await again.cache_entry(BOB) == TagEntry(A.INVALID)
    finally:
        await db.close()


async def test_send_local_list_end_to_end(store: AuthListStore) -> None:
    """The way the OCPP handler uses it: read, apply the pure rules, replace."""
    requests: list[tuple[UpdateType, int, list[tuple[IdTag, TagEntry | None]], UpdateStatus]] = [
        (UpdateType.FULL, 2, [(ALICE, TagEntry(A.ACCEPTED))], UpdateStatus.ACCEPTED),
        (UpdateType.DIFFERENTIAL, 5, [(BOB, TagEntry(A.BLOCKED))], UpdateStatus.ACCEPTED),
        (UpdateType.DIFFERENTIAL, 5, [(ALICE, None)], UpdateStatus.VERSION_MISMATCH),
        (UpdateType.DIFFERENTIAL, 6, [(ALICE, None)], UpdateStatus.ACCEPTED),
    ]
    for update_type, version, entries, expected_status in requests:
        change = apply_local_list(
            await store.local_list_version(),
            await store.local_list(),
            update_type,
            version,
            entries,
            max_length=10,
            send_max_length=10,
        )
        assert change.status is expected_status
        if change.status is UpdateStatus.ACCEPTED:
            await store.replace_local_list(change.version, change.entries)
    assert await store.local_list_version() == 6
    assert await store.local_list() == {BOB: TagEntry(A.BLOCKED)}


# -- the cache ---------------------------------------------------------------------------


async def test_store_cache_adds_and_replaces(store: AuthListStore) -> None:
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED, at(60), "FLEET-1"), at(0))
    assert await store.cache_entry(ALICE) == TagEntry(A.ACCEPTED, at(60), "FLEET-1")
    await store.store_cache(IdTag("04a1b2c3"), TagEntry(A.BLOCKED), at(1))
    assert await store.cache_entry(ALICE) == TagEntry(A.BLOCKED)
    assert await store.cache_size() == 1


async def test_clear_cache_empties_only_the_cache(store: AuthListStore) -> None:
    await store.replace_local_list(1, {ALICE: TagEntry(A.ACCEPTED)})
    await store.store_cache(BOB, TagEntry(A.ACCEPTED), at(0))
    await store.store_cache(CAROL, TagEntry(A.BLOCKED), at(1))
    assert await store.clear_cache() == 2
    assert await store.cache_size() == 0
    assert await store.list_entry(ALICE) == TagEntry(A.ACCEPTED)


async def test_replacing_the_list_drops_its_cards_from_the_cache(store: AuthListStore) -> None:
    await store.store_cache(ALICE, TagEntry(A.BLOCKED), at(0))
    await store.store_cache(BOB, TagEntry(A.ACCEPTED), at(1))
    await store.replace_local_list(1, {IdTag("04a1b2c3"): TagEntry(A.ACCEPTED)})
    assert await store.cache_entry(ALICE) is None
    assert await store.cache_entry(BOB) == TagEntry(A.ACCEPTED)


async def _cached(store: AuthListStore, *tags: IdTag) -> set[IdTag]:
    return {tag for tag in tags if await store.cache_entry(tag) is not None}


async def test_a_full_cache_evicts_the_least_recently_updated_valid_entry(
    store: AuthListStore,
) -> None:
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED), at(0))
    await store.store_cache(BOB, TagEntry(A.ACCEPTED), at(1))
    await store.store_cache(CAROL, TagEntry(A.ACCEPTED), at(2))
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED), at(3))  # refreshed: now the newest
    await store.store_cache(DAVE, TagEntry(A.ACCEPTED), at(4))
    assert await store.cache_size() == 3
    assert await _cached(store, ALICE, BOB, CAROL, DAVE) == {ALICE, CAROL, DAVE}


async def test_a_full_cache_evicts_not_valid_entries_first(store: AuthListStore) -> None:
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED), at(0))
    await store.store_cache(BOB, TagEntry(A.ACCEPTED), at(1))
    await store.store_cache(CAROL, TagEntry(A.BLOCKED), at(2))  # newer, but not valid
    await store.store_cache(DAVE, TagEntry(A.ACCEPTED), at(3))
    assert await _cached(store, ALICE, BOB, CAROL, DAVE) == {ALICE, BOB, DAVE}


async def test_a_valid_entry_past_its_expiry_counts_as_not_valid(store: AuthListStore) -> None:
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED), at(0))
    await store.store_cache(BOB, TagEntry(A.CONCURRENT_TX), at(1))
    await store.store_cache(CAROL, TagEntry(A.ACCEPTED, expiry=at(2)), at(2))
    await store.store_cache(DAVE, TagEntry(A.ACCEPTED), at(5))  # CAROL expired at minute 2
    assert await _cached(store, ALICE, BOB, CAROL, DAVE) == {ALICE, BOB, DAVE}


async def test_the_entry_just_stored_is_never_evicted(db: Database) -> None:
    store = AuthListStore(db, cache_max_entries=2)
    await store.store_cache(ALICE, TagEntry(A.ACCEPTED), at(0))
    await store.store_cache(BOB, TagEntry(A.ACCEPTED), at(1))
    await store.store_cache(CAROL, TagEntry(A.BLOCKED), at(2))
    assert await _cached(store, ALICE, BOB, CAROL) == {BOB, CAROL}


async def test_a_smaller_limit_trims_the_cache_at_the_next_store(db: Database) -> None:
    big = AuthListStore(db, cache_max_entries=10)
    for minute, tag in enumerate((ALICE, BOB, CAROL)):
        await big.store_cache(tag, TagEntry(A.ACCEPTED), at(minute))
    await AuthListStore(db, cache_max_entries=1).store_cache(DAVE, TagEntry(A.ACCEPTED), at(9))
    assert await big.cache_size() == 1
    assert await big.cache_entry(DAVE) == TagEntry(A.ACCEPTED)


def test_the_cache_must_hold_at_least_one_entry(db: Database) -> None:
    with pytest.raises(ValueError, match="cache_max_entries"):
        AuthListStore(db, cache_max_entries=0)


async def test_a_hand_edited_expiry_reads_as_expired_not_as_a_crash(
    store: AuthListStore, db: Database
) -> None:
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO auth_cache (id_tag, status, expiry, parent_id_tag, updated_at)"
            " VALUES (?, 'Accepted', 'next tuesday', NULL, ?)",
            (ALICE, "2025-06-01T12:00:00.000Z"),
        )
        await conn.execute(
            "INSERT INTO local_list (id_tag, status, expiry) VALUES (?, 'Accepted', ?)",
            (BOB, "2030-01-01T00:00:00"),
        )
    alice = await store.cache_entry(ALICE)
    assert alice is not None and alice.expiry is not None and alice.expiry < T0
    bob = await store.list_entry(BOB)
    assert bob == TagEntry(A.ACCEPTED, datetime(2030, 1, 1, tzinfo=UTC)), "naive means UTC"


async def test_the_schema_refuses_a_status_that_is_not_ocpp(db: Database) -> None:
    with pytest.raises(StorageError):
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO local_list (id_tag, status) VALUES (?, 'Unavailable')", (ALICE,)
            )
