"""The connector state machine: one explicit transition table from (phase, event) to actions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

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
from edgepoint.charging.events import (
    AuthorizationResolved,
    AuthorizationStatus,
    AvailabilityRequested,
    Event,
    Fault,
    FaultCleared,
    FaultRaised,
    IdTag,
    RemoteStartRequested,
    SessionId,
    SessionInvalidated,
    StopReason,
    StopRequested,
    TelemetrySample,
    TokenPresented,
)
from edgepoint.charging.faults import RULES, error_code


class Phase(StrEnum):
    """Where the connector is; finer than the OCPP status it reports."""

    AVAILABLE = "Available"
    AUTHORIZING = "Authorizing"  # card seen, verdict pending; OCPP status stays Available
    CHARGING = "Charging"
    SUSPENDED = "Suspended"  # session open, energy withheld (card invalidated by the CSMS)
    FINISHING = "Finishing"  # relay open, waiting for the final meter reading
    FAULTED = "Faulted"  # exactly while at least one fault is active (`Connector.faults`)
    UNAVAILABLE = "Unavailable"  # Inoperative by ChangeAvailability


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """The session the connector is running (or finishing)."""

    session_id: SessionId
    id_tag: IdTag
    meter_start_wh: int
    # Highest reading already reported for it (MeterValues), kept across a restart.
    last_reading_wh: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one event did: accepted or rejected (with why), and the actions."""

    accepted: bool
    actions: tuple[Action, ...] = ()
    reason: str = ""
    # ChangeAvailability while a session runs: accepted, applied when it ends.
    scheduled: bool = False


def _rejected(reason: str) -> Outcome:
    return Outcome(accepted=False, reason=reason)


@dataclass(frozen=True, slots=True)
class _PendingStop:
    id_tag: IdTag | None
    reason: StopReason


@dataclass(frozen=True, slots=True)
class _Invalidation:
    stop: bool
    until_wh: int  # register reading at which the allowance is used up


_SESSION_PHASES = frozenset({Phase.CHARGING, Phase.SUSPENDED, Phase.FINISHING})


