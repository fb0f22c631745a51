"""Repositories of the CSMS database (csms.db); all its SQL lives here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from edgepoint.charging.events import IdTag
from edgepoint.clock import Clock, SystemClock, iso_utc
from edgepoint.csms.ids import (
    ChargePointId,
    CsmsError,
    check_auth_key,
    parse_charge_point_id,
    parse_id_tag,
)
from edgepoint.csms.records import (
    AuthorizationStatus,
    Card,
    CardExistsError,
    CardStatus,
    ChargePointRecord,
    ConnectorStatus,
    IdTagVerdict,
    MeterSample,
    MeterValueRecord,
    StartOutcome,
    StopOutcome,
    TransactionRecord,
)
from edgepoint.csms.schema import MIGRATIONS
from edgepoint.errors import StorageError
from edgepoint.storage.worker import SqliteWorker

# Auth keys are random machine secrets of 16+ characters, so stretching matters less
# than for passwords; 100k rounds take ~60 ms on x86 and a few hundred ms on a Pi 4.
DEFAULT_AUTH_ITERATIONS = 100_000
_SALT_BYTES = 16


def _to_text(moment: datetime) -> str:
    return iso_utc(moment)


def _from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else _from_text(text)


def _fetch_all(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _fetch_one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _hash_key(key: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key.encode("utf-8"), salt, iterations)


class ChargePointRepository:
    """Charge points: registration with a hashed Basic-auth key, boot and heartbeat info."""

    def __init__(
        self, db: SqliteWorker, clock: Clock, *, iterations: int = DEFAULT_AUTH_ITERATIONS
    ) -> None:
        self._db = db
        self._clock = clock
        self._iterations = iterations

    async def set_auth_key(self, charge_point_id: str, key: str) -> None:
        """Register the charge point if new and (re)set its key; only a salted hash is kept."""
        cp_id = parse_charge_point_id(charge_point_id)
        check_auth_key(key)
        salt = os.urandom(_SALT_BYTES)
        # PBKDF2 is CPU-bound on purpose; keep it off the event loop.
        digest = await asyncio.to_thread(_hash_key, key, salt, self._iterations)
        row = (cp_id, salt, digest, self._iterations, _to_text(self._clock.utc_now()))

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                """
                INSERT INTO charge_points
                    (id, auth_salt, auth_hash, auth_iterations, registered_at)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    auth_salt = excluded.auth_salt,
                    auth_hash = excluded.auth_hash,
                    auth_iterations = excluded.auth_iterations
                """,
                row,
            )

        await self._db.write(write)

    async def verify_auth_key(self, charge_point_id: str, key: str) -> bool:
        """Tell whether `key` is the registered key of the charge point (False if unknown)."""
        row = await self._db.read(
            lambda db: _fetch_one(
                db,
                "SELECT auth_salt, auth_hash, auth_iterations FROM charge_points WHERE id = ?",
                (charge_point_id,),
            )
        )
        if row is None or row["auth_hash"] is None:
            # Spend the same work as for a known id, so timing does not reveal which ids exist.
            await asyncio.to_thread(_hash_key, key, b"\0" * _SALT_BYTES, self._iterations)
            return False
        digest = await asyncio.to_thread(
            _hash_key, key, bytes(row["auth_salt"]), int(row["auth_iterations"])
        )
        return hmac.compare_digest(digest, bytes(row["auth_hash"]))

    async def record_boot(
        self,
        charge_point_id: ChargePointId,
        *,
        vendor: str,
        model: str,
        firmware: str | None,
        serial_number: str | None,
        at: datetime,
    ) -> None:
        """Store what a BootNotification said about the charge point."""
        values = (vendor, model, firmware, serial_number, _to_text(at), charge_point_id)
        await self._db.write(
            lambda db: db.execute(
                """
                UPDATE charge_points
                SET vendor = ?, model = ?, firmware = ?, serial_number = ?, last_boot_at = ?
                WHERE id = ?
                """,
                values,
            )
        )

    async def record_heartbeat(self, charge_point_id: ChargePointId, at: datetime) -> None:
        """Store the time of the latest Heartbeat."""
        values = (_to_text(at), charge_point_id)
        await self._db.write(
            lambda db: db.execute(
                "UPDATE charge_points SET last_heartbeat_at = ? WHERE id = ?", values
            )
        )

    async def get(self, charge_point_id: str) -> ChargePointRecord | None:
        """Return one charge point, or None."""
        row = await self._db.read(
            lambda db: _fetch_one(
                db, "SELECT * FROM charge_points WHERE id = ?", (charge_point_id,)
            )
        )
        return None if row is None else _charge_point(row)

    async def list(self) -> list[ChargePointRecord]:
        """Return every registered charge point, by id."""
        rows = await self._db.read(
            lambda db: _fetch_all(db, "SELECT * FROM charge_points ORDER BY id", ())
        )
        return [_charge_point(row) for row in rows]


def _charge_point(row: Any) -> ChargePointRecord:
    return ChargePointRecord(
        id=ChargePointId(row["id"]),
        vendor=row["vendor"],
        model=row["model"],
        firmware=row["firmware"],
        serial_number=row["serial_number"],
        has_auth_key=row["auth_hash"] is not None,
        registered_at=_from_text(row["registered_at"]),
        last_boot_at=_optional_time(row["last_boot_at"]),
        last_heartbeat_at=_optional_time(row["last_heartbeat_at"]),
    )


class ConnectorRepository:
    """Latest status of every connector of every charge point."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def record_status(
        self,
        charge_point_id: ChargePointId,
        connector_id: int,
        *,
        status: str,
        error_code: str,
        info: str | None,
        vendor_id: str | None,
        vendor_error_code: str | None,
        timestamp: datetime,
        received_at: datetime,
    ) -> bool:
        """Store a StatusNotification unless a newer one is already stored; tell if stored."""

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                """
                INSERT INTO connectors (charge_point_id, connector_id, status, error_code,
                    info, vendor_id, vendor_error_code, timestamp, received_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (charge_point_id, connector_id) DO UPDATE SET
                    status = excluded.status,
                    error_code = excluded.error_code,
                    info = excluded.info,
                    vendor_id = excluded.vendor_id,
                    vendor_error_code = excluded.vendor_error_code,
                    timestamp = excluded.timestamp,
                    received_at = excluded.received_at
                WHERE excluded.timestamp >= connectors.timestamp
                """,
                (
                    charge_point_id,
                    connector_id,
                    status,
                    error_code,
                    info,
                    vendor_id,
                    vendor_error_code,
                    _to_text(timestamp),
                    _to_text(received_at),
                ),
            )
            return cursor.rowcount > 0

        return await self._db.write(write)

    async def list(self, charge_point_id: str | None = None) -> list[ConnectorStatus]:
        """Return connector statuses, of one charge point or of all."""
        if charge_point_id is None:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db, "SELECT * FROM connectors ORDER BY charge_point_id, connector_id", ()
                )
            )
        else:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db,
                    "SELECT * FROM connectors WHERE charge_point_id = ? ORDER BY connector_id",
                    (charge_point_id,),
                )
            )
        return [
            ConnectorStatus(
                charge_point_id=ChargePointId(row["charge_point_id"]),
                connector_id=int(row["connector_id"]),
                status=row["status"],
                error_code=row["error_code"],
                info=row["info"],
                vendor_id=row["vendor_id"],
                vendor_error_code=row["vendor_error_code"],
                timestamp=_from_text(row["timestamp"]),
                received_at=_from_text(row["received_at"]),
            )
            for row in rows
        ]


