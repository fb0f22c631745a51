"""Helpers for the cloud tests: edgepoint.db with the cloud schema, sessions, a settable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgepoint.charging.events import IdTag, SessionId
from edgepoint.storage.chargepoint import MIGRATIONS, ChargePointStore
from edgepoint.storage.cloud_schema import CLOUD_SCHEMA
from edgepoint.storage.sqlite import Database

# Until the lead appends CLOUD_SCHEMA to MIGRATIONS, tests add it themselves.
SCHEMA = MIGRATIONS if CLOUD_SCHEMA in MIGRATIONS else [*MIGRATIONS, CLOUD_SCHEMA]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def open_store(path: Path) -> ChargePointStore:
    return ChargePointStore(await Database.open(path, SCHEMA))


class TestClock:
    """A clock the test moves by hand; `synced=False` plays a Pi booted without NTP or RTC."""

    __test__ = False

    def __init__(self, synced: bool = True) -> None:
        self.mono = 1000.0
        self.wall = T0 if synced else datetime(1970, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.mono

    def utc_now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)

    def sync(self, wall: datetime = T0) -> None:
        self.wall = wall


async def start_session(
    store: ChargePointStore,
    session_id: str,
    meter_start_wh: int,
    at: datetime,
    connector_id: int = 1,
    id_tag: str = "04A1B2C3",
) -> None:
    async with store.change() as change:
        await change.begin_session(
            SessionId(session_id), connector_id, IdTag(id_tag), meter_start_wh, at
        )


async def stop_session(
    store: ChargePointStore,
    session_id: str,
    meter_stop_wh: int,
    at: datetime,
    reason: str = "Local",
) -> None:
    async with store.change() as change:
        assert await change.end_session(SessionId(session_id), None, meter_stop_wh, reason, at)
