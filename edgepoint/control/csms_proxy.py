"""Forward the embedded CSMS's commands from the daemon's control socket to the CSMS process.

Clients (the CLI, the TUI) know one socket. The daemon checks a client's rights here
with the flags the CSMS declares for each command, then hands the request on; the CSMS
process's own socket is reachable by the daemon's user only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgepoint.control.api import ControlApi, Handler
from edgepoint.csms.process import CsmsProcess


def register_csms_proxy(
    api: ControlApi, process: CsmsProcess, flags: Mapping[str, tuple[bool, bool]]
) -> None:
    """Register every CSMS command name in `flags` (name -> (mutates, hardware))."""
    for name, (mutates, hardware) in sorted(flags.items()):
        api.add_command(
            name,
            _forward(process, name),
            summary="carried out by the embedded CSMS",
            mutates=mutates,
            hardware=hardware,
            forwarded=True,
        )


def _forward(process: CsmsProcess, name: str) -> Handler:
    async def forward(**args: Any) -> Any:
        return await process.request(name, **args)

    return forward
