"""Site queries for the CLI, TUI and cloud (chargers, transactions, health), and retention."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from datetime import datetime, timedelta
from typing import Any

from edgepoint.clock import Clock, iso_utc
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.health import Health
from edgepoint.csms.operator import CsmsNotRunning, Site
from edgepoint.csms.records import MeterValueRecord
from edgepoint.csms.site_db import (
    LocalListRepository,
    RetentionRepository,
    SiteQueries,
)
from edgepoint.csms.site_records import (
    ChargerView,
    ConnectorView,
    RetentionReport,
    TransactionView,
)
from edgepoint.storage.worker import SqliteWorker

log = logging.getLogger(__name__)

HEALTH_WINDOW = timedelta(hours=24)


class _Source:
    """csms.db from a running SiteCsms (with its live connections) or from an open store."""

    def __init__(self, source: Site | CsmsStore) -> None:
        self._source = source

    async def db(self) -> SqliteWorker:
        store = self._source if isinstance(self._source, CsmsStore) else self._source.store
        if store is None:
            raise CsmsNotRunning("the CSMS is not running")
        return store.db

    def connected(self) -> set[str] | None:
        if isinstance(self._source, CsmsStore):
            return None  # no live server to ask
        return set(self._source.connected_ids())


class SiteReports:
    """Read-only views of the site; `source` is the running SiteCsms, or an open CsmsStore
    for a CLI that reads csms.db beside the daemon (online state is then unknown)."""

    def __init__(
        self, source: Site | CsmsStore, clock: Clock, *, health_window: timedelta = HEALTH_WINDOW
    ) -> None:
        self._source = _Source(source)
        self._clock = clock
        self._window = health_window

    async def _queries(self) -> SiteQueries:
        return SiteQueries(await self._source.db())

    def _health_window(self) -> tuple[datetime, datetime]:
        now = self._clock.utc_now()
        return now - self._window, now

    async def chargers(self, *, with_health: bool = True) -> list[ChargerView]:
        """Every registered charger: online, last seen, connectors and (optionally) health."""
        queries = await self._queries()
        return await queries.chargers(
            self._source.connected(),
            health_window=self._health_window() if with_health else None,
        )

    async def charger(self, charge_point_id: str) -> ChargerView | None:
        """One charger's view, or None if it is not registered."""
        found = [view for view in await self.chargers() if view.id == charge_point_id]
        return found[0] if found else None

    async def connectors(self, charge_point_id: str | None = None) -> list[ConnectorView]:
        """Connectors with state and error code, of one charger or of all."""
        return await (await self._queries()).connectors(charge_point_id)

    async def transactions(
        self,
        charge_point_id: str | None = None,
        *,
        live: bool | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[TransactionView]:
        """Live (`live=True`), past (`False`) or all transactions with energy, newest first."""
        return await (await self._queries()).transactions(
            charge_point_id, live=live, since=since, limit=limit
        )

    async def transaction(self, transaction_id: int) -> TransactionView | None:
        """One transaction with its energy, or None."""
        return await (await self._queries()).transaction(transaction_id)

    async def meter_values(self, transaction_id: int) -> list[MeterValueRecord]:
        """Every sample of a transaction, in time order."""
        return await (await self._queries()).meter_values(transaction_id)

    async def health(self, charge_point_id: str) -> Health:
        """One charger's health over the window ending now (see edgepoint.csms.health)."""
        return await (await self._queries()).health(charge_point_id, *self._health_window())


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long csms.db keeps each kind of row, in days (None: forever)."""

    meter_values_days: int | None = 90
    transactions_days: int | None = 730
    # Health looks back 24 h, and the newest change before a cutoff is always kept.
    status_history_days: int | None = 14

    def __post_init__(self) -> None:
        for name in ("meter_values_days", "transactions_days", "status_history_days"):
            days = getattr(self, name)
            if days is not None and days < 1:
                raise ValueError(f"{name} must be at least 1 (or None to keep forever)")


class Retention:
    """Deletes old meter values, closed transactions and status history in small writes.

    Each write covers a window of `window` primary keys (at most `batch` samples of
    closed transactions), so it holds the database thread briefly; between writes it
    yields (`pause_s`), letting the chargers' writes through. Samples of open
    transactions are kept however old; a closed transaction goes with all its samples.
    """

    def __init__(
        self,
        source: Site | CsmsStore,
        clock: Clock,
        policy: RetentionPolicy,
        *,
        window: int = 2000,
        batch: int = 1000,
        pause_s: float = 0.0,
        interval_s: float = 24 * 3600,
    ) -> None:
        if window < 1 or batch < 1:
            raise ValueError("retention window and batch must be positive")
        self._source = _Source(source)
        self._clock = clock
        self._policy = policy
        self._window = window
        self._batch = batch
        self._pause = pause_s
        self._interval = interval_s

    async def run(self) -> None:
        """A pass now and then every `interval_s` until cancelled (a supervised service)."""
        while True:
            try:
                report = await self.run_once()
            except CsmsNotRunning:
                pass  # the CSMS restarts: try again next time
            else:
                log.info(
                    "retention: %d samples, %d transactions, %d status changes deleted",
                    report.meter_values,
                    report.transactions,
                    report.status_changes,
                )
            await asyncio.sleep(self._interval)

    async def run_once(self) -> RetentionReport:
        """One pass over every table; return what it deleted."""
        db = await self._source.db()
        repo = RetentionRepository(db)
        now = self._clock.utc_now()
        policy = self._policy
        samples = transactions = changes = batches = 0

        if policy.transactions_days is not None:
            before = now - timedelta(days=policy.transactions_days)
            span = await repo.id_range("transactions", "transaction_id")
            first = span[0] if span else 0
            while span is not None and first <= span[1]:
                gone, extra = await repo.delete_transactions(
                    first, self._window, before, self._batch
                )
                transactions += gone
                samples += extra
                batches += 1
                if extra < self._batch:  # this window's samples are all gone: move on
                    first += self._window
                await asyncio.sleep(self._pause)

        if policy.meter_values_days is not None:
            before = now - timedelta(days=policy.meter_values_days)
            span = await repo.id_range("meter_values", "id")
            first = span[0] if span else 0
            while span is not None and first <= span[1]:
                samples += await repo.delete_meter_values(first, self._window, before)
                batches += 1
                first += self._window
                await asyncio.sleep(self._pause)

        if policy.status_history_days is not None:
            before = now - timedelta(days=policy.status_history_days)
            span = await repo.id_range("connector_status_log", "id")
            first = span[0] if span else 0
            while span is not None and first <= span[1]:
                changes += await repo.delete_status_changes(first, self._window, before)
                batches += 1
                first += self._window
                await asyncio.sleep(self._pause)

        tombstones = 0
        lists = LocalListRepository(db)
        while True:
            pruned = await lists.prune(self._batch)
            tombstones += pruned
            batches += 1
            if pruned < self._batch:
                break
            await asyncio.sleep(self._pause)
        return RetentionReport(samples, transactions, changes, tombstones, batches)


def jsonable(value: Any) -> Any:
    """A report value as JSON-ready data: dataclasses to dicts, times to ISO-8601 UTC."""
    if isinstance(value, TransactionView):
        return {**_fields(value), "live": value.live}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return value


def _fields(value: Any) -> dict[str, Any]:
    return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
