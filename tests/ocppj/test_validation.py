"""Strict OCPP 1.6 schema validation: which payload gets which CallError, and date-times."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from edgepoint.ocppj.errors import ErrorCode, Refusal
from edgepoint.ocppj.validation import (
    INT32,
    KNOWN_ACTIONS,
    check_action,
    check_request,
    parse_datetime,
    request_problem,
    response_problem,
)

TS = "2025-06-01T12:00:00Z"
START = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": TS}
SAMPLE = {"timestamp": TS, "sampledValue": [{"value": "1"}]}


def code_of(action: str, payload: dict[str, Any]) -> ErrorCode | None:
    refusal = request_problem(action, payload)
    return None if refusal is None else refusal.code


def charging_profile(limit: Any) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            },
        },
    }


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        ("Heartbeat", {}, None),
        ("StartTransaction", START, None),
        ("MeterValues", {"connectorId": 1, "meterValue": [SAMPLE]}, None),
        # Missing required -> ProtocolError ("Payload for Action is incomplete").
        ("BootNotification", {"chargePointVendor": "v"}, ErrorCode.PROTOCOL_ERROR),
        ("Authorize", {}, ErrorCode.PROTOCOL_ERROR),
        # A property the schema does not define -> FormationViolation.
        ("Heartbeat", {"extra": 1}, ErrorCode.FORMATION_VIOLATION),
        ("StartTransaction", {**START, "extra": 1}, ErrorCode.FORMATION_VIOLATION),
        # Wrong JSON type, too long a CiString -> TypeConstraintViolation.
        ("Authorize", {"idTag": 5}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        ("Authorize", {"idTag": "1" * 21}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        ("StartTransaction", {**START, "connectorId": "1"}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        ("StartTransaction", {**START, "connectorId": 1.5}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        ("StartTransaction", {**START, "connectorId": True}, ErrorCode.TYPE_CONSTRAINT_VIOLATION),
        # Integers are 32-bit in OCPP 1.6.
        ("StartTransaction", {**START, "meterStart": INT32[1]}, None),
        ("StartTransaction", {**START, "meterStart": INT32[0]}, None),
        (
            "StartTransaction",
            {**START, "meterStart": INT32[1] + 1},
            ErrorCode.TYPE_CONSTRAINT_VIOLATION,
        ),
        (
            "StartTransaction",
            {**START, "meterStart": INT32[0] - 1},
            ErrorCode.TYPE_CONSTRAINT_VIOLATION,
        ),
        (
            "StopTransaction",
            {"meterStop": 1, "timestamp": TS, "transactionId": 2**70},
            ErrorCode.TYPE_CONSTRAINT_VIOLATION,
        ),
        # A value outside an enumeration -> PropertyConstraintViolation.
        (
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Nap"},
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
        ),
        (
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {"timestamp": TS, "sampledValue": [{"value": "1", "unit": "furlong"}]}
                ],
            },
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
        ),
        # An empty array where one item is the minimum -> OccurenceConstraintViolation.
        (
            "MeterValues",
            {"connectorId": 1, "meterValue": []},
            ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
        ),
        (
            "MeterValues",
            {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": []}]},
            ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
        ),
        # multipleOf 0.1 with decimal fractions that binary floats cannot hold exactly.
        ("SetChargingProfile", charging_profile(21.4), None),
        ("SetChargingProfile", charging_profile(0.3), None),
        ("SetChargingProfile", charging_profile(32), None),
        ("SetChargingProfile", charging_profile(21.45), ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        # Beyond float range: refused, not an OverflowError from inside the validator.
        ("SetChargingProfile", charging_profile(1e308), ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        ("SetChargingProfile", charging_profile(10**400), ErrorCode.PROPERTY_CONSTRAINT_VIOLATION),
        (
            "SetChargingProfile",
            charging_profile(float("nan")),
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
        ),
    ],
)
def test_requests_get_the_right_code(
    action: str, payload: dict[str, Any], code: ErrorCode | None
) -> None:
    assert code_of(action, copy.deepcopy(payload)) == code


@pytest.mark.parametrize(
    "timestamp",
    [
        "2025-06-01T12:00:00",  # no offset: a guess, not a time
        "2025-06-01",  # a date only
        "2025-06-01 12:00:00Z",  # space separator
        "2025-13-01T12:00:00Z",  # month 13
        "2025-02-30T12:00:00Z",
        "2025-06-01T24:00:00Z",
        "2025-06-01T12:00:60Z",
        "2025-06-01T12:00:00+24:00",
        "2025-06-01T12:00:00+0200",
        "2025-06-01T12:00:00.Z",
        "2025-06-01T12:00:00.1234567891Z",  # beyond nanoseconds
        "2025-06-01T12:00:00Z\n",  # trailing newline
        " 2025-06-01T12:00:00Z",
        "٢٠٢٥-06-01T12:00:00Z",  # non-ASCII digits
        "20250601T120000Z",  # ISO 8601 basic format is not RFC 3339
        "yesterday",
        "",
    ],
)
def test_bad_date_times_are_type_constraint_violations(timestamp: str) -> None:
    assert code_of("StartTransaction", {**START, "timestamp": timestamp}) == (
        ErrorCode.TYPE_CONSTRAINT_VIOLATION
    )
    with pytest.raises(ValueError):
        parse_datetime(timestamp)


@pytest.mark.parametrize(
    ("timestamp", "moment"),
    [
        ("2025-06-01T12:00:00Z", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01t12:00:00z", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T12:00:00.5Z", datetime(2025, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("2025-06-01T12:00:00.123456789Z", datetime(2025, 6, 1, 12, 0, 0, 123_456, tzinfo=UTC)),
        ("2025-06-01T14:30:00+02:30", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T00:00:00-05:00", datetime(2025, 6, 1, 5, tzinfo=UTC)),
        ("2024-02-29T12:00:00+00:00", datetime(2024, 2, 29, 12, tzinfo=UTC)),
    ],
)
def test_good_date_times_parse_to_utc(timestamp: str, moment: datetime) -> None:
    assert code_of("StartTransaction", {**START, "timestamp": timestamp}) is None
    parsed = parse_datetime(timestamp)
    assert parsed == moment
    assert parsed.tzinfo is UTC


def test_refusal_names_where_and_why() -> None:
    with pytest.raises(Refusal) as refused:
        check_request(
            "MeterValues", {"connectorId": 1, "meterValue": [{**SAMPLE, "timestamp": "x"}]}
        )
    assert refused.value.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
    assert refused.value.cause.startswith("meterValue/0/timestamp: ")
    assert refused.value.details == {"cause": refused.value.cause}


def test_unknown_actions_are_not_implemented_known_ones_pass() -> None:
    with pytest.raises(Refusal) as refused:
        check_action("Teleport")
    assert refused.value.code is ErrorCode.NOT_IMPLEMENTED
    assert code_of("Teleport", {}) is ErrorCode.NOT_IMPLEMENTED
    # Both directions' actions, including the security extension's.
    for action in ("Reset", "BootNotification", "SecurityEventNotification", "SignCertificate"):
        check_action(action)
    assert len(KNOWN_ACTIONS) >= 28


def test_every_known_action_has_both_schemas() -> None:
    # A schema missing from the library would turn a valid CALL into an InternalError.
    for action in KNOWN_ACTIONS:
        request_problem(action, {})
        response_problem(action, {})


def test_responses_are_checked_too() -> None:
    assert response_problem("Reset", {"status": "Accepted"}) is None
    bad = response_problem("Reset", {"status": "Maybe"})
    assert bad is not None and bad.code is ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
    missing = response_problem("BootNotification", {"status": "Accepted", "interval": 60})
    assert missing is not None and missing.code is ErrorCode.PROTOCOL_ERROR
    naive = response_problem("Heartbeat", {"currentTime": datetime(2025, 6, 1, 12).isoformat()})
    assert naive is not None and naive.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
