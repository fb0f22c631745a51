"""All SQL of `edgepoint outbox`: dead letters and quarantined rows, shown, retried, dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgepoint.storage.chargepoint import BILLING_ACTIONS
from edgepoint.storage.sqlite import Database


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the sender gave up on (kind 'dead') or could not read ('quarantined')."""

    seq: int
    kind: str
    action: str
    session_id: str | None
    message_id: str | None
    created_at: str
    failed_at: str
    reason: str
    payload: str  # as stored: the OCPP-J payload, or whatever could not be read

    @property
    def billing(self) -> bool:
        return self.action in BILLING_ACTIONS

    def payload_json(self) -> Any:
        """The payload decoded, or the raw text when it is not JSON (quarantined)."""
        try:
            return json.loads(self.payload)
        except (TypeError, ValueError):
            return self.payload


class RetryRefused(Exception):
    """A dead letter that cannot go back into the outbox, with the reason."""


class DeadLetterStore:
    """The dead_letters table of edgepoint.db (written by the outbox sender)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> list[DeadLetter]:
        return await self._select("ORDER BY seq", ())

    async def get(self, seq: int) -> DeadLetter | None:
        rows = await self._select("WHERE seq = ?", (seq,))
        return rows[0] if rows else None

    async def retry(self, seq: int) -> int:
        """Put a dead letter back at the end of the outbox (same message id); its new seq.

        Its tries start again from zero. A quarantined row goes back as it is: if it is
        still unreadable, the sender quarantines it again.
        """
        async with self._db.write() as db:
            async with db.execute(
                "SELECT session_id, action, payload, created_at, message_id FROM dead_letters"
                " WHERE seq = ?",
                (seq,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise RetryRefused(f"no dead letter {seq}")
            session_id, action, payload, created_at, message_id = row
            if session_id is not None:
                async with db.execute(
                    "SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)
                ) as cur:
                    if await cur.fetchone() is None:
                        raise RetryRefused(f"its session {session_id} is no longer stored")
            cursor = await db.execute(
                "INSERT INTO outbox (session_id, action, payload, created_at, message_id, wire)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    action,
                    payload,
                    created_at,
                    message_id or _new_message_id(),
                    int(_is_wire(payload)),
                ),
            )
            await db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            return int(cursor.lastrowid or 0)

    async def drop(self, seq: int) -> bool:
        async with self._db.write() as db:
            cursor = await db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            return cursor.rowcount == 1

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[DeadLetter]:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT seq, kind, action, session_id, message_id, created_at, failed_at,"
                f" reason, payload FROM dead_letters {where}",
                args,
            ) as cur,
        ):
            return [
                DeadLetter(
                    int(r[0]),
                    str(r[1]),
                    str(r[2]),
                    r[3],
                    r[4],
                    str(r[5]),
                    str(r[6]),
                    str(r[7]),
                    str(r[8]),
                )
                for r in await cur.fetchall()
            ]


def _is_wire(payload: str) -> bool:
    """Rows of the first schema held snake_case argument names; the wire form is camelCase."""
    try:
        decoded = json.loads(payload)
    except (TypeError, ValueError):
        return True
    return not (isinstance(decoded, dict) and any("_" in key for key in decoded))


def _new_message_id() -> str:
    import uuid

    return uuid.uuid4().hex
