"""Repositories of the CSMS database (csms.db); all its SQL lives here."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
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
from edgepoint.csms.pending import PendingCharger
from edgepoint.csms.records import (
    Anomaly,
    AnomalyKind,
    AnomalyReason,
    AnomalyRecord,
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
from edgepoint.redact import printable
from edgepoint.storage.worker import SqliteWorker

# Auth keys are random machine secrets of 16+ characters, so stretching matters less
# than for passwords; 100k rounds take ~60 ms on x86 and a few hundred ms on a Pi 4.
DEFAULT_AUTH_ITERATIONS = 100_000
_SALT_BYTES = 16
# OCPP 1.6 has no connector count in BootNotification: until the operator sets one per
# charge point, connector ids 1..10 are accepted (0, the whole charge point, in
# StatusNotification and main-meter MeterValues).
DEFAULT_CONNECTOR_COUNT = 10
# The anomalies table keeps this many rows per charge point (newest), so a charger that
# misbehaves for months costs a bounded amount of disk.
MAX_ANOMALIES_PER_CHARGE_POINT = 200
_MAX_DETAIL = 200
# A parent's parent is followed this far (and never round a cycle).
_MAX_PARENT_DEPTH = 8
# Unknown ids kept for `chargers pending` (the least recently seen dropped first), so a
# scanner trying random ids costs a bounded table.
MAX_PENDING_CHARGE_POINTS = 1000
ENERGY_REGISTER = "Energy.Active.Import.Register"


def _to_text(moment: datetime) -> str:
    return iso_utc(moment)


def _from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return None if text is None else _from_text(text)


def meter_value_record(row: sqlite3.Row) -> MeterValueRecord:
    """One row of `meter_values` as the record the queries return."""
    return MeterValueRecord(
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


def _fetch_all(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _fetch_one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _hash_key(key: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key.encode("utf-8"), salt, iterations)


def _new_hash(key: str, iterations: int) -> tuple[bytes, bytes]:
    salt = os.urandom(_SALT_BYTES)
    return salt, _hash_key(key, salt, iterations)


class _KeyWrite(enum.Enum):
    """Which charge points a key write may touch."""

    ANY = "any"  # register or re-key (a removed one is registered again)
    NEW = "new"  # only one not registered (or removed)
    EXISTING = "existing"  # only one registered now


def _write_key(
    db: sqlite3.Connection,
    cp_id: ChargePointId,
    hashed: tuple[bytes, bytes],
    iterations: int,
    now: str,
    mode: _KeyWrite,
) -> bool:
    """Store a key hash (bumping key_version) if `mode` allows; the id stops being pending."""
    row = _fetch_one(db, "SELECT removed_at FROM charge_points WHERE id = ?", (cp_id,))
    registered = row is not None and row["removed_at"] is None
    if (mode is _KeyWrite.NEW and registered) or (mode is _KeyWrite.EXISTING and not registered):
        return False
    salt, digest = hashed
    if row is None:
        db.execute(
            """
            INSERT INTO charge_points
                (id, auth_salt, auth_hash, auth_iterations, registered_at, key_version)
            VALUES (?, ?, ?, ?, ?, 1)
            """,
            (cp_id, salt, digest, iterations, now),
        )
    else:
        # The row of a removed charger is kept (its transactions refer to it), so its
        # key_version keeps counting up: a key cached before the removal never matches.
        db.execute(
            """
            UPDATE charge_points
            SET auth_salt = ?, auth_hash = ?, auth_iterations = ?,
                key_version = key_version + 1,
                registered_at = CASE WHEN removed_at IS NULL THEN registered_at ELSE ? END,
                removed_at = NULL
            WHERE id = ?
            """,
            (salt, digest, iterations, now, cp_id),
        )
    db.execute("DELETE FROM pending_charge_points WHERE id = ?", (cp_id,))
    return True


class ChargePointRepository:
    """Charge points: registration with a hashed Basic-auth key, boot and heartbeat info."""

    def __init__(
        self, db: SqliteWorker, clock: Clock, *, iterations: int = DEFAULT_AUTH_ITERATIONS
    ) -> None:
        self._db = db
        self._clock = clock
        self._iterations = iterations

    async def set_auth_key(self, charge_point_id: str, key: str) -> None:
        """Register the charge point if new and (re)set its key; only a salted hash is kept.

        Every key change bumps the charge point's key_version and takes the id off the
        pending list.
        """
        await self._store_key(charge_point_id, key, _KeyWrite.ANY)

    async def add(self, charge_point_id: str, key: str) -> bool:
        """Register a charge point that is not registered (or was removed); False if it is."""
        return await self._store_key(charge_point_id, key, _KeyWrite.NEW)

    async def rekey(self, charge_point_id: str, key: str) -> bool:
        """Replace a registered charge point's key; False if it is not registered."""
        return await self._store_key(charge_point_id, key, _KeyWrite.EXISTING)

    async def _store_key(self, charge_point_id: str, key: str, mode: _KeyWrite) -> bool:
        cp_id = parse_charge_point_id(charge_point_id)
        check_auth_key(key)
        # PBKDF2 is CPU-bound on purpose; keep it off the event loop.
        hashed = await asyncio.to_thread(_new_hash, key, self._iterations)
        now = _to_text(self._clock.utc_now())
        iterations = self._iterations
        stored: bool = await self._db.write(
            lambda db: _write_key(db, cp_id, hashed, iterations, now, mode)
        )
        return stored

    async def register_many(
        self,
        entries: Sequence[tuple[str, str]],
        *,
        replace: bool = False,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> int:
        """Register many (id, key) pairs in one database transaction: all or none.

        Ids and keys are checked first (InvalidIdentifierError), then the keys are hashed
        on `workers` threads (default: one per CPU), calling `progress(done, total)` as
        they finish. Without `replace`, ids already registered raise CsmsError naming
        them and nothing is written; with it their keys are replaced.
        """
        checked = []
        for charge_point_id, key in entries:
            cp_id = parse_charge_point_id(charge_point_id)
            check_auth_key(key)
            checked.append((cp_id, key))
        ids = [cp_id for cp_id, _ in checked]
        if len(set(ids)) != len(ids):
            raise CsmsError("the same charge point id appears more than once")
        loop = asyncio.get_running_loop()
        iterations = self._iterations
        # hashlib's PBKDF2 releases the GIL: these threads use every core.
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
            hashing = [loop.run_in_executor(pool, _new_hash, key, iterations) for _, key in checked]
            for done, finished in enumerate(asyncio.as_completed(hashing), start=1):
                await finished
                if progress is not None:
                    progress(done, len(hashing))
        hashes = [future.result() for future in hashing]
        now = _to_text(self._clock.utc_now())

        def write(db: sqlite3.Connection) -> int:
            if not replace:
                taken = [
                    cp_id
                    for cp_id in ids
                    if _fetch_one(
                        db,
                        "SELECT 1 FROM charge_points WHERE id = ? AND removed_at IS NULL",
                        (cp_id,),
                    )
                    is not None
                ]
                if taken:
                    shown = ", ".join(taken[:10]) + (" ..." if len(taken) > 10 else "")
                    raise CsmsError(f"already registered: {shown}")
            for cp_id, hashed in zip(ids, hashes, strict=True):
                _write_key(db, cp_id, hashed, iterations, now, _KeyWrite.ANY)
            return len(ids)

        registered: int = await self._db.write(write)
        return registered

    async def remove(self, charge_point_id: str) -> bool:
        """Remove a charge point: its key goes, its history stays; False if not registered.

        It is unknown from then on (refused, recorded as pending when it tries again);
        registering the id again gives it a new key and a higher key_version.
        """
        now = _to_text(self._clock.utc_now())
        removed: int = await self._db.write(
            lambda db: (
                db.execute(
                    """
                    UPDATE charge_points
                    SET auth_salt = NULL, auth_hash = NULL, auth_iterations = NULL,
                        key_version = key_version + 1, removed_at = ?
                    WHERE id = ? AND removed_at IS NULL
                    """,
                    (now, charge_point_id),
                ).rowcount
            )
        )
        return removed > 0

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

    async def record_seen(self, charge_point_id: ChargePointId, at: datetime) -> int:
        """Store that the charge point was heard from at `at` (booted or not); return how
        many connectors it may use (its connector_count, else DEFAULT_CONNECTOR_COUNT)."""
        values = (_to_text(at), charge_point_id)

        def write(db: sqlite3.Connection) -> int:
            # fetchall: a RETURNING statement left unfinished would hold the savepoint open.
            rows = _fetch_all(
                db,
                "UPDATE charge_points SET last_seen_at = ? WHERE id = ? RETURNING connector_count",
                values,
            )
            if not rows or rows[0]["connector_count"] is None:
                return DEFAULT_CONNECTOR_COUNT
            return int(rows[0]["connector_count"])

        return await self._db.write(write)

    async def set_connector_count(self, charge_point_id: str, count: int | None) -> bool:
        """Set how many connectors (ids 1..count) a charge point has; None restores the
        default. Connected charge points see the change within a minute. False if unknown."""
        if count is not None and not 1 <= count <= 1000:
            raise CsmsError("a charge point has 1 to 1000 connectors")
        changed: int = await self._db.write(
            lambda db: (
                db.execute(
                    "UPDATE charge_points SET connector_count = ? WHERE id = ?",
                    (count, charge_point_id),
                ).rowcount
            )
        )
        return changed > 0

    async def record_firmware_status(
        self, charge_point_id: ChargePointId, status: str, at: datetime
    ) -> None:
        """Store the latest FirmwareStatusNotification."""
        values = (status, _to_text(at), charge_point_id)
        await self._db.write(
            lambda db: db.execute(
                "UPDATE charge_points SET firmware_status = ?, firmware_status_at = ? WHERE id = ?",
                values,
            )
        )

    async def record_diagnostics_status(
        self, charge_point_id: ChargePointId, status: str, at: datetime
    ) -> None:
        """Store the latest DiagnosticsStatusNotification."""
        values = (status, _to_text(at), charge_point_id)
        await self._db.write(
            lambda db: db.execute(
                "UPDATE charge_points SET diagnostics_status = ?, diagnostics_status_at = ?"
                " WHERE id = ?",
                values,
            )
        )

    async def get(self, charge_point_id: str) -> ChargePointRecord | None:
        """Return one registered charge point, or None (unknown or removed)."""
        row = await self._db.read(
            lambda db: _fetch_one(
                db,
                "SELECT * FROM charge_points WHERE id = ? AND removed_at IS NULL",
                (charge_point_id,),
            )
        )
        return None if row is None else _charge_point(row)

    async def list(self) -> list[ChargePointRecord]:
        """Return every registered charge point, by id."""
        rows = await self._db.read(
            lambda db: _fetch_all(
                db, "SELECT * FROM charge_points WHERE removed_at IS NULL ORDER BY id", ()
            )
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
        connector_count=row["connector_count"],
        last_seen_at=_optional_time(row["last_seen_at"]),
        firmware_status=row["firmware_status"],
        diagnostics_status=row["diagnostics_status"],
        key_version=int(row["key_version"]),
    )


def _pending(row: Any) -> PendingCharger:
    return PendingCharger(
        charge_point_id=ChargePointId(row["id"]),
        first_seen=_from_text(row["first_seen_at"]),
        last_seen=_from_text(row["last_seen_at"]),
        attempts=int(row["attempts"]),
        last_address=row["last_address"],
    )


class PendingRepository:
    """Unknown charge point ids that tried to connect (the `on_unknown` of SiteCsms).

    One row per id, so a charger retrying every few seconds stays one line; at most
    `max_rows`, the least recently seen dropped first.
    """

    def __init__(self, db: SqliteWorker, *, max_rows: int = MAX_PENDING_CHARGE_POINTS) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self._db = db
        self._max_rows = max_rows

    async def record(self, charge_point_id: ChargePointId, address: str, at: datetime) -> None:
        """Note one attempt (the `OnUnknown` port)."""
        values = (charge_point_id, _to_text(at), _to_text(at), printable(address, 64))
        limit = self._max_rows

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                """
                INSERT INTO pending_charge_points
                    (id, first_seen_at, last_seen_at, attempts, last_address)
                VALUES (?, ?, ?, 1, ?)
                ON CONFLICT (id) DO UPDATE SET
                    last_seen_at = MAX(last_seen_at, excluded.last_seen_at),
                    attempts = attempts + 1,
                    last_address = excluded.last_address
                """,
                values,
            )
            db.execute(
                """
                DELETE FROM pending_charge_points WHERE id IN (
                    SELECT id FROM pending_charge_points
                    ORDER BY last_seen_at DESC, id LIMIT -1 OFFSET ?)
                """,
                (limit,),
            )

        await self._db.write(write)

    async def list(self) -> list[PendingCharger]:
        """Every pending id, most recently seen first."""
        rows = await self._db.read(
            lambda db: _fetch_all(
                db, "SELECT * FROM pending_charge_points ORDER BY last_seen_at DESC, id", ()
            )
        )
        return [_pending(row) for row in rows]

    async def get(self, charge_point_id: str) -> PendingCharger | None:
        """One pending id, or None."""
        row = await self._db.read(
            lambda db: _fetch_one(
                db, "SELECT * FROM pending_charge_points WHERE id = ?", (charge_point_id,)
            )
        )
        return None if row is None else _pending(row)

    async def discard(self, charge_point_id: str) -> bool:
        """Drop an id (dismissed by the operator); False if it was not pending."""
        removed: int = await self._db.write(
            lambda db: (
                db.execute(
                    "DELETE FROM pending_charge_points WHERE id = ?", (charge_point_id,)
                ).rowcount
            )
        )
        return removed > 0


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


