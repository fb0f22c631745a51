"""Serve the control API on a Unix socket: v1 JSON lines, peer credentials, bounded clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepoint import __version__
from edgepoint.control.api import (
    VERSION,
    Access,
    Code,
    ControlApi,
    Peer,
    Request,
    RequestError,
    StateEvent,
    StreamEvent,
    encode_error,
    encode_event,
    encode_result,
    parse_request,
)
from edgepoint.errors import ControlError, EdgepointError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one client from costing the daemon more than its share."""

    max_request: int = MAX_REQUEST
    max_clients: int = 16
    # A client that has not taken an answer or event this long after it was written is
    # dropped: its buffer stays bounded and nothing in the daemon waits on it.
    send_timeout_s: float = 5.0
    # At shutdown, a request being answered (a reset whose Accepted is on its way back)
    # gets this long to finish before its connection is cut.
    shutdown_grace_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ControlStats:
    """What the control socket is doing, for the status and the tests."""

    clients: int
    watchers: int
    dropped_slow: int
    refused_busy: int
    refused_too_large: int


@dataclass(slots=True)
class _Counts:
    dropped_slow: int = 0
    refused_busy: int = 0
    refused_too_large: int = 0


@dataclass(frozen=True, slots=True)
class _Context:
    """What every connection shares with the server."""

    api: ControlApi
    access: Access
    limits: Limits
    counts: _Counts


class _Gone(Exception):
    """The client was dropped or went away while something was being sent to it."""


class ControlServer:
    """Answers v1 requests from local clients and streams events to the ones that watch."""

    def __init__(
        self,
        path: Path,
        api: ControlApi,
        access: Access,
        limits: Limits | None = None,
        *,
        mode: int = 0o660,
    ) -> None:
        self._path = path
        self._mode = mode
        self._limits = limits or Limits()
        self._counts = _Counts()
        self._context = _Context(api, access, self._limits, self._counts)
        self._connections: set[asyncio.Task[Any]] = set()
        self._clients: set[_Connection] = set()
        self._stopping = False

    def snapshot(self) -> ControlStats:
        return ControlStats(
            clients=len(self._clients),
            watchers=sum(1 for c in self._clients if c.watching),
            dropped_slow=self._counts.dropped_slow,
            refused_busy=self._counts.refused_busy,
            refused_too_large=self._counts.refused_too_large,
        )

    async def run(self) -> None:
        """Serve until cancelled; the socket file is removed on the way out."""
        # The folder is ours alone or shared with the group (technicians), never world.
        await asyncio.to_thread(self._path.parent.mkdir, mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path.unlink)  # stale socket from a crash
        server = await asyncio.start_unix_server(
            self._serve, self._path, limit=self._limits.max_request
        )
        try:
            await asyncio.to_thread(os.chmod, self._path, self._mode)
            await asyncio.get_running_loop().create_future()  # serve until cancelled
        finally:
            # Not serve_forever() or `async with server`: from Python 3.12 on they wait in
            # Server.wait_closed() for every open connection, and a `watch` never ends by
            # itself, so shutdown would hang. End the connections first (clients see EOF).
            self._stopping = True
            server.close()
            # A second cancel cuts the grace short; the first one still ends run().
            with contextlib.suppress(asyncio.CancelledError):
                await self._finish_answers()
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()

    async def _finish_answers(self) -> None:
        """End idle connections (watches) now; let requests being answered send their
        answer within the grace period."""
        busy = [c for c in self._clients if not c.idle.is_set()]
        keep = {c.task for c in busy}
        for task in self._connections - keep:
            task.cancel()
        if not busy:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._limits.shutdown_grace_s):
                await asyncio.gather(*(c.idle.wait() for c in busy))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._limits.max_clients:
            self._counts.refused_busy += 1
            writer.write(
                encode_error(
                    None,
                    Code.BUSY,
                    f"{self._limits.max_clients} clients are connected already; try again later",
                )
            )
            await self._close(writer)
            return
        self._connections.add(task)
        connection: _Connection | None = None
        try:
            peer = await _identify(writer)
            connection = _Connection(self._context, reader, writer, peer, task)
            self._clients.add(connection)
            await connection.serve()
        except asyncio.CancelledError:
            # Shutdown cancels open connections. Python 3.11's stream server calls
            # task.exception() on its handler and logs a spurious error if the task
            # ends cancelled, so end normally: nothing awaits this task.
            pass
        finally:
            if connection is not None:
                await connection.stop_watching()
                self._clients.discard(connection)
            self._connections.discard(task)
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close after what is buffered went out, or at once for a client that does not read."""
        if self._stopping and writer.transport.get_write_buffer_size():
            writer.transport.abort()  # shutdown waits for nobody
            return
        writer.close()
        try:
            async with asyncio.timeout(self._limits.send_timeout_s):
                await writer.wait_closed()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except TimeoutError:
            writer.transport.abort()


async def _identify(writer: asyncio.StreamWriter) -> Peer:
    """Who connected, from the kernel's record of the connecting process (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as err:
        # Unknown is allowed what anyone who can open the socket is: no hardware.
        log.warning("control: cannot read the peer's credentials: %s", err)
        return Peer(pid=0, uid=-1, gid=-1, user="unknown", groups=frozenset())
    pid, uid, gid = struct.unpack("3i", raw)
    return await asyncio.to_thread(Peer.lookup, pid, uid, gid)


