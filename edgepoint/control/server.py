"""Serve the control API on a Unix socket: newline-delimited JSON requests and answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgepoint.errors import EdgepointError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class ControlApi(Protocol):
    """What the daemon offers over the socket."""

    async def status(self) -> dict[str, Any]: ...

    async def tap(self, uid: str) -> None: ...

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]: ...


class ControlServer:
    """Answers {"cmd": ...} lines with {"ok": true, "result": ...} or {"ok": false, ...}."""

    def __init__(self, path: Path, api: ControlApi) -> None:
        self._path = path
        self._api = api
        self._connections: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        """Serve until cancelled; the socket file is removed on the way out."""
        # The folder is ours alone or shared with the group (technicians), never world.
        await asyncio.to_thread(self._path.parent.mkdir, mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path.unlink)  # stale socket from a crash
        server = await asyncio.start_unix_server(self._serve, self._path, limit=MAX_REQUEST)
        try:
            await asyncio.to_thread(os.chmod, self._path, 0o660)
            await asyncio.get_running_loop().create_future()  # serve until cancelled
        finally:
            # Not serve_forever() or `async with server`: from Python 3.12 on they wait in
            # Server.wait_closed() for every open connection, and a `watch` never ends by
            # itself, so shutdown would hang. End the connections first (clients see EOF).
            server.close()
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                        raise ValueError('a request is an object with a string "cmd"')
                except (ValueError, RecursionError) as err:  # RecursionError: [[[[…]]]]
                    await _send(writer, {"ok": False, "error": f"bad request: {err}"})
                    continue
                if request["cmd"] == "watch":
                    await self._stream(writer)
                    return
                await _send(writer, await self._answer(request))
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent an oversized line
        except asyncio.CancelledError:
            # Shutdown cancels open connections. Python 3.11's stream server calls
            # task.exception() on its handler and logs a spurious error if the task
            # ends cancelled, so end normally: nothing awaits this task.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        try:
            if cmd == "status":
                return {"ok": True, "result": await self._api.status()}
            if cmd == "tap":
                uid = request.get("uid")
                if not isinstance(uid, str):
                    return {"ok": False, "error": 'tap needs "uid"'}
                await self._api.tap(uid)
                return {"ok": True, "result": None}
        except EdgepointError as err:
            return {"ok": False, "error": str(err)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        """Send the status now and after every change, coalescing bursts."""
        changed = asyncio.Event()
        unwatch = self._api.watch(changed.set)
        try:
            while True:
                changed.clear()
                await _send(writer, {"ok": True, "result": await self._api.status()})
                await changed.wait()
        finally:
            unwatch()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()
