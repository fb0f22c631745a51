"""Every cell of the connector transition table, accepted and rejected."""

from __future__ import annotations

import itertools

import pytest

from edgepoint.charging.actions import (
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
    TokenPresented,
)

ALICE = IdTag("04A1B2C3")
BOB = IdTag("04FFEE11")


def sample(seq: int, energy: int) -> TelemetrySample:
    return TelemetrySample(seq, energy, 11000.0, 16.0, 230.0, 30.0)


def new_connector(interval: float = 10.0) -> Connector:
    ids = (SessionId(f"s{n}") for n in itertools.count(1))
    return Connector(lambda: next(ids), meter_value_interval_s=interval)


def in_phase(phase: Phase) -> Connector:
    """Drive a fresh connector through real events into `phase`."""
    c = new_connector()
    if phase is Phase.FAULTED:
        c.handle(TelemetryLost(), 0.0)
        return c
    c.handle(sample(1, 1000), 0.0)
    if phase is Phase.AVAILABLE:
        return c
    c.handle(TokenPresented(ALICE), 1.0)
    if phase is Phase.AUTHORIZING:
        return c
    c.handle(AuthorizationResolved(ALICE, AuthorizationStatus.ACCEPTED), 1.1)
    if phase is Phase.CHARGING:
        return c
    c.handle(TokenPresented(ALICE), 5.0)
    assert phase is Phase.FINISHING
    return c


def test_start_opens_relay_and_reports_available() -> None:
    assert new_connector().start() == (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.AVAILABLE),
    )


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_is_reachable(phase: Phase) -> None:
    assert in_phase(phase).phase is phase


# -- the happy path, step by step ---------------------------------------------------


def test_tap_asks_for_authorization() -> None:
    c = in_phase(Phase.AVAILABLE)
    out = c.handle(TokenPresented(ALICE), 1.0)
    assert out.accepted
    assert out.actions == (Signal(Feedback.READING), RequestAuthorization(ALICE))
    assert c.phase is Phase.AUTHORIZING


def test_accepted_card_starts_session_durably_before_relay() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(ALICE, AuthorizationStatus.ACCEPTED), 2.0)
    assert out.actions == (
        ReportStatus(ConnectorStatus.PREPARING),
        BeginSession(SessionId("s1"), ALICE, 1000),
        SetRelay(closed=True),
        ReportStatus(ConnectorStatus.CHARGING),
        Signal(Feedback.ACCEPTED),
    )
    assert c.phase is Phase.CHARGING
    assert c.session == ActiveSession(SessionId("s1"), ALICE, 1000)


@pytest.mark.parametrize(
    "status",
    [s for s in AuthorizationStatus if s is not AuthorizationStatus.ACCEPTED],
)
def test_refused_card_gets_feedback_and_no_relay(status: AuthorizationStatus) -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(ALICE, status), 2.0)
    assert out.actions == (Signal(Feedback.REJECTED),)
    assert c.phase is Phase.AVAILABLE
    assert c.session is None


def test_accepted_without_any_telemetry_refuses_to_start() -> None:
    c = new_connector()
    c.handle(TokenPresented(ALICE), 0.0)
    out = c.handle(AuthorizationResolved(ALICE, AuthorizationStatus.ACCEPTED), 0.1)
    assert out.actions == (Signal(Feedback.FAULT),)
    assert c.phase is Phase.AVAILABLE


def test_verdict_for_another_card_is_rejected() -> None:
    c = in_phase(Phase.AUTHORIZING)
    out = c.handle(AuthorizationResolved(BOB, AuthorizationStatus.ACCEPTED), 2.0)
    assert not out.accepted and out.actions == ()
    assert c.phase is Phase.AUTHORIZING


def test_meter_values_are_paced_by_the_interval() -> None:
    c = in_phase(Phase.CHARGING)  # session began at t=1.1, interval 10 s
    assert c.handle(sample(2, 1010), 5.0).actions == ()
    out = c.handle(sample(3, 1030), 11.2)
    assert out.actions == (RecordMeterValues(SessionId("s1"), sample(3, 1030)),)
    assert c.handle(sample(4, 1040), 15.0).actions == ()
    assert len(c.handle(sample(5, 1060), 21.3).actions) == 1


