"""A central system for tests that is not our embedded CSMS: raw OCPP-J frames, no de-duplication.

It validates every frame the charge point sends against the OCPP 1.6 schemas, strictly
(date-times with an offset, 32-bit integers), and records what violates them, so a test
can assert that a real, strict peer would have accepted everything. Each action's answer
comes from a responder the test can replace: a payload, a CallError, silence (no reply),
a delay, or garbage. StartTransaction gets a new transactionId every time, like a CSMS
that does not de-duplicate, and every CALL is kept with its unique id, so a test can tell
a resend (same id) from a duplicate (a new id).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from edgepoint.ocppj.validation import request_problem, response_problem


@dataclass(frozen=True)
class Received:
    """A CALL from the charge point."""

    unique_id: str
    action: str
    payload: dict[str, Any]
    connection: int


@dataclass(frozen=True)
class Error:
    """Answer with a CALLERROR."""

    code: str = "InternalError"
    description: str = "refused by the test"


@dataclass(frozen=True)
class Raw:
    """Answer with this exact text (garbage, a bad reply, ...)."""

    text: str


class Silence:
    """Do not answer at all."""


SILENCE = Silence()
Answer = dict[str, Any] | Error | Raw | Silence
Responder = Callable[[Received], Answer | Awaitable[Answer]]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ScriptedCsms:
    """`async with ScriptedCsms() as csms:` then point the charge point at `csms.url`."""

    heartbeat_interval: int = 300
    require_subprotocol: bool = True
    received: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    responders: dict[str, Responder] = field(default_factory=dict)
    id_tags: dict[str, str] = field(default_factory=dict)  # idTag -> status (default Accepted)
    # (code, reason) of each connection's end as the charge point closed it; 1006: no
    # close frame (the TCP connection just ended).
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    _server: Server | None = None
    _connections: list[ServerConnection] = field(default_factory=list)
    _pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _changed: asyncio.Condition | None = None
    _tx_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    port: int = 0
    ssl: SSLContext | None = None  # serve wss:// (security profiles 2 and 3) with this context

    async def __aenter__(self) -> ScriptedCsms:
        self._changed = asyncio.Condition()
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            self.port,
            subprotocols=None if not self.require_subprotocol else ["ocpp1.6"],  # type: ignore[list-item]
            process_request=self._record_request,
            ssl=self.ssl,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        scheme = "ws" if self.ssl is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    @property
    def connected(self) -> bool:
        return any(c.state.name == "OPEN" for c in self._connections)

    # -- what tests look at --------------------------------------------------------

    def calls(self, action: str | None = None) -> list[Received]:
        return [r for r in self.received if action is None or r.action == action]

    def payloads(self, action: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.calls(action)]

    async def wait_for(self, what: str, check: Callable[[], Any], within_s: float = 10) -> Any:
        """Wait until `check()` is truthy (re-checked after every frame); return its value."""
        assert self._changed is not None
        async with asyncio.timeout(within_s):
            async with self._changed:
                while not (result := check()):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):  # also poll: state may change outside
                            await self._changed.wait()
                return result
        raise AssertionError(what)  # pragma: no cover

    async def wait_calls(self, action: str, count: int = 1, within_s: float = 10) -> list[Received]:
        try:
            await self.wait_for(
                f"{count} {action}", lambda: len(self.calls(action)) >= count, within_s
            )
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {count} {action}; got {[r.action for r in self.received]}"
            ) from None
        return self.calls(action)

    # -- CSMS-initiated calls --------------------------------------------------------

    async def call(self, action: str, payload: dict[str, Any], within_s: float = 10) -> Any:
        """Send a CALL to the charge point; return its CALLRESULT payload or ("error", code)."""
        problem = request_problem(action, payload)
        assert problem is None, f"the test's own {action} is invalid: {problem}"
        connection = self._connections[-1]
        unique_id = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[unique_id] = future
        await connection.send(json.dumps([2, unique_id, action, payload]))
        kind, body = await asyncio.wait_for(future, within_s)
        if kind == "error":
            return ("error", body)
        bad = response_problem(action, body)
        if bad is not None:
            self.violations.append(f"{action}.conf from the charge point: {bad}")
        return body

    async def send_raw(self, text: str | bytes) -> None:
        await self._connections[-1].send(text)

    async def disconnect(self) -> None:
        for connection in list(self._connections):
            await connection.close()

    # -- serving -------------------------------------------------------------------

    async def _record_request(self, connection: ServerConnection, request: Any) -> None:
        self.headers.append(dict(request.headers))
        self.paths.append(request.path)
        return None

    async def _serve(self, connection: ServerConnection) -> None:
        self._connections.append(connection)
        index = len(self._connections)
        try:
            async for raw in connection:
                await self._on_frame(connection, index, raw)
        except ConnectionClosed:
            pass
        self.closes.append((connection.close_code, connection.close_reason))
        await self._notify()

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _on_frame(self, connection: ServerConnection, index: int, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self.violations.append("binary frame")
            return
        try:
            message = json.loads(raw)
        except ValueError:
            self.violations.append(f"not JSON: {raw[:80]!r}")
            return
        kind = message[0]
        if kind in (3, 4):
            future = self._pending.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(("result", message[2]) if kind == 3 else ("error", message[2]))
            await self._notify()
            return
        _, unique_id, action, payload = message
        problem = request_problem(action, payload)
        if problem is not None:
            self.violations.append(f"{action}: {problem}")
        received = Received(unique_id, action, payload, index)
        self.received.append(received)
        await self._notify()
        responder = self.responders.get(action, self._default)
        answer = responder(received)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            answer = await answer  # type: ignore[misc]
        with contextlib.suppress(ConnectionClosed):
            if isinstance(answer, Silence):
                return
            if isinstance(answer, Raw):
                await connection.send(answer.text)
            elif isinstance(answer, Error):
                await connection.send(
                    json.dumps([4, unique_id, answer.code, answer.description, {}])
                )
            else:
                await connection.send(json.dumps([3, unique_id, answer]))

    def _default(self, call: Received) -> Answer:
        p = call.payload
        match call.action:
            case "BootNotification":
                return {
                    "status": "Accepted",
                    "currentTime": now_iso(),
                    "interval": self.heartbeat_interval,
                }
            case "Heartbeat":
                return {"currentTime": now_iso()}
            case "Authorize":
                return {"idTagInfo": {"status": self.id_tags.get(p["idTag"], "Accepted")}}
            case "StartTransaction":
                return {
                    "transactionId": next(self._tx_ids),
                    "idTagInfo": {"status": self.id_tags.get(p["idTag"], "Accepted")},
                }
            case "StopTransaction":
                if "idTag" in p:
                    return {"idTagInfo": {"status": self.id_tags.get(p["idTag"], "Accepted")}}
                return {}
            case "DataTransfer":
                return {"status": "UnknownVendorId"}
        return {}