def _verdict(
    db: sqlite3.Connection,
    id_tag: str,
    now: datetime,
    *,
    count_open: bool,
    exclude_transaction: int | None = None,
) -> IdTagVerdict:
    """The tag rules (docs in CardRepository), run inside the caller's transaction."""
    row = _fetch_one(db, "SELECT * FROM id_tags WHERE id_tag = ?", (id_tag,))
    if row is None:
        return IdTagVerdict(AuthorizationStatus.INVALID)
    card = _card(row)
    status = _own_status(card, now)
    expires = card.expires
    # The parent's verdict passes down: a blocked or expired parent blocks or expires its
    # children. A parent that is no registered tag is only a group name and adds nothing.
    seen = {card.id_tag.casefold()}
    parent_id = card.parent_id_tag
    for _ in range(_MAX_PARENT_DEPTH):
        if parent_id is None or parent_id.casefold() in seen:
            break
        seen.add(parent_id.casefold())
        parent_row = _fetch_one(db, "SELECT * FROM id_tags WHERE id_tag = ?", (parent_id,))
        if parent_row is None:
            break
        parent = _card(parent_row)
        if status is AuthorizationStatus.ACCEPTED:
            status = _own_status(parent, now)
        if parent.expires is not None and (expires is None or parent.expires < expires):
            expires = parent.expires
        parent_id = parent.parent_id_tag
    if status is AuthorizationStatus.ACCEPTED and count_open:
        running = _fetch_one(
            db,
            """
            SELECT COUNT(*) FROM transactions
            WHERE id_tag = ? COLLATE NOCASE AND stop_timestamp IS NULL AND transaction_id != ?
            """,
            (card.id_tag, -1 if exclude_transaction is None else exclude_transaction),
        )[0]
        if running >= card.max_concurrent_tx:
            status = AuthorizationStatus.CONCURRENT_TX
    return IdTagVerdict(status, expires, card.parent_id_tag)


