"""SD-card care: integrity at start, backups, retention, and a full disk thinned, not failed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, query, write_config

from edgepoint.charging.events import IdTag, SessionId
from edgepoint.clock import iso_utc
from edgepoint.config import load_config
from edgepoint.errors import ConfigError, StorageError
from edgepoint.storage import care
from edgepoint.storage.care import StorageCare, backup_database, check_database, check_writable
from edgepoint.storage.chargepoint import ChargePointStore

NOW = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)


class FixedClock:
    """A trusted clock at NOW (plausible: `is_synced` trusts it)."""

    def __init__(self, moment: datetime = NOW) -> None:
        self.moment = moment

    def monotonic(self) -> float:
        return 0.0

    def utc_now(self) -> datetime:
        return self.moment


def make_db(path: Path, rows: int = 400) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 200,)] * rows)
        conn.commit()


def corrupt(path: Path) -> None:
    """Scribble over the b-tree pages past the first: what a dying SD card does."""
    with open(path, "r+b") as handle:
        handle.seek(4096)
        handle.write(os.urandom(3 * 4096))


# -- integrity at start ---------------------------------------------------------------


def test_a_sound_database_passes(tmp_path: Path) -> None:
    db = tmp_path / "edgepoint.db"
    make_db(db)
    assert check_database(db).ok and check_database(tmp_path / "absent.db").ok


def test_a_damaged_database_is_kept_aside_and_restored_from_the_backup(tmp_path: Path) -> None:
    db = tmp_path / "edgepoint.db"
    make_db(db, rows=10)
    backup_database(db)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executemany("INSERT INTO t (body) VALUES (?)", [("y" * 200,)] * 400)
        conn.commit()
    corrupt(db)
    result = check_database(db, now=NOW)
    assert not result.ok and result.restored_from == tmp_path / "backups" / "edgepoint.db"
    assert result.kept_as == tmp_path / "edgepoint.db.damaged-20250901T120000Z"
    assert result.kept_as.exists()  # the damaged file is kept for whoever investigates
    assert query(db, "SELECT COUNT(*) FROM t") == [(10,)]  # the backup's rows
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    fault = result.fault()
    assert fault is not None and "edgepoint.db was damaged" in fault
    assert "restored from backup edgepoint.db" in fault


def test_without_a_sound_backup_it_starts_empty(tmp_path: Path) -> None:
    db = tmp_path / "csms.db"
    make_db(db)
    backup_database(db)
    corrupt(tmp_path / "backups" / "csms.db")  # the backup is damaged too
    corrupt(db)
    result = check_database(db, now=NOW)
    assert not result.ok and result.restored_from is None and not db.exists()
    assert "started empty" in (result.fault() or "")


def test_a_damaged_database_at_start_is_a_fault_in_status_not_a_crash(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        daemon.stop()
        var = tmp_path / "var"
        backup_database(var / "edgepoint.db")
        corrupt(var / "edgepoint.db")
        daemon.start()
        status = daemon.wait_ready()
    finally:
        daemon.kill()
    faults = status["storage"]["faults"]
    assert len(faults) == 1 and faults[0].startswith("edgepoint.db was damaged")
    assert faults[0] in status["alarms"]
    assert list(var.glob("edgepoint.db.damaged-*"))


def test_backups_keep_two_generations(tmp_path: Path) -> None:
    db = tmp_path / "edgepoint.db"
    make_db(db, rows=1)
    backup_database(db)
    make_db_rows = 5
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executemany("INSERT INTO t (body) VALUES ('z')", [()] * make_db_rows)
        conn.commit()
    newest = backup_database(db)
    assert query(newest, "SELECT COUNT(*) FROM t") == [(6,)]
    assert query(tmp_path / "backups" / "edgepoint.db.1", "SELECT COUNT(*) FROM t") == [(1,)]
    assert care.backups_of(db) == [newest, tmp_path / "backups" / "edgepoint.db.1"]


# -- paths the daemon must write ------------------------------------------------------------


def test_a_path_it_cannot_write_names_its_key(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = load_config(write_config(tmp_path, storage__dir=str(blocker / "var")))
    with pytest.raises(ConfigError) as caught:
        check_writable(config)
    assert caught.value.key == "storage.dir" and "is not a folder" in caught.value.reason


@pytest.fixture
def read_only_etc(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system where the config lives, as ProtectSystem=strict makes /etc."""
    etc = tmp_path / "etc"
    etc.mkdir()
    # Like the issue: state and socket elsewhere, the key file left relative to /etc.
    write_config(
        etc,
        storage__dir=str(tmp_path / "state"),
        control__socket=str(tmp_path / "run" / "edgepoint.sock"),
        csms__control_socket=str(tmp_path / "run" / "csms.sock"),
        ledger__key_file=str(tmp_path / "state" / "ledger.key"),
    )
    if os.geteuid() != 0 or _mount("--bind", str(etc), str(etc)) != 0:
        pytest.skip("needs root and mount(8) for a read-only bind mount")
    try:
        assert _mount("-o", "remount,bind,ro", str(etc), str(etc)) == 0
        yield etc
    finally:
        subprocess.run(["umount", "-l", str(etc)], check=False)


