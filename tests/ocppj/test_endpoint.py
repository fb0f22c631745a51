"""The OCPP-J endpoint over real WebSockets on 127.0.0.1: matching, errors, order and floods."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from edgepoint.ocppj.endpoint import MAX_QUEUED_CALLS, Endpoint, Handler, Priority, Reply
from edgepoint.ocppj.errors import (
    CallErrorReceived,
    ConnectionLost,
    ErrorCode,
    InvalidMessage,
    InvalidReply,
    Refusal,
)

log = logging.getLogger("tests.ocppj.endpoint")
TS = "2025-06-01T12:00:00.000Z"
BOOT = {"chargePointVendor": "Edge", "chargePointModel": "Kiosk"}


async def refuse_all(action: str, payload: dict[str, Any]) -> Reply:
    raise Refusal(ErrorCode.NOT_SUPPORTED, f"{action} is not handled here")


async def csms_handler(action: str, payload: dict[str, Any]) -> Reply:
    """A minimal CSMS: boots, heartbeats and authorizations."""
    if action == "BootNotification":
        return Reply({"currentTime": TS, "interval": 60, "status": "Accepted"})
    if action == "Heartbeat":
        return Reply({"currentTime": TS})
    if action == "Authorize":
        return Reply({"idTagInfo": {"status": "Accepted"}})
    return await refuse_all(action, payload)


def sequential_ids(prefix: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


HandlerFactory = Callable[[Endpoint], Handler]


@dataclass
class Served:
    """The server side's endpoint and the task running it."""

    endpoint: Endpoint
    task: asyncio.Task[Any]


@contextlib.asynccontextmanager
async def server_and_raw_peer(
    handler: Handler = refuse_all, *, make_handler: HandlerFactory | None = None
) -> AsyncIterator[tuple[Served, ClientConnection]]:
    """An Endpoint served over a real WebSocket, and a raw client that speaks frames by hand.

    `make_handler` builds the handler from the endpoint, for handlers that call back on it.
    """
    ready: asyncio.Future[Served] = asyncio.get_running_loop().create_future()

    async def on_connection(connection: ServerConnection) -> None:
        bound: list[Handler] = []

        async def late_bound(action: str, payload: dict[str, Any]) -> Reply:
            return await bound[0](action, payload)

        endpoint = Endpoint(
            connection, late_bound, name="srv", logger=log, new_id=sequential_ids("s")
        )
        bound.append(handler if make_handler is None else make_handler(endpoint))
        task = asyncio.current_task()
        assert task is not None
        ready.set_result(Served(endpoint, task))
        with contextlib.suppress(ConnectionClosed):
            await endpoint.run()

    async with serve(on_connection, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", close_timeout=1) as ws:
            served = await asyncio.wait_for(ready, 5)
            yield served, ws


@contextlib.asynccontextmanager
async def endpoint_pair(
    server_handler: Handler = refuse_all,
    client_handler: Handler = refuse_all,
    *,
    make_handler: HandlerFactory | None = None,
) -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """Two Endpoints talking to each other: (server side, client side)."""
    async with server_and_raw_peer(server_handler, make_handler=make_handler) as (served, ws):
        client = Endpoint(ws, client_handler, name="cli", logger=log, new_id=sequential_ids("c"))
        runner = asyncio.create_task(client.run())
        try:
            yield served.endpoint, client
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await runner


async def receive(ws: ClientConnection) -> list[Any]:
    raw = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(raw, str)
    message = json.loads(raw)
    assert isinstance(message, list)
    return message


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # 5 s
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


# -- calls and their replies ---------------------------------------------------------


async def test_call_and_reply_both_ways() -> None:
    async def client_handler(action: str, payload: dict[str, Any]) -> Reply:
        assert action == "Reset"
        return Reply({"status": "Accepted" if payload["type"] == "Soft" else "Rejected"})

    async with endpoint_pair(csms_handler, client_handler) as (server, client):
        boot = await client.call("BootNotification", BOOT, reply_timeout_s=5)
        assert boot == {"currentTime": TS, "interval": 60, "status": "Accepted"}
        assert await server.call("Reset", {"type": "Soft"}, reply_timeout_s=5) == {
            "status": "Accepted"
        }
        assert await server.call("Reset", {"type": "Hard"}, reply_timeout_s=5) == {
            "status": "Rejected"
        }
        assert (client.stats.calls_sent, client.stats.calls_answered) == (1, 2)
        assert (server.stats.calls_sent, server.stats.calls_answered) == (2, 1)


async def test_reply_is_matched_by_unique_id() -> None:
    async with server_and_raw_peer(refuse_all) as (served, ws):
        asked = asyncio.create_task(
            served.endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=5)
        )
        call = await receive(ws)
        assert call == [2, "s1", "Reset", {"type": "Soft"}]
        # Replies to ids nobody asked for come first; they must not answer this call.
        await ws.send('[3,"s0",{"status":"Rejected"}]')
        await ws.send('[4,"other","GenericError","",{}]')
        await ws.send('[3,"s1",{"status":"Accepted"}]')
        assert await asked == {"status": "Accepted"}
        assert served.endpoint.stats.stray_replies == 2
        # A resend can carry the id of its first try.
        again = asyncio.create_task(
            served.endpoint.call("ClearCache", {}, reply_timeout_s=5, unique_id="first-try")
        )
        assert (await receive(ws))[:2] == [2, "first-try"]
        await ws.send('[3,"first-try",{"status":"Accepted"}]')
        assert await again == {"status": "Accepted"}