def _own_status(card: Card, now: datetime) -> AuthorizationStatus:
    if card.status is CardStatus.BLOCKED:
        return AuthorizationStatus.BLOCKED
    if card.expires is not None and card.expires <= now:
        return AuthorizationStatus.EXPIRED
    return AuthorizationStatus.ACCEPTED


class CardRepository:
    """The id tags (RFID cards) this CSMS authorizes; unknown tags are Invalid.

    Rules, in order: a Blocked tag is Blocked, an expired one Expired; then its parent
    (if the parent is itself a registered tag, and so on up the chain) passes down
    Blocked or Expired; an Accepted tag that already has `max_concurrent_tx` open
    transactions (anywhere on the site) gets ConcurrentTx. The expiryDate answered is
    the earliest of the chain. ConcurrentTx only answers Authorize and StartTransaction.
    """

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
        max_concurrent_tx: int = 1,
    ) -> Card:
        """Register a card as Accepted; raise CardExistsError if it is already registered."""
        card = Card(
            id_tag=parse_id_tag(id_tag),
            name=name.strip(),
            status=CardStatus.ACCEPTED,
            expires=_expiry(expires),
            parent_id_tag=_parent(id_tag, parent_id_tag),
            created_at=self._clock.utc_now().astimezone(UTC),
            max_concurrent_tx=_concurrency(max_concurrent_tx),
        )
        values = (
            card.id_tag,
            card.name,
            card.status.value,
            None if card.expires is None else _to_text(card.expires),
            card.parent_id_tag,
            _to_text(card.created_at),
            card.max_concurrent_tx,
        )
        inserted = await self._db.write(
            lambda db: (
                db.execute(
                    """
                INSERT INTO id_tags (id_tag, name, status, expires_at, parent_id_tag, created_at,
                    max_concurrent_tx)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id_tag) DO NOTHING
                """,
                    values,
                ).rowcount
            )
        )
        if inserted == 0:
            raise CardExistsError(f"id tag {card.id_tag!r} is already registered")
        return card

    async def put(
        self,
        id_tag: str,
        *,
        status: CardStatus,
        name: str = "",
        expires: date | datetime | None = None,
        parent_id_tag: str | None = None,
    ) -> None:
        """Create or overwrite a card in one statement (the fleet card sync's write).

        One statement, so an Authorize never sees the card half-changed (a blocked card
        briefly Accepted). An existing card keeps its created_at and max_concurrent_tx.
        """
        values = (
            parse_id_tag(id_tag),
            name.strip(),
            status.value,
            None if (moment := _expiry(expires)) is None else _to_text(moment),
            _parent(id_tag, parent_id_tag),
            _to_text(self._clock.utc_now().astimezone(UTC)),
        )
        await self._db.write(
            lambda db: db.execute(
                """
                INSERT INTO id_tags (id_tag, name, status, expires_at, parent_id_tag, created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (id_tag) DO UPDATE SET name = excluded.name,
                    status = excluded.status, expires_at = excluded.expires_at,
                    parent_id_tag = excluded.parent_id_tag
                """,
                values,
            )
        )

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

    async def set_parent(self, id_tag: str, parent_id_tag: str | None) -> bool:
        """Set (or with None clear) a card's parent id tag; False if there is no such card."""
        parent = _parent(id_tag, parent_id_tag)
        changed: int = await self._db.write(
            lambda db: (
                db.execute(
                    "UPDATE id_tags SET parent_id_tag = ? WHERE id_tag = ?", (parent, id_tag)
                ).rowcount
            )
        )
        return changed > 0

    async def set_max_concurrent_tx(self, id_tag: str, limit: int) -> bool:
        """Set how many open transactions a card may have; False if there is no such card."""
        value = _concurrency(limit)
        changed: int = await self._db.write(
            lambda db: (
                db.execute(
                    "UPDATE id_tags SET max_concurrent_tx = ? WHERE id_tag = ?", (value, id_tag)
                ).rowcount
            )
        )
        return changed > 0

    async def check(self, id_tag: str, now: datetime, *, count_open: bool = True) -> IdTagVerdict:
        """Decide on an id tag at `now`: Accepted, Blocked, Expired, Invalid (unknown) or,
        with `count_open`, ConcurrentTx (as Authorize answers; a stop does not count)."""
        return await self._db.read(lambda db: _verdict(db, id_tag, now, count_open=count_open))

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
        max_concurrent_tx=int(row["max_concurrent_tx"]),
    )


