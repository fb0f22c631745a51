"""SQL of the site operator's features in csms.db: local lists, load limits, history.

Their tables are migration 3 of csms/schema.py.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.clock import iso_utc
from edgepoint.csms.db import meter_value_record
from edgepoint.csms.health import Health, StatusChange, in_error, score_health
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.records import MeterValueRecord
from edgepoint.csms.site_records import (
    ChargerView,
    ConnectorView,
    LimitState,
    LoadLimit,
    LocalListUpdate,
    OpenTransaction,
    TransactionView,
    UpdateType,
)
from edgepoint.storage.worker import SqliteWorker

# idTagInfo statuses OCPP 1.6 allows in a local list entry.
_LIST_STATUSES = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


# -- local authorization list ---------------------------------------------------------


def _list_status(stored: str, expires: str | None, now: datetime) -> str:
    if stored not in _LIST_STATUSES:
        return "Blocked"  # a state this code does not know must not authorize offline
    if stored == "Accepted" and expires is not None and _time(expires) <= now:
        return "Expired"
    return stored


def _nocase(tag: str) -> str:
    """The key SQLite's NOCASE collation compares (it folds ASCII letters only)."""
    return tag.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _sync_local_list(conn: sqlite3.Connection, now: datetime) -> int:
    """Bring local_list_entries up to date with id_tags; return the list's version.

    Entries that changed (tag added, removed, blocked, expired, new expiry or parent)
    get one new version number together.
    """
    wanted: dict[str, tuple[str, str, str | None, str | None]] = {}
    for row in conn.execute("SELECT id_tag, status, expires_at, parent_id_tag FROM id_tags"):
        expiry = None if row["expires_at"] is None else iso_utc(_time(row["expires_at"]))
        status = _list_status(row["status"], row["expires_at"], now)
        wanted[_nocase(row["id_tag"])] = (row["id_tag"], status, expiry, row["parent_id_tag"])
    listed: dict[str, tuple[str, str | None, str | None, str | None]] = {
        _nocase(row["id_tag"]): (
            row["id_tag"],
            row["status"],
            row["expiry_date"],
            row["parent_id_tag"],
        )
        for row in conn.execute(
            "SELECT id_tag, status, expiry_date, parent_id_tag FROM local_list_entries"
        )
    }
    changed = [entry for key, entry in wanted.items() if listed.get(key) != entry]
    removed = [
        entry[0] for key, entry in listed.items() if entry[1] is not None and key not in wanted
    ]
    version = int(conn.execute("SELECT version FROM local_list_meta").fetchone()[0])
    if not changed and not removed:
        return version
    version += 1
    conn.executemany(
        """
        INSERT INTO local_list_entries (id_tag, status, expiry_date, parent_id_tag, version)
        VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (id_tag) DO UPDATE SET id_tag = excluded.id_tag, status = excluded.status,
            expiry_date = excluded.expiry_date, parent_id_tag = excluded.parent_id_tag,
            version = excluded.version
        """,
        [(*entry, version) for entry in changed],
    )
    conn.executemany(
        """
        UPDATE local_list_entries
        SET status = NULL, expiry_date = NULL, parent_id_tag = NULL, version = ?
        WHERE id_tag = ?
        """,
        [(version, tag) for tag in removed],
    )
    conn.execute("UPDATE local_list_meta SET version = ?", (version,))
    return version


def _list_entry(row: Any) -> dict[str, Any]:
    if row["status"] is None:
        return {"idTag": row["id_tag"]}  # no idTagInfo: delete it (Differential only)
    info: dict[str, Any] = {"status": row["status"]}
    if row["expiry_date"] is not None:
        info["expiryDate"] = row["expiry_date"]
    if row["parent_id_tag"] is not None:
        info["parentIdTag"] = row["parent_id_tag"]
    return {"idTag": row["id_tag"], "idTagInfo": info}


