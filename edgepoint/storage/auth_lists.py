"""The local authorization list and the authorization cache, kept in edgepoint.db."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import aiosqlite

from edgepoint.charging.authorization import EMPTY_LIST_VERSION, VALID_STATUSES, TagEntry
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.clock import iso_utc
from edgepoint.storage.sqlite import Database

log = logging.getLogger(__name__)

# One migration of edgepoint.db. idTags are CiString20 (case-insensitive), hence NOCASE.
# Times are iso_utc text (fixed width, UTC, "Z"), so text order is time order.
AUTH_LISTS_SCHEMA = """
    CREATE TABLE local_list (
        id_tag        TEXT PRIMARY KEY COLLATE NOCASE,
        status        TEXT NOT NULL CHECK (status IN
                          ('Accepted', 'Blocked', 'Expired', 'Invalid', 'ConcurrentTx')),
        expiry        TEXT,
        parent_id_tag TEXT
    );
    CREATE TABLE local_list_version (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO local_list_version (id, version) VALUES (1, 0);
    CREATE TABLE auth_cache (
        id_tag        TEXT PRIMARY KEY COLLATE NOCASE,
        status        TEXT NOT NULL CHECK (status IN
                          ('Accepted', 'Blocked', 'Expired', 'Invalid', 'ConcurrentTx')),
        expiry        TEXT,
        parent_id_tag TEXT,
        updated_at    TEXT NOT NULL
    );
    CREATE INDEX auth_cache_updated_at ON auth_cache(updated_at)
"""

DEFAULT_CACHE_MAX_ENTRIES = 1000

_VALID_SQL = ", ".join(f"'{status.value}'" for status in sorted(VALID_STATUSES))


class AuthListStore:
    """All SQL of the local authorization list (CSMS-owned) and the cache (ours)."""

    def __init__(self, db: Database, cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES) -> None:
        if cache_max_entries < 1:
            raise ValueError("cache_max_entries must be at least 1")
        self._db = db
        self._cache_max = cache_max_entries

    # -- local authorization list -----------------------------------------------------

    async def list_entry(self, tag: IdTag) -> TagEntry | None:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT id_tag, status, expiry, parent_id_tag FROM local_list WHERE id_tag = ?",
                (tag,),
            ) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else _entry(row)

    async def local_list_version(self) -> int:
        """The version to report in GetLocalListVersion.conf (0: the list is empty)."""
        async with (
            self._db.read() as db,
            db.execute("SELECT version FROM local_list_version WHERE id = 1") as cur,
        ):
            row = await cur.fetchone()
        return EMPTY_LIST_VERSION if row is None else int(row[0])

    async def local_list(self) -> dict[IdTag, TagEntry]:
        """The whole list, for SendLocalList (apply_local_list) and for operators."""
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT id_tag, status, expiry, parent_id_tag FROM local_list ORDER BY id_tag"
            ) as cur,
        ):
            rows = await cur.fetchall()
        return {IdTag(row[0]): _entry(row) for row in rows}

    async def replace_local_list(self, version: int, entries: Mapping[IdTag, TagEntry]) -> None:
        """Make `entries` the list at `version`, in one transaction.

        The cache loses its entries for these cards: §3.5.3 keeps list cards out of it.
        Callers read, apply_local_list and replace from one task (the OCPP handler), so no
        other change can slip in between.
        """
        async with self._db.write() as db:
            await db.execute("DELETE FROM local_list")
            await db.executemany(
                "INSERT INTO local_list (id_tag, status, expiry, parent_id_tag)"
                " VALUES (?, ?, ?, ?)",
                _rows(entries.items()),
            )
            await db.execute("UPDATE local_list_version SET version = ? WHERE id = 1", (version,))
            await db.execute(
                "DELETE FROM auth_cache WHERE id_tag IN (SELECT id_tag FROM local_list)"
            )

    async def change_list_entry(self, tag: IdTag, entry: TagEntry | None) -> bool:
        """A technician's edit of one card on site (None removes it), in one statement.

        The version stays the CSMS's: its next full SendLocalList replaces the edit, a
        differential one applies on top. True if a row was written or removed.
        """
        async with self._db.write() as db:
            if entry is None:
                cur = await db.execute("DELETE FROM local_list WHERE id_tag = ?", (tag,))
            else:
                cur = await db.execute(
                    "INSERT INTO local_list (id_tag, status, expiry, parent_id_tag)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (id_tag) DO UPDATE SET"
                    " status = excluded.status, expiry = excluded.expiry,"
                    " parent_id_tag = excluded.parent_id_tag",
                    _row(tag, entry),
                )
                await db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (tag,))  # §3.5.3
            return cur.rowcount > 0

    # -- authorization cache ------------------------------------------------------------

    async def cache_entry(self, tag: IdTag) -> TagEntry | None:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT id_tag, status, expiry, parent_id_tag FROM auth_cache WHERE id_tag = ?",
                (tag,),
            ) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else _entry(row)

    async def store_cache(self, tag: IdTag, entry: TagEntry, at: datetime) -> None:
        """Store or replace the cache entry for `tag`, evicting others if the cache is full.

        §3.5.1: when full, NOT-valid entries go first (by status, or valid but past their
        expiryDate at `at`), then the least recently updated valid ones.
        """
        stamp = iso_utc(at)
        async with self._db.write() as db:
            # Delete first: an upsert would keep the stored spelling of a NOCASE key.
            await db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (tag,))
            await db.execute(
                "INSERT INTO auth_cache (id_tag, status, expiry, parent_id_tag, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (*_row(tag, entry), stamp),
            )
            excess = await _count(db, "SELECT COUNT(*) FROM auth_cache") - self._cache_max
            if excess > 0:
                await db.execute(
                    "DELETE FROM auth_cache WHERE rowid IN ("
                    " SELECT rowid FROM auth_cache WHERE id_tag != ?"
                    f" ORDER BY (status IN ({_VALID_SQL}) AND (expiry IS NULL OR expiry > ?)),"
                    " updated_at, rowid LIMIT ?)",
                    (tag, stamp, excess),
                )

    async def clear_cache(self) -> int:
        """Empty the cache (ClearCache.req); returns how many entries went."""
        async with self._db.write() as db:
            cursor = await db.execute("DELETE FROM auth_cache")
            return cursor.rowcount

    async def cache_size(self) -> int:
        async with self._db.read() as db:
            return await _count(db, "SELECT COUNT(*) FROM auth_cache")


async def _count(db: aiosqlite.Connection, sql: str) -> int:
    async with db.execute(sql) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _row(tag: IdTag, entry: TagEntry) -> tuple[str, str, str | None, str | None]:
    expiry = None if entry.expiry is None else iso_utc(entry.expiry)
    return (tag, entry.status.value, expiry, entry.parent_id_tag)


def _rows(
    items: Iterable[tuple[IdTag, TagEntry]],
) -> Iterable[tuple[str, str, str | None, str | None]]:
    return [_row(tag, entry) for tag, entry in items]


def _entry(row: aiosqlite.Row) -> TagEntry:
    return TagEntry(AuthorizationStatus(row[1]), _expiry(row[2]), row[3])


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        # Someone edited the row by hand. Treat the card as expired: offline it is
        # refused, online the CSMS is asked, and nothing crashes the kiosk loop. The
        # card id stays out of the log.
        log.warning("unreadable expiry %r in an authorization entry; treating it as expired", text)
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
