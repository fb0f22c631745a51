"""The TUI's side of the control socket: what `hello` granted, requests and the event stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepoint.control import client
from edgepoint.control.client import Event
from edgepoint.errors import ControlError

# Reconnect quickly after a daemon restart (systemd restarts it within a second or two),
# but do not hammer a daemon that is down for good.
RETRY_FIRST_S = 0.3
RETRY_MAX_S = 2.0
# Operator commands wait for a charger's answer (default 30 s in the CSMS).
CHARGER_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Grant:
    """What `hello` told this user: who they are and which commands they may run."""

    user: str
    may_act: bool
    hardware_group: str
    daemon: str
    commands: frozenset[str]
    allowed: frozenset[str]
    events: frozenset[str]

    @classmethod
    def from_hello(cls, hello: dict[str, Any]) -> Grant:
        commands = hello.get("commands", [])
        return cls(
            user=str(hello.get("peer", {}).get("user", "?")),
            may_act=bool(hello.get("peer", {}).get("may_act", False)),
            hardware_group=str(hello.get("hardware_group", "?")),
            daemon=str(hello.get("daemon", "edgepoint")),
            commands=frozenset(c["name"] for c in commands),
            allowed=frozenset(c["name"] for c in commands if c.get("allowed")),
            events=frozenset(hello.get("events", [])),
        )

    def refusal(self, cmd: str) -> str | None:
        """Why this user may not run `cmd`, or None if they may."""
        if cmd not in self.commands:
            return f"this daemon has no {cmd} command"
        if cmd in self.allowed:
            return None
        return (
            f"forbidden: {cmd} acts on hardware; {self.user} is not in group"
            f" {self.hardware_group!r} (read-only)"
        )


class DaemonConnection:
    """Requests on fresh connections, and one long-lived event stream; nothing else."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def hello(self) -> Grant:
        return Grant.from_hello(await client.request(self.socket, "hello"))

    async def request(self, cmd: str, *, answer_within_s: float | None = None, **args: Any) -> Any:
        return await client.request(
            self.socket, cmd, answer_within_s=answer_within_s or client.ANSWER_WITHIN_S, **args
        )

    @contextlib.asynccontextmanager
    async def events(self, kinds: Iterable[str]) -> AsyncIterator[AsyncIterator[Event]]:
        """The event stream; it ends with ControlError `disconnected` when the daemon goes."""
        stream = client.subscribe(self.socket, list(kinds))
        try:
            yield stream
        finally:
            await stream.aclose()


def describe_error(err: ControlError) -> str:
    """An error as the message bar shows it: its code first (forbidden, unavailable...)."""
    return f"{err.code}: {err}"
