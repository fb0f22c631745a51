"""OCPP-J 1.6 RPC framing, sans-I/O: a received frame in, a parsed message or a CallError out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ocpp.exceptions import (
    FormationViolationError,
    OCPPError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import (
    NotImplementedError as OcppNotImplementedError,
)
from ocpp.exceptions import (
    ProtocolError as OcppProtocolError,
)
from ocpp.messages import MessageType, get_validator
from ocpp.v16.enums import Action

OCPP_VERSION = "1.6"

# Answer for a CALL whose unique id cannot be read (the convention OCPP 2.0.1 made explicit).
UNKNOWN_UNIQUE_ID = "-1"

# The spec caps unique ids at 36 characters; some chargers send longer ones, and
# echoing them costs nothing, so only absurd lengths are refused.
MAX_UNIQUE_ID = 128

KNOWN_ACTIONS: frozenset[str] = frozenset(action.value for action in Action)

# ocpp 2.1.0 raises the OCPP 2.0.1 spellings; OCPP 1.6 peers expect the 1.6 ones.
_V16_ERROR_CODES = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}

# Recover the unique id of a CALL whose JSON is broken further on.
_CALL_PREFIX = re.compile(r'\s*\[\s*2\s*,\s*"([^"\\]{1,128})"')


@dataclass(frozen=True, slots=True)
class InboundCall:
    """A well-formed CALL: [2, uniqueId, action, payload]."""

    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboundResult:
    """A well-formed CALLRESULT: [3, uniqueId, payload]."""

    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboundError:
    """A well-formed CALLERROR: [4, uniqueId, errorCode, errorDescription, errorDetails]."""

    unique_id: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that cannot be handled; `reply` is the CALLERROR to send, if one is allowed."""

    reason: str
    reply: str | None = field(default=None)


Inbound = InboundCall | InboundResult | InboundError | BadFrame


def call_error(unique_id: str, error: OCPPError) -> str:
    """Serialize a CALLERROR for `error`, with the OCPP 1.6 spelling of its code."""
    code = _V16_ERROR_CODES.get(error.code, error.code)
    details = error.details if isinstance(error.details, dict) else {}
    safe_details = {k: v for k, v in details.items() if isinstance(v, str | int | float | bool)}
    return json.dumps(
        [MessageType.CallError, unique_id, code, error.description, safe_details],
        separators=(",", ":"),
    )


def call_result(unique_id: str, payload: dict[str, Any]) -> str:
    """Serialize a CALLRESULT."""
    return json.dumps([MessageType.CallResult, unique_id, payload], separators=(",", ":"))


def _reject(unique_id: str, error: OCPPError, reason: str) -> BadFrame:
    return BadFrame(reason, call_error(unique_id, error))


def _is_unique_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_UNIQUE_ID


def parse_frame(raw: str | bytes) -> Inbound:
    """Classify one WebSocket message.

    Broken JSON gets FormationViolation; JSON that is not an RPC frame gets
    ProtocolError; a CALL whose payload is not an object gets FormationViolation.
    A malformed CALLRESULT or CALLERROR gets no reply: only a CALL may be answered.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _reject(
                UNKNOWN_UNIQUE_ID,
                FormationViolationError(details={"cause": "message is not UTF-8"}),
                "not UTF-8",
            )
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        match = _CALL_PREFIX.match(raw)
        unique_id = match.group(1) if match else UNKNOWN_UNIQUE_ID
        return _reject(
            unique_id,
            FormationViolationError(details={"cause": "message is not valid JSON"}),
            "not JSON",
        )

    def protocol_error(cause: str) -> BadFrame:
        unique_id = (
            message[1]
            if isinstance(message, list) and len(message) > 1 and _is_unique_id(message[1])
            else UNKNOWN_UNIQUE_ID
        )
        return _reject(unique_id, OcppProtocolError(details={"cause": cause}), cause)

    if not isinstance(message, list) or not message:
        return protocol_error("message is not a non-empty JSON array")
    kind = message[0]
    if kind == MessageType.Call and not isinstance(kind, bool):
        if len(message) != 4:
            return protocol_error("CALL must have 4 elements")
        _, unique_id, action, payload = message
        if not _is_unique_id(unique_id):
            return protocol_error("CALL unique id must be a non-empty string")
        if not isinstance(action, str):
            return protocol_error("CALL action must be a string")
        if not isinstance(payload, dict):
            return _reject(
                unique_id,
                FormationViolationError(details={"cause": "CALL payload must be an object"}),
                "payload not an object",
            )
        return InboundCall(unique_id, action, payload)
    if kind == MessageType.CallResult and not isinstance(kind, bool):
        if len(message) == 3 and _is_unique_id(message[1]) and isinstance(message[2], dict):
            return InboundResult(message[1], message[2])
        return BadFrame("malformed CALLRESULT")
    if kind == MessageType.CallError and not isinstance(kind, bool):
        if (
            len(message) == 5
            and _is_unique_id(message[1])
            and isinstance(message[2], str)
            and isinstance(message[3], str)
            and isinstance(message[4], dict)
        ):
            return InboundError(message[1], message[2], message[3], message[4])
        return BadFrame("malformed CALLERROR")
    return protocol_error("message type id must be 2, 3 or 4")


def check_action_known(action: str) -> None:
    """Raise NotImplemented for an action OCPP 1.6 does not define (spec: 'not known')."""
    if action not in KNOWN_ACTIONS:
        raise OcppNotImplementedError(
            description="Requested Action is not known by receiver",
            details={"cause": f"{action} is not an OCPP 1.6 action"},
        )


def _first_schema_error(message_type: int, action: str, payload: dict[str, Any]) -> Any:
    validator = get_validator(message_type, action, OCPP_VERSION)
    return next(iter(validator.iter_errors(payload)), None)


def validate_call(action: str, payload: dict[str, Any]) -> None:
    """Validate a CALL payload against the 1.6 schema, raising the matching OCPPError.

    Same mapping as ocpp.messages (type/maxLength -> TypeConstraintViolation,
    required -> ProtocolError, anything else -> FormationViolation), but run inline:
    the library's default hands every validation to a thread pool.
    """
    error = _first_schema_error(MessageType.Call, action, payload)
    if error is None:
        return
    location = "/".join(str(part) for part in error.absolute_path) or "(payload)"
    details = {"cause": f"{location}: {error.message}"}
    if error.validator in ("type", "maxLength"):
        raise TypeConstraintViolationError(details=details)
    if error.validator == "required":
        raise OcppProtocolError(details=details)
    raise FormationViolationError(details=details)


def result_is_valid(action: str, payload: dict[str, Any]) -> bool:
    """Tell whether our own CALLRESULT payload matches the 1.6 response schema."""
    return _first_schema_error(MessageType.CallResult, action, payload) is None
