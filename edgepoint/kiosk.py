"""The kiosk loop: routes events to the connectors' state machines and carries out their actions.

Everything that changes a connector goes through one queue and is handled one item at a
time: card taps and telemetry from the drivers, verdicts of authorizations, and the
commands the CSMS or a technician sends. So a RemoteStop can never race the tap that
stops the same session, and each outcome's writes commit in one SQLite transaction
before the relay closes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from edgepoint.chargepoint import messages
from edgepoint.chargepoint.authorizer import Authorizer, tag_entry
from edgepoint.charging.actions import (
    Action,
    BeginSession,
    ConnectorStatus,
    EndSession,
    Feedback,
    RecordMeterValues,
    ReportStatus,
    RequestAuthorization,
    SetRelay,
    Signal,
)
from edgepoint.charging.connector import ActiveSession, Connector, Outcome, Phase
from edgepoint.charging.events import (
    AuthorizationResolved,
    AuthorizationStatus,
    AvailabilityRequested,
    Event,
    IdTag,
    RemoteStartRequested,
    SessionId,
    SessionInvalidated,
    StopReason,
    StopRequested,
    TelemetryLost,
    TelemetrySample,
    TokenPresented,
)
from edgepoint.clock import Clock
from edgepoint.redact import mask_id_tag
from edgepoint.storage.chargepoint import Change, ChargePointStore

log = logging.getLogger(__name__)

# The loop handles an item at least this often even with no input, so that its progress
# (which feeds the systemd watchdog) proves it is not stuck.
KIOSK_TICK_S = 1.0

# Which status the shared LEDs show when connectors disagree: the most urgent wins.
_LED_PRIORITY = (
    ConnectorStatus.FAULTED,
    ConnectorStatus.CHARGING,
    ConnectorStatus.PREPARING,
    ConnectorStatus.FINISHING,
    ConnectorStatus.SUSPENDED_EVSE,
    ConnectorStatus.UNAVAILABLE,
    ConnectorStatus.AVAILABLE,
)


class PanelPort(Protocol):
    """What the kiosk needs of the panel: a relay per connector, shared LEDs and buzzer."""

    def set_relay(self, connector_id: int, closed: bool, /) -> None: ...
    def is_relay_closed(self, connector_id: int) -> bool: ...
    def show(self, status: ConnectorStatus) -> None: ...
    def signal(self, feedback: Feedback) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectorSetup:
    """A connector as the kiosk runs it: its state machine and the meter that feeds it."""

    id: int
    connector: Connector
    meter_channel: int = 1


# -- commands: what the CSMS and the control socket ask of the kiosk -----------------


@dataclass(frozen=True, slots=True)
class RemoteStart:
    id_tag: IdTag
    connector_id: int | None
    authorize: bool  # AuthorizeRemoteTxRequests


@dataclass(frozen=True, slots=True)
class RemoteStop:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class ChangeAvailability:
    connector_id: int  # 0: the whole charge point
    operative: bool


@dataclass(frozen=True, slots=True)
class Unlock:
    connector_id: int


@dataclass(frozen=True, slots=True)
class Reset:
    hard: bool


@dataclass(frozen=True, slots=True)
class TriggerStatus:
    connector_id: int | None  # None: connector 0 and every connector


@dataclass(frozen=True, slots=True)
class TriggerMeterValues:
    connector_id: int | None


Command = (
    RemoteStart
    | RemoteStop
    | ChangeAvailability
    | Unlock
    | Reset
    | TriggerStatus
    | TriggerMeterValues
)


@dataclass(frozen=True, slots=True)
class _Tick:
    """Nothing to do: proves the loop turns."""


@dataclass(frozen=True, slots=True)
class _Confirmed:
    """The CSMS confirmed a session's StartTransaction (or its StopTransaction)."""

    session_id: SessionId
    transaction_id: int | None
    id_tag_info: Mapping[str, Any] | None
    stop: bool = False


@dataclass(slots=True)
class _Item:
    connector_id: int | None
    what: Event | Command | _Confirmed | _Tick
    reply: asyncio.Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class ConnectorSnapshot:
    """One connector as the status page shows it."""

    id: int
    phase: Phase
    status: ConnectorStatus
    operative: bool
    relay_closed: bool
    session_id: str | None
    id_tag: str | None  # masked
    transaction_id: int | None
    meter_start_wh: int | None
    last_sample: TelemetrySample | None
    telemetry_lost: bool


@dataclass(frozen=True, slots=True)
class KioskSnapshot:
    """Every connector, and counters."""

    connectors: tuple[ConnectorSnapshot, ...]
    events_rejected: int
    unrouted_samples: int


