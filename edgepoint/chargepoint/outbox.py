"""Deliver the outbox to the CSMS in order, as stored, deleting a row only once confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edgepoint import journal
from edgepoint.chargepoint.delivery import (
    PARKED_RETRY_S,
    Failure,
    GiveUp,
    Park,
    Retry,
    RetryPolicy,
    after_failure,
)
from edgepoint.charging.events import SessionId
from edgepoint.clock import Clock
from edgepoint.ocppj.errors import (
    CallErrorReceived,
    ConnectionLost,
    InvalidMessage,
    InvalidReply,
)
from edgepoint.storage.chargepoint import (
    TRANSACTION_ACTIONS,
    ChargePointStore,
    OutboxEntry,
    UnreadableRow,
)

log = logging.getLogger(__name__)

# Rows read per query while draining a backlog.
READ_AHEAD = 64
# Messages of optional profiles and of the security extension: a CSMS that does not
# implement one says so (NotSupported, NotImplemented), and no retry will change that,
# so they go to the dead letters at once instead of holding up the queue behind them.
OPTIONAL_ACTIONS = frozenset(
    {
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignedFirmwareStatusNotification",
    }
)


class OnlineLink(Protocol):
    """What the sender needs of the CSMS link."""

    async def wait_online(self) -> None: ...

    async def call(
        self, action: str, payload: dict[str, Any], *, unique_id: str | None = None
    ) -> dict[str, Any]: ...


StartConfirmed = Callable[[SessionId, int, dict[str, Any]], None]
StopConfirmed = Callable[[SessionId, dict[str, Any] | None], None]


@dataclass(frozen=True, slots=True)
class SenderSnapshot:
    """The sender as `status` shows it."""

    delivered: int
    retries: int
    alarms: tuple[str, ...]
    # Reply received -> row deleted: the only window in which a crash causes a resend.
    commit_window_ms_p50: float | None
    commit_window_ms_max: float | None


class OutboxSender:
    """Pumps the outbox whenever the link is online; a supervised service of its own."""

    def __init__(
        self,
        store: ChargePointStore,
        link: OnlineLink,
        clock: Clock,
        retry_policy: Callable[[], RetryPolicy],
        on_start_confirmed: StartConfirmed,
        on_stop_confirmed: StopConfirmed,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._link = link
        self._clock = clock
        self._retry_policy = retry_policy
        self._on_start = on_start_confirmed
        self._on_stop = on_stop_confirmed
        self._sleep = sleep
        self.wake = asyncio.Event()
        self._timeouts: dict[int, int] = {}
        self._alarms: dict[int, str] = {}
        self._windows: deque[float] = deque(maxlen=1000)
        self._delivered = 0
        self._retries = 0
        self._unparked_at = -PARKED_RETRY_S
        self._ahead: deque[OutboxEntry | UnreadableRow] = deque()
        self._transaction_ids: dict[SessionId, int] = {}

    def snapshot(self) -> SenderSnapshot:
        windows = sorted(self._windows)
        return SenderSnapshot(
            self._delivered,
            self._retries,
            tuple(self._alarms.values()),
            round(windows[len(windows) // 2] * 1000, 3) if windows else None,
            round(windows[-1] * 1000, 3) if windows else None,
        )

    def commit_windows_s(self) -> list[float]:
        return list(self._windows)

    def reconnected(self) -> None:
        """A new connection: give parked messages another round at once."""
        self._unparked_at = -PARKED_RETRY_S
        self.wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; waits while the link is down or the queue is empty."""
        while True:
            await self._link.wait_online()
            await self._unpark_when_due()
            if not self._ahead:
                # Read ahead: a backlog drains at the CSMS's pace, not one query per row.
                self._ahead.extend(await self._store.outbox_batch(READ_AHEAD))
            if not self._ahead:
                self.wake.clear()
                # Re-check after clearing: a row committed, or a reconnect that made the
                # parked rows due, in between must not wait.
                due = self._clock.monotonic() - self._unparked_at >= PARKED_RETRY_S
                if not due and await self._store.outbox_next() is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), PARKED_RETRY_S)
                continue
            item = self._ahead.popleft()
            if isinstance(item, UnreadableRow):
                self._ahead.clear()
                await self._quarantine(item.seq, item.reason)
                continue
            sid = item.session_id
            tx = self._transaction_ids.get(sid) if sid is not None else None
            # What delivering it logs carries its session and transaction (journal fields).
            with journal.bound(session_id=sid, transaction_id=tx):
                delivered = await self._deliver(item)
            if not delivered:
                # A failure may park a session or change counts: read afresh.
                self._ahead.clear()

    async def _unpark_when_due(self) -> None:
        now = self._clock.monotonic()
        if now - self._unparked_at < PARKED_RETRY_S:
            return
        self._unparked_at = now
        for parked in await self._store.outbox_parked():
            if isinstance(parked, OutboxEntry):
                await self._store.unpark(parked)

    async def _deliver(self, entry: OutboxEntry) -> bool:
        """One try; True when the CSMS confirmed it."""
        payload = dict(entry.payload)
        # A session's MeterValues and Stop carry its transactionId; MeterValues outside a
        # session (triggered on an idle connector) carry none.
        if (
            entry.action in TRANSACTION_ACTIONS
            and entry.action != "StartTransaction"
            and entry.session_id is not None
        ):
            transaction_id = self._transaction_ids.get(entry.session_id)
            if transaction_id is None:
                transaction_id = await self._store.transaction_id(entry.session_id)
            if transaction_id is None:
                # FIFO puts the session's Start first; it is gone only if it was
                # quarantined. Keep this message (billing) parked with an alarm.
                await self._fail(entry, Park("its StartTransaction was never confirmed"))
                return False
            payload["transactionId"] = transaction_id
        try:
            answer = await self._link.call(entry.action, payload, unique_id=entry.message_id)
        except ConnectionLost:
            return False  # the row stays; the next connection resends it with the same id
        except InvalidMessage as err:
            await self._failed(entry, Failure.INVALID, str(err))
            return False
        except CallErrorReceived as err:
            if entry.action in OPTIONAL_ACTIONS and err.code in ("NotSupported", "NotImplemented"):
                await self._fail(
                    entry, GiveUp(f"the CSMS does not take {entry.action} ({err.code})")
                )
                return False
            await self._failed(entry, Failure.REFUSED, f"CallError {err.code}: {err.description}")
            return False
        except InvalidReply as err:
            await self._failed(entry, Failure.BAD_REPLY, err.reason)
            return False
        except TimeoutError:
            await self._failed(entry, Failure.TIMEOUT, "no answer")
            return False
        await self._confirmed(entry, answer)
        return True

    async def _confirmed(self, entry: OutboxEntry, answer: dict[str, Any]) -> None:
        received = time.perf_counter()
        if entry.action == "StartTransaction":
            assert entry.session_id is not None
            info = answer["idTagInfo"]
            transaction_id = int(answer["transactionId"])
            await self._store.delivered(entry, transaction_id, str(info["status"]))
            self._windows.append(time.perf_counter() - received)
            self._transaction_ids[entry.session_id] = transaction_id
            log.info(
                "StartTransaction confirmed: transaction %d, idTagInfo %s",
                transaction_id,
                info.get("status"),
                extra=journal.fields(transaction_id=transaction_id),
            )
            self._on_start(entry.session_id, transaction_id, info)
        else:
            await self._store.delivered(entry)
            self._windows.append(time.perf_counter() - received)
            if entry.action == "StopTransaction" and entry.session_id is not None:
                self._transaction_ids.pop(entry.session_id, None)
                self._on_stop(entry.session_id, answer.get("idTagInfo"))
        self._delivered += 1
        self._timeouts.pop(entry.seq, None)
        self._alarms.pop(entry.seq, None)
        log.debug("delivered outbox #%d %s", entry.seq, entry.action)

    async def _failed(self, entry: OutboxEntry, failure: Failure, detail: str) -> None:
        timeouts = self._timeouts.get(entry.seq, 0) + (failure is Failure.TIMEOUT)
        self._timeouts[entry.seq] = timeouts
        refused = failure in (Failure.REFUSED, Failure.BAD_REPLY)
        decision = after_failure(
            entry.action,
            failure,
            entry.refusals + refused,
            timeouts,
            self._retry_policy(),
            detail,
        )
        if isinstance(decision, Retry):
            await self._store.failed_attempt(entry, f"{failure}: {detail}", refused=refused)
            self._retries += 1
            log.warning(
                "outbox #%d %s: %s; retrying in %.0f s",
                entry.seq,
                entry.action,
                detail,
                decision.after_s,
            )
            await self._sleep(decision.after_s)
            return
        await self._fail(entry, decision)

    async def _fail(self, entry: OutboxEntry, decision: Park | GiveUp) -> None:
        now = self._clock.utc_now()
        self._timeouts.pop(entry.seq, None)
        if isinstance(decision, Park):
            alarm = f"{entry.action} #{entry.seq} parked: {decision.reason}"
            self._alarms[entry.seq] = alarm[:300]
            log.error("outbox %s", alarm)
            await self._store.park(entry, decision.reason, now)
            return
        log.error("giving up on outbox #%d %s: %s", entry.seq, entry.action, decision.reason)
        if decision.kind == "quarantined" and entry.action in (
            "StartTransaction",
            "StopTransaction",
        ):
            self._alarms[entry.seq] = f"{entry.action} #{entry.seq} quarantined: {decision.reason}"[
                :300
            ]
        await self._store.give_up(entry.seq, decision.reason, now, decision.kind)

    async def _quarantine(self, seq: int, reason: str) -> None:
        log.error("outbox row #%d is unreadable, quarantined: %s", seq, reason)
        self._alarms[seq] = f"outbox row #{seq} quarantined: {reason}"[:300]
        await self._store.give_up(
            seq, f"unreadable: {reason}", self._clock.utc_now(), "quarantined"
        )