def _parent(id_tag: str, parent_id_tag: str | None) -> IdTag | None:
    if parent_id_tag is None:
        return None
    parent = parse_id_tag(parent_id_tag)
    if parent.casefold() == id_tag.strip().casefold():
        raise CsmsError("a card cannot be its own parent")
    return parent


def _concurrency(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise CsmsError("max concurrent transactions must be a whole number >= 1")
    return limit


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
) -> list[MeterSample]:
    """Insert the samples not stored yet; return those (a retry returns none)."""
    inserted = []
    # The samples of one meterValue share one timestamp object: format it once.
    stamp: datetime | None = None
    text = ""
    for s in samples:
        if s.timestamp is not stamp:
            stamp = s.timestamp
            text = _to_text(stamp)
        cursor = db.execute(
            _INSERT_SAMPLE,
            (
                charge_point_id,
                connector_id,
                transaction_id,
                text,
                s.measurand,
                s.phase,
                s.unit,
                s.location,
                s.format,
                s.context,
                s.value,
            ),
        )
        if cursor.rowcount > 0:
            inserted.append(s)
    return inserted


def _register_wh(sample: MeterSample) -> float | None:
    """The sample as an energy register reading in Wh, or None if it is not one."""
    if sample.measurand != ENERGY_REGISTER or sample.phase is not None or sample.format != "Raw":
        return None
    scale = {"Wh": 1.0, "kWh": 1000.0}.get(sample.unit)
    try:
        value = float(sample.value)
    except ValueError:
        return None
    if scale is None or not math.isfinite(value):
        return None
    return value * scale


