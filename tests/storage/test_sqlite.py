"""open_database, migrations and Database transactions on real SQLite files in a temp folder."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from edgepoint.errors import StorageError
from edgepoint.storage.sqlite import Database, open_database

MIGRATIONS = (
    "CREATE TABLE cards (id TEXT PRIMARY KEY, name TEXT NOT NULL)",
    "ALTER TABLE cards ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;"
    " CREATE INDEX cards_blocked ON cards (blocked)",
)


def peek(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Look at the file with a separate plain sqlite3 connection."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def user_version(path: Path) -> int:
    return int(peek(path, "PRAGMA user_version")[0][0])


def tables(path: Path) -> set[str]:
    return {str(r[0]) for r in peek(path, "SELECT name FROM sqlite_master WHERE type='table'")}


async def test_migrates_from_scratch(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    db = await open_database(path, MIGRATIONS)
    await db.execute("INSERT INTO cards (id, name, blocked) VALUES ('A', 'Alice', 1)")
    await db.close()
    assert user_version(path) == 2
    assert peek(path, "SELECT id, name, blocked FROM cards") == [("A", "Alice", 1)]
    assert peek(path, "PRAGMA journal_mode") == [("wal",)]


async def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = await open_database(path, MIGRATIONS)
    await db.execute("INSERT INTO cards (id, name) VALUES ('A', 'Alice')")
    await db.close()
    # Running migration 1 again would fail ("table cards already exists").
    db = await open_database(path, MIGRATIONS)
    async with db.execute("SELECT id FROM cards") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("A",)]
    await db.close()
    assert user_version(path) == 2


async def test_upgrades_an_older_file_one_step(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = await open_database(path, MIGRATIONS[:1])
    await db.execute("INSERT INTO cards (id, name) VALUES ('A', 'Alice')")
    await db.close()
    assert user_version(path) == 1
    db = await open_database(path, MIGRATIONS)
    await db.close()
    assert user_version(path) == 2
    assert peek(path, "SELECT id, blocked FROM cards") == [("A", 0)]


async def test_a_failing_migration_rolls_back_entirely(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    broken = (
        *MIGRATIONS,
        "CREATE TABLE half (x INTEGER); INSERT INTO half VALUES (1);"
        " UPDATE cards SET name = 'changed'; INSERT INTO no_such_table VALUES (1)",
    )
    db = await open_database(path, MIGRATIONS)
    await db.execute("INSERT INTO cards (id, name) VALUES ('A', 'Alice')")
    await db.close()

    with pytest.raises(StorageError, match="no_such_table"):
        await open_database(path, broken)
    assert user_version(path) == 2
    assert "half" not in tables(path)
    assert peek(path, "SELECT name FROM cards") == [("Alice",)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # The file is still usable by the version that knows it.
    db = await open_database(path, MIGRATIONS)
    await db.close()


async def test_a_failing_first_migration_leaves_version_zero_and_a_private_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.db"
    with pytest.raises(StorageError):
        await open_database(path, ("CREATE TABLE t (x); CREATE TABLE t (y)",))
    assert user_version(path) == 0
    assert tables(path) == set()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_refuses_a_newer_schema_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(StorageError, match=r"version 7 is newer than this edgepoint knows \(2\)"):
        await open_database(path, MIGRATIONS)
    assert user_version(path) == 7
    assert tables(path) == {"future"}


async def test_database_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    old_umask = os.umask(0o002)
    try:
        db = await open_database(path, MIGRATIONS)
        await db.execute("INSERT INTO cards (id, name) VALUES ('A', 'Alice')")
        files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
        assert all(f.exists() for f in files)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        await db.close()
    finally:
        os.umask(old_umask)


async def test_an_existing_readable_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    db = await open_database(path, MIGRATIONS)
    await db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = await Database.open(path, MIGRATIONS)
    try:
        async with db.write() as conn:
            await conn.execute("INSERT INTO cards (id, name) VALUES ('A', 'Alice')")
            await conn.execute("INSERT INTO cards (id, name) VALUES ('B', 'Bob')")
        with pytest.raises(RuntimeError, match="boom"):
            async with db.write() as conn:
                await conn.execute("INSERT INTO cards (id, name) VALUES ('C', 'Carol')")
                await conn.execute("DELETE FROM cards WHERE id = 'A'")
                raise RuntimeError("boom")
        with pytest.raises(StorageError, match="UNIQUE"):
            async with db.write() as conn:
                await conn.execute("INSERT INTO cards (id, name) VALUES ('D', 'Dan')")
                await conn.execute("INSERT INTO cards (id, name) VALUES ('A', 'again')")
        # The connection is usable again (no transaction left open) ...
        async with db.write() as conn:
            await conn.execute("INSERT INTO cards (id, name) VALUES ('E', 'Eve')")
        assert not db.connection.in_transaction
    finally:
        await db.close()
    # ... and another connection sees exactly the committed rows.
    assert peek(path, "SELECT id FROM cards ORDER BY id") == [("A",), ("B",), ("E",)]


async def test_concurrent_transactions_on_one_connection_take_turns(tmp_path: Path) -> None:
    # The kiosk and the outbox sender share the charge point's connection: a second
    # BEGIN while the first transaction awaits must wait, not fail with "cannot start a
    # transaction within a transaction", and neither may swallow the other's rows.
    db = await Database.open(tmp_path / "x.db", MIGRATIONS)
    inside = asyncio.Event()

    async def slow() -> None:
        async with db.write() as conn:
            await conn.execute("INSERT INTO cards (id, name) VALUES ('A', 'slow')")
            inside.set()
            await asyncio.sleep(0.05)
            raise RuntimeError("slow one fails")

    async def fast() -> None:
        await inside.wait()
        async with db.write() as conn:
            await conn.execute("INSERT INTO cards (id, name) VALUES ('B', 'fast')")

    try:
        results = await asyncio.gather(slow(), fast(), return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert results[1] is None
        assert not db.connection.in_transaction
    finally:
        await db.close()
    assert peek(tmp_path / "x.db", "SELECT id FROM cards") == [("B",)]


async def test_cancelled_while_beginning_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "x.db", MIGRATIONS)
    try:
        # Keep aiosqlite's worker thread busy (on the raw connection, past the lock) so
        # that BEGIN waits in its queue ...
        busy = asyncio.create_task(
            db.connection.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                " WHERE x < 2000000) SELECT count(*) FROM c"
            )
        )
        await asyncio.sleep(0.01)

        async def write() -> None:
            async with db.write() as conn:
                await conn.execute("INSERT INTO cards (id, name) VALUES ('A', 'never')")

        victim = asyncio.create_task(write())
        await asyncio.sleep(0.01)
        assert not busy.done(), "the busy query finished too early to test anything"
        # ... and cancel the task while it awaits that BEGIN (what shutdown does).
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        await busy
        async with db.write() as conn:
            await conn.execute("INSERT INTO cards (id, name) VALUES ('B', 'next')")
        assert not db.connection.in_transaction
    finally:
        await db.close()
    assert peek(tmp_path / "x.db", "SELECT id FROM cards") == [("B",)]
