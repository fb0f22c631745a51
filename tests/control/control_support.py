"""A stand-in station, a running ControlServer and a raw client for the control socket tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepoint.control.api import Access, Code, ControlApi
from edgepoint.control.server import ControlServer, Limits
from edgepoint.control.station import register_station
from edgepoint.errors import ControlError


class FakeStation:
    """A stand-in for app.Station behind the real adapter (control/station.py).

    The server and the protocol are what is under test here; the real Station needs the
    whole daemon and is exercised through the CLI tests against a real `edgepoint run`.
    """

    def __init__(self, padding: int = 0) -> None:
        self.counter = 0
        self.reads = 0  # status() calls: a watch reads the status once per event it sends
        self.taps: list[str] = []
        self.watchers: list[Callable[[], None]] = []
        self.padding = padding  # makes each status this many bytes bigger

    async def status(self) -> dict[str, Any]:
        self.reads += 1
        status: dict[str, Any] = {"counter": self.counter, "taps": list(self.taps)}
        if self.padding:
            status["padding"] = "x" * self.padding
        return status

    async def tap(self, uid: str) -> None:
        if uid == "BAD":
            raise ControlError("card UID must be hex", Code.BAD_REQUEST)
        if uid == "OFF":
            raise ControlError("tap needs simulated hardware", Code.UNAVAILABLE)
        self.taps.append(uid)

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        self.watchers.append(notify)
        return lambda: self.watchers.remove(notify)

    def change(self) -> None:
        self.counter += 1
        for notify in list(self.watchers):
            notify()


def station_api(station: FakeStation) -> ControlApi:
    api = ControlApi()
    register_station(api, station)
    return api


def socket_mode(path: Path) -> int | None:
    """The permission bits of the socket file at `path`, or None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISSOCK(st.st_mode) else None


async def wait_for_socket(path: Path) -> None:
    # The file appears at bind; its mode is set right after.
    await wait_until(lambda: socket_mode(path) == 0o660, f"no socket at {path}")


async def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@dataclass
class Serving:
    server: ControlServer
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def serving(
    path: Path,
    api: ControlApi | FakeStation,
    access: Access | None = None,
    limits: Limits | None = None,
) -> AsyncIterator[Serving]:
    """A ControlServer on `path`; by default only root and this process's user/group may act."""
    if isinstance(api, FakeStation):
        api = station_api(api)
    access = access or Access(os.geteuid(), os.getegid(), "test-group")
    server = ControlServer(path, api, access, limits)
    task = asyncio.create_task(server.run())
    try:
        await wait_for_socket(path)
        yield Serving(server, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Conn:
    """One raw client connection, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        return cls(*await asyncio.open_unix_connection(path, limit=16 * 1024 * 1024))

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, raw: bytes | dict[str, Any]) -> dict[str, Any]:
        if isinstance(raw, dict):
            await self.send(raw)
        else:
            self.writer.write(raw)
            await self.writer.drain()
        return await self.receive()

    async def at_eof(self) -> bool:
        """True once the server has closed this connection (a reset counts too)."""
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