class LocalListRepository:
    """The site's local authorization list, its versions and what each charger accepted."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def prepare(
        self,
        charge_point_id: str,
        *,
        full: bool,
        now: datetime,
        charger_version: int | None = None,
    ) -> LocalListUpdate:
        """Build the SendLocalList for a charger from the id_tags table as of `now`.

        Differential (the changes since the version the charger last accepted) when
        asked for and possible; Full when asked for, when no accepted version is
        recorded, when `charger_version` (what GetLocalListVersion said) differs from
        the recorded one, or when removals since then were pruned.
        """

        def write(conn: sqlite3.Connection) -> LocalListUpdate:
            version = _sync_local_list(conn, now)
            pruned = int(conn.execute("SELECT pruned_through FROM local_list_meta").fetchone()[0])
            row = conn.execute(
                "SELECT version FROM local_list_sent WHERE charge_point_id = ?",
                (charge_point_id,),
            ).fetchone()
            sent = None if row is None else int(row[0])
            differential = (
                not full
                and sent is not None
                and pruned <= sent <= version
                and (charger_version is None or charger_version == sent)
            )
            if differential:
                rows = conn.execute(
                    "SELECT * FROM local_list_entries WHERE version > ? ORDER BY id_tag",
                    (sent,),
                ).fetchall()
                kind = UpdateType.DIFFERENTIAL
            else:
                rows = conn.execute(
                    "SELECT * FROM local_list_entries WHERE status IS NOT NULL ORDER BY id_tag"
                ).fetchall()
                kind = UpdateType.FULL
            return LocalListUpdate(kind, version, tuple(_list_entry(r) for r in rows))

        return await self._db.write(write)

    async def record_accepted(
        self, charge_point_id: str, update: LocalListUpdate, at: datetime
    ) -> None:
        """Remember that the charger accepted `update` (the base of its next Differential)."""
        values = (charge_point_id, update.list_version, update.update_type.value, iso_utc(at))
        await self._db.write(
            lambda conn: conn.execute(
                """
                INSERT INTO local_list_sent (charge_point_id, version, update_type, sent_at)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (charge_point_id) DO UPDATE SET version = excluded.version,
                    update_type = excluded.update_type, sent_at = excluded.sent_at
                """,
                values,
            )
        )

    async def forget_accepted(self, charge_point_id: str) -> None:
        """Forget what the charger holds (it lost or refused its list): next is Full."""
        await self._db.write(
            lambda conn: conn.execute(
                "DELETE FROM local_list_sent WHERE charge_point_id = ?", (charge_point_id,)
            )
        )

    async def accepted_version(self, charge_point_id: str) -> int | None:
        """The list version the charger accepted last, or None."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT version FROM local_list_sent WHERE charge_point_id = ?",
                (charge_point_id,),
            ).fetchone()
        )
        return None if row is None else int(row[0])

    async def prune(self, batch: int) -> int:
        """Forget up to `batch` removals every charger with a recorded version already has."""

        def write(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT (SELECT MIN(version) FROM local_list_sent), version FROM local_list_meta"
            ).fetchone()
            bound = int(row[1] if row[0] is None else row[0])
            deleted = conn.execute(
                """
                DELETE FROM local_list_entries WHERE rowid IN (
                    SELECT rowid FROM local_list_entries
                    WHERE status IS NULL AND version <= ? LIMIT ?)
                """,
                (bound, batch),
            ).rowcount
            if deleted:
                conn.execute(
                    "UPDATE local_list_meta SET pruned_through = MAX(pruned_through, ?)",
                    (bound,),
                )
            return int(deleted)

        return await self._db.write(write)


# -- load management ----------------------------------------------------------------------


def _load_limit(row: Any) -> LoadLimit:
    return LoadLimit(
        transaction_id=int(row["transaction_id"]),
        charge_point_id=ChargePointId(row["charge_point_id"]),
        connector_id=int(row["connector_id"]),
        limit_w=row["limit_w"],
        applied_w=row["applied_w"],
        state=LimitState(row["state"]),
        detail=row["detail"],
        updated_at=_time(row["updated_at"]),
    )


