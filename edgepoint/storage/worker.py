"""One SQLite connection on a thread of its own, with group commit for many small writes.

The embedded CSMS receives many small messages from many chargers, and each must be
durable before it is answered. One transaction (and one fsync) per message is what
limited the prototype; here every write waiting when the thread comes round runs in one
`BEGIN IMMEDIATE ... COMMIT`, each inside a SAVEPOINT so that one failing write rolls
back alone. A caller's future resolves only after the COMMIT, so the reply that follows
is still "durable before answered". Reads run on the same thread, between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgepoint.errors import StorageError
from edgepoint.storage.sqlite import Migration, split_statements

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]

# Bounds one batch so that an early caller does not wait behind an unbounded crowd.
MAX_BATCH = 256


@dataclass(slots=True)
class _Job:
    work: Work
    write: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """How well writes were grouped."""

    batches: int
    writes: int
    largest_batch: int


class SqliteWorker:
    """`await worker.read(fn)` / `await worker.write(fn)`: `fn(connection)` runs on the thread."""

    def __init__(self, path: Path, label: str) -> None:
        self._path = path
        self._label = label
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._batches = 0
        self._writes = 0
        self._largest = 0

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration]) -> SqliteWorker:
        """Open (creating 0600 and migrating as needed) the database at `path`."""
        worker = cls(path, path.name)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        worker._thread = threading.Thread(
            target=worker._run,
            args=(migrations, ready, loop),
            name=f"sqlite {path.name}",
            daemon=True,
        )
        worker._thread.start()
        await ready
        return worker

    def stats(self) -> WorkerStats:
        return WorkerStats(self._batches, self._writes, self._largest)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(work, write=False)

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction shared with other waiting writes; return its result
        once that transaction is committed. An exception rolls back this write only."""
        return await self._submit(work, write=True)

    async def close(self) -> None:
        """Finish what was submitted, then close the connection and end the thread."""
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def _submit(self, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        if self._thread is None:
            raise StorageError(f"{self._label}: closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(work, write, future, loop))
        return await future

    # -- the thread ----------------------------------------------------------------

    def _run(
        self,
        migrations: Sequence[Migration],
        ready: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        try:
            self._connection = _connect(self._path)
            _migrate(self._connection, migrations, self._label)
        except BaseException as err:  # handed to the opener, who raises it
            error = StorageError(f"cannot open {self._path}: {err}")
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        connection = self._connection
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch = [job]
                # Everything already waiting joins this round (up to MAX_BATCH).
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._jobs.put(None)  # finish this round, then stop
                        break
                    batch.append(more)
                self._round(connection, batch)
        finally:
            connection.close()

    def _round(self, connection: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        writes = [job for job in batch if job.write]
        for job in batch:
            if not job.write:
                results.append(self._attempt(connection, job))
        if writes:
            results.extend(self._commit_group(connection, writes))
        # One wake-up per loop and round, not per job: each call_soon_threadsafe writes to
        # the loop's self-pipe, and a round settles up to MAX_BATCH futures.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]]
        by_loop = {}
        for outcome in results:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, outcomes in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, outcomes)

    def _attempt(
        self, connection: sqlite3.Connection, job: _Job
    ) -> tuple[_Job, Any, BaseException | None]:
        try:
            return job, job.work(connection), None
        except sqlite3.Error as err:
            return job, None, StorageError(f"{self._label}: {err}")
        except Exception as err:
            return job, None, err

    def _commit_group(
        self, connection: sqlite3.Connection, writes: list[_Job]
    ) -> list[tuple[_Job, Any, BaseException | None]]:
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            failure = StorageError(f"{self._label}: cannot begin: {err}")
            return [(job, None, failure) for job in writes]
        done: list[tuple[_Job, Any, BaseException | None]] = []
        for job in writes:
            connection.execute("SAVEPOINT job")
            outcome = self._attempt(connection, job)
            if outcome[2] is None:
                connection.execute("RELEASE job")
            else:
                connection.execute("ROLLBACK TO job")
                connection.execute("RELEASE job")
            done.append(outcome)
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as err:
            # Nothing of the group is durable: every caller learns it, none is answered OK.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            failure = StorageError(f"{self._label}: commit failed: {err}")
            return [(job, None, failure) for job in writes]
        self._batches += 1
        self._writes += len(writes)
        self._largest = max(self._largest, len(writes))
        return done


def _settle_all(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, value, error in outcomes:
        _settle(job.future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 before SQLite does: card ids and key hashes are in it.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA busy_timeout = 5000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    for suffix in ("-wal", "-shm"):
        extra = Path(f"{path}{suffix}")
        if extra.exists():
            os.chmod(extra, 0o600)
    return connection


def _migrate(connection: sqlite3.Connection, migrations: Sequence[Migration], label: str) -> None:
    """Numbered migrations by PRAGMA user_version, each in one transaction (see sqlite.py)."""

    def version() -> int:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])

    if version() > len(migrations):
        raise StorageError(
            f"database schema version {version()} is newer than this edgepoint knows"
            f" ({len(migrations)}); refusing to touch it"
        )
    for number in range(version() + 1, len(migrations) + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            if version() >= number:  # another process got there first
                connection.execute("COMMIT")
                continue
            for statement in split_statements(migrations[number - 1]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        log.info("migrated %s to schema version %d", label, number)