def _expiry(expires: date | datetime | None) -> datetime | None:
    """A datetime must be aware; a date means valid through that whole day (UTC)."""
    if expires is None:
        return None
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise CsmsError("card expiry must carry a timezone (or be a plain date)")
        return expires.astimezone(UTC)
    return datetime.combine(expires + timedelta(days=1), time(0), tzinfo=UTC)


class CardRepository:
    """The id tags (RFID cards) this CSMS authorizes; unknown tags are Invalid."""

    def __init__(self, db: SqliteWorker, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def add(
        self,
        id_tag: str,
        name: str = "",
        expires: date | datetime | None = None,
        *,
        parent_id_tag: str | None = None,
    ) -> Card:
        """Register a card as Accepted; raise CardExistsError if it is already registered."""
        card = Card(
            id_tag=parse_id_tag(id_tag),
            name=name.strip(),
            status=CardStatus.ACCEPTED,
            expires=_expiry(expires),
            parent_id_tag=None if parent_id_tag is None else parse_id_tag(parent_id_tag),
            created_at=self._clock.utc_now().astimezone(UTC),
        )
        values = (
            card.id_tag,
            card.name,
            card.status.value,
            None if card.expires is None else _to_text(card.expires),
            card.parent_id_tag,
            _to_text(card.created_at),
        )
        inserted = await self._db.write(
            lambda db: (
                db.execute(
                    """
                INSERT INTO id_tags (id_tag, name, status, expires_at, parent_id_tag, created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (id_tag) DO NOTHING
                """,
                    values,
                ).rowcount
            )
        )
        if inserted == 0:
            raise CardExistsError(f"id tag {card.id_tag!r} is already registered")
        return card

    async def get(self, id_tag: str) -> Card | None:
        """Return the card (matched case-insensitively), or None."""
        row = await self._db.read(
            lambda db: _fetch_one(db, "SELECT * FROM id_tags WHERE id_tag = ?", (id_tag,))
        )
        return None if row is None else _card(row)

    async def list(self) -> list[Card]:
        """Return every card, by id tag."""
        rows = await self._db.read(
            lambda db: _fetch_all(db, "SELECT * FROM id_tags ORDER BY id_tag", ())
        )
        return [_card(row) for row in rows]

    async def block(self, id_tag: str) -> bool:
        """Block a card; False if there is no such card."""
        return await self._set_status(id_tag, CardStatus.BLOCKED)

    async def unblock(self, id_tag: str) -> bool:
        """Accept a blocked card again; False if there is no such card."""
        return await self._set_status(id_tag, CardStatus.ACCEPTED)

    async def remove(self, id_tag: str) -> bool:
        """Forget a card (it becomes Invalid); False if there was no such card."""
        removed: int = await self._db.write(
            lambda db: db.execute("DELETE FROM id_tags WHERE id_tag = ?", (id_tag,)).rowcount
        )
        return removed > 0

    async def check(self, id_tag: str, now: datetime) -> IdTagVerdict:
        """Decide on an id tag at `now`: Accepted, Blocked, Expired or Invalid (unknown)."""
        card = await self.get(id_tag)
        if card is None:
            return IdTagVerdict(AuthorizationStatus.INVALID)
        if card.status is CardStatus.BLOCKED:
            status = AuthorizationStatus.BLOCKED
        elif card.expires is not None and card.expires <= now:
            status = AuthorizationStatus.EXPIRED
        else:
            status = AuthorizationStatus.ACCEPTED
        return IdTagVerdict(status, card.expires, card.parent_id_tag)

    async def authorize(self, id_tag: str, now: datetime) -> AuthorizationStatus:
        """Return only the status part of `check`."""
        return (await self.check(id_tag, now)).status

    async def _set_status(self, id_tag: str, status: CardStatus) -> bool:
        changed: int = await self._db.write(
            lambda db: (
                db.execute(
                    "UPDATE id_tags SET status = ? WHERE id_tag = ?", (status.value, id_tag)
                ).rowcount
            )
        )
        return changed > 0


def _card(row: Any) -> Card:
    return Card(
        id_tag=IdTag(row["id_tag"]),
        name=row["name"],
        status=CardStatus(row["status"]),
        expires=_optional_time(row["expires_at"]),
        parent_id_tag=None if row["parent_id_tag"] is None else IdTag(row["parent_id_tag"]),
        created_at=_from_text(row["created_at"]),
    )


_INSERT_SAMPLE = """
    INSERT OR IGNORE INTO meter_values (charge_point_id, connector_id, transaction_id,
        timestamp, measurand, phase, unit, location, format, context, value)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _insert_samples(
    db: sqlite3.Connection,
    charge_point_id: ChargePointId,
    connector_id: int,
    transaction_id: int | None,
    samples: Sequence[MeterSample],
) -> int:
    inserted = 0
    for s in samples:
        cursor = db.execute(
            _INSERT_SAMPLE,
            (
                charge_point_id,
                connector_id,
                transaction_id,
                _to_text(s.timestamp),
                s.measurand,
                s.phase,
                s.unit,
                s.location,
                s.format,
                s.context,
                s.value,
            ),
        )
        inserted += cursor.rowcount
    return inserted


class MeterValueRepository:
    """Sampled meter values; a retried MeterValues message is stored once."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def add(
        self,
        charge_point_id: ChargePointId,
        connector_id: int,
        transaction_id: int | None,
        samples: Sequence[MeterSample],
    ) -> int:
        """Store samples not stored yet, all in one transaction; return how many were new."""
        return await self._db.write(
            lambda db: _insert_samples(db, charge_point_id, connector_id, transaction_id, samples)
        )

    async def list(
        self, charge_point_id: str, *, transaction_id: int | None = None
    ) -> list[MeterValueRecord]:
        """Return a charge point's samples (optionally of one transaction) in time order."""
        if transaction_id is None:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db,
                    "SELECT * FROM meter_values WHERE charge_point_id = ? ORDER BY timestamp, id",
                    (charge_point_id,),
                )
            )
        else:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db,
                    "SELECT * FROM meter_values WHERE charge_point_id = ? AND transaction_id = ?"
                    " ORDER BY timestamp, id",
                    (charge_point_id, transaction_id),
                )
            )
        return [
            MeterValueRecord(
                charge_point_id=ChargePointId(row["charge_point_id"]),
                connector_id=int(row["connector_id"]),
                transaction_id=row["transaction_id"],
                sample=MeterSample(
                    timestamp=_from_text(row["timestamp"]),
                    value=row["value"],
                    measurand=row["measurand"],
                    phase=row["phase"],
                    unit=row["unit"],
                    location=row["location"],
                    format=row["format"],
                    context=row["context"],
                ),
            )
            for row in rows
        ]


