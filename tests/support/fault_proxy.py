"""A TCP proxy on 127.0.0.1 that injects connection faults between a WebSocket client and server.

Put it between the charge point's OCPP client and a websockets server, point the
client at ``proxy.url()``, and break the link on command::

    async with FaultProxy("127.0.0.1", server_port) as proxy:
        async with connect(proxy.url("/CP-1")) as ws:
            await proxy.cut()

Which connections each fault touches:

========================  =======================  ========================================
command                   current connections      new connections
========================  =======================  ========================================
``cut()``                 FIN on both sides         forwarded normally
``reset()``               RST on both sides         forwarded normally
``stall()``/``resume()``  frozen / thawed           frozen until ``resume()``
``half_open()``           silent forever            forwarded normally (a fresh flow works)
``refuse_new(True)``      untouched                 refused by the kernel (ECONNREFUSED)
``http_error(503)``       untouched                 HTTP 503 instead of the upgrade
========================  =======================  ========================================

Every command is a coroutine that returns once the fault is in place. The proxy
works at the TCP level, so ``wss://`` traffic goes through it unchanged; only
``http_error`` speaks plain HTTP and therefore needs a plain ``ws://`` client.
Linux only: the port is kept reserved with SO_REUSEPORT while new connections
are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

_CHUNK = 65536
# struct linger {l_onoff=1, l_linger=0}: close() then discards the send queue and sends RST.
_LINGER_RST = struct.pack("ii", 1, 0)
_MAX_REQUEST_HEAD = 16384


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters of a `FaultProxy` at one moment.

    ``accepted`` counts TCP connections the proxy accepted (refused ones never
    are; ``http_error`` ones are). ``open`` counts accepted connections not yet
    finished. ``bytes_to_*`` count bytes forwarded, not bytes dropped by
    ``half_open``; ``held_to_*`` count bytes read and held back by ``stall``.
    """

    accepted: int
    open: int
    bytes_to_server: int
    bytes_to_client: int
    held_to_server: int
    held_to_client: int


class _End(enum.Enum):
    """How one direction of a connection ended."""

    EOF = enum.auto()
    RESET = enum.auto()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # The socket may already be gone when the peer went first; RST is then moot.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Connection:
    """One accepted client connection and, once opened, its upstream twin."""

    def __init__(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter):
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.server_writer: asyncio.StreamWriter | None = None
        # Set by half_open(): bytes are dropped both ways and nothing is ever closed.
        self.silenced = False
        self.task: asyncio.Task[None] | None = None

    def writers(self) -> Iterator[asyncio.StreamWriter]:
        yield self.client_writer
        if self.server_writer is not None:
            yield self.server_writer

    def close(self) -> None:
        for writer in self.writers():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers():
            _abort_with_rst(writer)


