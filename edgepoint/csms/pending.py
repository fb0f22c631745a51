"""Unknown charge points that tried to connect, kept for `chargers pending` / `chargers admit`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from edgepoint.csms.ids import ChargePointId

# The port SiteCsms reports an unknown charge point through: (id, source address, when).
# A storage-backed implementation upserts one row per id (see PendingChargers).
OnUnknown = Callable[[ChargePointId, str, datetime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PendingCharger:
    """An unregistered charge point id that asked to connect."""

    charge_point_id: ChargePointId
    first_seen: datetime
    last_seen: datetime
    attempts: int
    last_address: str


class PendingChargers:
    """In-memory, bounded record of unknown ids (the default `on_unknown` of SiteCsms).

    One entry per id, so a charger retrying every few seconds stays one line; at most
    `max_entries` ids, the least recently seen dropped first, so random ids from a
    scanner cannot grow it.
    """

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[ChargePointId, PendingCharger] = OrderedDict()

    async def record(self, charge_point_id: ChargePointId, address: str, at: datetime) -> None:
        """Note one attempt (the `OnUnknown` port)."""
        entry = self._entries.pop(charge_point_id, None)
        if entry is None:
            entry = PendingCharger(charge_point_id, at, at, 1, address)
        else:
            entry = replace(entry, last_seen=at, attempts=entry.attempts + 1, last_address=address)
        self._entries[charge_point_id] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def list(self) -> list[PendingCharger]:
        """Every pending id, most recently seen first."""
        return list(reversed(self._entries.values()))

    def discard(self, charge_point_id: str) -> None:
        """Drop an id (admitted or dismissed by the operator)."""
        self._entries.pop(ChargePointId(charge_point_id), None)
