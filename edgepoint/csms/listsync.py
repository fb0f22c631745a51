"""Keep the chargers' local authorization lists in step with the CSMS's id tags.

A charger that holds the site's cards in its local list decides a tap by itself
(LocalPreAuthorize) and offline: the kiosk's own charge point does so, which is what
keeps its tap fast however busy this CSMS is. A list goes to each charger when it
connects, and again whenever the id tags changed: `edgepoint cards ...` and the fleet
card sync write csms.db from other processes, which SQLite's `data_version` reveals at
the cost of one PRAGMA. Differential updates carry only what changed since the version
the charger accepted (see SiteOperator.send_local_list).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from edgepoint.csms.operator import ChargerOffline, CsmsNotRunning, SiteOperator
from edgepoint.csms.server import SiteCsms
from edgepoint.logthrottle import ThrottledLog
from edgepoint.ocppj.errors import CallErrorReceived, InvalidReply

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
# Chargers served at once, and how long one may take: a charger that never answers
# must not hold back the list of every other (the kiosk's included).
PUSH_AT_ONCE = 16
PUSH_WITHIN_S = 10.0


class LocalListSync:
    """A service of the CSMS process: pushes local lists to connected chargers."""

    def __init__(
        self, csms: SiteCsms, operator: SiteOperator, every_s: float = CHECK_EVERY_S
    ) -> None:
        self._csms = csms
        self._operator = operator
        self._every = every_s
        self._served: set[str] = set()  # connected and up to date (or not interested)
        self._data_version: int | None = None
        self._throttled = ThrottledLog(log)
        self.pushed = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            store = self._csms.store
            if store is None:
                continue
            version = await store.db.read(_data_version)
            connected = set(self._csms.connected_ids())
            if version != self._data_version:
                self._data_version = version
                self._served.clear()  # the tags may have changed: everyone is checked
            self._served &= connected  # a reconnect gets a fresh check
            slots = asyncio.Semaphore(PUSH_AT_ONCE)
            await asyncio.gather(
                *(self._push(cp, slots) for cp in sorted(connected - self._served))
            )

    async def _push(self, charge_point_id: str, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                outcome = await self._operator.send_local_list(
                    charge_point_id, full=False, timeout_s=PUSH_WITHIN_S
                )
        except (ChargerOffline, CsmsNotRunning):
            return
        except (CallErrorReceived, InvalidReply, TimeoutError) as err:
            self._throttled.log(
                logging.INFO,
                f"list {type(err).__name__}",
                "%s: local list not sent: %s",
                charge_point_id,
                type(err).__name__,
            )
            self._served.add(charge_point_id)  # not this charger's thing; retry on reconnect
            return
        self._served.add(charge_point_id)
        if outcome.sent:
            self.pushed += 1
            status = outcome.reply["status"] if outcome.reply else "?"
            log.info(
                "%s: local list %s v%d (%d entries): %s",
                charge_point_id,
                outcome.update_type,
                outcome.list_version,
                outcome.entries,
                status,
            )


def _data_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA data_version").fetchone()[0])
