"""Domain events that drivers and the OCPP link publish into the charging core."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

IdTag = NewType("IdTag", str)
SessionId = NewType("SessionId", str)


@dataclass(frozen=True, slots=True)
class TokenPresented:
    """An RFID card was presented to the reader (once per presentation, debounced)."""

    id_tag: IdTag


@dataclass(frozen=True, slots=True)
class TelemetrySample:
    """One validated telemetry frame from the ESP32 meter."""

    seq: int
    energy_wh: int  # monotonically rising energy register, Wh
    power_w: float
    current_a: float
    voltage_v: float
    temperature_c: float
    # Whatever else the firmware reports (name -> value), kept so nothing is lost.
    extra: tuple[tuple[str, str], ...] = field(default=())
    # Which meter of the ESP32 this is (the frame's `ch` field; 1 when absent).
    channel: int = 1


class AuthorizationStatus(StrEnum):
    """OCPP 1.6 idTagInfo.status, plus Unavailable when no answer could be had."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"
    UNAVAILABLE = "Unavailable"  # not OCPP: the CSMS did not answer (offline, timeout)


@dataclass(frozen=True, slots=True)
class AuthorizationResolved:
    """The answer to an authorization request for a presented card."""

    id_tag: IdTag
    status: AuthorizationStatus
    # The card's parentIdTag as the answer gave it: a reservation may be for a group.
    parent_id_tag: IdTag | None = None


class Fault(StrEnum):
    """A condition that forbids energising a connector. Declared most severe first: when
    several are active, the first one names the errorCode the CSMS sees."""

    OVER_CURRENT = "over-current"
    RELAY_MISMATCH = "relay-mismatch"  # the contact is not where it was commanded (welded?)
    OVER_TEMPERATURE = "over-temperature"
    OVER_VOLTAGE = "over-voltage"
    UNDER_VOLTAGE = "under-voltage"
    TELEMETRY_LOST = "telemetry-lost"
    REGISTER_BACKWARDS = "register-backwards"
    READER_FAILED = "reader-failed"  # charge-point-wide
    STORAGE_FAILED = "storage-failed"  # charge-point-wide
    LOOP_STALLED = "loop-stalled"  # charge-point-wide


@dataclass(frozen=True, slots=True)
class FaultRaised:
    """An interlock tripped (charging/faults.py decides when): open the relay, end the
    session, report Faulted."""

    fault: Fault


@dataclass(frozen=True, slots=True)
class FaultCleared:
    """An interlock's condition has been healthy long enough (hysteresis) to clear it."""

    fault: Fault


class StopReason(StrEnum):
    """OCPP 1.6 StopTransaction reasons."""

    LOCAL = "Local"
    REMOTE = "Remote"
    REBOOT = "Reboot"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    POWER_LOSS = "PowerLoss"
    EMERGENCY_STOP = "EmergencyStop"
    DEAUTHORIZED = "DeAuthorized"
    UNLOCK_COMMAND = "UnlockCommand"
    EV_DISCONNECTED = "EVDisconnected"
    OTHER = "Other"


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Something other than the driver's card ends the session (shutdown, remote stop)."""

    reason: StopReason
    # True when there is no time to wait for a final meter reading (shutdown).
    immediate: bool = False


@dataclass(frozen=True, slots=True)
class RemoteStartRequested:
    """The CSMS asks to start a session for `id_tag` (RemoteStartTransaction)."""

    id_tag: IdTag
    # AuthorizeRemoteTxRequests: ask for the tag's authorization before starting.
    authorize: bool


@dataclass(frozen=True, slots=True)
class AvailabilityRequested:
    """ChangeAvailability: make the connector Operative (True) or Inoperative (False)."""

    operative: bool


@dataclass(frozen=True, slots=True)
class SessionInvalidated:
    """The CSMS answered the session's StartTransaction with a non-Accepted idTagInfo."""

    status: AuthorizationStatus
    stop: bool  # StopTransactionOnInvalidId: end the session (else only suspend energy)
    allowance_wh: int  # MaxEnergyOnInvalidId: energy still allowed before that happens


@dataclass(frozen=True, slots=True)
class ReservationMade:
    """ReserveNow: hold the connector for `id_tag`, or any card of `parent_id_tag`."""

    reservation_id: int
    id_tag: IdTag
    parent_id_tag: IdTag | None = None


@dataclass(frozen=True, slots=True)
class ReservationEnded:
    """The reservation was cancelled, expired, or replaced: the connector is free again."""

    reservation_id: int


@dataclass(frozen=True, slots=True)
class ChargingPaused:
    """Smart charging limits the connector to 0 (paused), or to more than 0 again."""

    paused: bool


Event = (
    TokenPresented
    | TelemetrySample
    | AuthorizationResolved
    | FaultRaised
    | FaultCleared
    | StopRequested
    | RemoteStartRequested
    | AvailabilityRequested
    | SessionInvalidated
    | ReservationMade
    | ReservationEnded
    | ChargingPaused
)
