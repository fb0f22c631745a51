"""The connector state machine: one explicit transition table from (phase, event) to actions.

Two phases hold a session without energy flowing. SUSPENDED: the CSMS refused the card
after the start; the relay is open. PAUSED: smart charging limits the connector to 0 A;
the relay stays closed and the ESP32 holds the car at 0 A through the pilot signal (its
current limit), as IEC 61851 means an EVSE to pause: the car stops drawing and waits,
the contactor is not cycled (or opened under load) at every change of a CSMS's schedule,
and charging resumes the moment the limit rises. Both report SuspendedEVSE.

RESERVED holds an idle connector for one card (ReserveNow): the reserved card, or when
the reservation names a parentIdTag any card whose authorization carries that parent,
may start; every other card is refused. The session it starts carries the reservation
(StartTransaction's reservationId) and ends it. Expiry and cancelling are the kiosk's
(it knows the time of day): they arrive as ReservationEnded. A fault or an Inoperative
ChangeAvailability ends a reservation (the kiosk notices it is gone).
"""

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
    ChargingPaused,
    Event,
    Fault,
    FaultCleared,
    FaultRaised,
    IdTag,
    RemoteStartRequested,
    ReservationEnded,
    ReservationMade,
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
    PAUSED = "Paused"  # session open, relay closed, smart charging's limit is 0 A
    SUSPENDED = "Suspended"  # session open, energy withheld (card invalidated by the CSMS)
    FINISHING = "Finishing"  # relay open, waiting for the final meter reading
    FAULTED = "Faulted"  # exactly while at least one fault is active (`Connector.faults`)
    UNAVAILABLE = "Unavailable"  # Inoperative by ChangeAvailability
    RESERVED = "Reserved"  # held for one card (or one parentIdTag) by ReserveNow


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


_SESSION_PHASES = frozenset({Phase.CHARGING, Phase.PAUSED, Phase.SUSPENDED, Phase.FINISHING})
# The phases in which the relay is closed: energy may flow (PAUSED: at 0 A).
ENERGIZED_PHASES = frozenset({Phase.CHARGING, Phase.PAUSED})