def _mount(*args: str) -> int:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode


def test_the_first_install_crash_loop_is_a_clear_error_once(read_only_etc: Path) -> None:
    """Issue 10: auth_key_file relative to /etc/edgepoint/config.toml, which is read-only.
    Exit status 2 (invalid configuration), which the unit does not restart, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgepoint.cli",
            "run",
            "--config",
            str(read_only_etc / "config.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "chargepoint.auth_key_file" in result.stderr and "read-only" in result.stderr
    assert "Traceback" not in result.stderr


# -- retention ------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChargePointStore]:
    opened = await ChargePointStore.open(tmp_path / "edgepoint.db")
    try:
        yield opened
    finally:
        await opened.close()


async def session(store: ChargePointStore, sid: str, stopped: datetime | None) -> None:
    async with store.change() as change:
        await change.begin_session(SessionId(sid), 1, IdTag("04A1B2C3"), 0, stopped or NOW)
        if stopped is not None:
            await change.end_session(SessionId(sid), None, 10, "Local", stopped)


async def dead_letter(store: ChargePointStore, seq: int, action: str, failed: datetime) -> None:
    async with store.db.write() as db:
        await db.execute(
            "INSERT INTO dead_letters (seq, action, payload, created_at, failed_at, reason)"
            " VALUES (?, ?, '{}', ?, ?, 'refused')",
            (seq, action, iso_utc(failed), iso_utc(failed)),
        )


def care_for(
    tmp_path: Path, store: ChargePointStore, clock: Any = None, **storage: Any
) -> StorageCare:
    config = load_config(write_config(tmp_path, **{f"storage__{k}": v for k, v in storage.items()}))
    return StorageCare(config, store.db, clock or FixedClock())


async def test_retention_removes_what_nothing_needs_any_more(
    tmp_path: Path, store: ChargePointStore
) -> None:
    old, recent = NOW - timedelta(days=100), NOW - timedelta(days=10)
    await session(store, "old-done", old)
    await session(store, "old-queued", old)  # its StopTransaction still waits in the outbox
    await session(store, "recent", recent)
    await session(store, "active", None)
    async with store.change() as change:
        await change.enqueue(
            "StopTransaction", {"meterStop": 10}, old, "m1", SessionId("old-queued")
        )
    async with store.db.write() as db:
        # The ledger has captured every event; only old-done's are signed already.
        await db.execute("DELETE FROM ledger_events WHERE session_id = 'old-done'")
    await dead_letter(store, 1, "MeterValues", old)
    await dead_letter(store, 2, "MeterValues", recent)
    await dead_letter(store, 3, "StopTransaction", old)  # billing: never by age
    pruned = await care_for(tmp_path, store).prune()
    assert (pruned.dead_letters, pruned.sessions) == (1, 1)
    db = tmp_path / "edgepoint.db"
    assert [r for (r,) in query(db, "SELECT seq FROM dead_letters ORDER BY seq")] == [2, 3]
    assert sorted(r for (r,) in query(db, "SELECT session_id FROM sessions")) == [
        "active",
        "old-queued",
        "recent",
    ]


async def test_without_a_trusted_clock_age_decides_nothing(
    tmp_path: Path, store: ChargePointStore
) -> None:
    await dead_letter(store, 1, "MeterValues", NOW - timedelta(days=400))
    unset = FixedClock(datetime(1970, 1, 2, tzinfo=UTC))
    assert (await care_for(tmp_path, store, unset).prune()).total == 0
    assert query(tmp_path / "edgepoint.db", "SELECT COUNT(*) FROM dead_letters") == [(1,)]


async def test_retention_zero_keeps_forever(tmp_path: Path, store: ChargePointStore) -> None:
    await dead_letter(store, 1, "MeterValues", NOW - timedelta(days=4000))
    keeper = care_for(tmp_path, store, dead_letters_days=0, sessions_days=0)
    assert (await keeper.prune()).total == 0


# -- a full disk ----------------------------------------------------------------------------


async def queue_meter_values(store: ChargePointStore, count: int) -> None:
    async with store.change() as change:
        for n in range(count):
            payload = {
                "connectorId": 1,
                "meterValue": [{"timestamp": iso_utc(NOW), "x": "v" * 400}],
            }
            await change.enqueue("MeterValues", payload, NOW, f"mv{n}")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a full SD card in miniature."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)) != 0:
        pytest.skip("needs root and mount(8) for a tmpfs (the max_page_count test covers it)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    return ballast


async def test_a_full_disk_is_thinned_instead_of_failing(
    tiny_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reserve to scale: 8 MiB (more than SQLite's 4 MiB WAL before a checkpoint) on a
    # real card; 1 MiB here, with the WAL checkpointed as it is in the steady state.
    monkeypatch.setattr(care, "RESERVE_BYTES", 1024 * 1024)
    config = load_config(
        write_config(tmp_path, storage__dir=str(tiny_disk), storage__min_free_mb=1)
    )
    store = await ChargePointStore.open(config.storage.chargepoint_db)
    try:
        guard = StorageCare(config, store.db, FixedClock())
        assert await guard.guard() is False
        assert (tiny_disk / ".reserve").stat().st_size == 1024 * 1024
        await queue_meter_values(store, 1000)  # about 0.6 MiB of queued samples
        await store.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ballast = fill(tiny_disk)
        with pytest.raises(StorageError, match="full"):
            await queue_meter_values(store, 1000)  # the disk is full: the write fails
        # The guard releases the reserve and thins old data; then writes work again.
        assert await guard.guard() is True
        assert not (tiny_disk / ".reserve").exists()
        assert guard.snapshot().pruned["meter_values"] == 500
        fault = guard.faults[0]
        assert fault.startswith("storage-low:") and str(tiny_disk) in fault
        await queue_meter_values(store, 200)
        assert await store.outbox_depth() == 700
        assert (await store.outbox_summary()).thinned_meter_values == 500
        # Room again (ballast gone): the fault clears, the reserve comes back.
        ballast.unlink()
        assert await guard.guard() is False
        assert guard.faults == () and (tiny_disk / ".reserve").exists()
    finally:
        await store.close()


async def test_a_full_database_simulated_with_max_page_count(
    tmp_path: Path, store: ChargePointStore
) -> None:
    """Without the privilege to mount a tmpfs: SQLite's page limit stands in for the disk.

    A limit on pages frees no room by releasing a reserve file; what it shows is that the
    thinning itself makes room: a month-old pile of dead letters goes under pressure.
    """
    async with store.db.write() as db:
        old = iso_utc(NOW - timedelta(days=30))
        await db.executemany(
            "INSERT INTO dead_letters (seq, action, payload, created_at, failed_at, reason)"
            " VALUES (?, 'MeterValues', ?, ?, ?, 'refused')",
            [(n, "p" * 500, old, old) for n in range(1, 301)],
        )
    await queue_meter_values(store, 100)
    async with store.db.read() as db:
        async with db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        assert row is not None
        await db.execute(f"PRAGMA max_page_count = {int(row[0]) + 2}")
    with pytest.raises(StorageError, match="full"):
        await queue_meter_values(store, 150)
    free = {"bytes": 0}
    config = load_config(write_config(tmp_path, storage__min_free_mb=1))
    guard = StorageCare(config, store.db, FixedClock(), free_bytes=lambda _: free["bytes"])
    assert await guard.guard() is True  # "no space": thin
    assert guard.snapshot().pruned == {"dead_letters": 300, "sessions": 0, "meter_values": 50}
    await queue_meter_values(store, 150)  # fits in the pages the thinning freed
    assert await store.outbox_depth() == 200
    free["bytes"] = 1 << 40
    assert await guard.guard() is False and guard.faults == ()