def _check_register(
    db: sqlite3.Connection,
    charge_point_id: ChargePointId,
    transaction_id: int,
    meter_start: int,
    fresh: Iterable[MeterSample],
    action: str,
) -> Anomaly | None:
    """Flag the transaction if a newly stored register reading is below meterStart or
    below the latest earlier reading of the same meter (location)."""
    for sample in sorted(fresh, key=lambda s: s.timestamp):
        value = _register_wh(sample)
        if value is None:
            continue
        floor, what = float(meter_start), "meterStart"
        row = _fetch_one(
            db,
            """
            SELECT value, unit, format, timestamp FROM meter_values
            WHERE transaction_id = ? AND charge_point_id = ? AND timestamp < ?
                AND measurand = 'Energy.Active.Import.Register' AND phase IS NULL
                AND location = ?
            ORDER BY timestamp DESC LIMIT 1
            """,
            (transaction_id, charge_point_id, _to_text(sample.timestamp), sample.location),
        )
        if row is not None:
            earlier = _register_wh(
                MeterSample(
                    timestamp=sample.timestamp,
                    value=row["value"],
                    unit=row["unit"],
                    format=row["format"],
                )
            )
            if earlier is not None and earlier > floor:
                floor, what = earlier, f"the reading at {row['timestamp']}"
        if value < floor:
            db.execute(
                "UPDATE transactions SET meter_backwards = 1 WHERE transaction_id = ?",
                (transaction_id,),
            )
            return Anomaly(
                AnomalyKind.FLAGGED,
                AnomalyReason.METER_BACKWARDS,
                action,
                f"register {value:g} Wh at {_to_text(sample.timestamp)} is below"
                f" {what} ({floor:g} Wh)",
                transaction_id,
            )
    return None


