"""SD-card care for the daemon's databases: integrity at start, backups, retention, free space.

- At start, before anything opens them, each database gets `PRAGMA quick_check`. A
  damaged file (and its -wal/-shm) is set aside as `<name>.damaged-<time>`, and the
  newest backup that passes the same check takes its place; without one the database
  starts empty. Either way a fault stays in `status` (storage.faults, alarms) until the
  next start. Restoring a backup may resend messages delivered after it was made: they
  keep their OCPP message ids, so a CSMS can drop the duplicates.
- Backups: `backup_interval_h` apart, SQLite's online backup of both databases into
  `<dir>/backups` (two generations), consistent while the daemon and the CSMS write.
- Retention (edgepoint.db; csms.db has its own, csms/retention): dead letters and
  quarantined rows after `dead_letters_days` (never a StartTransaction/StopTransaction),
  closed sessions after `sessions_days` once no queued message and no uncaptured ledger
  event refers to them. Sent outbox rows are deleted on delivery already. The signed
  ledger (ledger_entries, ledger_refused) is never thinned here: entries are the chain
  that `edgepoint ledger verify` walks from the first, and an entry may only ever go
  once every sink holds it (cloud/upload.py); they are a few hundred bytes per session.
  Age needs a trusted clock: with a provisional one, only disk pressure prunes.
- Free space: a reserve file (`<dir>/.reserve`, RESERVE_BYTES) is kept beside the
  databases. Below `min_free_mb` free, the reserve is released (so the next commits
  have room), old data is thinned (short retention, every other queued MeterValues, the
  older backup), the WAL is truncated, and `storage-low` is raised; once there is room
  again the reserve comes back and the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgepoint.clock import Clock, is_synced, iso_utc
from edgepoint.config import Config
from edgepoint.errors import ConfigError, StorageError
from edgepoint.storage.sqlite import Database

log = logging.getLogger(__name__)

BACKUP_DIR = "backups"
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 8 * 1024 * 1024
# Under disk pressure, data this old goes whatever the configured retention says.
PRESSURE_DAYS = 7
# How often free space is looked at, and how often retention runs.
CHECK_EVERY_S = 30.0
PRUNE_EVERY_S = 6 * 3600.0
# Free space must exceed the threshold by this much (plus the reserve) to clear the fault.
CLEAR_MARGIN = 1.25
BILLING = ("StartTransaction", "StopTransaction")
# Queued MeterValues looked at per thinning transaction (half of them go). The reserve
# must exceed what the WAL holds before SQLite checkpoints it (1000 pages, 4 MiB).
THIN_BATCH = 200


# -- at start: writable paths and integrity -------------------------------------------------


def check_writable(config: Config) -> None:
    """Fail with the config key (not a traceback) when a path the daemon writes cannot be.

    The usual cause: paths relative to /etc/edgepoint/config.toml, which ProtectSystem=
    strict makes read-only; under systemd they belong in /var/lib/edgepoint and
    /run/edgepoint (systemd/config.toml).
    """
    wanted = {
        "storage.dir": config.storage.dir,
        "control.socket": config.control.socket.parent,
        "chargepoint.auth_key_file": config.chargepoint.auth_key_file.parent,
    }
    if config.csms.enabled:
        wanted["csms.control_socket"] = config.csms.control_socket.parent
    if config.ledger.enabled:
        wanted["ledger.key_file"] = config.ledger.key_file.parent
    for key, folder in wanted.items():
        if key.endswith("_file") and _existing_file(config, key):
            continue  # made already; only read from now on
        problem = _not_writable(folder)
        if problem is not None:
            raise ConfigError(
                str(config.path),
                key,
                f"{folder} {problem}; give the daemon a writable place"
                " (installed: /var/lib/edgepoint, /run/edgepoint)",
            )


def _existing_file(config: Config, key: str) -> bool:
    path = (
        config.chargepoint.auth_key_file
        if key == "chargepoint.auth_key_file"
        else config.ledger.key_file
    )
    return path.is_file()


def _not_writable(folder: Path) -> str | None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return "has no existing parent"
        existing = existing.parent
    if not existing.is_dir():
        return f"is not a folder ({existing} is a file)"
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"is on a read-only file system ({existing})"
    except OSError as err:
        return f"cannot be checked: {err}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written ({existing} is not writable by this user)"
    return None


@dataclass(frozen=True, slots=True)
class Integrity:
    """What the check at start found for one database, and what was done."""

    path: Path
    ok: bool
    detail: str = ""  # quick_check's first complaint, or the error opening it
    kept_as: Path | None = None  # where the damaged file was set aside
    restored_from: Path | None = None  # the backup that replaced it (None: started empty)

    def fault(self) -> str | None:
        if self.ok:
            return None
        source = (
            f"restored from backup {self.restored_from.name}"
            if self.restored_from
            else "started empty"
        )
        return f"{self.path.name} was damaged ({self.detail}): kept as {self.kept_as}, {source}"


def quick_check(path: Path) -> str | None:
    """None when SQLite finds the file sound, else its first complaint."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as err:
        return str(err)
    if rows == [("ok",)]:
        return None
    return "; ".join(str(row[0]) for row in rows[:3]) or "quick_check said nothing"


