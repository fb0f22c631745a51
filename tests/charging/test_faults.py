"""The interlock rules: each condition trips at once and clears only after hysteresis."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgepoint.charging.events import Fault, StopReason, TelemetrySample
from edgepoint.charging.faults import (
    RULES,
    ChargePointReadings,
    ConnectorReadings,
    ErrorCode,
    FaultState,
    Limits,
    assess_charge_point,
    assess_connector,
    by_severity,
    error_code,
)

LIMITS = Limits(
    max_temperature_c=70,
    temperature_hysteresis_c=10,
    max_current_a=35,
    current_hysteresis_a=3,
    min_voltage_v=195,
    max_voltage_v=255,
    voltage_hysteresis_v=5,
    telemetry_timeout_s=10,
    relay_feedback_s=2,
    clear_after_s=30,
)


def frame(
    energy: int = 1000, current: float = 16.0, voltage: float = 230.0, temp: float = 30.0
) -> TelemetrySample:
    return TelemetrySample(1, energy, current * voltage, current, voltage, temp)


class Meter:
    """Feeds one connector's assessment like the kiosk does, with a fake monotonic clock."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.now = 0.0
        self.state = FaultState.watching_from(0.0)
        self.relay = False
        self.relay_at = 0.0
        self.echo: bool | None = None

    def see(self, sample: TelemetrySample | None = None, after: float = 1.0) -> frozenset[Fault]:
        self.now += after
        readings = ConnectorReadings(self.now, sample, self.relay, self.relay_at, self.echo)
        self.state = assess_connector(self.state, readings, self.limits)
        return self.state.active

    def command(self, closed: bool) -> None:
        self.relay, self.relay_at = closed, self.now


# -- the tables -------------------------------------------------------------------------


def test_every_fault_has_a_rule_and_the_scope_is_right() -> None:
    assert set(RULES) == set(Fault)
    wide = {fault for fault, rule in RULES.items() if rule.charge_point_wide}
    assert wide == {Fault.READER_FAILED, Fault.STORAGE_FAILED, Fault.LOOP_STALLED}


def test_hazards_stop_as_emergency_supply_sag_as_power_loss_the_rest_as_other() -> None:
    reasons = {fault: rule.stop_reason for fault, rule in RULES.items()}
    hazards = {
        Fault.OVER_CURRENT,
        Fault.OVER_TEMPERATURE,
        Fault.OVER_VOLTAGE,
        Fault.RELAY_MISMATCH,
    }
    assert {f for f, r in reasons.items() if r is StopReason.EMERGENCY_STOP} == hazards
    assert {f for f, r in reasons.items() if r is StopReason.POWER_LOSS} == {Fault.UNDER_VOLTAGE}
    assert all(reasons[f] is StopReason.OTHER for f in set(Fault) - hazards - {Fault.UNDER_VOLTAGE})


def test_error_codes_are_ocpp_charge_point_error_codes() -> None:
    ocpp = {
        "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
        "InternalError", "LocalListConflict", "NoError", "OtherError", "OverCurrentFailure",
        "OverVoltage", "PowerMeterFailure", "PowerSwitchFailure", "ReaderFailure",
        "ResetFailure", "UnderVoltage", "WeakSignal",
    }  # fmt: skip
    assert {code.value for code in ErrorCode} <= ocpp


def test_the_most_severe_fault_names_the_code() -> None:
    assert error_code([]) is ErrorCode.NO_ERROR
    assert error_code([Fault.READER_FAILED, Fault.OVER_CURRENT]) is ErrorCode.OVER_CURRENT_FAILURE
    assert by_severity([Fault.LOOP_STALLED, Fault.TELEMETRY_LOST, Fault.RELAY_MISMATCH]) == [
        Fault.RELAY_MISMATCH,
        Fault.TELEMETRY_LOST,
        Fault.LOOP_STALLED,
    ]


