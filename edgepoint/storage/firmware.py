"""The firmware update in progress (firmware_job in edgepoint.db) and its status messages.

Each step of an update is stored together with the status notification it causes, in
one transaction: after a crash or a restart the update carries on from the stored
stage, and the CSMS hears every status once, in order, through the outbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.clock import iso_utc
from edgepoint.storage.chargepoint import Change
from edgepoint.storage.sqlite import Database


@dataclass(frozen=True, slots=True)
class Notice:
    """A status notification to queue in the outbox with a state change."""

    action: str
    payload: dict[str, Any]
    message_id: str


@dataclass(frozen=True, slots=True)
class FirmwareJob:
    """The stored update: the CSMS's request and the stage it reached."""

    action: str  # UpdateFirmware | SignedUpdateFirmware
    request: dict[str, Any]
    stage: str
    file: str | None
    status: str | None  # the last status reported to the CSMS
    updated_at: str


class FirmwareStore:
    """All SQL of the firmware_job table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def job(self) -> FirmwareJob | None:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT action, request, stage, file, status, updated_at FROM firmware_job"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            request = json.loads(row[1])
        except ValueError:
            request = None
        if not isinstance(request, dict):
            request = {}
        return FirmwareJob(row[0], request, row[2], row[3], row[4], row[5])

    async def start(self, action: str, request: dict[str, Any], stage: str, at: datetime) -> None:
        """Store a new update, replacing whatever update was stored."""
        async with self._db.write() as db:
            await db.execute("DELETE FROM firmware_job")
            await db.execute(
                "INSERT INTO firmware_job (id, action, request, stage, updated_at)"
                " VALUES (1, ?, ?, ?, ?)",
                (action, json.dumps(request, separators=(",", ":")), stage, iso_utc(at)),
            )

    async def advance(
        self,
        stage: str,
        at: datetime,
        notice: Notice | None = None,
        file: str | None = None,
    ) -> None:
        """Move the update to `stage` and queue `notice`, together."""
        async with self._db.write() as db:
            await db.execute(
                "UPDATE firmware_job SET stage = ?, updated_at = ?, file = COALESCE(?, file),"
                " status = COALESCE(?, status)",
                (stage, iso_utc(at), file, None if notice is None else notice.payload["status"]),
            )
            if notice is not None:
                await Change(db).enqueue(notice.action, notice.payload, at, notice.message_id)

    async def finish(self, at: datetime, notice: Notice | None = None) -> None:
        """The update ended (installed, failed or replaced): forget it, queue `notice`."""
        async with self._db.write() as db:
            await db.execute("DELETE FROM firmware_job")
            if notice is not None:
                await Change(db).enqueue(notice.action, notice.payload, at, notice.message_id)

    async def notify(self, notice: Notice, at: datetime) -> None:
        """Queue a status notification on its own (diagnostics, log uploads, triggers)."""
        async with self._db.write() as db:
            await Change(db).enqueue(notice.action, notice.payload, at, notice.message_id)
