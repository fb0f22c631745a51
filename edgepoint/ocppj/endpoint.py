"""The OCPP-J RPC pump over one WebSocket: CALLs out with their replies, CALLs in to a handler.

It only moves frames; what to answer and when to call is the caller's policy. Replies are
matched by unique id in a dict (a stray or late reply is counted and dropped, never kept),
CALLs from the peer are answered one at a time in arrival order by a worker of their own,
so a handler that itself awaits a CALL cannot block the reception of that CALL's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from edgepoint.logthrottle import ThrottledLog
from edgepoint.ocppj import frames
from edgepoint.ocppj.errors import (
    CallErrorReceived,
    ConnectionLost,
    ErrorCode,
    InvalidMessage,
    InvalidReply,
    Refusal,
)
from edgepoint.ocppj.validation import check_request, request_problem, response_problem
from edgepoint.redact import printable

# CALLs a well-behaved peer sends one at a time (OCPP-J §4.1.1); a few queued is tolerance,
# more is a flood that gets an error at once instead of memory.
MAX_QUEUED_CALLS = 8


class Transport(Protocol):
    """What the endpoint needs of a WebSocket connection (websockets' connections fit)."""

    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer; `after` runs once the CALLRESULT is on the wire (e.g. a reset)."""

    payload: dict[str, Any]
    after: Callable[[], Awaitable[None]] | None = None


Handler = Callable[[str, dict[str, Any]], Awaitable[Reply]]
# Runs before the schema check; raises Refusal to answer without validating.
Precheck = Callable[[str, dict[str, Any]], Awaitable[None]]


class Priority(IntEnum):
    """Who goes first when several CALLs wait for the one slot OCPP-J allows."""

    URGENT = 0  # a driver is waiting (Authorize)
    NORMAL = 1  # boot, outbox, statuses, triggered messages
    LOW = 2  # heartbeat


@dataclass(slots=True)
class EndpointStats:
    """Counters for status pages and tests."""

    calls_sent: int = 0
    calls_answered: int = 0
    calls_refused: int = 0
    stray_replies: int = 0
    bad_frames: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class CallSlot:
    """One outstanding CALL at a time, handed to waiters by priority, then arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    @contextlib.asynccontextmanager
    async def hold(self, priority: Priority) -> AsyncIterator[None]:
        if self._busy or self._waiters:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._seq += 1
            heapq.heappush(self._waiters, (int(priority), self._seq, waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed over just as we were cancelled: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the slot stays busy: it changes hands
                return
        self._busy = False


class Endpoint:
    """One side of an OCPP-J conversation over a connected transport."""

    def __init__(
        self,
        transport: Transport,
        handler: Handler,
        *,
        name: str,
        logger: logging.Logger,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        throttled: ThrottledLog | None = None,
        precheck: Precheck | None = None,
    ) -> None:
        self._transport = transport
        self._handler = handler
        # Cheap checks that must come before the schema check (its cost grows with the
        # payload): e.g. refusing 40,000 sampled values without validating them all.
        self._precheck = precheck
        self.name = name
        self._log = logger
        # A peer's own throttle, when it must outlive this connection (see ChargerLogs).
        self._throttled = throttled or ThrottledLog(logger)
        self._new_id = new_id
        self._slot = CallSlot()
        # The future gets the reply frame; call() turns it into a result or an error,
        # since only it knows which action the reply answers.
        self._pending: dict[str, asyncio.Future[frames.CallResult | frames.CallError]] = {}
        self._inbox: asyncio.Queue[frames.Call] = asyncio.Queue(MAX_QUEUED_CALLS)
        self._after: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = EndpointStats()

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self) -> None:
        """Receive and answer until the connection closes; raise what closed it."""
        worker = asyncio.create_task(self._serve_calls(), name=f"{self.name} calls")
        try:
            while True:
                if worker.done():
                    worker.result()  # a dead worker would leave CALLs unanswered: surface it
                    return
                await self._dispatch(await self._transport.recv())
        finally:
            self._closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost(f"{self.name}: connection closed"))
            self._pending.clear()
            tasks = [worker, *self._after]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def call(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        reply_timeout_s: float,
        priority: Priority = Priority.NORMAL,
        unique_id: str | None = None,
    ) -> dict[str, Any]:
        """Send a CALL and return the peer's valid CALLRESULT payload.

        Raises InvalidMessage (ours breaks the schema: never sent), CallErrorReceived,
        InvalidReply, TimeoutError (no answer within `reply_timeout_s` once sent) or ConnectionLost.
        `unique_id` lets a resend carry the id of the first try.
        """
        problem = request_problem(action, payload)
        if problem is not None:
            raise InvalidMessage(f"{action}: {problem}")
        async with self._slot.hold(priority):
            if self._closed:
                raise ConnectionLost(f"{self.name}: not connected")
            message_id = unique_id or self._new_id()
            future: asyncio.Future[frames.CallResult | frames.CallError] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending[message_id] = future
            try:
                try:
                    await self._transport.send(frames.call_frame(message_id, action, payload))
                except ConnectionClosed as err:
                    raise ConnectionLost(f"{self.name}: {err}") from err
                self.stats.calls_sent += 1
                async with asyncio.timeout(reply_timeout_s):
                    reply = await future
            finally:
                if self._pending.get(message_id) is future:
                    del self._pending[message_id]
        if isinstance(reply, frames.CallError):
            raise CallErrorReceived(action, reply.code, reply.description)
        answer = reply.payload
        bad = response_problem(action, answer)
        if bad is not None:
            raise InvalidReply(action, bad.cause or str(bad.code))
        return answer

    # -- receiving --------------------------------------------------------------

    async def _dispatch(self, raw: str | bytes) -> None:
        frame = frames.parse(raw)
        if isinstance(frame, frames.Call):
            if self._inbox.full():
                self._bad("flood", "CALL while too many are queued")
                await self._send(
                    frames.error_frame(
                        frame.unique_id,
                        Refusal(ErrorCode.GENERIC_ERROR, "too many CALLs outstanding"),
                    )
                )
                return
            self._inbox.put_nowait(frame)
        elif isinstance(frame, frames.CallResult | frames.CallError):
            future = self._pending.pop(frame.unique_id, None)
            if future is None or future.done():
                # Late (after a timeout) or never asked for: nothing waits for it.
                self.stats.stray_replies += 1
                self._throttled.log(logging.INFO, "stray", "%s: reply to no CALL", self.name)
                return
            future.set_result(frame)
        else:
            self._bad(frame.reason.split(":")[0], frame.reason)
            if frame.reply is not None:
                await self._send(frame.reply)

    def _bad(self, kind: str, reason: str) -> None:
        self.stats.bad_frames += 1
        self.stats.by_reason[kind] = self.stats.by_reason.get(kind, 0) + 1
        self._throttled.log(logging.WARNING, kind, "%s: bad frame: %s", self.name, reason)

    async def _send(self, message: str) -> None:
        await self._transport.send(message)

    # -- answering --------------------------------------------------------------

    async def _serve_calls(self) -> None:
        while True:
            await self._answer(await self._inbox.get())

    async def _answer(self, call: frames.Call) -> None:
        action = call.action
        try:
            if self._precheck is not None:
                await self._precheck(action, call.payload)
            check_request(action, call.payload)
            reply = await self._handler(action, call.payload)
            bad = response_problem(action, reply.payload)
            if bad is not None:
                # Where, not what, above DEBUG: the offending value may be an id tag.
                where = bad.cause.split(": ", 1)[0]
                self._log.error(
                    "%s: our %s reply breaks the schema: %s at %s",
                    self.name,
                    action,
                    bad.code,
                    where,
                )
                self._log.debug("%s: invalid %s reply: %s", self.name, action, bad)
                raise Refusal(ErrorCode.INTERNAL_ERROR, "the receiver built an invalid reply")
        except Refusal as refusal:
            self.stats.calls_refused += 1
            # INFO without the payload: it may hold id tags. One throttle kind per code,
            # not per action: a hostile peer has endless action names, and each new kind
            # would log again (and evict the kinds that keep the rest quiet).
            self._throttled.log(
                logging.INFO,
                f"refused {refusal.code}",
                "%s: %s refused with %s",
                self.name,
                printable(action, 40),
                refusal.code,
            )
            await self._send(frames.error_frame(call.unique_id, refusal))
            return
        except Exception as err:  # a handler bug must cost one CALL, not the connection
            self.stats.calls_refused += 1
            self._throttled.log(
                logging.ERROR,
                f"failed {action}",
                "%s: %s handler failed: %s",
                self.name,
                action,
                type(err).__name__,
            )
            self._log.debug("%s handler failure", action, exc_info=True)
            await self._send(frames.error_frame(call.unique_id, Refusal(ErrorCode.INTERNAL_ERROR)))
            return
        await self._send(frames.result_frame(call.unique_id, reply.payload))
        self.stats.calls_answered += 1
        if reply.after is not None:
            task = asyncio.create_task(self._run_after(action, reply.after))
            self._after.add(task)
            task.add_done_callback(self._after.discard)

    async def _run_after(self, action: str, after: Callable[[], Awaitable[None]]) -> None:
        try:
            await after()
        except (ConnectionLost, TimeoutError, CallErrorReceived, InvalidReply) as err:
            self._log.info("%s: follow-up of %s failed: %s", self.name, action, err)
        except Exception:
            self._log.exception("%s: follow-up of %s failed", self.name, action)
