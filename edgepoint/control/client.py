"""Talk to a running daemon over its control socket (protocol v1, docs/control-api.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepoint.control.api import VERSION
from edgepoint.errors import ControlError

ANSWER_WITHIN_S = 10.0  # a status answer takes milliseconds; a stuck daemon, forever
LIMIT = 16 * 1024 * 1024  # a status answer can be large; keep it bounded anyway

# Codes the client raises itself (the daemon's own codes come in its answers).
NOT_RUNNING = "not_running"
NO_ACCESS = "no_access"
NO_ANSWER = "no_answer"
DISCONNECTED = "disconnected"
PROTOCOL = "protocol"


@dataclass(frozen=True, slots=True)
class Event:
    """One event message: its kind, its data and how many stream items were lost before it."""

    kind: str
    data: Any
    lost: int = 0


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=LIMIT)
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise ControlError(f"edgepoint is not running (no daemon at {path})", NOT_RUNNING) from err
    except PermissionError as err:
        raise ControlError(
            f"not allowed to use {path}: join the daemon's group", NO_ACCESS
        ) from err


async def _send(writer: asyncio.StreamWriter, cmd: str, args: dict[str, Any]) -> None:
    writer.write(_request(cmd, args))
    with contextlib.suppress(ConnectionError):
        # A daemon that refused us (busy) may have closed already; its answer is still
        # in our receive buffer, and reading it says more than a broken pipe.
        await writer.drain()


def _request(cmd: str, args: dict[str, Any]) -> bytes:
    message = {"v": VERSION, "id": 1, "cmd": cmd, "args": args}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def _message(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await reader.readline()
    except ConnectionError:
        line = b""
    except ValueError as err:  # longer than LIMIT
        raise ControlError(f"the daemon's answer is over {LIMIT} bytes", PROTOCOL) from err
    if not line:
        raise ControlError("the daemon closed the connection", DISCONNECTED)
    try:
        message = json.loads(line)
    except ValueError as err:
        raise ControlError(f"the daemon sent something that is not JSON: {err}", PROTOCOL) from err
    if not isinstance(message, dict):
        raise ControlError("the daemon sent something that is not a JSON object", PROTOCOL)
    return message


async def _answer(reader: asyncio.StreamReader) -> Any:
    """The next answer's result (events before it are skipped), or its error raised."""
    while "event" in (message := await _message(reader)):
        pass
    if message.get("ok") is True:
        return message.get("result")
    error = message.get("error")
    if isinstance(error, dict):
        raise ControlError(str(error.get("message", error)), str(error.get("code", "failed")))
    raise ControlError(str(error), "failed")  # a daemon from before v1


async def request(
    path: Path, cmd: str, *, answer_within_s: float | None = None, **args: Any
) -> Any:
    """Send one command and return its result; ControlError (with `.code`) otherwise.

    `answer_within_s` (default ANSWER_WITHIN_S): longer for a command that waits on
    something slow (a charger's answer to an operator command).
    """
    if answer_within_s is None:
        answer_within_s = ANSWER_WITHIN_S
    try:
        async with asyncio.timeout(answer_within_s):
            reader, writer = await _connect(path)
            try:
                await _send(writer, cmd, args)
                return await _answer(reader)
            finally:
                writer.close()
    except TimeoutError as err:
        # A daemon whose loop is stuck still accepts connections (the kernel does).
        raise ControlError(
            f"edgepoint did not answer within {answer_within_s:g} s ({path})", NO_ANSWER
        ) from err


async def subscribe(path: Path, kinds: Iterable[str] = ("status",)) -> AsyncGenerator[Event, None]:
    """Yield the events of `kinds` until the daemon goes away (ControlError `disconnected`)."""
    reader, writer = await _connect(path)
    try:
        await _send(writer, "watch", {"events": list(kinds)})
        try:
            async with asyncio.timeout(ANSWER_WITHIN_S):
                await _answer(reader)
        except TimeoutError as err:
            raise ControlError(
                f"edgepoint did not answer within {ANSWER_WITHIN_S:g} s ({path})", NO_ANSWER
            ) from err
        while True:
            message = await _message(reader)
            kind = message.get("event")
            if isinstance(kind, str):
                yield Event(kind, message.get("data"), int(message.get("lost", 0)))
    finally:
        writer.close()


async def watch(path: Path) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the daemon's status now and after every change."""
    async with contextlib.aclosing(subscribe(path, ["status"])) as events:
        async for event in events:
            if event.kind == "status":
                yield event.data
