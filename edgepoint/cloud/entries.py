"""Ledger entries: what one billing event becomes, its hash, its signature, the meter rule.

An entry is a JSON object: a signed *body* (the fields in BODY_FIELDS, described in
docs/cloud.md, "Ledger entries"), plus `hash` (SHA-256 hex of the body's canonical
JSON) and `sig` (base64 Ed25519 signature of the same bytes). `kind` is `start`,
`stop` (by the driver, the CSMS or an operator) or `forced_stop` (a fault, a power
loss, a reset, a card the CSMS refused). Meter readings are monotonic per meter (each
connector has its own register): a start below the highest reading already in the
ledger for that connector, or a stop below its own start, is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from edgepoint.cloud.canonical import canonical_json, sha256_hex
from edgepoint.cloud.signing import LedgerKey
from edgepoint.storage.ledger import GENESIS_HASH, LedgerEvent, NewEntry

__all__ = ["GENESIS_HASH", "LedgerEvent", "NewEntry"]

VERSION = 1
BODY_FIELDS = (
    "v",
    "station",
    "seq",
    "prev_hash",
    "kind",
    "timestamp",
    "time_basis",
    "recorded_at",
    "session_id",
    "connector_id",
    "transaction_id",
    "id_tag_hash",
    "meter_start_wh",
    "meter_stop_wh",
    "energy_wh",
    "reason",
)
# Absent rather than null when they have no value: Realtime Database drops nulls, and
# the body that is signed must be the body that comes back.
OPTIONAL_FIELDS = frozenset({"transaction_id", "meter_stop_wh", "energy_wh", "reason"})
TIME_BASES = ("recorded", "monotonic", "signed")
# A stop for one of these reasons was not the driver's, the CSMS's or an operator's
# choice: a fault (EmergencyStop, Other: lost telemetry), a power loss or crash
# (PowerLoss), a reset or shutdown, or a card the CSMS refused (DeAuthorized).
FORCED_REASONS = frozenset(
    {"EmergencyStop", "PowerLoss", "Other", "HardReset", "SoftReset", "Reboot", "DeAuthorized"}
)


@dataclass(frozen=True, slots=True)
class Stamp:
    """The trusted time an entry carries, and how it was had."""

    timestamp: str
    basis: str
    recorded_at: str


def kind_of(event: LedgerEvent) -> str:
    if event.event == "start":
        return "start"
    return "forced_stop" if event.reason in FORCED_REASONS else "stop"


def hash_id_tag(id_tag: str) -> str:
    """Pseudonymous, not anonymous: a billing backend that knows the card finds its hash."""
    return hashlib.sha256(id_tag.upper().encode("utf-8")).hexdigest()


def meter_problem(event: LedgerEvent, high_water_wh: int | None) -> str | None:
    """Why `event`'s readings may not enter the ledger, or None when they may.

    `high_water_wh` is the highest reading already in the ledger for the connector.
    """
    start = event.meter_start_wh
    if start is None or start < 0:
        return f"meter_start_wh is missing or negative ({start})"
    if event.event == "start":
        if high_water_wh is not None and start < high_water_wh:
            return (
                f"meter_start_wh {start} is below {high_water_wh} Wh already in the ledger"
                f" for connector {event.connector_id}: the meter went backwards"
            )
        return None
    stop = event.meter_stop_wh
    if stop is None:
        return "meter_stop_wh is missing"
    if stop < start:
        return f"meter_stop_wh {stop} is below meter_start_wh {start}: the meter went backwards"
    if high_water_wh is not None and stop < high_water_wh:
        return (
            f"meter_stop_wh {stop} is below {high_water_wh} Wh already in the ledger"
            f" for connector {event.connector_id}: the meter went backwards"
        )
    return None


def entry_body(
    event: LedgerEvent,
    *,
    station: str,
    seq: int,
    prev_hash: str,
    stamp: Stamp,
    transaction_id: int | None,
) -> dict[str, Any]:
    stop = event.meter_stop_wh if event.event == "stop" else None
    start = event.meter_start_wh
    body = {
        "v": VERSION,
        "station": station,
        "seq": seq,
        "prev_hash": prev_hash,
        "kind": kind_of(event),
        "timestamp": stamp.timestamp,
        "time_basis": stamp.basis,
        "recorded_at": stamp.recorded_at,
        "session_id": event.session_id,
        "connector_id": event.connector_id,
        "transaction_id": transaction_id,
        "id_tag_hash": hash_id_tag(event.id_tag),
        "meter_start_wh": start,
        "meter_stop_wh": stop,
        "energy_wh": None if stop is None or start is None else stop - start,
        "reason": event.reason if event.event == "stop" else None,
    }
    return {k: v for k, v in body.items() if v is not None or k not in OPTIONAL_FIELDS}


def seal(body: dict[str, Any], key: LedgerKey) -> NewEntry:
    """Hash and sign `body`; the result is what the ledger table and every sink keep."""
    canonical = canonical_json(body)
    readings = [r for r in (body["meter_start_wh"], body.get("meter_stop_wh")) if r is not None]
    return NewEntry(
        body["seq"], canonical.decode(), sha256_hex(canonical), key.sign(canonical), max(readings)
    )


def split_entry(entry: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """An uploaded or exported entry as (body, hash, sig)."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return body, entry.get("hash"), entry.get("sig")
