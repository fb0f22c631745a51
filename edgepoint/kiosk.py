"""The kiosk loop: feeds events to the connector state machine and carries out its actions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edgepoint.chargepoint import messages
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
from edgepoint.charging.connector import ActiveSession, Connector, Phase
from edgepoint.charging.events import (
    AuthorizationResolved,
    AuthorizationStatus,
    Event,
    IdTag,
    SessionId,
    StopReason,
    StopRequested,
    TelemetryLost,
    TelemetrySample,
)
from edgepoint.clock import Clock
from edgepoint.storage.chargepoint import ChargePointStore

log = logging.getLogger(__name__)


class PanelPort(Protocol):
    """What the kiosk needs of the panel."""

    @property
    def relay_closed(self) -> bool: ...

    def set_relay(self, closed: bool) -> None: ...
    def show(self, status: ConnectorStatus) -> None: ...
    def signal(self, feedback: Feedback) -> None: ...


class CsmsPort(Protocol):
    """What the kiosk needs of the OCPP link."""

    async def authorize(self, id_tag: IdTag) -> AuthorizationStatus: ...
    def report_status(self, status: ConnectorStatus, error_code: str = "NoError") -> None: ...
    def wake_outbox(self) -> None: ...


@dataclass(frozen=True, slots=True)
class KioskSnapshot:
    """The connector as the status page shows it."""

    phase: Phase
    status: ConnectorStatus
    relay_closed: bool
    session_id: str | None
    id_tag: str | None
    meter_start_wh: int | None
    last_sample: TelemetrySample | None
    telemetry_lost: bool
    events_rejected: int


def new_session_id() -> SessionId:
    return SessionId(str(uuid.uuid4()))


async def session_to_resume(store: ChargePointStore) -> ActiveSession | None:
    """The session a previous run left open (crash, power cut), for the connector to close."""
    row = await store.open_session()
    if row is None:
        return None
    log.warning("closing session %s left open by a previous run", row.session_id)
    return ActiveSession(row.session_id, row.id_tag, row.meter_start_wh, row.last_reading_wh)


class Kiosk:
    """Owns the connector; the only place that turns decided actions into effects."""

    def __init__(
        self,
        connector: Connector,
        store: ChargePointStore,
        panel: PanelPort,
        csms: CsmsPort,
        clock: Clock,
        telemetry_timeout_s: float,
        connector_id: int = 1,
    ) -> None:
        self.connector = connector
        self._store = store
        self._panel = panel
        self._csms = csms
        self._clock = clock
        self._telemetry_timeout = telemetry_timeout_s
        self._connector_id = connector_id
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._status = ConnectorStatus.AVAILABLE
        self._last_sample_at = clock.monotonic()
        self._telemetry_lost = False
        self._rejected = 0
        self._watchers: set[Callable[[], None]] = set()
        self._authorizations: set[asyncio.Task[None]] = set()

    def publish(self, event: Event) -> None:
        """Hand an event to the kiosk loop; safe to call from drivers' callbacks."""
        self._events.put_nowait(event)

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` after every handled event; returns a function that unwatches."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    def transaction_started(self, session_id: SessionId, transaction_id: int, status: str) -> None:
        """The CSMS confirmed StartTransaction; a refused id tag ends the session (OCPP 5.x)."""
        session = self.connector.session
        if status != AuthorizationStatus.ACCEPTED and session and session.session_id == session_id:
            log.warning("CSMS refused the session's card (%s): stopping", status)
            self.publish(StopRequested(StopReason.DEAUTHORIZED))

    def snapshot(self) -> KioskSnapshot:
        c = self.connector
        return KioskSnapshot(
            phase=c.phase,
            status=self._status,
            relay_closed=self._panel.relay_closed,
            session_id=c.session.session_id if c.session else None,
            id_tag=c.session.id_tag if c.session else (c.pending_tag or None),
            meter_start_wh=c.session.meter_start_wh if c.session else None,
            last_sample=c.last_sample,
            telemetry_lost=self._telemetry_lost,
            events_rejected=self._rejected,
        )

    async def run(self) -> None:
        """Process events one at a time, in arrival order, until cancelled."""
        await self._execute(self.connector.start())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_telemetry())
            while True:
                await self._step(await self._events.get())

    async def shutdown(self) -> None:
        """End a running session now (relay open, StopTransaction stored) before exiting."""
        if self.connector.phase in (Phase.CHARGING, Phase.FINISHING):
            await self._step(StopRequested(StopReason.REBOOT, immediate=True))
        self._panel.set_relay(False)

    async def _step(self, event: Event) -> None:
        if isinstance(event, TelemetrySample):
            self._last_sample_at = self._clock.monotonic()
            self._telemetry_lost = False
        outcome = self.connector.handle(event, self._clock.monotonic())
        if not outcome.accepted:
            self._rejected += 1
            log.info("event %s rejected: %s", type(event).__name__, outcome.reason)
        await self._execute(outcome.actions)
        # Every handled event changes what a watcher shows (at least the live telemetry).
        for notify in list(self._watchers):
            notify()

    async def _execute(self, actions: tuple[Action, ...]) -> None:
        for action in actions:
            await self._carry_out(action)

    async def _carry_out(self, action: Action) -> None:
        now = self._clock.utc_now()
        match action:
            case SetRelay(closed=closed):
                self._panel.set_relay(closed)
            case Signal(feedback=feedback):
                self._panel.signal(feedback)
            case ReportStatus(status=status, error_code=error_code):
                self._status = status
                self._panel.show(status)
                self._csms.report_status(status, error_code)
            case RequestAuthorization(id_tag=id_tag):
                # Asking the CSMS takes a round trip; the loop keeps handling telemetry.
                task = asyncio.create_task(self._authorize(id_tag))
                self._authorizations.add(task)
                task.add_done_callback(self._authorizations.discard)
            case BeginSession(session_id=sid, id_tag=id_tag, meter_start_wh=meter):
                start = messages.start_transaction(self._connector_id, id_tag, meter, now)
                await self._store.begin_session(sid, self._connector_id, id_tag, meter, now, start)
                self._csms.wake_outbox()
            case RecordMeterValues(session_id=sid, sample=sample):
                values = messages.meter_values(self._connector_id, sample, now)
                await self._store.queue_meter_values(sid, now, values, sample.energy_wh)
                self._csms.wake_outbox()
            case EndSession(session_id=sid, id_tag=id_tag, meter_stop_wh=meter, reason=reason):
                stop = messages.stop_transaction(id_tag, meter, reason, now)
                if not await self._store.end_session(sid, id_tag, meter, reason.value, now, stop):
                    log.error("session %s was already stopped; no second StopTransaction", sid)
                self._csms.wake_outbox()

    async def _authorize(self, id_tag: IdTag) -> None:
        status = await self._csms.authorize(id_tag)
        self.publish(AuthorizationResolved(id_tag, status))

    async def _watch_telemetry(self) -> None:
        # Lost telemetry is a safety condition (invariant 4): the relay must open.
        period = min(0.5, self._telemetry_timeout / 4)
        while True:
            await asyncio.sleep(period)
            silent = self._clock.monotonic() - self._last_sample_at
            if silent > self._telemetry_timeout and not self._telemetry_lost:
                self._telemetry_lost = True
                log.error("no telemetry for %.1f s: opening the relay", silent)
                # Through the queue, so that events are still handled one at a time.
                self.publish(TelemetryLost())
