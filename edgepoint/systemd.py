"""Tell systemd we are ready, alive and stopping (sd_notify over $NOTIFY_SOCKET).

READY=1 is sent once the daemon serves (app.py): databases open, the embedded CSMS
listening, the control socket answering, and the CSMS link booted or given up on for
now (offline mode: the kiosk charges on the local rules). WATCHDOG=1 follows the kiosk
loop's progress (app._keep_systemd_happy). STATUS= is one line that `systemctl status`
shows, sent again whenever it changes (`StatusReporter`). STOPPING=1 at SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# At most one STATUS= a second, and at least one check of it every this many seconds.
STATUS_MIN_GAP_S = 1.0
STATUS_EVERY_S = 15.0


def notify(message: str) -> bool:
    """Send one sd_notify datagram (e.g. "READY=1"); False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    # Non-blocking: a full or unread notify socket must cost a lost ping, never a stalled
    # event loop (the relay and the kiosk run on it).
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, kind) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec when systemd asked for pings, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def wait_for_socket(path: Path, within_s: float) -> bool:
    """Wait until a Unix socket accepts connections (a server that really listens)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_unix_connection(str(path))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)


def status_line(status: dict[str, Any]) -> str:
    """One line of the daemon's state (the control API's `status`), for `systemctl status`."""
    counts: dict[str, int] = {}
    for connector in status.get("connectors", []):
        counts[connector["status"]] = counts.get(connector["status"], 0) + 1
    connectors = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    link = status.get("links", {}).get("csms", {}).get("state", "?")
    outbox = status.get("outbox", {})
    clock = status.get("clock") or {}
    parts = [
        f"{status.get('station', '?')}: {connectors or 'no connectors'}",
        f"csms {link}",
        f"outbox {outbox.get('depth', 0)}"
        + (f" ({outbox['dead_letters']} dead)" if outbox.get("dead_letters") else ""),
        f"clock {clock.get('source', 'synced' if status.get('clock_synced') else 'unset')}",
    ]
    faults = [*status.get("faults", []), *((status.get("storage") or {}).get("faults", []))]
    if faults:
        parts.append("FAULT " + "; ".join(str(f).split(":")[0] for f in faults))
    if status.get("alarms"):
        parts.append(f"{len(status['alarms'])} alarm(s)")
    return "; ".join(parts)


class StatusReporter:
    """Sends STATUS= when the line changes: poked by state changes, checked regularly."""

    def __init__(self, line: Callable[[], Awaitable[str]]) -> None:
        self._line = line
        self._poked = asyncio.Event()
        self.last: str | None = None

    def poke(self) -> None:
        self._poked.set()

    async def run(self) -> None:
        while True:
            self._poked.clear()
            line = await self._line()
            if line != self.last:
                self.last = line
                notify(f"STATUS={line}")
            await asyncio.sleep(STATUS_MIN_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), STATUS_EVERY_S)
