"""The ledger recorder: captured session events become chained, signed entries.

The database triggers (storage/cloud_schema.py) capture each session start and stop in
the kiosk's own commit. This service turns them, in commit order, into entries
(cloud/entries.py) and stores each entry, the connector's new meter high-water mark and
the removal of its event in one transaction, so each event becomes exactly one entry
(or one refusal) across crashes.

Time: nothing is signed while the clock is not synchronised (`clock.is_synced`). Events
wait; the recorder notes when it first saw each one on the monotonic clock, so that
once the clock is set an event it saw carries that trusted time minus the monotonic
time since (`time_basis: monotonic`). An event from before a restart that happened
while the clock was unset gets the signing time (`time_basis: signed`).

Meter readings that go backwards are refused into `ledger_refused` with the reason and
reported as a fault in `status` (`cloud.faults`): the ledger never holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from edgepoint.clock import EARLIEST_PLAUSIBLE, Clock, is_synced, iso_utc
from edgepoint.cloud.entries import Stamp, entry_body, meter_problem, seal
from edgepoint.cloud.signing import LedgerKey
from edgepoint.storage.ledger import Context, LedgerEvent, LedgerStore, NewEntry

log = logging.getLogger(__name__)

POLL_S = 0.5
# Events signed per transaction: bounds how long one append holds the database (a tap
# waiting to commit its session waits behind at most this many signatures and one fsync).
BATCH = 20
# While the clock is unset, how many waiting events get their first-seen time noted.
OBSERVE = 10_000


class LedgerRecorder:
    """The supervised service that appends entries as sessions start and stop."""

    def __init__(
        self,
        store: LedgerStore,
        key: LedgerKey,
        station_id: str,
        clock: Clock,
        on_appended: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._key = key
        self._station = station_id
        self._clock = clock
        self._on_appended = on_appended
        self._seen: dict[int, float] = {}
        self.waiting_for_clock = False
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self.record_pending()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self.wake.wait()
            self.wake.clear()

    async def record_pending(self) -> int:
        """Sign and store what is waiting (if the clock allows); return entries appended."""
        total = 0
        while True:
            if not is_synced(self._clock):
                mono = self._clock.monotonic()
                for event in await self._store.pending_events(OBSERVE):
                    self._seen.setdefault(event.event_seq, mono)
                self.waiting_for_clock = bool(self._seen)
                return total
            self.waiting_for_clock = False
            events = await self._store.pending_events(BATCH)
            if not events:
                return total
            now, mono = self._clock.utc_now(), self._clock.monotonic()
            decide = functools.partial(self._decide, now=now, mono=mono)
            result = await self._store.append(events, decide, iso_utc(now))
            for event in events:
                self._seen.pop(event.event_seq, None)
            if result.refused:
                log.error("%d billing event(s) refused into the ledger", result.refused)
            total += result.appended
            if result.appended:
                self._on_appended()
            if len(events) < BATCH:
                return total

    def _decide(
        self, event: LedgerEvent, ctx: Context, *, now: datetime, mono: float
    ) -> NewEntry | str:
        if event.event not in ("start", "stop"):
            return f"unknown event {event.event!r}"
        problem = meter_problem(event, ctx.high_water_wh)
        if problem is not None:
            return problem
        body = entry_body(
            event,
            station=self._station,
            seq=ctx.head.seq + 1,
            prev_hash=ctx.head.hash,
            stamp=self._stamp(event, now, mono),
            transaction_id=ctx.transaction_id,
        )
        return seal(body, self._key)

    def _stamp(self, event: LedgerEvent, now: datetime, mono: float) -> Stamp:
        recorded = event.recorded_at or ""
        try:
            moment = datetime.fromisoformat(recorded)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and moment >= EARLIEST_PLAUSIBLE:
            return Stamp(iso_utc(moment), "recorded", recorded)
        seen = self._seen.get(event.event_seq)
        if seen is not None:
            return Stamp(iso_utc(now - timedelta(seconds=mono - seen)), "monotonic", recorded)
        return Stamp(iso_utc(now), "signed", recorded)
