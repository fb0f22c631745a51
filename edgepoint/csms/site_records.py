"""What the site operator's repositories return: frozen views of chargers, sessions and lists."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgepoint.csms.health import Health
from edgepoint.csms.ids import ChargePointId


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """A connector's latest StatusNotification; connector 0 is the whole charger."""

    charge_point_id: ChargePointId
    connector_id: int
    status: str
    error_code: str
    info: str | None
    vendor_error_code: str | None
    since: datetime  # the charger's timestamp of that status
    in_error: bool


@dataclass(frozen=True, slots=True)
class ChargerView:
    """A registered charger as the CLI, TUI and cloud list it.

    `online` is None when the caller has no live server to ask (a CLI reading csms.db).
    `last_seen` is the newest time the database recorded something from it (boot,
    heartbeat, status, transaction start); MeterValues are not tracked for it.
    """

    id: ChargePointId
    online: bool | None
    last_seen: datetime | None
    vendor: str | None
    model: str | None
    firmware: str | None
    registered_at: datetime
    connectors: tuple[ConnectorView, ...]
    health: Health | None


@dataclass(frozen=True, slots=True)
class TransactionView:
    """A live or past transaction with the energy delivered so far (Wh)."""

    transaction_id: int
    charge_point_id: ChargePointId
    connector_id: int
    id_tag: str
    id_tag_status: str
    started_at: datetime
    meter_start: int
    stopped_at: datetime | None
    meter_stop: int | None
    stop_reason: str | None
    # Closed: meterStop - meterStart. Live: the latest Energy.Active.Import.Register sample
    # (whole-meter, no phase; kWh converted) - meterStart, None before the first sample.
    energy_wh: float | None
    last_reading_at: datetime | None

    @property
    def live(self) -> bool:
        return self.stopped_at is None


@dataclass(frozen=True, slots=True)
class OpenTransaction:
    """A transaction not stopped yet, as load management sees it."""

    transaction_id: int
    charge_point_id: ChargePointId
    connector_id: int
    started_at: datetime


class LimitState(enum.StrEnum):
    """Where a connector's load-management limit stands with its charger."""

    PENDING = "pending"  # not sent yet
    OFFLINE = "offline"  # the charger is not connected: sent when it reconnects
    ACCEPTED = "accepted"  # the charger accepted it: `applied_w` is in force
    REFUSED = "refused"  # the charger answered Rejected or NotSupported
    FAILED = "failed"  # CallError, invalid reply or no reply in time


@dataclass(frozen=True, slots=True)
class LoadLimit:
    """Load management's record of one running transaction's limit.

    `limit_w` is the share it should have (None: no limit, the site limit is off);
    `applied_w` what the charger last accepted (None: no profile of ours, i.e. unlimited).
    """

    transaction_id: int
    charge_point_id: ChargePointId
    connector_id: int
    limit_w: int | None
    applied_w: int | None
    state: LimitState
    detail: str | None
    updated_at: datetime


class UpdateType(enum.StrEnum):
    """SendLocalList updateType."""

    FULL = "Full"
    DIFFERENTIAL = "Differential"


@dataclass(frozen=True, slots=True)
class LocalListUpdate:
    """A SendLocalList ready to send: version, kind and the OCPP localAuthorizationList."""

    update_type: UpdateType
    list_version: int
    entries: tuple[dict[str, Any], ...]

    def payload(self) -> dict[str, Any]:
        return {
            "listVersion": self.list_version,
            "updateType": self.update_type.value,
            "localAuthorizationList": list(self.entries),
        }


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one retention pass deleted, and in how many small write transactions."""

    meter_values: int
    transactions: int
    status_changes: int
    local_list_tombstones: int
    batches: int
