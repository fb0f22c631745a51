"""The charge point's database: sessions, the OCPP outbox and its dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from edgepoint.charging.events import IdTag, SessionId
from edgepoint.clock import iso_utc
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
]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued OCPP request; its transactionId is resolved from the session at send time."""

    seq: int
    session_id: SessionId | None
    action: str
    payload: dict[str, Any]
    attempts: int  # every failed try, timeouts included
    refusals: int = 0  # tries the CSMS answered with a CallError


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


class ChargePointStore:
    """All SQL of edgepoint.db. Each state change and the message it causes commit together."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> ChargePointStore:
        return cls(await Database.open(path, MIGRATIONS))

    async def close(self) -> None:
        await self._db.close()

    async def begin_session(
        self,
        session_id: SessionId,
        connector_id: int,
        id_tag: IdTag,
        meter_start_wh: int,
        at: datetime,
        start_message: dict[str, Any],
    ) -> None:
        """Store the new session and its StartTransaction in one transaction."""
        async with self._db.write() as db:
            await db.execute(
                "INSERT INTO sessions (session_id, connector_id, id_tag, meter_start_wh,"
                " started_at, state) VALUES (?, ?, ?, ?, ?, 'active')",
                (session_id, connector_id, id_tag, meter_start_wh, iso_utc(at)),
            )
            await _enqueue(db, session_id, "StartTransaction", start_message, at)

    async def queue_meter_values(
        self,
        session_id: SessionId,
        at: datetime,
        message: dict[str, Any],
        reading_wh: int | None = None,
    ) -> None:
        """Queue MeterValues and remember the reading, so a crash cannot lose that energy."""
        async with self._db.write() as db:
            if reading_wh is not None:
                await db.execute(
                    "UPDATE sessions SET last_reading_wh = MAX(COALESCE(last_reading_wh, 0), ?)"
                    " WHERE session_id = ?",
                    (reading_wh, session_id),
                )
            await _enqueue(db, session_id, "MeterValues", message, at)

    async def end_session(
        self,
        session_id: SessionId,
        stop_id_tag: IdTag | None,
        meter_stop_wh: int,
        reason: str,
        at: datetime,
        stop_message: dict[str, Any],
    ) -> bool:
        """Close an active session and queue its StopTransaction in one transaction.

        False, with nothing queued, when the session is not active: a session is
        stopped once, whatever asks twice.
        """
        async with self._db.write() as db:
            cursor = await db.execute(
                "UPDATE sessions SET state = 'stopped', meter_stop_wh = ?, stopped_at = ?,"
                " stop_reason = ?, stop_id_tag = ? WHERE session_id = ? AND state = 'active'",
                (meter_stop_wh, iso_utc(at), reason, stop_id_tag, session_id),
            )
            if cursor.rowcount != 1:
                return False
            await _enqueue(db, session_id, "StopTransaction", stop_message, at)
        return True

    async def open_session(self) -> SessionRow | None:
        """The session left active by a previous run (crash, power cut), if any."""
        rows = await self._sessions("WHERE state = 'active' ORDER BY started_at DESC LIMIT 1")
        return rows[0] if rows else None

    async def session(self, session_id: SessionId) -> SessionRow | None:
        rows = await self._sessions("WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def recent_sessions(self, limit: int = 20) -> list[SessionRow]:
        return await self._sessions("ORDER BY started_at DESC LIMIT ?", (limit,))

    async def _sessions(self, where: str, args: tuple[Any, ...] = ()) -> list[SessionRow]:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT session_id, connector_id, id_tag, meter_start_wh, started_at,"
                " transaction_id, meter_stop_wh, stopped_at, stop_reason, state, last_reading_wh"
                f" FROM sessions {where}",
                args,
            ) as cur,
        ):
            return [SessionRow(*row) for row in await cur.fetchall()]

    async def outbox_head(self) -> OutboxEntry | None:
        """The oldest undelivered message: delivery is strictly in order."""
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT seq, session_id, action, payload, attempts, refusals"
                " FROM outbox ORDER BY seq LIMIT 1"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return None
        return OutboxEntry(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    async def outbox_depth(self) -> int:
        async with self._db.read() as db, db.execute("SELECT COUNT(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def dead_letter_count(self) -> int:
        async with self._db.read() as db, db.execute("SELECT COUNT(*) FROM dead_letters") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def transaction_id(self, session_id: SessionId) -> int | None:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT transaction_id FROM sessions WHERE session_id = ?", (session_id,)
            ) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def delivered(
        self, entry: OutboxEntry, transaction_id: int | None = None, auth_status: str | None = None
    ) -> None:
        """The CSMS confirmed `entry`: drop it, and keep what the confirmation told us."""
        async with self._db.write() as db:
            if transaction_id is not None and entry.session_id is not None:
                await db.execute(
                    "UPDATE sessions SET transaction_id = ?, auth_status = ? WHERE session_id = ?",
                    (transaction_id, auth_status, entry.session_id),
                )
            await db.execute("DELETE FROM outbox WHERE seq = ?", (entry.seq,))

    async def failed_attempt(self, entry: OutboxEntry, error: str, refused: bool = False) -> None:
        """Count a failed try; `refused` when the CSMS answered with a CallError."""
        async with self._db.write() as db:
            await db.execute(
                "UPDATE outbox SET attempts = attempts + 1, refusals = refusals + ?, last_error = ?"
                " WHERE seq = ?",
                (int(refused), error, entry.seq),
            )

    async def give_up(self, entry: OutboxEntry, reason: str, at: datetime) -> None:
        """Move an undeliverable message to the dead letters, with why: never drop silently."""
        async with self._db.write() as db:
            await db.execute(
                "INSERT INTO dead_letters (seq, session_id, action, payload, created_at,"
                " failed_at, reason) SELECT seq, session_id, action, payload, created_at, ?, ?"
                " FROM outbox WHERE seq = ?",
                (iso_utc(at), reason, entry.seq),
            )
            await db.execute("DELETE FROM outbox WHERE seq = ?", (entry.seq,))


async def _enqueue(
    db: aiosqlite.Connection,
    session_id: SessionId | None,
    action: str,
    payload: dict[str, Any],
    at: datetime,
) -> None:
    """Add a message to the outbox; called inside the transaction of the change causing it."""
    await db.execute(
        "INSERT INTO outbox (session_id, action, payload, created_at) VALUES (?, ?, ?, ?)",
        (session_id, action, json.dumps(payload, separators=(",", ":")), iso_utc(at)),
    )