def check_database(path: Path, now: datetime | None = None) -> Integrity:
    """Check `path`; set a damaged one aside and put the newest sound backup in its place."""
    if not path.exists() or path.stat().st_size == 0:
        return Integrity(path, True)
    problem = quick_check(path)
    if problem is None:
        return Integrity(path, True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{kept}{suffix}"))
    log.error("%s is damaged (%s): kept as %s", path, problem, kept)
    for backup in backups_of(path):
        if quick_check(backup) is None:
            temp = path.with_name(path.name + ".restoring")
            shutil.copyfile(backup, temp)
            os.chmod(temp, 0o600)
            os.replace(temp, path)
            log.error("%s restored from %s", path, backup)
            return Integrity(path, False, problem, kept, backup)
        log.error("backup %s is damaged too", backup)
    log.error("%s: no sound backup, starting with an empty database", path)
    return Integrity(path, False, problem, kept, None)


def backups_of(path: Path) -> list[Path]:
    """The backups of one database, newest first."""
    folder = path.parent / BACKUP_DIR
    found = [folder / path.name, folder / f"{path.name}.1"]
    return [p for p in found if p.is_file()]


def backup_database(path: Path) -> Path:
    """An online backup of `path` into backups/ (consistent while others write); rotate."""
    folder = path.parent / BACKUP_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    newest = folder / path.name
    temp = folder / f"{path.name}.new"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        with (
            contextlib.closing(sqlite3.connect(path, timeout=10)) as source,
            contextlib.closing(sqlite3.connect(temp)) as target,
        ):
            source.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    if newest.exists():
        os.replace(newest, folder / f"{path.name}.1")
    os.replace(temp, newest)
    return newest


def check_databases(config: Config) -> list[Integrity]:
    """The start-up check of both databases (before either is opened)."""
    return [check_database(config.storage.chargepoint_db), check_database(config.storage.csms_db)]


# -- while running: retention and free space ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows one pass removed."""

    dead_letters: int = 0
    sessions: int = 0
    meter_values: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.dead_letters + other.dead_letters,
            self.sessions + other.sessions,
            self.meter_values + other.meter_values,
        )

    @property
    def total(self) -> int:
        return self.dead_letters + self.sessions + self.meter_values


