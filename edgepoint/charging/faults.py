"""Interlock rules: readings and limits in, the set of active faults out, with hysteresis.

Pure: no clock of its own (the caller passes `now`, monotonic seconds), no I/O. The kiosk
keeps one `FaultState` per connector and one for the whole charge point, feeds each new
observation through `assess_connector` / `assess_charge_point`, and tells the connector
state machine which faults were raised or cleared (`FaultRaised` / `FaultCleared`).

Every condition is judged RAISE, HOLD or HEALTHY. RAISE makes the fault active at once
(safety never waits). A fault clears only after its condition has been HEALTHY for
`Limits.clear_after_s` without a break; HOLD (inside the hysteresis band, e.g. between
the trip temperature and trip minus hysteresis) keeps it active and restarts that wait.

Which StopTransaction reason and which StatusNotification errorCode each fault gives is
the table `RULES` below (and docs/interlocks.md explains the choices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from edgepoint.charging.events import Fault, StopReason, TelemetrySample

__all__ = [
    "RULES",
    "ChargePointReadings",
    "ConnectorReadings",
    "ErrorCode",
    "Fault",
    "FaultRule",
    "FaultState",
    "Limits",
    "assess_charge_point",
    "assess_connector",
    "by_severity",
    "error_code",
]


class ErrorCode(StrEnum):
    """OCPP 1.6 ChargePointErrorCode values this charge point reports."""

    NO_ERROR = "NoError"
    HIGH_TEMPERATURE = "HighTemperature"
    INTERNAL_ERROR = "InternalError"
    OTHER_ERROR = "OtherError"
    OVER_CURRENT_FAILURE = "OverCurrentFailure"
    OVER_VOLTAGE = "OverVoltage"
    POWER_METER_FAILURE = "PowerMeterFailure"
    POWER_SWITCH_FAILURE = "PowerSwitchFailure"
    READER_FAILURE = "ReaderFailure"
    UNDER_VOLTAGE = "UnderVoltage"


@dataclass(frozen=True, slots=True)
class FaultRule:
    """How one fault is reported: errorCode, the reason a session it ends gets, and scope."""

    error_code: ErrorCode
    stop_reason: StopReason
    charge_point_wide: bool = False


_E = ErrorCode
_R = StopReason
# Reasons: OCPP 1.6 defines EmergencyStop for the emergency button; a kiosk has none, and
# its protective trips (a hazard to people or the car, where the charge point cut the
# power under load by itself) are that button pressed by the device, so a CSMS that
# flags EmergencyStop sessions for inspection flags these. A sagging supply ends the
# session as PowerLoss. A charge point that can no longer measure, bill or let the
# driver stop with the card (meter, reader, storage, a stuck loop) stops with Other:
# nothing was dangerous, the errorCode of the StatusNotification says what failed.
RULES: Mapping[Fault, FaultRule] = {
    Fault.OVER_CURRENT: FaultRule(_E.OVER_CURRENT_FAILURE, _R.EMERGENCY_STOP),
    Fault.RELAY_MISMATCH: FaultRule(_E.POWER_SWITCH_FAILURE, _R.EMERGENCY_STOP),
    Fault.OVER_TEMPERATURE: FaultRule(_E.HIGH_TEMPERATURE, _R.EMERGENCY_STOP),
    Fault.OVER_VOLTAGE: FaultRule(_E.OVER_VOLTAGE, _R.EMERGENCY_STOP),
    Fault.UNDER_VOLTAGE: FaultRule(_E.UNDER_VOLTAGE, _R.POWER_LOSS),
    Fault.TELEMETRY_LOST: FaultRule(_E.POWER_METER_FAILURE, _R.OTHER),
    Fault.REGISTER_BACKWARDS: FaultRule(_E.POWER_METER_FAILURE, _R.OTHER),
    Fault.READER_FAILED: FaultRule(_E.READER_FAILURE, _R.OTHER, charge_point_wide=True),
    Fault.STORAGE_FAILED: FaultRule(_E.INTERNAL_ERROR, _R.OTHER, charge_point_wide=True),
    Fault.LOOP_STALLED: FaultRule(_E.INTERNAL_ERROR, _R.OTHER, charge_point_wide=True),
}

_SEVERITY = {fault: rank for rank, fault in enumerate(Fault)}


def by_severity(faults: Iterable[Fault]) -> list[Fault]:
    """The faults, most severe first."""
    return sorted(faults, key=_SEVERITY.__getitem__)


def error_code(faults: Iterable[Fault]) -> ErrorCode:
    """The errorCode a connector with these faults reports: its most severe one's."""
    ordered = by_severity(faults)
    return RULES[ordered[0]].error_code if ordered else ErrorCode.NO_ERROR