def new_session_id() -> SessionId:
    return SessionId(str(uuid.uuid4()))


def new_message_id() -> str:
    return uuid.uuid4().hex


async def sessions_to_resume(store: ChargePointStore) -> dict[int, ActiveSession]:
    """Sessions a previous run left open (crash, power cut), per connector, to close."""
    resumed: dict[int, ActiveSession] = {}
    for row in await store.open_sessions():
        log.warning("closing session %s left open by a previous run", row.session_id)
        resumed[row.connector_id] = ActiveSession(
            row.session_id, row.id_tag, row.meter_start_wh, row.last_reading_wh
        )
    return resumed


@dataclass
class KioskOptions:
    """What the kiosk reads from the configuration keys as it runs."""

    meter_measurands: Callable[[], tuple[str, ...]] = lambda: messages.DEFAULT_MEASURANDS
    stop_on_invalid_id: Callable[[], bool] = lambda: True
    max_energy_on_invalid_id: Callable[[], int] = lambda: 0
    outbox_budget: int = 50_000
    on_outbox: Callable[[], None] = lambda: None
    transaction_ids: dict[SessionId, int] = field(default_factory=dict)


class Kiosk:
    """Owns the connectors; the only place that turns decided actions into effects."""

    def __init__(
        self,
        connectors: list[ConnectorSetup],
        store: ChargePointStore,
        panel: PanelPort,
        authorizer: Authorizer,
        clock: Clock,
        telemetry_timeout_s: float,
        options: KioskOptions | None = None,
    ) -> None:
        self._setups = {setup.id: setup for setup in connectors}
        self._by_channel = {setup.meter_channel: setup.id for setup in connectors}
        self._store = store
        self._panel = panel
        self._authorizer = authorizer
        self._clock = clock
        self._telemetry_timeout = telemetry_timeout_s
        self._options = options or KioskOptions()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._status: dict[int, ConnectorStatus] = {
            cid: setup.connector.status for cid, setup in self._setups.items()
        }
        self._operative_cp = True  # connector 0: the whole charge point
        now = clock.monotonic()
        self._last_sample_at = dict.fromkeys(self._setups, now)
        self._telemetry_lost = dict.fromkeys(self._setups, False)
        self._tx_ids: dict[SessionId, int] = dict(self._options.transaction_ids)
        self._rejected = 0
        self._unrouted = 0
        self._watchers: set[Callable[[], None]] = set()
        self._authorizations: set[asyncio.Task[None]] = set()
        self.last_progress = now  # monotonic time the loop last finished an item

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._setups))

    def connector(self, connector_id: int) -> Connector:
        return self._setups[connector_id].connector

    # -- inputs --------------------------------------------------------------------

    def publish(self, event: Event, connector_id: int | None = None) -> None:
        """Hand an event to the kiosk loop; safe to call from drivers' callbacks."""
        self._queue.put_nowait(_Item(connector_id, event))

    async def submit(self, command: Command) -> Any:
        """Run a command in the kiosk loop and return its answer."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(None, command, reply))
        return await reply

    def transaction_started(
        self, session_id: SessionId, transaction_id: int, id_tag_info: Mapping[str, Any]
    ) -> None:
        """The CSMS confirmed StartTransaction (called by the outbox sender)."""
        self._queue.put_nowait(_Item(None, _Confirmed(session_id, transaction_id, id_tag_info)))

    def transaction_stopped(
        self, session_id: SessionId, id_tag_info: Mapping[str, Any] | None
    ) -> None:
        """The CSMS confirmed StopTransaction (called by the outbox sender)."""
        self._queue.put_nowait(_Item(None, _Confirmed(session_id, None, id_tag_info, stop=True)))

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` after every handled item; returns a function that unwatches."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    def snapshot(self) -> KioskSnapshot:
        views = []
        for cid in self.connector_ids:
            c = self.connector(cid)
            session = c.session
            tag = session.id_tag if session else c.pending_tag
            views.append(
                ConnectorSnapshot(
                    id=cid,
                    phase=c.phase,
                    status=self._status[cid],
                    operative=c.operative,
                    relay_closed=self._panel.is_relay_closed(cid),
                    session_id=session.session_id if session else None,
                    id_tag=mask_id_tag(tag) if tag else None,
                    transaction_id=self._tx_ids.get(session.session_id) if session else None,
                    meter_start_wh=session.meter_start_wh if session else None,
                    last_sample=c.last_sample,
                    telemetry_lost=self._telemetry_lost[cid],
                )
            )
        return KioskSnapshot(tuple(views), self._rejected, self._unrouted)

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Process items one at a time, in arrival order, until cancelled."""
        now = self._clock.utc_now()
        async with self._store.change() as change:
            await self._enqueue_status(change, 0, self._cp_status(), now)
        for cid in self.connector_ids:
            await self._execute(cid, self.connector(cid).start())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_telemetry())
            while True:
                await self._step(await self._queue.get())

    async def shutdown(self, reason: StopReason = StopReason.REBOOT) -> None:
        """End running sessions now (relay open, StopTransaction stored) before exiting."""
        for cid in self.connector_ids:
            c = self.connector(cid)
            if c.phase in (Phase.CHARGING, Phase.SUSPENDED, Phase.FINISHING):
                await self._handle(cid, StopRequested(reason, immediate=True))
            self._panel.set_relay(cid, False)
        for task in self._authorizations:
            task.cancel()

    async def _step(self, item: _Item) -> None:
        if isinstance(item.what, _Tick):
            self.last_progress = self._clock.monotonic()
            return
        try:
            answer = await self._dispatch(item)
        except Exception as err:
            if item.reply is not None and not item.reply.done():
                item.reply.set_exception(err)
            raise  # a failing kiosk loop stops the daemon (relay open): invariant 9
        if item.reply is not None and not item.reply.done():
            item.reply.set_result(answer)
        self.last_progress = self._clock.monotonic()
        # Every handled item changes what a watcher shows (at least the live telemetry).
        for notify in list(self._watchers):
            notify()

    async def _dispatch(self, item: _Item) -> Any:
        what = item.what
        if isinstance(what, _Confirmed):
            await self._confirmed(what)
            return None
        if isinstance(what, TokenPresented):
            await self._tap(what)
            return None
        if isinstance(what, TelemetrySample):
            cid = self._by_channel.get(what.channel)
            if cid is None:
                self._unrouted += 1  # a meter channel no connector is wired to
                return None
            self._last_sample_at[cid] = self._clock.monotonic()
            self._telemetry_lost[cid] = False
            return await self._handle(cid, what)
        if isinstance(what, Event):
            assert item.connector_id is not None
            return await self._handle(item.connector_id, what)
        assert not isinstance(what, _Tick)  # handled in _step
        return await self._command(what)

    async def _handle(self, cid: int, event: Event) -> Outcome:
        outcome = self.connector(cid).handle(event, self._clock.monotonic())
        if not outcome.accepted:
            self._rejected += 1
            log.info("connector %d: %s rejected: %s", cid, type(event).__name__, outcome.reason)
        await self._execute(cid, outcome.actions)
        return outcome

    async def _tap(self, event: TokenPresented) -> None:
        """One reader for all connectors: a card stops its own session, else starts one."""
        ids = self.connector_ids
        mine = [c for c in ids if (s := self.connector(c).session) and s.id_tag == event.id_tag]
        free = [c for c in ids if self.connector(c).phase is Phase.AVAILABLE]
        # No free connector: the first one tells the driver why (busy, faulted, unavailable).
        await self._handle((mine or free or [ids[0]])[0], event)

    # -- commands ----------------------------------------------------------------------

    async def _command(self, command: Command) -> Any:
        match command:
            case RemoteStart(id_tag=tag, connector_id=cid, authorize=authorize):
                return await self._remote_start(tag, cid, authorize)
            case RemoteStop(transaction_id=tx):
                for cid in self.connector_ids:
                    session = self.connector(cid).session
                    if session is not None and self._tx_ids.get(session.session_id) == tx:
                        outcome = await self._handle(cid, StopRequested(StopReason.REMOTE))
                        return outcome.accepted
                return False
            case ChangeAvailability(connector_id=cid, operative=operative):
                return await self._change_availability(cid, operative)
            case Unlock(connector_id=cid):
                if cid not in self._setups:
                    return "NotSupported"
                if self.connector(cid).session is not None:
                    await self._handle(cid, StopRequested(StopReason.UNLOCK_COMMAND))
                # The kiosk holds no cable lock: the cable is free to be removed.
                return "Unlocked"
            case Reset(hard=hard):
                reason = StopReason.HARD_RESET if hard else StopReason.SOFT_RESET
                for cid in self.connector_ids:
                    await self._handle(cid, StopRequested(reason, immediate=hard))
                return True
            case TriggerStatus(connector_id=cid):
                now = self._clock.utc_now()
                targets = [0, *self.connector_ids] if cid is None else [cid]
                async with self._store.change() as change:
                    for target in targets:
                        status = self._cp_status() if target == 0 else self._status[target]
                        await self._enqueue_status(change, target, status, now)
                self._options.on_outbox()
                return True
            case TriggerMeterValues(connector_id=cid):
                return await self._trigger_meter_values(cid)
        raise AssertionError(f"unknown command {command!r}")

    async def _remote_start(self, tag: IdTag, cid: int | None, authorize: bool) -> bool:
        if cid is None:
            free = [c for c in self.connector_ids if self.connector(c).phase is Phase.AVAILABLE]
            if not free:
                return False
            cid = free[0]
        if cid not in self._setups:
            return False
        outcome = await self._handle(cid, RemoteStartRequested(tag, authorize))
        return outcome.accepted

    async def _change_availability(self, cid: int, operative: bool) -> str:
        targets = list(self.connector_ids) if cid == 0 else [cid]
        if cid != 0 and cid not in self._setups:
            return "Rejected"
        scheduled = False
        async with self._store.change() as change:
            for target in targets:
                await change.set_availability(target, operative)
            if cid == 0:
                await change.set_availability(0, operative)
        if cid == 0 and self._operative_cp != operative:
            self._operative_cp = operative
            now = self._clock.utc_now()
            async with self._store.change() as change:
                await self._enqueue_status(change, 0, self._cp_status(), now)
        for target in targets:
            outcome = await self._handle(target, AvailabilityRequested(operative))
            scheduled = scheduled or outcome.scheduled
        return "Scheduled" if scheduled else "Accepted"

    def restore_availability(self, stored: Mapping[int, bool]) -> None:
        """Availability set by ChangeAvailability before a restart (it persists)."""
        self._operative_cp = stored.get(0, True)

    async def _trigger_meter_values(self, cid: int | None) -> bool:
        targets = list(self.connector_ids) if cid in (None, 0) else [cid]
        if any(t not in self._setups for t in targets):
            return False
        now = self._clock.utc_now()
        async with self._store.change() as change:
            for target in targets:
                c = self.connector(target)
                if c.last_sample is None:
                    continue
                payload = messages.meter_values(
                    target, c.last_sample, now, "Trigger", self._options.meter_measurands()
                )
                session = c.session.session_id if c.session else None
                await change.enqueue("MeterValues", payload, now, new_message_id(), session)
        self._options.on_outbox()
        return True

    async def _confirmed(self, confirmed: _Confirmed) -> None:
        session_id = confirmed.session_id
        if confirmed.transaction_id is not None:
            self._tx_ids[session_id] = confirmed.transaction_id
        info = confirmed.id_tag_info
        if info is None:
            return
        entry = tag_entry(dict(info))
        for cid in self.connector_ids:
            session = self.connector(cid).session
            if session is None or session.session_id != session_id:
                continue
            await self._authorizer.remember(session.id_tag, entry)
            if confirmed.stop or entry.status is AuthorizationStatus.ACCEPTED:
                return
            log.warning("CSMS refused the card of session %s (%s)", session_id, entry.status)
            await self._handle(
                cid,
                SessionInvalidated(
                    entry.status,
                    self._options.stop_on_invalid_id(),
                    self._options.max_energy_on_invalid_id(),
                ),
            )
            return
        # The session is over (an offline one is confirmed late): its Start.conf still
        # updates the cache (§3.5.1), or a card the CSMS refused stays "unknown" offline.
        stored = await self._store.session(session_id)
        if stored is not None:
            await self._authorizer.remember(stored.id_tag, entry)

    # -- effects -----------------------------------------------------------------------

    async def _execute(self, cid: int, actions: tuple[Action, ...]) -> None:
        """Carry out actions in order; the writes of one outcome commit together, before
        the relay closes (durable before energized) and before the outbox is woken."""
        now = self._clock.utc_now()
        writes: list[Callable[[Change], Awaitable[None]]] = []
        metered = False

        async def flush() -> None:
            if not writes:
                return
            async with self._store.change() as change:
                for write in writes:
                    await write(change)
            writes.clear()
            self._options.on_outbox()

        for action in actions:
            match action:
                case SetRelay(closed=True):
                    await flush()
                    self._panel.set_relay(cid, True)
                case SetRelay(closed=False):
                    self._panel.set_relay(cid, False)  # safety never waits for the disk
                case Signal(feedback=feedback):
                    self._panel.signal(feedback)
                case ReportStatus(status=status, error_code=error_code):
                    self._status[cid] = status
                    self._panel.show(self._led_status())
                    writes.append(self._status_write(cid, status, error_code, now))
                case RequestAuthorization(id_tag=id_tag):
                    task = asyncio.create_task(self._authorize(cid, id_tag))
                    self._authorizations.add(task)
                    task.add_done_callback(self._authorizations.discard)
                case BeginSession(session_id=sid, id_tag=id_tag, meter_start_wh=meter):
                    writes.append(self._begin_write(cid, sid, id_tag, meter, now))
                case RecordMeterValues(session_id=sid, sample=sample):
                    writes.append(self._meter_write(cid, sid, sample, now))
                    metered = True
                case EndSession():
                    writes.append(self._end_write(action, now))
        await flush()
        if metered and self._options.outbox_budget:
            # Only sampled values grow without bound while offline; over the budget they
            # are thinned (every other one), never Start or Stop.
            thinned = await self._store.thin_meter_values(self._options.outbox_budget)
            if thinned:
                log.warning("outbox over its budget: %d sampled MeterValues thinned", thinned)

    def _status_write(
        self, cid: int, status: ConnectorStatus, error_code: str, now: datetime
    ) -> Callable[[Change], Awaitable[None]]:
        async def write(change: Change) -> None:
            await self._enqueue_status(change, cid, status, now, error_code)

        return write

    def _begin_write(
        self, cid: int, sid: SessionId, id_tag: IdTag, meter: int, now: datetime
    ) -> Callable[[Change], Awaitable[None]]:
        async def write(change: Change) -> None:
            await change.begin_session(sid, cid, id_tag, meter, now)
            start = messages.start_transaction(cid, id_tag, meter, now)
            await change.enqueue("StartTransaction", start, now, new_message_id(), sid)

        return write

    def _meter_write(
        self, cid: int, sid: SessionId, sample: TelemetrySample, now: datetime
    ) -> Callable[[Change], Awaitable[None]]:
        async def write(change: Change) -> None:
            await change.record_reading(sid, sample.energy_wh)
            values = messages.meter_values(
                cid, sample, now, measurands=self._options.meter_measurands()
            )
            await change.enqueue("MeterValues", values, now, new_message_id(), sid)

        return write

    def _end_write(self, end: EndSession, now: datetime) -> Callable[[Change], Awaitable[None]]:
        async def write(change: Change) -> None:
            stopped = await change.end_session(
                end.session_id, end.id_tag, end.meter_stop_wh, end.reason.value, now
            )
            if not stopped:
                log.error(
                    "session %s was already stopped; no second StopTransaction", end.session_id
                )
                return
            stop = messages.stop_transaction(end.id_tag, end.meter_stop_wh, end.reason, now)
            await change.enqueue("StopTransaction", stop, now, new_message_id(), end.session_id)

        return write

    async def _enqueue_status(
        self,
        change: Change,
        cid: int,
        status: ConnectorStatus,
        now: datetime,
        error_code: str = "NoError",
    ) -> None:
        payload = messages.status_notification(cid, status, error_code, now)
        await change.enqueue("StatusNotification", payload, now, new_message_id())

    def _cp_status(self) -> ConnectorStatus:
        return ConnectorStatus.AVAILABLE if self._operative_cp else ConnectorStatus.UNAVAILABLE

    def _led_status(self) -> ConnectorStatus:
        shown = set(self._status.values())
        return next((s for s in _LED_PRIORITY if s in shown), ConnectorStatus.AVAILABLE)

    async def _authorize(self, cid: int, id_tag: IdTag) -> None:
        try:
            verdict = await self._authorizer.authorize(id_tag)
            status = verdict.status
        except asyncio.CancelledError:
            raise
        except Exception:
            # No verdict is a refusal, never a hung connector.
            log.exception("authorizing a card failed")
            status = AuthorizationStatus.INVALID
        self.publish(AuthorizationResolved(id_tag, status), cid)

    async def _watch_telemetry(self) -> None:
        # Lost telemetry is a safety condition (invariant 4): the relay must open.
        period = min(0.5, self._telemetry_timeout / 4)
        ticked = self._clock.monotonic()
        while True:
            await asyncio.sleep(period)
            now = self._clock.monotonic()
            if now - ticked >= KIOSK_TICK_S:
                ticked = now
                self._queue.put_nowait(_Item(None, _Tick()))
            for cid, last in self._last_sample_at.items():
                silent = now - last
                if silent > self._telemetry_timeout and not self._telemetry_lost[cid]:
                    self._telemetry_lost[cid] = True
                    log.error("connector %d: no telemetry for %.1f s: relay open", cid, silent)
                    # Through the queue, so that events are still handled one at a time.
                    self.publish(TelemetryLost(), cid)
