"""Deliver the outbox to the CSMS strictly in order, deleting an entry only once confirmed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError, UnknownCallErrorCodeError
from ocpp.messages import Call, validate_payload
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
# What `call(suppress=False)` raises when the CSMS answers with a CallError; the library
# raises UnknownCallErrorCodeError (not an OCPPError) for a code OCPP does not define.
REFUSED = (OCPPError, UnknownCallErrorCodeError)
MAX_REASON = 2000


def describe(err: Exception) -> str:
    """One line for logs and dead letters: the error code, its description and its cause."""
    if not isinstance(err, OCPPError):
        return f"{type(err).__name__}: {err}"[:MAX_REASON]
    text = f"{err.code}: {err.description}"
    cause = err.details.get("cause") if isinstance(err.details, dict) else None
    if cause:
        text += f" ({cause})"
    return text[:MAX_REASON]


async def invalid_request(request: Any) -> str | None:
    """Why `request` fails the OCPP 1.6 schema, or None; a stored message never gets valid."""
    message = Call(
        unique_id="0",
        action=type(request).__name__,
        payload=remove_nones(snake_to_camel_case(serialize_as_dict(request))),
    )
    try:
        await validate_payload(message, "1.6")
    except OCPPError as err:
        return describe(err)
    return None


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
            transaction_id = (
                None
                if entry.session_id is None
                else await self._store.transaction_id(entry.session_id)
            )
            if transaction_id is None:
                # FIFO: the session's StartTransaction went before this, so it is in
                # the dead letters; without its id the CSMS cannot place this message.
                reason = (
                    f"its session {entry.session_id} has no transaction id: the"
                    " StartTransaction was not accepted (see the dead letters)"
                )
                log.error("giving up on outbox #%d %s: %s", entry.seq, entry.action, reason)
                await self._store.give_up(entry, reason, self._clock.utc_now())
                return
            kwargs["transaction_id"] = transaction_id
        # What we stored must become a request we would send; if it cannot (a payload
        # from another version, a typo'd action), retrying is pointless and crashing the
        # link would stop every later message: it is a dead letter at once.
        try:
            request = getattr(call, entry.action)(**kwargs)
        except (AttributeError, TypeError) as err:
            reason = f"cannot build {entry.action} from the stored payload: {err}"
            log.error("giving up on outbox #%d: %s", entry.seq, reason)
            await self._store.give_up(entry, reason, self._clock.utc_now())
            return
        invalid = await invalid_request(request)
        if invalid is not None:
            reason = f"not a valid OCPP 1.6 {entry.action}, never sent: {invalid}"
            log.error("giving up on outbox #%d: %s", entry.seq, reason)
            await self._store.give_up(entry, reason, self._clock.utc_now())
            return
        try:
            result = await peer.call(request, suppress=False)
        except REFUSED as err:
            reason = f"CallError {describe(err)}"
            # Only refusals count towards giving up: timeouts say nothing about the message.
            if entry.refusals + 1 >= MAX_REFUSALS:
                log.error("giving up on outbox #%d %s: %s", entry.seq, entry.action, reason)
                await self._store.give_up(entry, reason, self._clock.utc_now())
            else:
                await self._store.failed_attempt(entry, reason, refused=True)
                await asyncio.sleep(self._backoff(entry.refusals))
            return
        if entry.action == "StartTransaction":
            assert entry.session_id is not None
            status = str(result.id_tag_info.get("status", "Invalid"))
            await self._store.delivered(entry, int(result.transaction_id), status)
            self._on_started(entry.session_id, int(result.transaction_id), status)
        else:
            await self._store.delivered(entry)
        log.debug("delivered outbox #%d %s", entry.seq, entry.action)