class TransactionRepository:
    """Charging transactions; Start and Stop are idempotent so a retry changes nothing."""

    def __init__(self, db: SqliteWorker) -> None:
        self._db = db

    async def start(
        self,
        charge_point_id: ChargePointId,
        connector_id: int,
        id_tag: str,
        *,
        meter_start: int,
        timestamp: datetime,
        id_tag_status: AuthorizationStatus,
        reservation_id: int | None,
        received_at: datetime,
    ) -> StartOutcome:
        """Record a StartTransaction; the same message again returns the same id."""
        key = (charge_point_id, connector_id, id_tag, _to_text(timestamp), meter_start)

        def write(db: sqlite3.Connection) -> StartOutcome:
            cursor = db.execute(
                """
                INSERT INTO transactions (charge_point_id, connector_id, id_tag,
                    start_timestamp, meter_start, id_tag_status, reservation_id, received_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (charge_point_id, connector_id, id_tag, start_timestamp, meter_start)
                DO NOTHING
                """,
                (*key, id_tag_status.value, reservation_id, _to_text(received_at)),
            )
            if cursor.rowcount == 1 and cursor.lastrowid is not None:
                return StartOutcome(cursor.lastrowid, repeated=False)
            row = _fetch_one(
                db,
                """
                SELECT transaction_id FROM transactions
                WHERE charge_point_id = ? AND connector_id = ? AND id_tag = ?
                    AND start_timestamp = ? AND meter_start = ?
                """,
                key,
            )
            if row is None:
                raise StorageError("csms.db: StartTransaction neither stored nor found")
            return StartOutcome(int(row["transaction_id"]), repeated=True)

        return await self._db.write(write)

    async def stop(
        self,
        charge_point_id: ChargePointId,
        transaction_id: int,
        *,
        meter_stop: int,
        timestamp: datetime,
        reason: str,
        id_tag: str | None,
        samples: Sequence[MeterSample] = (),
    ) -> StopOutcome:
        """Record a StopTransaction and its transactionData in one database transaction.

        A stop for an already stopped transaction changes nothing but still stores
        samples not seen yet; a stop for a transaction this charge point does not own
        is UNKNOWN, and its samples are kept under connector 0 so they are not lost.
        """

        def write(db: sqlite3.Connection) -> StopOutcome:
            row = _fetch_one(
                db,
                """
                SELECT connector_id, stop_timestamp FROM transactions
                WHERE transaction_id = ? AND charge_point_id = ?
                """,
                (transaction_id, charge_point_id),
            )
            if row is None:
                outcome = StopOutcome.UNKNOWN
                connector_id = 0
            elif row["stop_timestamp"] is not None:
                outcome = StopOutcome.ALREADY_STOPPED
                connector_id = int(row["connector_id"])
            else:
                outcome = StopOutcome.STOPPED
                connector_id = int(row["connector_id"])
                db.execute(
                    """
                    UPDATE transactions
                    SET meter_stop = ?, stop_timestamp = ?, stop_reason = ?, stop_id_tag = ?
                    WHERE transaction_id = ?
                    """,
                    (meter_stop, _to_text(timestamp), reason, id_tag, transaction_id),
                )
            _insert_samples(db, charge_point_id, connector_id, transaction_id, samples)
            return outcome

        return await self._db.write(write)

    async def get(self, transaction_id: int) -> TransactionRecord | None:
        """Return one transaction, or None."""
        row = await self._db.read(
            lambda db: _fetch_one(
                db, "SELECT * FROM transactions WHERE transaction_id = ?", (transaction_id,)
            )
        )
        return None if row is None else _transaction(row)

    async def list(self, charge_point_id: str | None = None) -> list[TransactionRecord]:
        """Return transactions, of one charge point or of all, oldest first."""
        if charge_point_id is None:
            rows = await self._db.read(
                lambda db: _fetch_all(db, "SELECT * FROM transactions ORDER BY transaction_id", ())
            )
        else:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db,
                    "SELECT * FROM transactions WHERE charge_point_id = ? ORDER BY transaction_id",
                    (charge_point_id,),
                )
            )
        return [_transaction(row) for row in rows]


