"""ControlServer and its client over a real Unix socket in a temp folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edgepoint.control.client import request, watch
from edgepoint.control.server import MAX_REQUEST, ControlServer
from edgepoint.errors import ControlError

pytestmark = pytest.mark.timeout(20)


class FakeStation:
    """A stand-in for app.Station, the server's collaborator (the ControlApi protocol).

    The server is what is under test here; the real Station needs the whole daemon and is
    exercised through the CLI tests against a real `edgepoint run`.
    """

    def __init__(self) -> None:
        self.counter = 0
        self.taps: list[str] = []
        self.watchers: list[Callable[[], None]] = []

    async def status(self) -> dict[str, Any]:
        return {"counter": self.counter, "taps": list(self.taps)}

    async def tap(self, uid: str) -> None:
        if uid == "BAD":
            raise ControlError("card UID must be hex")
        self.taps.append(uid)

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        self.watchers.append(notify)
        return lambda: self.watchers.remove(notify)

    def change(self) -> None:
        self.counter += 1
        for notify in list(self.watchers):
            notify()


def socket_mode(path: Path) -> int | None:
    """The permission bits of the socket file at `path`, or None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISSOCK(st.st_mode) else None


def folder_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def wait_for_socket(path: Path) -> None:
    # The file appears at bind; its mode is set right after.
    for _ in range(200):
        if socket_mode(path) == 0o660:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no socket at {path}")


@contextlib.asynccontextmanager
async def serving(path: Path, api: FakeStation) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ControlServer(path, api).run())
    try:
        await wait_for_socket(path)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can get close.
    assert len(str(tmp_path / "run" / "ep.sock")) < 100
    return tmp_path / "run" / "ep.sock"


class Conn:
    """One raw client connection, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        return cls(*await asyncio.open_unix_connection(path, limit=16 * 1024 * 1024))

    async def ask(self, raw: bytes) -> dict[str, Any]:
        self.writer.write(raw)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


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
        with pytest.raises(ControlError, match="card UID must be hex"):
            await request(sock, "tap", uid="BAD")
        with pytest.raises(ControlError, match='tap needs "uid"'):
            await request(sock, "tap")
        with pytest.raises(ControlError, match="unknown command 'reboot'"):
            await request(sock, "reboot")


async def test_a_stale_socket_file_is_replaced(sock: Path) -> None:
    sock.parent.mkdir(mode=0o750)
    # What a kill -9 leaves behind: a bound socket file nobody listens on.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    with pytest.raises(ControlError, match="not running"):
        await request(sock, "status")
    async with serving(sock, FakeStation()):
        assert await request(sock, "status") == {"counter": 0, "taps": []}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"this is not json\n", "bad request"),
        (b"\xff\xfe\n", "bad request"),  # not even UTF-8
        (b"[1, 2]\n", 'a request is an object with a string "cmd"'),
        (b'"status"\n', 'a request is an object with a string "cmd"'),
        (b"{}\n", 'a request is an object with a string "cmd"'),
        (b'{"cmd": 5}\n', 'a request is an object with a string "cmd"'),
        (b'{"uid": "04A1B2C3"}\n', 'a request is an object with a string "cmd"'),
        (b'{"cmd": "launch"}\n', "unknown command 'launch'"),
        (b"[" * 50_000 + b"\n", "bad request"),  # nesting deep enough to hit recursion
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_stays_usable(
    sock: Path, raw: bytes, error: str
) -> None:
    async with serving(sock, FakeStation()):
        conn = await Conn.open(sock)
        try:
            answer = await conn.ask(raw)
            assert answer["ok"] is False
            assert error in answer["error"]
            assert await conn.ask(b'{"cmd": "status"}\n') == {
                "ok": True,
                "result": {"counter": 0, "taps": []},
            }
        finally:
            await conn.close()


async def test_an_over_long_line_does_not_bring_the_server_down(sock: Path) -> None:
    async with serving(sock, FakeStation()) as task:
        conn = await Conn.open(sock)
        conn.writer.write(b"x" * (MAX_REQUEST + 1024) + b"\n")
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()
        # The server drops that connection ...
        assert await asyncio.wait_for(conn.reader.read(), 5) == b""
        await conn.close()
        # ... and keeps serving everyone else.
        assert not task.done()
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
        # A closed watch is unregistered once the server notices (at the next change).
        api.change()
        for _ in range(100):
            if not api.watchers:
                break
            await asyncio.sleep(0.01)
        assert api.watchers == []


async def test_cancelling_the_server_removes_the_socket_and_ends_watches(sock: Path) -> None:
    api = FakeStation()
    task = asyncio.create_task(ControlServer(sock, api).run())
    await wait_for_socket(sock)
    conn = await Conn.open(sock)
    assert (await conn.ask(b'{"cmd": "watch"}\n'))["ok"] is True

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert socket_mode(sock) is None  # removed
    # The watching client is told (EOF) rather than left hanging on a dead daemon.
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    await conn.close()
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
        with pytest.raises(ControlError, match="did not answer"):
            await client.request(path, "status")
    finally:
        server.close()
