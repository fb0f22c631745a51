"""Reservations (ReserveNow), kept in edgepoint.db so that a restart does not forget them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from edgepoint.charging.events import IdTag
from edgepoint.clock import iso_utc
from edgepoint.storage.sqlite import Database

if TYPE_CHECKING:  # storage/chargepoint.py imports this module for its migration
    from edgepoint.storage.chargepoint import Change

# One numbered migration of edgepoint.db (storage/chargepoint.py's MIGRATIONS).
# connector_id is the one ReserveNow named: 0 for "any connector".
RESERVATIONS_SCHEMA = """
CREATE TABLE reservations (
    reservation_id INTEGER PRIMARY KEY,
    connector_id   INTEGER NOT NULL,
    id_tag         TEXT NOT NULL,
    parent_id_tag  TEXT,
    expiry         TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    """One ReserveNow the charge point accepted."""

    reservation_id: int
    connector_id: int  # 0: any connector (ReserveConnectorZeroSupported)
    id_tag: IdTag
    expiry: datetime  # aware UTC
    parent_id_tag: IdTag | None = None


async def save_reservation(change: Change, reservation: Reservation) -> None:
    """Store (or replace) a reservation in the transaction of `change`."""
    await change.connection.execute(
        "INSERT OR REPLACE INTO reservations"
        " (reservation_id, connector_id, id_tag, parent_id_tag, expiry) VALUES (?, ?, ?, ?, ?)",
        (
            reservation.reservation_id,
            reservation.connector_id,
            reservation.id_tag,
            reservation.parent_id_tag,
            iso_utc(reservation.expiry),
        ),
    )


async def drop_reservation(change: Change, reservation_id: int) -> None:
    """Forget a reservation (used, cancelled, expired) in the transaction of `change`."""
    await change.connection.execute(
        "DELETE FROM reservations WHERE reservation_id = ?", (reservation_id,)
    )


class ReservationStore:
    """Reads the reservations table (its writes join the kiosk's transactions, above)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def reservations(self) -> list[Reservation]:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT reservation_id, connector_id, id_tag, parent_id_tag, expiry"
                " FROM reservations ORDER BY reservation_id"
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [
            Reservation(
                int(row[0]),
                int(row[1]),
                IdTag(row[2]),
                datetime.fromisoformat(row[4]),
                None if row[3] is None else IdTag(row[3]),
            )
            for row in rows
        ]