# -- sample thresholds with hysteresis ---------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "tripping", "inside_band", "healthy"),
    [
        (Fault.OVER_TEMPERATURE, frame(temp=70.5), frame(temp=65), frame(temp=60)),
        (Fault.OVER_CURRENT, frame(current=35.2), frame(current=33), frame(current=32)),
        (Fault.OVER_VOLTAGE, frame(voltage=256), frame(voltage=252), frame(voltage=250)),
        (Fault.UNDER_VOLTAGE, frame(voltage=194), frame(voltage=198), frame(voltage=200)),
    ],
)
def test_a_threshold_trips_at_once_and_clears_after_hysteresis_in_value_and_time(
    fault: Fault, tripping: TelemetrySample, inside_band: TelemetrySample, healthy: TelemetrySample
) -> None:
    m = Meter()
    assert m.see(healthy) == set()
    assert m.see(inside_band) == set()  # the band alone never trips
    assert m.see(tripping) == {fault}  # the first bad frame trips: no waiting
    assert m.see(inside_band) == {fault}  # back inside the band: still faulted
    for _ in range(29):
        assert m.see(healthy) == {fault}
    assert m.see(inside_band, after=5) == {fault}  # a relapse into the band restarts the wait
    for _ in range(30):
        assert m.see(healthy) == {fault}
    assert m.see(healthy) == set()  # 30 s healthy without a break


def test_the_limit_itself_is_allowed() -> None:
    m = Meter()
    assert m.see(frame(temp=70, current=35, voltage=255)) == set()
    assert m.see(frame(voltage=195)) == set()


def test_a_new_bad_frame_while_clearing_starts_over() -> None:
    m = Meter()
    m.see(frame(temp=90))
    m.see(frame(temp=40), after=20)
    m.see(frame(temp=95), after=20)  # hot again before 30 s of health
    assert m.see(frame(temp=40), after=1) == {Fault.OVER_TEMPERATURE}
    assert m.see(frame(temp=40), after=29) == {Fault.OVER_TEMPERATURE}
    assert m.see(frame(temp=40), after=1) == set()


def test_several_faults_at_once_clear_each_on_its_own() -> None:
    m = Meter()
    assert m.see(frame(temp=90, current=50)) == {Fault.OVER_TEMPERATURE, Fault.OVER_CURRENT}
    m.see(frame(temp=90, current=0))
    assert m.see(frame(temp=90, current=0), after=30) == {Fault.OVER_TEMPERATURE}
    assert m.see(frame(temp=20), after=1) == {Fault.OVER_TEMPERATURE}
    assert m.see(frame(temp=20), after=30) == set()


def test_zero_clear_time_clears_at_the_first_healthy_observation() -> None:
    m = Meter(replace(LIMITS, clear_after_s=0))
    assert m.see(frame(current=40)) == {Fault.OVER_CURRENT}
    assert m.see(frame(current=33)) == {Fault.OVER_CURRENT}  # in the band
    assert m.see(frame(current=0)) == set()


# -- telemetry -------------------------------------------------------------------------


def test_telemetry_is_lost_past_the_timeout_even_before_the_first_frame() -> None:
    m = Meter()
    assert m.see(after=10) == set()  # exactly the timeout: not yet
    assert m.see(after=0.1) == {Fault.TELEMETRY_LOST}
    # Never heard from since start: nothing was flapping, the first frame clears it.
    assert m.see(frame(), after=5) == set()
    # Lost again later: now the hysteresis applies.
    assert m.see(after=10.5) == {Fault.TELEMETRY_LOST}
    assert m.see(frame()) == {Fault.TELEMETRY_LOST}


def test_lost_telemetry_clears_once_frames_have_flowed_for_the_clear_time() -> None:
    m = Meter()
    m.see(frame())
    assert m.see(after=10.5) == {Fault.TELEMETRY_LOST}
    assert m.see(frame(), after=1) == {Fault.TELEMETRY_LOST}  # the first frame back
    for _ in range(29):
        assert m.see(frame()) == {Fault.TELEMETRY_LOST}
    assert m.see(frame()) == set()


