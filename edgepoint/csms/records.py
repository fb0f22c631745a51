"""What the CSMS repositories return: frozen records, verdicts, statuses and their errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from edgepoint.charging.events import IdTag
from edgepoint.csms.ids import ChargePointId, CsmsError


class CardExistsError(CsmsError):
    """An id tag with that value (compared case-insensitively) is already registered."""


class AuthorizationStatus(enum.StrEnum):
    """Verdict on an id tag; values are the OCPP 1.6 AuthorizationStatus strings."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"


class CardStatus(enum.StrEnum):
    """What the operator set on a card."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"


class StopOutcome(enum.StrEnum):
    """What a StopTransaction did to the stored transaction."""

    STOPPED = "stopped"
    ALREADY_STOPPED = "already_stopped"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Card:
    """One row of id_tags."""

    id_tag: IdTag
    name: str
    status: CardStatus
    expires: datetime | None  # first instant it no longer works
    parent_id_tag: IdTag | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IdTagVerdict:
    """Authorization status plus what OCPP's idTagInfo also carries."""

    status: AuthorizationStatus
    expires: datetime | None = None
    parent_id_tag: IdTag | None = None


@dataclass(frozen=True, slots=True)
class ChargePointRecord:
    """One row of charge_points, without the key material."""

    id: ChargePointId
    vendor: str | None
    model: str | None
    firmware: str | None
    serial_number: str | None
    has_auth_key: bool
    registered_at: datetime
    last_boot_at: datetime | None
    last_heartbeat_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """Latest StatusNotification of one connector (connector 0 is the whole charge point)."""

    charge_point_id: ChargePointId
    connector_id: int
    status: str
    error_code: str
    info: str | None
    vendor_id: str | None
    vendor_error_code: str | None
    timestamp: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One sampledValue, with the OCPP 1.6 defaults filled in for absent fields."""

    timestamp: datetime
    value: str
    measurand: str = "Energy.Active.Import.Register"
    phase: str | None = None
    unit: str = "Wh"
    location: str = "Outlet"
    format: str = "Raw"
    context: str = "Sample.Periodic"


@dataclass(frozen=True, slots=True)
class MeterValueRecord:
    """One stored row of meter_values."""

    charge_point_id: ChargePointId
    connector_id: int
    transaction_id: int | None
    sample: MeterSample


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """One row of transactions."""

    transaction_id: int
    charge_point_id: ChargePointId
    connector_id: int
    id_tag: IdTag
    id_tag_status: AuthorizationStatus
    meter_start: int
    start_timestamp: datetime
    reservation_id: int | None
    meter_stop: int | None
    stop_timestamp: datetime | None
    stop_reason: str | None
    stop_id_tag: IdTag | None


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """Transaction id assigned to a StartTransaction; `repeated` when it was a retry."""

    transaction_id: int
    repeated: bool