@dataclass(frozen=True, slots=True)
class Limits:
    """Interlock thresholds (config.toml [safety]); the defaults suit a 32 A, 230 V kiosk."""

    max_temperature_c: float = 70.0  # at the relay/meter; every limit trips when passed
    temperature_hysteresis_c: float = 10.0  # clears once this far below the trip point
    max_current_a: float = 35.0  # trips above (32 A + about 10 %)
    current_hysteresis_a: float = 3.0
    min_voltage_v: float = 195.0  # trips below (230 V - 15 %)
    max_voltage_v: float = 255.0  # trips above (230 V + 10 %, rounded)
    voltage_hysteresis_v: float = 5.0  # on both sides: clears 5 V inside the band
    telemetry_timeout_s: float = 10.0  # no frame for longer: the meter is lost
    relay_feedback_s: float = 2.0  # the ESP32's relay echo may lag a command this long
    clear_after_s: float = 30.0  # a condition must stay healthy this long to clear


class _Verdict(Enum):
    RAISE = "raise"
    HOLD = "hold"  # inside the hysteresis band: an active fault stays, nothing new trips
    HEALTHY = "healthy"


_RAISE, _HOLD, _HEALTHY = _Verdict.RAISE, _Verdict.HOLD, _Verdict.HEALTHY


@dataclass(frozen=True, slots=True)
class FaultState:
    """What the assessment remembers between observations (one per connector, one for the
    charge point). Treat as immutable: every assessment returns a new one."""

    active: frozenset[Fault] = frozenset()
    # When each active fault's condition turned healthy (monotonic s); absent: not healthy.
    healthy_since: Mapping[Fault, float] = field(default_factory=dict)
    last_sample: TelemetrySample | None = None
    last_sample_at: float = 0.0  # or when watching started, before the first sample

    @classmethod
    def watching_from(cls, now: float) -> FaultState:
        """A fresh state: no fault, and the telemetry timeout counts from `now`."""
        return cls(last_sample_at=now)


@dataclass(frozen=True, slots=True)
class ConnectorReadings:
    """What the kiosk knows about one connector at `now`."""

    now: float
    sample: TelemetrySample | None = None  # a frame that arrived with this observation
    relay_closed: bool = False  # what the kiosk last commanded
    relay_changed_at: float = 0.0  # when that command last changed
    relay_echo: bool | None = None  # the contact as the ESP32 reports it; None: unknown


@dataclass(frozen=True, slots=True)
class ChargePointReadings:
    """What the kiosk knows about the charge point as a whole at `now`."""

    now: float
    reader_failed: bool = False  # the RFID reader reports a fault
    storage_failed: bool = False  # the last database write failed (or none since did)
    loop_stalled: bool = False  # the kiosk loop made no progress for a while