def test_same_card_stops_relay_first_then_waits_for_final_reading() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(TokenPresented(ALICE), 20.0)
    assert out.actions == (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.FINISHING),
        Signal(Feedback.STOPPED),
    )
    assert c.phase is Phase.FINISHING
    out = c.handle(sample(9, 1500), 20.5)
    assert out.actions == (
        EndSession(SessionId("s1"), ALICE, 1500, StopReason.LOCAL),
        ReportStatus(ConnectorStatus.AVAILABLE),
    )
    assert c.phase is Phase.AVAILABLE and c.session is None


def test_another_card_cannot_stop_someone_elses_session() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(TokenPresented(BOB), 20.0)
    assert not out.accepted
    assert out.actions == (Signal(Feedback.REJECTED),)
    assert c.phase is Phase.CHARGING


@pytest.mark.parametrize("phase", [Phase.AUTHORIZING, Phase.FINISHING])
def test_tap_while_busy_beeps_and_changes_nothing(phase: Phase) -> None:
    c = in_phase(phase)
    out = c.handle(TokenPresented(BOB), 9.0)
    assert not out.accepted and out.actions == (Signal(Feedback.REJECTED),)
    assert c.phase is phase


def test_graceful_stop_request_waits_for_reading() -> None:
    c = in_phase(Phase.CHARGING)
    out = c.handle(StopRequested(StopReason.REMOTE), 3.0)
    assert out.actions[0] == SetRelay(closed=False)
    assert c.phase is Phase.FINISHING
    end = c.handle(sample(7, 1200), 3.5).actions[0]
    assert end == EndSession(SessionId("s1"), None, 1200, StopReason.REMOTE)


def test_immediate_stop_ends_with_last_reading() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1100), 2.0)
    out = c.handle(StopRequested(StopReason.REBOOT, immediate=True), 3.0)
    assert out.actions == (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.FINISHING),
        Signal(Feedback.STOPPED),
        EndSession(SessionId("s1"), None, 1100, StopReason.REBOOT),
        ReportStatus(ConnectorStatus.AVAILABLE),
    )


def test_immediate_stop_while_finishing_ends_now_graceful_is_rejected() -> None:
    c = in_phase(Phase.FINISHING)
    assert not c.handle(StopRequested(StopReason.REBOOT), 6.0).accepted
    out = c.handle(StopRequested(StopReason.REBOOT, immediate=True), 6.0)
    assert out.actions[0] == EndSession(SessionId("s1"), ALICE, 1000, StopReason.LOCAL)


def test_register_going_backwards_never_makes_negative_energy() -> None:
    c = in_phase(Phase.FINISHING)
    end = c.handle(sample(1, 5), 6.0).actions[0]
    assert isinstance(end, EndSession) and end.meter_stop_wh == 1000


# -- lost telemetry: safety -------------------------------------------------------


def test_lost_telemetry_while_charging_opens_relay_and_closes_session() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1300), 3.0)
    out = c.handle(TelemetryLost(), 20.0)
    assert out.actions == (
        SetRelay(closed=False),
        EndSession(SessionId("s1"), None, 1300, StopReason.OTHER),
        ReportStatus(ConnectorStatus.FAULTED, "OtherError"),
        Signal(Feedback.FAULT),
    )
    assert c.phase is Phase.FAULTED


def test_lost_telemetry_while_finishing_keeps_the_stop_reason() -> None:
    c = in_phase(Phase.FINISHING)
    end = c.handle(TelemetryLost(), 20.0).actions[1]
    assert end == EndSession(SessionId("s1"), ALICE, 1000, StopReason.LOCAL)


@pytest.mark.parametrize("phase", [Phase.AVAILABLE, Phase.AUTHORIZING])
def test_lost_telemetry_without_session_faults(phase: Phase) -> None:
    c = in_phase(phase)
    out = c.handle(TelemetryLost(), 3.0)
    assert out.actions == (
        SetRelay(closed=False),
        ReportStatus(ConnectorStatus.FAULTED, "OtherError"),
        Signal(Feedback.FAULT),
    )
    assert c.phase is Phase.FAULTED and c.pending_tag is None