class FaultProxy:
    """Forward TCP from ``host:port`` (port chosen by the kernel) to a target, with faults."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self._holder: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._retired_servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._http_status: int | None = None
        self._closed = False
        self._accepted = 0
        self._forwarded = {"to_server": 0, "to_client": 0}
        self._held = {"to_server": 0, "to_client": 0}
        self._waiters: list[tuple[Callable[[ProxyStats], bool], asyncio.Future[ProxyStats]]] = []

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind a free port on ``host`` and start accepting."""
        # The holder never listens; it keeps the port ours while refuse_new() has
        # closed the listener, so a re-listen cannot lose the port to someone else.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind((self.host, 0))
        except BaseException:
            holder.close()
            raise
        self._holder = holder
        self.port = holder.getsockname()[1]
        await self._listen()

    async def aclose(self) -> None:
        """Stop listening and close (FIN) every connection; idempotent."""
        self._closed = True
        self._stop_listening()
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        await self._end_connections(_Connection.close)
        for server in self._retired_servers:
            await server.wait_closed()
        self._retired_servers.clear()

    def url(self, path: str = "/", *, scheme: str = "ws") -> str:
        """Return the address a client should dial, e.g. ``ws://127.0.0.1:PORT/CP-1``."""
        return f"{scheme}://{self.host}:{self.port}{path}"

    # Faults

    async def cut(self) -> None:
        """Close both sides of every current connection with FIN; new ones still pass."""
        await self._end_connections(_Connection.close)

    async def reset(self) -> None:
        """Abort every current connection with RST (SO_LINGER 0) on both sides."""
        await self._end_connections(_Connection.abort)

    async def stall(self) -> None:
        """Stop forwarding both ways, current and new connections, until `resume`.

        Nothing is closed and nothing is dropped: the chunk in hand is held, and
        the rest waits in the socket buffers, so TCP flow control pushes back on
        the senders like a frozen peer would.
        """
        self._flowing.clear()

    async def resume(self) -> None:
        """Deliver the held data and forward again."""
        self._flowing.set()

    async def half_open(self) -> None:
        """Make every current connection a dead flow; new connections are unaffected.

        Bytes from either side are read and dropped, and neither side is ever
        answered or closed (not even after it sends FIN), so an endpoint only
        notices through its own keepalive timeout. `cut`, `reset` or leaving the
        proxy closes these connections.
        """
        for conn in self._connections:
            conn.silenced = True

    async def refuse_new(self, refuse: bool = True) -> None:
        """Refuse (``True``) or accept again (``False``) new connections; current ones stay.

        While refusing, nothing listens on the port, so a client's connect fails
        with ECONNREFUSED exactly as against a stopped server.
        """
        if refuse:
            self._stop_listening()
        elif self._server is None and not self._closed:
            await self._listen()

    async def http_error(self, status: int | None) -> None:
        """Answer new connections' upgrade request with ``status``; ``None`` forwards again.

        Connections accepted from now on get the status line and are closed; the
        target never sees them.
        """
        if status is not None and not (200 <= status <= 599 and status != 101):
            raise ValueError(f"status {status} is not a final HTTP status other than 101")
        self._http_status = status

    # Counters

    @property
    def stats(self) -> ProxyStats:
        """Return the counters now."""
        return ProxyStats(
            accepted=self._accepted,
            open=len(self._connections),
            bytes_to_server=self._forwarded["to_server"],
            bytes_to_client=self._forwarded["to_client"],
            held_to_server=self._held["to_server"],
            held_to_client=self._held["to_client"],
        )

    async def wait_for(self, predicate: Callable[[ProxyStats], bool]) -> ProxyStats:
        """Wait until ``predicate(stats)`` holds and return those stats.

        Bound it with ``asyncio.timeout`` (or pytest-timeout) where a hang is possible.
        """
        stats = self.stats
        if predicate(stats):
            return stats
        future: asyncio.Future[ProxyStats] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            return await future
        finally:
            self._waiters.remove(waiter)

    async def wait_connections(self, n: int) -> ProxyStats:
        """Wait until the proxy has accepted its ``n``-th connection."""
        return await self.wait_for(lambda stats: stats.accepted >= n)

    # Internals

    def _changed(self) -> None:
        if not self._waiters:
            return
        stats = self.stats
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                satisfied = predicate(stats)
            except Exception as err:
                future.set_exception(err)
            else:
                if satisfied:
                    future.set_result(stats)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            self._server = await asyncio.start_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            raise

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._retired_servers.append(self._server)
            self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        self._accepted += 1
        self._connections.add(conn)
        # The proxy owns this task (not asyncio.start_server) so that it can cancel
        # it cleanly; the mode is fixed now, when the connection is accepted.
        conn.task = asyncio.create_task(self._serve(conn, self._http_status))
        self._changed()

    async def _end_connections(self, end: Callable[[_Connection], None]) -> None:
        conns = list(self._connections)
        for conn in conns:
            end(conn)
            if conn.task is not None:
                conn.task.cancel()
        await asyncio.gather(*(c.task for c in conns if c.task is not None), return_exceptions=True)

    async def _serve(self, conn: _Connection, http_status: int | None) -> None:
        try:
            if http_status is not None:
                await self._answer_http_error(conn, http_status)
                return
            try:
                server_reader, conn.server_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                # What a client behind a transparent path sees when the target is down.
                conn.abort()
                return
            await self._forward(conn, server_reader)
        finally:
            for writer in conn.writers():
                if not writer.is_closing():
                    writer.close()
            self._connections.discard(conn)
            self._changed()

    async def _answer_http_error(self, conn: _Connection, status: int) -> None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = f"{status} {phrase} (fault proxy)\n".encode()
        head = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            # Answer only after the whole request, as a server would.
            head_end = await conn.client_reader.readuntil(b"\r\n\r\n")
            if len(head_end) <= _MAX_REQUEST_HEAD:
                conn.client_writer.write(head + body)
                await conn.client_writer.drain()
        conn.client_writer.close()

    async def _forward(self, conn: _Connection, server_reader: asyncio.StreamReader) -> None:
        assert conn.server_writer is not None
        pumps = (
            asyncio.create_task(
                self._pump(conn, conn.client_reader, conn.server_writer, "to_server")
            ),
            asyncio.create_task(self._pump(conn, server_reader, conn.client_writer, "to_client")),
        )
        try:
            for finished in asyncio.as_completed(pumps):
                if await finished is _End.RESET:
                    # A reset on one side reaches the other, as through a real path.
                    conn.abort()
                    return
            conn.close()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self,
        conn: _Connection,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        direction: str,
    ) -> _End:
        while True:
            try:
                data = await source.read(_CHUNK)
            except OSError:
                return await self._finish(conn, _End.RESET)
            if not data:
                break
            self._held[direction] += len(data)
            self._changed()
            try:
                await self._flowing.wait()
            finally:
                self._held[direction] -= len(data)
                self._changed()
            if conn.silenced:
                continue
            sink.write(data)
            self._forwarded[direction] += len(data)
            self._changed()
            try:
                await sink.drain()
            except OSError:
                return await self._finish(conn, _End.RESET)
        if not conn.silenced and sink.can_write_eof():
            # Pass the half-close on; the other direction keeps flowing until its own EOF.
            with contextlib.suppress(OSError):
                sink.write_eof()
        return await self._finish(conn, _End.EOF)

    async def _finish(self, conn: _Connection, end: _End) -> _End:
        if conn.silenced:
            # A dead flow answers nothing, not even a FIN or an RST: wait to be ended.
            await asyncio.get_running_loop().create_future()
        return end
