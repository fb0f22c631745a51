"""A hostile central system: thousands of mutated frames against a running `edgepoint run`.

Every frame is built by a seeded `random.Random` (EDGEPOINT_FUZZ_SEED replays a run,
EDGEPOINT_FUZZ_FRAMES scales it) from valid CSMS->CP CALLs, mutated one way at a time so
that the OCPP-J error code the charge point owes is known from the OCPP 1.6 schemas (the
`ocpp` library's files) and OCPP-J 1.6 §4.2.3, not from the product's own tables. The
daemon charges a car through all of it and must never exit, hang, drop the connection,
leak a card id into its log or let its log grow with the garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.messages import get_validator
from scenario_support import Kiosk, running, scenario_config
from support.scripted_csms import Error, Received, ScriptedCsms, now_iso
from websockets.asyncio.server import ServerConnection

from edgepoint.ocppj.validation import KNOWN_ACTIONS, VERSION

pytestmark = pytest.mark.timeout(90)

SEED = int(os.environ.get("EDGEPOINT_FUZZ_SEED", "1606"))
FRAMES = int(os.environ.get("EDGEPOINT_FUZZ_FRAMES", "5000"))
STRAY_FLOOD = 1000
# CALLs in flight at once. OCPP-J §4.1.1 allows one; a few more is an impatient CSMS,
# still one that waits for answers (a flood is another test's business).
WINDOW = 6
# The answer to a CALL whose unique id cannot be read (OCPP 2.0.1 made it explicit).
UNREADABLE = "-1"
LOG_BUDGET_BYTES = 200_000

CARD = "04A1B2C3"
CARD2 = "04D5E6F7"
FUZZ_TAGS = ("FUZZCARD0000000001", "FUZZCARD0000000002", "FUZZCARD0000000003")

TYPE = "TypeConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
OCCURENCE = "OccurenceConstraintViolation"
PROTOCOL = "ProtocolError"
FORMATION = "FormationViolation"
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"

LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


# Valid CSMS->CP CALLs to mutate: what a real CSMS sends, with card ids we can look for.
BASE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}),
    ("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "0"}),
    ("ClearCache", {}),
    ("DataTransfer", {"vendorId": "com.example", "messageId": "m1", "data": "x"}),
    ("GetConfiguration", {"key": ["HeartbeatInterval", "MeterValueSampleInterval"]}),
    ("GetLocalListVersion", {}),
    ("RemoteStartTransaction", {"connectorId": 1, "idTag": FUZZ_TAGS[0]}),
    ("RemoteStopTransaction", {"transactionId": 1001}),
    ("Reset", {"type": "Hard"}),
    ("UnlockConnector", {"connectorId": 1}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}),
    (
        "SendLocalList",
        {
            "listVersion": 7,
            "updateType": "Full",
            "localAuthorizationList": [
                {
                    "idTag": FUZZ_TAGS[1],
                    "idTagInfo": {"status": "Blocked", "expiryDate": _future(30)},
                }
            ],
        },
    ),
    (
        "ReserveNow",
        {"connectorId": 1, "expiryDate": _future(1), "idTag": FUZZ_TAGS[2], "reservationId": 9},
    ),
    ("CancelReservation", {"reservationId": 9}),
    ("GetDiagnostics", {"location": "ftp://diag.example.com/up"}),
    ("UpdateFirmware", {"location": "https://fw.example.com/1.bin", "retrieveDate": _future(1)}),
    ("ClearChargingProfile", {}),
    ("GetCompositeSchedule", {"connectorId": 1, "duration": 60}),
]
# Actions OCPP 1.6 defines that this charge point does not implement: NotSupported.
UNSUPPORTED: set[str] = set()


def _schema(action: str) -> dict[str, Any]:
    """The OCPP 1.6 schema of the CALL `action`: a copy of the one the validators use."""
    schema: dict[str, Any] = copy.deepcopy(get_validator(2, action, VERSION).schema)
    return schema


SCHEMAS = {action: _schema(action) for action, _ in BASE_CALLS}

# A value that stands for raw JSON text spliced in after serialization (NaN, huge integers,
# deep nesting): json.dumps cannot write those itself.
HOLE = "\u2603HOLE\u2603"
SURROGATES = ("\ud800", "\udfff", "a\udc80b", "\udbff\udc00\udc00")


@dataclass(frozen=True)
class Probe:
    """One frame and what the charge point owes for it."""

    kind: str
    text: str | bytes
    unique_id: str | None = None  # the id its CALLERROR must carry; UNREADABLE for "-1"
    codes: frozenset[str] = frozenset()  # acceptable CALLERROR codes
    any_answer: bool = False  # a valid CALL: a CALLRESULT or a handler's CALLERROR
    # JSON too deep to parse: nothing in it can be read, not even that it is a reply, so
    # a CALLERROR with id -1 (`codes`) is as fair as silence.
    maybe_blind: bool = False

    @property
    def answered(self) -> bool:
        return (bool(self.codes) and not self.maybe_blind) or self.any_answer

    @property
    def windowed(self) -> bool:
        return self.answered and self.unique_id != UNREADABLE


def _frame(unique_id: Any, action: Any, payload: Any, splice: str | None = None) -> str:
    text = json.dumps([2, unique_id, action, payload], separators=(",", ":"))
    if splice is not None:
        text = text.replace(json.dumps(HOLE), splice, 1)
    return text


def _locations(
    value: Any, schema: dict[str, Any], path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any, dict[str, Any]]]:
    """Every (path, value, schema) in a payload, the payload itself first."""
    yield path, value, schema
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _locations(child, schema["properties"][key], (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _locations(child, schema["items"], (*path, index))


def _set(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    target: Any = payload
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _get(payload: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    target: Any = payload
    for part in path:
        target = target[part]
    return target


def _wrong_type(rng: random.Random, wanted: str) -> Any:
    pools: dict[str, list[Any]] = {
        "string": [0, -1, 1.5, True, False, None, [], {}, ["x"], {"a": 1}],
        "integer": ["1", "", 1.5, -0.5, True, None, [], {}, [1], *SURROGATES],
        "number": ["1.0", True, None, [], {}, "NaN"],
        "array": ["x", 1, {}, None, True, {"0": "a"}],
        "object": ["x", 1, [], None, True, [{}]],
        "boolean": ["true", 0, 1, None, [], {}],
    }
    return rng.choice(pools[wanted])


def _deep(rng: random.Random, depth: int) -> str:
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


class Generator:
    """Seeded hostile frames; each knows the answer it deserves."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0

    def next_id(self, prefix: str = "fz") -> str:
        self.count += 1
        return f"{prefix}{self.count:05d}"

    def probes(self, total: int) -> list[Probe]:
        makers = [
            (self.schema_break, 46),
            (self.unknown_action, 10),
            # Once every profile is implemented there is nothing left to refuse.
            *([(self.unsupported, 3)] if UNSUPPORTED else []),
            (self.semantic, 4),
            (self.bad_action, 4),
            (self.non_frame, 5),
            (self.truncated, 8),
            (self.binary, 3),
            (self.stray_reply, 17),
        ]
        kinds, weights = zip(*makers, strict=True)
        return [self.rng.choices(kinds, weights)[0]() for _ in range(total)]

    # -- one schema break in an otherwise valid CALL ------------------------------------

    def schema_break(self) -> Probe:
        rng = self.rng
        action, base = rng.choice(BASE_CALLS)
        payload = copy.deepcopy(base)
        spots = list(_locations(payload, SCHEMAS[action]))
        uid = self.next_id()
        options: list[str] = ["extra"]
        inner = spots[1:]
        if inner:
            options += ["wrong_type", "nan", "bigint_text", "deep"]
        if any(s.get("required") for _, v, s in spots if isinstance(v, dict)):
            options.append("missing")
        if any("enum" in s for _, _, s in inner):
            options.append("enum")
        if any("maxLength" in s for _, _, s in inner):
            options.append("huge")
        if any(s.get("type") == "integer" for _, _, s in inner):
            options.append("bigint")
        if any(s.get("format") == "date-time" for _, _, s in inner):
            options.append("datetime")
        how = rng.choice(options)
        splice: str | None = None
        codes: frozenset[str]
        if how == "extra":
            path, _, _ = rng.choice([x for x in spots if isinstance(x[1], dict)])
            name = rng.choice(["zz", "extra", "Type", "__proto__", "idTag\u0000", "\ud800"])
            _get(payload, path)[name] = rng.choice([1, "x", None, [], {}, FUZZ_TAGS[0]])
            # Not the PDU's structure (§4.2.3 FormationViolation); peers also use these two.
            codes = frozenset({FORMATION, OCCURENCE, PROTOCOL})
        elif how == "missing":
            path, value, schema = rng.choice(
                [x for x in spots if isinstance(x[1], dict) and x[2].get("required")]
            )
            del value[rng.choice(schema["required"])]
            codes = frozenset({PROTOCOL, OCCURENCE})  # "incomplete" / occurrence
        elif how == "wrong_type":
            path, _, schema = rng.choice(inner)
            _set(payload, path, _wrong_type(rng, schema["type"]))
            codes = frozenset({TYPE})
        elif how == "enum":
            path, value, schema = rng.choice([x for x in inner if "enum" in x[2]])
            bad = rng.choice(["", "hard", "HARD", f"{value} ", "S\u03bfft", "\udc80", "Accepted!"])
            _set(payload, path, bad)
            codes = frozenset({PROPERTY})
        elif how == "huge":
            path, _, schema = rng.choice([x for x in inner if "maxLength" in x[2]])
            length = rng.choice([schema["maxLength"] + 1, 5_000, 60_000])
            _set(payload, path, rng.choice("AZ9\u00e9") * length)
            codes = frozenset({TYPE, PROPERTY})
        elif how == "bigint":
            path, _, _ = rng.choice([x for x in inner if x[2].get("type") == "integer"])
            _set(payload, path, rng.choice([2**31, -(2**31) - 1, 2**70, -(2**70), 10**30]))
            codes = frozenset({TYPE, PROPERTY})
        elif how == "datetime":
            path, _, _ = rng.choice([x for x in inner if x[2].get("format") == "date-time"])
            bad = rng.choice(
                ["2030-01-01", "2030-01-01T00:00:00", "2030-13-01T00:00:00Z", "yesterday", ""]
            )
            _set(payload, path, bad)
            codes = frozenset({TYPE, PROPERTY})
        else:  # raw JSON spliced into a field: NaN, 5,000 digits, nesting beyond 1,000
            path, _, _ = rng.choice(inner)
            _set(payload, path, HOLE)
            if how == "nan":
                splice = rng.choice(["NaN", "Infinity", "-Infinity"])
                codes = frozenset({FORMATION})  # not JSON at all (RFC 8259 §6)
            elif how == "bigint_text":
                digits = rng.choice([400, 5_000, 20_000])
                splice = rng.choice(["", "-"]) + "9" * digits
                codes = frozenset({FORMATION, TYPE, PROPERTY})
            else:
                splice = _deep(rng, rng.choice([30, 200, 1_001, 1_500, 5_000]))
                codes = frozenset({FORMATION, PROTOCOL, TYPE})
        return Probe(f"{action}:{how}", _frame(uid, action, payload, splice), uid, codes)

    # -- actions -----------------------------------------------------------------------

    def unknown_action(self) -> Probe:
        rng = self.rng
        alphabet = "abcXYZ019_-. \u00e9\u4e2d\t\n\r\x00\x1b" + "".join(SURROGATES)
        while True:
            action = rng.choice(
                [
                    "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))),
                    rng.choice(sorted(KNOWN_ACTIONS)).lower(),
                    rng.choice(sorted(KNOWN_ACTIONS)) + rng.choice([" ", "X", "\n", "\u200b"]),
                    "Reset\nINFO forged log line",
                ]
            )
            if action not in KNOWN_ACTIONS:
                break
        uid = self.next_id() + rng.choice(["", "", "", "\udc80", "\u00e9"])
        payload = rng.choice([{}, {"type": "Hard"}, {"idTag": FUZZ_TAGS[0]}])
        return Probe(
            "unknown action", _frame(uid, action, payload), uid, frozenset({NOT_IMPLEMENTED})
        )

    def unsupported(self) -> Probe:
        action, payload = self.rng.choice([c for c in BASE_CALLS if c[0] in UNSUPPORTED])
        uid = self.next_id()
        return Probe(
            f"{action}:valid", _frame(uid, action, payload), uid, frozenset({NOT_SUPPORTED})
        )

    def bad_action(self) -> Probe:
        action = self.rng.choice(
            [42, 2.5, None, True, ["Reset"], {"action": "Reset"}, "", "R" * 300]
        )
        uid = self.next_id()
        text = _frame(uid, action, {"type": "Hard"})
        return Probe("action not a name", text, uid, frozenset({PROTOCOL, FORMATION}))

    def semantic(self) -> Probe:
        """Schema-valid CALLs with values the charge point must turn down or shrug off."""
        rng = self.rng
        action, payload = rng.choice(
            [
                (
                    "ChangeAvailability",
                    {"connectorId": rng.choice([7, 99, -1]), "type": "Inoperative"},
                ),
                ("UnlockConnector", {"connectorId": rng.choice([0, 7, -3, 2**31 - 1])}),
                ("RemoteStopTransaction", {"transactionId": rng.choice([-5, 0, 2**31 - 1])}),
                (
                    "RemoteStartTransaction",
                    {"connectorId": rng.choice([0, 7, -1]), "idTag": FUZZ_TAGS[0]},
                ),
                ("RemoteStartTransaction", {"idTag": FUZZ_TAGS[1]}),  # nothing is free
                ("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1}),
                ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
                ("TriggerMessage", {"requestedMessage": "BootNotification"}),
                ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 9}),
                (
                    "ChangeConfiguration",
                    {
                        "key": rng.choice(
                            [
                                "HeartbeatInterval",
                                "MeterValueSampleInterval",
                                "Nope",
                                "NumberOfConnectors",
                            ]
                        ),
                        "value": rng.choice(["abc", "-5", "", "1e3", "NaN", "9" * 40, "0x10"]),
                    },
                ),
                ("ChangeConfiguration", {"key": "Nope\nINFO forged\x1b[2J", "value": "1"}),
                (
                    "SendLocalList",
                    {
                        "listVersion": rng.choice([-1, 0, 1]),
                        "updateType": "Differential",
                        "localAuthorizationList": [{"idTag": rng.choice(FUZZ_TAGS)}],
                    },
                ),
                ("GetConfiguration", {"key": [f"K{i}" for i in range(rng.choice([0, 3, 80]))]}),
                ("GetConfiguration", {"key": ["Nope\r\nWARNING forged", "\x1b]0;pwned\x07"]}),
                ("DataTransfer", {"vendorId": "x" * rng.randint(1, 255), "data": "\udc80" * 50}),
                ("GetLocalListVersion", {}),
                # Smart charging and reservations: refused, never installed (the session
                # under test must keep charging).
                (
                    "SetChargingProfile",
                    {
                        "connectorId": rng.choice([0, 1, 7, -1]),
                        "csChargingProfiles": {
                            "chargingProfileId": rng.choice([1, -1, 2**31 - 1]),
                            "stackLevel": rng.choice([99, -1, 2**31 - 1]),
                            "chargingProfilePurpose": "TxDefaultProfile",
                            "chargingProfileKind": rng.choice(["Absolute", "Recurring"]),
                            "chargingSchedule": {
                                "chargingRateUnit": "W",
                                "chargingSchedulePeriod": [
                                    {"startPeriod": rng.choice([0, -5]), "limit": 0.0}
                                ],
                            },
                        },
                    },
                ),
                (
                    "SetChargingProfile",
                    {
                        "connectorId": 1,
                        "csChargingProfiles": {
                            "chargingProfileId": 3,
                            "transactionId": rng.choice([-1, 0, 2**31 - 1]),
                            "stackLevel": 0,
                            "chargingProfilePurpose": "TxProfile",
                            "chargingProfileKind": "Relative",
                            "chargingSchedule": {
                                "chargingRateUnit": "A",
                                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0.0}],
                            },
                        },
                    },
                ),
                (
                    "GetCompositeSchedule",
                    {"connectorId": rng.choice([0, 1, 9, -1]), "duration": 2**31 - 1},
                ),
                ("ClearChargingProfile", {"id": rng.choice([-1, 2**31 - 1])}),
                (
                    "ReserveNow",
                    {
                        "connectorId": rng.choice([7, -1]),
                        "expiryDate": _future(rng.choice([-1, 1])),
                        "idTag": FUZZ_TAGS[2],
                        "reservationId": rng.choice([-1, 2**31 - 1]),
                    },
                ),
                ("CancelReservation", {"reservationId": rng.choice([-1, 0, 2**31 - 1])}),
            ]
        )
        uid = self.next_id()
        return Probe(f"{action}:semantic", _frame(uid, action, payload), uid, any_answer=True)

    # -- frames that are not CALLs ---------------------------------------------------

    def non_frame(self) -> Probe:
        uid = self.next_id()
        shapes: list[tuple[Any, str | None, frozenset[str]]] = [
            ({}, None, frozenset({PROTOCOL, FORMATION})),
            ("just a string", None, frozenset({PROTOCOL, FORMATION})),
            (42, None, frozenset({PROTOCOL, FORMATION})),
            (None, None, frozenset({PROTOCOL, FORMATION})),
            ([], None, frozenset({PROTOCOL, FORMATION})),
            ([2], None, frozenset({PROTOCOL, FORMATION})),
            ([2, 17, "Reset", {"type": "Hard"}], None, frozenset({PROTOCOL, FORMATION})),
            ([2, "", "Reset", {"type": "Hard"}], None, frozenset({PROTOCOL, FORMATION})),
            (["2", uid, "Reset", {"type": "Hard"}], uid, frozenset({PROTOCOL, FORMATION})),
            ([True, uid, "Reset", {"type": "Hard"}], uid, frozenset({PROTOCOL, FORMATION})),
            ([2, uid], uid, frozenset({PROTOCOL, FORMATION})),
            ([2, uid, "Reset"], uid, frozenset({PROTOCOL, FORMATION})),
            ([2, uid, "Reset", {"type": "Hard"}, {}], uid, frozenset({PROTOCOL, FORMATION})),
            ([2, uid, "Reset", ["Hard"]], uid, frozenset({PROTOCOL, FORMATION, TYPE})),
            ([2, uid, "Reset", "Hard"], uid, frozenset({PROTOCOL, FORMATION, TYPE})),
            ([7, uid, "Reset", {"type": "Hard"}], uid, frozenset({PROTOCOL, FORMATION})),
            ([2.0, uid, "Reset", {"type": "Hard"}], uid, frozenset({PROTOCOL, FORMATION})),
            ([-2, uid, "Reset", {"type": "Hard"}], uid, frozenset({PROTOCOL, FORMATION})),
        ]
        message, answer_id, codes = self.rng.choice(shapes)
        # Not a CALL, but an id that can be read is the one to answer with.
        text = json.dumps(message)
        return Probe("not a frame", text, answer_id or UNREADABLE, codes)

    def truncated(self) -> Probe:
        action, payload = self.rng.choice(BASE_CALLS)
        uid = self.next_id()
        text = _frame(uid, action, payload)
        cut = self.rng.randrange(0, len(text))
        readable = cut >= len(f'[2,"{uid}"')
        return Probe(
            "truncated", text[:cut], uid if readable else UNREADABLE, frozenset({FORMATION})
        )

    def binary(self) -> Probe:
        rng = self.rng
        uid = self.next_id("bin")
        data = rng.choice(
            [
                _frame(uid, "Reset", {"type": "Hard"}).encode(),
                bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))),
                b"\xff\xfe\x00[2",
            ]
        )
        return Probe("binary", data)  # OCPP-J is text frames only: dropped unanswered

    def stray_reply(self) -> Probe:
        rng = self.rng
        sid = self.next_id("stray")
        message = rng.choice(
            [
                [3, sid, {}],
                [3, sid, {"status": "Accepted"}],
                [3, sid, {"transactionId": 2**70}],
                [4, sid, "InternalError", "boom", {}],
                [4, sid, "NotAnErrorCode", "x" * 500, {"deep": [[[[]]]]}],
                [3, sid, "not an object"],
                [4, sid, "GenericError"],
                [3, 12, {}],
                [3, sid, {}, "extra"],
                [4, None, "InternalError", "", {}],
            ]
        )
        if rng.random() < 0.05:
            text = f'[3,"{sid}",' + "[" * 3000 + "]" * 3000 + "]"
            return Probe("stray reply", text, sid, frozenset({FORMATION}), maybe_blind=True)
        return Probe("stray reply", json.dumps(message), sid)

    def stray_flood(self, total: int) -> list[Probe]:
        return [self.stray_reply() for _ in range(total)]