class _Backlog:
    """A stream subscriber's bounded queue: when full, the oldest item goes and is counted."""

    def __init__(self, size: int) -> None:
        self.items: collections.deque[Any] = collections.deque(maxlen=size)
        self.lost = 0
        self.ready = asyncio.Event()

    def push(self, item: Any) -> None:
        if len(self.items) == self.items.maxlen:
            self.lost += 1
        self.items.append(item)
        self.ready.set()


class _Connection:
    """One client: its requests in order, its watch (if any), one shared bounded writer."""

    def __init__(
        self,
        context: _Context,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        task: asyncio.Task[Any],
    ) -> None:
        self._context = context
        self.task = task  # the server's task serving this connection
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self.watching = False
        self._tasks: list[asyncio.Task[None]] = []
        # Followers of a new watch start only after its answer went out, so that the
        # answer is always the first line the client reads after its request.
        self._pending: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.idle = asyncio.Event()  # clear while a request is being answered
        self.idle.set()

    async def serve(self) -> None:
        """Answer requests until EOF; reading on during a watch is what notices EOF at once."""
        log.debug("control: %s connected", self.peer)
        limits = self._context.limits
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError:  # the line outgrew the reader's limit
                    self._context.counts.refused_too_large += 1
                    log.warning(
                        "control: %s sent a request over %d bytes", self.peer, limits.max_request
                    )
                    await self.send(
                        encode_error(
                            None, Code.TOO_LARGE, f"a request is at most {limits.max_request} bytes"
                        )
                    )
                    return
                if not line:
                    return
                self.idle.clear()
                try:
                    await self.send(await self._answer(line))
                finally:
                    self.idle.set()
                self._tasks += [asyncio.create_task(follow()) for follow in self._pending]
                self._pending.clear()
        except (_Gone, ConnectionError):
            pass
        finally:
            log.debug("control: %s disconnected", self.peer)

    async def send(self, data: bytes) -> None:
        """Write one message; drop the client if it has not taken it within the timeout."""
        if self._writer.is_closing():
            raise _Gone
        self._writer.write(data)
        timeout = self._context.limits.send_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            self._context.counts.dropped_slow += 1
            log.warning("control: dropped %s: it took nothing for %g s", self.peer, timeout)
            self._writer.transport.abort()  # the reader loop sees EOF and cleans up
            raise _Gone from None
        except ConnectionError as err:
            raise _Gone from err

    async def _answer(self, line: bytes) -> bytes:
        request: Request | None = None
        try:
            request = parse_request(line)
            if request.cmd == "watch":
                result: Any = self._start_watching(request)
            elif request.cmd == "hello":
                result = self._hello()
            else:
                result = await self._context.api.execute(request, self.peer, self._context.access)
            return encode_result(request.id, result)
        except RequestError as err:
            return encode_error(err.request_id, err.code, str(err))
        except ControlError as err:
            return encode_error(_id(request), err.code, str(err))
        except EdgepointError as err:
            return encode_error(_id(request), Code.FAILED, str(err))
        except Exception:
            # A bug in a handler (or a result that is not JSON) costs one answer, not the API.
            log.exception("control: %s failed", request.cmd if request else "request")
            return encode_error(
                _id(request), Code.FAILED, "internal error (the daemon's log has the details)"
            )

    def _hello(self) -> dict[str, Any]:
        peer = self.peer
        may_act = self._context.access.allows_hardware(peer)
        return {
            "protocol": VERSION,
            "daemon": f"edgepoint {__version__}",
            "peer": {
                "user": peer.user,
                "uid": peer.uid,
                "gid": peer.gid,
                "pid": peer.pid,
                "may_act": may_act,
            },
            "hardware_group": self._context.access.group_name,
            "commands": self._context.api.describe(may_act),
            "events": sorted(self._context.api.events),
            "limits": {
                "max_request": self._context.limits.max_request,
                "max_clients": self._context.limits.max_clients,
                "send_timeout_s": self._context.limits.send_timeout_s,
            },
        }

    def _start_watching(self, request: Request) -> dict[str, Any]:
        """Subscribe now (so nothing between this answer and the first event is missed)."""
        events = self._context.api.events

        def refuse(message: str) -> RequestError:
            return RequestError(f"watch: {message}", Code.BAD_REQUEST, request.id)

        if unknown := set(request.args) - {"events"}:
            raise refuse(f"unknown argument {sorted(unknown)[0]!r} (arguments: events)")
        kinds = request.args.get("events", ["status"])
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
            raise refuse('"events" must be a non-empty list of event kinds')
        for kind in kinds:
            if kind not in events:
                raise refuse(f"no event kind {kind!r} (kinds: {', '.join(sorted(events))})")
        if self.watching:
            raise refuse("this connection watches already; open another one")
        self.watching = True
        for kind in dict.fromkeys(kinds):
            event = events[kind]
            if isinstance(event, StateEvent):
                changed = asyncio.Event()
                self._unsubscribe.append(event.watch(changed.set))
                self._pending.append(functools.partial(self._follow_state, kind, event, changed))
            else:
                backlog = _Backlog(event.backlog)
                self._unsubscribe.append(event.subscribe(backlog.push))
                self._pending.append(functools.partial(self._follow_stream, kind, event, backlog))
        return {"events": list(dict.fromkeys(kinds))}

    async def _follow_state(self, kind: str, event: StateEvent, changed: asyncio.Event) -> None:
        """The state now and after each change; changes during a send make one more send."""
        with self._ending_the_connection_on_failure(kind):
            while True:
                changed.clear()
                await self.send(encode_event(kind, await event.read()))
                await changed.wait()

    async def _follow_stream(self, kind: str, event: StreamEvent, backlog: _Backlog) -> None:
        with self._ending_the_connection_on_failure(kind):
            while True:
                await backlog.ready.wait()
                backlog.ready.clear()
                while backlog.items:
                    lost, backlog.lost = backlog.lost, 0
                    await self.send(encode_event(kind, backlog.items.popleft(), lost))

    @contextlib.contextmanager
    def _ending_the_connection_on_failure(self, kind: str) -> Any:
        try:
            yield
        except _Gone:
            pass
        except Exception:
            # The client sees EOF and reconnects (the TUI does), rather than a silent stream.
            log.exception("control: %s events for %s failed", kind, self.peer)
            self._writer.transport.abort()

    async def stop_watching(self) -> None:
        """Unsubscribe first (synchronously: the daemon stops notifying at once), then stop."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.watching = False


def _id(request: Request | None) -> Any:
    return None if request is None else request.id
