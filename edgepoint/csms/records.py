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
    CONCURRENT_TX = "ConcurrentTx"  # the tag already runs as many transactions as it may


class CardStatus(enum.StrEnum):
    """What the operator set on a card."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"


class StopOutcome(enum.StrEnum):
    """What a StopTransaction did to the stored transaction."""

    STOPPED = "stopped"
    ALREADY_STOPPED = "already_stopped"
    UNKNOWN = "unknown"
    FOREIGN = "foreign"  # the transaction is another charge point's: refused, nothing stored


class AnomalyKind(enum.StrEnum):
    """What the CSMS did about something wrong a charge point sent."""

    REFUSED = "refused"  # answered with a CALLERROR, nothing stored
    FLAGGED = "flagged"  # stored and answered normally, with the reason recorded
    DISCONNECTED = "disconnected"  # the connection was closed


class AnomalyReason(enum.StrEnum):
    """Why: short stable codes, queryable in the anomalies table."""

    CONNECTOR_OUT_OF_RANGE = "connector_out_of_range"
    NEGATIVE_METER_START = "negative_meter_start"
    FOREIGN_TRANSACTION = "foreign_transaction"
    TOO_MANY_SAMPLED_VALUES = "too_many_sampled_values"
    UNKNOWN_TRANSACTION = "unknown_transaction"
    CONNECTOR_MISMATCH = "connector_mismatch"
    METER_BACKWARDS = "meter_backwards"
    SUPERSEDED = "superseded"
    OUT_OF_ORDER_START = "out_of_order_start"
    STOP_BEFORE_START = "stop_before_start"
    FUTURE_TIMESTAMP = "future_timestamp"
    FRAME_TOO_BIG = "frame_too_big"
    TOO_MANY_BAD_FRAMES = "too_many_bad_frames"
    OPERATOR_DISCONNECT = "operator_disconnect"  # closed on the operator's request


@dataclass(frozen=True, slots=True)
class Card:
    """One row of id_tags."""

    id_tag: IdTag
    name: str
    status: CardStatus
    expires: datetime | None  # first instant it no longer works
    parent_id_tag: IdTag | None
    created_at: datetime
    # Open transactions the tag may have at once; one more gets ConcurrentTx.
    max_concurrent_tx: int = 1


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
    # Connector ids 1..connector_count are accepted; None = not set (DEFAULT_CONNECTOR_COUNT).
    connector_count: int | None = None
    last_seen_at: datetime | None = None  # any message, with or without a BootNotification
    firmware_status: str | None = None
    diagnostics_status: str | None = None
    # Bumped on every key change: a key verified under another version was replaced.
    key_version: int = 0


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
    # Closed because a newer StartTransaction came on its connector before its Stop did;
    # a StopTransaction arriving later still fills in the real end.
    superseded_by: int | None = None
    meter_backwards: bool = False  # a reading below meterStart or below an earlier one


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """Transaction id assigned to a StartTransaction; `repeated` when it was a retry.

    `verdict` is the idTagInfo to answer (a retry gets the status the first try got);
    `superseded` lists the older open transactions of the connector this start closed.
    """

    transaction_id: int
    repeated: bool
    verdict: IdTagVerdict
    superseded: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something wrong in what a charge point sent, as a handler or repository found it."""

    kind: AnomalyKind
    reason: AnomalyReason
    action: str | None = None  # the OCPP action, None for the connection itself
    detail: str = ""  # short, printable, never an id tag
    transaction_id: int | None = None


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """One row of the anomalies table: an anomaly and how often it came in a row."""

    id: int
    charge_point_id: ChargePointId
    anomaly: Anomaly
    first_at: datetime
    last_at: datetime
    count: int
