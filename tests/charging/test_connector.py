"""Every cell of the connector transition table, accepted and rejected, and its behaviours."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import get_args

import pytest

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
from edgepoint.charging.connector import ENERGIZED_PHASES, ActiveSession, Connector, Phase
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

ALICE = IdTag("04A1B2C3")
BOB = IdTag("04FFEE11")
FLEET = IdTag("FLEET-7")  # a parentIdTag
R7 = 7  # the reservation of ALICE that in_phase(RESERVED) holds
S1 = SessionId("s1")
ACCEPTED = AuthorizationStatus.ACCEPTED
BLOCKED = AuthorizationStatus.BLOCKED


def sample(seq: int, energy: int) -> TelemetrySample:
    return TelemetrySample(seq, energy, 11000.0, 16.0, 230.0, 30.0)


def new_connector(interval: float = 10.0, operative: bool = True) -> Connector:
    ids = (SessionId(f"s{n}") for n in itertools.count(1))
    return Connector(lambda: next(ids), meter_value_interval_s=interval, operative=operative)


def in_phase(phase: Phase, interval: float = 10.0) -> Connector:
    """Drive a fresh connector through real events into `phase`.

    Every connector has seen a 1000 Wh reading; a session is s1 of ALICE, begun at t=1.1
    with meter start 1000; FINISHING was stopped by ALICE's card; PAUSED is that session
    at a 0 A limit; RESERVED holds reservation 7 for ALICE.
    """
    c = new_connector(interval)
    steps: dict[Phase, list[Event]] = {
        Phase.AVAILABLE: [],
        Phase.AUTHORIZING: [TokenPresented(ALICE)],
        Phase.CHARGING: [TokenPresented(ALICE), AuthorizationResolved(ALICE, ACCEPTED)],
        Phase.SUSPENDED: [
            TokenPresented(ALICE),
            AuthorizationResolved(ALICE, ACCEPTED),
            SessionInvalidated(BLOCKED, stop=False, allowance_wh=0),
        ],
        Phase.FINISHING: [
            TokenPresented(ALICE),
            AuthorizationResolved(ALICE, ACCEPTED),
            TokenPresented(ALICE),
        ],
        Phase.FAULTED: [FaultRaised(Fault.TELEMETRY_LOST)],
        Phase.UNAVAILABLE: [AvailabilityRequested(operative=False)],
        Phase.PAUSED: [
            TokenPresented(ALICE),
            AuthorizationResolved(ALICE, ACCEPTED),
            ChargingPaused(paused=True),
        ],
        Phase.RESERVED: [ReservationMade(R7, ALICE)],
    }
    assert c.handle(sample(1, 1000), 0.0).accepted
    for n, event in enumerate(steps[phase]):
        assert c.handle(event, 1.0 + n / 10).accepted
    assert c.phase is phase
    return c


def relay_closed_after(actions: tuple[Action, ...], before: bool) -> bool:
    """The relay state after carrying out `actions` from `before`."""
    for action in actions:
        if isinstance(action, SetRelay):
            before = action.closed
    return before


# -- the full table: phase x event ---------------------------------------------------

LATE = sample(50, 2000)  # the event time is t=100, well past the 10 s MeterValues interval

EVENTS: dict[str, Event] = {
    "tap-alice": TokenPresented(ALICE),
    "tap-bob": TokenPresented(BOB),
    "sample": LATE,
    "verdict": AuthorizationResolved(ALICE, ACCEPTED),
    "lost": FaultRaised(Fault.TELEMETRY_LOST),
    "hot": FaultRaised(Fault.OVER_TEMPERATURE),
    "lost-cleared": FaultCleared(Fault.TELEMETRY_LOST),
    "stop": StopRequested(StopReason.REMOTE),
    "stop-now": StopRequested(StopReason.REBOOT, immediate=True),
    "remote-start": RemoteStartRequested(ALICE, authorize=False),
    "remote-start-auth": RemoteStartRequested(ALICE, authorize=True),
    "inoperative": AvailabilityRequested(operative=False),
    "operative": AvailabilityRequested(operative=True),
    "invalid-stop": SessionInvalidated(BLOCKED, stop=True, allowance_wh=0),
    "invalid-suspend": SessionInvalidated(BLOCKED, stop=False, allowance_wh=0),
    "invalid-allowance": SessionInvalidated(BLOCKED, stop=True, allowance_wh=500),
    "reserve": ReservationMade(R7, ALICE),
    "unreserve": ReservationEnded(R7),
    "pause": ChargingPaused(paused=True),
    "resume": ChargingPaused(paused=False),
}


@dataclass(frozen=True, slots=True)
class Cell:
    """What one (phase, event) pair must do."""

    accepted: bool
    actions: tuple[Action, ...]
    after: Phase
    scheduled: bool = False
    reason: str = ""  # a fragment the outcome's reason must contain


START_S1 = (
    ReportStatus(ConnectorStatus.PREPARING),
    BeginSession(S1, ALICE, 1000),
    SetRelay(closed=True),
    ReportStatus(ConnectorStatus.CHARGING),
    Signal(Feedback.ACCEPTED),
)
# The same start, using reservation 7 (which ends with it).
START_S1_R7 = (
    ReportStatus(ConnectorStatus.PREPARING),
    BeginSession(S1, ALICE, 1000, R7),
    SetRelay(closed=True),
    ReportStatus(ConnectorStatus.CHARGING),
    Signal(Feedback.ACCEPTED),
)
BEGIN_STOP = (
    SetRelay(closed=False),
    ReportStatus(ConnectorStatus.FINISHING),
    Signal(Feedback.STOPPED),
)
METER = "PowerMeterFailure"
HOT = "HighTemperature"


def fault_idle(code: str = METER) -> tuple[Action, ...]:
    return (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.FAULTED, code),
        Signal(Feedback.FAULT),
    )


FAULT_IDLE = fault_idle()
BACK_AVAILABLE = ReportStatus(ConnectorStatus.AVAILABLE)
BEEP_NO = (Signal(Feedback.REJECTED),)


def fault_in_session(
    id_tag: IdTag | None, reason: StopReason, code: str = METER
) -> tuple[Action, ...]:
    return (
        SetRelay(closed=False),
        EndSession(S1, id_tag, 1000, reason),
        ReportStatus(ConnectorStatus.FAULTED, code),
        Signal(Feedback.FAULT),
    )


P = Phase
# Only the cells the connector handles; every other cell must be rejected as unexpected.
CELLS: dict[tuple[Phase, str], Cell] = {
    # AVAILABLE
    (P.AVAILABLE, "tap-alice"): Cell(
        True, (Signal(Feedback.READING), RequestAuthorization(ALICE)), P.AUTHORIZING
    ),
    (P.AVAILABLE, "tap-bob"): Cell(
        True, (Signal(Feedback.READING), RequestAuthorization(BOB)), P.AUTHORIZING
    ),
    (P.AVAILABLE, "sample"): Cell(True, (), P.AVAILABLE),
    (P.AVAILABLE, "lost"): Cell(True, FAULT_IDLE, P.FAULTED),
    (P.AVAILABLE, "hot"): Cell(True, fault_idle(HOT), P.FAULTED),
    (P.AVAILABLE, "remote-start"): Cell(True, START_S1, P.CHARGING),
    (P.AVAILABLE, "remote-start-auth"): Cell(True, (RequestAuthorization(ALICE),), P.AUTHORIZING),
    (P.AVAILABLE, "inoperative"): Cell(
        True, (ReportStatus(ConnectorStatus.UNAVAILABLE),), P.UNAVAILABLE
    ),
    (P.AVAILABLE, "operative"): Cell(True, (), P.AVAILABLE),
    (P.AVAILABLE, "reserve"): Cell(True, (ReportStatus(ConnectorStatus.RESERVED),), P.RESERVED),
    (P.AVAILABLE, "pause"): Cell(True, (), P.AVAILABLE),
    (P.AVAILABLE, "resume"): Cell(True, (), P.AVAILABLE),
    # AUTHORIZING
    (P.AUTHORIZING, "tap-alice"): Cell(False, BEEP_NO, P.AUTHORIZING, reason="busy"),
    (P.AUTHORIZING, "tap-bob"): Cell(False, BEEP_NO, P.AUTHORIZING, reason="busy"),
    (P.AUTHORIZING, "sample"): Cell(True, (), P.AUTHORIZING),
    (P.AUTHORIZING, "verdict"): Cell(True, START_S1, P.CHARGING),
    (P.AUTHORIZING, "lost"): Cell(True, FAULT_IDLE, P.FAULTED),
    (P.AUTHORIZING, "hot"): Cell(True, fault_idle(HOT), P.FAULTED),
    (P.AUTHORIZING, "stop"): Cell(True, (), P.AVAILABLE),
    (P.AUTHORIZING, "stop-now"): Cell(True, (), P.AVAILABLE),
    (P.AUTHORIZING, "inoperative"): Cell(
        True, (ReportStatus(ConnectorStatus.UNAVAILABLE),), P.UNAVAILABLE
    ),
    # Already operative: the card being decided keeps its place.
    (P.AUTHORIZING, "operative"): Cell(True, (), P.AUTHORIZING),
    # Its card claims no reservation: nothing to end.
    (P.AUTHORIZING, "unreserve"): Cell(False, (), P.AUTHORIZING, reason="no reservation 7"),
    (P.AUTHORIZING, "pause"): Cell(True, (), P.AUTHORIZING),
    (P.AUTHORIZING, "resume"): Cell(True, (), P.AUTHORIZING),
    # CHARGING
    (P.CHARGING, "tap-alice"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.CHARGING, "tap-bob"): Cell(False, BEEP_NO, P.CHARGING, reason="not the card"),
    (P.CHARGING, "sample"): Cell(True, (RecordMeterValues(S1, LATE),), P.CHARGING),
    (P.CHARGING, "lost"): Cell(True, fault_in_session(None, StopReason.OTHER), P.FAULTED),
    (P.CHARGING, "hot"): Cell(
        True, fault_in_session(None, StopReason.EMERGENCY_STOP, HOT), P.FAULTED
    ),
    (P.CHARGING, "stop"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.CHARGING, "stop-now"): Cell(
        True,
        (*BEGIN_STOP, EndSession(S1, None, 1000, StopReason.REBOOT), BACK_AVAILABLE),
        P.AVAILABLE,
    ),
    (P.CHARGING, "inoperative"): Cell(True, (), P.CHARGING, scheduled=True),
    (P.CHARGING, "operative"): Cell(True, (), P.CHARGING),
    (P.CHARGING, "invalid-stop"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.CHARGING, "invalid-suspend"): Cell(
        True,
        (SetRelay(closed=False), ReportStatus(ConnectorStatus.SUSPENDED_EVSE)),
        P.SUSPENDED,
        reason="withheld",
    ),
    (P.CHARGING, "invalid-allowance"): Cell(True, (), P.CHARGING, reason="500 Wh"),
    # A 0 A limit: SuspendedEVSE, the relay stays closed, the session goes on.
    (P.CHARGING, "pause"): Cell(
        True, (ReportStatus(ConnectorStatus.SUSPENDED_EVSE),), P.PAUSED, reason="limit 0"
    ),
    (P.CHARGING, "resume"): Cell(True, (), P.CHARGING),
    # PAUSED (ALICE's session at 0 A): a session like CHARGING's
    (P.PAUSED, "tap-alice"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.PAUSED, "tap-bob"): Cell(False, BEEP_NO, P.PAUSED, reason="not the card"),
    (P.PAUSED, "sample"): Cell(True, (RecordMeterValues(S1, LATE),), P.PAUSED),
    (P.PAUSED, "lost"): Cell(True, fault_in_session(None, StopReason.OTHER), P.FAULTED),
    (P.PAUSED, "hot"): Cell(
        True, fault_in_session(None, StopReason.EMERGENCY_STOP, HOT), P.FAULTED
    ),
    (P.PAUSED, "stop"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.PAUSED, "stop-now"): Cell(
        True,
        (*BEGIN_STOP, EndSession(S1, None, 1000, StopReason.REBOOT), BACK_AVAILABLE),
        P.AVAILABLE,
    ),
    (P.PAUSED, "inoperative"): Cell(True, (), P.PAUSED, scheduled=True),
    (P.PAUSED, "operative"): Cell(True, (), P.PAUSED),
    (P.PAUSED, "invalid-stop"): Cell(True, BEGIN_STOP, P.FINISHING),
    # Already SuspendedEVSE: only the relay opens.
    (P.PAUSED, "invalid-suspend"): Cell(
        True, (SetRelay(closed=False),), P.SUSPENDED, reason="withheld"
    ),
    (P.PAUSED, "invalid-allowance"): Cell(True, (), P.PAUSED, reason="500 Wh"),
    (P.PAUSED, "pause"): Cell(True, (), P.PAUSED),
    (P.PAUSED, "resume"): Cell(
        True, (ReportStatus(ConnectorStatus.CHARGING),), P.CHARGING, reason="above 0"
    ),
    # SUSPENDED
    (P.SUSPENDED, "tap-alice"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.SUSPENDED, "tap-bob"): Cell(False, BEEP_NO, P.SUSPENDED, reason="not the card"),
    (P.SUSPENDED, "sample"): Cell(True, (RecordMeterValues(S1, LATE),), P.SUSPENDED),
    (P.SUSPENDED, "lost"): Cell(True, fault_in_session(None, StopReason.OTHER), P.FAULTED),
    (P.SUSPENDED, "hot"): Cell(
        True, fault_in_session(None, StopReason.EMERGENCY_STOP, HOT), P.FAULTED
    ),
    (P.SUSPENDED, "stop"): Cell(True, BEGIN_STOP, P.FINISHING),
    (P.SUSPENDED, "stop-now"): Cell(
        True,
        (*BEGIN_STOP, EndSession(S1, None, 1000, StopReason.REBOOT), BACK_AVAILABLE),
        P.AVAILABLE,
    ),
    (P.SUSPENDED, "inoperative"): Cell(True, (), P.SUSPENDED, scheduled=True),
    (P.SUSPENDED, "operative"): Cell(True, (), P.SUSPENDED),
    # The card's invalidation holds the energy back whatever the limit.
    (P.SUSPENDED, "pause"): Cell(True, (), P.SUSPENDED),
    (P.SUSPENDED, "resume"): Cell(True, (), P.SUSPENDED),
    # FINISHING (stopped by ALICE's card)
    (P.FINISHING, "tap-alice"): Cell(False, BEEP_NO, P.FINISHING, reason="busy"),
    (P.FINISHING, "tap-bob"): Cell(False, BEEP_NO, P.FINISHING, reason="busy"),
    (P.FINISHING, "sample"): Cell(
        True, (EndSession(S1, ALICE, 2000, StopReason.LOCAL), BACK_AVAILABLE), P.AVAILABLE
    ),
    # The driver's stop stays the reason: the session was already ending.
    (P.FINISHING, "lost"): Cell(True, fault_in_session(ALICE, StopReason.LOCAL), P.FAULTED),
    (P.FINISHING, "hot"): Cell(True, fault_in_session(ALICE, StopReason.LOCAL, HOT), P.FAULTED),
    (P.FINISHING, "stop"): Cell(False, (), P.FINISHING, reason="already finishing"),
    (P.FINISHING, "stop-now"): Cell(
        True, (EndSession(S1, ALICE, 1000, StopReason.LOCAL), BACK_AVAILABLE), P.AVAILABLE
    ),
    (P.FINISHING, "inoperative"): Cell(True, (), P.FINISHING, scheduled=True),
    (P.FINISHING, "operative"): Cell(True, (), P.FINISHING),
    (P.FINISHING, "pause"): Cell(True, (), P.FINISHING),
    (P.FINISHING, "resume"): Cell(True, (), P.FINISHING),
    # FAULTED
    (P.FAULTED, "tap-alice"): Cell(False, (Signal(Feedback.FAULT),), P.FAULTED, reason="Faulted"),
    (P.FAULTED, "tap-bob"): Cell(False, (Signal(Feedback.FAULT),), P.FAULTED, reason="Faulted"),
    # A sample is watched only: the interlocks decide when the fault clears.
    (P.FAULTED, "sample"): Cell(True, (), P.FAULTED),
    (P.FAULTED, "lost"): Cell(False, (), P.FAULTED, reason="already raised"),
    # A more severe second fault: the CSMS learns the new errorCode, nothing else moves.
    (P.FAULTED, "hot"): Cell(True, (ReportStatus(ConnectorStatus.FAULTED, HOT),), P.FAULTED),
    (P.FAULTED, "lost-cleared"): Cell(True, (BACK_AVAILABLE,), P.AVAILABLE, reason="cleared"),
    (P.FAULTED, "inoperative"): Cell(True, (), P.FAULTED, reason="fault clears"),
    (P.FAULTED, "operative"): Cell(True, (), P.FAULTED, reason="fault clears"),
    (P.FAULTED, "pause"): Cell(True, (), P.FAULTED),
    (P.FAULTED, "resume"): Cell(True, (), P.FAULTED),
    # UNAVAILABLE
    (P.UNAVAILABLE, "tap-alice"): Cell(False, BEEP_NO, P.UNAVAILABLE, reason="Unavailable"),
    (P.UNAVAILABLE, "tap-bob"): Cell(False, BEEP_NO, P.UNAVAILABLE, reason="Unavailable"),
    (P.UNAVAILABLE, "sample"): Cell(True, (), P.UNAVAILABLE),
    (P.UNAVAILABLE, "lost"): Cell(True, FAULT_IDLE, P.FAULTED),
    (P.UNAVAILABLE, "hot"): Cell(True, fault_idle(HOT), P.FAULTED),
    (P.UNAVAILABLE, "inoperative"): Cell(True, (), P.UNAVAILABLE),
    (P.UNAVAILABLE, "operative"): Cell(True, (BACK_AVAILABLE,), P.AVAILABLE),
    (P.UNAVAILABLE, "pause"): Cell(True, (), P.UNAVAILABLE),
    (P.UNAVAILABLE, "resume"): Cell(True, (), P.UNAVAILABLE),
    # RESERVED (reservation 7 for ALICE, no parent)
    (P.RESERVED, "tap-alice"): Cell(
        True, (Signal(Feedback.READING), RequestAuthorization(ALICE)), P.AUTHORIZING
    ),
    (P.RESERVED, "tap-bob"): Cell(False, BEEP_NO, P.RESERVED, reason="reserved for another"),
    (P.RESERVED, "sample"): Cell(True, (), P.RESERVED),
    (P.RESERVED, "lost"): Cell(True, FAULT_IDLE, P.FAULTED),
    (P.RESERVED, "hot"): Cell(True, fault_idle(HOT), P.FAULTED),
    (P.RESERVED, "remote-start"): Cell(True, START_S1_R7, P.CHARGING),
    (P.RESERVED, "remote-start-auth"): Cell(True, (RequestAuthorization(ALICE),), P.AUTHORIZING),
    (P.RESERVED, "inoperative"): Cell(
        True, (ReportStatus(ConnectorStatus.UNAVAILABLE),), P.UNAVAILABLE, reason="7 ends"
    ),
    (P.RESERVED, "operative"): Cell(True, (), P.RESERVED),
    (P.RESERVED, "reserve"): Cell(True, (), P.RESERVED, reason="replaced"),
    (P.RESERVED, "unreserve"): Cell(True, (BACK_AVAILABLE,), P.AVAILABLE),
    (P.RESERVED, "pause"): Cell(True, (), P.RESERVED),
    (P.RESERVED, "resume"): Cell(True, (), P.RESERVED),
}


@pytest.mark.parametrize(
    ("phase", "label"),
    [(p, label) for p in Phase for label in EVENTS],
    ids=lambda v: getattr(v, "value", v),
)
def test_every_cell(phase: Phase, label: str) -> None:
    c = in_phase(phase)
    out = c.handle(EVENTS[label], 100.0)
    cell = CELLS.get((phase, label))
    if cell is None:
        assert not out.accepted
        assert out.actions == ()
        assert "not expected" in out.reason and phase.value in out.reason
        assert c.phase is phase
        return
    assert (out.accepted, out.actions, c.phase) == (cell.accepted, cell.actions, cell.after)
    assert out.scheduled is cell.scheduled
    assert cell.reason in out.reason
    if not out.accepted:
        assert out.reason, "a rejected cell says why"


def test_the_table_covers_every_event_type() -> None:
    """The cell list above is exhaustive: every Event type of the union is exercised."""
    assert {type(e) for e in EVENTS.values()} == set(get_args(Event))


@pytest.mark.parametrize(
    ("phase", "status"),
    [
        (Phase.AVAILABLE, ConnectorStatus.AVAILABLE),
        (Phase.AUTHORIZING, ConnectorStatus.AVAILABLE),  # a card being decided is not Preparing
        (Phase.CHARGING, ConnectorStatus.CHARGING),
        (Phase.SUSPENDED, ConnectorStatus.SUSPENDED_EVSE),
        (Phase.FINISHING, ConnectorStatus.FINISHING),
        (Phase.FAULTED, ConnectorStatus.FAULTED),
        (Phase.UNAVAILABLE, ConnectorStatus.UNAVAILABLE),
        (Phase.PAUSED, ConnectorStatus.SUSPENDED_EVSE),
        (Phase.RESERVED, ConnectorStatus.RESERVED),
    ],
)
def test_status_of_every_phase(phase: Phase, status: ConnectorStatus) -> None:
    assert in_phase(phase).status is status


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_is_reachable(phase: Phase) -> None:
    assert in_phase(phase).phase is phase


# -- start-up ------------------------------------------------------------------------


def test_start_opens_relay_and_reports_available() -> None:
    assert new_connector().start() == (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.AVAILABLE),
    )


def test_inoperative_at_start_reports_unavailable_and_refuses_cards() -> None:
    c = new_connector(operative=False)
    assert c.phase is Phase.UNAVAILABLE and not c.operative
    assert c.start() == (SetRelay(closed=False), ReportStatus(ConnectorStatus.UNAVAILABLE))
    c.handle(sample(1, 1000), 0.0)
    assert not c.handle(TokenPresented(ALICE), 1.0).accepted
    assert not c.handle(RemoteStartRequested(ALICE, authorize=False), 1.0).accepted
    assert c.handle(AvailabilityRequested(operative=True), 2.0).actions == (BACK_AVAILABLE,)
    assert c.handle(TokenPresented(ALICE), 3.0).accepted


# -- the happy path, step by step ---------------------------------------------------


def test_tap_asks_for_authorization() -> None:
    c = in_phase(Phase.AVAILABLE)
    out = c.handle(TokenPresented(ALICE), 1.0)
    assert out.accepted
    assert out.actions == (Signal(Feedback.READING), RequestAuthorization(ALICE))
    assert c.phase is Phase.AUTHORIZING and c.pending_tag == ALICE


def test_accepted_card_starts_session_durably_before_relay() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 2.0)
    assert out.actions == START_S1
    assert c.phase is Phase.CHARGING and c.pending_tag is None
    assert c.session == ActiveSession(S1, ALICE, 1000)


@pytest.mark.parametrize("status", [s for s in AuthorizationStatus if s is not ACCEPTED])
def test_refused_card_gets_feedback_and_no_relay(status: AuthorizationStatus) -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(ALICE, status), 2.0)
    assert out.actions == (Signal(Feedback.REJECTED),)
    assert status.value in out.reason
    assert c.phase is Phase.AVAILABLE
    assert c.session is None and c.pending_tag is None


def test_accepted_without_any_telemetry_refuses_to_start() -> None:
    c = new_connector()
    c.handle(TokenPresented(ALICE), 0.0)
    out = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 0.1)
    assert out.actions == (Signal(Feedback.FAULT),)
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_verdict_for_another_card_is_rejected() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED), 2.0)
    assert not out.accepted and out.actions == () and out.reason
    assert c.phase is Phase.AUTHORIZING and c.pending_tag == ALICE


def test_same_card_stops_relay_first_then_waits_for_final_reading() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(TokenPresented(ALICE), 20.0)
    assert out.actions == BEGIN_STOP
    assert c.phase is Phase.FINISHING
    out = c.handle(sample(9, 1500), 20.5)
    assert out.actions == (EndSession(S1, ALICE, 1500, StopReason.LOCAL), BACK_AVAILABLE)
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_graceful_stop_request_waits_for_reading() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(StopRequested(StopReason.REMOTE), 3.0)
    assert out.actions == BEGIN_STOP
    assert c.phase is Phase.FINISHING
    end = c.handle(sample(7, 1200), 3.5).actions[0]
    assert end == EndSession(S1, None, 1200, StopReason.REMOTE)


def test_immediate_stop_ends_with_last_reading() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1100), 2.0)
    out = c.handle(StopRequested(StopReason.REBOOT, immediate=True), 3.0)
    assert out.actions == (
        *BEGIN_STOP,
        EndSession(S1, None, 1100, StopReason.REBOOT),
        BACK_AVAILABLE,
    )


def test_reset_while_authorizing_forgets_the_card_and_a_late_verdict_is_rejected() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(StopRequested(StopReason.SOFT_RESET), 2.0)
    assert out.accepted and out.actions == ()
    assert c.phase is Phase.AVAILABLE and c.pending_tag is None
    late = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 3.0)
    assert not late.accepted and late.actions == ()
    assert c.session is None


def test_second_session_gets_a_new_id_and_starts_from_the_new_register() -> None:
    c = in_phase(Phase.FINISHING)
    c.handle(sample(2, 1800), 6.0)
    c.handle(TokenPresented(BOB), 7.0)
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED), 7.1)
    assert out.actions[1] == BeginSession(SessionId("s2"), BOB, 1800)


# -- remote start -----------------------------------------------------------------------


def test_remote_start_without_authorization_starts_at_once() -> None:
    c = in_phase(Phase.AVAILABLE)
    out = c.handle(RemoteStartRequested(ALICE, authorize=False), 2.0)
    assert out.accepted
    assert out.actions == START_S1
    assert c.phase is Phase.CHARGING and c.session == ActiveSession(S1, ALICE, 1000)
    # The session it started behaves like any other: the same card stops it.
    assert c.handle(TokenPresented(ALICE), 3.0).actions == BEGIN_STOP


def test_remote_start_with_authorization_goes_through_authorizing() -> None:
    c = in_phase(Phase.AVAILABLE)
    out = c.handle(RemoteStartRequested(ALICE, authorize=True), 2.0)
    # No READING beep: nobody tapped the reader.
    assert out.accepted and out.actions == (RequestAuthorization(ALICE),)
    assert c.phase is Phase.AUTHORIZING and c.pending_tag == ALICE
    assert c.status is ConnectorStatus.AVAILABLE
    assert c.handle(AuthorizationResolved(ALICE, ACCEPTED), 2.5).actions == START_S1
    assert c.phase is Phase.CHARGING


def test_remote_start_with_authorization_refused_leaves_connector_available() -> None:
    c = in_phase(Phase.AVAILABLE)
    c.handle(RemoteStartRequested(ALICE, authorize=True), 2.0)
    out = c.handle(AuthorizationResolved(ALICE, BLOCKED), 2.5)
    assert out.actions == (Signal(Feedback.REJECTED),)
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_remote_start_without_telemetry_is_rejected_without_actions() -> None:
    c = new_connector()
    out = c.handle(RemoteStartRequested(ALICE, authorize=False), 1.0)
    assert not out.accepted and out.actions == ()
    assert "meter" in out.reason
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_remote_start_with_authorization_but_no_telemetry_faults_at_the_verdict() -> None:
    c = new_connector()
    assert c.handle(RemoteStartRequested(ALICE, authorize=True), 1.0).accepted
    out = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 1.5)
    assert out.actions == (Signal(Feedback.FAULT),)
    assert c.phase is Phase.AVAILABLE and c.session is None


# -- ChangeAvailability --------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.CHARGING, Phase.SUSPENDED])
def test_inoperative_during_a_session_is_scheduled_and_applies_when_it_ends(
    phase: Phase,
) -> None:
    c = in_phase(phase)
    out = c.handle(AvailabilityRequested(operative=False), 10.0)
    assert out.accepted and out.scheduled and out.actions == ()
    assert c.phase is phase and not c.operative
    # The session is not cut: samples still flow into it.
    assert c.handle(sample(2, 1300), 20.0).actions == (RecordMeterValues(S1, sample(2, 1300)),)
    assert c.handle(TokenPresented(ALICE), 21.0).actions == BEGIN_STOP
    out = c.handle(sample(3, 1310), 21.5)
    assert out.actions == (
        EndSession(S1, ALICE, 1310, StopReason.LOCAL),
        ReportStatus(ConnectorStatus.UNAVAILABLE),
    )
    assert c.phase is Phase.UNAVAILABLE and c.status is ConnectorStatus.UNAVAILABLE
    assert c.handle(TokenPresented(BOB), 22.0).actions == BEEP_NO


def test_inoperative_while_finishing_is_scheduled_too() -> None:
    c = in_phase(Phase.FINISHING)
    assert c.handle(AvailabilityRequested(operative=False), 6.0).scheduled
    out = c.handle(sample(2, 1100), 6.5)
    assert out.actions[1] == ReportStatus(ConnectorStatus.UNAVAILABLE)
    assert c.phase is Phase.UNAVAILABLE


def test_scheduled_inoperative_applies_after_an_immediate_stop() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(AvailabilityRequested(operative=False), 10.0)
    out = c.handle(StopRequested(StopReason.HARD_RESET, immediate=True), 11.0)
    assert out.actions[-1] == ReportStatus(ConnectorStatus.UNAVAILABLE)
    assert c.phase is Phase.UNAVAILABLE


def test_operative_again_clears_the_scheduled_change() -> None:
    c = in_phase(Phase.CHARGING)
    assert c.handle(AvailabilityRequested(operative=False), 10.0).scheduled
    out = c.handle(AvailabilityRequested(operative=True), 11.0)
    assert out.accepted and not out.scheduled and out.actions == ()
    c.handle(TokenPresented(ALICE), 12.0)
    assert c.handle(sample(2, 1100), 12.5).actions[-1] == BACK_AVAILABLE
    assert c.phase is Phase.AVAILABLE and c.operative


def test_scheduled_inoperative_survives_a_fault_and_applies_on_recovery() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(AvailabilityRequested(operative=False), 10.0)
    c.handle(FaultRaised(Fault.TELEMETRY_LOST), 11.0)
    assert c.phase is Phase.FAULTED
    out = c.handle(FaultCleared(Fault.TELEMETRY_LOST), 12.0)
    assert out.actions == (ReportStatus(ConnectorStatus.UNAVAILABLE),)
    assert c.phase is Phase.UNAVAILABLE


@pytest.mark.parametrize(
    ("operative", "status", "phase"),
    [
        (False, ConnectorStatus.UNAVAILABLE, Phase.UNAVAILABLE),
        (True, ConnectorStatus.AVAILABLE, Phase.AVAILABLE),
    ],
)
def test_availability_while_faulted_applies_on_recovery(
    operative: bool, status: ConnectorStatus, phase: Phase
) -> None:
    c = in_phase(Phase.FAULTED)
    c.handle(AvailabilityRequested(operative=False), 1.0)
    out = c.handle(AvailabilityRequested(operative=operative), 2.0)
    assert out.accepted and not out.scheduled and out.actions == ()
    assert c.phase is Phase.FAULTED and c.status is ConnectorStatus.FAULTED
    assert c.handle(FaultCleared(Fault.TELEMETRY_LOST), 3.0).actions == (ReportStatus(status),)
    assert c.phase is phase


def test_inoperative_while_authorizing_drops_the_pending_card() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AvailabilityRequested(operative=False), 2.0)
    assert out.actions == (ReportStatus(ConnectorStatus.UNAVAILABLE),) and not out.scheduled
    assert c.pending_tag is None
    late = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 3.0)
    assert not late.accepted and late.actions == () and c.session is None


def test_operative_while_authorizing_keeps_the_pending_card() -> None:
    """ChangeAvailability(0, Operative) reaches every connector; it must not eat a tap."""
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AvailabilityRequested(operative=True), 2.0)
    assert out.accepted and out.actions == ()
    assert c.phase is Phase.AUTHORIZING and c.pending_tag == ALICE
    assert c.handle(AuthorizationResolved(ALICE, ACCEPTED), 3.0).actions == START_S1


def test_resumed_session_on_an_inoperative_connector_ends_unavailable() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume, operative=False)
    assert c.start() == (SetRelay(closed=False), ReportStatus(ConnectorStatus.FINISHING))
    out = c.handle(sample(1, 950), 0.5)
    assert out.actions == (
        EndSession(SessionId("old"), None, 950, StopReason.POWER_LOSS),
        ReportStatus(ConnectorStatus.UNAVAILABLE),
    )
    assert c.phase is Phase.UNAVAILABLE


# -- the CSMS invalidates the card of a running session ---------------------------------


def test_invalidated_with_stop_finishes_with_deauthorized_after_final_sample() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1200), 2.0)
    out = c.handle(SessionInvalidated(BLOCKED, stop=True, allowance_wh=0), 3.0)
    assert out.accepted and out.actions == BEGIN_STOP
    assert c.phase is Phase.FINISHING and c.session is not None
    out = c.handle(sample(3, 1210), 3.5)
    assert out.actions == (EndSession(S1, None, 1210, StopReason.DEAUTHORIZED), BACK_AVAILABLE)
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_invalidated_without_stop_suspends_until_the_same_card() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(SessionInvalidated(AuthorizationStatus.EXPIRED, stop=False, allowance_wh=0), 3)
    assert out.actions == (SetRelay(closed=False), ReportStatus(ConnectorStatus.SUSPENDED_EVSE))
    assert c.phase is Phase.SUSPENDED and c.session == ActiveSession(S1, ALICE, 1000)
    # Samples keep coming (MeterValues still paced) but never touch the relay.
    assert c.handle(sample(2, 1000), 50.0).actions == (RecordMeterValues(S1, sample(2, 1000)),)
    assert c.handle(sample(3, 1000), 51.0).actions == ()
    assert c.handle(TokenPresented(BOB), 52.0).actions == BEEP_NO
    assert c.phase is Phase.SUSPENDED
    assert c.handle(TokenPresented(ALICE), 53.0).actions == BEGIN_STOP
    out = c.handle(sample(4, 1001), 53.5)
    assert out.actions == (EndSession(S1, ALICE, 1001, StopReason.LOCAL), BACK_AVAILABLE)


def test_suspended_session_ends_on_a_stop_request() -> None:
    c = in_phase(Phase.SUSPENDED)
    assert c.handle(StopRequested(StopReason.REMOTE), 5.0).actions == BEGIN_STOP
    out = c.handle(sample(2, 1000), 5.5)
    assert out.actions == (EndSession(S1, None, 1000, StopReason.REMOTE), BACK_AVAILABLE)


@pytest.mark.parametrize(
    ("stop", "withheld", "after"),
    [
        (True, BEGIN_STOP, Phase.FINISHING),
        (
            False,
            (SetRelay(closed=False), ReportStatus(ConnectorStatus.SUSPENDED_EVSE)),
            Phase.SUSPENDED,
        ),
    ],
)
def test_allowance_keeps_charging_until_the_register_passes_peak_plus_allowance(
    stop: bool, withheld: tuple[Action, ...], after: Phase
) -> None:
    c = in_phase(Phase.CHARGING, interval=math.inf)
    c.handle(sample(2, 1200), 2.0)  # peak 1200
    out = c.handle(SessionInvalidated(BLOCKED, stop=stop, allowance_wh=300), 3.0)
    assert out.accepted and out.actions == () and "300 Wh" in out.reason
    assert c.phase is Phase.CHARGING
    assert c.handle(sample(3, 1400), 4.0).actions == ()
    assert c.handle(sample(4, 1499), 5.0).actions == ()
    assert c.phase is Phase.CHARGING
    assert c.handle(sample(5, 1500), 6.0).actions == withheld  # 300 Wh used up
    assert c.phase is after
    if stop:
        end = c.handle(sample(6, 1502), 6.5).actions
        assert end == (EndSession(S1, None, 1502, StopReason.DEAUTHORIZED), BACK_AVAILABLE)
    else:
        # Once suspended, later samples do not withhold (or report) again.
        assert c.handle(sample(6, 1502), 7.0).actions == ()
        assert c.phase is Phase.SUSPENDED


def test_allowance_is_counted_from_the_peak_not_from_a_dropped_register() -> None:
    c = in_phase(Phase.CHARGING, interval=math.inf)
    c.handle(sample(2, 1500), 2.0)
    c.handle(sample(3, 20), 2.5)  # meter reset: the register dropped
    c.handle(SessionInvalidated(BLOCKED, stop=True, allowance_wh=100), 3.0)
    assert c.handle(sample(4, 1550), 4.0).actions == ()
    assert c.handle(sample(5, 1600), 5.0).actions == BEGIN_STOP


def test_allowance_sample_crossing_the_limit_also_reports_its_meter_values() -> None:
    c = in_phase(Phase.CHARGING, interval=0.0)
    c.handle(SessionInvalidated(BLOCKED, stop=True, allowance_wh=10), 2.0)
    out = c.handle(sample(2, 1010), 3.0)
    assert out.actions == (RecordMeterValues(S1, sample(2, 1010)), *BEGIN_STOP)


def test_negative_allowance_acts_like_none() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(SessionInvalidated(BLOCKED, stop=True, allowance_wh=-5), 3.0)
    assert out.actions == BEGIN_STOP and c.phase is Phase.FINISHING


def test_invalidation_does_not_leak_into_the_next_session() -> None:
    c = in_phase(Phase.CHARGING, interval=math.inf)
    c.handle(SessionInvalidated(BLOCKED, stop=True, allowance_wh=100), 2.0)
    c.handle(TokenPresented(ALICE), 3.0)
    c.handle(sample(2, 1050), 3.5)  # session s1 ends well below its allowance
    c.handle(TokenPresented(BOB), 4.0)
    c.handle(AuthorizationResolved(BOB, ACCEPTED), 4.1)  # s2 from 1050
    assert c.handle(sample(3, 5000), 5.0).actions == ()
    assert c.phase is Phase.CHARGING


# -- safety: the relay ---------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("label", list(EVENTS))
def test_relay_closes_only_when_entering_charging(phase: Phase, label: str) -> None:
    c = in_phase(phase)
    actions = c.handle(EVENTS[label], 100.0).actions
    if SetRelay(closed=True) in actions:
        assert phase in (Phase.AVAILABLE, Phase.AUTHORIZING, Phase.RESERVED)
        assert c.phase is Phase.CHARGING
        # Durable before energized: the session row comes first.
        assert isinstance(actions[actions.index(SetRelay(closed=True)) - 1], BeginSession)


@pytest.mark.parametrize("seed", range(40))
def test_random_walks_keep_the_invariants(seed: int) -> None:
    """Relay closed iff CHARGING or PAUSED; a session iff a session phase; a pending card
    iff AUTHORIZING; a fault iff FAULTED; a reservation iff RESERVED, or AUTHORIZING the
    card that claims it."""
    rng = random.Random(seed)
    c = new_connector(interval=rng.choice([0.0, 5.0, math.inf]))
    relay = relay_closed_after(c.start(), before=True)
    energy = 1000
    floor = 0  # what the running session's meterStop may not go below
    now = 0.0
    events = [
        *EVENTS.values(),
        *(FaultRaised(f) for f in Fault),
        *(FaultCleared(f) for f in Fault),
        ReservationMade(8, BOB, FLEET),
        ReservationEnded(8),
        AuthorizationResolved(BOB, ACCEPTED, FLEET),
        AuthorizationResolved(ALICE, ACCEPTED, FLEET),
        AuthorizationResolved(BOB, BLOCKED),
    ]
    for step in range(300):
        now += rng.random() * 3
        if rng.random() < 0.4:
            energy += rng.randrange(-5, 60)  # sometimes backwards
            event: Event = sample(step, max(0, energy))
        else:
            event = rng.choice(events)
        before = c.phase
        out = c.handle(event, now)
        if not out.accepted and c.phase is before:
            assert out.reason
        relay = relay_closed_after(out.actions, relay)
        assert relay is (c.phase in ENERGIZED_PHASES), (step, before, event, c.phase)
        assert (c.session is not None) is (
            c.phase in (Phase.CHARGING, Phase.PAUSED, Phase.SUSPENDED, Phase.FINISHING)
        )
        assert (c.pending_tag is not None) is (c.phase is Phase.AUTHORIZING)
        assert bool(c.faults) is (c.phase is Phase.FAULTED)
        if c.phase is Phase.RESERVED:
            assert c.reservation is not None
        elif c.phase is not Phase.AUTHORIZING:
            assert c.reservation is None, (step, before, event, c.phase)
        for action in out.actions:
            if isinstance(action, BeginSession):
                floor = action.meter_start_wh
            elif isinstance(action, EndSession):
                assert action.meter_stop_wh >= floor
        if c.session is not None and isinstance(event, TelemetrySample):
            floor = max(floor, event.energy_wh)
        reported = [a.status for a in out.actions if isinstance(a, ReportStatus)]
        if reported:
            assert reported[-1] is c.status, (before, event)


# -- the meter never goes backwards ---------------------------------------------------


def test_register_going_backwards_never_makes_negative_energy() -> None:
    c = in_phase(Phase.FINISHING)
    end = c.handle(sample(1, 5), 6.0).actions[0]
    assert isinstance(end, EndSession) and end.meter_stop_wh == 1000


def test_register_dropping_mid_session_keeps_the_energy_already_seen() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1500), 2.0)  # 500 Wh flowed
    c.handle(TokenPresented(ALICE), 3.0)
    end = c.handle(sample(3, 20), 3.5).actions[0]  # meter swapped / reset: register tiny
    assert isinstance(end, EndSession) and end.meter_stop_wh == 1500


@pytest.mark.parametrize(
    "ending",
    [StopRequested(StopReason.REBOOT, immediate=True), FaultRaised(Fault.TELEMETRY_LOST)],
    ids=["immediate-stop", "telemetry-lost"],
)
def test_peak_is_kept_when_the_session_ends_without_a_final_sample(ending: Event) -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1700), 2.0)
    c.handle(sample(3, 300), 3.0)  # register dropped
    end = next(a for a in c.handle(ending, 4.0).actions if isinstance(a, EndSession))
    assert end.meter_stop_wh == 1700


def test_peak_is_kept_while_suspended() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1400), 2.0)
    c.handle(SessionInvalidated(BLOCKED, stop=False, allowance_wh=0), 3.0)
    c.handle(sample(3, 100), 4.0)
    c.handle(StopRequested(StopReason.REMOTE), 5.0)
    end = c.handle(sample(4, 110), 5.5).actions[0]
    assert isinstance(end, EndSession) and end.meter_stop_wh == 1400


# -- MeterValues pacing -----------------------------------------------------------------


def test_meter_values_are_paced_by_the_interval() -> None:
    c = in_phase(Phase.CHARGING)  # session began at t=1.1, interval 10 s
    assert c.handle(sample(2, 1010), 5.0).actions == ()
    out = c.handle(sample(3, 1030), 11.2)
    assert out.actions == (RecordMeterValues(S1, sample(3, 1030)),)
    assert c.handle(sample(4, 1040), 15.0).actions == ()
    assert c.handle(sample(5, 1060), 21.1).actions == ()  # 9.9 s after the last one
    assert len(c.handle(sample(6, 1070), 21.3).actions) == 1


def test_interval_zero_records_every_sample() -> None:
    c = in_phase(Phase.CHARGING, interval=0.0)
    for n in range(2, 6):
        s = sample(n, 1000 + n)
        assert c.handle(s, 1.1 + n / 100).actions == (RecordMeterValues(S1, s),)


def test_infinite_interval_never_records_meter_values() -> None:
    c = in_phase(Phase.CHARGING, interval=math.inf)
    for n, now in enumerate([1.2, 60.0, 3600.0, 1e9, 1e300], start=2):
        assert c.handle(sample(n, 1000 + n), now).actions == ()
    c.handle(SessionInvalidated(BLOCKED, stop=False, allowance_wh=0), 1e300)
    assert c.handle(sample(99, 2000), 2e300).actions == ()


def test_no_meter_values_outside_a_session() -> None:
    for phase in (Phase.AVAILABLE, Phase.AUTHORIZING, Phase.UNAVAILABLE):
        c = in_phase(phase, interval=0.0)
        assert c.handle(sample(2, 1100), 500.0).actions == ()


def test_pacing_restarts_with_each_session() -> None:
    c = in_phase(Phase.FINISHING)
    c.handle(sample(2, 1100), 30.0)  # s1 ends
    c.handle(TokenPresented(BOB), 40.0)
    c.handle(AuthorizationResolved(BOB, ACCEPTED), 40.0)
    assert c.handle(sample(3, 1110), 45.0).actions == ()  # 5 s into s2
    assert c.handle(sample(4, 1120), 50.0).actions == (
        RecordMeterValues(SessionId("s2"), sample(4, 1120)),
    )


def test_interval_changed_at_runtime_takes_effect() -> None:
    c = in_phase(Phase.CHARGING, interval=math.inf)
    assert c.handle(sample(2, 1010), 50.0).actions == ()
    c.meter_value_interval_s = 5.0  # MeterValueSampleInterval changed by the CSMS
    assert len(c.handle(sample(3, 1020), 51.0).actions) == 1
    assert c.handle(sample(4, 1030), 52.0).actions == ()


# -- lost telemetry: safety -------------------------------------------------------


def test_lost_telemetry_while_charging_opens_relay_and_closes_session() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1300), 3.0)
    out = c.handle(FaultRaised(Fault.TELEMETRY_LOST), 20.0)
    assert out.actions == (
        SetRelay(closed=False),
        EndSession(S1, None, 1300, StopReason.OTHER),
        ReportStatus(ConnectorStatus.FAULTED, METER),
        Signal(Feedback.FAULT),
    )
    assert c.phase is Phase.FAULTED and c.session is None


def test_faulted_refuses_cards_until_the_fault_clears() -> None:
    c = in_phase(Phase.FAULTED)
    out = c.handle(TokenPresented(ALICE), 1.0)
    assert not out.accepted and out.actions == (Signal(Feedback.FAULT),)
    # Telemetry flowing again is not enough: the interlocks clear the fault (hysteresis).
    assert c.handle(sample(1, 1000), 2.0).actions == ()
    assert c.phase is Phase.FAULTED
    out = c.handle(FaultCleared(Fault.TELEMETRY_LOST), 3.0)
    assert out.actions == (BACK_AVAILABLE,)
    assert c.phase is Phase.AVAILABLE and c.faults == frozenset()
    assert c.handle(TokenPresented(ALICE), 4.0).accepted


def test_unavailable_connector_faults_and_recovers_unavailable() -> None:
    c = in_phase(Phase.UNAVAILABLE)
    c.handle(FaultRaised(Fault.TELEMETRY_LOST), 2.0)
    assert c.phase is Phase.FAULTED
    assert c.handle(FaultCleared(Fault.TELEMETRY_LOST), 3.0).actions == (
        ReportStatus(ConnectorStatus.UNAVAILABLE),
    )
    assert c.phase is Phase.UNAVAILABLE


# -- crash recovery -----------------------------------------------------------------


def test_resumed_session_is_closed_with_first_reading_as_power_loss() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    assert c.phase is Phase.FINISHING and c.session == resume
    assert c.start() == (SetRelay(closed=False), ReportStatus(ConnectorStatus.FINISHING))
    out = c.handle(sample(1, 950), 0.5)
    assert out.actions == (
        EndSession(SessionId("old"), None, 950, StopReason.POWER_LOSS),
        BACK_AVAILABLE,
    )
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_resumed_session_never_stops_below_its_last_reported_reading() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900, last_reading_wh=1400)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    end = c.handle(sample(1, 950), 0.5).actions[0]
    assert end == EndSession(SessionId("old"), None, 1400, StopReason.POWER_LOSS)


def test_resumed_session_whose_telemetry_never_comes_closes_on_loss() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900, last_reading_wh=1000)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    out = c.handle(FaultRaised(Fault.TELEMETRY_LOST), 5.0)
    assert out.actions == (
        SetRelay(closed=False),
        EndSession(SessionId("old"), None, 1000, StopReason.POWER_LOSS),
        ReportStatus(ConnectorStatus.FAULTED, METER),
        Signal(Feedback.FAULT),
    )


def test_resumed_session_refuses_a_tap_until_closed() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    assert c.handle(TokenPresented(ALICE), 0.1).actions == BEEP_NO
    assert c.phase is Phase.FINISHING


# -- interlocks: faults raised and cleared -------------------------------------------

REASONS = {
    Fault.OVER_CURRENT: (StopReason.EMERGENCY_STOP, "OverCurrentFailure"),
    Fault.RELAY_MISMATCH: (StopReason.EMERGENCY_STOP, "PowerSwitchFailure"),
    Fault.OVER_TEMPERATURE: (StopReason.EMERGENCY_STOP, "HighTemperature"),
    Fault.OVER_VOLTAGE: (StopReason.EMERGENCY_STOP, "OverVoltage"),
    Fault.UNDER_VOLTAGE: (StopReason.POWER_LOSS, "UnderVoltage"),
    Fault.TELEMETRY_LOST: (StopReason.OTHER, "PowerMeterFailure"),
    Fault.REGISTER_BACKWARDS: (StopReason.OTHER, "PowerMeterFailure"),
    Fault.READER_FAILED: (StopReason.OTHER, "ReaderFailure"),
    Fault.STORAGE_FAILED: (StopReason.OTHER, "InternalError"),
    Fault.LOOP_STALLED: (StopReason.OTHER, "InternalError"),
}


def test_every_fault_has_a_stop_reason_and_an_error_code() -> None:
    assert set(REASONS) == set(Fault)


@pytest.mark.parametrize("fault", list(Fault))
def test_each_fault_while_charging_ends_the_session_with_its_reason_and_code(
    fault: Fault,
) -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1250), 2.0)
    out = c.handle(FaultRaised(fault), 3.0)
    reason, code = REASONS[fault]
    assert out.accepted and fault in out.reason
    # Relay first, then the session's end with the last reading, then the status.
    assert out.actions == (
        SetRelay(closed=False),
        EndSession(S1, None, 1250, reason),
        ReportStatus(ConnectorStatus.FAULTED, code),
        Signal(Feedback.FAULT),
    )
    assert c.phase is Phase.FAULTED and c.faults == {fault} and c.error_code == code
    out = c.handle(FaultCleared(fault), 4.0)
    assert out.actions == (BACK_AVAILABLE,)
    assert c.phase is Phase.AVAILABLE and c.error_code == "NoError"


def test_the_most_severe_fault_names_the_error_code_until_it_clears() -> None:
    c = in_phase(Phase.AVAILABLE)
    assert c.handle(FaultRaised(Fault.READER_FAILED), 1.0).actions == fault_idle("ReaderFailure")
    # More severe: the CSMS hears of it.
    out = c.handle(FaultRaised(Fault.OVER_CURRENT), 2.0)
    assert out.actions == (ReportStatus(ConnectorStatus.FAULTED, "OverCurrentFailure"),)
    # Less severe than what is shown: nothing new to say.
    out = c.handle(FaultRaised(Fault.TELEMETRY_LOST), 3.0)
    assert out.accepted and out.actions == ()
    assert c.faults == {Fault.READER_FAILED, Fault.OVER_CURRENT, Fault.TELEMETRY_LOST}
    # A less severe one clears: still over-current, nothing said.
    assert c.handle(FaultCleared(Fault.READER_FAILED), 4.0).actions == ()
    # The shown one clears: the next most severe is reported.
    out = c.handle(FaultCleared(Fault.OVER_CURRENT), 5.0)
    assert out.actions == (ReportStatus(ConnectorStatus.FAULTED, "PowerMeterFailure"),)
    assert c.phase is Phase.FAULTED
    assert c.handle(FaultCleared(Fault.TELEMETRY_LOST), 6.0).actions == (BACK_AVAILABLE,)


def test_a_fault_twice_or_a_clear_of_what_is_not_raised_is_rejected() -> None:
    c = in_phase(Phase.FAULTED)  # telemetry lost
    again = c.handle(FaultRaised(Fault.TELEMETRY_LOST), 1.0)
    assert not again.accepted and again.actions == () and "already" in again.reason
    stray = c.handle(FaultCleared(Fault.OVER_CURRENT), 2.0)
    assert not stray.accepted and stray.actions == () and "not raised" in stray.reason
    assert c.phase is Phase.FAULTED and c.faults == {Fault.TELEMETRY_LOST}


def test_a_fault_while_authorizing_forgets_the_card_and_its_late_verdict() -> None:
    c = in_phase(Phase.AUTHORIZING)
    c.handle(FaultRaised(Fault.OVER_TEMPERATURE), 2.0)
    assert c.pending_tag is None and c.phase is Phase.FAULTED
    late = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 2.5)
    assert not late.accepted and late.actions == () and c.session is None
    c.handle(FaultCleared(Fault.OVER_TEMPERATURE), 3.0)
    # Nothing left of the old tap: the same card is a fresh tap.
    assert c.handle(TokenPresented(ALICE), 4.0).actions == (
        Signal(Feedback.READING),
        RequestAuthorization(ALICE),
    )


def test_remote_start_is_refused_while_faulted() -> None:
    c = in_phase(Phase.FAULTED)
    out = c.handle(RemoteStartRequested(ALICE, authorize=False), 1.0)
    assert not out.accepted and SetRelay(closed=True) not in out.actions


def test_a_fault_while_finishing_ends_with_the_final_reading_it_has() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1300), 2.0)
    c.handle(StopRequested(StopReason.REMOTE), 3.0)
    out = c.handle(FaultRaised(Fault.OVER_CURRENT), 3.2)
    # The remote stop came first and stays the reason.
    assert EndSession(S1, None, 1300, StopReason.REMOTE) in out.actions
    assert c.phase is Phase.FAULTED


# -- reservations -------------------------------------------------------------------


def reserved(reservation: ReservationMade) -> Connector:
    c = new_connector()
    assert c.handle(sample(1, 1000), 0.0).accepted
    assert c.handle(reservation, 0.5).actions == (ReportStatus(ConnectorStatus.RESERVED),)
    return c


def test_the_reserved_card_starts_in_any_case_and_the_session_ends_the_reservation() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    assert c.handle(TokenPresented(IdTag("04a1b2c3")), 1.0).accepted
    # Deciding the reserved card: the connector still reports Reserved.
    assert (c.phase, c.status, c.reservation_id) == (Phase.AUTHORIZING, ConnectorStatus.RESERVED, 7)
    out = c.handle(AuthorizationResolved(IdTag("04a1b2c3"), ACCEPTED), 1.1)
    assert BeginSession(S1, IdTag("04a1b2c3"), 1000, R7) in out.actions
    assert c.phase is Phase.CHARGING and c.reservation is None


def test_a_refused_reserved_card_leaves_the_reservation_in_place() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    c.handle(TokenPresented(ALICE), 1.0)
    out = c.handle(AuthorizationResolved(ALICE, BLOCKED), 1.1)
    assert out.actions == (Signal(Feedback.REJECTED),)
    assert (c.phase, c.status, c.reservation_id) == (Phase.RESERVED, ConnectorStatus.RESERVED, 7)


def test_a_card_of_the_reservations_parent_may_use_it_another_may_not() -> None:
    c = reserved(ReservationMade(8, ALICE, FLEET))
    # BOB may try: only his authorization tells his parentIdTag.
    assert c.handle(TokenPresented(BOB), 1.0).actions == (
        Signal(Feedback.READING),
        RequestAuthorization(BOB),
    )
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED, IdTag("OTHER")), 1.1)
    assert (out.actions, out.reason) == ((Signal(Feedback.REJECTED),), "not the reservation's card")
    assert c.phase is Phase.RESERVED and c.reservation_id == 8
    c.handle(TokenPresented(BOB), 2.0)
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED, IdTag("fleet-7")), 2.1)
    assert BeginSession(S1, BOB, 1000, 8) in out.actions
    assert c.phase is Phase.CHARGING and c.reservation is None


def test_a_card_without_a_parent_cannot_use_a_group_reservation() -> None:
    c = reserved(ReservationMade(8, ALICE, FLEET))
    c.handle(TokenPresented(BOB), 1.0)
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED), 1.1)
    assert out.actions == (Signal(Feedback.REJECTED),) and c.phase is Phase.RESERVED


def test_a_reservation_ending_while_its_card_is_decided_frees_the_connector() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    c.handle(TokenPresented(ALICE), 1.0)
    out = c.handle(ReservationEnded(R7), 1.05)
    assert out.actions == (ReportStatus(ConnectorStatus.AVAILABLE),)
    assert (c.phase, c.status) == (Phase.AUTHORIZING, ConnectorStatus.AVAILABLE)
    # The card goes on, for a free connector now: no reservationId.
    out = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 1.1)
    assert BeginSession(S1, ALICE, 1000) in out.actions


def test_a_stop_while_the_reserved_card_is_decided_keeps_the_reservation() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    c.handle(TokenPresented(ALICE), 1.0)
    assert c.handle(StopRequested(StopReason.SOFT_RESET), 1.05).accepted
    assert (c.phase, c.reservation_id, c.pending_tag) == (Phase.RESERVED, 7, None)


def test_inoperative_while_the_reserved_card_is_decided_ends_the_reservation() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    c.handle(TokenPresented(ALICE), 1.0)
    out = c.handle(AvailabilityRequested(operative=False), 1.05)
    assert out.actions == (ReportStatus(ConnectorStatus.UNAVAILABLE),)
    assert (c.phase, c.reservation, c.pending_tag) == (Phase.UNAVAILABLE, None, None)


def test_a_fault_ends_a_reservation_and_the_connector_recovers_available() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    c.handle(FaultRaised(Fault.OVER_TEMPERATURE), 1.0)
    assert c.reservation is None
    out = c.handle(FaultCleared(Fault.OVER_TEMPERATURE), 2.0)
    assert out.actions == (ReportStatus(ConnectorStatus.AVAILABLE),)


@pytest.mark.parametrize(
    ("reservation", "event", "reason"),
    [
        (ReservationMade(R7, ALICE), RemoteStartRequested(BOB, authorize=True), "another card"),
        (ReservationMade(R7, ALICE), RemoteStartRequested(BOB, authorize=False), "another card"),
        # A group's card needs its authorization to show its parent.
        (ReservationMade(8, ALICE, FLEET), RemoteStartRequested(BOB, False), "authorized"),
    ],
)
def test_remote_starts_a_reservation_refuses(
    reservation: ReservationMade, event: RemoteStartRequested, reason: str
) -> None:
    c = reserved(reservation)
    out = c.handle(event, 1.0)
    assert not out.accepted and reason in out.reason and out.actions == ()
    assert c.phase is Phase.RESERVED


def test_a_remote_start_of_a_group_card_is_authorized_against_the_reservation() -> None:
    c = reserved(ReservationMade(8, ALICE, FLEET))
    assert c.handle(RemoteStartRequested(BOB, authorize=True), 1.0).actions == (
        RequestAuthorization(BOB),
    )
    out = c.handle(AuthorizationResolved(BOB, ACCEPTED, FLEET), 1.1)
    assert BeginSession(S1, BOB, 1000, 8) in out.actions


def test_a_second_reservation_on_a_reserved_connector_is_refused() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    out = c.handle(ReservationMade(8, BOB), 1.0)
    assert not out.accepted and "already reserved (7)" in out.reason
    assert c.reservation == ReservationMade(R7, ALICE)


def test_the_same_reservation_id_replaces_the_reserved_card() -> None:
    c = reserved(ReservationMade(R7, ALICE))
    assert c.handle(ReservationMade(R7, BOB), 1.0).actions == ()
    assert not c.handle(TokenPresented(ALICE), 1.1).accepted
    assert c.handle(TokenPresented(BOB), 1.2).accepted


# -- a 0 A limit (smart charging) ------------------------------------------------------


def test_a_session_begun_under_a_zero_limit_starts_paused_with_the_relay_closed() -> None:
    c = new_connector()
    c.handle(sample(1, 1000), 0.0)
    c.handle(ChargingPaused(paused=True), 0.5)
    c.handle(TokenPresented(ALICE), 1.0)
    out = c.handle(AuthorizationResolved(ALICE, ACCEPTED), 1.1)
    assert out.actions == (
        ReportStatus(ConnectorStatus.PREPARING),
        BeginSession(S1, ALICE, 1000),
        SetRelay(closed=True),
        ReportStatus(ConnectorStatus.SUSPENDED_EVSE),
        Signal(Feedback.ACCEPTED),
    )
    assert c.phase is Phase.PAUSED
    assert c.handle(ChargingPaused(paused=False), 2.0).actions == (
        ReportStatus(ConnectorStatus.CHARGING),
    )


def test_a_paused_session_keeps_metering_and_its_allowance_still_counts() -> None:
    c = in_phase(Phase.PAUSED, interval=0.0)
    c.handle(SessionInvalidated(BLOCKED, stop=False, allowance_wh=100), 2.0)
    assert c.handle(sample(2, 1050), 3.0).actions == (RecordMeterValues(S1, sample(2, 1050)),)
    out = c.handle(sample(3, 1100), 4.0)
    # The allowance is spent: the relay opens (the status is SuspendedEVSE already).
    assert out.actions == (RecordMeterValues(S1, sample(3, 1100)), SetRelay(closed=False))
    assert c.phase is Phase.SUSPENDED
    # Its limit rising again does not bring the energy back.
    assert c.handle(ChargingPaused(paused=False), 5.0).actions == ()
    assert c.phase is Phase.SUSPENDED


def test_the_limit_outlives_the_session_for_the_next() -> None:
    c = in_phase(Phase.PAUSED)
    c.handle(TokenPresented(ALICE), 2.0)
    c.handle(sample(2, 1100), 3.0)
    assert c.phase is Phase.AVAILABLE and c.paused
    c.handle(RemoteStartRequested(BOB, authorize=False), 4.0)
    assert c.phase is Phase.PAUSED
