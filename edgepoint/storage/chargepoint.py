"""The charge point's database: sessions, the OCPP outbox, dead letters and connector state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
from ocpp.charge_point import snake_to_camel_case

from edgepoint.charging.events import IdTag, SessionId
from edgepoint.clock import iso_utc
from edgepoint.storage.auth_lists import AUTH_LISTS_SCHEMA
from edgepoint.storage.charging_profiles import CHARGING_PROFILES_SCHEMA
from edgepoint.storage.cloud_schema import CLOUD_SCHEMA
from edgepoint.storage.maintenance_schema import MAINTENANCE_SCHEMA
from edgepoint.storage.reservations import RESERVATIONS_SCHEMA
from edgepoint.storage.settings import SETTINGS_SCHEMA
from edgepoint.storage.sqlite import Database

MIGRATIONS = [
    # 1: sessions, the outbox every must-deliver message passes through, dead letters.
    """
    CREATE TABLE sessions (
        session_id      TEXT PRIMARY KEY,
        connector_id    INTEGER NOT NULL,
        id_tag          TEXT NOT NULL,
        meter_start_wh  INTEGER NOT NULL,
        started_at      TEXT NOT NULL,
        transaction_id  INTEGER,
        auth_status     TEXT,
        meter_stop_wh   INTEGER,
        stopped_at      TEXT,
        stop_reason     TEXT,
        stop_id_tag     TEXT,
        last_reading_wh INTEGER,
        state           TEXT NOT NULL CHECK (state IN ('active', 'stopped'))
    );
    CREATE INDEX sessions_state ON sessions(state);
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT REFERENCES sessions(session_id),
        action      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        refusals    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT
    );
    CREATE TABLE dead_letters (
        seq         INTEGER PRIMARY KEY,
        session_id  TEXT,
        action      TEXT NOT NULL,
        payload     TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        failed_at   TEXT NOT NULL,
        reason      TEXT NOT NULL
    )
    """,
    # 2: the outbox keeps the OCPP-J wire form and one message id per row (a resend
    # carries the first try's id, so a CSMS can de-duplicate by it); Start/Stop that
    # exhausted their attempts are parked (an alarm), never dropped; unreadable rows
    # are quarantined beside the dead letters; availability survives a restart.
    """
    ALTER TABLE outbox ADD COLUMN message_id TEXT;
    UPDATE outbox SET message_id = lower(hex(randomblob(16)));
    ALTER TABLE outbox ADD COLUMN wire INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN parked_at TEXT;
    CREATE INDEX outbox_session ON outbox(session_id);
    CREATE INDEX outbox_parked ON outbox(parked_at) WHERE parked_at IS NOT NULL;
    ALTER TABLE dead_letters ADD COLUMN kind TEXT NOT NULL DEFAULT 'dead';
    ALTER TABLE dead_letters ADD COLUMN message_id TEXT;
    CREATE TABLE connector_availability (
        connector_id INTEGER PRIMARY KEY,
        operative    INTEGER NOT NULL
    );
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )
    """,
    # 3: the local authorization list and the authorization cache (OCPP 1.6 §3.5).
    AUTH_LISTS_SCHEMA,
    # 4: configuration keys the CSMS changed, with the config.toml value they overrode.
    SETTINGS_SCHEMA,
    # 5: the fleet's view: what Firebase and the signed ledger still have to receive.
    CLOUD_SCHEMA,
    # 6: firmware management and the security extension: root certificates, the
    # security log, the connection fallback, the firmware update in progress.
    MAINTENANCE_SCHEMA,
    # 7: the charging profiles the CSMS installed (smart charging).
    CHARGING_PROFILES_SCHEMA,
    # 8: reservations (ReserveNow), so that a restart keeps them.
    RESERVATIONS_SCHEMA,
]

TRANSACTION_ACTIONS = frozenset({"StartTransaction", "MeterValues", "StopTransaction"})
# Billing: never dropped, never dead-lettered for refusals (DESIGN invariant 2).
BILLING_ACTIONS = frozenset({"StartTransaction", "StopTransaction"})


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued OCPP request in wire form; transactionId is resolved at send time."""

    seq: int
    message_id: str
    session_id: SessionId | None
    action: str
    payload: dict[str, Any]
    attempts: int  # every failed try, timeouts included
    refusals: int = 0  # tries answered with a CallError or an invalid reply
    parked: bool = False


