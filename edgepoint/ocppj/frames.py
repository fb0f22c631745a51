"""OCPP-J frames, sans-I/O: one WebSocket message in, a typed frame or a CALLERROR to send out."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edgepoint.ocppj.errors import ErrorCode, Refusal

CALL, CALLRESULT, CALLERROR = 2, 3, 4

# Answer for a CALL whose unique id cannot be read (the convention OCPP 2.0.1 made explicit).
UNKNOWN_UNIQUE_ID = "-1"
# The spec caps unique ids at 36 characters; some peers send longer ones and echoing them
# costs nothing, so only absurd lengths are refused.
MAX_UNIQUE_ID = 128
# The deepest OCPP 1.6 message (SetChargingProfile) nests 6 levels inside the frame;
# anything far deeper is hostile and would only cost recursion further on.
MAX_DEPTH = 24
MAX_ACTION = 64
# Far beyond any 32-bit or float value, far below what costs time to convert.
MAX_INT_DIGITS = 400

# Recover the unique id of a CALL whose JSON is broken further on.
_CALL_PREFIX = re.compile(r'\s*\[\s*2\s*,\s*"([^"\\]{1,128})"')


@dataclass(frozen=True, slots=True)
class Call:
    """[2, uniqueId, action, payload]."""

    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """[3, uniqueId, payload]."""

    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """[4, uniqueId, errorCode, errorDescription, errorDetails]."""

    unique_id: str
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that cannot be handled; `reply` is the CALLERROR to send, if one is allowed."""

    reason: str
    reply: str | None = None


Frame = Call | CallResult | CallError | BadFrame


# ASCII-only output: a lone surrogate copied from a peer still encodes as valid JSON.
# One encoder for every frame: json.dumps with options builds a new one on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def dumps(message: list[Any]) -> str:
    return _ENCODER.encode(message)


def call_frame(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return dumps([CALL, unique_id, action, payload])


def result_frame(unique_id: str, payload: dict[str, Any]) -> str:
    return dumps([CALLRESULT, unique_id, payload])


def error_frame(unique_id: str, refusal: Refusal) -> str:
    return dumps([CALLERROR, unique_id, str(refusal.code), refusal.description, refusal.details])


def _reject(unique_id: str, code: ErrorCode, cause: str) -> BadFrame:
    return BadFrame(cause, error_frame(unique_id, Refusal(code, cause)))


def _is_unique_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_UNIQUE_ID


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    # Python's own digit limit is process-wide and can be lifted; converting a huge
    # digit string is quadratic, so bound it here whatever that setting is.
    if len(text) > MAX_INT_DIGITS:
        raise ValueError("integer literal too long")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf, which no OCPP field holds
        raise ValueError("number out of range")
    return value


def _too_deep(value: Any) -> bool:
    """Tell, without recursion, whether `value` nests deeper than MAX_DEPTH."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


# One decoder for every frame: json.loads with hooks builds a new one on each call.
_DECODER = json.JSONDecoder(
    parse_constant=_no_constants, parse_int=_bounded_int, parse_float=_finite_float
)


def parse(raw: str | bytes) -> Frame:
    """Classify one WebSocket message.

    OCPP-J travels in text frames only: a binary frame is refused unread. Broken JSON gets
    FormationViolation; JSON that is not an RPC frame gets ProtocolError; a CALL whose
    payload is not an object gets FormationViolation. A malformed CALLRESULT or CALLERROR
    gets no reply: only a CALL may be answered.
    """
    if isinstance(raw, bytes):
        return BadFrame("binary frame (OCPP-J uses text frames)")
    try:
        message = _DECODER.decode(raw)
    except (ValueError, RecursionError):
        # ValueError also covers integers beyond Python's digit limit.
        match = _CALL_PREFIX.match(raw)
        unique_id = match.group(1) if match else UNKNOWN_UNIQUE_ID
        return _reject(unique_id, ErrorCode.FORMATION_VIOLATION, "message is not valid JSON")

    def protocol_error(cause: str) -> BadFrame:
        unique_id = (
            message[1]
            if isinstance(message, list) and len(message) > 1 and _is_unique_id(message[1])
            else UNKNOWN_UNIQUE_ID
        )
        return _reject(unique_id, ErrorCode.PROTOCOL_ERROR, cause)

    if not isinstance(message, list) or not message:
        return protocol_error("message is not a non-empty JSON array")
    kind = message[0]
    if isinstance(kind, bool) or not isinstance(kind, int):
        return protocol_error("message type id must be 2, 3 or 4")
    # A message cannot nest deeper than the brackets it holds (those inside strings only
    # add to the count): an ordinary frame is cleared without walking it.
    if raw.count("[") + raw.count("{") >= MAX_DEPTH and _too_deep(message):
        too_deep = f"message nests deeper than {MAX_DEPTH} levels"
        # Only a CALL may be answered; a reply this deep is dropped like any malformed one.
        return (
            protocol_error(too_deep) if kind not in (CALLRESULT, CALLERROR) else BadFrame(too_deep)
        )
    if kind == CALL:
        if len(message) != 4:
            return protocol_error("CALL must have 4 elements")
        _, unique_id, action, payload = message
        if not _is_unique_id(unique_id):
            return protocol_error("CALL unique id must be a non-empty string")
        if not isinstance(action, str) or not 0 < len(action) <= MAX_ACTION:
            return protocol_error("CALL action must be a short string")
        if not isinstance(payload, dict):
            return _reject(
                unique_id, ErrorCode.FORMATION_VIOLATION, "CALL payload must be an object"
            )
        return Call(unique_id, action, payload)
    if kind == CALLRESULT:
        if len(message) == 3 and _is_unique_id(message[1]) and isinstance(message[2], dict):
            return CallResult(message[1], message[2])
        return BadFrame("malformed CALLRESULT")
    if kind == CALLERROR:
        if (
            len(message) == 5
            and _is_unique_id(message[1])
            and isinstance(message[2], str)
            and isinstance(message[3], str)
            and isinstance(message[4], dict)
        ):
            return CallError(message[1], message[2], message[3], message[4])
        return BadFrame("malformed CALLERROR")
    return protocol_error("message type id must be 2, 3 or 4")
