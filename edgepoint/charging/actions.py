"""Actions the charging core asks the outside world to carry out, in order."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edgepoint.charging.events import IdTag, SessionId, StopReason, TelemetrySample


class ConnectorStatus(StrEnum):
    """OCPP 1.6 ChargePointStatus: the one definition of a connector's reported status."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EVSE = "SuspendedEVSE"
    SUSPENDED_EV = "SuspendedEV"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class Feedback(StrEnum):
    """What the driver should see and hear at the kiosk."""

    READING = "reading"  # card seen, waiting for the verdict
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    STOPPED = "stopped"
    FAULT = "fault"


class Indication(StrEnum):
    """What the status LEDs show: the kiosk's state as a driver reads it from a distance."""

    AVAILABLE = "available"
    OFFLINE = "offline"  # available, but the CSMS is out of reach: only known cards charge
    AUTHORIZING = "authorizing"  # a card is being decided
    CHARGING = "charging"
    SUSPENDED = "suspended"  # session open, energy withheld
    FINISHING = "finishing"
    UNAVAILABLE = "unavailable"  # out of service (ChangeAvailability Inoperative)
    REFUSED = "refused"  # a card was refused: shown for a moment, then the state again
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class RequestAuthorization:
    """Decide whether this card may charge: local list, cache, CSMS and offline rules."""

    id_tag: IdTag


@dataclass(frozen=True, slots=True)
class SetRelay:
    """Energize or de-energize the contactor relay."""

    closed: bool


@dataclass(frozen=True, slots=True)
class Signal:
    """Give the driver LED/buzzer feedback."""

    feedback: Feedback


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """The connector's OCPP status changed: send StatusNotification."""

    status: ConnectorStatus
    error_code: str = "NoError"


@dataclass(frozen=True, slots=True)
class BeginSession:
    """Durably record a new session and queue its StartTransaction."""

    session_id: SessionId
    id_tag: IdTag
    meter_start_wh: int
    reservation_id: int | None = None  # the reservation this session uses (and so ends)


@dataclass(frozen=True, slots=True)
class RecordMeterValues:
    """Durably queue a MeterValues message for the running session."""

    session_id: SessionId
    sample: TelemetrySample


@dataclass(frozen=True, slots=True)
class EndSession:
    """Durably close the session and queue its StopTransaction."""

    session_id: SessionId
    id_tag: IdTag | None  # the card that stopped it, None when not stopped by a card
    meter_stop_wh: int
    reason: StopReason


Action = (
    RequestAuthorization
    | SetRelay
    | Signal
    | ReportStatus
    | BeginSession
    | RecordMeterValues
    | EndSession
)