def _record_anomaly(
    db: sqlite3.Connection, charge_point_id: ChargePointId, anomaly: Anomaly, at: datetime
) -> None:
    """Add an anomaly row, or count it on the latest row if it repeats that one exactly
    (a retried message); keep the newest MAX_ANOMALIES_PER_CHARGE_POINT rows."""
    detail = printable(anomaly.detail, _MAX_DETAIL)
    when = _to_text(at)
    latest = _fetch_one(
        db,
        """
        SELECT id, kind, reason, action, detail, transaction_id FROM anomalies
        WHERE charge_point_id = ? ORDER BY id DESC LIMIT 1
        """,
        (charge_point_id,),
    )
    if latest is not None and (
        latest["kind"],
        latest["reason"],
        latest["action"],
        latest["detail"],
        latest["transaction_id"],
    ) == (anomaly.kind.value, anomaly.reason.value, anomaly.action, detail, anomaly.transaction_id):
        db.execute(
            "UPDATE anomalies SET count = count + 1, last_at = ? WHERE id = ?",
            (when, latest["id"]),
        )
        return
    db.execute(
        """
        INSERT INTO anomalies (charge_point_id, kind, reason, action, detail, transaction_id,
            first_at, last_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (
            charge_point_id,
            anomaly.kind.value,
            anomaly.reason.value,
            anomaly.action,
            detail,
            anomaly.transaction_id,
            when,
            when,
        ),
    )
    db.execute(
        """
        DELETE FROM anomalies WHERE charge_point_id = ? AND id <= (
            SELECT id FROM anomalies WHERE charge_point_id = ?
            ORDER BY id DESC LIMIT 1 OFFSET ?)
        """,
        (charge_point_id, charge_point_id, MAX_ANOMALIES_PER_CHARGE_POINT),
    )


def _record_all(
    db: sqlite3.Connection, charge_point_id: ChargePointId, found: Sequence[Anomaly], at: datetime
) -> None:
    for anomaly in found:
        _record_anomaly(db, charge_point_id, anomaly, at)


class AnomalyRepository:
    """What charge points sent that was refused or stored flagged, and why (bounded)."""

    def __init__(self, db: SqliteWorker, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record(
        self, charge_point_id: ChargePointId, anomaly: Anomaly, at: datetime | None = None
    ) -> None:
        """Record one anomaly (a repeat of the charge point's latest one is counted on it)."""
        when = at or self._clock.utc_now()
        await self._db.write(lambda db: _record_anomaly(db, charge_point_id, anomaly, when))

    async def list(
        self, charge_point_id: str | None = None, *, limit: int = 100
    ) -> list[AnomalyRecord]:
        """Return the newest anomalies first, of one charge point or of all."""
        if charge_point_id is None:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db, "SELECT * FROM anomalies ORDER BY id DESC LIMIT ?", (limit,)
                )
            )
        else:
            rows = await self._db.read(
                lambda db: _fetch_all(
                    db,
                    "SELECT * FROM anomalies WHERE charge_point_id = ? ORDER BY id DESC LIMIT ?",
                    (charge_point_id, limit),
                )
            )
        return [
            AnomalyRecord(
                id=int(row["id"]),
                charge_point_id=ChargePointId(row["charge_point_id"]),
                anomaly=Anomaly(
                    kind=AnomalyKind(row["kind"]),
                    reason=AnomalyReason(row["reason"]),
                    action=row["action"],
                    detail=row["detail"],
                    transaction_id=row["transaction_id"],
                ),
                first_at=_from_text(row["first_at"]),
                last_at=_from_text(row["last_at"]),
                count=int(row["count"]),
            )
            for row in rows
        ]