async def test_callerror_raises_callerror_received() -> None:
    async with endpoint_pair(csms_handler) as (server, client):
        with pytest.raises(CallErrorReceived) as refused:
            await server.call("Reset", {"type": "Soft"}, reply_timeout_s=5)
        assert refused.value.action == "Reset"
        assert refused.value.code == "NotSupported"
        assert "Requested Action is recognized" in refused.value.description
        assert client.stats.calls_refused == 1
    async with server_and_raw_peer(refuse_all) as (served, ws):
        asked = asyncio.create_task(served.endpoint.call("ClearCache", {}, reply_timeout_s=5))
        unique_id = (await receive(ws))[1]
        await ws.send(json.dumps([4, unique_id, "X" * 500, "d" * 5000, {}]))
        with pytest.raises(CallErrorReceived) as odd:
            await asked
        assert odd.value.action == "ClearCache"
        assert len(odd.value.code) == 64 and len(odd.value.description) == 255


async def test_schema_invalid_reply_raises_invalid_reply() -> None:
    async with server_and_raw_peer(refuse_all) as (served, ws):
        for bad in ({"status": "Maybe"}, {}, {"status": "Accepted", "extra": 1}):
            asked = asyncio.create_task(
                served.endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=5)
            )
            unique_id = (await receive(ws))[1]
            await ws.send(json.dumps([3, unique_id, bad]))
            with pytest.raises(InvalidReply) as invalid:
                await asked
            assert invalid.value.action == "Reset"


async def test_our_invalid_call_is_never_sent() -> None:
    ours: list[tuple[str, dict[str, Any]]] = [
        ("Reset", {"type": "Sideways"}),
        ("Teleport", {}),
        ("Heartbeat", {"extra": 1}),
        (
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "A",
                "meterStart": 0,
                "timestamp": "2025-06-01T12:00:00",
            },
        ),
    ]
    async with server_and_raw_peer(refuse_all) as (served, ws):
        for action, payload in ours:
            with pytest.raises(InvalidMessage):
                await served.endpoint.call(action, payload, reply_timeout_s=5)
        # Nothing went out: the first frame the peer sees is the next valid call.
        asked = asyncio.create_task(served.endpoint.call("ClearCache", {}, reply_timeout_s=5))
        assert (await receive(ws))[2] == "ClearCache"
        asked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asked
        assert served.endpoint.stats.calls_sent == 1


async def test_timeout_then_the_late_reply_is_a_stray() -> None:
    async with server_and_raw_peer(refuse_all) as (served, ws):
        endpoint = served.endpoint
        with pytest.raises(TimeoutError):
            await endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=0.1)
        late_id = (await receive(ws))[1]
        asked = asyncio.create_task(endpoint.call("Reset", {"type": "Hard"}, reply_timeout_s=5))
        next_id = (await receive(ws))[1]
        assert next_id != late_id
        # The late reply arrives first: it is dropped, not taken for the second call's.
        await ws.send(json.dumps([3, late_id, {"status": "Accepted"}]))
        await ws.send(json.dumps([3, next_id, {"status": "Rejected"}]))
        assert await asked == {"status": "Rejected"}
        assert endpoint.stats.stray_replies == 1
        # Even later, again: still nothing waits for it.
        await ws.send(json.dumps([3, late_id, {"status": "Accepted"}]))
        await eventually(lambda: endpoint.stats.stray_replies == 2, "second stray counted")


