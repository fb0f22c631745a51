"""SiteCsms over real sockets: admission, malformed frames, replacement and shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import (
    CP_ID,
    CP_KEY,
    TEST_ITERATIONS,
    FakeClock,
    RunningCsms,
    exchange,
    ocpp_client,
    open_ws,
)
from ocpp.v16 import call
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edgepoint.csms.server import MAX_MESSAGE_BYTES, SiteCsms, charge_point_id_from_path


async def refused_status(running: RunningCsms, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(running.port, **kwargs):  # type: ignore[arg-type]  # test table
            pass
    return refused.value.response.status_code


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"key": "wrong-key-wrong-key"}, 401),
        ({"key": None}, 401),
        ({"cp_id": "CP-2"}, 404),  # never registered: refused before credentials
        ({"path": "/ocpp/CP-2"}, 404),  # (a user name not matching the id: identity tests)
        ({"subprotocols": None}, 400),
        ({"subprotocols": ["ocpp2.0.1"]}, 400),
        ({"path": "/other/CP-1"}, 404),
        ({"path": "/ocpp/"}, 404),
        ({"path": "/ocpp/CP%201"}, 400),
        ({"path": "/ocpp/" + "X" * 49}, 400),
        ({"path": "/ocpp/%FF"}, 400),
    ],
)
async def test_admission_is_refused(
    running: RunningCsms, kwargs: dict[str, object], status: int
) -> None:
    assert await refused_status(running, **kwargs) == status
    assert running.csms.connected_ids() == []


async def test_registered_key_admits_and_registry_tracks(running: RunningCsms) -> None:
    await running.csms.register_charge_point("CP-2", "another-key-of-16+")
    async with (
        ocpp_client(running.port) as one,
        ocpp_client(running.port, "CP-2", "another-key-of-16+") as two,
    ):
        await one.call(call.Heartbeat(), suppress=False)
        await two.call(call.Heartbeat(), suppress=False)
        assert running.csms.connected_ids() == ["CP-1", "CP-2"]
    for _ in range(50):
        if not running.csms.connected_ids():
            break
        await asyncio.sleep(0.02)
    assert running.csms.connected_ids() == []


async def test_key_is_never_logged(running: RunningCsms, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_ws(running.port) as ws:
        await exchange(ws, '[2,"1","Heartbeat",{}]')
    assert await refused_status(running, key="wrong-key-wrong-key") == 401
    token = base64.b64encode(f"{CP_ID}:{CP_KEY}".encode()).decode()
    # Only the server's records: the test client's own websockets logger shows the header.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("edgepoint."))
    assert "< Authorization: <redacted>" in ours  # websockets' header log ran
    assert CP_KEY not in ours and token not in ours


@pytest.mark.parametrize(
    ("frame", "expected_id", "code"),
    [
        ("this is not json", "-1", "FormationViolation"),
        ('[2,"abc","Heartbeat",{', "abc", "FormationViolation"),
        ('{"not":"an array"}', "-1", "ProtocolError"),
        ("[]", "-1", "ProtocolError"),
        ('[7,"m1","Heartbeat",{}]', "m1", "ProtocolError"),
        ('[2,"m2","Heartbeat"]', "m2", "ProtocolError"),
        ('[2,42,"Heartbeat",{}]', "-1", "ProtocolError"),
        ('[2,"m3","Heartbeat",[]]', "m3", "FormationViolation"),
        ('[2,"m4","NoSuchAction",{}]', "m4", "NotImplemented"),
        ('[2,"m5","RemoteStartTransaction",{"idTag":"x"}]', "m5", "NotSupported"),
        ('[2,"m6","BootNotification",{"chargePointVendor":"v"}]', "m6", "ProtocolError"),
        ('[2,"m7","Heartbeat",{"extra":1}]', "m7", "FormationViolation"),
        ('[2,"m8","Authorize",{"idTag":5}]', "m8", "TypeConstraintViolation"),
        ('[2,"m9","Authorize",{"idTag":"123456789012345678901"}]', "m9", "TypeConstraintViolation"),
        (
            '[2,"m10","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Nap"}]',
            "m10",
            "PropertyConstraintViolation",
        ),
        (
            '[2,"m11","StartTransaction",{"connectorId":1,"idTag":"A","meterStart":0,'
            '"timestamp":"yesterday"}]',
            "m11",
            "TypeConstraintViolation",
        ),
        (
            # No UTC offset: no longer read as UTC, refused.
            '[2,"m13","StartTransaction",{"connectorId":1,"idTag":"A","meterStart":0,'
            '"timestamp":"2025-06-01T12:00:00"}]',
            "m13",
            "TypeConstraintViolation",
        ),
        (
            '[2,"m14","StartTransaction",{"connectorId":1,"idTag":"A","meterStart":4294967296,'
            '"timestamp":"2025-06-01T12:00:00Z"}]',
            "m14",
            "TypeConstraintViolation",
        ),
        (
            '[2,"m15","StatusNotification",{"connectorId":-1,"errorCode":"NoError",'
            '"status":"Available"}]',
            "m15",
            "PropertyConstraintViolation",
        ),
        (
            '[2,"m16","MeterValues",{"connectorId":-1,"meterValue":[{"timestamp":'
            '"2025-06-01T12:00:00Z","sampledValue":[{"value":"1"}]}]}]',
            "m16",
            "PropertyConstraintViolation",
        ),
        (
            '[2,"m17","MeterValues",{"connectorId":1,"meterValue":[]}]',
            "m17",
            "OccurenceConstraintViolation",
        ),
        ('[2,"m18","Heartbeat",{"x":NaN}]', "m18", "FormationViolation"),
        ('[2,"m19","Heartbeat",{"x":' + "9" * 5000 + "}]", "m19", "FormationViolation"),
        ('[2,"m20","Heartbeat",{"x":' + "[" * 40 + "]" * 40 + "}]", "m20", "ProtocolError"),
        ('[2,"m21","Reset",{"type":"Soft"}]', "m21", "NotSupported"),
        (
            '[2,"m12","StartTransaction",{"connectorId":0,"idTag":"A","meterStart":0,'
            '"timestamp":"2025-06-01T12:00:00Z"}]',
            "m12",
            "PropertyConstraintViolation",
        ),
    ],
)
async def test_malformed_frames_get_the_right_callerror(
    running: RunningCsms, frame: str, expected_id: str, code: str
) -> None:
    async with open_ws(running.port) as ws:
        reply = json.loads(await exchange(ws, frame))
        assert reply[:3] == [4, expected_id, code]
        assert isinstance(reply[3], str) and isinstance(reply[4], dict)
        # The connection survives and still answers.
        ok = json.loads(await exchange(ws, '[2,"next","Heartbeat",{}]'))
        assert ok[:2] == [3, "next"]


async def test_malformed_responses_and_binary_frames_get_no_reply(running: RunningCsms) -> None:
    async with open_ws(running.port) as ws:
        deep = '[3,"d",{"a":' + "[" * 40 + "]" * 40 + "}]"
        for frame in ('[3,"x"]', '[4,"y","Oops"]', '[3,"z",{}]', deep, b'[2,"b","Heartbeat",{}]'):
            await ws.send(frame)
        # OCPP-J travels in text frames: nothing above is answered, the heartbeat is.
        ok = json.loads(await exchange(ws, '[2,"hb","Heartbeat",{}]'))
        assert ok[:2] == [3, "hb"]
        session = running.csms.session(CP_ID)
        assert session is not None
        stats = session.endpoint.stats
        assert (stats.stray_replies, stats.bad_frames) == (1, 4)


async def test_second_connection_cannot_silence_a_live_first(running: RunningCsms) -> None:
    # The whole duplicate policy (a dead first one is replaced) is in test_csms_identity.py.
    async with open_ws(running.port) as first:
        await exchange(first, '[2,"a","Heartbeat",{}]')
        assert await refused_status(running) == 409
        ok = json.loads(await exchange(first, '[2,"b","Heartbeat",{}]'))
        assert ok[:2] == [3, "b"]
        assert running.csms.connected_ids() == [CP_ID]


async def test_cancel_closes_clients_with_1001_and_returns_fast(
    tmp_path: Path, clock: FakeClock
) -> None:
    csms = SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock, auth_iterations=TEST_ITERATIONS)
    # Registering before run() opens the file on its own.
    await csms.register_charge_point(CP_ID, CP_KEY)
    await csms.register_charge_point("CP-2", CP_KEY)
    before = asyncio.all_tasks()
    task = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.started.wait(), 5)
    async with open_ws(csms.port) as a, open_ws(csms.port, "CP-2", path="/ocpp/CP-2?x=1") as b:
        await exchange(a, '[2,"1","Heartbeat",{}]')
        await exchange(b, '[2,"1","Heartbeat",{}]')
        assert csms.connected_ids() == ["CP-1", "CP-2"]
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - started
        for ws in (a, b):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
            assert ws.close_code == 1001
    assert elapsed < 2
    assert not csms.started.is_set()
    assert csms.store is None
    assert csms.connected_ids() == []
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not [t for t in leftover if not t.done()]
    # The database was closed cleanly and can be served again.
    again = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.started.wait(), 5)
    async with open_ws(csms.port) as ws:
        await exchange(ws, '[2,"2","Heartbeat",{}]')
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again


@pytest.mark.parametrize(
    ("path", "cp_id"),
    [("/ocpp/CP-1", "CP-1"), ("/ocpp/CP.2?token=1", "CP.2"), ("/ocpp/A%40B", "A@B")],
)
def test_charge_point_id_from_path(path: str, cp_id: str) -> None:
    assert charge_point_id_from_path(path) == cp_id


async def test_messages_over_one_mebibyte_close_the_connection(running: RunningCsms) -> None:
    head, tail = '[2,"big","DataTransfer",{"vendorId":"v","data":"', '"}]'
    fits = head + "x" * (MAX_MESSAGE_BYTES - len(head) - len(tail)) + tail
    async with open_ws(running.port) as ws:
        reply = json.loads(await exchange(ws, fits))
        assert reply == [3, "big", {"status": "UnknownVendorId"}]
        await ws.send(fits[:-3] + 'x"}]')
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1009  # message too big
