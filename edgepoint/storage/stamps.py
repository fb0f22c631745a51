"""All SQL that moves provisional timestamps in edgepoint.db once the real time is known.

Rows written while the clock was provisional (clock.py) carry provisional stamps. Which
rows: those inserted after the provisional epoch began (`Marks`: the highest row ids
then), whose stamp lies between the epoch's start and the provisional time of the
switch. Both tests are needed: a row inserted later may carry a trusted stamp, and a
trusted stamp from before a crash may fall in the window. Moved: queued outbox messages
(created_at and every timestamp in the OCPP payload), sessions, the ledger's captured
events (so the ledger signs corrected times) and the security log (GetLog). Dead letters
keep what they had.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from edgepoint.clock import iso_utc
from edgepoint.storage.sqlite import Database

# A ledger event from a provisional epoch that can no longer be corrected (the Pi
# rebooted before the time was known) keeps its stamp behind this prefix: the recorder
# then signs it with the signing time (time_basis "signed") and keeps the stamp as seen.
PROVISIONAL_PREFIX = "provisional:"
# Slack around the window: a stamp taken a moment before the epoch's first reading.
_SLACK = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Marks:
    """The highest row ids of the stamped tables at one moment."""

    outbox: int
    sessions: int
    ledger_events: int
    security_log: int = 0  # clock.json written before it was marked: the window decides

    def as_dict(self) -> dict[str, int]:
        return {
            "outbox": self.outbox,
            "sessions": self.sessions,
            "ledger_events": self.ledger_events,
            "security_log": self.security_log,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Marks:
        return cls(
            int(data["outbox"]),
            int(data["sessions"]),
            int(data["ledger_events"]),
            int(data.get("security_log", 0)),
        )


@dataclass(frozen=True, slots=True)
class Corrected:
    """How many rows a correction moved, and the marks at its end (for a later sweep)."""

    outbox: int
    sessions: int
    ledger_events: int
    marks: Marks
    security_log: int = 0


class StampRepository:
    """The stamp corrections of edgepoint.db."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def marks(self) -> Marks:
        async with self._db.read() as db:
            return await _marks(db)

    async def correct(
        self,
        since: Marks,
        window: tuple[datetime, datetime],
        offset: timedelta,
        before_commit: Callable[[], None] = lambda: None,
    ) -> Corrected:
        """Move provisional stamps of rows after `since` by `offset`, in one transaction.

        `before_commit` runs last inside the transaction (under the database lock): the
        clock switches there, so no write can slip in between with a provisional stamp.
        """
        async with self._db.write() as db:
            corrected = await correct_rows(db, since, window, offset)
            before_commit()
        return corrected

    async def mark_provisional(self, since: Marks) -> int:
        """Flag the captured ledger events of an epoch that can no longer be corrected."""
        async with self._db.write() as db:
            cursor = await db.execute(
                "UPDATE ledger_events SET recorded_at = ? || COALESCE(recorded_at, '')"
                " WHERE event_seq > ? AND COALESCE(recorded_at, '') NOT LIKE ?",
                (PROVISIONAL_PREFIX, since.ledger_events, PROVISIONAL_PREFIX + "%"),
            )
            return cursor.rowcount