async def test_a_thousand_strays_then_a_normal_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    async with server_and_raw_peer(csms_handler) as (served, ws):
        for n in range(1000):
            await ws.send(f'[3,"stray-{n}",{{"status":"Accepted"}}]')
        await ws.send('[2,"hb","Heartbeat",{}]')
        assert await receive(ws) == [3, "hb", {"currentTime": TS}]
        asked = asyncio.create_task(
            served.endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=5)
        )
        unique_id = (await receive(ws))[1]
        await ws.send(json.dumps([3, unique_id, {"status": "Accepted"}]))
        assert await asked == {"status": "Accepted"}
        assert served.endpoint.stats.stray_replies == 1000
    # Counted, not logged a thousand times.
    strays = [r for r in caplog.records if "reply to no CALL" in r.getMessage()]
    assert 1 <= len(strays) <= 2


async def test_connection_lost_for_pending_and_queued_calls() -> None:
    async with server_and_raw_peer(refuse_all) as (served, ws):
        endpoint = served.endpoint
        in_flight = asyncio.create_task(endpoint.call("ClearCache", {}, reply_timeout_s=30))
        queued = asyncio.create_task(
            endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=30, priority=Priority.URGENT)
        )
        assert (await receive(ws))[2] == "ClearCache"
        await ws.close()
        for task in (in_flight, queued):
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(task, 5)
        await asyncio.wait_for(served.task, 5)
        assert endpoint.closed
        with pytest.raises(ConnectionLost):
            await endpoint.call("ClearCache", {}, reply_timeout_s=5)


# -- answering the peer's calls --------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('[2,"u1","Teleport",{}]', "NotImplemented"),  # not an OCPP 1.6 action
        ('[2,"u1","Reset",{"type":"Soft"}]', "NotSupported"),  # 1.6, not handled here
        ('[2,"u1","Authorize",{}]', "ProtocolError"),
        ('[2,"u1","Authorize",{"idTag":"A","x":1}]', "FormationViolation"),
        ('[2,"u1","Authorize",{"idTag":7}]', "TypeConstraintViolation"),
        ('[2,"u1","Heartbeat",[]]', "FormationViolation"),
    ],
)
async def test_refused_calls_get_a_callerror_and_the_link_goes_on(frame: str, code: str) -> None:
    async with server_and_raw_peer(csms_handler) as (_, ws):
        await ws.send(frame)
        reply = await receive(ws)
        assert reply[:3] == [4, "u1", code]
        await ws.send('[2,"u2","Heartbeat",{}]')
        assert await receive(ws) == [3, "u2", {"currentTime": TS}]


async def test_binary_frames_are_refused_unread() -> None:
    async with server_and_raw_peer(csms_handler) as (served, ws):
        await ws.send(b'[2,"b1","Heartbeat",{}]')
        await ws.send('[2,"t1","Heartbeat",{}]')
        # The binary CALL got no answer; the text one right behind it did.
        assert await receive(ws) == [3, "t1", {"currentTime": TS}]
        assert served.endpoint.stats.by_reason == {"binary frame (OCPP-J uses text frames)": 1}


async def test_handler_exception_is_an_internal_error_and_the_link_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "card-04A1B2C3"

    async def broken(action: str, payload: dict[str, Any]) -> Reply:
        if action == "Authorize" and payload["idTag"] == secret:
            raise KeyError(f"no such card {payload['idTag']}")
        if action == "Authorize":  # our bug: a parent tag too long for CiString20
            return Reply({"idTagInfo": {"status": "Accepted", "parentIdTag": secret * 2}})
        if action == "Heartbeat":
            return Reply({"currentTime": "not a time"})  # our bug: breaks the schema
        return await csms_handler(action, payload)

    caplog.set_level(logging.INFO, logger=log.name)
    async with endpoint_pair(broken) as (server, client):
        for action, payload in [
            ("Authorize", {"idTag": secret}),
            ("Authorize", {"idTag": "other"}),
            ("Heartbeat", {}),
        ]:
            with pytest.raises(CallErrorReceived) as failed:
                await client.call(action, payload, reply_timeout_s=5)
            assert failed.value.code == "InternalError"
            assert secret not in failed.value.description
        assert await client.call("BootNotification", BOOT, reply_timeout_s=5)
        assert not server.closed
        assert server.stats.calls_refused == 3
    logged = [r.getMessage() for r in caplog.records]
    assert any("KeyError" in line for line in logged)  # what failed is logged...
    assert any("idTagInfo/parentIdTag" in line for line in logged)
    assert not [line for line in logged if secret in line]  # ...but never the card


