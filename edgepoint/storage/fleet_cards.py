"""All SQL of the fleet card sync: the local list merge and the record of what the fleet wrote."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from edgepoint.cloud.cardmerge import Applied, Plan, merge
from edgepoint.storage.sqlite import Database

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ListRow:
    """A local authorization list entry as stored (text form, so equal means identical)."""

    status: str
    expiry: str | None = None
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class CardRow:
    """An embedded-CSMS card as the fleet sync compares it."""

    status: str  # Accepted | Blocked
    expires: str | None = None
    parent_id_tag: str | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class CsmsShadow:
    """What the fleet wrote to one CSMS card; `intended` is a write that may not have landed."""

    written: CardRow | None
    displaced: CardRow | None
    intended: CardRow | None
    has_intended: bool


def _encode(value: Any) -> str | None:
    return None if value is None else json.dumps(dataclasses.asdict(value), sort_keys=True)


def _decode(kind: Callable[..., T], text: str | None) -> T | None:
    return None if text is None else kind(**json.loads(text))


class FleetCardStore:
    """Fleet cards in edgepoint.db: merged into local_list, and the CSMS side's record."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def merge_local_list(
        self, fleet: Mapping[str, ListRow], blocked: Callable[[ListRow], bool]
    ) -> Plan[ListRow]:
        """Merge `fleet` (keys: upper-case id tags) into the local list by cardmerge's rule.

        Read, decide and write happen in one transaction, so a SendLocalList handled at the
        same time lands wholly before or wholly after this merge, never inside it.
        """
        async with self._db.write() as db:
            async with db.execute(
                "SELECT id_tag, status, expiry, parent_id_tag FROM local_list"
            ) as cur:
                local = {str(r[0]).upper(): ListRow(r[1], r[2], r[3]) for r in await cur.fetchall()}
            async with db.execute("SELECT id_tag, written, displaced FROM fleet_local_list") as cur:
                applied = {
                    str(r[0]).upper(): Applied(
                        _decode(ListRow, r[1]) or ListRow("Invalid"), _decode(ListRow, r[2])
                    )
                    for r in await cur.fetchall()
                }
            plan = merge(fleet, local, applied, blocked)
            for tag in plan.delete:
                await db.execute("DELETE FROM local_list WHERE id_tag = ?", (tag,))
            for tag, row in plan.put.items():
                await db.execute("DELETE FROM local_list WHERE id_tag = ?", (tag,))
                await db.execute(
                    "INSERT INTO local_list (id_tag, status, expiry, parent_id_tag)"
                    " VALUES (?, ?, ?, ?)",
                    (tag, row.status, row.expiry, row.parent_id_tag),
                )
                # OCPP 1.6 §3.5.3: a card on the local list is not kept in the cache.
                await db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (tag,))
            await db.execute("DELETE FROM fleet_local_list")
            await db.executemany(
                "INSERT INTO fleet_local_list (id_tag, written, displaced) VALUES (?, ?, ?)",
                [(t, _encode(a.written), _encode(a.displaced)) for t, a in plan.applied.items()],
            )
        return plan

    async def fleet_local_count(self) -> int:
        async with self._db.read() as db, db.execute("SELECT COUNT(*) FROM fleet_local_list") as c:
            row = await c.fetchone()
        return int(row[0]) if row else 0

    # -- the embedded CSMS's cards (another database: written in three steps) ----------

    async def csms_shadow(self) -> dict[str, CsmsShadow]:
        async with (
            self._db.read() as db,
            db.execute("SELECT id_tag, written, displaced, intended FROM fleet_csms_cards") as cur,
        ):
            rows = await cur.fetchall()
        return {
            str(r[0]).upper(): CsmsShadow(
                _decode(CardRow, r[1]),
                _decode(CardRow, r[2]),
                _decode(CardRow, None if r[3] in (None, "null") else r[3]),
                r[3] is not None,
            )
            for r in rows
        }

    async def note_csms_intent(self, intended: Mapping[str, CardRow | None]) -> None:
        """Before writing csms.db: what each card will be (None: removed)."""
        async with self._db.write() as db:
            for tag, row in intended.items():
                text = _encode(row) or "null"
                await db.execute(
                    "INSERT INTO fleet_csms_cards (id_tag, intended) VALUES (?, ?)"
                    " ON CONFLICT(id_tag) DO UPDATE SET intended = excluded.intended",
                    (tag, text),
                )

    async def save_csms_applied(self, applied: Mapping[str, Applied[CardRow]]) -> None:
        """After writing csms.db: the new record of what is ours; no write is in doubt."""
        async with self._db.write() as db:
            await db.execute("DELETE FROM fleet_csms_cards")
            await db.executemany(
                "INSERT INTO fleet_csms_cards (id_tag, written, displaced) VALUES (?, ?, ?)",
                [(t, _encode(a.written), _encode(a.displaced)) for t, a in applied.items()],
            )