class MeterValueRepository:
    """Sampled meter values; a retried MeterValues message is stored once."""

    def __init__(self, db: SqliteWorker, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def add(
        self,
        charge_point_id: ChargePointId,
        connector_id: int,
        transaction_id: int | None,
        samples: Sequence[MeterSample],
        *,
        received_at: datetime | None = None,
        notes: list[Anomaly] | None = None,
    ) -> int:
        """Store samples not stored yet, all in one transaction; return how many were new.

        With a transaction id: another charge point's transaction stores nothing (a
        REFUSED anomaly); an unknown one stores the samples without it, a connector
        other than the transaction's is stored as sent, and a register reading going
        backwards flags the transaction (FLAGGED anomalies). Anomalies are recorded in the
        same database transaction and appended to `notes`.
        """
        at = received_at or self._clock.utc_now()
        action = "MeterValues"

        def write(db: sqlite3.Connection) -> tuple[int, list[Anomaly]]:
            found: list[Anomaly] = []
            keep_under = transaction_id
            meter_start: int | None = None
            if transaction_id is not None:
                row = _fetch_one(
                    db,
                    "SELECT charge_point_id, connector_id, meter_start FROM transactions"
                    " WHERE transaction_id = ?",
                    (transaction_id,),
                )
                if row is None:
                    keep_under = None
                    found.append(
                        Anomaly(
                            AnomalyKind.FLAGGED,
                            AnomalyReason.UNKNOWN_TRANSACTION,
                            action,
                            f"no transaction {transaction_id}: samples kept without it",
                            transaction_id,
                        )
                    )
                elif row["charge_point_id"] != charge_point_id:
                    found.append(_foreign(action, transaction_id))
                    _record_all(db, charge_point_id, found, at)
                    return 0, found
                else:
                    meter_start = int(row["meter_start"])
                    if int(row["connector_id"]) != connector_id:
                        found.append(
                            Anomaly(
                                AnomalyKind.FLAGGED,
                                AnomalyReason.CONNECTOR_MISMATCH,
                                action,
                                f"connector {connector_id}, transaction runs on"
                                f" connector {row['connector_id']}",
                                transaction_id,
                            )
                        )
            fresh = _insert_samples(db, charge_point_id, connector_id, keep_under, samples)
            if not fresh:
                return 0, []  # a retry: its anomalies were recorded the first time
            if meter_start is not None and transaction_id is not None:
                backwards = _check_register(
                    db, charge_point_id, transaction_id, meter_start, fresh, action
                )
                if backwards is not None:
                    found.append(backwards)
            _record_all(db, charge_point_id, found, at)
            return len(fresh), found

        stored, found = await self._db.write(write)
        if notes is not None:
            notes.extend(found)
        return stored

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
        return [meter_value_record(row) for row in rows]


def _foreign(action: str, transaction_id: int) -> Anomaly:
    return Anomaly(
        AnomalyKind.REFUSED,
        AnomalyReason.FOREIGN_TRANSACTION,
        action,
        f"transaction {transaction_id} belongs to another charge point",
        transaction_id,
    )


class TransactionRepository:
    """Charging transactions; Start and Stop are idempotent so a retry changes nothing.

    A connector carries one transaction at a time: a StartTransaction on a connector whose
    transaction is still open means the charge point ended that one without (yet) telling
    us, so the older one is closed as superseded (stop_timestamp = the new start, reason
    Other, superseded_by = the new id, a FLAGGED anomaly); its StopTransaction, if it
    comes later, still fills in the real end. Closing it first also keeps a lost Stop from
    counting against the tag's concurrency limit forever.
    """

    def __init__(self, db: SqliteWorker, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def start(
        self,
        charge_point_id: ChargePointId,
        connector_id: int,
        id_tag: str,
        *,
        meter_start: int,
        timestamp: datetime,
        id_tag_status: AuthorizationStatus | None = None,
        reservation_id: int | None,
        received_at: datetime,
        notes: list[Anomaly] | None = None,
    ) -> StartOutcome:
        """Record a StartTransaction; the same message again returns the same id and verdict.

        The tag rules (CardRepository) decide the status, ConcurrentTx included, unless
        `id_tag_status` imposes one. Everything, anomalies included, is one database
        transaction, so two charge points starting with one tag cannot both slip under
        its limit.
        """
        key = (charge_point_id, connector_id, id_tag, _to_text(timestamp), meter_start)
        started = key[3]
        action = "StartTransaction"

        def write(db: sqlite3.Connection) -> tuple[StartOutcome, list[Anomaly]]:
            row = _fetch_one(
                db,
                """
                SELECT transaction_id, id_tag_status FROM transactions
                WHERE charge_point_id = ? AND connector_id = ? AND id_tag = ?
                    AND start_timestamp = ? AND meter_start = ?
                """,
                key,
            )
            if row is not None:
                verdict = _verdict(db, id_tag, received_at, count_open=False)
                stored = AuthorizationStatus(row["id_tag_status"])
                return StartOutcome(
                    int(row["transaction_id"]), True, replace(verdict, status=stored)
                ), []
            cursor = db.execute(
                """
                INSERT INTO transactions (charge_point_id, connector_id, id_tag,
                    start_timestamp, meter_start, id_tag_status, reservation_id, received_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (*key, AuthorizationStatus.ACCEPTED.value, reservation_id, _to_text(received_at)),
            )
            if cursor.lastrowid is None:
                raise StorageError("csms.db: StartTransaction not stored")
            new_id = cursor.lastrowid
            found: list[Anomaly] = []
            superseded: list[int] = []
            for older in _fetch_all(
                db,
                """
                SELECT transaction_id, start_timestamp FROM transactions
                WHERE charge_point_id = ? AND connector_id = ? AND stop_timestamp IS NULL
                    AND transaction_id != ?
                ORDER BY transaction_id
                """,
                (charge_point_id, connector_id, new_id),
            ):
                older_id = int(older["transaction_id"])
                if older["start_timestamp"] <= started:
                    db.execute(
                        """
                        UPDATE transactions
                        SET stop_timestamp = ?, stop_reason = 'Other', superseded_by = ?
                        WHERE transaction_id = ?
                        """,
                        (started, new_id, older_id),
                    )
                    superseded.append(older_id)
                    found.append(
                        Anomaly(
                            AnomalyKind.FLAGGED,
                            AnomalyReason.SUPERSEDED,
                            action,
                            f"still open when transaction {new_id} started on connector"
                            f" {connector_id} at {started}: closed then",
                            older_id,
                        )
                    )
                else:
                    found.append(
                        Anomaly(
                            AnomalyKind.FLAGGED,
                            AnomalyReason.OUT_OF_ORDER_START,
                            action,
                            f"starts at {started}, before transaction {older_id}, still open"
                            f" on connector {connector_id}, started ({older['start_timestamp']})",
                            new_id,
                        )
                    )
            verdict = _verdict(
                db,
                id_tag,
                received_at,
                count_open=id_tag_status is None,
                exclude_transaction=new_id,
            )
            if id_tag_status is not None:
                verdict = replace(verdict, status=id_tag_status)
            if verdict.status is not AuthorizationStatus.ACCEPTED:
                db.execute(
                    "UPDATE transactions SET id_tag_status = ? WHERE transaction_id = ?",
                    (verdict.status.value, new_id),
                )
            _record_all(db, charge_point_id, found, received_at)
            return StartOutcome(new_id, False, verdict, tuple(superseded)), found

        outcome, found = await self._db.write(write)
        if notes is not None:
            notes.extend(found)
        return outcome

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
        received_at: datetime | None = None,
        notes: list[Anomaly] | None = None,
    ) -> StopOutcome:
        """Record a StopTransaction and its transactionData in one database transaction.

        A stop for an already stopped transaction changes nothing but still stores
        samples not seen yet. Another charge point's transaction is FOREIGN: nothing is
        stored and a REFUSED anomaly recorded. An unknown one is UNKNOWN: its samples are
        kept under connector 0 without a transaction, flagged. A stop whose meterStop is
        below meterStart (or earlier than the start) is stored, flagged: the charge point
        must not retry it forever, and the operator sees it in the anomalies.
        """
        at = received_at or self._clock.utc_now()
        action = "StopTransaction"
        stopped_at = _to_text(timestamp)

        def write(db: sqlite3.Connection) -> tuple[StopOutcome, list[Anomaly]]:
            found: list[Anomaly] = []
            row = _fetch_one(
                db,
                """
                SELECT charge_point_id, connector_id, meter_start, start_timestamp,
                    stop_received_at
                FROM transactions WHERE transaction_id = ?
                """,
                (transaction_id,),
            )
            keep_under: int | None = transaction_id
            if row is None:
                outcome = StopOutcome.UNKNOWN
                connector_id = 0
                keep_under = None
                found.append(
                    Anomaly(
                        AnomalyKind.FLAGGED,
                        AnomalyReason.UNKNOWN_TRANSACTION,
                        action,
                        f"no transaction {transaction_id}: answered, samples kept without it",
                        transaction_id,
                    )
                )
            elif row["charge_point_id"] != charge_point_id:
                found.append(_foreign(action, transaction_id))
                _record_all(db, charge_point_id, found, at)
                return StopOutcome.FOREIGN, found
            elif row["stop_received_at"] is not None:
                outcome = StopOutcome.ALREADY_STOPPED
                connector_id = int(row["connector_id"])
            else:
                outcome = StopOutcome.STOPPED
                connector_id = int(row["connector_id"])
                meter_start = int(row["meter_start"])
                backwards = meter_stop < meter_start
                db.execute(
                    """
                    UPDATE transactions
                    SET meter_stop = ?, stop_timestamp = ?, stop_reason = ?, stop_id_tag = ?,
                        stop_received_at = ?, meter_backwards = MAX(meter_backwards, ?)
                    WHERE transaction_id = ?
                    """,
                    (
                        meter_stop,
                        stopped_at,
                        reason,
                        id_tag,
                        _to_text(at),
                        int(backwards),
                        transaction_id,
                    ),
                )
                if backwards:
                    found.append(
                        Anomaly(
                            AnomalyKind.FLAGGED,
                            AnomalyReason.METER_BACKWARDS,
                            action,
                            f"meterStop {meter_stop} Wh is below meterStart {meter_start} Wh",
                            transaction_id,
                        )
                    )
                if stopped_at < row["start_timestamp"]:
                    found.append(
                        Anomaly(
                            AnomalyKind.FLAGGED,
                            AnomalyReason.STOP_BEFORE_START,
                            action,
                            f"stopped at {stopped_at}, started at {row['start_timestamp']}",
                            transaction_id,
                        )
                    )
            fresh = _insert_samples(db, charge_point_id, connector_id, keep_under, samples)
            flagged = {anomaly.reason for anomaly in found}
            if row is not None and fresh and AnomalyReason.METER_BACKWARDS not in flagged:
                backwards_sample = _check_register(
                    db, charge_point_id, transaction_id, int(row["meter_start"]), fresh, action
                )
                if backwards_sample is not None:
                    found.append(backwards_sample)
            if outcome is StopOutcome.UNKNOWN and not fresh and samples:
                found = []  # a retry of a stop already recorded as unknown
            _record_all(db, charge_point_id, found, at)
            return outcome, found

        outcome, found = await self._db.write(write)
        if notes is not None:
            notes.extend(found)
        return outcome

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
        superseded_by=row["superseded_by"],
        meter_backwards=bool(row["meter_backwards"]),
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
        self.transactions = TransactionRepository(db, clock)
        self.meter_values = MeterValueRepository(db, clock)
        self.anomalies = AnomalyRepository(db, clock)
        self.pending = PendingRepository(db)

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