async def test_handler_awaiting_a_call_on_the_same_endpoint_does_not_deadlock() -> None:
    def boot_asks_back(endpoint: Endpoint) -> Handler:
        async def handler(action: str, payload: dict[str, Any]) -> Reply:
            if action == "BootNotification":
                # A CALL of ours while the peer's CALL is unanswered: its reply must
                # still be received.
                config = await endpoint.call("GetConfiguration", {}, reply_timeout_s=5)
                interval = int(config["configurationKey"][0]["value"])
                return Reply({"currentTime": TS, "interval": interval, "status": "Accepted"})
            return await csms_handler(action, payload)

        return handler

    async def client_handler(action: str, payload: dict[str, Any]) -> Reply:
        assert action == "GetConfiguration"
        return Reply(
            {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "42"}]}
        )

    async with endpoint_pair(client_handler=client_handler, make_handler=boot_asks_back) as (
        _,
        client,
    ):
        boot = await asyncio.wait_for(client.call("BootNotification", BOOT, reply_timeout_s=5), 3)
        assert boot["interval"] == 42


async def test_calls_are_answered_one_at_a_time_in_arrival_order() -> None:
    seen: list[str] = []

    async def slow_first(action: str, payload: dict[str, Any]) -> Reply:
        seen.append(f"start {payload['idTag']}")
        if payload["idTag"] == "A":
            await asyncio.sleep(0.05)  # the next CALLs arrive meanwhile
        seen.append(f"end {payload['idTag']}")
        return Reply({"idTagInfo": {"status": "Accepted"}})

    async with server_and_raw_peer(slow_first) as (_, ws):
        for tag in "ABC":
            await ws.send(json.dumps([2, tag, "Authorize", {"idTag": tag}]))
        assert [(await receive(ws))[1] for _ in "ABC"] == ["A", "B", "C"]
    assert seen == ["start A", "end A", "start B", "end B", "start C", "end C"]


async def test_a_flood_of_calls_gets_generic_error_beyond_the_queue() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(action: str, payload: dict[str, Any]) -> Reply:
        started.set()
        await release.wait()
        return Reply({"currentTime": TS})

    extra = 5
    async with server_and_raw_peer(stuck) as (served, ws):
        await ws.send('[2,"busy","Heartbeat",{}]')
        await asyncio.wait_for(started.wait(), 5)
        ids = [f"q{n}" for n in range(MAX_QUEUED_CALLS + extra)]
        for unique_id in ids:
            await ws.send(json.dumps([2, unique_id, "Heartbeat", {}]))
        # The ones beyond the queue are refused at once, while the handler is stuck.
        refused = [await receive(ws) for _ in range(extra)]
        assert [r[:3] for r in refused] == [
            [4, unique_id, "GenericError"] for unique_id in ids[MAX_QUEUED_CALLS:]
        ]
        release.set()
        answered = [(await receive(ws))[:2] for _ in range(1 + MAX_QUEUED_CALLS)]
        assert answered == [[3, "busy"]] + [[3, i] for i in ids[:MAX_QUEUED_CALLS]]
        assert served.endpoint.stats.by_reason == {"flood": extra}


async def test_reply_after_runs_once_the_result_is_sent() -> None:
    order: list[str] = []

    def boot_then_trigger(endpoint: Endpoint) -> Handler:
        async def trigger() -> None:
            order.append("after")
            await endpoint.call(
                "TriggerMessage", {"requestedMessage": "Heartbeat"}, reply_timeout_s=5
            )
            order.append("after done")

        async def handler(action: str, payload: dict[str, Any]) -> Reply:
            order.append(f"handled {action}")
            return Reply({"currentTime": TS, "interval": 60, "status": "Accepted"}, after=trigger)

        return handler

    async with server_and_raw_peer(make_handler=boot_then_trigger) as (_, ws):
        await ws.send(json.dumps([2, "boot", "BootNotification", BOOT]))
        first = await receive(ws)
        second = await receive(ws)
        assert first[:2] == [3, "boot"]  # the result is on the wire before the follow-up
        assert second[:3] == [2, "s1", "TriggerMessage"]
        await ws.send('[3,"s1",{"status":"Accepted"}]')
        await eventually(lambda: "after done" in order, "follow-up finished")
    assert order == ["handled BootNotification", "after", "after done"]


