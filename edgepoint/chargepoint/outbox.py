"""Deliver the outbox to the CSMS strictly in order, deleting an entry only once confirmed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from edgepoint.backoff import exponential
from edgepoint.charging.events import SessionId
from edgepoint.clock import Clock
from edgepoint.storage.chargepoint import ChargePointStore, OutboxEntry

log = logging.getLogger(__name__)

# A CallError means the CSMS understood and refused the message; retrying the same bytes
# rarely helps, but an InternalError can be transient, so give it a few tries.
MAX_REFUSALS = 3
NEEDS_TRANSACTION = ("MeterValues", "StopTransaction")


class Peer(Protocol):
    """The part of ocpp's ChargePoint the sender uses."""

    async def call(self, payload: Any, suppress: bool = ...) -> Any: ...


TransactionStarted = Callable[[SessionId, int, str], None]


class OutboxSender:
    """Pumps the outbox over one live connection; a new connection gets a new sender."""

    def __init__(
        self,
        store: ChargePointStore,
        clock: Clock,
        wake: asyncio.Event,
        on_started: TransactionStarted,
        backoff: Callable[[int], float] = exponential,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake
        self._on_started = on_started
        self._backoff = backoff

    async def run(self, peer: Peer) -> None:
        """Send until cancelled (the connection dropped); timeouts retry the same entry."""
        failures = 0
        while True:
            entry = await self._store.outbox_head()
            if entry is None:
                self._wake.clear()
                # Re-check after clearing: an entry committed in between must not wait.
                if await self._store.outbox_head() is None:
                    await self._wake.wait()
                continue
            try:
                await self._deliver(peer, entry)
                failures = 0
            except TimeoutError:
                # The CSMS did not answer: the message may or may not have arrived.
                # Resending is safe because the CSMS de-duplicates; keep the order.
                await self._store.failed_attempt(entry, "no answer (timeout)")
                await asyncio.sleep(self._backoff(failures))
                failures += 1

    async def _deliver(self, peer: Peer, entry: OutboxEntry) -> None:
        kwargs = dict(entry.payload)
        if entry.action in NEEDS_TRANSACTION:
            assert entry.session_id is not None
            transaction_id = await self._store.transaction_id(entry.session_id)
            if transaction_id is None:
                await self._store.give_up(
                    entry,
                    "its session has no transaction id (StartTransaction was refused)",
                    self._clock.utc_now(),
                )
                return
            kwargs["transaction_id"] = transaction_id
        request = getattr(call, entry.action)(**kwargs)
        try:
            result = await peer.call(request, suppress=False)
        except OCPPError as err:
            reason = f"CallError {type(err).__name__}: {err.description}"
            if entry.attempts + 1 >= MAX_REFUSALS:
                log.error("giving up on outbox #%d %s: %s", entry.seq, entry.action, reason)
                await self._store.give_up(entry, reason, self._clock.utc_now())
            else:
                await self._store.failed_attempt(entry, reason)
                await asyncio.sleep(self._backoff(entry.attempts))
            return
        if entry.action == "StartTransaction":
            assert entry.session_id is not None
            status = str(result.id_tag_info.get("status", "Invalid"))
            await self._store.delivered(entry, int(result.transaction_id), status)
            self._on_started(entry.session_id, int(result.transaction_id), status)
        else:
            await self._store.delivered(entry)
        log.debug("delivered outbox #%d %s", entry.seq, entry.action)
