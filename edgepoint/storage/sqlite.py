"""Open a SQLite file durably and bring its schema up to date with numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import aiosqlite

from edgepoint.errors import StorageError

log = logging.getLogger(__name__)

# A migration is a script of SQL statements; migration N (1-based) brings the
# schema from user_version N-1 to N.
Migration = str


async def open_database(path: Path, migrations: Sequence[Migration]) -> aiosqlite.Connection:
    """Open (creating if needed) the database at `path`, migrated to the newest version.

    WAL lets the CLI read and write while the daemon runs; synchronous=FULL makes a
    committed session survive power loss, which matters more on a Pi than speed.
    """
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    try:
        # Create the file 0600 before SQLite does (0644 under the usual umask): no window
        # in which others can read it, even if a migration then fails. SQLite gives the
        # -wal and -shm files the database file's mode.
        await asyncio.to_thread(_create_private, path)
        db = await aiosqlite.connect(path, isolation_level=None)
    except (sqlite3.Error, OSError) as err:
        raise StorageError(f"cannot open {path}: {err}") from err
    try:
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await migrate(db, migrations)
    except sqlite3.Error as err:
        await db.close()
        raise StorageError(f"cannot prepare {path}: {err}") from err
    except BaseException:
        await db.close()
        raise
    await asyncio.to_thread(_make_private, path)
    return db


def _create_private(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _make_private(path: Path) -> None:
    """The database may hold card ids and key hashes: only the daemon's user may read it."""
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            os.chmod(candidate, 0o600)


async def migrate(db: aiosqlite.Connection, migrations: Sequence[Migration]) -> int:
    """Apply every migration newer than the file's user_version, each in one transaction."""
    current = await _user_version(db)
    if current > len(migrations):
        raise StorageError(
            f"database schema version {current} is newer than this edgepoint "
            f"knows ({len(migrations)}); refusing to touch it"
        )
    for version in range(current + 1, len(migrations) + 1):
        script = migrations[version - 1]
        await db.execute("BEGIN IMMEDIATE")
        # Another process (the CLI opening csms.db while the daemon starts) may have
        # applied this migration between our read and our lock: read again under it.
        if await _user_version(db) >= version:
            await db.execute("COMMIT")
            continue
        try:
            for statement in split_statements(script):
                await db.execute(statement)
            # PRAGMA takes no parameters; version is our own integer.
            await db.execute(f"PRAGMA user_version = {version}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        log.info("migrated %s to schema version %d", db, version)
    return len(migrations)


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def split_statements(script: str) -> list[str]:
    """Split a migration script into statements (our migrations hold no ';' in literals).

    A piece ends a statement only once SQLite calls it complete, so a trigger's
    `BEGIN ...; ...; END` body stays one statement.
    """
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip().removesuffix(";").strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        statements.append(pending.strip().removesuffix(";").strip())
    return statements


class Database:
    """One aiosqlite connection shared by several tasks (kiosk, outbox sender, handlers).

    SQLite has one transaction per connection, not per task: without the lock one
    task's statements would run inside another's open transaction (and be rolled back
    with it), and a second BEGIN would fail. So every read and every transaction holds
    the lock; never nest them (the inner one would wait for the outer forever).
    """

    def __init__(self, connection: aiosqlite.Connection, label: str) -> None:
        self.connection = connection
        self._label = label
        self._lock = asyncio.Lock()
        # Runs last inside every write transaction (timesync: moves a provisional stamp
        # taken just before the clock switched and written just after, whoever wrote it,
        # before anyone can read it).
        self.before_commit: Callable[[aiosqlite.Connection], Awaitable[None]] | None = None

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration]) -> Self:
        return cls(await open_database(path, migrations), path.name)

    async def close(self) -> None:
        """Close the connection once the statement in flight is done."""
        async with self._lock:
            await self.connection.close()

    @asynccontextmanager
    async def write(self, fsync: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """Run the body in one `BEGIN IMMEDIATE` transaction; roll back on any exception.

        IMMEDIATE takes SQLite's write lock up front, so a CLI writing at the same time
        waits on busy_timeout instead of failing half-way through. `fsync=False` commits
        with synchronous=NORMAL: safe against a crash of the process, not against power
        loss, which may undo this one transaction (for writes whose loss costs a harmless
        redo, never for sessions or billing).
        """
        async with self._lock:
            if not fsync:
                await self.connection.execute("PRAGMA synchronous = NORMAL")
            try:
                async with self._transaction() as db:
                    yield db
            finally:
                if not fsync:
                    await self.connection.execute("PRAGMA synchronous = FULL")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            await self.connection.execute("BEGIN IMMEDIATE")
        except BaseException as err:
            # Cancelled while BEGIN waited in aiosqlite's queue: its worker thread
            # still runs it. A ROLLBACK queued behind it undoes it.
            with contextlib.suppress(sqlite3.Error):
                await self.connection.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise StorageError(f"{self._label}: cannot begin: {err}") from err
            raise
        try:
            yield self.connection
            if self.before_commit is not None:
                await self.before_commit(self.connection)
            await self.connection.execute("COMMIT")
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                await self.connection.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise StorageError(f"{self._label}: {err}") from err
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run read-only (autocommit) statements in the body, alone on the connection."""
        async with self._lock:
            try:
                yield self.connection
            except sqlite3.Error as err:
                raise StorageError(f"{self._label}: {err}") from err
