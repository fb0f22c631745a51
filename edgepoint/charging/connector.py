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
    Event,
    IdTag,
    SessionId,
    StopReason,
    StopRequested,
    TelemetryLost,
    TelemetrySample,
    TokenPresented,
)


class Phase(StrEnum):
    """Where the connector is; finer than the OCPP status it reports."""

    AVAILABLE = "Available"
    AUTHORIZING = "Authorizing"  # card seen, verdict pending; OCPP status stays Available
    CHARGING = "Charging"
    FINISHING = "Finishing"  # relay open, waiting for the final meter reading
    FAULTED = "Faulted"


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


def _rejected(reason: str) -> Outcome:
    return Outcome(accepted=False, reason=reason)


@dataclass(frozen=True, slots=True)
class _PendingStop:
    id_tag: IdTag | None
    reason: StopReason


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
    ) -> None:
        self._new_session_id = new_session_id
        self._meter_interval = meter_value_interval_s
        self.phase = Phase.AVAILABLE
        self.session: ActiveSession | None = None
        self.pending_tag: IdTag | None = None
        self.last_sample: TelemetrySample | None = None
        self._last_meter_values_at = 0.0
        self._pending_stop: _PendingStop | None = None
        self._peak_wh = 0  # highest register reading during the running session
        if resume is not None:
            # The process died mid-session (crash, power cut): the relay is open since
            # start-up; close the session with the first reading of the meter, which
            # keeps its register across our restart.
            self.session = resume
            self._peak_wh = max(resume.meter_start_wh, resume.last_reading_wh or 0)
            self.phase = Phase.FINISHING
            self._pending_stop = _PendingStop(None, StopReason.POWER_LOSS)

    def start(self) -> tuple[Action, ...]:
        """Actions to take once at start-up: a safe relay and the initial status."""
        status = (
            ReportStatus(ConnectorStatus.FINISHING)
            if self.phase is Phase.FINISHING
            else ReportStatus(ConnectorStatus.AVAILABLE)
        )
        return (SetRelay(closed=False), status)

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
        self.session = ActiveSession(
            self._new_session_id(), event.id_tag, self.last_sample.energy_wh
        )
        self.phase = Phase.CHARGING
        self._peak_wh = self.session.meter_start_wh
        self._last_meter_values_at = now
        return Outcome(
            True,
            (
                ReportStatus(ConnectorStatus.PREPARING),
                # Durable before the relay closes: a crash right after must still
                # leave a session to close.
                BeginSession(self.session.session_id, event.id_tag, self.session.meter_start_wh),
                SetRelay(closed=True),
                ReportStatus(ConnectorStatus.CHARGING),
                Signal(Feedback.ACCEPTED),
            ),
        )

    def _sample_while_charging(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TelemetrySample) and self.session is not None
        self.last_sample = event
        self._peak_wh = max(self._peak_wh, event.energy_wh)
        if now - self._last_meter_values_at < self._meter_interval:
            return Outcome(True)
        self._last_meter_values_at = now
        return Outcome(True, (RecordMeterValues(self.session.session_id, event),))

    def _card_while_charging(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TokenPresented) and self.session is not None
        if event.id_tag != self.session.id_tag:
            return Outcome(False, (Signal(Feedback.REJECTED),), "not the card that started it")
        return self._begin_stop(_PendingStop(event.id_tag, StopReason.LOCAL))

    def _stop_while_charging(self, event: Event, now: float) -> Outcome:
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

    def _finish(self, status: ConnectorStatus = ConnectorStatus.AVAILABLE) -> Outcome:
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
        self.phase = Phase.AVAILABLE if status is ConnectorStatus.AVAILABLE else Phase.FAULTED
        error = "NoError" if status is ConnectorStatus.AVAILABLE else "OtherError"
        return Outcome(True, (end, ReportStatus(status, error)))

    def _lost(self, event: Event, now: float) -> Outcome:
        # Lost telemetry means we cannot see what flows: open the relay, close any
        # session with the last reading we trust, and refuse new sessions.
        actions: list[Action] = [SetRelay(closed=False)]
        if self.session is not None:
            if self._pending_stop is None:
                self._pending_stop = _PendingStop(None, StopReason.OTHER)
            actions.extend(self._finish(ConnectorStatus.FAULTED).actions)
        else:
            self.pending_tag = None
            self.phase = Phase.FAULTED
            actions.append(ReportStatus(ConnectorStatus.FAULTED, "OtherError"))
        actions.append(Signal(Feedback.FAULT))
        return Outcome(True, tuple(actions))

    def _card_while_faulted(self, event: Event, now: float) -> Outcome:
        return Outcome(False, (Signal(Feedback.FAULT),), "connector faulted")

    def _recovered(self, event: Event, now: float) -> Outcome:
        assert isinstance(event, TelemetrySample)
        self.last_sample = event
        self.phase = Phase.AVAILABLE
        return Outcome(True, (ReportStatus(ConnectorStatus.AVAILABLE),))


_Handler = Callable[[Connector, Event, float], Outcome]

# The whole behaviour at a glance. A (phase, event) pair that is missing is rejected.
_TABLE: dict[tuple[Phase, type], _Handler] = {
    (Phase.AVAILABLE, TokenPresented): Connector._card_when_available,
    (Phase.AVAILABLE, TelemetrySample): Connector._track,
    (Phase.AVAILABLE, TelemetryLost): Connector._lost,
    (Phase.AUTHORIZING, AuthorizationResolved): Connector._verdict,
    (Phase.AUTHORIZING, TokenPresented): Connector._card_while_busy,
    (Phase.AUTHORIZING, TelemetrySample): Connector._track,
    (Phase.AUTHORIZING, TelemetryLost): Connector._lost,
    (Phase.CHARGING, TokenPresented): Connector._card_while_charging,
    (Phase.CHARGING, TelemetrySample): Connector._sample_while_charging,
    (Phase.CHARGING, TelemetryLost): Connector._lost,
    (Phase.CHARGING, StopRequested): Connector._stop_while_charging,
    (Phase.FINISHING, TelemetrySample): Connector._sample_while_finishing,
    (Phase.FINISHING, TokenPresented): Connector._card_while_busy,
    (Phase.FINISHING, TelemetryLost): Connector._lost,
    (Phase.FINISHING, StopRequested): Connector._stop_while_finishing,
    (Phase.FAULTED, TelemetrySample): Connector._recovered,
    (Phase.FAULTED, TokenPresented): Connector._card_while_faulted,
}
