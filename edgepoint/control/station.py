"""The adapter between the control API and the running charge point: its commands and events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from edgepoint.control.api import ControlApi


class StationApi(Protocol):
    """What the charge point (app.Station) offers the control socket."""

    async def status(self) -> dict[str, Any]: ...

    async def tap(self, uid: str) -> None: ...

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]: ...


def register_station(api: ControlApi, station: StationApi) -> None:
    """`status`, `tap` and the `status` event."""
    api.add_command("status", station.status, summary="connectors, sessions, links, outbox, alarms")
    api.add_command(
        "tap",
        station.tap,
        summary="present a card to the emulated PN532 (simulated hardware only)",
        required={"uid": str},
        hardware=True,
        private=("uid",),
    )
    api.add_state_event("status", station.status, station.watch)