async def correct_rows(
    db: aiosqlite.Connection, since: Marks, window: tuple[datetime, datetime], offset: timedelta
) -> Corrected:
    """The correction inside a transaction the caller holds (see StampRepository.correct)."""
    lo, hi = window[0] - _SLACK, window[1] + _SLACK

    def shift(text: Any) -> str | None:
        moment = _parse(text)
        if moment is None or not lo <= moment <= hi:
            return None
        return iso_utc(moment + offset)

    outbox = await _correct_outbox(db, since.outbox, shift)
    sessions = 0
    async with db.execute(
        "SELECT rowid, started_at, stopped_at FROM sessions WHERE rowid > ?", (since.sessions,)
    ) as cur:
        rows = list(await cur.fetchall())
    for rowid, started, stopped in rows:
        new_start, new_stop = shift(started), shift(stopped)
        if new_start is None and new_stop is None:
            continue
        await db.execute(
            "UPDATE sessions SET started_at = ?, stopped_at = ? WHERE rowid = ?",
            (new_start or started, new_stop or stopped, rowid),
        )
        sessions += 1
    events = 0
    async with db.execute(
        "SELECT event_seq, recorded_at FROM ledger_events WHERE event_seq > ?",
        (since.ledger_events,),
    ) as cur:
        rows = list(await cur.fetchall())
    for seq, recorded in rows:
        if (moved := shift(recorded)) is not None:
            await db.execute(
                "UPDATE ledger_events SET recorded_at = ? WHERE event_seq = ?", (moved, seq)
            )
            events += 1
    logged = 0
    async with db.execute(
        "SELECT seq, at FROM security_log WHERE seq > ?", (since.security_log,)
    ) as cur:
        rows = list(await cur.fetchall())
    for seq, at in rows:
        if (moved := shift(at)) is not None:
            await db.execute("UPDATE security_log SET at = ? WHERE seq = ?", (moved, seq))
            logged += 1
    return Corrected(outbox, sessions, events, await _marks(db), logged)


async def _marks(db: aiosqlite.Connection) -> Marks:
    values = []
    for sql in (
        "SELECT COALESCE(MAX(seq), 0) FROM outbox",
        "SELECT COALESCE(MAX(rowid), 0) FROM sessions",
        "SELECT COALESCE(MAX(event_seq), 0) FROM ledger_events",
        "SELECT COALESCE(MAX(seq), 0) FROM security_log",
    ):
        async with db.execute(sql) as cur:
            row = await cur.fetchone()
        values.append(int(row[0]) if row else 0)
    # AUTOINCREMENT tables never reuse a seq; sqlite_sequence holds the highest ever
    # given, which is the safer mark when the newest rows were already deleted (sent).
    async with db.execute(
        "SELECT name, seq FROM sqlite_sequence"
        " WHERE name IN ('outbox', 'ledger_events', 'security_log')"
    ) as cur:
        for name, seq in await cur.fetchall():
            index = {"outbox": 0, "ledger_events": 2, "security_log": 3}[name]
            values[index] = max(values[index], int(seq))
    return Marks(values[0], values[1], values[2], values[3])


async def _correct_outbox(
    db: aiosqlite.Connection, since: int, shift: Callable[[Any], str | None]
) -> int:
    moved = 0
    async with db.execute(
        "SELECT seq, created_at, payload FROM outbox WHERE seq > ? AND wire = 1", (since,)
    ) as cur:
        rows = list(await cur.fetchall())
    for seq, created, payload in rows:
        try:
            decoded = json.loads(payload)
        except (TypeError, ValueError):
            continue  # the sender quarantines it; nothing to correct in it
        changed = _shift_payload(decoded, shift) if isinstance(decoded, dict) else False
        new_created = shift(created)
        if not changed and new_created is None:
            continue
        await db.execute(
            "UPDATE outbox SET created_at = ?, payload = ? WHERE seq = ?",
            (new_created or created, json.dumps(decoded, separators=(",", ":")), seq),
        )
        moved += 1
    return moved


def _shift_payload(payload: dict[str, Any], shift: Callable[[Any], str | None]) -> bool:
    """Move every OCPP 1.6 timestamp in a request: its own, and each meter value's."""
    changed = False
    if (moved := shift(payload.get("timestamp"))) is not None:
        payload["timestamp"] = moved
        changed = True
    for key in ("meterValue", "transactionData"):
        values = payload.get(key)
        if not isinstance(values, list):
            continue
        for value in values:
            if isinstance(value, dict) and (moved := shift(value.get("timestamp"))) is not None:
                value["timestamp"] = moved
                changed = True
    return changed


def _parse(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