class CareStore:
    """The retention SQL of edgepoint.db."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def prune(self, dead_before: str | None, sessions_before: str | None) -> Pruned:
        """Delete dead letters and closed sessions older than the cut-offs (ISO UTC)."""
        dead = sessions = 0
        async with self._db.write() as db:
            if dead_before is not None:
                cursor = await db.execute(
                    "DELETE FROM dead_letters WHERE failed_at < ? AND action NOT IN (?, ?)",
                    (dead_before, *BILLING),
                )
                dead = cursor.rowcount
            if sessions_before is not None:
                cursor = await db.execute(
                    "DELETE FROM sessions WHERE state = 'stopped' AND stopped_at < ?"
                    " AND session_id NOT IN"
                    " (SELECT session_id FROM outbox WHERE session_id IS NOT NULL)"
                    " AND session_id NOT IN (SELECT session_id FROM ledger_events)",
                    (sessions_before,),
                )
                sessions = cursor.rowcount
        return Pruned(dead, sessions)

    async def thin_meter_values(self, batch: int = THIN_BATCH) -> int:
        """Drop every other queued MeterValues (never Start/Stop, never a parked row).

        In small transactions, each followed by a checkpoint: on a full disk a single
        large delete would need more room in the WAL than there is; small ones reuse it.
        """
        thinned = 0
        after = 0
        while True:
            async with self._db.write() as db:
                async with db.execute(
                    "SELECT seq FROM outbox WHERE action = 'MeterValues' AND parked_at IS NULL"
                    " AND seq > ? ORDER BY seq LIMIT ?",
                    (after, batch),
                ) as cur:
                    seqs = [int(row[0]) for row in await cur.fetchall()]
                if not seqs:
                    break
                doomed = seqs[1::2]
                await db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in doomed])
                await db.execute(
                    "INSERT INTO counters (name, value) VALUES ('thinned_meter_values', ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (len(doomed),),
                )
            thinned += len(doomed)
            after = seqs[-1]
            # Failing here (no room to copy the WAL back) is not fatal: the next batch
            # appends to the WAL instead of reusing it.
            with contextlib.suppress(StorageError):
                async with self._db.read() as db:
                    await db.execute("PRAGMA wal_checkpoint(RESTART)")
        return thinned

    async def truncate_wal(self) -> None:
        async with self._db.read() as db:
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@dataclass(frozen=True, slots=True)
class CareSnapshot:
    """Storage as `status` shows it."""

    free_mb: float | None
    min_free_mb: int
    reserve: bool  # the reserve file is in place
    faults: tuple[str, ...]
    pruned: dict[str, int] = field(default_factory=dict)
    last_backup: str | None = None


class StorageCare:
    """Supervised service: retention, backups and the free-space guard of the state folder."""

    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        start_faults: tuple[str, ...] = (),
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self._storage = config.storage
        self._store = CareStore(db)
        self._clock = clock
        self._start_faults = start_faults
        self._free_bytes = free_bytes or _free_bytes
        self._reserve = self._storage.dir / RESERVE_FILE
        self._low = False
        self._pruned = Pruned()
        self._last_prune: float | None = None
        self._last_backup: datetime | None = None
        self._free: int | None = None

    @property
    def faults(self) -> tuple[str, ...]:
        low = () if not self._low else (self._low_fault(),)
        return self._start_faults + low

    def _low_fault(self) -> str:
        free = "?" if self._free is None else f"{self._free / 2**20:.1f}"
        return (
            f"storage-low: {free} MiB free in {self._storage.dir}"
            f" (under {self._storage.min_free_mb} MiB): old data thinned"
        )

    def snapshot(self) -> CareSnapshot:
        return CareSnapshot(
            free_mb=None if self._free is None else round(self._free / 2**20, 1),
            min_free_mb=self._storage.min_free_mb,
            reserve=self._reserve.exists(),
            faults=self.faults,
            pruned={
                "dead_letters": self._pruned.dead_letters,
                "sessions": self._pruned.sessions,
                "meter_values": self._pruned.meter_values,
            },
            last_backup=None if self._last_backup is None else iso_utc(self._last_backup),
        )

    async def run(self) -> None:
        await asyncio.to_thread(self._ensure_reserve)
        self._last_backup = await asyncio.to_thread(self._newest_backup_time)
        while True:
            await self.guard()
            now = self._clock.monotonic()
            if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY_S:
                await self.prune()
                self._last_prune = now
            if self._backup_due():
                await self.backup()
            await asyncio.sleep(CHECK_EVERY_S)

    async def prune(self, pressure: bool = False) -> Pruned:
        """Apply the configured retention (with a trusted clock), or the short one."""
        if not pressure and not is_synced(self._clock):
            return Pruned()  # a provisional clock may be ahead: age cannot be judged
        now = self._clock.utc_now()

        def cutoff(days: int | None) -> str | None:
            if pressure:
                days = min(days or PRESSURE_DAYS, PRESSURE_DAYS)
            return None if days is None else iso_utc(now - timedelta(days=days))

        pruned = await self._store.prune(
            cutoff(self._storage.dead_letters_days), cutoff(self._storage.sessions_days)
        )
        self._pruned += pruned
        if pruned.total:
            log.info(
                "retention: %d dead letter(s), %d closed session(s) removed",
                pruned.dead_letters,
                pruned.sessions,
            )
        return pruned

    async def guard(self) -> bool:
        """Thin data when free space runs short; True while it is short."""
        free = self._free = await asyncio.to_thread(self._free_bytes, self._storage.dir)
        threshold = self._storage.min_free_mb * 2**20
        if free < threshold:
            if not self._low:
                log.error(
                    "only %.1f MiB free in %s: thinning old data", free / 2**20, self._storage.dir
                )
            self._low = True
            await asyncio.to_thread(self._release_reserve)
            pruned = await self.prune(pressure=True)
            thinned = await self._store.thin_meter_values()
            self._pruned += Pruned(meter_values=thinned)
            await asyncio.to_thread(self._drop_old_backups)
            with contextlib.suppress(StorageError):
                await self._store.truncate_wal()
            if pruned.total or thinned:
                log.warning(
                    "disk pressure: %d dead letter(s), %d session(s), %d queued MeterValues"
                    " removed",
                    pruned.dead_letters,
                    pruned.sessions,
                    thinned,
                )
            self._free = await asyncio.to_thread(self._free_bytes, self._storage.dir)
        elif self._low and free >= threshold * CLEAR_MARGIN + RESERVE_BYTES:
            self._low = False
            log.warning("storage has room again (%.1f MiB free)", free / 2**20)
            await asyncio.to_thread(self._ensure_reserve)
        elif not self._low:
            await asyncio.to_thread(self._ensure_reserve)
        return self._low

    async def backup(self) -> None:
        for path in (self._storage.chargepoint_db, self._storage.csms_db):
            if not path.exists():
                continue
            try:
                await asyncio.to_thread(backup_database, path)
            except (sqlite3.Error, OSError) as err:
                log.error("backup of %s failed: %s", path.name, err)
                with contextlib.suppress(OSError):
                    (path.parent / BACKUP_DIR / f"{path.name}.new").unlink()
                return
        self._last_backup = datetime.now(UTC)
        log.info("databases backed up to %s", self._storage.dir / BACKUP_DIR)

    def _backup_due(self) -> bool:
        hours = self._storage.backup_interval_h
        if hours is None or self._low:
            return False  # under disk pressure a backup would take the room commits need
        last = self._last_backup
        return last is None or datetime.now(UTC) - last >= timedelta(hours=hours)

    def _newest_backup_time(self) -> datetime | None:
        newest = self._storage.dir / BACKUP_DIR / self._storage.chargepoint_db.name
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(newest.stat().st_mtime, UTC)
        return None

    def _ensure_reserve(self) -> None:
        """Put the reserve back (only when it fits with room to spare)."""
        if self._reserve.exists() and self._reserve.stat().st_size >= RESERVE_BYTES:
            return
        needed = self._storage.min_free_mb * 2**20 * CLEAR_MARGIN + RESERVE_BYTES
        if self._free_bytes(self._storage.dir) < needed:
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as err:
            log.warning("cannot keep a storage reserve: %s", err)
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def _release_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._reserve.unlink()
            log.warning("storage reserve released (%d MiB)", RESERVE_BYTES // 2**20)

    def _drop_old_backups(self) -> None:
        for path in (self._storage.chargepoint_db, self._storage.csms_db):
            with contextlib.suppress(FileNotFoundError):
                (path.parent / BACKUP_DIR / f"{path.name}.1").unlink()


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def care_status(care: StorageCare | None) -> dict[str, Any] | None:
    """`status`'s storage entry."""
    if care is None:
        return None
    snap = care.snapshot()
    return {
        "free_mb": snap.free_mb,
        "min_free_mb": snap.min_free_mb,
        "reserve": snap.reserve,
        "faults": list(snap.faults),
        "pruned": snap.pruned,
        "last_backup": snap.last_backup,
    }