@dataclass(frozen=True, slots=True)
class UnreadableRow:
    """An outbox row that cannot be decoded; it is quarantined, never fatal."""

    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A charging session as stored."""

    session_id: SessionId
    connector_id: int
    id_tag: IdTag
    meter_start_wh: int
    started_at: str
    transaction_id: int | None
    meter_stop_wh: int | None
    stopped_at: str | None
    stop_reason: str | None
    state: str
    last_reading_wh: int | None = None  # highest register reading queued in MeterValues


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """The outbox as `status` shows it."""

    depth: int
    parked: int
    oldest_created_at: str | None
    dead_letters: int
    quarantined: int
    thinned_meter_values: int


class Change:
    """The writes of one SQLite transaction: a state change and the messages it causes."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @property
    def connection(self) -> aiosqlite.Connection:
        """The transaction's connection, for another repository's writes in the same
        commit (storage/reservations.py)."""
        return self._db

    async def begin_session(
        self,
        session_id: SessionId,
        connector_id: int,
        id_tag: IdTag,
        meter_start_wh: int,
        at: datetime,
    ) -> None:
        await self._db.execute(
            "INSERT INTO sessions (session_id, connector_id, id_tag, meter_start_wh,"
            " started_at, state) VALUES (?, ?, ?, ?, ?, 'active')",
            (session_id, connector_id, id_tag, meter_start_wh, iso_utc(at)),
        )

    async def record_reading(self, session_id: SessionId, reading_wh: int) -> None:
        """Remember the highest reading reported, so a crash cannot take that energy back."""
        await self._db.execute(
            "UPDATE sessions SET last_reading_wh = MAX(COALESCE(last_reading_wh, 0), ?)"
            " WHERE session_id = ?",
            (reading_wh, session_id),
        )

    async def end_session(
        self,
        session_id: SessionId,
        stop_id_tag: IdTag | None,
        meter_stop_wh: int,
        reason: str,
        at: datetime,
    ) -> bool:
        """Close an active session; False when it is not active (a session stops once)."""
        cursor = await self._db.execute(
            "UPDATE sessions SET state = 'stopped', meter_stop_wh = ?, stopped_at = ?,"
            " stop_reason = ?, stop_id_tag = ? WHERE session_id = ? AND state = 'active'",
            (meter_stop_wh, iso_utc(at), reason, stop_id_tag, session_id),
        )
        return cursor.rowcount == 1

    async def enqueue(
        self,
        action: str,
        payload: dict[str, Any],
        at: datetime,
        message_id: str,
        session_id: SessionId | None = None,
    ) -> None:
        """Queue an OCPP-J request (camelCase payload) for in-order delivery."""
        await self._db.execute(
            "INSERT INTO outbox (session_id, action, payload, created_at, message_id, wire)"
            " VALUES (?, ?, ?, ?, ?, 1)",
            (
                session_id,
                action,
                json.dumps(payload, separators=(",", ":")),
                iso_utc(at),
                message_id,
            ),
        )

    async def set_availability(self, connector_id: int, operative: bool) -> None:
        await self._db.execute(
            "INSERT INTO connector_availability (connector_id, operative) VALUES (?, ?)"
            " ON CONFLICT(connector_id) DO UPDATE SET operative = excluded.operative",
            (connector_id, int(operative)),
        )


