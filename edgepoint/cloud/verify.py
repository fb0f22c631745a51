"""Check a ledger: sequence, hash chain, signatures and meter monotonicity, entry by entry.

Each problem names the entry (its position and seq) and what is wrong, in the order a
reader would fix them: a changed field breaks that entry's `hash`; a re-hashed change
breaks its signature; a removed, inserted or reordered entry breaks the `seq` count and
the `prev_hash` link; a reading that goes back breaks monotonicity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgepoint.cloud.canonical import canonical_json, sha256_hex
from edgepoint.cloud.entries import (
    BODY_FIELDS,
    GENESIS_HASH,
    OPTIONAL_FIELDS,
    TIME_BASES,
    split_entry,
)
from edgepoint.cloud.signing import signature_valid


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one entry."""

    position: int  # 1-based place in the file or table
    seq: Any  # what the entry claims
    message: str

    def __str__(self) -> str:
        return f"entry {self.position} (seq {self.seq}): {self.message}"


def verify_entries(entries: Iterable[dict[str, Any]], public: Ed25519PublicKey) -> list[Problem]:
    """Every problem found in `entries` (in ledger order); empty when the ledger is sound."""
    problems: list[Problem] = []
    expected_seq = 1
    prev_hash = GENESIS_HASH
    station: str | None = None
    high_water: dict[int, int] = {}
    for position, entry in enumerate(entries, start=1):
        found = _check(entry, position, expected_seq, prev_hash, station, high_water, public)
        problems.extend(found.problems)
        # Carry on from what this entry claims, so one removed entry is one problem
        # (plus its broken link), not a complaint about every entry after it.
        if isinstance(found.seq, int):
            expected_seq = found.seq + 1
        prev_hash = found.hash if isinstance(found.hash, str) else prev_hash
        station = station or found.station
    return problems


@dataclass(slots=True)
class _Found:
    problems: list[Problem]
    seq: Any = None
    hash: Any = None
    station: str | None = None


def _check(
    entry: Any,
    position: int,
    expected_seq: int,
    prev_hash: str,
    station: str | None,
    high_water: dict[int, int],
    public: Ed25519PublicKey,
) -> _Found:
    if not isinstance(entry, dict):
        return _Found([Problem(position, "?", "is not a JSON object")])
    body, claimed_hash, sig = split_entry(entry)
    seq = body.get("seq")
    found = _Found([], seq, claimed_hash)

    def problem(message: str) -> None:
        found.problems.append(Problem(position, seq, message))

    missing = [n for n in BODY_FIELDS if n not in body and n not in OPTIONAL_FIELDS]
    extra = sorted(set(body) - set(BODY_FIELDS))
    if missing or extra or not isinstance(claimed_hash, str) or not isinstance(sig, str):
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown field(s) {', '.join(extra)}"] if extra else []
        parts += [] if isinstance(claimed_hash, str) and isinstance(sig, str) else ["no hash/sig"]
        problem("malformed: " + "; ".join(parts))
        return found
    try:
        canonical = canonical_json(body)
    except ValueError as err:
        problem(f"malformed: {err}")
        return found
    if sha256_hex(canonical) != claimed_hash:
        problem("hash does not match the entry's content: a field was changed after signing")
    elif not signature_valid(public, canonical, sig):
        problem("signature does not verify with the station's public key (wrong key or forged)")
    if seq != expected_seq:
        if isinstance(seq, int) and seq > expected_seq:
            problem(f"expected seq {expected_seq}: entries {expected_seq}..{seq - 1} are missing")
        else:
            problem(f"expected seq {expected_seq}: an entry was inserted, repeated or reordered")
    if body["prev_hash"] != prev_hash:
        problem(
            "prev_hash does not match the hash of the entry before it: the chain is broken"
            " (an entry was removed, inserted or reordered)"
        )
    if station is not None and body["station"] != station:
        problem(f"station {body['station']!r} differs from {station!r} in earlier entries")
    found.station = body["station"] if isinstance(body["station"], str) else None
    if body["time_basis"] not in TIME_BASES:
        problem(f"time_basis {body['time_basis']!r} is not one of {', '.join(TIME_BASES)}")
    _check_meter(body, high_water, problem)
    return found


def _check_meter(body: dict[str, Any], high_water: dict[int, int], problem: Any) -> None:
    connector, start = body["connector_id"], body["meter_start_wh"]
    stop = body.get("meter_stop_wh")
    if not isinstance(connector, int) or not isinstance(start, int):
        problem("connector_id and meter_start_wh must be integers")
        return
    last = high_water.get(connector)
    if body["kind"] == "start":
        if last is not None and start < last:
            problem(
                f"meter_start_wh {start} is below {last} Wh earlier in the ledger for connector"
                f" {connector}: meter readings went backwards"
            )
        high_water[connector] = max(start, last or start)
        return
    if not isinstance(stop, int):
        problem("a stop needs an integer meter_stop_wh")
        return
    if stop < start:
        problem(f"meter_stop_wh {stop} is below meter_start_wh {start}: readings went backwards")
    elif last is not None and stop < last:
        problem(
            f"meter_stop_wh {stop} is below {last} Wh earlier in the ledger for connector"
            f" {connector}: meter readings went backwards"
        )
    if body.get("energy_wh") != stop - start:
        problem(f"energy_wh {body.get('energy_wh')} is not meter_stop_wh - meter_start_wh")
    high_water[connector] = max(stop, start, last or 0)
