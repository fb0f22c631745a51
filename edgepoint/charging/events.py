"""Domain events that drivers and the OCPP link publish into the charging core."""

from __future__ import annotations

from dataclasses import dataclass, field
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
