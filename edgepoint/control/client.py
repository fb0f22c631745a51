"""Talk to a running daemon over its control socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edgepoint.errors import ControlError

ANSWER_WITHIN_S = 10.0  # a status answer takes milliseconds; a stuck daemon, forever
LIMIT = 16 * 1024 * 1024  # a status answer can be large; keep it bounded anyway


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=LIMIT)
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise ControlError(f"edgepoint is not running (no daemon at {path})") from err
    except PermissionError as err:
        raise ControlError(f"not allowed to use {path}: join the daemon's group") from err


def _result(line: bytes) -> Any:
    if not line:
        raise ControlError("the daemon closed the connection")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "unknown error")))
    return answer.get("result")


async def request(path: Path, cmd: str, **args: Any) -> Any:
    """Send one command and return its result; ControlError on failure or no answer."""
    try:
        async with asyncio.timeout(ANSWER_WITHIN_S):
            reader, writer = await _connect(path)
            try:
                writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                await writer.drain()
                return _result(await reader.readline())
            finally:
                writer.close()
    except TimeoutError as err:
        # A daemon whose loop is stuck still accepts connections (the kernel does).
        raise ControlError(
            f"edgepoint did not answer within {ANSWER_WITHIN_S:g} s ({path})"
        ) from err


async def watch(path: Path) -> AsyncIterator[dict[str, Any]]:
    """Yield the daemon's status now and after every change."""
    reader, writer = await _connect(path)
    try:
        writer.write(b'{"cmd":"watch"}\n')
        await writer.drain()
        while True:
            yield _result(await reader.readline())
    finally:
        writer.close()
