"""The daemon's handle on the embedded CSMS process: start it, wait until it serves, stop it.

`run()` is a supervised service: it starts `python -m edgepoint.csms.service`, reports
ready once the child answers on its control socket with its WebSocket server listening,
and raises when the child exits, so the supervisor starts it again after a back-off.
Cancelled, it asks the child to stop (SIGTERM) and kills it if it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from edgepoint.control.client import request
from edgepoint.csms.operator import DEFAULT_TIMEOUT_S
from edgepoint.errors import ControlError, EdgepointError

log = logging.getLogger(__name__)

STARTUP_WITHIN_S = 30.0
STOP_WITHIN_S = 5.0


class CsmsExited(EdgepointError):
    """The CSMS process ended by itself."""


class CsmsProcess:
    """One child process running the embedded CSMS, and requests to it."""

    def __init__(self, config_path: Path, socket: Path) -> None:
        self._config_path = config_path
        self.socket = socket
        self.ready = asyncio.Event()
        self.pid: int | None = None
        self.exits = 0

    async def request(self, cmd: str, **args: Any) -> Any:
        """A control-API request to the CSMS process; ControlError when it cannot answer.

        An operator command waits up to its `timeout_s` for the charger's answer; the
        request waits that long and a little more for the CSMS process's.
        """
        if not self.ready.is_set():
            raise ControlError("the embedded CSMS is not running", "unavailable")
        timeout_s = args.get("timeout_s")
        within = (timeout_s if isinstance(timeout_s, int | float) else DEFAULT_TIMEOUT_S) + 5
        return await request(self.socket, cmd, answer_within_s=within, **args)

    async def wait_ready(self, within_s: float = STARTUP_WITHIN_S) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), within_s)
        return self.ready.is_set()

    async def run(self) -> None:
        """Start the CSMS process and wait for it; raise CsmsExited when it ends."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgepoint.csms.service",
            "--config",
            str(self._config_path),
            env={**os.environ, "EDGEPOINT_PARENT_PID": str(os.getpid())},
        )
        self.pid = process.pid
        watching = asyncio.create_task(self._until_serving(process))
        try:
            code = await process.wait()
        finally:
            self.ready.clear()
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            if process.returncode is None:
                await _stop(process)
        self.exits += 1
        raise CsmsExited(f"the CSMS process {process.pid} exited with {code}")

    async def _until_serving(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + STARTUP_WITHIN_S
        while process.returncode is None:
            with contextlib.suppress(ControlError):
                state = await request(self.socket, "csms.status")
                if state.get("listening"):
                    self.ready.set()
                    log.info("embedded CSMS serving (pid %d)", process.pid)
                    return
            if time.monotonic() > deadline:
                log.error("the CSMS process did not start serving: restarting it")
                process.terminate()
                return
            await asyncio.sleep(0.05)


async def _stop(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_WITHIN_S)
    except TimeoutError:
        log.error("the CSMS process did not stop within %g s: killing it", STOP_WITHIN_S)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
