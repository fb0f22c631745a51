"""Strict OCPP 1.6 schema validation of every message, both directions, with the right CallError.

The schemas are the `ocpp` library's; on top of what its validator checks we check what
stricter peers check: date-times are RFC 3339 with a UTC offset, and integers fit the
32-bit `int` of OCPP 1.6's type system (xs:int), so a transactionId of 2^70 is refused
here rather than overflowing a database later.

Every message goes through a compiled validator first (fastjsonschema: generated Python,
several times faster than walking the schema); only a message it rejects is walked by
jsonschema, which names the broken rule and so picks the CallError. The compiled schemas
carry the same extra rules, so the fast path accepts nothing the full one refuses.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import fastjsonschema
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators
from ocpp.messages import get_validator
from ocpp.v16.enums import Action

from edgepoint.ocppj.errors import ErrorCode, Refusal

VERSION = "1.6"
KNOWN_ACTIONS: frozenset[str] = frozenset(action.value for action in Action)
INT32 = (-(2**31), 2**31 - 1)

# RFC 3339 date-time; the offset is mandatory (a bare local time is a guess, not a time).
# ASCII digits only, and \Z rather than $ (which also matches before a trailing newline).
_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z",
    re.ASCII,
)

# Which schema rule maps to which OCPP-J error code (OCPP-J 1.6 §4.2.3).
_CODES: dict[str, ErrorCode] = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.TYPE_CONSTRAINT_VIOLATION,  # CiStringNType is a type
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,  # dateTime is a type
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "pattern": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.PROTOCOL_ERROR,  # "Payload for Action is incomplete"
    "additionalProperties": ErrorCode.FORMATION_VIOLATION,
}


def parse_datetime(text: str) -> datetime:
    """Parse an OCPP date-time into an aware UTC datetime; ValueError if it is not one."""
    match = _DATE_TIME.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time with an offset: {text[:40]!r}")
    fraction = (match.group(7) or "")[:7]  # datetime takes at most microseconds
    offset = match.group(8).upper()
    normal = f"{text[:10]}T{text[11:19]}{fraction}{'+00:00' if offset == 'Z' else offset}"
    moment = datetime.fromisoformat(normal)  # raises for month 13, hour 25, ...
    try:
        return moment.astimezone(UTC)
    except OverflowError as err:  # 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise ValueError(f"date-time out of range: {text[:40]!r}") from err


_formats = FormatChecker(formats=())


@_formats.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    if isinstance(instance, str):
        parse_datetime(instance)
    return True


def _type_with_int32(
    validator: Any, types: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)
    wants_integer = types == "integer" or (isinstance(types, list) and "integer" in types)
    if (
        wants_integer
        and isinstance(instance, int)
        and not isinstance(instance, bool)
        and not INT32[0] <= instance <= INT32[1]
    ):
        yield ValidationError(f"{str(instance)[:24]} does not fit a 32-bit integer")


def _tolerant_multiple_of(
    validator: Any, step: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # 21.4 is a multiple of 0.1 on paper but not in binary floating point.
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        try:
            quotient = float(instance) / float(step)
            off = abs(quotient - round(quotient))
        except (OverflowError, ValueError):  # beyond float range, infinite or NaN
            off = 1.0
        if off > 1e-6:
            yield ValidationError(f"{str(instance)[:24]} is not a multiple of {step}")


_Strict = validators.extend(  # type: ignore[no-untyped-call]  # jsonschema's stub
    Draft4Validator, {"type": _type_with_int32, "multipleOf": _tolerant_multiple_of}
)


@functools.cache
def _validator(message_type: int, action: str) -> Any:
    schema = get_validator(message_type, action, VERSION).schema
    return _Strict(schema, format_checker=_formats)


def _with_int32_bounds(schema: Any) -> Any:
    """A copy of `schema` whose integers carry the 32-bit bounds `_type_with_int32` checks."""
    if isinstance(schema, list):
        return [_with_int32_bounds(item) for item in schema]
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    bounded = {key: _with_int32_bounds(value) for key, value in schema.items()}
    types = schema.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        bounded["minimum"] = max(schema.get("minimum", INT32[0]), INT32[0])
        bounded["maximum"] = min(schema.get("maximum", INT32[1]), INT32[1])
    return bounded


def _is_offset_date_time(text: str) -> bool:
    try:
        parse_datetime(text)
    except ValueError:
        return False
    return True


@functools.cache
def _compiled(message_type: int, action: str) -> Callable[[Any], Any] | None:
    schema = _with_int32_bounds(get_validator(message_type, action, VERSION).schema)
    try:
        compiled: Callable[[Any], Any] = fastjsonschema.compile(
            schema,
            formats={"date-time": _is_offset_date_time},
            use_default=False,  # never fill in defaults: we validate, we do not edit
            detailed_exceptions=False,
        )
    except Exception:  # a schema it cannot compile: the full validator alone judges
        return None
    return compiled


def _passes_fast(message_type: int, action: str, payload: dict[str, Any]) -> bool:
    compiled = _compiled(message_type, action)
    if compiled is None:
        return False
    try:
        compiled(payload)
    except Exception:  # JsonSchemaException, or anything odd: the full validator decides
        return False
    return True


@functools.cache
def _empty_is_valid(message_type: int, action: str) -> bool:
    return _judge(message_type, action, {}) is None


def _first_error(message_type: int, action: str, payload: dict[str, Any]) -> Refusal | None:
    # Most replies (StatusNotification, MeterValues, ...) are {}: judged once per action.
    if not payload and _empty_is_valid(message_type, action):
        return None
    return _judge(message_type, action, payload)


def _judge(message_type: int, action: str, payload: dict[str, Any]) -> Refusal | None:
    if _passes_fast(message_type, action, payload):
        return _lone_surrogate(payload)
    error = next(iter(_validator(message_type, action).iter_errors(payload)), None)
    if error is None:
        return _lone_surrogate(payload)
    location = "/".join(str(part) for part in error.absolute_path) or "(payload)"
    code = _CODES.get(str(error.validator), ErrorCode.FORMATION_VIOLATION)
    return Refusal(code, f"{location}: {_rule(error)}"[:200])


def _lone_surrogate(payload: dict[str, Any]) -> Refusal | None:
    """TypeConstraintViolation for a string holding a lone surrogate ("\\ud800" is a valid
    JSON escape but no character): it is not text, and storing or logging it fails."""
    stack: list[Any] = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not value.isascii() and not _is_text(value):
            where = _location_of(payload, value)
            return Refusal(ErrorCode.TYPE_CONSTRAINT_VIOLATION, f"{where}: not Unicode text")
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _location_of(payload: dict[str, Any], target: str) -> str:
    """Where `target` (that very object) sits in `payload`, as a/0/b."""
    stack: list[tuple[Any, str]] = [(payload, "")]
    while stack:
        value, location = stack.pop()
        if value is target:
            return location.lstrip("/")[:120] or "(payload)"
        if isinstance(value, dict):
            stack.extend((child, f"{location}/{key}") for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, f"{location}/{index}") for index, child in enumerate(value))
    return "(payload)"


def _rule(error: ValidationError) -> str:
    """The rule broken, without the offending value: causes are logged and sent back, and
    values may be id tags or whatever a hostile peer chose to put there."""
    rule = str(error.validator)
    if rule == "required":
        return error.message.replace("'", "")[:120]  # names the missing property
    if rule == "additionalProperties":
        return "property not allowed here"
    if rule in ("type", "enum", "format", "minimum", "maximum", "maxLength", "minLength"):
        expected = error.validator_value
        if rule == "type" and "32-bit" in error.message:
            return "integer out of the 32-bit range"
        return f"{rule} must be {expected}"[:160]
    return f"breaks {rule} {error.validator_value}"[:160]


def check_action(action: str) -> None:
    """NotImplemented for an action OCPP 1.6 does not define ("not known by receiver")."""
    if action not in KNOWN_ACTIONS:
        raise Refusal(ErrorCode.NOT_IMPLEMENTED, f"{action[:64]} is not an OCPP 1.6 action")


def check_request(action: str, payload: dict[str, Any]) -> None:
    """Raise the Refusal a CALL of `action` with `payload` deserves, if any."""
    check_action(action)
    refusal = _first_error(2, action, payload)
    if refusal is not None:
        raise refusal


def request_problem(action: str, payload: dict[str, Any]) -> Refusal | None:
    """Why a CALL would be refused, or None (for checking our own messages before sending)."""
    try:
        check_request(action, payload)
    except Refusal as refusal:
        return refusal
    return None


def response_problem(action: str, payload: dict[str, Any]) -> Refusal | None:
    """Why a CALLRESULT for `action` breaks the schema, or None."""
    return _first_error(3, action, payload)
