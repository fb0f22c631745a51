"""A charger for CSMS tests on raw OCPP-J frames: sends CALLs, answers the CSMS's CALLs as scripted.

Every CALL the CSMS sends is checked against the OCPP 1.6 schemas (strictly: date-times
with an offset, 32-bit integers) and kept in `received` with what was wrong with it, so
a test can assert that a real charger would have taken it. Each action's answer comes
from `responders[action]`: a payload, an `Error` (CALLERROR), `SILENCE`, or an awaitable
of one of them (to hold the reply back); without a responder a plausible Accepted reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from csms_support import CP_ID, CP_KEY, open_ws
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from edgepoint.ocppj.validation import request_problem, response_problem


@dataclass(frozen=True)
class Received:
    """A CALL from the CSMS and the schema problem it has (None: valid)."""

    action: str
    payload: dict[str, Any]
    problem: str | None


@dataclass(frozen=True)
class Error:
    """Answer with a CALLERROR."""

    code: str = "InternalError"
    description: str = "refused by the test"


class Silence:
    """Do not answer at all."""


SILENCE = Silence()
Answer = dict[str, Any] | Error | Silence
Responder = Callable[[dict[str, Any]], Answer | Awaitable[Answer]]

DEFAULT_REPLIES: dict[str, dict[str, Any]] = {
    "GetConfiguration": {
        "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
        "unknownKey": [],
    },
    "GetLocalListVersion": {"listVersion": 0},
    "UnlockConnector": {"status": "Unlocked"},
    "GetDiagnostics": {"fileName": "diagnostics.zip"},
    "UpdateFirmware": {},
    "DataTransfer": {"status": "Accepted", "data": "pong"},
    "GetCompositeSchedule": {"status": "Accepted", "connectorId": 1},
}


def default_reply(action: str) -> dict[str, Any]:
    return dict(DEFAULT_REPLIES.get(action, {"status": "Accepted"}))


@dataclass
class ScriptedCharger:
    """One charger connection; use `scripted_charger()` to open it."""

    ws: ClientConnection
    received: list[Received] = field(default_factory=list)
    responders: dict[str, Responder] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        """Send a CALL; return the CALLRESULT payload or ("error", code) for a CALLERROR."""
        unique_id = f"c{next(self._ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[unique_id] = future
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        return await asyncio.wait_for(future, 5)

    async def boot(self) -> None:
        reply = await self.call(
            "BootNotification", {"chargePointVendor": "Test", "chargePointModel": "Scripted"}
        )
        assert reply["status"] == "Accepted"

    async def start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str
    ) -> int:
        reply = await self.call(
            "StartTransaction",
            {
                "connectorId": connector_id,
                "idTag": id_tag,
                "meterStart": meter_start,
                "timestamp": timestamp,
            },
        )
        return int(reply["transactionId"])

    async def stop_transaction(self, transaction_id: int, meter_stop: int, timestamp: str) -> None:
        reply = await self.call(
            "StopTransaction",
            {"transactionId": transaction_id, "meterStop": meter_stop, "timestamp": timestamp},
        )
        assert isinstance(reply, dict)

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.received if r.action == action]

    async def wait_calls(self, action: str, count: int = 1, within_s: float = 5) -> list[Any]:
        """Wait until at least `count` CALLs of `action` arrived; return their payloads."""
        async with asyncio.timeout(within_s):
            while len(self.calls(action)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.calls(action)

    async def run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame[0] == 2:
                    task = asyncio.create_task(self._answer(frame[1], frame[2], frame[3]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif frame[0] in (3, 4):
                    future = self._pending.pop(frame[1], None)
                    if future is not None and not future.done():
                        future.set_result(frame[2] if frame[0] == 3 else ("error", frame[2]))

    async def _answer(self, unique_id: str, action: str, payload: dict[str, Any]) -> None:
        problem = request_problem(action, payload)
        self.received.append(Received(action, payload, None if problem is None else str(problem)))
        self._arrived.set()
        responder = self.responders.get(action)
        answer: Any = default_reply(action) if responder is None else responder(payload)
        if asyncio.iscoroutine(answer) or isinstance(answer, asyncio.Future):
            answer = await answer
        if isinstance(answer, Silence):
            return
        if isinstance(answer, Error):
            frame: list[Any] = [4, unique_id, answer.code, answer.description, {}]
        else:
            bad = response_problem(action, answer)
            assert bad is None, f"the test scripted an invalid {action} reply: {bad}"
            frame = [3, unique_id, answer]
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(frame))

    def problems(self) -> list[str]:
        return [f"{r.action}: {r.problem}" for r in self.received if r.problem is not None]


@contextlib.asynccontextmanager
async def scripted_charger(
    port: int, cp_id: str = CP_ID, key: str = CP_KEY, *, boot: bool = True
) -> AsyncIterator[ScriptedCharger]:
    """A connected scripted charger (booted unless `boot=False`), its receiver running."""
    async with open_ws(port, cp_id, key) as ws:
        charger = ScriptedCharger(ws)
        receiver = asyncio.create_task(charger.run())
        try:
            if boot:
                await charger.boot()
            yield charger
        finally:
            receiver.cancel()
            for task in list(charger._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver


async def wait_until(check: Callable[[], bool], within_s: float = 5, step: float = 0.01) -> None:
    """Wait until `check()` holds (for state the code under test has no event for)."""
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110  (the state has no event to wait on)
            await asyncio.sleep(step)
