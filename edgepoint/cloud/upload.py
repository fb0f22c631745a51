"""Upload the ledger to each sink exactly once and in order, whatever fails and for how long.

Each sink has a cursor in edgepoint.db: the highest seq it acknowledged. The uploader
sends the entries after it, oldest first, in batches, and moves the cursor only after
the sink acknowledged them. A crash or a lost answer can therefore only make it send
again what the sink may already hold; each sink is idempotent by (station, seq):

- Realtime Database: entries go to `/ledger/<station key>/seq_<12 digits>` in one
  multi-path update per batch. After any doubt (start-up, a failed or timed-out try)
  the uploader first reads the entries at and after the cursor back and skips those
  already there with the same hash, because the fleet's rules never let an entry be
  written twice. One with another hash is a fault (two stations with one id, a
  database restored from an old backup), never overwritten.
- The HTTPS endpoint (docs/cloud.md) answers with the highest contiguous seq it holds
  and ignores entries it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgepoint.cloud.errors import CloudError, CloudFault, CloudUnavailable
from edgepoint.cloud.health import Health
from edgepoint.cloud.rtdb import Rtdb
from edgepoint.logthrottle import ThrottledLog
from edgepoint.storage.ledger import LedgerStore

log = logging.getLogger(__name__)

SEQ_DIGITS = 12
# With nothing new, look for new entries this often even if nobody wakes us.
IDLE_POLL_S = 2.0


def seq_key(seq: int) -> str:
    """The RTDB key of entry `seq`: never a bare integer (RTDB would make an array of it)."""
    return f"seq_{seq:0{SEQ_DIGITS}d}"


class LedgerSink(Protocol):
    """Where entries go; `send` returns the highest seq the sink now holds contiguously."""

    name: str

    async def send(self, entries: Sequence[dict[str, Any]], acked: int, in_doubt: bool) -> int: ...


@dataclass(frozen=True, slots=True)
class UploadStats:
    """One sink's upload as `status` shows it."""

    acked_seq: int
    uploaded: int  # entries acknowledged during this run


class LedgerUploader:
    """The supervised service that drains the ledger into one sink."""

    def __init__(self, sink: LedgerSink, store: LedgerStore, health: Health, batch: int) -> None:
        self.sink = sink
        self._store = store
        self.health = health
        self._batch = batch
        self.wake = asyncio.Event()
        self._acked = 0
        self._uploaded = 0
        self._throttled = ThrottledLog(log)

    def stats(self) -> UploadStats:
        return UploadStats(self._acked, self._uploaded)

    async def run(self) -> None:
        in_doubt = True  # a previous run may have sent what it had no time to record
        while True:
            self._acked = acked = await self._store.acked(self.sink.name)
            entries = await self._store.entries_after(acked, self._batch)
            if not entries:
                if self.health.state != "fault":
                    self.health.ok()
                await self._idle()
                continue
            try:
                held = await self.sink.send(entries, acked, in_doubt)
                if held < acked:
                    # The endpoint lost entries we had its word for: send them again.
                    await self._store.set_acked(self.sink.name, held)
                    raise CloudUnavailable(
                        f"{self.sink.name} holds only up to seq {held}: sending again from there"
                    )
                if held == acked:
                    raise CloudUnavailable(f"{self.sink.name} acknowledged nothing new")
                if held > entries[-1]["seq"]:
                    raise CloudFault(
                        f"{self.sink.name} acknowledges seq {held}, beyond the {entries[-1]['seq']}"
                        " sent: another station uses this id?"
                    )
            except CloudError as err:
                in_doubt = True
                delay = self.health.failed(err)
                self._throttled.log(logging.WARNING, self.sink.name, "ledger upload: %s", err)
                await asyncio.sleep(delay)
                continue
            await self._store.set_acked(self.sink.name, held)
            self._uploaded += held - acked
            self._acked = held
            in_doubt = False
            self.health.ok()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_POLL_S):
                await self.wake.wait()
        self.wake.clear()


class RtdbLedgerSink:
    """`/ledger/<station key>/seq_<n>` in the Realtime Database."""

    name = "rtdb"

    def __init__(self, rtdb: Rtdb, station_key: str) -> None:
        self._rtdb = rtdb
        self._path = f"ledger/{station_key}"

    async def send(self, entries: Sequence[dict[str, Any]], acked: int, in_doubt: bool) -> int:
        pending = list(entries)
        if in_doubt:
            while pending:
                there = await self._rtdb.get(f"{self._path}/{seq_key(pending[0]['seq'])}")
                if there is None:
                    break
                if not isinstance(there, dict) or there.get("hash") != pending[0]["hash"]:
                    raise CloudFault(
                        f"the Realtime Database holds another entry at {self._path}/"
                        f"{seq_key(pending[0]['seq'])}: not overwritten (two stations with one"
                        " id, or a database restored from a backup?)"
                    )
                acked = pending.pop(0)["seq"]
            if not pending:
                return acked
        await self._rtdb.update(self._path, {seq_key(e["seq"]): e for e in pending})
        return int(pending[-1]["seq"])
