"""Build OCPP 1.6 request payloads in their wire form (camelCase), as the outbox stores them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import IdTag, StopReason, TelemetrySample
from edgepoint.clock import iso_utc

# transactionId is absent from what the outbox stores for MeterValues and Stop: it is
# known only once the CSMS confirmed the session's StartTransaction (which may happen
# long after an offline start), and is added at send time.

# Measurand -> (unit, how to read it off a sample).
MEASURANDS: dict[str, tuple[str, str]] = {
    "Energy.Active.Import.Register": ("Wh", "energy_wh"),
    "Power.Active.Import": ("W", "power_w"),
    "Current.Import": ("A", "current_a"),
    "Voltage": ("V", "voltage_v"),
    "Temperature": ("Celsius", "temperature_c"),
}
DEFAULT_MEASURANDS = tuple(MEASURANDS)


def start_transaction(
    connector_id: int,
    id_tag: IdTag,
    meter_start_wh: int,
    at: datetime,
    reservation_id: int | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "connectorId": connector_id,
        "idTag": id_tag,
        "meterStart": meter_start_wh,
        "timestamp": iso_utc(at),
    }
    if reservation_id is not None:
        message["reservationId"] = reservation_id
    return message


def sampled_values(
    sample: TelemetrySample, context: str, measurands: tuple[str, ...] = DEFAULT_MEASURANDS
) -> list[dict[str, str]]:
    """The telemetry sample as OCPP SampledValues (values are strings in OCPP 1.6)."""
    values = []
    for measurand in measurands:
        if measurand not in MEASURANDS:
            continue
        unit, attribute = MEASURANDS[measurand]
        number = getattr(sample, attribute)
        text = f"{number:g}" if isinstance(number, float) else str(number)
        values.append({"value": text, "context": context, "measurand": measurand, "unit": unit})
    return values


def meter_values(
    connector_id: int,
    sample: TelemetrySample,
    at: datetime,
    context: str = "Sample.Periodic",
    measurands: tuple[str, ...] = DEFAULT_MEASURANDS,
) -> dict[str, Any]:
    return {
        "connectorId": connector_id,
        "meterValue": [
            {
                "timestamp": iso_utc(at),
                "sampledValue": sampled_values(sample, context, measurands)
                or sampled_values(sample, context, ("Energy.Active.Import.Register",)),
            }
        ],
    }


def stop_transaction(
    id_tag: IdTag | None, meter_stop_wh: int, reason: StopReason, at: datetime
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "meterStop": meter_stop_wh,
        "timestamp": iso_utc(at),
        "reason": reason.value,
    }
    if id_tag is not None:
        message["idTag"] = id_tag
    return message


def status_notification(
    connector_id: int, status: ConnectorStatus, error_code: str, at: datetime
) -> dict[str, Any]:
    return {
        "connectorId": connector_id,
        "errorCode": error_code,
        "status": status.value,
        "timestamp": iso_utc(at),
    }
