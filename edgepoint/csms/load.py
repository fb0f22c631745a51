"""Load management: a site power limit shared by the running transactions, sent as TxProfiles.

The rule (`share_power`, pure):

- Every open transaction on the site counts, online charger or not (an offline charger
  may still be drawing power under the last limit it got).
- Limits are total active power in W on the charger's supply, all phases together:
  profiles say chargingRateUnit W and no numberPhases, so each charger converts with its
  own voltage and phase count; chargers that take only A answer Rejected/NotSupported,
  which is recorded, and they keep charging unlimited.
- With n transactions and limit L, k = min(n, floor(L / minimum)) of them can have at
  least the minimum per connector. The k that started first (then lowest transaction id)
  each get floor(L / k) W; the others are paused with a 0 W limit until a share frees
  up. With the site limit off (None) nobody is limited and our profiles are cleared.

`LoadBalancer` (a supervised service) applies the rule whenever the set of open
transactions changes: it reads them from csms.db every `poll_interval_s` (or at once
after `poke()`), and sends SetChargingProfile (TxProfile of the running transaction,
Relative, one period from 0 s) to each connector whose share changed. Reductions go out
before increases, so the site stays under its limit while shares move; a new transaction
(unlimited until it gets a profile) counts as a reduction. An offline charger gets its
limit when it reconnects; a refusal or failure is recorded in load_limits and retried
after `retry_after_s`, on reconnect or when the share changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from edgepoint.clock import Clock
from edgepoint.csms.operator import ChargerOffline, Payload, Site, SiteOperator
from edgepoint.csms.site_db import LoadLimitRepository
from edgepoint.csms.site_records import LimitState, LoadLimit
from edgepoint.errors import StorageError
from edgepoint.logthrottle import ThrottledLog
from edgepoint.ocppj.errors import CallErrorReceived, InvalidMessage, InvalidReply
from edgepoint.storage.worker import SqliteWorker

log = logging.getLogger(__name__)

# IEC 61851's lowest charging current, 6 A, on one phase at 230 V: below this an EV
# cannot charge at all, so a smaller share would only waste power.
DEFAULT_MIN_PER_CONNECTOR_W = 1380


@dataclass(frozen=True, slots=True)
class Demand:
    """One running transaction asking for a share of the site's power."""

    transaction_id: int
    started_at: datetime


def share_power(
    site_limit_w: int | None, demands: Sequence[Demand], min_per_connector_w: int
) -> dict[int, int | None]:
    """Each transaction's limit in W (None: unlimited), by transaction id (see the module)."""
    if site_limit_w is None:
        return {demand.transaction_id: None for demand in demands}
    if site_limit_w < 0 or min_per_connector_w < 0:
        raise ValueError("power limits cannot be negative")
    ranked = sorted(demands, key=lambda d: (d.started_at, d.transaction_id))
    served = len(ranked)
    if min_per_connector_w > 0:
        served = min(served, site_limit_w // min_per_connector_w)
    share = site_limit_w // served if served else 0
    return {
        demand.transaction_id: share if rank < served else 0 for rank, demand in enumerate(ranked)
    }


def tx_profile(transaction_id: int, limit_w: int, stack_level: int) -> Payload:
    """The csChargingProfiles of a transaction's limit (profile id = transaction id)."""
    return {
        "chargingProfileId": transaction_id,
        "transactionId": transaction_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": "TxProfile",
        # Relative to the transaction's start: independent of the charger's clock.
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_w}],
        },
    }


def _reduces(limit: LoadLimit) -> bool:
    """Tell whether applying `limit_w` lowers what the connector may draw (None = unlimited)."""
    if limit.limit_w is None:
        return False
    return limit.applied_w is None or limit.limit_w < limit.applied_w