class ChargePointStore:
    """All SQL of edgepoint.db. Each state change and the messages it causes commit together."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def before_commit(self) -> Callable[[aiosqlite.Connection], Awaitable[None]] | None:
        """Runs last inside every write transaction of edgepoint.db (Database.before_commit)."""
        return self.db.before_commit

    @before_commit.setter
    def before_commit(self, hook: Callable[[aiosqlite.Connection], Awaitable[None]] | None) -> None:
        self.db.before_commit = hook

    @classmethod
    async def open(cls, path: Path) -> ChargePointStore:
        return cls(await Database.open(path, MIGRATIONS))

    async def close(self) -> None:
        await self.db.close()

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """One transaction: everything written in the body commits together, or nothing."""
        async with self.db.write() as db:
            yield Change(db)

    # -- sessions ------------------------------------------------------------------

    async def open_sessions(self) -> list[SessionRow]:
        """Sessions a previous run left active (crash, power cut), newest per connector."""
        rows = await self._sessions("WHERE state = 'active' ORDER BY started_at DESC")
        newest: dict[int, SessionRow] = {}
        for row in rows:
            newest.setdefault(row.connector_id, row)
        return list(newest.values())

    async def session(self, session_id: SessionId) -> SessionRow | None:
        rows = await self._sessions("WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def recent_sessions(self, limit: int = 20) -> list[SessionRow]:
        return await self._sessions("ORDER BY started_at DESC LIMIT ?", (limit,))

    async def _sessions(self, where: str, args: tuple[Any, ...] = ()) -> list[SessionRow]:
        async with (
            self.db.read() as db,
            db.execute(
                "SELECT session_id, connector_id, id_tag, meter_start_wh, started_at,"
                " transaction_id, meter_stop_wh, stopped_at, stop_reason, state, last_reading_wh"
                f" FROM sessions {where}",
                args,
            ) as cur,
        ):
            return [SessionRow(*row) for row in await cur.fetchall()]

    async def transaction_id(self, session_id: SessionId) -> int | None:
        async with (
            self.db.read() as db,
            db.execute(
                "SELECT transaction_id FROM sessions WHERE session_id = ?", (session_id,)
            ) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def availability(self) -> dict[int, bool]:
        """What ChangeAvailability last set per connector (absent: operative)."""
        async with (
            self.db.read() as db,
            db.execute("SELECT connector_id, operative FROM connector_availability") as cur,
        ):
            return {int(row[0]): bool(row[1]) for row in await cur.fetchall()}

    # -- the outbox ----------------------------------------------------------------

    async def outbox_next(self) -> OutboxEntry | UnreadableRow | None:
        """The oldest message that may go now: not parked, and not held behind a parked one
        of the same session (its MeterValues and Stop need the Start's transactionId)."""
        batch = await self.outbox_batch(1)
        return batch[0] if batch else None

    async def outbox_batch(self, limit: int) -> list[OutboxEntry | UnreadableRow]:
        """The next `limit` messages in delivery order (see `outbox_next`)."""
        async with (
            self.db.read() as db,
            db.execute(
                "SELECT seq, message_id, session_id, action, payload, attempts, refusals,"
                " wire, parked_at FROM outbox WHERE parked_at IS NULL AND (session_id IS NULL"
                " OR session_id NOT IN (SELECT session_id FROM outbox WHERE parked_at IS NOT"
                " NULL AND session_id IS NOT NULL)) ORDER BY seq LIMIT ?",
                (limit,),
            ) as cur,
        ):
            return [_entry(tuple(row)) for row in await cur.fetchall()]

    async def outbox_parked(self) -> list[OutboxEntry | UnreadableRow]:
        """Parked messages (Start/Stop that exhausted their attempts), oldest first."""
        async with (
            self.db.read() as db,
            db.execute(
                "SELECT seq, message_id, session_id, action, payload, attempts, refusals,"
                " wire, parked_at FROM outbox WHERE parked_at IS NOT NULL ORDER BY seq"
            ) as cur,
        ):
            return [_entry(tuple(row)) for row in await cur.fetchall()]

    async def delivered(
        self,
        entry: OutboxEntry,
        transaction_id: int | None = None,
        auth_status: str | None = None,
    ) -> None:
        """The CSMS confirmed `entry`: drop it and keep what the confirmation told us.

        This commit is the end of the window in which a crash makes us resend a message
        the CSMS already has; it is one small transaction, done before anything else.
        """
        # Losing the delete of a MeterValues or StatusNotification to a power cut costs a
        # resend with the same message id; losing that of a Start or Stop could cost a
        # second transaction at a CSMS that does not de-duplicate, so those are fsync'd.
        async with self.db.write(fsync=entry.action in BILLING_ACTIONS) as db:
            if transaction_id is not None and entry.session_id is not None:
                await db.execute(
                    "UPDATE sessions SET transaction_id = ?, auth_status = ? WHERE session_id = ?",
                    (transaction_id, auth_status, entry.session_id),
                )
            await db.execute("DELETE FROM outbox WHERE seq = ?", (entry.seq,))

    async def failed_attempt(self, entry: OutboxEntry, error: str, refused: bool = False) -> None:
        """Count a failed try; `refused` when the CSMS answered with a CallError or bad reply."""
        async with self.db.write() as db:
            await db.execute(
                "UPDATE outbox SET attempts = attempts + 1, refusals = refusals + ?,"
                " last_error = ? WHERE seq = ?",
                (int(refused), error[:2000], entry.seq),
            )

    async def park(self, entry: OutboxEntry, reason: str, at: datetime) -> None:
        """Set a billing message aside (alarm) so the rest of the queue can move."""
        async with self.db.write() as db:
            await db.execute(
                "UPDATE outbox SET parked_at = ?, last_error = ? WHERE seq = ?",
                (iso_utc(at), reason[:2000], entry.seq),
            )

    async def unpark(self, entry: OutboxEntry) -> None:
        """Put a parked message back at its place in the queue for another round of tries."""
        async with self.db.write() as db:
            await db.execute(
                "UPDATE outbox SET parked_at = NULL, refusals = 0 WHERE seq = ?", (entry.seq,)
            )

    async def give_up(self, seq: int, reason: str, at: datetime, kind: str = "dead") -> None:
        """Move a message to the dead letters (or quarantine), with why: never drop silently."""
        async with self.db.write() as db:
            await db.execute(
                "INSERT INTO dead_letters (seq, session_id, action, payload, created_at,"
                " failed_at, reason, kind, message_id) SELECT seq, session_id, action, payload,"
                " created_at, ?, ?, ?, message_id FROM outbox WHERE seq = ?",
                (iso_utc(at), reason[:2000], kind, seq),
            )
            await db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    async def thin_meter_values(self, budget: int) -> int:
        """Over the storage budget, drop every other queued MeterValues (oldest first).

        Sampled values are the only messages whose loss costs resolution, not money:
        Start and Stop carry the billing readings and are never thinned.
        """
        async with self.db.write() as db:
            async with db.execute("SELECT COUNT(*) FROM outbox") as cur:
                row = await cur.fetchone()
            depth = int(row[0]) if row else 0
            if depth <= budget:
                return 0
            excess = depth - budget
            cursor = await db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER()"
                " OVER (ORDER BY seq) AS n FROM outbox WHERE action = 'MeterValues'"
                " AND parked_at IS NULL) WHERE n % 2 = 0 LIMIT ?)",
                (excess,),
            )
            thinned = cursor.rowcount
            await db.execute(
                "INSERT INTO counters (name, value) VALUES ('thinned_meter_values', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (thinned,),
            )
        return thinned

    async def outbox_depth(self) -> int:
        async with self.db.read() as db, db.execute("SELECT COUNT(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def dead_letter_count(self) -> int:
        async with self.db.read() as db, db.execute("SELECT COUNT(*) FROM dead_letters") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def outbox_summary(self) -> OutboxSummary:
        async with self.db.read() as db:
            async with db.execute(
                "SELECT COUNT(*), COUNT(parked_at), MIN(created_at) FROM outbox"
            ) as cur:
                depth, parked, oldest = await cur.fetchone() or (0, 0, None)
            async with db.execute(
                "SELECT COUNT(*), COALESCE(SUM(kind = 'quarantined'), 0) FROM dead_letters"
            ) as cur:
                dead, quarantined = await cur.fetchone() or (0, 0)
            async with db.execute(
                "SELECT value FROM counters WHERE name = 'thinned_meter_values'"
            ) as cur:
                thinned = await cur.fetchone()
        return OutboxSummary(
            int(depth),
            int(parked),
            oldest,
            int(dead) - int(quarantined),
            int(quarantined),
            int(thinned[0]) if thinned else 0,
        )


def _entry(row: tuple[Any, ...]) -> OutboxEntry | UnreadableRow:
    """Decode a row; anything we cannot read becomes an UnreadableRow with the reason."""
    seq, message_id, session_id, action, payload, attempts, refusals, wire, parked_at = row
    try:
        decoded = json.loads(payload)
    except (TypeError, ValueError, RecursionError) as err:
        return UnreadableRow(seq, f"payload is not JSON: {err}"[:500])
    if not isinstance(decoded, dict):
        return UnreadableRow(seq, "payload is not a JSON object")
    if not isinstance(action, str) or not action:
        return UnreadableRow(seq, "no action")
    if not isinstance(message_id, str) or not message_id:
        return UnreadableRow(seq, "no message id")
    # A Start without its session would be sent, then have nowhere to keep its transactionId.
    # MeterValues may have none: a TriggerMessage on an idle connector (no transactionId).
    if action in BILLING_ACTIONS and session_id is None:
        return UnreadableRow(seq, f"{action} without its session")
    if not wire:
        # Written by version 1 in the library's snake_case argument names.
        decoded = snake_to_camel_case(decoded)
    return OutboxEntry(
        seq,
        message_id,
        session_id,
        action,
        decoded,
        int(attempts),
        int(refusals),
        parked_at is not None,
    )
