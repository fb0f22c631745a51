"""ControlServer and its client over a real Unix socket in a temp folder: files, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path

import pytest
from control_support import Conn, FakeStation, serving, socket_mode, station_api, wait_for_socket

from edgepoint.control.api import Access, ControlApi
from edgepoint.control.client import request, watch
from edgepoint.control.server import MAX_REQUEST, ControlServer, Limits
from edgepoint.errors import ControlError

pytestmark = pytest.mark.timeout(20)


def folder_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can get close.
    assert len(str(tmp_path / "run" / "ep.sock")) < 100
    return tmp_path / "run" / "ep.sock"


async def test_socket_is_0660_in_a_folder_others_cannot_enter(sock: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen either
    try:
        async with serving(sock, FakeStation()):
            assert socket_mode(sock) == 0o660
            assert folder_mode(sock.parent) & 0o007 == 0
    finally:
        os.umask(old_umask)


async def test_status_and_tap_round_trip_through_the_client(sock: Path) -> None:
    api = FakeStation()
    async with serving(sock, api):
        assert await request(sock, "status") == {"counter": 0, "taps": []}
        assert await request(sock, "tap", uid="04A1B2C3") is None
        assert api.taps == ["04A1B2C3"]
        with pytest.raises(ControlError, match="card UID must be hex") as bad:
            await request(sock, "tap", uid="BAD")
        assert bad.value.code == "bad_request"
        with pytest.raises(ControlError, match="needs simulated hardware") as off:
            await request(sock, "tap", uid="OFF")
        assert off.value.code == "unavailable"
        with pytest.raises(ControlError, match="missing argument 'uid'") as missing:
            await request(sock, "tap")
        assert missing.value.code == "bad_request"
        with pytest.raises(ControlError, match="unknown command 'reboot'") as unknown:
            await request(sock, "reboot")
        assert unknown.value.code == "unknown_command"
        assert api.taps == ["04A1B2C3"]


async def test_a_stale_socket_file_is_replaced(sock: Path) -> None:
    sock.parent.mkdir(mode=0o750)
    # What a kill -9 leaves behind: a bound socket file nobody listens on.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    with pytest.raises(ControlError, match="not running") as err:
        await request(sock, "status")
    assert err.value.code == "not_running"
    async with serving(sock, FakeStation()):
        assert await request(sock, "status") == {"counter": 0, "taps": []}


async def test_an_over_long_line_does_not_bring_the_server_down(sock: Path) -> None:
    async with serving(sock, FakeStation()) as served:
        conn = await Conn.open(sock)
        conn.writer.write(b"x" * (MAX_REQUEST + 1024) + b"\n")
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()
        # The server tells that client and drops it ...
        assert (await conn.receive())["error"]["code"] == "too_large"
        assert await conn.at_eof()
        await conn.close()
        # ... and keeps serving everyone else.
        assert not served.task.done()
        assert await request(sock, "status") == {"counter": 0, "taps": []}


async def test_watch_streams_status_now_and_after_each_change(sock: Path) -> None:
    api = FakeStation()
    async with serving(sock, api):
        stream = watch(sock)
        try:
            assert await asyncio.wait_for(anext(stream), 5) == {"counter": 0, "taps": []}
            api.change()
            assert (await asyncio.wait_for(anext(stream), 5))["counter"] == 1
            api.change()
            assert (await asyncio.wait_for(anext(stream), 5))["counter"] == 2
            # Other requests are served while a watch is open.
            assert await request(sock, "status") == {"counter": 2, "taps": []}
            assert len(api.watchers) == 1
        finally:
            await stream.aclose()
        # A closed watch is unregistered without waiting for a change.
        for _ in range(500):
            if not api.watchers:
                break
            await asyncio.sleep(0.01)
        assert api.watchers == []


async def test_cancelling_the_server_removes_the_socket_and_ends_watches(sock: Path) -> None:
    api = FakeStation()
    task = asyncio.create_task(
        ControlServer(sock, station_api(api), Access(os.geteuid(), os.getegid(), "g")).run()
    )
    await wait_for_socket(sock)
    conn = await Conn.open(sock)
    assert (await conn.ask(b'{"cmd": "watch"}\n'))["ok"] is True
    assert (await conn.receive())["event"] == "status"

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert socket_mode(sock) is None  # removed
    # The watching client is told (EOF) rather than left hanging on a dead daemon.
    assert await conn.at_eof()
    await conn.close()
    assert api.watchers == []
    with pytest.raises(ControlError, match="not running"):
        await request(sock, "status")


async def test_a_daemon_that_never_answers_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgepoint.control import client

    path = tmp_path / "stuck.sock"
    server = await asyncio.start_unix_server(lambda r, w: None, path)  # accepts, never answers
    monkeypatch.setattr(client, "ANSWER_WITHIN_S", 0.2)
    try:
        with pytest.raises(ControlError, match="did not answer") as err:
            await client.request(path, "status")
        assert err.value.code == "no_answer"
    finally:
        server.close()


async def test_an_answer_on_its_way_at_shutdown_still_goes_out(sock: Path) -> None:
    # A reset's Accepted comes back while the daemon is stopping: the caller gets it.
    # A request that outlasts the grace is cut; a watch ends at once.
    api = ControlApi()
    release = asyncio.Event()

    running: list[str] = []

    async def slow() -> str:
        running.append("slow")
        await release.wait()
        return "Accepted"

    async def never() -> None:
        running.append("never")
        await asyncio.Event().wait()

    api.add_command("slow", slow, mutates=True)
    api.add_command("never", never)
    api.add_state_event("status", FakeStation().status, lambda notify: lambda: None)
    server = ControlServer(
        sock, api, Access(os.geteuid(), os.getegid(), "g"), Limits(shutdown_grace_s=1.0)
    )
    task = asyncio.create_task(server.run())
    await wait_for_socket(sock)
    watcher = await Conn.open(sock)
    assert (await watcher.ask(b'{"cmd": "watch"}\n'))["ok"] is True
    assert (await watcher.receive())["event"] == "status"
    answered = asyncio.create_task(request(sock, "slow"))
    hanging = asyncio.create_task(request(sock, "never"))
    for _ in range(500):
        if len(running) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert await watcher.at_eof()  # before the grace is over
    await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.wait_for(answered, 5) == "Accepted"
    started = asyncio.get_running_loop().time()
    with pytest.raises(ControlError) as cut:
        await asyncio.wait_for(hanging, 5)
    assert cut.value.code == "disconnected"
    assert asyncio.get_running_loop().time() - started < 2
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await watcher.close()