def well_formed_stray(probe: Probe) -> bool:
    """A CALLRESULT/CALLERROR the charge point can read but never asked for."""
    try:
        message = json.loads(probe.text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(message, list) or len(message) < 2 or not isinstance(message[1], str):
        return False
    if message[0] == 3:
        return len(message) == 3 and isinstance(message[2], dict)
    return (
        len(message) == 5
        and all(isinstance(x, str) for x in message[2:4])
        and isinstance(message[4], dict)
    )


@dataclass
class FuzzCsms(ScriptedCsms):
    """The scripted CSMS, also keeping every CALLRESULT/CALLERROR the charge point sends."""

    replies: dict[str, list[list[Any]]] = field(default_factory=dict)
    outstanding: set[str] = field(default_factory=set)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def _on_frame(self, connection: ServerConnection, index: int, raw: str | bytes) -> None:
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                message = json.loads(raw)
                if (
                    isinstance(message, list)
                    and len(message) > 1
                    and message[0] in (3, 4)
                    and isinstance(message[1], str)
                ):
                    self.replies.setdefault(message[1], []).append(message)
                    self.outstanding.discard(message[1])
                    self._answered.set()
        await super()._on_frame(connection, index, raw)

    async def wait_outstanding_below(self, limit: int, within_s: float = 10) -> None:
        async with asyncio.timeout(within_s):
            while len(self.outstanding) >= limit:
                self._answered.clear()
                await self._answered.wait()


async def healthy(kiosk: Kiosk, what: str) -> dict[str, Any]:
    """The daemon answers `status` at once, is still charging and still on its first link."""
    async with asyncio.timeout(3):
        status = await kiosk.status()
    connector = status["connectors"][0]
    assert connector["status"] == "Charging" and connector["relay_closed"], (what, connector)
    assert status["links"]["csms"]["state"] == "online", (what, status["links"])
    assert status["links"]["csms"]["connects"] == 1, (what, status["links"])
    return status


async def fire(csms: FuzzCsms, kiosk: Kiosk, probes: list[Probe]) -> None:
    """Send every probe, at most WINDOW answerable CALLs in flight; check health as we go."""
    for n, probe in enumerate(probes):
        if probe.windowed:
            assert probe.unique_id is not None
            try:
                await csms.wait_outstanding_below(WINDOW)
            except TimeoutError:
                raise AssertionError(
                    f"no answer to {sorted(csms.outstanding)} within 10 s (probe #{n})"
                ) from None
            csms.outstanding.add(probe.unique_id)
        await csms.send_raw(probe.text)
        if n % 500 == 499:
            await healthy(kiosk, f"after probe #{n}")
    try:
        await csms.wait_outstanding_below(1)
    except TimeoutError:
        raise AssertionError(f"never answered: {sorted(csms.outstanding)}") from None


def answer_problems(csms: FuzzCsms, probes: list[Probe]) -> list[str]:
    """Every probe got exactly the answer it deserves, and nothing else was answered."""
    problems: list[str] = []
    blind_probes: list[Probe] = []
    for probe in probes:
        if probe.unique_id == UNREADABLE or probe.maybe_blind:
            blind_probes.append(probe)
            if probe.unique_id == UNREADABLE:
                continue
        got = csms.replies.get(probe.unique_id or "", []) if probe.unique_id else []
        where = f"{probe.kind} {str(probe.text)[:120]!r}"
        if not probe.answered:
            if got:
                problems.append(f"answered a frame that deserves no answer: {where} -> {got}")
        elif len(got) != 1:
            problems.append(f"{len(got)} answers to {where}")
        elif probe.codes and (got[0][0] != 4 or got[0][2] not in probe.codes):
            problems.append(
                f"{where} -> {json.dumps(got[0])[:160]}, want one of {set(probe.codes)}"
            )
    # Answers with id -1 come straight from the receive loop, in the order of the frames.
    blind = csms.replies.get(UNREADABLE, [])
    required = sum(1 for p in blind_probes if not p.maybe_blind)
    taken = 0
    for probe in blind_probes:
        if probe.maybe_blind:
            fits = taken < len(blind) and blind[taken][2] in probe.codes
            if fits and len(blind) - taken > required:
                taken += 1
            continue
        required -= 1
        if taken >= len(blind):
            problems.append(f"no answer with id -1 to {probe.kind} {str(probe.text)[:80]!r}")
            continue
        reply = blind[taken]
        taken += 1
        if reply[0] != 4 or reply[2] not in probe.codes:
            problems.append(f"{probe.kind} {str(probe.text)[:80]!r} -> {reply}")
    if taken != len(blind):
        problems.append(f"{len(blind) - taken} answers with id -1 to frames that deserve none")
    return problems


def log_problems(log: str, tags: tuple[str, ...]) -> list[str]:
    problems = [f"card id {tag} in the log" for tag in tags if tag in log]
    if "Traceback" in log:
        problems.append("a Python traceback in the log")
    controls = sorted({repr(c) for c in re.findall(r"[\x00-\x09\x0b-\x1f\x7f]", log)})
    if controls:
        problems.append(f"control characters in the log: {controls}")
    forged = [line for line in log.split("\n") if line and not LOG_LINE.match(line)]
    if forged:
        problems.append(f"{len(forged)} log lines without the log prefix, e.g. {forged[:3]!r}")
    return problems


async def test_thousands_of_hostile_frames_cost_a_callerror_each_and_never_the_session(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    generator = Generator(rng)
    probes = generator.probes(FRAMES)
    flood = generator.stray_flood(STRAY_FLOOD)
    boots = iter(
        [
            {"status": "Accepted", "currentTime": now_iso(), "interval": 1},
            {"status": "Accepted", "currentTime": now_iso(), "interval": -1},
            {"status": "Accepted", "currentTime": "2030-02-30T00:00:00Z", "interval": 0},
            {"status": "Accepted", "currentTime": now_iso(), "interval": 2**31 - 1},
            {"status": "Rejected", "currentTime": now_iso(), "interval": -1},
        ]
    )
    garbage_times = iter(["garbage", "2024-13-45T99:99:99Z", 5, None, "", "2030-01-01T00:00:00"])

    def boot(_: Received) -> dict[str, Any] | Error:
        answer = next(boots, None)
        if answer is None:  # later triggered boots: a refusal, which must cost nothing
            return Error("InternalError")
        return answer

    def heartbeat(_: Received) -> dict[str, Any]:
        when = next(garbage_times, "garbage")
        return {} if when is None else {"currentTime": when}

    csms = FuzzCsms(heartbeat_interval=1)
    async with csms:
        csms.responders["BootNotification"] = boot
        csms.responders["Heartbeat"] = heartbeat
        config = scenario_config(tmp_path, csms)
        log_file = tmp_path / "daemon.log"
        async with running(config) as kiosk:
            await kiosk.wait_for(
                "online with telemetry",
                lambda s: (
                    s["links"]["csms"]["state"] == "online"
                    and s["connector"]["last_sample"] is not None
                ),
            )
            await kiosk.tap(CARD)
            charging = await kiosk.wait_for(
                "charging with a transaction id",
                lambda s: (
                    s["connector"]["status"] == "Charging"
                    and s["connector"]["session"]["transaction_id"] is not None
                ),
            )
            tx = charging["connector"]["session"]["transaction_id"]
            meter_values_before = len(csms.calls("MeterValues"))
            log_before = log_file.stat().st_size

            started = time.monotonic()
            await fire(csms, kiosk, probes)
            fuzz_s = time.monotonic() - started
            await fire(csms, kiosk, flood)
            flood_s = time.monotonic() - started - fuzz_s
            status = await healthy(kiosk, "after the fuzz")

            # The charge point's own configuration survived the garbage ChangeConfigurations.
            config_now = await csms.call(
                "GetConfiguration", {"key": ["HeartbeatInterval", "MeterValueSampleInterval"]}
            )
            values = {e["key"]: e["value"] for e in config_now["configurationKey"]}
            assert values["MeterValueSampleInterval"] == "1"
            assert int(values["HeartbeatInterval"]) >= 1

            # Charging went on: MeterValues kept coming, with the session's transaction id.
            await csms.wait_calls("MeterValues", meter_values_before + 2)
            sent_during = csms.payloads("MeterValues")[meter_values_before:]
            assert {p.get("transactionId") for p in sent_during} == {tx}

            # After a thousand stray replies, a tap is still a question to the CSMS.
            await kiosk.tap(CARD)
            (stop,) = (await csms.wait_calls("StopTransaction"))[:1]
            assert stop.payload["transactionId"] == tx
            await kiosk.wait_for("available", lambda s: s["connector"]["status"] == "Available")
            await kiosk.tap(CARD2)
            await csms.wait_for(
                "Authorize for the second card",
                lambda: any(p["idTag"] == CARD2 for p in csms.payloads("Authorize")),
            )
            await kiosk.wait_for(
                "second session charging", lambda s: s["connector"]["status"] == "Charging"
            )
            final = await kiosk.status()
            assert final["links"]["csms"]["connects"] == 1
            assert final["outbox"]["dead_letters"] == 0 and final["outbox"]["quarantined"] == 0
            assert kiosk.daemon.proc is not None and kiosk.daemon.proc.poll() is None
        log_after = log_file.stat().st_size

    everything = probes + flood
    problems = answer_problems(csms, everything)
    assert not problems, f"{len(problems)} wrong answers (seed {SEED}):\n" + "\n".join(
        problems[:25]
    )
    strays = sum(1 for p in everything if p.kind == "stray reply" and well_formed_stray(p))
    assert status["links"]["csms"]["stray_replies"] == strays
    assert csms.violations == []

    raw_log = log_file.read_bytes()
    log = raw_log.decode(errors="replace")
    grown = log_after - log_before
    # What the invalid frames themselves cost: the lines the OCPP-J layer writes for them.
    # (Each schema-valid command, even one turned down, is worth its own INFO line.)
    fuzz_lines = raw_log[log_before:log_after].decode(errors="replace").splitlines()
    bad_bytes = sum(
        len(line) + 1 for line in fuzz_lines if "edgepoint.chargepoint.link: CSMS:" in line
    )
    bad = sum(1 for p in everything if not p.any_answer)
    print(
        f"\nseed {SEED}: {len(probes)} hostile frames in {fuzz_s:.1f} s,"
        f" {len(flood)} stray replies in {flood_s:.1f} s; log grew {grown} bytes in all,"
        f" {bad_bytes} for {bad} invalid frames ({bad_bytes / bad:.2f} bytes per frame);"
        f" bad_frames={status['links']['csms']['bad_frames']} stray_replies={strays}"
    )
    assert grown < LOG_BUDGET_BYTES, f"log grew {grown} bytes"
    assert bad_bytes / bad < 5, f"{bad_bytes} bytes of log for {bad} invalid frames"
    problems = log_problems(log, (CARD, CARD2, *FUZZ_TAGS))
    assert not problems, problems


async def test_bad_answers_to_the_charge_points_own_calls_are_retried_never_dropped(
    tmp_path: Path,
) -> None:
    """StartTransaction.conf with transactionId "abc", 2**70, a CALLERROR: the Start is
    retried with its own id, parked with an alarm, never dead-lettered, and the session
    charges on; a later valid answer (a negative id, which OCPP's integer allows) wins."""
    hostile_text = "database on fire\nERROR forged line\x1b[31m"
    starts: list[Any] = [
        {"transactionId": "abc", "idTagInfo": {"status": "Accepted"}},
        {"transactionId": 2**70, "idTagInfo": {"status": "Accepted"}},
        Error("InternalError\n\x1b[2J", hostile_text),  # after the reconnect
        {"transactionId": -7, "idTagInfo": {"status": "Accepted"}},
    ]
    boots = iter(
        [
            {"status": "Accepted", "currentTime": "not a time", "interval": 1},
            {"status": "Accepted", "currentTime": now_iso(), "interval": -1},
        ]
    )

    def start(_: Received) -> Any:
        return starts.pop(0) if len(starts) > 1 else starts[0]

    async with ScriptedCsms() as csms:
        csms.responders["StartTransaction"] = start
        csms.responders["BootNotification"] = lambda _: next(boots)
        csms.responders["Heartbeat"] = lambda _: {"currentTime": "2024-02-30T10:00:00Z"}
        config = scenario_config(
            tmp_path,
            csms,
            ocpp__HeartbeatInterval=1,
            ocpp__TransactionMessageAttempts=2,
            ocpp__TransactionMessageRetryInterval=1,
        )
        async with running(config) as kiosk:
            # interval -1 is nonsense: the charge point keeps its own HeartbeatInterval.
            online = await kiosk.wait_for(
                "online with telemetry",
                lambda s: (
                    s["links"]["csms"]["state"] == "online"
                    and s["connector"]["last_sample"] is not None
                ),
            )
            online_at = time.monotonic()
            assert online["links"]["csms"]["heartbeat_interval"] == 1
            await kiosk.tap(CARD)
            parked = await kiosk.wait_for(
                "the Start parked with an alarm",
                lambda s: s["outbox"]["parked"] == 1 and bool(s["alarms"]),
            )
            assert "StartTransaction" in parked["alarms"][0]
            assert parked["outbox"]["dead_letters"] == 0
            connector = parked["connector"]
            assert connector["status"] == "Charging" and connector["relay_closed"]
            assert connector["session"]["transaction_id"] is None
            assert len(csms.calls("StartTransaction")) == 2
            # The session's MeterValues wait behind their Start: none went without an id.
            assert csms.payloads("MeterValues") == []

            # A new connection gives the parked Start another round at once.
            await csms.disconnect()
            confirmed = await kiosk.wait_for(
                "the Start confirmed",
                lambda s: (
                    s["connector"]["session"] is not None
                    and s["connector"]["session"]["transaction_id"] == -7
                ),
            )
            assert confirmed["alarms"] == [] and confirmed["outbox"]["parked"] == 0
            assert confirmed["connector"]["status"] == "Charging"
            tries = csms.calls("StartTransaction")
            assert len(tries) == 4 and len({t.unique_id for t in tries}) == 1
            assert len({json.dumps(t.payload, sort_keys=True) for t in tries}) == 1
            await csms.wait_for(
                "MeterValues with the transaction id",
                lambda: any(p.get("transactionId") == -7 for p in csms.payloads("MeterValues")),
            )
            await kiosk.tap(CARD)
            (stop,) = await csms.wait_calls("StopTransaction")
            assert stop.payload["transactionId"] == -7
            done = await kiosk.wait_for(
                "drained", lambda s: s["outbox"]["depth"] == 0 and s["connector"]["session"] is None
            )
            assert done["outbox"]["dead_letters"] == 0 and done["outbox"]["quarantined"] == 0
            assert done["links"]["csms"]["connects"] == 2
            assert kiosk.daemon.proc is not None and kiosk.daemon.proc.poll() is None
            # Garbage times in every Heartbeat.conf do not turn into a heartbeat storm.
            beats = len(csms.calls("Heartbeat"))
            assert beats <= time.monotonic() - online_at + 2, beats
    assert {p.get("transactionId") for p in csms.payloads("MeterValues")} == {-7}
    assert csms.violations == []
    log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert not log_problems(log, (CARD,)), log_problems(log, (CARD,))