def _transaction(row: Any) -> TransactionRecord:
    return TransactionRecord(
        transaction_id=int(row["transaction_id"]),
        charge_point_id=ChargePointId(row["charge_point_id"]),
        connector_id=int(row["connector_id"]),
        id_tag=IdTag(row["id_tag"]),
        id_tag_status=AuthorizationStatus(row["id_tag_status"]),
        meter_start=int(row["meter_start"]),
        start_timestamp=_from_text(row["start_timestamp"]),
        reservation_id=row["reservation_id"],
        meter_stop=row["meter_stop"],
        stop_timestamp=_optional_time(row["stop_timestamp"]),
        stop_reason=row["stop_reason"],
        stop_id_tag=None if row["stop_id_tag"] is None else IdTag(row["stop_id_tag"]),
    )


class CsmsStore:
    """csms.db with every repository over it: what the CSMS and the `cards` CLI open."""

    def __init__(
        self, db: SqliteWorker, clock: Clock, *, auth_iterations: int = DEFAULT_AUTH_ITERATIONS
    ) -> None:
        self.db = db
        self.charge_points = ChargePointRepository(db, clock, iterations=auth_iterations)
        self.connectors = ConnectorRepository(db)
        self.cards = CardRepository(db, clock)
        self.transactions = TransactionRepository(db)
        self.meter_values = MeterValueRepository(db)

    @classmethod
    async def open(
        cls, path: Path, clock: Clock, *, auth_iterations: int = DEFAULT_AUTH_ITERATIONS
    ) -> CsmsStore:
        """Open (creating and migrating if needed) csms.db at `path`."""
        return cls(
            await SqliteWorker.open(path, MIGRATIONS), clock, auth_iterations=auth_iterations
        )

    async def close(self) -> None:
        """Close the database connection."""
        await self.db.close()


async def open_csms_database(
    path: Path, clock: Clock | None = None, *, auth_iterations: int = DEFAULT_AUTH_ITERATIONS
) -> CsmsStore:
    """Open csms.db with its repositories (the CLI's entry point; safe while the daemon runs).

    WAL plus BEGIN IMMEDIATE and a busy timeout let the CLI and the daemon write the
    same file; the caller closes the returned store.
    """
    return await CsmsStore.open(path, clock or SystemClock(), auth_iterations=auth_iterations)


@contextlib.asynccontextmanager
async def open_csms_store(
    path: Path, clock: Clock, *, auth_iterations: int = DEFAULT_AUTH_ITERATIONS
) -> AsyncIterator[CsmsStore]:
    """Open csms.db for the body and close it after (for the CLI and one-off tasks)."""
    store = await CsmsStore.open(path, clock, auth_iterations=auth_iterations)
    try:
        yield store
    finally:
        await store.close()
