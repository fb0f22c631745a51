"""A real `edgepoint run` against the scripted central system, driven from async tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from daemon_harness import Daemon, write_config
from support.scripted_csms import ScriptedCsms

from edgepoint.control.client import request

# Empty polls in a row that make a card away for longer than removal_s (0.2 s / 0.05 s).
EMPTY_PROBES = 6


class Kiosk:
    """The daemon under test, seen through its control socket."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await request(self.daemon.socket, "status")
        return result

    async def tap(self, uid: str) -> None:
        """Put the card in the emulated reader's field (it stays there for its dwell time)."""
        await request(self.daemon.socket, "tap", uid=uid)

    async def present(self, card: str) -> float:
        """Tap `card` like a driver and return once it is away long enough to tap again;
        returns the moment of the tap.

        A card that never left the field is one presentation (the reader's debounce), so
        the same card can tap again only after it was away `rfid.removal_s` (0.2 s in the
        test config): the reader has then polled the empty field several times in a row.
        """
        before = (await self.status())["rfid"]["published"]
        tapped_at = time.monotonic()
        await self.tap(card)
        await self.wait_for("the reader to see the card", lambda s: s["rfid"]["published"] > before)
        last: dict[str, int] = {}

        def away(status: dict[str, Any]) -> bool:
            rfid = status["rfid"]
            if rfid["reads"] != last.get("reads"):
                last.update(reads=rfid["reads"], probes=rfid["probes"])  # still in the field
            return bool(rfid["probes"] - last["probes"] >= EMPTY_PROBES)

        await self.wait_for("the card to be away", away)
        return tapped_at

    async def wait_for(
        self, what: str, check: Callable[[dict[str, Any]], bool], within_s: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        last: Any = "no answer yet"
        while time.monotonic() < deadline:
            proc = self.daemon.proc
            assert proc is not None and proc.poll() is None, self.daemon.tail()
            try:
                last = await self.status()
                if check(last):
                    return last
            except Exception as err:  # not up yet
                last = repr(err)
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last: {last}\n{self.daemon.tail()}")

    async def connector(self, cid: int = 1) -> dict[str, Any]:
        status = await self.status()
        found: dict[str, Any] = status["connectors"][cid - 1]
        return found


def scenario_config(folder: Path, csms: ScriptedCsms, **overrides: Any) -> Path:
    """A simulated kiosk pointed at `csms`, with the embedded CSMS off."""
    return write_config(
        folder,
        chargepoint__csms_url=csms.url,
        csms__enabled=False,
        **overrides,
    )


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Kiosk]:
    daemon = Daemon(config).start()
    try:
        yield Kiosk(daemon)
    finally:
        daemon.kill()
