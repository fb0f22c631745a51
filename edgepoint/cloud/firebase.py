"""Publish the charger's live state to `/chargers/<station key>`: latest only, coalesced.

Only the newest state matters, so there is one slot, never a queue: every change
notification marks it dirty, and the publisher reads the station's status when it is
ready to write. A change of state (a connector's status, a session starting or
ending, faults, the CSMS link, the clock) is written at once; anything else (power,
energy, duration, outbox depth) at most every `publish_interval_s`; an unchanged
document every REFRESH_S, so `last_updated` shows the station is alive. While Firebase
is unreachable changes only overwrite the slot; the first write that succeeds carries
the newest state, once.

It also publishes the ledger's public key at `/stations/<station key>/pubkey`, once per
run, before anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.clock import Clock, iso_utc
from edgepoint.cloud.errors import CloudError, CloudFault
from edgepoint.cloud.health import FAULT_RETRY_S, Health
from edgepoint.cloud.rtdb import Rtdb
from edgepoint.cloud.state import ChargerDocument, ChargerView, SessionFacts
from edgepoint.logthrottle import ThrottledLog

log = logging.getLogger(__name__)

# An unchanged document is written again this often (a heartbeat for the fleet page).
REFRESH_S = 300.0
# The status is read at most this often, however fast telemetry notifies: state
# changes are still published within this long.
MIN_EVALUATION_S = 0.2

StatusSource = Callable[[], Awaitable[dict[str, Any]]]
Watch = Callable[[Callable[[], None]], Callable[[], None]]
FactsSource = Callable[[str], Awaitable[SessionFacts | None]]


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """What `status` shows about the state publisher."""

    notifications: int  # changes the station signalled (every telemetry sample is one)
    evaluations: int  # times the status was read and a document made
    writes: int  # documents written: the rest were coalesced
    last_published_at: str | None
    pubkey_published: bool


class StatePublisher:
    """The supervised service that keeps `/chargers/<key>` up to date."""

    def __init__(
        self,
        rtdb: Rtdb,
        station_key: str,
        status: StatusSource,
        watch: Watch,
        facts: FactsSource,
        view: ChargerView,
        clock: Clock,
        health: Health,
        min_interval_s: float,
        pubkey: str | None = None,
    ) -> None:
        self._rtdb = rtdb
        self._path = f"chargers/{station_key}"
        self._pubkey_path = f"stations/{station_key}/pubkey"
        self._status = status
        self._watch = watch
        self._facts_source = facts
        self._view = view
        self._clock = clock
        self.health = health
        self._min_interval = min_interval_s
        self._pubkey = pubkey
        self._pubkey_retry_at = -math.inf
        # A refused key (the rules keep the first one) must not stop the state: apart.
        self.pubkey_fault: str | None = None
        self._changed = asyncio.Event()
        self._facts: dict[str, SessionFacts] = {}
        self._sent: ChargerDocument | None = None
        self._sent_at = -math.inf
        self._retry_at = -math.inf
        self._evaluated_at = -math.inf
        self._unsent: ChargerDocument | None = None
        self._notifications = self._evaluations = self._writes = 0
        self._last_published_at: str | None = None
        self._throttled = ThrottledLog(log)

    def stats(self) -> PublisherStats:
        return PublisherStats(
            self._notifications,
            self._evaluations,
            self._writes,
            self._last_published_at,
            self._pubkey is None,
        )

    async def run(self) -> None:
        unwatch = self._watch(self._notified)
        self._changed.set()
        try:
            while True:
                await self._wait()
                await self._step()
        finally:
            unwatch()

    def _notified(self) -> None:
        self._notifications += 1
        self._changed.set()

    async def _wait(self) -> None:
        """Until something changed or a deadline (retry, interval, FINISHED hold) is due."""
        now = self._clock.monotonic()
        deadlines = [self._sent_at + REFRESH_S]
        if self._unsent is not None:
            deadlines.append(max(self._sent_at + self._min_interval, self._retry_at))
        hold = self._view.next_change_at()
        if hold is not None:
            deadlines.append(hold)
        timeout = max(0.0, min(deadlines) - now)
        if self._changed.is_set() or timeout == 0.0:
            pass
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        # Rate-limit reading the status, not what it shows.
        pause = self._evaluated_at + MIN_EVALUATION_S - self._clock.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        retry = self._retry_at - self._clock.monotonic()
        if retry > 0:
            # Failing: let changes pile into the one slot until the back-off is over.
            await asyncio.sleep(retry)

    async def _step(self) -> None:
        self._changed.clear()
        self._evaluated_at = mono = self._clock.monotonic()
        document = await self._document(mono)
        self._evaluations += 1
        changed = self._sent is None or document.content != self._sent.content
        significant = self._sent is None or document.significant != self._sent.significant
        due = (
            significant
            or (changed and mono - self._sent_at >= self._min_interval)
            or mono - self._sent_at >= REFRESH_S
            or (self._pubkey is not None and mono >= self._pubkey_retry_at)
        )
        if not due:
            self._unsent = document if changed else None
            return
        try:
            await self._publish_pubkey(mono)
            await self._rtdb.update(self._path, document.fields)
        except CloudError as err:
            delay = self.health.failed(err)
            self._retry_at = self._clock.monotonic() + delay
            self._unsent = document
            self._throttled.log(logging.WARNING, "publish", "cloud state not published: %s", err)
            return
        self._retry_at = -math.inf
        self._sent, self._sent_at, self._unsent = document, mono, None
        self._writes += 1
        self._last_published_at = iso_utc(self._clock.utc_now())
        self.health.ok()

    async def _publish_pubkey(self, mono: float) -> None:
        if self._pubkey is None or mono < self._pubkey_retry_at:
            return
        try:
            await self._rtdb.set(self._pubkey_path, self._pubkey)
        except CloudFault as err:
            self.pubkey_fault = f"public key not published: {err}"
            self._pubkey_retry_at = mono + FAULT_RETRY_S
            return
        self._pubkey, self.pubkey_fault = None, None

    async def _document(self, mono: float) -> ChargerDocument:
        status = await self._status()
        current: set[str] = set()
        for c in status.get("connectors") or []:
            sid = (c.get("session") or {}).get("session_id")
            if sid:
                current.add(sid)
                if sid not in self._facts:
                    await self._read_facts(sid)
        # A session that left the status has ended: read its final energy and stop time.
        for sid, fact in list(self._facts.items()):
            if fact.stopped_at is None and sid not in current:
                await self._read_facts(sid)
        if len(self._facts) > 64:
            for sid in [s for s, f in self._facts.items() if f.stopped_at is not None][:32]:
                del self._facts[sid]
        now: datetime = self._clock.utc_now()
        return self._view.document(status, self._facts, now, mono)

    async def _read_facts(self, session_id: str) -> None:
        fact = await self._facts_source(session_id)
        if fact is not None:
            self._facts[session_id] = fact