def test_stale_thresholds_do_not_trip_again_without_new_frames() -> None:
    m = Meter(replace(LIMITS, telemetry_timeout_s=1000))
    m.see(frame(temp=90))
    # Ticks without frames keep judging the last one: the fault holds while it was hot.
    assert m.see(after=100) == {Fault.OVER_TEMPERATURE}
    m.see(frame(temp=20))
    assert m.see(after=30) == set()


# -- the energy register ------------------------------------------------------------------


def test_a_register_going_backwards_trips_and_the_new_value_becomes_the_baseline() -> None:
    m = Meter()
    m.see(frame(energy=5000))
    m.see(frame(energy=5000))  # standing still is fine
    assert m.see(frame(energy=4990)) == {Fault.REGISTER_BACKWARDS}
    # Rising from the lower value does not trip again; it clears after 30 s.
    for energy in range(4991, 5021):
        assert m.see(frame(energy=energy)) == {Fault.REGISTER_BACKWARDS}
    assert m.see(frame(energy=5021)) == set()
    assert m.see(frame(energy=5020)) == {Fault.REGISTER_BACKWARDS}


def test_the_first_frame_has_nothing_to_be_compared_with() -> None:
    assert Meter().see(frame(energy=0)) == set()


# -- relay feedback ------------------------------------------------------------------------


def test_no_echo_means_no_judgement() -> None:
    m = Meter()
    m.command(True)
    assert m.see(frame(), after=100) == set()


def test_the_echo_may_lag_the_command_for_the_feedback_time() -> None:
    m = Meter()
    m.echo = False
    m.command(True)
    assert m.see(frame(), after=1.9) == set()  # contact still moving
    m.echo = True
    assert m.see(frame(), after=0.5) == set()


def test_a_contact_that_does_not_follow_trips_and_a_welded_one_stays_faulted() -> None:
    m = Meter(replace(LIMITS, clear_after_s=5))
    m.echo = False
    m.command(True)
    assert m.see(frame(), after=2) == {Fault.RELAY_MISMATCH}  # did not close
    m.command(False)  # the kiosk opens it on the fault; now it reads as open: agreed
    assert m.see(frame(), after=1) == {Fault.RELAY_MISMATCH}
    assert m.see(frame(), after=5) == set()
    # Welded: open for a while, then reported closed; no lag to allow for.
    m.echo = True
    for _ in range(20):
        assert m.see(frame(), after=1) == {Fault.RELAY_MISMATCH}


# -- charge-point-wide ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "fault"),
    [
        ("reader_failed", Fault.READER_FAILED),
        ("storage_failed", Fault.STORAGE_FAILED),
        ("loop_stalled", Fault.LOOP_STALLED),
    ],
)
def test_charge_point_flags_raise_at_once_and_clear_after_the_clear_time(
    flag: str, fault: Fault
) -> None:
    state = FaultState.watching_from(0.0)
    state = assess_charge_point(state, ChargePointReadings(1.0, **{flag: True}), LIMITS)
    assert state.active == {fault}
    state = assess_charge_point(state, ChargePointReadings(2.0), LIMITS)
    state = assess_charge_point(state, ChargePointReadings(31.9), LIMITS)
    assert state.active == {fault}
    state = assess_charge_point(state, ChargePointReadings(32.0), LIMITS)
    assert state.active == set()


def test_assessment_never_changes_the_state_it_was_given() -> None:
    m = Meter()
    before = m.state
    m.see(frame(temp=99))
    assert before.active == set() and before.healthy_since == {}


def test_a_stale_echo_is_not_judged_while_telemetry_is_lost() -> None:
    m = Meter(replace(LIMITS, clear_after_s=5))
    m.command(True)
    m.echo = True
    m.see(frame())
    m.command(False)  # the ESP32 went silent; the kiosk opened the relay
    # The last echo (closed) is stale: no relay fault, only the lost meter.
    assert m.see(after=11) == {Fault.TELEMETRY_LOST}
    assert m.see(after=5) == {Fault.TELEMETRY_LOST}
    m.echo = False  # back, and the contact reads open
    m.see(frame(), after=1)
    assert m.see(frame(), after=5) == set()
