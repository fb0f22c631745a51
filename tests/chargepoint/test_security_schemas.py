"""The security extension's messages pass the strict OCPP-J validation, both directions.

The Security Whitepaper (edition 3) makes them actions of their own, not DataTransfer:
every request and confirmation has its schema (urn:OCPP:Cp:1.6:2020:3), date-times need
an offset, and what a schema does not allow gets the CallError OCPP-J assigns to it.
The limits below are written out from the whitepaper's tables, so a library update that
loosened a schema would fail here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ocpp.messages import get_validator

from edgepoint.ocppj.errors import ErrorCode
from edgepoint.ocppj.validation import KNOWN_ACTIONS, request_problem, response_problem

TS = "2025-06-01T12:00:00Z"
HASH = {
    "hashAlgorithm": "SHA256",
    "issuerNameHash": "a" * 64,
    "issuerKeyHash": "b" * 64,
    "serialNumber": "1f",
}
FIRMWARE = {
    "location": "https://fw.example/1.bin",
    "retrieveDateTime": TS,
    "installDateTime": TS,
    "signingCertificate": "-----BEGIN CERTIFICATE-----",
    "signature": "c2ln",
}
# One valid request and confirmation of each action (both directions).
VALID: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # charge point -> central system
    "SecurityEventNotification": (
        {"type": "StartupOfTheDevice", "timestamp": TS, "techInfo": "edgepoint 1.0"},
        {},
    ),
    "SignCertificate": ({"csr": "-----BEGIN CERTIFICATE REQUEST-----"}, {"status": "Accepted"}),
    "LogStatusNotification": ({"status": "Uploaded", "requestId": 9}, {}),
    "SignedFirmwareStatusNotification": ({"status": "InvalidSignature", "requestId": 4}, {}),
    # central system -> charge point
    "CertificateSigned": (
        {"certificateChain": "-----BEGIN CERTIFICATE-----"},
        {"status": "Rejected"},
    ),
    "InstallCertificate": (
        {"certificateType": "ManufacturerRootCertificate", "certificate": "pem"},
        {"status": "Failed"},
    ),
    "DeleteCertificate": ({"certificateHashData": HASH}, {"status": "NotFound"}),
    "GetInstalledCertificateIds": (
        {"certificateType": "CentralSystemRootCertificate"},
        {"status": "Accepted", "certificateHashData": [HASH]},
    ),
    "ExtendedTriggerMessage": (
        {"requestedMessage": "SignChargePointCertificate", "connectorId": 0},
        {"status": "NotImplemented"},
    ),
    "GetLog": (
        {
            "logType": "SecurityLog",
            "requestId": 1,
            "retries": 2,
            "retryInterval": 30,
            "log": {"remoteLocation": "ftp://h/x/", "oldestTimestamp": TS, "latestTimestamp": TS},
        },
        {"status": "AcceptedCanceled", "filename": "log.tar.gz"},
    ),
    "SignedUpdateFirmware": (
        {"requestId": 3, "retries": 1, "retryInterval": 5, "firmware": FIRMWARE},
        {"status": "InvalidCertificate"},
    ),
}

# The whitepaper's string limits (field path -> maxLength).
MAX_LENGTHS: list[tuple[str, str, int]] = [
    ("SecurityEventNotification", "type", 50),
    ("SecurityEventNotification", "techInfo", 255),
    ("SignCertificate", "csr", 5500),
    ("CertificateSigned", "certificateChain", 10000),
    ("InstallCertificate", "certificate", 5500),
    ("DeleteCertificate", "certificateHashData/issuerNameHash", 128),
    ("DeleteCertificate", "certificateHashData/serialNumber", 40),
    ("GetLog", "log/remoteLocation", 512),
    ("SignedUpdateFirmware", "firmware/location", 512),
    ("SignedUpdateFirmware", "firmware/signingCertificate", 5500),
    ("SignedUpdateFirmware", "firmware/signature", 800),
]
# Date-time fields (with an offset, as everywhere in OCPP-J).
DATE_TIMES: list[tuple[str, str]] = [
    ("SecurityEventNotification", "timestamp"),
    ("GetLog", "log/oldestTimestamp"),
    ("GetLog", "log/latestTimestamp"),
    ("SignedUpdateFirmware", "firmware/retrieveDateTime"),
    ("SignedUpdateFirmware", "firmware/installDateTime"),
]
# The whitepaper's required fields of each request.
REQUIRED: dict[str, set[str]] = {
    "SecurityEventNotification": {"type", "timestamp"},
    "SignCertificate": {"csr"},
    "LogStatusNotification": {"status"},
    "SignedFirmwareStatusNotification": {"status"},
    "CertificateSigned": {"certificateChain"},
    "InstallCertificate": {"certificateType", "certificate"},
    "DeleteCertificate": {"certificateHashData"},
    "GetInstalledCertificateIds": {"certificateType"},
    "ExtendedTriggerMessage": {"requestedMessage"},
    "GetLog": {"logType", "requestId", "log"},
    "SignedUpdateFirmware": {"requestId", "firmware"},
}


def with_value(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(payload)
    *parents, last = path.split("/")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


def without(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != name}


def test_every_security_action_is_its_own_action_with_edition_3_schemas() -> None:
    assert set(VALID) <= KNOWN_ACTIONS
    for action in VALID:
        for message_type, suffix in ((2, "req"), (3, "conf")):
            schema = get_validator(message_type, action, "1.6").schema
            assert schema["$id"] == f"urn:OCPP:Cp:1.6:2020:3:{action}.{suffix}"
            assert schema["additionalProperties"] is False


@pytest.mark.parametrize("action", sorted(VALID))
def test_valid_messages_pass_both_ways(action: str) -> None:
    request, confirmation = VALID[action]
    assert request_problem(action, request) is None
    assert response_problem(action, confirmation) is None


@pytest.mark.parametrize("action", sorted(VALID))
def test_required_fields_and_unknown_properties(action: str) -> None:
    request, confirmation = VALID[action]
    schema = get_validator(2, action, "1.6").schema
    assert set(schema.get("required", [])) == REQUIRED[action]
    for name in REQUIRED[action]:
        refusal = request_problem(action, without(request, name))
        assert refusal is not None and refusal.code is ErrorCode.PROTOCOL_ERROR
    extra = request_problem(action, {**request, "vendorExtension": 1})
    assert extra is not None and extra.code is ErrorCode.FORMATION_VIOLATION
    bad_reply = response_problem(action, {**confirmation, "vendorExtension": 1})
    assert bad_reply is not None and bad_reply.code is ErrorCode.FORMATION_VIOLATION


@pytest.mark.parametrize(("action", "path", "limit"), MAX_LENGTHS)
def test_string_limits_of_the_whitepaper(action: str, path: str, limit: int) -> None:
    request = VALID[action][0]
    assert request_problem(action, with_value(request, path, "x" * limit)) is None
    refusal = request_problem(action, with_value(request, path, "x" * (limit + 1)))
    assert refusal is not None and refusal.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION


@pytest.mark.parametrize(("action", "path"), DATE_TIMES)
@pytest.mark.parametrize(
    "moment", ["2025-06-01T12:00:00", "2025-06-01", "2025-06-01T12:00:00+0200", "soon"]
)
def test_date_times_need_an_offset(action: str, path: str, moment: str) -> None:
    request = VALID[action][0]
    assert request_problem(action, with_value(request, path, "2025-06-01T14:00:00+02:00")) is None
    refusal = request_problem(action, with_value(request, path, moment))
    assert refusal is not None and refusal.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
    assert refusal.cause.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("action", "path", "value"),
    [
        ("InstallCertificate", "certificateType", "V2GRootCertificate"),  # a 2.0.1 value
        ("GetInstalledCertificateIds", "certificateType", "ChargePointCertificate"),
        ("DeleteCertificate", "certificateHashData/hashAlgorithm", "MD5"),
        ("ExtendedTriggerMessage", "requestedMessage", "DiagnosticsStatusNotification"),
        ("GetLog", "logType", "DataCollectorLog"),
        ("LogStatusNotification", "status", "Accepted"),
        ("SignedFirmwareStatusNotification", "status", "Rejected"),
    ],
)
def test_enumerations_are_the_whitepapers(action: str, path: str, value: str) -> None:
    refusal = request_problem(action, with_value(VALID[action][0], path, value))
    assert refusal is not None and refusal.code is ErrorCode.PROPERTY_CONSTRAINT_VIOLATION


@pytest.mark.parametrize(
    ("action", "path"),
    [
        ("GetLog", "requestId"),
        ("SignedUpdateFirmware", "requestId"),
        ("LogStatusNotification", "requestId"),
        ("ExtendedTriggerMessage", "connectorId"),
    ],
)
def test_integers_are_32_bit(action: str, path: str) -> None:
    request = VALID[action][0]
    assert request_problem(action, with_value(request, path, 2**31 - 1)) is None
    refusal = request_problem(action, with_value(request, path, 2**31))
    assert refusal is not None and refusal.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
    text = request_problem(action, with_value(request, path, "7"))
    assert text is not None and text.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION


def test_confirmations_are_checked_strictly() -> None:
    empty_list = {"status": "Accepted", "certificateHashData": []}
    refusal = response_problem("GetInstalledCertificateIds", empty_list)
    assert refusal is not None and refusal.code is ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION
    bad_status = response_problem("SignedUpdateFirmware", {"status": "Maybe"})
    assert bad_status is not None and bad_status.code is ErrorCode.PROPERTY_CONSTRAINT_VIOLATION
    long_name = response_problem("GetLog", {"status": "Accepted", "filename": "x" * 256})
    assert long_name is not None and long_name.code is ErrorCode.TYPE_CONSTRAINT_VIOLATION
    # The notifications' confirmations are empty objects.
    for action in ("SecurityEventNotification", "LogStatusNotification"):
        assert response_problem(action, {"status": "Accepted"}) is not None