def same_tag(a: str | None, b: str | None) -> bool:
    """IdTokens are CiString20: compared without regard to case."""
    return a is not None and b is not None and a.casefold() == b.casefold()


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
        # The reservation held (RESERVED) or claimed by the card being decided (AUTHORIZING).
        self.reservation: ReservationMade | None = None
        # Smart charging's limit is 0: a session starts, and charges, PAUSED.
        self.paused = False
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
        if self.phase is Phase.AUTHORIZING and self.reservation is not None:
            return ConnectorStatus.RESERVED  # the reserved card is being decided
        return {
            Phase.AVAILABLE: ConnectorStatus.AVAILABLE,
            Phase.AUTHORIZING: ConnectorStatus.AVAILABLE,
            Phase.CHARGING: ConnectorStatus.CHARGING,
            Phase.PAUSED: ConnectorStatus.SUSPENDED_EVSE,
            Phase.SUSPENDED: ConnectorStatus.SUSPENDED_EVSE,
            Phase.FINISHING: ConnectorStatus.FINISHING,
            Phase.FAULTED: ConnectorStatus.FAULTED,
            Phase.UNAVAILABLE: ConnectorStatus.UNAVAILABLE,
            Phase.RESERVED: ConnectorStatus.RESERVED,
        }[self.phase]

    @property
    def reservation_id(self) -> int | None:
        """The reservation this connector holds or a card being decided claims."""
        return None if self.reservation is None else self.reservation.reservation_id

    def _idle_phase(self) -> Phase:
        """Where a card that does not start a session leaves the connector."""
        return Phase.RESERVED if self.reservation is not None else Phase.AVAILABLE

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
        if self.reservation is not None:
            if not self._may_claim(event.id_tag):
                return _rejected("reserved for another card")
            if not event.authorize and not same_tag(event.id_tag, self.reservation.id_tag):
                # Only an authorization tells the card's parentIdTag.
                return _rejected("reserved for a parent id tag: the card must be authorized")
        if event.authorize:
            self.phase = Phase.AUTHORIZING
            self.pending_tag = event.id_tag
            return Outcome(True, (RequestAuthorization(event.id_tag),))
        if self.last_sample is None:
            return _rejected("no meter reading yet")
        return self._begin_session(event.id_tag, now)

    def _may_claim(self, id_tag: IdTag) -> bool:
        """Whether a card may try for the reservation (its parent is known only after)."""
        assert self.reservation is not None
        return (
            same_tag(id_tag, self.reservation.id_tag) or self.reservation.parent_id_tag is not None
        )

    def _claims(self, id_tag: IdTag, parent_id_tag: IdTag | None) -> bool:
        """Whether an authorized card may use the reservation held."""
        assert self.reservation is not None
        return same_tag(id_tag, self.reservation.id_tag) or same_tag(
            parent_id_tag, self.reservation.parent_id_tag
        )

    def _card_when_reserved(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TokenPresented) and self.reservation is not None
        if not self._may_claim(event.id_tag):
            return Outcome(False, (Signal(Feedback.REJECTED),), "reserved for another card")
        self.phase = Phase.AUTHORIZING
        self.pending_tag = event.id_tag
        return Outcome(True, (Signal(Feedback.READING), RequestAuthorization(event.id_tag)))

    def _reserve(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, ReservationMade)
        if self.reservation is not None:
            if event.reservation_id != self.reservation.reservation_id:
                return _rejected(f"already reserved ({self.reservation.reservation_id})")
            self.reservation = event  # the same reservation id: ReserveNow replaces it
            return Outcome(True, reason="reservation replaced")
        self.reservation = event
        self.phase = Phase.RESERVED
        return Outcome(True, (ReportStatus(ConnectorStatus.RESERVED),))

    def _unreserve(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, ReservationEnded)
        if self.reservation_id != event.reservation_id:
            return _rejected(f"no reservation {event.reservation_id}")
        self.reservation = None
        if self.phase is Phase.RESERVED:
            self.phase = Phase.AVAILABLE
        # A card being decided for it goes on deciding, for a free connector now.
        return Outcome(True, (ReportStatus(ConnectorStatus.AVAILABLE),))

    def _limit_changed(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, ChargingPaused)
        self.paused = event.paused
        if self.phase is Phase.CHARGING and event.paused:
            self.phase = Phase.PAUSED
            return Outcome(True, (ReportStatus(ConnectorStatus.SUSPENDED_EVSE),), "limit 0")
        if self.phase is Phase.PAUSED and not event.paused:
            self.phase = Phase.CHARGING
            return Outcome(True, (ReportStatus(ConnectorStatus.CHARGING),), "limit above 0")
        return Outcome(True)

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
            self.phase = self._idle_phase()
            return Outcome(True, (Signal(Feedback.REJECTED),), f"card {event.status}")
        if self.reservation is not None and not self._claims(event.id_tag, event.parent_id_tag):
            self.phase = Phase.RESERVED
            return Outcome(True, (Signal(Feedback.REJECTED),), "not the reservation's card")
        if self.last_sample is None:
            # Without a meter reading there is no meterStart: refuse rather than guess.
            self.phase = self._idle_phase()
            return Outcome(True, (Signal(Feedback.FAULT),), "no telemetry yet")
        return self._begin_session(event.id_tag, now)

    def _begin_session(self, id_tag: IdTag, now: float) -> Outcome:
        assert self.last_sample is not None
        self.session = ActiveSession(self._new_session_id(), id_tag, self.last_sample.energy_wh)
        self.phase = Phase.PAUSED if self.paused else Phase.CHARGING
        self.pending_tag = None
        self._invalidation = None
        self._peak_wh = self.session.meter_start_wh
        self._last_meter_values_at = now
        reservation = self.reservation_id
        self.reservation = None  # used: the session ends it
        return Outcome(
            True,
            (
                ReportStatus(ConnectorStatus.PREPARING),
                # Durable before the relay closes: a crash right after must still
                # leave a session to close.
                BeginSession(
                    self.session.session_id, id_tag, self.session.meter_start_wh, reservation
                ),
                SetRelay(closed=True),
                ReportStatus(self.status),
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
        if spent and self.phase in ENERGIZED_PHASES:
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
        # From PAUSED the status (SuspendedEVSE) stays: only the relay opens.
        report = (
            (ReportStatus(ConnectorStatus.SUSPENDED_EVSE),) if self.phase is Phase.CHARGING else ()
        )
        self.phase = Phase.SUSPENDED
        return Outcome(True, (SetRelay(closed=False), *report), "energy withheld: card invalidated")

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
            self.reservation = None  # a faulted connector cannot keep its promise
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
        # then finds nothing pending and is rejected. A reservation it claimed stays.
        self.pending_tag = None
        self.phase = self._idle_phase()
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
        if event.operative is (self.phase is not Phase.UNAVAILABLE):
            # Already what was asked: a card being decided keeps its place, and a
            # reservation stays, under a repeated Operative.
            return Outcome(True)
        ended = self.reservation
        self.phase = Phase.AVAILABLE if event.operative else Phase.UNAVAILABLE
        self.pending_tag = None
        self.reservation = None
        why = f"reservation {ended.reservation_id} ends" if ended is not None else ""
        return Outcome(True, (ReportStatus(self.idle_status),), why)


_Handler = Callable[[Connector, Event, float], Outcome]

# The whole behaviour at a glance. A (phase, event) pair that is missing is rejected.
_TABLE: dict[tuple[Phase, type], _Handler] = {
    (Phase.AVAILABLE, TokenPresented): Connector._card_when_available,
    (Phase.AVAILABLE, RemoteStartRequested): Connector._remote_start,
    (Phase.AVAILABLE, TelemetrySample): Connector._track,
    (Phase.AVAILABLE, FaultRaised): Connector._fault,
    (Phase.AVAILABLE, AvailabilityRequested): Connector._availability,
    (Phase.AVAILABLE, ReservationMade): Connector._reserve,
    (Phase.AVAILABLE, ChargingPaused): Connector._limit_changed,
    (Phase.AUTHORIZING, AuthorizationResolved): Connector._verdict,
    (Phase.AUTHORIZING, TokenPresented): Connector._card_while_busy,
    (Phase.AUTHORIZING, TelemetrySample): Connector._track,
    (Phase.AUTHORIZING, FaultRaised): Connector._fault,
    (Phase.AUTHORIZING, StopRequested): Connector._cancel_authorization,
    (Phase.AUTHORIZING, AvailabilityRequested): Connector._availability,
    (Phase.AUTHORIZING, ReservationEnded): Connector._unreserve,
    (Phase.AUTHORIZING, ChargingPaused): Connector._limit_changed,
    (Phase.CHARGING, TokenPresented): Connector._card_in_session,
    (Phase.CHARGING, TelemetrySample): Connector._sample_in_session,
    (Phase.CHARGING, FaultRaised): Connector._fault,
    (Phase.CHARGING, StopRequested): Connector._stop_in_session,
    (Phase.CHARGING, SessionInvalidated): Connector._invalidated,
    (Phase.CHARGING, AvailabilityRequested): Connector._availability,
    (Phase.CHARGING, ChargingPaused): Connector._limit_changed,
    # PAUSED: a session held at 0 A, otherwise like CHARGING.
    (Phase.PAUSED, TokenPresented): Connector._card_in_session,
    (Phase.PAUSED, TelemetrySample): Connector._sample_in_session,
    (Phase.PAUSED, FaultRaised): Connector._fault,
    (Phase.PAUSED, StopRequested): Connector._stop_in_session,
    (Phase.PAUSED, SessionInvalidated): Connector._invalidated,
    (Phase.PAUSED, AvailabilityRequested): Connector._availability,
    (Phase.PAUSED, ChargingPaused): Connector._limit_changed,
    (Phase.SUSPENDED, TokenPresented): Connector._card_in_session,
    (Phase.SUSPENDED, TelemetrySample): Connector._sample_in_session,
    (Phase.SUSPENDED, FaultRaised): Connector._fault,
    (Phase.SUSPENDED, StopRequested): Connector._stop_in_session,
    (Phase.SUSPENDED, AvailabilityRequested): Connector._availability,
    (Phase.SUSPENDED, ChargingPaused): Connector._limit_changed,
    (Phase.FINISHING, TelemetrySample): Connector._sample_while_finishing,
    (Phase.FINISHING, TokenPresented): Connector._card_while_busy,
    (Phase.FINISHING, FaultRaised): Connector._fault,
    (Phase.FINISHING, StopRequested): Connector._stop_while_finishing,
    (Phase.FINISHING, AvailabilityRequested): Connector._availability,
    (Phase.FINISHING, ChargingPaused): Connector._limit_changed,
    # Faulted until the last fault clears: samples are only watched (the interlocks
    # judge them), cards refused, and a second fault only changes the errorCode.
    (Phase.FAULTED, TelemetrySample): Connector._track,
    (Phase.FAULTED, TokenPresented): Connector._card_refused,
    (Phase.FAULTED, AvailabilityRequested): Connector._availability,
    (Phase.FAULTED, FaultRaised): Connector._another_fault,
    (Phase.FAULTED, FaultCleared): Connector._fault_cleared,
    (Phase.FAULTED, ChargingPaused): Connector._limit_changed,
    (Phase.UNAVAILABLE, TelemetrySample): Connector._track,
    (Phase.UNAVAILABLE, FaultRaised): Connector._fault,
    (Phase.UNAVAILABLE, TokenPresented): Connector._card_refused,
    (Phase.UNAVAILABLE, AvailabilityRequested): Connector._availability,
    (Phase.UNAVAILABLE, ChargingPaused): Connector._limit_changed,
    # RESERVED: idle, but only for the reservation's card (or parent).
    (Phase.RESERVED, TokenPresented): Connector._card_when_reserved,
    (Phase.RESERVED, RemoteStartRequested): Connector._remote_start,
    (Phase.RESERVED, TelemetrySample): Connector._track,
    (Phase.RESERVED, FaultRaised): Connector._fault,
    (Phase.RESERVED, AvailabilityRequested): Connector._availability,
    (Phase.RESERVED, ReservationMade): Connector._reserve,
    (Phase.RESERVED, ReservationEnded): Connector._unreserve,
    (Phase.RESERVED, ChargingPaused): Connector._limit_changed,
}
