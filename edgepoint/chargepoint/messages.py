"""Build the keyword arguments of OCPP 1.6 requests, as stored in the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from edgepoint.charging.events import IdTag, StopReason, TelemetrySample
from edgepoint.clock import iso_utc

# Stored in snake_case, the form `ocpp.v16.call.<Action>(**kwargs)` takes; the library
# turns nested keys into camelCase on the wire. transactionId is absent on purpose: it
# is only known once the CSMS confirmed StartTransaction, and is added at send time.


def start_transaction(
    connector_id: int, id_tag: IdTag, meter_start_wh: int, at: datetime
) -> dict[str, Any]:
    return {
        "connector_id": connector_id,
        "id_tag": id_tag,
        "meter_start": meter_start_wh,
        "timestamp": iso_utc(at),
    }


def sampled_values(sample: TelemetrySample, context: str) -> list[dict[str, str]]:
    """The telemetry sample as OCPP SampledValues (values are strings in OCPP 1.6)."""

    def value(measurand: str, unit: str, number: float) -> dict[str, str]:
        return {
            "value": f"{number:g}" if isinstance(number, float) else str(number),
            "context": context,
            "measurand": measurand,
            "unit": unit,
        }

    return [
        value("Energy.Active.Import.Register", "Wh", sample.energy_wh),
        value("Power.Active.Import", "W", sample.power_w),
        value("Current.Import", "A", sample.current_a),
        value("Voltage", "V", sample.voltage_v),
        value("Temperature", "Celsius", sample.temperature_c),
    ]


def meter_values(connector_id: int, sample: TelemetrySample, at: datetime) -> dict[str, Any]:
    return {
        "connector_id": connector_id,
        "meter_value": [
            {"timestamp": iso_utc(at), "sampled_value": sampled_values(sample, "Sample.Periodic")}
        ],
    }


def stop_transaction(
    id_tag: IdTag | None, meter_stop_wh: int, reason: StopReason, at: datetime
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "meter_stop": meter_stop_wh,
        "timestamp": iso_utc(at),
        "reason": reason.value,
    }
    if id_tag is not None:
        message["id_tag"] = id_tag
    return message
