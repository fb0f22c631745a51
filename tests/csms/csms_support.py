"""Helpers for the embedded CSMS tests: a fake clock, raw and OCPP clients, frame exchange."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from ocpp.v16 import ChargePoint as OcppClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from edgepoint.csms.server import SiteCsms

CP_ID = "CP-1"
CP_KEY = "0123456789abcdef0123"
# Cheap hashing keeps the suite fast; production uses DEFAULT_AUTH_ITERATIONS.
TEST_ITERATIONS = 1_000


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now.timestamp()

    def utc_now(self) -> datetime:
        return self.now


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def open_ws(
    port: int,
    cp_id: str = CP_ID,
    key: str | None = CP_KEY,
    *,
    path: str | None = None,
    subprotocols: Sequence[str] | None = ("ocpp1.6",),
) -> connect:
    headers = basic_auth(cp_id, key) if key is not None else {}
    return connect(
        f"ws://127.0.0.1:{port}{path if path is not None else '/ocpp/' + cp_id}",
        subprotocols=None if subprotocols is None else [Subprotocol(s) for s in subprotocols],
        additional_headers=headers,
        open_timeout=5,
        close_timeout=1,
    )


@dataclass
class RunningCsms:
    csms: SiteCsms
    task: asyncio.Task[None]
    clock: FakeClock

    @property
    def port(self) -> int:
        return self.csms.port


@contextlib.asynccontextmanager
async def ocpp_client(
    port: int, cp_id: str = CP_ID, key: str = CP_KEY, *, kind: type[OcppClient] = OcppClient
) -> AsyncIterator[OcppClient]:
    """An ocpp library charge point connected to the CSMS, its receive loop running."""
    async with open_ws(port, cp_id, key) as ws:
        client = kind(cp_id, ws, response_timeout=5)
        receiver = asyncio.create_task(client.start())
        try:
            yield client
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver


async def exchange(ws: ClientConnection, frame: str) -> str:
    """Send one raw frame and return the next raw frame received."""
    await ws.send(frame)
    reply = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(reply, str)
    return reply
