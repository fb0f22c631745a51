"""The charging profiles the CSMS installed (SetChargingProfile), kept in edgepoint.db."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.clock import iso_utc
from edgepoint.storage.sqlite import Database

log = logging.getLogger(__name__)

# One numbered migration of edgepoint.db (storage/chargepoint.py's MIGRATIONS). The
# profile is the csChargingProfiles object as OCPP-J JSON (with the startSchedule an
# Absolute profile was given on receipt). TxProfiles are not kept: they end with their
# transaction, and no transaction outlives the process (a restart closes it).
CHARGING_PROFILES_SCHEMA = """
CREATE TABLE charging_profiles (
    profile_id   INTEGER PRIMARY KEY,
    connector_id INTEGER NOT NULL,
    profile      TEXT NOT NULL,
    installed_at TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """One row: the profile's JSON, or None with the reason when it cannot be decoded."""

    profile_id: int
    connector_id: int
    data: Mapping[str, Any] | None
    error: str = ""


class ChargingProfileStore:
    """All SQL of the charging_profiles table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def profiles(self) -> list[StoredProfile]:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT profile_id, connector_id, profile FROM charging_profiles"
                " ORDER BY profile_id"
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [_decode(int(row[0]), int(row[1]), row[2]) for row in rows]

    async def replace(
        self,
        drop: Iterable[int],
        add: tuple[int, int, Mapping[str, Any]] | None = None,
        at: datetime | None = None,
    ) -> None:
        """In one transaction: delete the profiles `drop`, then store `add`
        (connector id, profile id, csChargingProfiles) if given, installed `at`."""
        async with self._db.write() as db:
            await db.executemany(
                "DELETE FROM charging_profiles WHERE profile_id = ?", [(i,) for i in drop]
            )
            if add is not None:
                if at is None:
                    raise ValueError("a stored profile needs the time it was installed")
                connector_id, profile_id, data = add
                await db.execute(
                    "INSERT OR REPLACE INTO charging_profiles"
                    " (profile_id, connector_id, profile, installed_at) VALUES (?, ?, ?, ?)",
                    (
                        profile_id,
                        connector_id,
                        json.dumps(data, separators=(",", ":")),
                        iso_utc(at),
                    ),
                )

    async def drop(self, profile_ids: Iterable[int]) -> None:
        await self.replace(profile_ids)


def _decode(profile_id: int, connector_id: int, text: Any) -> StoredProfile:
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as err:
        return StoredProfile(profile_id, connector_id, None, f"not JSON: {err}"[:200])
    if not isinstance(data, dict):
        return StoredProfile(profile_id, connector_id, None, "not a JSON object")
    return StoredProfile(profile_id, connector_id, data)