class LoadLimitRepository:
    """Running transactions as load management sees them, and the limits it keeps for them."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def open_transactions(self) -> list[OpenTransaction]:
        """Transactions without a stop, oldest first (served by the transactions_open index)."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                """
                SELECT transaction_id, charge_point_id, connector_id, start_timestamp
                FROM transactions WHERE stop_timestamp IS NULL ORDER BY transaction_id
                """
            ).fetchall()
        )
        return [
            OpenTransaction(
                transaction_id=int(row["transaction_id"]),
                charge_point_id=ChargePointId(row["charge_point_id"]),
                connector_id=int(row["connector_id"]),
                started_at=_time(row["start_timestamp"]),
            )
            for row in rows
        ]

    async def list(self) -> list[LoadLimit]:
        """Every kept limit, by transaction."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM load_limits ORDER BY transaction_id"
            ).fetchall()
        )
        return [_load_limit(row) for row in rows]

    async def save(self, limit: LoadLimit) -> None:
        """Insert or replace the record of one transaction's limit."""
        values = (
            limit.transaction_id,
            limit.charge_point_id,
            limit.connector_id,
            limit.limit_w,
            limit.applied_w,
            limit.state.value,
            limit.detail,
            iso_utc(limit.updated_at),
        )
        await self._db.write(
            lambda conn: conn.execute(
                """
                INSERT OR REPLACE INTO load_limits (transaction_id, charge_point_id,
                    connector_id, limit_w, applied_w, state, detail, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                values,
            )
        )

    async def remove(self, transaction_ids: Collection[int]) -> None:
        """Forget the limits of transactions that ended."""
        ids = [(tx,) for tx in transaction_ids]
        if ids:
            await self._db.write(
                lambda conn: conn.executemany(
                    "DELETE FROM load_limits WHERE transaction_id = ?", ids
                )
            )


# -- queries ------------------------------------------------------------------------------


def _connector_view(row: Any) -> ConnectorView:
    return ConnectorView(
        charge_point_id=ChargePointId(row["charge_point_id"]),
        connector_id=int(row["connector_id"]),
        status=row["status"],
        error_code=row["error_code"],
        info=row["info"],
        vendor_error_code=row["vendor_error_code"],
        since=_time(row["timestamp"]),
        in_error=in_error(row["status"], row["error_code"]),
    )


def _energy_wh(value: str, unit: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    if unit == "kWh":
        return number * 1000
    return number if unit == "Wh" else None


def _latest_energy(
    conn: sqlite3.Connection, charge_point_id: str, transaction_id: int
) -> tuple[float | None, datetime | None]:
    """The newest whole-meter energy register reading of a transaction, in Wh."""
    rows = conn.execute(
        """
        SELECT value, unit, timestamp FROM meter_values
        WHERE transaction_id = ? AND charge_point_id = ?
            AND measurand = 'Energy.Active.Import.Register' AND phase IS NULL
        ORDER BY timestamp DESC, id DESC LIMIT 4
        """,
        (transaction_id, charge_point_id),
    ).fetchall()
    for row in rows:  # skip a garbled value rather than show nothing
        reading = _energy_wh(row["value"], row["unit"])
        if reading is not None:
            return reading, _time(row["timestamp"])
    return None, None


def _transaction_view(conn: sqlite3.Connection, row: Any) -> TransactionView:
    meter_start = int(row["meter_start"])
    last_at: datetime | None = None
    if row["stop_timestamp"] is not None and row["meter_stop"] is not None:
        energy: float | None = float(int(row["meter_stop"]) - meter_start)
    else:
        reading, last_at = _latest_energy(conn, row["charge_point_id"], int(row["transaction_id"]))
        energy = None if reading is None else reading - meter_start
    return TransactionView(
        transaction_id=int(row["transaction_id"]),
        charge_point_id=ChargePointId(row["charge_point_id"]),
        connector_id=int(row["connector_id"]),
        id_tag=row["id_tag"],
        id_tag_status=row["id_tag_status"],
        started_at=_time(row["start_timestamp"]),
        meter_start=meter_start,
        stopped_at=_optional_time(row["stop_timestamp"]),
        meter_stop=row["meter_stop"],
        stop_reason=row["stop_reason"],
        energy_wh=energy,
        last_reading_at=last_at,
    )


def _health_by_charger(
    conn: sqlite3.Connection, ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, Health]:
    """Health of each charger over [start, end), computed on the database thread."""
    begin = iso_utc(start)
    history: dict[str, dict[int, list[StatusChange]]] = defaultdict(lambda: defaultdict(list))
    # The status each connector had when the window opened, then every change in it.
    rows = conn.execute(
        """
        SELECT l.charge_point_id, l.connector_id, l.status, l.error_code, l.timestamp
        FROM connector_status_log l
        WHERE l.timestamp >= ? OR l.id = (
            SELECT p.id FROM connector_status_log p
            WHERE p.charge_point_id = l.charge_point_id AND p.connector_id = l.connector_id
                AND p.timestamp < ?
            ORDER BY p.timestamp DESC, p.id DESC LIMIT 1)
        ORDER BY l.timestamp, l.id
        """,
        (begin, begin),
    ).fetchall()
    for row in rows:
        history[row["charge_point_id"]][int(row["connector_id"])].append(
            StatusChange(
                int(row["connector_id"]), row["status"], row["error_code"], _time(row["timestamp"])
            )
        )
    current: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for row in conn.execute(
        "SELECT charge_point_id, connector_id, status, error_code FROM connectors"
    ):
        current[row["charge_point_id"]].append(
            (int(row["connector_id"]), row["status"], row["error_code"])
        )
        # A connector known from before the log existed: its current status, from its time.
        known = history[row["charge_point_id"]][int(row["connector_id"])]
        if not known:
            known.append(
                StatusChange(int(row["connector_id"]), row["status"], row["error_code"], start)
            )
    sessions = dict(
        conn.execute(
            """
            SELECT charge_point_id, COUNT(*) FROM transactions
            WHERE start_timestamp >= ? AND start_timestamp < ? GROUP BY charge_point_id
            """,
            (begin, iso_utc(end)),
        ).fetchall()
    )
    return {
        cp: score_health(
            history.get(cp, {}), current.get(cp, []), int(sessions.get(cp, 0)), start, end
        )
        for cp in ids
    }


class SiteQueries:
    """Read-only views over csms.db for the CLI, the TUI and the cloud."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def chargers(
        self,
        connected: Collection[str] | None,
        *,
        health_window: tuple[datetime, datetime] | None,
    ) -> list[ChargerView]:
        """Every registered charger with its connectors (and health over the window)."""

        def read(conn: sqlite3.Connection) -> list[ChargerView]:
            # The semantic checks' migration adds last_seen_at (any message); without it,
            # the newest boot, heartbeat, status or start stands in.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(charge_points)")}
            any_message = "c.last_seen_at" if "last_seen_at" in columns else "NULL"
            # Migration 4: a removed charger keeps its row for its transactions' sake.
            registered = "WHERE c.removed_at IS NULL" if "removed_at" in columns else ""
            chargers = conn.execute(
                f"""
                SELECT c.id, c.vendor, c.model, c.firmware, c.registered_at,
                    MAX(IFNULL({any_message}, ''),
                        IFNULL(c.last_boot_at, ''), IFNULL(c.last_heartbeat_at, ''),
                        IFNULL((SELECT MAX(received_at) FROM connectors
                                WHERE charge_point_id = c.id), ''),
                        IFNULL((SELECT MAX(received_at) FROM transactions
                                WHERE charge_point_id = c.id), '')) AS last_seen
                FROM charge_points c {registered} ORDER BY c.id
                """
            ).fetchall()
            connectors: dict[str, list[ConnectorView]] = defaultdict(list)
            for row in conn.execute(
                "SELECT * FROM connectors ORDER BY charge_point_id, connector_id"
            ):
                connectors[row["charge_point_id"]].append(_connector_view(row))
            ids = [row["id"] for row in chargers]
            health = {} if health_window is None else _health_by_charger(conn, ids, *health_window)
            return [
                ChargerView(
                    id=ChargePointId(row["id"]),
                    online=None if connected is None else row["id"] in connected,
                    last_seen=_time(row["last_seen"]) if row["last_seen"] else None,
                    vendor=row["vendor"],
                    model=row["model"],
                    firmware=row["firmware"],
                    registered_at=_time(row["registered_at"]),
                    connectors=tuple(connectors.get(row["id"], ())),
                    health=health.get(row["id"]),
                )
                for row in chargers
            ]

        return await self._db.read(read)

    async def connectors(self, charge_point_id: str | None = None) -> list[ConnectorView]:
        """Connectors with their latest status and error code, of one charger or all."""
        sql = "SELECT * FROM connectors"
        params: tuple[str, ...] = ()
        if charge_point_id is not None:
            sql += " WHERE charge_point_id = ?"
            params = (charge_point_id,)
        sql += " ORDER BY charge_point_id, connector_id"
        rows = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return [_connector_view(row) for row in rows]

    async def transactions(
        self,
        charge_point_id: str | None,
        *,
        live: bool | None,
        since: datetime | None,
        limit: int,
    ) -> list[TransactionView]:
        """Transactions, newest first, filtered by charger, live/closed and start time."""
        clauses: list[str] = []
        params: list[Any] = []
        if charge_point_id is not None:
            clauses.append("charge_point_id = ?")
            params.append(charge_point_id)
        if live is not None:
            clauses.append("stop_timestamp IS NULL" if live else "stop_timestamp IS NOT NULL")
        if since is not None:
            clauses.append("start_timestamp >= ?")
            params.append(iso_utc(since))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM transactions {where} ORDER BY transaction_id DESC LIMIT ?"
        params.append(limit)

        def read(conn: sqlite3.Connection) -> list[TransactionView]:
            return [_transaction_view(conn, row) for row in conn.execute(sql, params).fetchall()]

        return await self._db.read(read)

    async def transaction(self, transaction_id: int) -> TransactionView | None:
        """One transaction, or None."""

        def read(conn: sqlite3.Connection) -> TransactionView | None:
            row = conn.execute(
                "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
            return None if row is None else _transaction_view(conn, row)

        return await self._db.read(read)

    async def meter_values(self, transaction_id: int) -> list[MeterValueRecord]:
        """The samples of a transaction (from the charger that owns it), in time order."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                """
                SELECT m.* FROM meter_values m JOIN transactions t
                    ON t.transaction_id = m.transaction_id
                    AND t.charge_point_id = m.charge_point_id
                WHERE m.transaction_id = ? ORDER BY m.timestamp, m.id
                """,
                (transaction_id,),
            ).fetchall()
        )
        return [meter_value_record(row) for row in rows]

    async def health(self, charge_point_id: str, start: datetime, end: datetime) -> Health:
        """One charger's health over [start, end)."""
        found = await self._db.read(
            lambda conn: _health_by_charger(conn, [charge_point_id], start, end)
        )
        return found[charge_point_id]


# -- retention ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What one small retention write did, and where the next one starts."""

    deleted: int
    next_id: int | None  # None: the pass over this table is done
    extra: int = 0  # rows of a second table deleted on the way (a transaction's samples)


class RetentionRepository:
    """Deletes old rows a window of ids at a time, each window its own short write.

    Each write looks at no more than `window` rows of its table by primary key, so it
    holds the database thread (and the writer lock) for a bounded time, whatever the
    table's size and with no extra index on the hot tables.
    """

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def id_range(self, table: str, key: str) -> tuple[int, int] | None:
        """(lowest, highest) primary key of one of the tables retention prunes."""
        if (table, key) not in _PRUNED:
            raise ValueError(f"retention does not prune {table}.{key}")
        row = await self._db.read(
            lambda conn: conn.execute(f"SELECT MIN({key}), MAX({key}) FROM {table}").fetchone()
        )
        return None if row[0] is None else (int(row[0]), int(row[1]))

    async def delete_meter_values(self, first_id: int, window: int, before: datetime) -> int:
        """Samples with ids in [first_id, first_id + window) taken before `before`, except
        those of transactions still open."""
        values = (first_id, first_id + window, iso_utc(before))
        return await self._db.write(
            lambda conn: (
                conn.execute(
                    """
                DELETE FROM meter_values WHERE id >= ? AND id < ? AND timestamp < ?
                    AND (transaction_id IS NULL OR transaction_id NOT IN (
                        SELECT transaction_id FROM transactions WHERE stop_timestamp IS NULL))
                """,
                    values,
                ).rowcount
            )
        )

    async def delete_transactions(
        self, first_id: int, window: int, before: datetime, batch: int
    ) -> tuple[int, int]:
        """Transactions with ids in the window that stopped before `before`, samples first.

        Returns (transactions deleted, samples deleted). At most `batch` samples go per
        call; the transactions go only once none of their samples is left, so a caller
        repeats the same window while the sample count comes back as `batch`.
        """
        values = (first_id, first_id + window, iso_utc(before))

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            ids = [
                int(row[0])
                for row in conn.execute(
                    """
                    SELECT transaction_id FROM transactions
                    WHERE transaction_id >= ? AND transaction_id < ?
                        AND stop_timestamp IS NOT NULL AND stop_timestamp < ?
                    """,
                    values,
                )
            ]
            if not ids:
                return 0, 0
            marks = ",".join("?" * len(ids))
            samples = conn.execute(
                f"""
                DELETE FROM meter_values WHERE id IN (
                    SELECT id FROM meter_values WHERE transaction_id IN ({marks}) LIMIT ?)
                """,
                (*ids, batch),
            ).rowcount
            if samples >= batch:
                return 0, samples
            conn.execute(f"DELETE FROM load_limits WHERE transaction_id IN ({marks})", ids)
            gone = conn.execute(
                f"DELETE FROM transactions WHERE transaction_id IN ({marks})", ids
            ).rowcount
            return gone, samples

        return await self._db.write(write)

    async def delete_status_changes(self, first_id: int, window: int, before: datetime) -> int:
        """Status changes in the window older than `before`, except each connector's last
        one at or before `before` (the status it had then, which health still needs)."""
        cutoff = iso_utc(before)
        return await self._db.write(
            lambda conn: (
                conn.execute(
                    """
                DELETE FROM connector_status_log AS l
                WHERE l.id >= ? AND l.id < ? AND l.timestamp < ? AND EXISTS (
                    SELECT 1 FROM connector_status_log n
                    WHERE n.charge_point_id = l.charge_point_id
                        AND n.connector_id = l.connector_id AND n.timestamp <= ?
                        AND (n.timestamp > l.timestamp
                            OR (n.timestamp = l.timestamp AND n.id > l.id)))
                """,
                    (first_id, first_id + window, cutoff, cutoff),
                ).rowcount
            )
        )


_PRUNED = frozenset(
    {
        ("meter_values", "id"),
        ("transactions", "transaction_id"),
        ("connector_status_log", "id"),
    }
)
