"""Hostile OCPP-J frames a charger could send the CSMS, each with the answer OCPP-J 1.6 owes it.

Seeded (`random.Random`): a seed gives the same frames again. Every frame starts from a
valid charger->CSMS CALL built from the OCPP 1.6 schemas (the `ocpp` library's files) and
is broken ONE way, so the expected CALLERROR code follows from the schema keyword broken
and OCPP-J 1.6 §4.2.3, not from the product's own tables:

| broken                                  | code                          | also accepted   |
|-----------------------------------------|-------------------------------|-----------------|
| not JSON (truncated, NaN, Infinity)     | FormationViolation            |                 |
| JSON but not a frame (type id, length,  | ProtocolError                 |                 |
|   unique id, action not a string)       |                               |                 |
| payload not an object                   | FormationViolation            | ProtocolError   |
| required property missing               | ProtocolError ("incomplete")  |                 |
| property the PDU does not have          | FormationViolation            |                 |
| wrong JSON type, integer beyond 32 bits,| TypeConstraintViolation       |                 |
|   date-time not RFC 3339 with offset    |                               |                 |
| string over its CiString maxLength      | TypeConstraintViolation       | PropertyConstr. |
| value not in the enum; semantic refusal | PropertyConstraintViolation   |                 |
|   (connector outside 1..N, meterStart   |                               |                 |
|   < 0, another charger's transaction)   |                               |                 |
| empty array (minItems), too many        | OccurenceConstraintViolation  |                 |
|   sampled values                        |                               |                 |
| action OCPP 1.6 does not define         | NotImplemented                |                 |
| action defined, not one a CSMS takes    | NotSupported                  |                 |

The alternatives, where the mapping is genuinely ambiguous:
* maxLength: a CiString20 is a type (TypeConstraintViolation, the `ocpp` library's
  choice) or a length limit on a valid string (PropertyConstraintViolation).
* payload not an object: "not conform the PDU structure" is FormationViolation in 1.6
  and ProtocolError in 2.0.1's rewording.
* integer literals too long for the parser (more than 400 digits here) and floats that
  overflow (1e400): RFC 8259 §6 lets a parser refuse them (FormationViolation); read,
  they would break the field's type (TypeConstraintViolation).
* nesting beyond the parser's depth limit: FormationViolation (1.6 wording) or
  ProtocolError (2.0.1 wording); the value never reaches the schema.
* lone surrogates (`"\\ud800"`): valid JSON escapes that encode no character (RFC 8259
  §8.2): TypeConstraintViolation (not a string of the type) or FormationViolation (text
  refused as not well-formed); in an enum field PropertyConstraintViolation too (it is
  not one of the values either).
* unknown action names over 64 characters: NotImplemented or ProtocolError (refused as a
  malformed frame).

No answer at all: binary frames (OCPP-J is text frames only), CALLRESULTs and CALLERRORs
(for ids never sent, or malformed). A frame over the CSMS's max_frame_bytes closes the
connection with 1009, and invalid UTF-8 in a text frame with 1007 (RFC 6455).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.messages import get_validator

from edgepoint.ocppj.validation import KNOWN_ACTIONS, VERSION

RESULT = "CALLRESULT"
UNREADABLE = "-1"  # the id a CALLERROR carries when the CALL's own cannot be read

TYPE = "TypeConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
OCCURENCE = "OccurenceConstraintViolation"  # sic: OCPP-J 1.6's spelling
PROTOCOL = "ProtocolError"
FORMATION = "FormationViolation"
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"

# What a CSMS receives from a charger (OCPP 1.6 Core and Firmware Management).
CHARGER_ACTIONS = (
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    # LogStatusNotification and SignedFirmwareStatusNotification are taken too; their
    # schemas use $ref, which the payload generator does not follow.
    "SecurityEventNotification",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
)
# Connectors a charger has until the operator says otherwise (csms/db.py).
CONNECTORS = 10
# Transaction ids no charger has (the CSMS numbers from 1): answered, flagged unknown.
UNKNOWN_TX = 2_000_000_000
SURROGATES = ("\ud800", "\udfff", "a\udc80b", "\udbff\udc00\udc00")
# Stands for raw JSON text spliced in after serialization (NaN, huge literals, deep
# nesting): json.dumps cannot write those itself.
HOLE = "\u2603HOLE\u2603"
MAX_DEPTH = 24  # the parser's documented nesting limit (ocppj/frames.py)
PARSER_DIGITS = 400  # longest integer literal the parser reads (ocppj/frames.py)


def _schema(action: str) -> dict[str, Any]:
    """The OCPP 1.6 schema of the CALL `action`: a copy of the one the validators use."""
    schema: dict[str, Any] = copy.deepcopy(get_validator(2, action, VERSION).schema)
    return schema


SCHEMAS = {action: _schema(action) for action in sorted(KNOWN_ACTIONS)}
# Defined by OCPP 1.6 but not taken by a CSMS: the CSMS->charger actions, and the security
# whitepaper's (whose schemas use $ref, which `value` does not follow: left out).
UNSUPPORTED_ACTIONS = tuple(
    a for a in sorted(KNOWN_ACTIONS - set(CHARGER_ACTIONS)) if "$ref" not in json.dumps(SCHEMAS[a])
)


@dataclass(frozen=True, slots=True)
class Expect:
    """What the CSMS owes one frame.

    `unique_id` None: no answer at all. Else an answer carrying that id whose code (or
    RESULT for a CALLRESULT) is in `codes`. `closes`: the CSMS closes the connection with
    that code instead of answering.
    """

    unique_id: str | None
    codes: frozenset[str] = frozenset()
    closes: int | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """One frame to send and what it deserves."""

    kind: str
    frame: str | bytes
    expect: Expect
    # Counted by the CSMS as bad input (toward max_bad_frames): anything refused before a
    # handler ran. Valid CALLs, semantic refusals and stray replies are not.
    bad: bool
    as_text: bool = False  # bytes sent in a TEXT frame (invalid UTF-8)


@dataclass
class Context:
    """What the generator needs to know about the CSMS and the site."""

    max_frame_bytes: int
    max_sampled_values: int
    foreign_transaction: int | None = None  # another charger's open transaction
    stray_reply_bytes: int = 60_000  # largest stray CALLRESULT (memory pressure)


def _now(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")


def _frame(
    unique_id: Any, action: Any, payload: Any, splice: str | None = None, *, utf8: bool = False
) -> str:
    """A CALL as JSON text; `utf8`: non-ASCII as itself rather than as \\u escapes (a lone
    surrogate, which UTF-8 cannot carry, is escaped all the same)."""
    message = [2, unique_id, action, payload]
    text = json.dumps(message, separators=(",", ":"))
    if utf8 and not text.isascii():
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        with contextlib.suppress(UnicodeEncodeError):
            raw.encode("utf-8")
            text = raw
    if splice is not None:
        text = text.replace(json.dumps(HOLE), splice, 1)
    return text


Path = tuple[str | int, ...]


def _nodes(
    value: Any, schema: dict[str, Any], path: Path = (), required: bool = True
) -> Iterator[tuple[Path, Any, dict[str, Any], bool]]:
    """Every (path, value, schema, required) in a payload, the payload itself first."""
    yield path, value, schema, required
    if isinstance(value, dict):
        needed = set(schema.get("required", ()))
        for key, child in value.items():
            yield from _nodes(child, schema["properties"][key], (*path, key), key in needed)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _nodes(child, schema["items"], (*path, index), False)


def _parent(payload: Any, path: Path) -> Any:
    target = payload
    for part in path[:-1]:
        target = target[part]
    return target


class FrameMaker:
    """Seeded hostile frames for one charger; `cases(n)` gives them with their answers."""

    def __init__(self, rng: random.Random, context: Context, prefix: str = "fz") -> None:
        self.rng = rng
        self.context = context
        self.prefix = prefix
        self.count = 0
        self.tags: list[str] = []  # every id tag put in a frame: none may be logged in full

    # -- helpers ---------------------------------------------------------------------

    def frame(self, unique_id: Any, action: Any, payload: Any, splice: str | None = None) -> str:
        return _frame(unique_id, action, payload, splice, utf8=self.rng.random() < 0.5)

    def uid(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"

    def tag(self) -> str:
        """A fresh id tag, long enough that its full text in a log line is unmistakable."""
        tag = "FZ" + "".join(
            self.rng.choice("0123456789ABCDEF") for _ in range(self.rng.randint(8, 18))
        )
        self.tags.append(tag)
        return tag

    def text(self, low: int, high: int) -> str:
        return "".join(
            self.rng.choice("abcdefXYZ0123456789-_.") for _ in range(self.rng.randint(low, high))
        )

    def value(self, schema: dict[str, Any], name: str = "") -> Any:
        """A valid value for `schema` (generic; `valid_payload` fixes the semantics)."""
        rng = self.rng
        kind = schema.get("type")
        if kind == "object":
            required = set(schema.get("required", ()))
            return {
                key: self.value(sub, key)
                for key, sub in schema.get("properties", {}).items()
                if key in required or rng.random() < 0.5
            }
        if kind == "array":
            low = max(1, schema.get("minItems", 0))
            return [self.value(schema["items"], name) for _ in range(rng.randint(low, low + 1))]
        if kind == "string":
            if "enum" in schema:
                return rng.choice(schema["enum"])
            if schema.get("format") == "date-time":
                return _now(-rng.randint(0, 86_400))
            if name == "idTag" or name == "parentIdTag":
                return self.tag()
            return self.text(1, min(16, schema.get("maxLength", 16)))
        if kind == "integer":
            return rng.randint(0, 1000)
        if kind == "number":
            return rng.randint(0, 300) / 10
        if kind == "boolean":
            return rng.random() < 0.5
        raise AssertionError(f"no generator for {schema}")

    def valid_payload(self, action: str) -> dict[str, Any]:
        """A schema-valid CALL payload the CSMS must accept (answer with a CALLRESULT)."""
        rng = self.rng
        payload: dict[str, Any] = self.value(SCHEMAS[action])
        if action == "StartTransaction":
            payload["connectorId"] = rng.randint(1, CONNECTORS)
            payload["meterStart"] = rng.randint(0, 10**6)
        elif action == "StatusNotification":
            payload["connectorId"] = rng.randint(0, CONNECTORS)
        elif action == "MeterValues":
            payload["connectorId"] = rng.randint(1, CONNECTORS)
            if rng.random() < 0.5:
                payload["transactionId"] = UNKNOWN_TX + rng.randint(0, 10**8)
            else:
                payload.pop("transactionId", None)
        elif action == "StopTransaction":
            payload["transactionId"] = UNKNOWN_TX + rng.randint(0, 10**8)
        for meter_value in payload.get("meterValue", payload.get("transactionData", [])):
            for sampled in meter_value["sampledValue"]:
                sampled["value"] = str(rng.randint(0, 10**6))
        return payload

    def case(
        self,
        kind: str,
        frame: str | bytes,
        unique_id: str | None,
        codes: frozenset[str] | set[str] = frozenset(),
        *,
        bad: bool = True,
        as_text: bool = False,
    ) -> Case:
        """A Case; a frame over max_frame_bytes gets a 1009 close whatever it holds."""
        size = (
            len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
        )
        if size > self.context.max_frame_bytes:
            return Case(
                f"{kind} (oversized)", frame, Expect(None, closes=1009), bad=False, as_text=as_text
            )
        expect = Expect(unique_id, frozenset(codes)) if unique_id is not None else Expect(None)
        return Case(kind, frame, expect, bad, as_text)

    # -- the mix ---------------------------------------------------------------------

    def cases(self, total: int) -> Iterator[Case]:
        makers = [
            (self.valid, 12),
            (self.schema_break, 46),
            (self.semantic, 8),
            (self.hostile_value, 8),
            (self.bad_action, 5),
            (self.not_a_frame, 5),
            (self.truncated, 5),
            (self.stray_reply, 6),
            (self.binary, 2),
            (self.huge, 3),
        ]
        kinds, weights = zip(*makers, strict=True)
        for _ in range(total):
            yield self.rng.choices(kinds, weights)[0]()

    def stray_flood(self, total: int) -> Iterator[Case]:
        """Big CALLRESULTs for ids never sent: a CSMS that kept them would grow by the lot."""
        for _ in range(total):
            payload = {"status": "Accepted", "data": "s" * self.context.stray_reply_bytes}
            yield self.case(
                "stray_flood", json.dumps([3, f"never-{self.uid()}", payload]), None, bad=False
            )

    # -- valid CALLs -------------------------------------------------------------------

    def valid(self) -> Case:
        rng = self.rng
        if rng.random() < 0.1:
            action = rng.choice(UNSUPPORTED_ACTIONS)
            uid = self.uid()
            return self.case(
                f"{action}:unsupported",
                self.frame(uid, action, self.value(SCHEMAS[action])),
                uid,
                {NOT_SUPPORTED},
            )
        action = rng.choice(CHARGER_ACTIONS)
        uid = self.uid()
        payload = self.valid_payload(action)
        if rng.random() < 0.2:  # whitespace is still JSON
            frame = json.dumps([2, uid, action, payload], indent=rng.choice([None, 1, 4]))
        else:
            frame = self.frame(uid, action, payload)
        return self.case(f"{action}:valid", frame, uid, {RESULT}, bad=False)

    # -- one schema rule broken ----------------------------------------------------------

    def schema_break(self) -> Case:
        rng = self.rng
        action = rng.choice(CHARGER_ACTIONS)
        payload = self.valid_payload(action)
        nodes = list(_nodes(payload, SCHEMAS[action]))
        inner = nodes[1:]
        options = ["extra", "not_object"]
        if inner:
            options += ["wrong_type", "wrong_type"]
        if any(s.get("type") == "string" for _, _, s, _ in inner):
            options += ["surrogate"]
        if any(required for _, _, _, required in inner):
            options += ["missing", "missing"]
        if any("enum" in s for _, _, s, _ in inner):
            options += ["enum", "enum"]
        if any("maxLength" in s for _, _, s, _ in inner):
            options += ["too_long"]
        if any(s.get("type") == "integer" for _, _, s, _ in inner):
            options += ["int_range", "int_range"]
        if any(s.get("format") == "date-time" for _, _, s, _ in inner):
            options += ["date", "date"]
        if any("minItems" in s for _, _, s, _ in inner):
            options += ["empty_array"]
        how = rng.choice(options)
        uid = self.uid()
        codes: set[str]

        def pick(test: Any) -> tuple[Path, Any, dict[str, Any], bool]:
            return rng.choice([n for n in inner if test(n)])

        if how == "extra":
            path, value, _, _ = rng.choice([n for n in nodes if isinstance(n[1], dict)])
            name = rng.choice(["zz", "extra", "ConnectorId", "__proto__", "idTag\u0000", "x" * 300])
            value[name] = rng.choice([1, "x", None, [], {}, self.tag(), 2**64, "\ud800"])
            codes = {FORMATION}
        elif how == "not_object":
            return self.case(
                f"{action}:payload_not_object",
                self.frame(uid, action, rng.choice([[], None, "x", 1, True, [payload]])),
                uid,
                {FORMATION, PROTOCOL},
            )
        elif how == "missing":
            path, _, _, _ = pick(lambda n: n[3])
            del _parent(payload, path)[path[-1]]
            codes = {PROTOCOL}
        elif how == "wrong_type":
            path, _, schema, _ = rng.choice(inner)
            _parent(payload, path)[path[-1]] = self.wrong_type(schema["type"])
            codes = {TYPE}
        elif how == "surrogate":
            path, _, schema, _ = pick(lambda n: n[2].get("type") == "string")
            _parent(payload, path)[path[-1]] = rng.choice(SURROGATES) + (
                "T" if "enum" in schema else ""
            )
            codes = {TYPE, FORMATION} | ({PROPERTY} if "enum" in schema else set())
        elif how == "enum":
            path, value, schema, _ = pick(lambda n: "enum" in n[2])
            bad = rng.choice(
                ["", "Bogus", value.lower(), value.upper(), f"{value} ", "Av\u03b1ilable"]
            )
            if bad in schema["enum"]:
                bad = "Bogus"
            _parent(payload, path)[path[-1]] = bad
            codes = {PROPERTY}
        elif how == "too_long":
            path, _, schema, _ = pick(lambda n: "maxLength" in n[2])
            length = rng.choice([schema["maxLength"] + 1, schema["maxLength"] + 1, 5_000, 60_000])
            _parent(payload, path)[path[-1]] = rng.choice("AZ9\u00e9") * length
            codes = {TYPE, PROPERTY}
        elif how == "int_range":
            path, _, _, _ = pick(lambda n: n[2].get("type") == "integer")
            _parent(payload, path)[path[-1]] = rng.choice(
                [
                    2**31,
                    -(2**31) - 1,
                    2**63,
                    2**63 + 1,
                    2**64,
                    -(2**63) - 1,
                    10**30,
                    10**PARSER_DIGITS - 1,
                ]
            )
            codes = {TYPE}
        elif how == "date":
            path, _, _, _ = pick(lambda n: n[2].get("format") == "date-time")
            _parent(payload, path)[path[-1]] = rng.choice(
                [
                    "2024-05-01",  # a date is not a date-time
                    "2024-05-01T12:00:00",  # no offset: a guess, not a time
                    "2024-05-01 12:00:00",
                    "2024-05-01T12:00:00.123",
                    "2024-13-01T00:00:00Z",  # month 13
                    "2024-02-30T00:00:00Z",
                    "2024-05-01T24:00:01Z",
                    "2024-05-01T12:00:00+24:00",
                    "9999-12-31T23:59:59-01:00",  # beyond year 9999 in UTC
                    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
                    "2024-05-01T12:00:00.1234567890Z",
                    "2024-05-01T12:00:00Z\n",
                    "\u0662\u0660\u0662\u0664-05-01T12:00:00Z",  # Arabic-Indic digits
                    "1714564800",
                    "",
                    "yesterday",
                ]
            )
            codes = {TYPE}
        else:  # empty_array
            path, _, _, _ = pick(lambda n: "minItems" in n[2])
            _parent(payload, path)[path[-1]] = []
            codes = {OCCURENCE}
        return self.case(f"{action}:{how}", self.frame(uid, action, payload), uid, codes)

    def wrong_type(self, wanted: str) -> Any:
        pools: dict[str, list[Any]] = {
            "string": [0, -1, 1.5, True, False, None, [], {}, ["x"], {"a": 1}],
            "integer": ["1", "", 1.5, -0.5, True, False, None, [], {}, [1], {"v": 1}],
            "number": ["1.0", True, None, [], {}],
            "array": ["x", 1, {}, None, True, {"0": {}}],
            "object": ["x", 1, [], None, True, [{}]],
            "boolean": ["true", 0, 1, None, [], {}],
        }
        return self.rng.choice(pools[wanted])

    # -- raw JSON spliced into a field: NaN, huge literals, nesting ----------------------

    def hostile_value(self) -> Case:
        rng = self.rng
        action = rng.choice(CHARGER_ACTIONS)
        payload = self.valid_payload(action)
        nodes = list(_nodes(payload, SCHEMAS[action]))[1:]
        uid = self.uid()
        if not nodes or rng.random() < 0.15:
            # As a property the PDU does not have: whatever its value, not the PDU.
            payload[rng.choice(["x", "zz"])] = HOLE
            field_type = None
        else:
            path, _, schema, _ = rng.choice(nodes)
            _parent(payload, path)[path[-1]] = HOLE
            field_type = schema["type"]
        how = rng.choice(["nan", "digits", "digits", "overflow", "deep", "deep", "shallow"])
        if how == "nan":
            splice = rng.choice(["NaN", "Infinity", "-Infinity", "nan"])
            codes = {FORMATION}  # not JSON (RFC 8259 §6)
        elif how == "digits":
            splice = rng.choice(["", "-"]) + "9" * rng.choice([PARSER_DIGITS + 1, 5_000, 20_000])
            codes = {TYPE, FORMATION}
        elif how == "overflow":
            splice = rng.choice(["1e400", "-1e400", "1" + "0" * 400 + ".5"])
            codes = {TYPE, FORMATION}
        elif how == "deep":
            levels = rng.choice([MAX_DEPTH + 1, 40, 200, 1_001, 3_000])
            splice = _nested(rng, levels)
            codes = {FORMATION, PROTOCOL}
        else:  # nested lists within the parser's limit: no field holds one (wrong type)
            levels = rng.randint(2, 8)
            splice = "[" * levels + "]" * levels
            codes = {TYPE}
        if field_type is None:
            codes = {FORMATION} | ({PROTOCOL} if how == "deep" else set())
        return self.case(f"{action}:{how}", self.frame(uid, action, payload, splice), uid, codes)

    # -- semantic refusals (schema-valid) ------------------------------------------------

    def semantic(self) -> Case:
        rng = self.rng
        uid = self.uid()
        options = [
            "connector",
            "status_connector",
            "meter_start",
            "meter_connector",
            "main_meter_tx",
            "too_many_sampled",
        ]
        if self.context.foreign_transaction is not None:
            options += ["foreign_stop", "foreign_meter"]
        how = rng.choice(options)
        outside = rng.choice([CONNECTORS + 1, 99, 999, -1, 2**31 - 1, -(2**31)])
        codes = {PROPERTY}
        if how == "connector":
            action, payload = "StartTransaction", self.valid_payload("StartTransaction")
            payload["connectorId"] = rng.choice([0, outside])
        elif how == "status_connector":
            action, payload = "StatusNotification", self.valid_payload("StatusNotification")
            payload["connectorId"] = outside
        elif how == "meter_start":
            action, payload = "StartTransaction", self.valid_payload("StartTransaction")
            payload["meterStart"] = rng.choice([-1, -1000, -(2**31)])
        elif how == "meter_connector":
            action, payload = "MeterValues", self.valid_payload("MeterValues")
            payload["connectorId"] = outside
        elif how == "main_meter_tx":  # connector 0 is the main meter: no transaction on it
            action, payload = "MeterValues", self.valid_payload("MeterValues")
            payload["connectorId"] = 0
            payload["transactionId"] = UNKNOWN_TX + rng.randint(0, 10**8)
        elif how == "too_many_sampled":
            action, payload = "MeterValues", self.valid_payload("MeterValues")
            limit = self.context.max_sampled_values
            entries = rng.choice([1, 3, limit + 1])
            per_entry = -(-(limit + 1 + rng.randint(0, 200)) // entries)
            payload["meterValue"] = [
                {
                    "timestamp": _now(-i),
                    "sampledValue": [{"value": str(v)} for v in range(per_entry)],
                }
                for i in range(entries)
            ]
            codes = {OCCURENCE}
        elif how == "foreign_stop":
            action, payload = "StopTransaction", self.valid_payload("StopTransaction")
            payload["transactionId"] = self.context.foreign_transaction
        else:  # foreign_meter
            action, payload = "MeterValues", self.valid_payload("MeterValues")
            payload["transactionId"] = self.context.foreign_transaction
        # Refused by a handler after the schema passed: not bad input for the limiter.
        return self.case(f"{action}:{how}", self.frame(uid, action, payload), uid, codes, bad=False)

    # -- the frame itself broken -----------------------------------------------------------

    def bad_action(self) -> Case:
        rng = self.rng
        uid = self.uid()
        how = rng.choice(["unknown", "unknown", "unknown", "not_a_name", "long"])
        if how == "unknown":
            alphabet = "abcXYZ019_-. \u00e9\u4e2d\t\n\x00\x1b"
            while True:
                action = rng.choice(
                    [
                        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))),
                        rng.choice(CHARGER_ACTIONS).lower(),
                        rng.choice(CHARGER_ACTIONS).upper(),
                        rng.choice(CHARGER_ACTIONS) + rng.choice([" ", "X", "\n", "\u200b"]),
                        "Heartbeat\nERROR forged log line",
                        "__proto__",
                        "Authorize" + rng.choice(SURROGATES),
                    ]
                )
                if action not in KNOWN_ACTIONS:
                    break
            payload = self.valid_payload(rng.choice(CHARGER_ACTIONS))
            return self.case(
                "unknown_action", self.frame(uid, action, payload), uid, {NOT_IMPLEMENTED}
            )
        if how == "long":
            action = "A" * rng.choice([65, 300, 5_000])
            return self.case(
                "long_action", self.frame(uid, action, {}), uid, {NOT_IMPLEMENTED, PROTOCOL}
            )
        not_a_name: Any = rng.choice(
            [42, 2.5, None, True, ["Heartbeat"], {"action": "Heartbeat"}, ""]
        )
        return self.case("action_not_a_name", self.frame(uid, not_a_name, {}), uid, {PROTOCOL})

    def not_a_frame(self) -> Case:
        rng = self.rng
        uid = self.uid()
        heartbeat: dict[str, Any] = {}
        shapes: list[tuple[Any, str]] = [
            ({}, UNREADABLE),
            ({"2": uid}, UNREADABLE),
            ("a string", UNREADABLE),
            (42, UNREADABLE),
            (None, UNREADABLE),
            (True, UNREADABLE),
            ([], UNREADABLE),
            ([2], UNREADABLE),
            ([[2, uid, "Heartbeat", heartbeat]], UNREADABLE),
            ([2, 17, "Heartbeat", heartbeat], UNREADABLE),
            ([2, None, "Heartbeat", heartbeat], UNREADABLE),
            ([2, "", "Heartbeat", heartbeat], UNREADABLE),
            ([2, [uid], "Heartbeat", heartbeat], UNREADABLE),
            ([2, "i" * 129, "Heartbeat", heartbeat], UNREADABLE),
            (["2", uid, "Heartbeat", heartbeat], uid),
            ([2.0, uid, "Heartbeat", heartbeat], uid),
            ([True, uid, "Heartbeat", heartbeat], uid),
            ([None, uid, "Heartbeat", heartbeat], uid),
            ([0, uid, "Heartbeat", heartbeat], uid),
            ([5, uid, "Heartbeat", heartbeat], uid),
            ([-2, uid, "Heartbeat", heartbeat], uid),
            ([2**64, uid, "Heartbeat", heartbeat], uid),
            ([2, uid], uid),
            ([2, uid, "Heartbeat"], uid),
            ([2, uid, "Heartbeat", heartbeat, heartbeat], uid),
        ]
        message, answer_id = rng.choice(shapes)
        return self.case("not_a_frame", json.dumps(message), answer_id, {PROTOCOL})

    def truncated(self) -> Case:
        rng = self.rng
        action = rng.choice(CHARGER_ACTIONS)
        uid = self.uid()
        full = _frame(uid, action, self.valid_payload(action))
        cut = rng.randint(0, len(full) - 1)
        text = full[:cut]
        readable = cut >= len(f'[2,"{uid}"')
        if not text.strip() and rng.random() < 0.5:
            text = rng.choice(["", " ", "\n", "\x00"])
        return self.case("truncated", text, uid if readable else UNREADABLE, {FORMATION})

    def stray_reply(self) -> Case:
        rng = self.rng
        never = f"never-{self.uid()}"
        how = rng.choice(["result", "result", "error", "malformed"])
        if how == "result":
            size = rng.choice([0, 100, 5_000, self.context.stray_reply_bytes])
            payload = {"status": "Accepted", "data": "x" * size}
            return self.case("stray_result", json.dumps([3, never, payload]), None, bad=False)
        if how == "error":
            frame = json.dumps(
                [
                    4,
                    never,
                    rng.choice(["GenericError", "Teapot", ""]),
                    "d" * rng.randint(0, 500),
                    {},
                ]
            )
            return self.case("stray_error", frame, None, bad=False)
        shape = rng.choice(
            [
                [3, never],
                [3, never, []],
                [3, 42, {}],
                [4, never, "Oops"],
                [4, never, 1, "d", {}],
                [4, never, "E", "d", []],
                [3, never, {}, {}],
            ]
        )
        return self.case("malformed_reply", json.dumps(shape), None)

    def binary(self) -> Case:
        uid = self.uid()
        rng = self.rng
        if rng.random() < 0.7:
            data = self.frame(uid, "Heartbeat", {}).encode()
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        return self.case("binary", data, None)

    def huge(self) -> Case:
        """Big on purpose: long strings where none is limited, big arrays, over the limit."""
        rng = self.rng
        uid = self.uid()
        limit = self.context.max_frame_bytes
        # Frames that close the connection are rarer: each costs a reconnection.
        how = rng.choices(
            ["data", "meter_value", "stop_data", "oversized", "invalid_utf8"], [4, 1, 4, 1, 1]
        )[0]
        payload: dict[str, Any]
        if how == "data":  # DataTransfer's data has no length limit: answered
            payload = {"vendorId": "com.fuzz", "data": "d" * rng.randint(limit // 4, limit - 200)}
            return self.case(
                "DataTransfer:long_data",
                self.frame(uid, "DataTransfer", payload),
                uid,
                {RESULT},
                bad=False,
            )
        if how == "meter_value":  # 40,000 sampled values: over the limit twice over
            payload = self.valid_payload("MeterValues")
            payload["meterValue"] = [
                {"timestamp": _now(), "sampledValue": [{"value": str(i)} for i in range(40_000)]}
            ]
            return self.case(
                "MeterValues:40000_sampled",
                self.frame(uid, "MeterValues", payload),
                uid,
                {OCCURENCE},
                bad=False,
            )
        if how == "stop_data":  # billing is never refused: too many samples are cut, answered
            payload = self.valid_payload("StopTransaction")
            count = self.context.max_sampled_values + rng.randint(1, 300)
            payload["transactionData"] = [
                {"timestamp": _now(), "sampledValue": [{"value": str(i)} for i in range(count)]}
            ]
            return self.case(
                "StopTransaction:long_data",
                self.frame(uid, "StopTransaction", payload),
                uid,
                {RESULT},
                bad=False,
            )
        if how == "invalid_utf8":
            frame = b'[2,"' + uid.encode() + b'","DataTransfer",{"vendorId":"\xff\xfe"}]'
            return Case("invalid_utf8", frame, Expect(None, closes=1007), bad=False, as_text=True)
        payload = {"vendorId": "com.fuzz", "data": "d" * (limit + rng.randint(1, 5_000))}
        return self.case(
            "DataTransfer:oversized",
            self.frame(uid, "DataTransfer", payload),
            uid,
            {RESULT},
            bad=False,
        )


def _nested(rng: random.Random, levels: int) -> str:
    if rng.random() < 0.5:
        return "[" * levels + "]" * levels
    return '{"a":' * levels + "1" + "}" * levels