class Connector:
    """One connector of the charge point; pure: no I/O, no clock of its own.

    `handle(event, now)` takes the monotonic time from the caller so that MeterValues
    pacing is testable without sleeping.
    """

    def __init__(
        self,
        new_session_id: Callable[[], SessionId],
        meter_value_interval_s: float,
        resume: ActiveSession | None = None,
        operative: bool = True,
    ) -> None:
        self._new_session_id = new_session_id
        self.meter_value_interval_s = meter_value_interval_s
        self.phase = Phase.AVAILABLE if operative else Phase.UNAVAILABLE
        self.operative = operative  # what ChangeAvailability last asked for (persisted)
        self.session: ActiveSession | None = None
        self.pending_tag: IdTag | None = None
        self.last_sample: TelemetrySample | None = None
        # Active interlocks (this connector's and the charge point's): FAULTED iff any.
        self.faults: frozenset[Fault] = frozenset()
        self._last_meter_values_at = 0.0
        self._pending_stop: _PendingStop | None = None
        self._invalidation: _Invalidation | None = None
        self._peak_wh = 0  # highest register reading during the running session
        if resume is not None:
            # The process died mid-session (crash, power cut): the relay is open since
            # start-up; close the session with the first reading of the meter, which
            # keeps its register across our restart.
            self.session = resume
            self._peak_wh = max(resume.meter_start_wh, resume.last_reading_wh or 0)
            self.phase = Phase.FINISHING
            self._pending_stop = _PendingStop(None, StopReason.POWER_LOSS)

    @property
    def idle_status(self) -> ConnectorStatus:
        return ConnectorStatus.AVAILABLE if self.operative else ConnectorStatus.UNAVAILABLE

    @property
    def status(self) -> ConnectorStatus:
        """The OCPP status that this phase reports."""
        return {
            Phase.AVAILABLE: ConnectorStatus.AVAILABLE,
            Phase.AUTHORIZING: ConnectorStatus.AVAILABLE,
            Phase.CHARGING: ConnectorStatus.CHARGING,
            Phase.SUSPENDED: ConnectorStatus.SUSPENDED_EVSE,
            Phase.FINISHING: ConnectorStatus.FINISHING,
            Phase.FAULTED: ConnectorStatus.FAULTED,
            Phase.UNAVAILABLE: ConnectorStatus.UNAVAILABLE,
        }[self.phase]

    def start(self) -> tuple[Action, ...]:
        """Actions to take once at start-up: a safe relay and the initial status."""
        return (SetRelay(closed=False), ReportStatus(self.status))

    def handle(self, event: Event, now: float) -> Outcome:
        """Apply one event; an event that makes no sense in this phase is rejected, not raised."""
        handler = _TABLE.get((self.phase, type(event)))
        if handler is None:
            return _rejected(f"{type(event).__name__} is not expected while {self.phase}")
        return handler(self, event, now)

    # -- transitions -------------------------------------------------------------

    def _track(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TelemetrySample)
        self.last_sample = event
        return Outcome(accepted=True)

    def _card_when_available(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TokenPresented)
        self.phase = Phase.AUTHORIZING
        self.pending_tag = event.id_tag
        return Outcome(True, (Signal(Feedback.READING), RequestAuthorization(event.id_tag)))

    def _remote_start(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, RemoteStartRequested)
        if event.authorize:
            self.phase = Phase.AUTHORIZING
            self.pending_tag = event.id_tag
            return Outcome(True, (RequestAuthorization(event.id_tag),))
        if self.last_sample is None:
            return _rejected("no meter reading yet")
        return self._begin_session(event.id_tag, now)

    def _card_while_busy(self, event: Event, now: float) -> Outcome:
        # A second tap while the first is being decided or the session is closing:
        # tell the driver with a reject beep rather than silently ignoring it.
        return Outcome(False, (Signal(Feedback.REJECTED),), f"busy ({self.phase})")

    def _verdict(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, AuthorizationResolved)
        if event.id_tag != self.pending_tag:
            return _rejected("verdict for a card that is not pending")
        self.pending_tag = None
        if event.status is not AuthorizationStatus.ACCEPTED:
            self.phase = Phase.AVAILABLE
            return Outcome(True, (Signal(Feedback.REJECTED),), f"card {event.status}")
        if self.last_sample is None:
            # Without a meter reading there is no meterStart: refuse rather than guess.
            self.phase = Phase.AVAILABLE
            return Outcome(True, (Signal(Feedback.FAULT),), "no telemetry yet")
        return self._begin_session(event.id_tag, now)

    def _begin_session(self, id_tag: IdTag, now: float) -> Outcome:
        assert self.last_sample is not None
        self.session = ActiveSession(self._new_session_id(), id_tag, self.last_sample.energy_wh)
        self.phase = Phase.CHARGING
        self.pending_tag = None
        self._invalidation = None
        self._peak_wh = self.session.meter_start_wh
        self._last_meter_values_at = now
        return Outcome(
            True,
            (
                ReportStatus(ConnectorStatus.PREPARING),
                # Durable before the relay closes: a crash right after must still
                # leave a session to close.
                BeginSession(self.session.session_id, id_tag, self.session.meter_start_wh),
                SetRelay(closed=True),
                ReportStatus(ConnectorStatus.CHARGING),
                Signal(Feedback.ACCEPTED),
            ),
        )

    def _sample_in_session(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TelemetrySample) and self.session is not None
        self.last_sample = event
        self._peak_wh = max(self._peak_wh, event.energy_wh)
        actions: tuple[Action, ...] = ()
        if now - self._last_meter_values_at >= self.meter_value_interval_s:
            self._last_meter_values_at = now
            actions = (RecordMeterValues(self.session.session_id, event),)
        spent = self._invalidation is not None and self._peak_wh >= self._invalidation.until_wh
        if spent and self.phase is Phase.CHARGING:
            return Outcome(True, actions + self._withhold().actions)
        return Outcome(True, actions)

    def _invalidated(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, SessionInvalidated) and self.session is not None
        self._invalidation = _Invalidation(event.stop, self._peak_wh + max(0, event.allowance_wh))
        if event.allowance_wh > 0:
            return Outcome(True, reason=f"card {event.status}: {event.allowance_wh} Wh allowed")
        return self._withhold()

    def _withhold(self) -> Outcome:
        """The CSMS invalidated the card: end the session, or only stop the energy."""
        assert self._invalidation is not None
        if self._invalidation.stop:
            return self._begin_stop(_PendingStop(None, StopReason.DEAUTHORIZED))
        self.phase = Phase.SUSPENDED
        return Outcome(
            True,
            (SetRelay(closed=False), ReportStatus(ConnectorStatus.SUSPENDED_EVSE)),
            "energy withheld: card invalidated",
        )

    def _card_in_session(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TokenPresented) and self.session is not None
        if event.id_tag != self.session.id_tag:
            return Outcome(False, (Signal(Feedback.REJECTED),), "not the card that started it")
        return self._begin_stop(_PendingStop(event.id_tag, StopReason.LOCAL))

    def _stop_in_session(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, StopRequested)
        outcome = self._begin_stop(_PendingStop(None, event.reason))
        if not event.immediate:
            return outcome
        return Outcome(True, outcome.actions + self._finish().actions)

    def _begin_stop(self, stop: _PendingStop) -> Outcome:
        self._pending_stop = stop
        self.phase = Phase.FINISHING
        return Outcome(
            True,
            (
                SetRelay(closed=False),
                ReportStatus(ConnectorStatus.FINISHING),
                Signal(Feedback.STOPPED),
            ),
        )

    def _sample_while_finishing(self, event: Event, now: float) -> Outcome:
        # The first reading after the relay opened is the final register value.
        assert isinstance(event, TelemetrySample)
        self.last_sample = event
        return self._finish()

    def _stop_while_finishing(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, StopRequested)
        if not event.immediate:
            return _rejected("already finishing")
        return self._finish()

    def _finish(self) -> Outcome:
        assert self.session is not None and self._pending_stop is not None
        meter_stop = self.last_sample.energy_wh if self.last_sample else self.session.meter_start_wh
        # A register that went backwards (meter swapped, firmware reset) must neither make
        # a negative session nor take back energy we already reported: keep the peak.
        meter_stop = max(meter_stop, self._peak_wh, self.session.meter_start_wh)
        end = EndSession(
            self.session.session_id,
            self._pending_stop.id_tag,
            meter_stop,
            self._pending_stop.reason,
        )
        self.session = None
        self._pending_stop = None
        self._invalidation = None
        if self.faults:
            self.phase = Phase.FAULTED
            return Outcome(True, (end, ReportStatus(ConnectorStatus.FAULTED, self.error_code)))
        # A ChangeAvailability that waited for the session takes effect now.
        self.phase = Phase.AVAILABLE if self.operative else Phase.UNAVAILABLE
        return Outcome(True, (end, ReportStatus(self.idle_status)))

    @property
    def error_code(self) -> str:
        """The OCPP errorCode this connector reports: its most severe fault's, or NoError."""
        return error_code(self.faults).value

    def _fault(self, event: Event, now: float) -> Outcome:
        # Whatever was going on, the relay opens first; a session ends at once with the
        # last reading (the relay is open, nothing more flows), a card being decided is
        # forgotten, and no session starts until every fault has cleared.
        assert isinstance(event, FaultRaised)
        if event.fault in self.faults:
            return _rejected(f"{event.fault} is already raised")
        self.faults = self.faults | {event.fault}
        actions: list[Action] = [SetRelay(closed=False)]
        if self.session is not None:
            if self._pending_stop is None:
                self._pending_stop = _PendingStop(None, RULES[event.fault].stop_reason)
            actions.extend(self._finish().actions)
        else:
            self.pending_tag = None
            self.phase = Phase.FAULTED
            actions.append(ReportStatus(ConnectorStatus.FAULTED, self.error_code))
        actions.append(Signal(Feedback.FAULT))
        return Outcome(True, tuple(actions), str(event.fault))

    def _another_fault(self, event: Event, now: float) -> Outcome:
        # Already faulted (relay open, no session): tell the CSMS only when the fault it
        # sees, the most severe one, changes.
        assert isinstance(event, FaultRaised)
        if event.fault in self.faults:
            return _rejected(f"{event.fault} is already raised")
        shown = self.error_code
        self.faults = self.faults | {event.fault}
        if self.error_code == shown:
            return Outcome(True, reason=str(event.fault))
        return Outcome(
            True, (ReportStatus(ConnectorStatus.FAULTED, self.error_code),), str(event.fault)
        )

    def _fault_cleared(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, FaultCleared)
        if event.fault not in self.faults:
            return _rejected(f"{event.fault} is not raised")
        shown = self.error_code
        self.faults = self.faults - {event.fault}
        if self.faults:
            if self.error_code == shown:
                return Outcome(True, reason=f"{event.fault} cleared")
            return Outcome(True, (ReportStatus(ConnectorStatus.FAULTED, self.error_code),))
        # The last one: a ChangeAvailability received while faulted takes effect now.
        self.phase = Phase.AVAILABLE if self.operative else Phase.UNAVAILABLE
        return Outcome(True, (ReportStatus(self.idle_status),), f"{event.fault} cleared")

    def _card_refused(self, event: Event, now: float) -> Outcome:
        feedback = Feedback.FAULT if self.phase is Phase.FAULTED else Feedback.REJECTED
        return Outcome(False, (Signal(feedback),), f"connector {self.phase}")

    def _cancel_authorization(self, event: Event, now: float) -> Outcome:
        # Reset or shutdown while a card is being decided: forget it; a late verdict
        # then finds nothing pending and is rejected.
        self.pending_tag = None
        self.phase = Phase.AVAILABLE
        return Outcome(True)

    # -- availability (ChangeAvailability) -------------------------------------------

    def _availability(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, AvailabilityRequested)
        self.operative = event.operative
        if self.phase in _SESSION_PHASES:
            # Never cut a running session: the change waits for its end (spec 5.2).
            return Outcome(True, scheduled=not event.operative)
        if self.phase is Phase.FAULTED:
            return Outcome(True, reason="applies once the fault clears")
        target = Phase.AVAILABLE if event.operative else Phase.UNAVAILABLE
        if self.status is self.idle_status:
            # Already reporting what was asked: a card being decided (AUTHORIZING reports
            # Available) keeps its place under a repeated Operative.
            return Outcome(True)
        self.phase = target
        self.pending_tag = None
        return Outcome(True, (ReportStatus(self.idle_status),))


