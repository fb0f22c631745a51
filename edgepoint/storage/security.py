"""The security extension's tables in edgepoint.db: root certificates, security log, trial state.

OCPP 1.6 Security Whitepaper: the charge point keeps the root certificates the CSMS
installs (InstallCertificate), a security log of every security event (GetLog
SecurityLog), and, while a new SecurityProfile or AuthorizationKey has not yet
connected, the settings it connected with before (the fallback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.clock import iso_utc
from edgepoint.storage.chargepoint import Change
from edgepoint.storage.sqlite import Database

# A rolling security log (the whitepaper's advice): this many newest events are kept.
SECURITY_LOG_ROWS = 5_000


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """One installed root certificate."""

    id: int
    use: str
    pem: str
    fingerprint: str
    installed_at: str


@dataclass(frozen=True, slots=True)
class SecurityLogEntry:
    """One security event as logged."""

    seq: int
    type: str
    at: str
    tech_info: str | None
    critical: bool


class SecurityStore:
    """All SQL of the security extension's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- certificates ----------------------------------------------------------------

    async def certificates(self, use: str | None = None) -> list[StoredCertificate]:
        where, args = ("WHERE use = ?", (use,)) if use is not None else ("", ())
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT id, use, pem, fingerprint, installed_at FROM certificates"
                f" {where} ORDER BY id",
                args,
            ) as cur,
        ):
            return [StoredCertificate(*row) for row in await cur.fetchall()]

    async def certificate_count(self) -> int:
        async with self._db.read() as db, db.execute("SELECT COUNT(*) FROM certificates") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def add_certificate(
        self, use: str, pem: str, fingerprint: str, at: datetime, replace: tuple[int, ...] = ()
    ) -> bool:
        """Install a certificate (removing `replace` in the same transaction); False if present."""
        async with self._db.write() as db:
            for cert_id in replace:
                await db.execute("DELETE FROM certificates WHERE id = ?", (cert_id,))
            cursor = await db.execute(
                "INSERT INTO certificates (use, pem, fingerprint, installed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (use, fingerprint) DO NOTHING",
                (use, pem, fingerprint, iso_utc(at)),
            )
            return cursor.rowcount == 1

    async def delete_certificate(self, cert_id: int) -> bool:
        async with self._db.write() as db:
            cursor = await db.execute("DELETE FROM certificates WHERE id = ?", (cert_id,))
            return cursor.rowcount == 1

    # -- security events -------------------------------------------------------------

    async def record_event(
        self,
        event_type: str,
        tech_info: str | None,
        critical: bool,
        at: datetime,
        message_id: str | None,
    ) -> None:
        """Log a security event; with a `message_id`, also queue its SecurityEventNotification
        in the outbox, in the same transaction (durable before sent, delivered in order)."""
        async with self._db.write() as db:
            await db.execute(
                "INSERT INTO security_log (type, at, tech_info, critical) VALUES (?, ?, ?, ?)",
                (event_type, iso_utc(at), tech_info, int(critical)),
            )
            await db.execute(
                "DELETE FROM security_log WHERE seq <= (SELECT MAX(seq) FROM security_log) - ?",
                (SECURITY_LOG_ROWS,),
            )
            if message_id is not None:
                payload: dict[str, Any] = {"type": event_type, "timestamp": iso_utc(at)}
                if tech_info:
                    payload["techInfo"] = tech_info
                await Change(db).enqueue("SecurityEventNotification", payload, at, message_id)

    async def security_log(
        self, oldest: datetime | None = None, latest: datetime | None = None
    ) -> list[SecurityLogEntry]:
        """The logged events between `oldest` and `latest` (inclusive), oldest first."""
        clauses, args = [], []
        if oldest is not None:
            clauses.append("at >= ?")
            args.append(iso_utc(oldest))
        if latest is not None:
            clauses.append("at <= ?")
            args.append(iso_utc(latest))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with (
            self._db.read() as db,
            db.execute(
                f"SELECT seq, type, at, tech_info, critical FROM security_log {where} ORDER BY seq",
                args,
            ) as cur,
        ):
            return [
                SecurityLogEntry(int(s), str(t), str(a), i, bool(c))
                for s, t, a, i, c in await cur.fetchall()
            ]

    # -- named state -----------------------------------------------------------------

    async def state(self, name: str) -> dict[str, Any] | None:
        async with (
            self._db.read() as db,
            db.execute("SELECT value FROM security_state WHERE name = ?", (name,)) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        """Store `value` under `name`; None removes it."""
        async with self._db.write() as db:
            if value is None:
                await db.execute("DELETE FROM security_state WHERE name = ?", (name,))
            else:
                await db.execute(
                    "INSERT INTO security_state (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, json.dumps(value, separators=(",", ":"))),
                )