async def test_failing_after_is_logged_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> None:
        raise RuntimeError("follow-up broke")

    async def handler(action: str, payload: dict[str, Any]) -> Reply:
        return Reply({"currentTime": TS}, after=boom)

    caplog.set_level(logging.INFO, logger=log.name)
    async with server_and_raw_peer(handler) as (_, ws):
        await ws.send('[2,"a","Heartbeat",{}]')
        assert (await receive(ws))[:2] == [3, "a"]
        await eventually(
            lambda: any("follow-up of Heartbeat failed" in r.getMessage() for r in caplog.records),
            "failure logged",
        )
        await ws.send('[2,"b","Heartbeat",{}]')
        assert (await receive(ws))[:2] == [3, "b"]


# -- who goes first ----------------------------------------------------------------------


async def test_urgent_call_goes_before_queued_normal_ones() -> None:
    requests: dict[str, dict[str, Any]] = {
        "ClearCache": {},
        "GetLocalListVersion": {},
        "GetConfiguration": {},
        "UnlockConnector": {"connectorId": 1},
        "Reset": {"type": "Soft"},
    }
    replies: dict[str, dict[str, Any]] = {
        "ClearCache": {"status": "Accepted"},
        "GetLocalListVersion": {"listVersion": 0},
        "GetConfiguration": {},
        "UnlockConnector": {"status": "Unlocked"},
        "Reset": {"status": "Accepted"},
    }
    async with server_and_raw_peer(refuse_all) as (served, ws):
        endpoint = served.endpoint

        def start(action: str, priority: Priority) -> asyncio.Task[dict[str, Any]]:
            return asyncio.create_task(
                endpoint.call(action, requests[action], reply_timeout_s=5, priority=priority)
            )

        in_flight = start("ClearCache", Priority.NORMAL)
        assert (await receive(ws))[2] == "ClearCache"
        queued = [
            start("GetLocalListVersion", Priority.LOW),
            start("GetConfiguration", Priority.NORMAL),
            start("UnlockConnector", Priority.NORMAL),
        ]
        await asyncio.sleep(0)  # let them queue, in this order, behind the one in flight
        queued.append(start("Reset", Priority.URGENT))
        await asyncio.sleep(0)
        sent_order = ["ClearCache"]
        await ws.send(json.dumps([3, "s1", replies["ClearCache"]]))
        for _ in queued:
            _, unique_id, action, _payload = await receive(ws)
            sent_order.append(action)
            await ws.send(json.dumps([3, unique_id, replies[action]]))
        assert sent_order == [
            "ClearCache",
            "Reset",  # urgent, though it came last
            "GetConfiguration",
            "UnlockConnector",
            "GetLocalListVersion",  # low waits for every normal one
        ]
        for task in (in_flight, *queued):
            await asyncio.wait_for(task, 5)


async def test_a_cancelled_waiter_does_not_block_the_slot() -> None:
    async with server_and_raw_peer(refuse_all) as (served, ws):
        endpoint = served.endpoint
        first = asyncio.create_task(endpoint.call("ClearCache", {}, reply_timeout_s=5))
        first_id = (await receive(ws))[1]
        waiter = asyncio.create_task(endpoint.call("Reset", {"type": "Soft"}, reply_timeout_s=5))
        await asyncio.sleep(0)
        waiter.cancel()
        await ws.send(json.dumps([3, first_id, {"status": "Accepted"}]))
        assert await first == {"status": "Accepted"}
        with pytest.raises(asyncio.CancelledError):
            await waiter
        then = asyncio.create_task(endpoint.call("ClearCache", {}, reply_timeout_s=5))
        _, then_id, action, _ = await receive(ws)
        assert action == "ClearCache"
        await ws.send(json.dumps([3, then_id, {"status": "Rejected"}]))
        assert await then == {"status": "Rejected"}