_Handler = Callable[[Connector, Event, float], Outcome]

# The whole behaviour at a glance. A (phase, event) pair that is missing is rejected.
_TABLE: dict[tuple[Phase, type], _Handler] = {
    (Phase.AVAILABLE, TokenPresented): Connector._card_when_available,
    (Phase.AVAILABLE, RemoteStartRequested): Connector._remote_start,
    (Phase.AVAILABLE, TelemetrySample): Connector._track,
    (Phase.AVAILABLE, FaultRaised): Connector._fault,
    (Phase.AVAILABLE, AvailabilityRequested): Connector._availability,
    (Phase.AUTHORIZING, AuthorizationResolved): Connector._verdict,
    (Phase.AUTHORIZING, TokenPresented): Connector._card_while_busy,
    (Phase.AUTHORIZING, TelemetrySample): Connector._track,
    (Phase.AUTHORIZING, FaultRaised): Connector._fault,
    (Phase.AUTHORIZING, StopRequested): Connector._cancel_authorization,
    (Phase.AUTHORIZING, AvailabilityRequested): Connector._availability,
    (Phase.CHARGING, TokenPresented): Connector._card_in_session,
    (Phase.CHARGING, TelemetrySample): Connector._sample_in_session,
    (Phase.CHARGING, FaultRaised): Connector._fault,
    (Phase.CHARGING, StopRequested): Connector._stop_in_session,
    (Phase.CHARGING, SessionInvalidated): Connector._invalidated,
    (Phase.CHARGING, AvailabilityRequested): Connector._availability,
    (Phase.SUSPENDED, TokenPresented): Connector._card_in_session,
    (Phase.SUSPENDED, TelemetrySample): Connector._sample_in_session,
    (Phase.SUSPENDED, FaultRaised): Connector._fault,
    (Phase.SUSPENDED, StopRequested): Connector._stop_in_session,
    (Phase.SUSPENDED, AvailabilityRequested): Connector._availability,
    (Phase.FINISHING, TelemetrySample): Connector._sample_while_finishing,
    (Phase.FINISHING, TokenPresented): Connector._card_while_busy,
    (Phase.FINISHING, FaultRaised): Connector._fault,
    (Phase.FINISHING, StopRequested): Connector._stop_while_finishing,
    (Phase.FINISHING, AvailabilityRequested): Connector._availability,
    # Faulted until the last fault clears: samples are only watched (the interlocks
    # judge them), cards refused, and a second fault only changes the errorCode.
    (Phase.FAULTED, TelemetrySample): Connector._track,
    (Phase.FAULTED, TokenPresented): Connector._card_refused,
    (Phase.FAULTED, AvailabilityRequested): Connector._availability,
    (Phase.FAULTED, FaultRaised): Connector._another_fault,
    (Phase.FAULTED, FaultCleared): Connector._fault_cleared,
    (Phase.UNAVAILABLE, TelemetrySample): Connector._track,
    (Phase.UNAVAILABLE, FaultRaised): Connector._fault,
    (Phase.UNAVAILABLE, TokenPresented): Connector._card_refused,
    (Phase.UNAVAILABLE, AvailabilityRequested): Connector._availability,
}
