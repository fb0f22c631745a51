"""OCPP-J frame parsing and serialization: every malformed shape gets the right answer or none."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from edgepoint.ocppj import frames
from edgepoint.ocppj.errors import DESCRIPTIONS, MAX_TEXT, ErrorCode, Refusal


def refusal_of(raw: str | bytes) -> list[Any]:
    """The CALLERROR `raw` is answered with, as a list."""
    frame = frames.parse(raw)
    assert isinstance(frame, frames.BadFrame), frame
    assert frame.reply is not None, f"{frame.reason} got no reply"
    reply = json.loads(frame.reply)
    assert isinstance(reply, list)
    return reply


DEEP = "[" * (frames.MAX_DEPTH + 1) + "]" * (frames.MAX_DEPTH + 1)


@pytest.mark.parametrize(
    ("raw", "unique_id", "code"),
    [
        ("this is not json", "-1", "FormationViolation"),
        ('[2,"abc","Heartbeat",{', "abc", "FormationViolation"),  # id recovered from the prefix
        ('{"not":"an array"}', "-1", "ProtocolError"),
        ("[]", "-1", "ProtocolError"),
        ("42", "-1", "ProtocolError"),
        ('[7,"m1","Heartbeat",{}]', "m1", "ProtocolError"),
        ('["2","m1b","Heartbeat",{}]', "m1b", "ProtocolError"),
        ('[true,"m1c","Heartbeat",{}]', "m1c", "ProtocolError"),  # a bool is not 2
        ('[2.0,"m1d","Heartbeat",{}]', "m1d", "ProtocolError"),
        ('[2,"m2","Heartbeat"]', "m2", "ProtocolError"),
        ('[2,"m2b","Heartbeat",{},{}]', "m2b", "ProtocolError"),
        ('[2,42,"Heartbeat",{}]', "-1", "ProtocolError"),
        ('[2,"","Heartbeat",{}]', "-1", "ProtocolError"),
        ('[2,"' + "i" * (frames.MAX_UNIQUE_ID + 1) + '","Heartbeat",{}]', "-1", "ProtocolError"),
        ('[2,"m3","Heartbeat",[]]', "m3", "FormationViolation"),
        ('[2,"m3b","Heartbeat",null]', "m3b", "FormationViolation"),
        ('[2,"m4",17,{}]', "m4", "ProtocolError"),
        ('[2,"m4b","",{}]', "m4b", "ProtocolError"),
        ('[2,"m4c","' + "A" * (frames.MAX_ACTION + 1) + '",{}]', "m4c", "ProtocolError"),
        # Not JSON: NaN and the infinities are Python's extension, 1e400 overflows to inf.
        ('[2,"n1","Heartbeat",{"x":NaN}]', "n1", "FormationViolation"),
        ('[2,"n2","Heartbeat",{"x":Infinity}]', "n2", "FormationViolation"),
        ('[2,"n3","Heartbeat",{"x":-Infinity}]', "n3", "FormationViolation"),
        ('[2,"n4","Heartbeat",{"x":1e400}]', "n4", "FormationViolation"),
        ('[2,"n5","Heartbeat",{"x":' + "7" * 5000 + "}]", "n5", "FormationViolation"),
        ('[2,"d1","Heartbeat",{"x":' + DEEP + "}]", "d1", "ProtocolError"),
        # Deep enough to break json's own recursion: still one answer, no crash.
        (
            '[2,"d2","Heartbeat",{"x":' + "[" * 200_000 + "]" * 200_000 + "}]",
            "d2",
            "FormationViolation",
        ),
    ],
)
def test_malformed_calls_get_the_right_callerror(raw: str, unique_id: str, code: str) -> None:
    reply = refusal_of(raw)
    assert reply[:3] == [4, unique_id, code]
    assert reply[3] == DESCRIPTIONS[ErrorCode(code)]
    assert set(reply[4]) == {"cause"} and reply[4]["cause"]


@pytest.fixture(name="unlimited_int_digits")
def unlimited_int_digits_fixture() -> Iterator[None]:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # as PYTHONINTMAXSTRDIGITS=0 would
    try:
        yield
    finally:
        sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("unlimited_int_digits")
def test_huge_integers_are_refused_whatever_the_interpreter_limit() -> None:
    reply = refusal_of('[2,"big","Heartbeat",{"x":' + "9" * 100_000 + "}]")
    assert reply[:3] == [4, "big", "FormationViolation"]
    # Room to spare for the values OCPP does carry.
    assert isinstance(frames.parse('[2,"ok","Heartbeat",{"x":' + "9" * 300 + "}]"), frames.Call)


def test_nesting_up_to_max_depth_is_accepted() -> None:
    # The frame is level 1, its payload level 2: this payload reaches MAX_DEPTH exactly.
    inner = "[" * (frames.MAX_DEPTH - 2) + "]" * (frames.MAX_DEPTH - 2)
    frame = frames.parse('[2,"ok","DataTransfer",{"vendorId":' + inner + "}]")
    assert isinstance(frame, frames.Call)
    too_deep = frames.parse('[2,"no","DataTransfer",{"vendorId":[' + inner + "]}]")
    assert isinstance(too_deep, frames.BadFrame) and too_deep.reply is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'[2,"b1","Heartbeat",{}]',  # binary: OCPP-J is text frames only, refused unread
        b"\xff\xfe binary",
        '[3,"x"]',
        '[3,"x",[]]',
        "[3,42,{}]",
        '[4,"y","Oops"]',
        '[4,"y",1,"d",{}]',
        '[4,"y","Oops","d",[]]',
        '[3,"deep",{"a":' + DEEP + "}]",  # only a CALL may be answered, even when too deep
        '[4,"deep","GenericError","",{"a":' + DEEP + "}]",
    ],
)
def test_what_cannot_be_a_call_gets_no_reply(raw: str | bytes) -> None:
    frame = frames.parse(raw)
    assert isinstance(frame, frames.BadFrame)
    assert frame.reply is None
    assert frame.reason


def test_well_formed_frames_are_typed() -> None:
    assert frames.parse(' [ 2 , "c1" , "Authorize" , {"idTag":"A"} ] ') == frames.Call(
        "c1", "Authorize", {"idTag": "A"}
    )
    # A CALL is typed even when its action is unknown or its payload breaks the
    # schema: that is validation's business, and it needs the unique id to answer.
    assert frames.parse('[2,"c2","NoSuchAction",{"x":1}]') == frames.Call(
        "c2", "NoSuchAction", {"x": 1}
    )
    assert frames.parse('[3,"r1",{"status":"Accepted"}]') == frames.CallResult(
        "r1", {"status": "Accepted"}
    )
    assert frames.parse('[4,"e1","NotSupported","nope",{"cause":"x"}]') == frames.CallError(
        "e1", "NotSupported", "nope", {"cause": "x"}
    )
    # Codes OCPP does not define still reach the caller.
    assert frames.parse('[4,"e2","Teapot","",{}]') == frames.CallError("e2", "Teapot", "", {})


def test_serialized_frames_are_compact_ascii_json() -> None:
    call = frames.call_frame("u1", "Authorize", {"idTag": "Ünï\ud800"})
    assert call.isascii() and " " not in call
    assert json.loads(call) == [2, "u1", "Authorize", {"idTag": "Ünï\ud800"}]
    assert frames.result_frame("u1", {}) == '[3,"u1",{}]'
    with pytest.raises(ValueError):
        frames.result_frame("u1", {"x": float("nan")})  # never put non-JSON on the wire


def test_error_frame_carries_code_description_and_cause() -> None:
    refusal = Refusal(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "connectorId must be >= 0")
    assert json.loads(frames.error_frame("u1", refusal)) == [
        4,
        "u1",
        "PropertyConstraintViolation",
        DESCRIPTIONS[ErrorCode.PROPERTY_CONSTRAINT_VIOLATION],
        {"cause": "connectorId must be >= 0"},
    ]
    bare = json.loads(frames.error_frame("u2", Refusal(ErrorCode.INTERNAL_ERROR)))
    assert bare[2:] == ["InternalError", DESCRIPTIONS[ErrorCode.INTERNAL_ERROR], {}]
    long = Refusal(ErrorCode.GENERIC_ERROR, "c" * 1000, description="d" * 1000)
    assert len(long.cause) == len(long.description) == MAX_TEXT


def test_every_error_code_has_its_16_spelling_and_a_description() -> None:
    assert {code.value for code in ErrorCode} == {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",  # sic: 1.6's spelling, not 2.0.1's
        "TypeConstraintViolation",
        "GenericError",
    }
    assert set(DESCRIPTIONS) == set(ErrorCode)