def assess_connector(state: FaultState, seen: ConnectorReadings, limits: Limits) -> FaultState:
    """The connector's faults after this observation."""
    last_at = seen.now if seen.sample is not None else state.last_sample_at
    previous = state.last_sample
    sample = seen.sample if seen.sample is not None else previous
    lost = seen.now - last_at > limits.telemetry_timeout_s
    verdicts: dict[Fault, _Verdict] = {
        Fault.TELEMETRY_LOST: _RAISE if lost else _HEALTHY,
        # The echo comes over the same link: while it is silent the last echo is stale
        # (an unplugged ESP32 is not a welded relay), so it is not judged then.
        Fault.RELAY_MISMATCH: _HOLD if lost else _relay(seen, limits),
        # The register is absolute and kept in NVS across ESP32 reboots, so any drop is
        # a meter fault; the lower value is then the baseline, and it clears once the
        # register has not dropped again for clear_after_s.
        Fault.REGISTER_BACKWARDS: _RAISE
        if seen.sample is not None
        and previous is not None
        and seen.sample.energy_wh < previous.energy_wh
        else _HEALTHY,
    }
    if sample is not None:
        verdicts[Fault.OVER_TEMPERATURE] = _above(
            sample.temperature_c, limits.max_temperature_c, limits.temperature_hysteresis_c
        )
        verdicts[Fault.OVER_CURRENT] = _above(
            sample.current_a, limits.max_current_a, limits.current_hysteresis_a
        )
        verdicts[Fault.OVER_VOLTAGE] = _above(
            sample.voltage_v, limits.max_voltage_v, limits.voltage_hysteresis_v
        )
        verdicts[Fault.UNDER_VOLTAGE] = _above(
            -sample.voltage_v, -limits.min_voltage_v, limits.voltage_hysteresis_v
        )
    settled = _settle(state, verdicts, seen.now, limits.clear_after_s)
    if previous is None and seen.sample is not None and Fault.TELEMETRY_LOST in settled.active:
        # A meter not heard from since start (an ESP32 booting after the Pi) was never
        # flapping: its first frame clears it. Lost again later, the hysteresis applies.
        since = dict(settled.healthy_since)
        since.pop(Fault.TELEMETRY_LOST, None)
        settled = replace(
            settled, active=settled.active - {Fault.TELEMETRY_LOST}, healthy_since=since
        )
    return replace(settled, last_sample=sample, last_sample_at=last_at)


def assess_charge_point(state: FaultState, seen: ChargePointReadings, limits: Limits) -> FaultState:
    """The charge-point-wide faults after this observation."""
    verdicts = {
        Fault.READER_FAILED: _flag(seen.reader_failed),
        Fault.STORAGE_FAILED: _flag(seen.storage_failed),
        Fault.LOOP_STALLED: _flag(seen.loop_stalled),
    }
    return _settle(state, verdicts, seen.now, limits.clear_after_s)


def _flag(failing: bool) -> _Verdict:
    return _RAISE if failing else _HEALTHY


def _above(value: float, limit: float, hysteresis: float) -> _Verdict:
    """Trip above `limit`; healthy again at or below `limit - hysteresis`."""
    if value > limit:
        return _RAISE
    if value <= limit - hysteresis:
        return _HEALTHY
    return _HOLD


def _relay(seen: ConnectorReadings, limits: Limits) -> _Verdict:
    if seen.relay_echo is None or seen.relay_echo == seen.relay_closed:
        return _HEALTHY
    if seen.now - seen.relay_changed_at >= limits.relay_feedback_s:
        return _RAISE
    return _HOLD  # the contact may still be moving, or the echo on its way


def _settle(
    state: FaultState, verdicts: Mapping[Fault, _Verdict], now: float, clear_after_s: float
) -> FaultState:
    active = set(state.active)
    since = dict(state.healthy_since)
    for fault, verdict in verdicts.items():
        if verdict is _RAISE:
            active.add(fault)
            since.pop(fault, None)
        elif fault not in active:
            continue
        elif verdict is _HOLD:
            since.pop(fault, None)
        elif now - since.setdefault(fault, now) >= clear_after_s:
            active.discard(fault)
            del since[fault]
    return replace(state, active=frozenset(active), healthy_since=since)
