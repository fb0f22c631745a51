"""All SQL of the cloud ledger: captured events, signed entries, meters, refusals, sink cursors."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from edgepoint.storage.sqlite import Database

# prev_hash of entry 1.
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """A session start or stop as the database trigger captured it, in commit order."""

    event_seq: int
    event: str  # start | stop
    session_id: str
    connector_id: int
    id_tag: str
    meter_start_wh: int | None
    meter_stop_wh: int | None
    reason: str | None
    recorded_at: str | None


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A signed entry to store: its canonical body, hash and signature."""

    seq: int
    canonical: str
    hash: str
    sig: str
    high_wh: int  # the highest meter reading it holds


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest entry: the next one gets `seq + 1` and links to `hash`."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Context:
    """What deciding on one event needs from the database, read in the same transaction."""

    head: ChainHead
    high_water_wh: int | None  # highest reading of the connector already in the ledger
    transaction_id: int | None  # the CSMS's id for the session, if it is known yet


# A decision on one event: the entry to append, or why the event is refused.
Decide = Callable[[LedgerEvent, Context], "NewEntry | str"]


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    refused: int


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """The ledger as `status` shows it."""

    entries: int
    last_seq: int
    pending_events: int
    refused: int


class LedgerStore:
    """The ledger tables of edgepoint.db (see storage/cloud_schema.py)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- turning events into entries --------------------------------------------------

    async def pending_events(self, limit: int) -> list[LedgerEvent]:
        """Captured events without an entry yet, in commit order."""
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT event_seq, event, session_id, connector_id, id_tag, meter_start_wh,"
                " meter_stop_wh, reason, recorded_at FROM ledger_events ORDER BY event_seq"
                " LIMIT ?",
                (limit,),
            ) as cur,
        ):
            return [_event(row) for row in await cur.fetchall()]

    async def append(self, events: Sequence[LedgerEvent], decide: Decide, at: str) -> AppendResult:
        """Decide on each event and store the entry (or the refusal), all in one transaction.

        The event row goes in the same commit, so an event becomes exactly one entry or
        one refusal whatever happens to the process.
        """
        appended = refused = 0
        async with self._db.write() as db:
            head = await _head(db)
            for event in events:
                context = Context(
                    head,
                    await _scalar(
                        db,
                        "SELECT high_wh FROM ledger_meters WHERE connector_id = ?",
                        (event.connector_id,),
                    ),
                    await _scalar(
                        db,
                        "SELECT transaction_id FROM sessions WHERE session_id = ?",
                        (event.session_id,),
                    ),
                )
                decision = decide(event, context)
                if isinstance(decision, str):
                    await db.execute(
                        "INSERT INTO ledger_refused (event_seq, session_id, event, detail, reason,"
                        " refused_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            event.event_seq,
                            event.session_id,
                            event.event,
                            json.dumps(_event_detail(event), sort_keys=True),
                            decision,
                            at,
                        ),
                    )
                    refused += 1
                else:
                    await db.execute(
                        "INSERT INTO ledger_entries (seq, event_seq, session_id, event, body, hash,"
                        " sig) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            decision.seq,
                            event.event_seq,
                            event.session_id,
                            event.event,
                            decision.canonical,
                            decision.hash,
                            decision.sig,
                        ),
                    )
                    await db.execute(
                        "INSERT INTO ledger_meters (connector_id, high_wh) VALUES (?, ?)"
                        " ON CONFLICT(connector_id) DO UPDATE SET"
                        " high_wh = MAX(high_wh, excluded.high_wh)",
                        (event.connector_id, decision.high_wh),
                    )
                    head = ChainHead(decision.seq, decision.hash)
                    appended += 1
                await db.execute(
                    "DELETE FROM ledger_events WHERE event_seq = ?", (event.event_seq,)
                )
        return AppendResult(appended, refused)

    # -- reading entries --------------------------------------------------------------

    async def entries_after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Entries with seq > `seq`, oldest first, as uploaded (body + hash + sig)."""
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT body, hash, sig FROM ledger_entries WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ) as cur,
        ):
            return [_entry(row) for row in await cur.fetchall()]

    async def head(self) -> ChainHead:
        async with self._db.read() as db:
            return await _head(db)

    async def refusals(self, limit: int = 20) -> list[tuple[str, str, str]]:
        """(session_id, event, reason) of refused events, oldest first."""
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT session_id, event, reason FROM ledger_refused ORDER BY event_seq LIMIT ?",
                (limit,),
            ) as cur,
        ):
            return [(row[0], row[1], row[2]) for row in await cur.fetchall()]

    async def summary(self) -> LedgerSummary:
        async with self._db.read() as db:
            # seq has no gaps: the newest seq is the count, read from the primary key.
            last = await _scalar(db, "SELECT MAX(seq) FROM ledger_entries", ())
            entries = last
            pending = await _scalar(db, "SELECT COUNT(*) FROM ledger_events", ())
            refused = await _scalar(db, "SELECT COUNT(*) FROM ledger_refused", ())
        return LedgerSummary(entries or 0, last or 0, pending or 0, refused or 0)

    # -- upload cursors ---------------------------------------------------------------

    async def acked(self, sink: str) -> int:
        """The highest seq `sink` acknowledged (0: none)."""
        async with self._db.read() as db:
            value = await _scalar(db, "SELECT acked_seq FROM ledger_sinks WHERE name = ?", (sink,))
        return value or 0

    async def set_acked(self, sink: str, seq: int) -> None:
        """Record what `sink` acknowledged (it may go down: an endpoint that lost entries)."""
        async with self._db.write() as db:
            await db.execute(
                "INSERT INTO ledger_sinks (name, acked_seq) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET acked_seq = excluded.acked_seq",
                (sink, seq),
            )


async def _scalar(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    async with db.execute(sql, args) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]


async def _head(db: aiosqlite.Connection) -> ChainHead:
    async with db.execute("SELECT seq, hash FROM ledger_entries ORDER BY seq DESC LIMIT 1") as cur:
        row = await cur.fetchone()
    return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(int(row[0]), str(row[1]))


def _event(row: aiosqlite.Row) -> LedgerEvent:
    return LedgerEvent(
        event_seq=int(row[0]),
        event=str(row[1]),
        session_id=str(row[2]),
        connector_id=int(row[3]) if row[3] is not None else 0,
        id_tag=str(row[4] or ""),
        meter_start_wh=None if row[5] is None else int(row[5]),
        meter_stop_wh=None if row[6] is None else int(row[6]),
        reason=row[7],
        recorded_at=row[8],
    )


def _event_detail(event: LedgerEvent) -> dict[str, Any]:
    # No id tag: the refusals table is read by technicians and shown in status.
    return {
        "connector_id": event.connector_id,
        "meter_start_wh": event.meter_start_wh,
        "meter_stop_wh": event.meter_stop_wh,
        "reason": event.reason,
        "recorded_at": event.recorded_at,
    }


def _entry(row: aiosqlite.Row) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(row[0])
    return {**body, "hash": row[1], "sig": row[2]}
