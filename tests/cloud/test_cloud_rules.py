"""database.rules.json, evaluated offline by targaryen 3.1.0 (npm; firebase-server's evaluator).

firebase-server does not apply rules to REST calls, so the rules are checked here
directly: a station writes only its own subtree, ledger entries are append-only, the
public key is written once, fleet cards are readable by stations only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.firebase_server import NODE_MODULES, require_node

RULES = Path(__file__).resolve().parents[2] / "database.rules.json"
EP1 = {"uid": "station:EP-1"}
EP2 = {"uid": "station:EP-2"}
DOC = {"status": "CHARGING", "last_updated": "2026-03-01T12:00:00.000Z", "station_id": "EP-1"}
PUBKEY = "A" * 43 + "="
ENTRY = {
    "v": 1,
    "station": "EP-1",
    "seq": 1,
    "prev_hash": "0" * 64,
    "kind": "start",
    "timestamp": "2026-03-01T12:00:00.000Z",
    "session_id": "s-1",
    "meter_start_wh": 10,
    "hash": "ab" * 32,
    "sig": "c2ln",
}
SEQ1 = "seq_000000000001"


def evaluate(cases: list[dict[str, Any]]) -> list[bool]:
    node = require_node()
    result = subprocess.run(
        [node, str(Path(__file__).with_name("rules_check.js"))],
        input=json.dumps({"rules": str(RULES), "cases": cases}),
        capture_output=True,
        text=True,
        timeout=30,
        env={"NODE_PATH": str(NODE_MODULES)},
        check=True,
    )
    return [json.loads(line)["allowed"] for line in result.stdout.splitlines()]


CASES = [
    # (what, case, allowed)
    (
        "a station writes its own state",
        dict(auth=EP1, op="write", path="chargers/EP-1", value=DOC),
        True,
    ),
    (
        "a station updates its own state",
        dict(
            auth=EP1,
            op="update",
            path="chargers/EP-1",
            value={"power": "1.0 kW"},
            data={"chargers": {"EP-1": DOC}},
        ),
        True,
    ),
    (
        "a station cannot write another's state",
        dict(auth=EP1, op="write", path="chargers/EP-2", value=DOC),
        False,
    ),
    (
        "nobody anonymous writes state",
        dict(auth=None, op="write", path="chargers/EP-1", value=DOC),
        False,
    ),
    (
        "the state must look like one",
        dict(
            auth=EP1,
            op="write",
            path="chargers/EP-1",
            value={"status": "ON FIRE", "last_updated": "x", "station_id": "EP-1"},
        ),
        False,
    ),
    (
        "the driver page reads state without signing in",
        dict(auth=None, op="read", path="chargers/EP-1"),
        True,
    ),
    (
        "a station cannot write outside its subtrees",
        dict(auth=EP1, op="write", path="fleet/cards/04A1B2C3", value="Accepted"),
        False,
    ),
    (
        "nor at the root",
        dict(auth=EP1, op="update", path="/", value={"chargers/EP-1": DOC, "chargers/EP-2": DOC}),
        False,
    ),
    (
        "a station publishes its key once",
        dict(auth=EP1, op="write", path="stations/EP-1/pubkey", value=PUBKEY),
        True,
    ),
    (
        "and again, unchanged",
        dict(
            auth=EP1,
            op="write",
            path="stations/EP-1/pubkey",
            value=PUBKEY,
            data={"stations": {"EP-1": {"pubkey": PUBKEY}}},
        ),
        True,
    ),
    (
        "but never replaces it",
        dict(
            auth=EP1,
            op="write",
            path="stations/EP-1/pubkey",
            value="B" * 43 + "=",
            data={"stations": {"EP-1": {"pubkey": PUBKEY}}},
        ),
        False,
    ),
    (
        "nor writes another's key",
        dict(auth=EP1, op="write", path="stations/EP-2/pubkey", value=PUBKEY),
        False,
    ),
    (
        "a station appends to its ledger",
        dict(
            auth=EP1,
            op="update",
            path="ledger/EP-1",
            value={SEQ1: ENTRY, "seq_000000000002": {**ENTRY, "seq": 2}},
        ),
        True,
    ),
    (
        "a ledger entry is never overwritten",
        dict(
            auth=EP1,
            op="write",
            path=f"ledger/EP-1/{SEQ1}",
            value={**ENTRY, "meter_start_wh": 0},
            data={"ledger": {"EP-1": {SEQ1: ENTRY}}},
        ),
        False,
    ),
    (
        "nor deleted",
        dict(
            auth=EP1,
            op="write",
            path=f"ledger/EP-1/{SEQ1}",
            value=None,
            data={"ledger": {"EP-1": {SEQ1: ENTRY}}},
        ),
        False,
    ),
    (
        "nor changed field by field",
        dict(
            auth=EP1,
            op="write",
            path=f"ledger/EP-1/{SEQ1}/meter_start_wh",
            value=0,
            data={"ledger": {"EP-1": {SEQ1: ENTRY}}},
        ),
        False,
    ),
    (
        "a batch that would overwrite one entry is refused whole",
        dict(
            auth=EP1,
            op="update",
            path="ledger/EP-1",
            value={SEQ1: ENTRY, "seq_000000000002": {**ENTRY, "seq": 2}},
            data={"ledger": {"EP-1": {SEQ1: ENTRY}}},
        ),
        False,
    ),
    (
        "a station cannot append to another's ledger",
        dict(auth=EP2, op="update", path="ledger/EP-1", value={SEQ1: ENTRY}),
        False,
    ),
    (
        "ledger keys are seq_ and 12 digits",
        dict(auth=EP1, op="write", path="ledger/EP-1/1", value=ENTRY),
        False,
    ),
    (
        "an entry has its fields",
        dict(auth=EP1, op="write", path=f"ledger/EP-1/{SEQ1}", value={"seq": 1}),
        False,
    ),
    (
        "a station reads its own ledger back",
        dict(auth=EP1, op="read", path=f"ledger/EP-1/{SEQ1}"),
        True,
    ),
    ("but not another's", dict(auth=EP2, op="read", path=f"ledger/EP-1/{SEQ1}"), False),
    (
        "a billing reader reads every ledger",
        dict(auth={"uid": "billing", "ledger_reader": True}, op="read", path="ledger/EP-1"),
        True,
    ),
    ("stations read the fleet's cards", dict(auth=EP1, op="read", path="fleet/cards"), True),
    (
        "and their own station cards",
        dict(auth=EP1, op="read", path="fleet/stations/EP-1/cards"),
        True,
    ),
    ("not another station's", dict(auth=EP1, op="read", path="fleet/stations/EP-2/cards"), False),
    ("the public does not read cards", dict(auth=None, op="read", path="fleet/cards"), False),
]


@pytest.fixture(scope="module")
def outcomes() -> list[bool]:
    return evaluate([case for _, case, _ in CASES])


@pytest.mark.parametrize(("index", "what"), [(i, what) for i, (what, _, _) in enumerate(CASES)])
def test_rule(outcomes: list[bool], index: int, what: str) -> None:
    assert outcomes[index] is CASES[index][2], what


def test_the_station_key_mapping_keeps_rules_paths_simple() -> None:
    from edgepoint.cloud.stationkey import station_key

    # An escaped key is still one path segment, so $station matches it whole.
    key = station_key("site.a/bay#2")
    assert evaluate(
        [dict(auth={"uid": f"station:{key}"}, op="write", path=f"chargers/{key}", value=DOC)]
    ) == [True]