def test_faulted_refuses_cards_and_recovers_on_telemetry() -> None:
    c = in_phase(Phase.FAULTED)
    out = c.handle(TokenPresented(ALICE), 1.0)
    assert not out.accepted and out.actions == (Signal(Feedback.FAULT),)
    out = c.handle(sample(1, 1000), 2.0)
    assert out.actions == (ReportStatus(ConnectorStatus.AVAILABLE),)
    assert c.phase is Phase.AVAILABLE


# -- crash recovery -----------------------------------------------------------------


def test_resumed_session_is_closed_with_first_reading_as_power_loss() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    assert c.start() == (SetRelay(closed=False), ReportStatus(ConnectorStatus.FINISHING))
    out = c.handle(sample(1, 950), 0.5)
    assert out.actions == (
        EndSession(SessionId("old"), None, 950, StopReason.POWER_LOSS),
        ReportStatus(ConnectorStatus.AVAILABLE),
    )


# -- every cell not in the table is a logged rejection, never an exception ------------

EVENTS: list[Event] = [
    TokenPresented(ALICE),
    sample(50, 2000),
    AuthorizationResolved(ALICE, AuthorizationStatus.ACCEPTED),
    TelemetryLost(),
    StopRequested(StopReason.REMOTE),
]
HANDLED = {
    (Phase.AVAILABLE, TokenPresented),
    (Phase.AVAILABLE, TelemetrySample),
    (Phase.AVAILABLE, TelemetryLost),
    (Phase.AUTHORIZING, AuthorizationResolved),
    (Phase.AUTHORIZING, TokenPresented),
    (Phase.AUTHORIZING, TelemetrySample),
    (Phase.AUTHORIZING, TelemetryLost),
    (Phase.CHARGING, TokenPresented),
    (Phase.CHARGING, TelemetrySample),
    (Phase.CHARGING, TelemetryLost),
    (Phase.CHARGING, StopRequested),
    (Phase.FINISHING, TelemetrySample),
    (Phase.FINISHING, TokenPresented),
    (Phase.FINISHING, TelemetryLost),
    (Phase.FINISHING, StopRequested),
    (Phase.FAULTED, TelemetrySample),
    (Phase.FAULTED, TokenPresented),
}


@pytest.mark.parametrize(
    ("phase", "event"),
    [(p, e) for p in Phase for e in EVENTS],
    ids=lambda v: getattr(v, "value", type(v).__name__),
)
def test_every_cell(phase: Phase, event: Event) -> None:
    c = in_phase(phase)
    out = c.handle(event, 100.0)
    if (phase, type(event)) not in HANDLED:
        assert not out.accepted
        assert out.actions == ()
        assert "not expected" in out.reason
        assert c.phase is phase
    else:
        assert out.accepted or out.reason, "a rejected cell says why"


@pytest.mark.parametrize("phase", list(Phase))
def test_relay_is_closed_only_while_charging(phase: Phase) -> None:
    """Invariant 4: replaying every event from every phase never closes the relay elsewhere."""
    for event in EVENTS:
        c = in_phase(phase)
        before = c.phase
        closes = [a for a in c.handle(event, 100.0).actions if a == SetRelay(closed=True)]
        if closes:
            assert before is Phase.AUTHORIZING and c.phase is Phase.CHARGING


def test_register_dropping_mid_session_keeps_the_energy_already_seen() -> None:
    c = in_phase(Phase.CHARGING)
    c.handle(sample(2, 1500), 2.0)  # 500 Wh flowed
    c.handle(TokenPresented(ALICE), 3.0)
    end = c.handle(sample(3, 20), 3.5).actions[0]  # meter swapped / reset: register tiny
    assert isinstance(end, EndSession) and end.meter_stop_wh == 1500


def test_resumed_session_never_stops_below_its_last_reported_reading() -> None:
    resume = ActiveSession(SessionId("old"), ALICE, 900, last_reading_wh=1400)
    c = Connector(lambda: SessionId("new"), 10.0, resume=resume)
    end = c.handle(sample(1, 950), 0.5).actions[0]
    assert end == EndSession(SessionId("old"), None, 1400, StopReason.POWER_LOSS)
