"""The compiled fast path of validation accepts nothing the full validator refuses.

Every valid message is judged by the compiled validator alone, so if it were looser than
the full one (the 32-bit bound, the offset rule of date-times, multipleOf...) a bad
message would get through unseen. Thousands of seeded mutations of every OCPP 1.6 message,
both directions, compare the two.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from ocpp.messages import get_validator

from edgepoint.ocppj import validation
from edgepoint.ocppj.validation import INT32, KNOWN_ACTIONS, VERSION

HOSTILE: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1.5,
    2**31,
    -(2**31) - 1,
    2**31 - 1,
    2**63,
    1e300,
    "",
    "x" * 600,
    "2024-05-01",
    "2024-05-01 12:00:00",
    "2024-05-01T12:00:00",
    "2024-05-01T12:00:00Z\n",
    "2024-13-01T12:00:00Z",
    "2024-05-01T12:00:00+01:00",
    "\ud800",
    [],
    {},
    [1],
    {"x": 1},
)


def schema_of(message_type: int, action: str) -> dict[str, Any]:
    schema: dict[str, Any] = get_validator(message_type, action, VERSION).schema
    return schema


def value_for(rng: random.Random, schema: dict[str, Any]) -> Any:
    """A value that is valid for `schema`, most of the time (random enough to vary)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "object":
        return {
            key: value_for(rng, sub)
            for key, sub in schema.get("properties", {}).items()
            if key in schema.get("required", ()) or rng.random() < 0.6
        }
    if kind == "array":
        low = schema.get("minItems", 0)
        return [value_for(rng, schema.get("items", {})) for _ in range(low + rng.randint(0, 2))]
    if kind == "string":
        if schema.get("format") == "date-time":
            return rng.choice(("2025-06-01T12:00:00Z", "2025-06-01T12:00:00.123+02:00"))
        return "a" * rng.randint(1, min(8, schema.get("maxLength", 8)))
    if kind == "integer":
        return rng.randint(0, 1000)
    if kind == "number":
        return rng.choice((0, 1, 2.5, 32.1, 21.4))
    if kind == "boolean":
        return rng.random() < 0.5
    return "x"


def nodes(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair inside `value`."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [(item, key) for key in item]
            stack += list(item.values())
        elif isinstance(item, list):
            found += [(item, index) for index in range(len(item))]
            stack += item
    return found


def hostile(rng: random.Random) -> Any:
    # A copy: the shared [] and {} must not end up inside themselves after mutations.
    return copy.deepcopy(rng.choice(HOSTILE))


def mutate(rng: random.Random, payload: dict[str, Any]) -> None:
    """One hostile change somewhere in `payload`."""
    spots = nodes(payload)
    roll = rng.random()
    if not spots or roll < 0.1:
        payload[rng.choice(("extra", "idTag", "timestamp"))] = hostile(rng)
        return
    container, key = rng.choice(spots)
    if roll < 0.2 and isinstance(container, dict):
        del container[key]
    elif roll < 0.3 and isinstance(container[key], str):
        container[key] = container[key] + rng.choice(("Z", " ", "\ud800", "é"))
    else:
        container[key] = hostile(rng)


def full_verdict(message_type: int, action: str, payload: dict[str, Any]) -> bool:
    """Whether the full (jsonschema) validator and the text rule accept `payload`."""
    full = validation._validator(message_type, action)
    return next(iter(full.iter_errors(payload)), None) is None


@pytest.mark.parametrize("message_type", [2, 3])
def test_the_fast_path_is_never_looser_than_the_full_validator(message_type: int) -> None:
    rng = random.Random(1600 + message_type)
    checked = fast_accepts = 0
    for action in sorted(KNOWN_ACTIONS):
        schema = schema_of(message_type, action)
        for _ in range(150):
            payload = value_for(rng, schema)
            for _ in range(rng.randint(0, 2)):
                mutate(rng, payload)
            fast = validation._passes_fast(message_type, action, payload)
            full = full_verdict(message_type, action, payload)
            checked += 1
            fast_accepts += fast
            assert full or not fast, f"{action} ({message_type}): fast path let {payload!r} in"
    # The comparison means something only if both verdicts occurred plenty.
    assert fast_accepts > checked * 0.2
    assert checked - fast_accepts > checked * 0.2


def test_integer_bounds_and_offsets_hold_on_the_fast_path() -> None:
    start = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "2025-06-01T12:00Z"}
    assert not validation._passes_fast(2, "StartTransaction", start)  # no seconds
    start["timestamp"] = "2025-06-01T12:00:00"
    assert not validation._passes_fast(2, "StartTransaction", start)  # no offset
    start["timestamp"] = "2025-06-01T12:00:00+02:00"
    assert validation._passes_fast(2, "StartTransaction", start)
    start["meterStart"] = INT32[1] + 1
    assert not validation._passes_fast(2, "StartTransaction", start)
    start["meterStart"] = INT32[1]
    assert validation._passes_fast(2, "StartTransaction", start)


def test_the_fast_path_never_edits_the_payload() -> None:
    payload = {"chargePointVendor": "V", "chargePointModel": "M"}
    assert validation._passes_fast(2, "BootNotification", payload)
    assert payload == {"chargePointVendor": "V", "chargePointModel": "M"}
