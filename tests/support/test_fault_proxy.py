"""Each FaultProxy fault, as a real websockets client on 127.0.0.1 experiences it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidMessage,
    InvalidStatus,
)
from websockets.frames import CloseCode
from websockets.protocol import State

from support.fault_proxy import FaultProxy

# A hang in a broken test or tool fails the test instead of the run.
pytestmark = pytest.mark.timeout(5)

# Every wait below is for a condition; this only bounds how long "at once" may take.
PROMPTLY = 0.5


class EchoServer:
    """A websockets server that echoes and remembers what reached it."""

    def __init__(self) -> None:
        self.port = 0
        self.received: list[str | bytes] = []

    async def handle(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                self.received.append(message)
                await ws.send(message)
        except ConnectionClosed:
            pass  # the faults under test end connections abnormally on purpose


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    async with serve(server.handle, "127.0.0.1", 0) as ws_server:
        server.port = ws_server.sockets[0].getsockname()[1]
        yield server


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as fault_proxy:
        yield fault_proxy


async def assert_echoes(ws: ClientConnection, message: str) -> None:
    await ws.send(message)
    async with asyncio.timeout(PROMPTLY):
        assert await ws.recv() == message


async def test_forwards_both_ways_and_counts(echo: EchoServer, proxy: FaultProxy) -> None:
    second = asyncio.create_task(proxy.wait_connections(2))
    async with connect(proxy.url("/CP-1")) as ws:
        await assert_echoes(ws, "hello")
        assert not second.done()
        async with connect(proxy.url("/CP-2")) as other:
            await assert_echoes(other, "world")
        assert (await second).accepted == 2

    stats = await proxy.wait_for(lambda s: s.open == 0)
    assert echo.received == ["hello", "world"]
    # At least the upgrade request/response and one framed message each way.
    assert stats.bytes_to_server > len("hello") + len("world")
    assert stats.bytes_to_client > len("hello") + len("world")
    assert stats.held_to_server == stats.held_to_client == 0


async def test_cut_closes_the_client_promptly_and_new_connections_pass(
    proxy: FaultProxy,
) -> None:
    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "before")
        await proxy.cut()
        with pytest.raises(ConnectionClosedError) as caught:
            async with asyncio.timeout(PROMPTLY):
                await ws.recv()
    # The TCP connection ended without a closing handshake.
    assert caught.value.rcvd is None

    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "after")


async def test_reset_is_seen_as_a_connection_reset(proxy: FaultProxy) -> None:
    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "before")
        await proxy.reset()
        with pytest.raises(ConnectionClosedError) as caught:
            async with asyncio.timeout(PROMPTLY):
                await ws.recv()
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert caught.value.rcvd is None

    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "after")


async def test_stall_holds_data_without_closing_until_resume(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "before")
        await proxy.stall()
        await ws.send("held")
        await proxy.wait_for(lambda s: s.held_to_server > 0)
        assert echo.received == ["before"]
        # Absence can only be shown over a window: nothing arrives, nothing closes.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await ws.recv()
        assert ws.state is State.OPEN

        await proxy.resume()
        async with asyncio.timeout(PROMPTLY):
            assert await ws.recv() == "held"
    assert echo.received == ["before", "held"]


async def test_stall_also_freezes_a_new_connection_handshake(proxy: FaultProxy) -> None:
    await proxy.stall()

    async def open_ws() -> ClientConnection:
        return await connect(proxy.url())

    opening = asyncio.create_task(open_ws())
    await proxy.wait_for(lambda s: s.held_to_server > 0)  # the upgrade request
    assert not opening.done()

    await proxy.resume()
    async with asyncio.timeout(PROMPTLY), await opening as ws:
        await assert_echoes(ws, "thawed")


async def test_half_open_is_only_noticed_by_the_client_ping_timeout(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    async with connect(proxy.url(), ping_interval=0.2, ping_timeout=0.2, close_timeout=0.1) as ws:
        await assert_echoes(ws, "before")
        await proxy.half_open()
        await ws.send("into the void")
        with pytest.raises(ConnectionClosedError) as caught:
            async with asyncio.timeout(2):
                await ws.recv()
    # The client gave up on its own: it sent 1011 and the peer never answered.
    assert caught.value.sent is not None
    assert caught.value.sent.code == CloseCode.INTERNAL_ERROR
    assert caught.value.sent.reason == "keepalive ping timeout"
    assert caught.value.rcvd is None
    assert echo.received == ["before"]

    # A fresh flow works, like after a NAT forgot the old one.
    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "after")


async def test_refuse_new_refuses_connects_but_keeps_current_ones(proxy: FaultProxy) -> None:
    async with connect(proxy.url()) as ws:
        await proxy.refuse_new(True)
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy.url(), open_timeout=PROMPTLY)
        await assert_echoes(ws, "still here")

        await proxy.refuse_new(False)
        async with connect(proxy.url()) as again:
            await assert_echoes(again, "back")
    assert proxy.stats.accepted == 2


async def test_http_error_answers_the_upgrade_with_that_status(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    await proxy.http_error(503)
    with pytest.raises(InvalidStatus) as caught:
        await connect(proxy.url(), open_timeout=PROMPTLY)
    assert caught.value.response.status_code == 503
    assert proxy.stats.bytes_to_server == 0  # the server never saw it

    await proxy.http_error(None)
    async with connect(proxy.url()) as ws:
        await assert_echoes(ws, "upgraded")
    assert echo.received == ["upgraded"]


async def test_http_error_rejects_statuses_that_are_not_final() -> None:
    async with FaultProxy("127.0.0.1", 9) as fault_proxy:
        for status in (101, 199, 600):
            with pytest.raises(ValueError):
                await fault_proxy.http_error(status)


async def test_a_target_that_is_down_resets_the_client() -> None:
    # A bound socket that never listens keeps the port ours and refuses connects.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        async with FaultProxy("127.0.0.1", closed_port.getsockname()[1]) as fault_proxy:
            # Which error depends on whether the RST beats the client's request out.
            with pytest.raises((InvalidMessage, ConnectionClosedError, ConnectionResetError)):
                await connect(fault_proxy.url(), open_timeout=PROMPTLY)
            assert (await fault_proxy.wait_for(lambda s: s.open == 0)).accepted == 1


async def test_leaving_the_proxy_closes_its_connections_and_port(proxy: FaultProxy) -> None:
    ws = await connect(proxy.url())
    await assert_echoes(ws, "before")
    await proxy.aclose()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(PROMPTLY):
            await ws.recv()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy.url(), open_timeout=PROMPTLY)
