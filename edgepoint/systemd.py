"""Tell systemd we are ready, alive and stopping (sd_notify over $NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket


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