class LoadBalancer:
    """Keeps every running transaction's TxProfile at its share of the site limit."""

    def __init__(
        self,
        csms: Site,
        clock: Clock,
        *,
        site_limit_w: int | None,
        min_per_connector_w: int = DEFAULT_MIN_PER_CONNECTOR_W,
        poll_interval_s: float = 2.0,
        retry_after_s: float = 60.0,
        call_timeout_s: float = 30.0,
        stack_level: int = 0,
    ) -> None:
        _check_limit(site_limit_w)
        if min_per_connector_w < 0:
            raise ValueError("min_per_connector_w cannot be negative")
        self._csms = csms
        self._clock = clock
        self._operator = SiteOperator(csms, clock, default_timeout_s=call_timeout_s)
        self._site_limit = site_limit_w
        self._minimum = min_per_connector_w
        self._poll = poll_interval_s
        self._retry_after = retry_after_s
        self._stack_level = stack_level
        self._wake = asyncio.Event()
        self._limits: dict[int, LoadLimit] = {}
        self._retry_at: dict[int, float] = {}
        self._in_flight: set[int] = set()
        self._connected: set[str] = set()
        self._db: SqliteWorker | None = None
        self.rounds = 0  # completed passes, for tests and status pages
        self._throttled = ThrottledLog(log)

    @property
    def site_limit_w(self) -> int | None:
        return self._site_limit

    def set_site_limit(self, limit_w: int | None) -> None:
        """Change the site limit (None: off, our profiles are cleared); applied at once."""
        _check_limit(limit_w)
        self._site_limit = limit_w
        self._retry_at.clear()
        self.poke()

    def poke(self) -> None:
        """Re-balance now (e.g. right after a StartTransaction or StopTransaction)."""
        self._wake.set()

    def limits(self) -> list[LoadLimit]:
        """The limit of every running transaction and where it stands, by transaction id."""
        return [self._limits[tx] for tx in sorted(self._limits)]

    async def run(self) -> None:
        """Balance until cancelled (a supervised service)."""
        async with asyncio.TaskGroup() as sends:
            while True:
                try:
                    repo = await self._repository()
                    if repo is not None:
                        await self._balance(repo, sends)
                        self.rounds += 1
                except StorageError as err:
                    # csms.db closed under us (the CSMS restarts) or failed: next pass.
                    self._throttled.log(logging.WARNING, "storage", "load management: %s", err)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._wake.wait()
                self._wake.clear()

    async def _repository(self) -> LoadLimitRepository | None:
        """The repository over the CSMS's open database; state reloads if the CSMS restarted."""
        store = self._csms.store
        if store is None:
            return None
        if store.db is not self._db:
            repo = LoadLimitRepository(store.db)
            self._limits = {limit.transaction_id: limit for limit in await repo.list()}
            self._retry_at.clear()
            self._db = store.db
        return LoadLimitRepository(store.db)

    async def _balance(self, repo: LoadLimitRepository, sends: asyncio.TaskGroup) -> None:
        running = await repo.open_transactions()
        shares = share_power(
            self._site_limit,
            [Demand(tx.transaction_id, tx.started_at) for tx in running],
            self._minimum,
        )
        connected: set[str] = set(self._csms.connected_ids())
        for tx_id, limit in self._limits.items():
            if limit.charge_point_id in connected - self._connected:
                self._retry_at.pop(tx_id, None)  # a reconnect is a fresh chance
        self._connected = connected

        ended = [tx_id for tx_id in self._limits if tx_id not in shares]
        if ended:
            await repo.remove(ended)
            for tx_id in ended:
                del self._limits[tx_id]
                self._retry_at.pop(tx_id, None)

        now = self._clock.utc_now()
        for tx in running:
            share = shares[tx.transaction_id]
            known = self._limits.get(tx.transaction_id)
            if known is None:
                known = LoadLimit(
                    transaction_id=tx.transaction_id,
                    charge_point_id=tx.charge_point_id,
                    connector_id=tx.connector_id,
                    limit_w=share,
                    applied_w=None,
                    state=LimitState.PENDING if share is not None else LimitState.ACCEPTED,
                    detail=None,
                    updated_at=now,
                )
            elif known.limit_w != share:
                known = dataclasses.replace(
                    known, limit_w=share, state=LimitState.PENDING, detail=None, updated_at=now
                )
                self._retry_at.pop(tx.transaction_id, None)
            else:
                continue
            self._limits[tx.transaction_id] = known
            await repo.save(known)

        await self._dispatch(repo, sends, connected, now)

    async def _dispatch(
        self,
        repo: LoadLimitRepository,
        sends: asyncio.TaskGroup,
        connected: set[str],
        now: datetime,
    ) -> None:
        due: list[LoadLimit] = []
        moment = self._clock.monotonic()
        for tx, limit in self._limits.items():
            if limit.limit_w == limit.applied_w or tx in self._in_flight:
                continue
            if limit.charge_point_id not in connected:
                if limit.state is not LimitState.OFFLINE:
                    limit = dataclasses.replace(limit, state=LimitState.OFFLINE, updated_at=now)
                    self._limits[tx] = limit
                    await repo.save(limit)
                continue
            if moment < self._retry_at.get(tx, moment):
                continue
            due.append(limit)
        reductions = [limit for limit in due if _reduces(limit)]
        for limit in reductions:
            self._start(repo, sends, limit)
        # Raise nobody while a reduction is still on its way: the site limit holds meanwhile.
        if any(_reduces(self._limits[tx]) for tx in self._in_flight if tx in self._limits):
            return
        for limit in due:
            if not _reduces(limit):
                self._start(repo, sends, limit)

    def _start(self, repo: LoadLimitRepository, sends: asyncio.TaskGroup, limit: LoadLimit) -> None:
        self._in_flight.add(limit.transaction_id)
        sends.create_task(self._apply(repo, limit), name=f"load limit {limit.transaction_id}")

    async def _apply(self, repo: LoadLimitRepository, sent: LoadLimit) -> None:
        """Send one limit and record the outcome (never raises for a charger's failure)."""
        tx = sent.transaction_id
        retry = True
        try:
            if sent.limit_w is None:
                reply = await self._operator.clear_charging_profile(
                    sent.charge_point_id, profile_id=tx
                )
                # Unknown: the charger has no such profile any more, which is what we want.
                accepted = reply["status"] in ("Accepted", "Unknown")
                action = "ClearChargingProfile"
            else:
                reply = await self._operator.set_charging_profile(
                    sent.charge_point_id,
                    sent.connector_id,
                    tx_profile(tx, sent.limit_w, self._stack_level),
                )
                accepted = reply["status"] == "Accepted"
                action = "SetChargingProfile"
            state = LimitState.ACCEPTED if accepted else LimitState.REFUSED
            detail = None if accepted else f"{action}: {reply['status']}"
        except ChargerOffline:
            state, detail, retry = LimitState.OFFLINE, "connection lost", False
        except CallErrorReceived as err:
            state, detail = LimitState.FAILED, f"CallError {err.code}: {err.description}"
        except TimeoutError:
            state, detail = LimitState.FAILED, "no reply in time"
        except (InvalidReply, InvalidMessage) as err:
            state, detail = LimitState.FAILED, str(err)
        finally:
            self._in_flight.discard(tx)
        current = self._limits.get(tx)
        if current is None:
            return  # the transaction ended meanwhile
        applied = sent.limit_w if state is LimitState.ACCEPTED else current.applied_w
        if current.limit_w != sent.limit_w:
            state, detail = LimitState.PENDING, None  # the share moved meanwhile: next pass
        updated = dataclasses.replace(
            current,
            applied_w=applied,
            state=state,
            detail=detail,
            updated_at=self._clock.utc_now(),
        )
        self._limits[tx] = updated
        try:
            await repo.save(updated)
        except StorageError as err:
            self._throttled.log(logging.WARNING, "storage", "load management: %s", err)
        if state in (LimitState.REFUSED, LimitState.FAILED):
            log.warning(
                "%s: load limit of transaction %d not applied: %s",
                sent.charge_point_id,
                tx,
                detail,
            )
            if retry:
                self._retry_at[tx] = self._clock.monotonic() + self._retry_after
        if retry:
            # What waited behind this one (an increase) may go now; an offline charger
            # waits for its reconnect, not for a busy loop.
            self.poke()


def _check_limit(limit_w: int | None) -> None:
    if limit_w is not None and limit_w < 0:
        raise ValueError("the site limit cannot be negative")
