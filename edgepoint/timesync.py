"""Keeps the daemon's time honest: provisional epochs, their correction, the last trusted time.

`clock.SystemClock` stamps provisional time until the time is known. This module gives
it a start that survives restarts and reboots, and corrects what was stamped:

- `clock.json` in the state folder holds the last trusted time (written every few minutes
  while trusted and at stop) and the open provisional epoch: its start, the boot it
  belongs to and the row ids of edgepoint.db then (`storage.stamps.Marks`).
- A restart within the same boot (watchdog, crash, OCPP Reset) continues the same epoch:
  CLOCK_MONOTONIC runs on across processes, so one offset corrects both runs' stamps.
- After a reboot the old epoch can no longer be corrected (its monotonic base is gone);
  the ledger events it captured are flagged so that they are signed with the signing
  time, never as if their stamp were trusted.
- A new epoch starts at the later of the system clock (fake-hwclock's restored time) and
  the last trusted time, never before clock.EARLIEST_PLAUSIBLE: never 1970.
- When the kernel reports NTP synchronisation or the CSMS's currentTime is applied,
  `TimeKeeper` moves the epoch's stamps by the offset and switches the clock in the same
  transaction, then sweeps once more for stamps taken just before the switch and
  written just after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite

from edgepoint.clock import EARLIEST_PLAUSIBLE, Epoch, Switch, SystemClock, iso_utc
from edgepoint.config import Config
from edgepoint.errors import StorageError
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.stamps import Marks, StampRepository, correct_rows

log = logging.getLogger(__name__)

STATE_FILE = "clock.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# How often the keeper looks for a switch, and how often a trusted time is saved.
STEP_S = 1.0
SAVE_EVERY_S = 600.0
# Stamps taken before the switch and written after it are corrected for this long.
SWEEP_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """An open provisional epoch as clock.json keeps it."""

    boot_id: str | None
    wall: datetime
    mono: float
    marks: Marks | None  # None until the keeper read them (before anything was written)

    def as_dict(self) -> dict[str, Any]:
        return {
            "boot_id": self.boot_id,
            "wall": iso_utc(self.wall),
            "mono": self.mono,
            "marks": None if self.marks is None else self.marks.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        marks = data.get("marks")
        return cls(
            boot_id=data.get("boot_id"),
            wall=datetime.fromisoformat(data["wall"]),
            mono=float(data["mono"]),
            marks=None if marks is None else Marks.from_dict(marks),
        )


@dataclass(frozen=True, slots=True)
class ClockState:
    """What clock.json holds."""

    last_trusted: datetime | None = None
    epoch: EpochRecord | None = None  # open (not yet corrected) provisional epoch
    stale: tuple[EpochRecord, ...] = ()  # epochs of earlier boots, still to be flagged


def current_boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def load_state(path: Path) -> ClockState:
    """Read clock.json; a missing or unreadable file is a fresh start (and said so)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        last = data.get("last_trusted")
        epoch = data.get("epoch")
        return ClockState(
            last_trusted=datetime.fromisoformat(last) if last else None,
            epoch=EpochRecord.from_dict(epoch) if epoch else None,
            stale=tuple(EpochRecord.from_dict(e) for e in data.get("stale", [])),
        )
    except FileNotFoundError:
        return ClockState()
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s is unreadable (%s): starting without a last trusted time", path, err)
        return ClockState()


def save_state(path: Path, state: ClockState) -> None:
    """Write clock.json atomically (temp file, fsync, rename): a power cut leaves either."""
    data = {
        "last_trusted": None if state.last_trusted is None else iso_utc(state.last_trusted),
        "epoch": None if state.epoch is None else state.epoch.as_dict(),
        "stale": [e.as_dict() for e in state.stale],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def start_clock(
    state_path: Path, *, trust_rtc: bool, boot_id: str | None = None, **clock_kw: Any
) -> tuple[SystemClock, ClockState]:
    """The daemon's clock (held switches), continuing this boot's provisional epoch."""
    state = load_state(state_path)
    boot = boot_id if boot_id is not None else current_boot_id()
    probe = SystemClock(trust_system=trust_rtc, hold=True, **clock_kw)
    open_epoch, stale = state.epoch, list(state.stale)
    if open_epoch is not None and (boot is None or open_epoch.boot_id != boot):
        stale.append(open_epoch)  # an earlier boot's: its monotonic base is gone
        open_epoch = None
    if trust_rtc or (probe.synced and open_epoch is None):
        if open_epoch is not None:
            stale.append(open_epoch)  # trust_rtc was switched on: nothing to correct by
        return probe, ClockState(state.last_trusted, None, tuple(stale))
    if open_epoch is None:
        floor = max(EARLIEST_PLAUSIBLE, state.last_trusted or EARLIEST_PLAUSIBLE)
        start = probe.provisional_now()
        open_epoch = EpochRecord(boot, max(start, floor), probe.epoch.mono, None)
        log.warning(
            "wall clock not synchronised: provisional time from %s (system clock %s)",
            iso_utc(open_epoch.wall),
            iso_utc(start),
        )
    else:
        # This boot's epoch, left by a run that ended before the time was known: the
        # monotonic clock runs on, so the same offset corrects that run's stamps too.
        log.warning("continuing this boot's provisional time from %s", iso_utc(open_epoch.wall))
    clock = SystemClock(
        trust_system=trust_rtc,
        hold=True,
        epoch=Epoch(open_epoch.wall, open_epoch.mono),
        start_provisional=True,
        **clock_kw,
    )
    return clock, ClockState(state.last_trusted, open_epoch, tuple(stale))


@dataclass(slots=True)
class _Late:
    """After a switch: where late provisional stamps may still appear, and how to move them."""

    marks: Marks
    window: tuple[datetime, datetime]
    offset: timedelta
    until: float


class TimeKeeper:
    """Supervised service: corrects provisional stamps, switches the clock, saves the time."""

    def __init__(
        self, clock: SystemClock, store: ChargePointStore, state_path: Path, state: ClockState
    ) -> None:
        self._clock = clock
        self._store = store
        self._stamps = StampRepository(store.db)
        self._path = state_path
        self._state = state
        self._saved_at: float | None = None
        self._late: _Late | None = None
        self._switching: asyncio.Task[None] | None = None
        self.corrections = 0  # rows moved, for status and tests
        self.flagged = 0  # ledger events of earlier boots flagged as provisional

    @classmethod
    async def open(
        cls, clock: SystemClock, store: ChargePointStore, state_path: Path, state: ClockState
    ) -> TimeKeeper:
        """Before anything is written: record the epoch's marks, flag earlier boots' events."""
        keeper = cls(clock, store, state_path, state)
        for stale in state.stale:
            if stale.marks is not None:
                keeper.flagged += await keeper._stamps.mark_provisional(stale.marks)
        if keeper.flagged:
            log.warning(
                "%d ledger event(s) were stamped before a reboot with an unsynchronised"
                " clock: they are signed with the signing time",
                keeper.flagged,
            )
        epoch = state.epoch
        if epoch is not None and epoch.marks is None:
            epoch = EpochRecord(epoch.boot_id, epoch.wall, epoch.mono, await keeper._stamps.marks())
        keeper._state = ClockState(state.last_trusted, epoch, ())
        await asyncio.to_thread(keeper._save)
        return keeper

    def adopt(self, moment: datetime) -> bool:
        """The CSMS link's currentTime (BootNotification, Heartbeat): the clock may take it.

        The correction starts at once, as a task created before the link reports itself
        online: it takes the database lock first (asyncio runs tasks in the order they
        were scheduled, and the lock queues fairly), so the outbox sender, woken by the
        link going online, reads the queue only once it is corrected.
        """
        if not self._clock.adopt(moment):
            return False
        if self._switching is None or self._switching.done():
            self._switching = asyncio.get_running_loop().create_task(self._switch_pending())
        return True

    async def _switch_pending(self) -> None:
        switch = self._clock.pending_switch()
        if switch is not None:
            await self._switch(switch)

    async def run(self) -> None:
        try:
            while True:
                if self._switching is not None:
                    # A correction started by `adopt`; its failure is the keeper's.
                    switching, self._switching = self._switching, None
                    await switching
                await self.step()
                await asyncio.sleep(STEP_S)
        finally:
            self._store.before_commit = None
            if self._switching is not None:
                self._switching.cancel()
            # Cancelled at stop: the last trusted time is the best start for the next run.
            with contextlib.suppress(OSError):
                self._remember_now()

    async def step(self) -> None:
        """Switch when the time became known; sweep late stamps; save now and then."""
        # The last sweep first: it is due a step after the switch at the earliest.
        if self._late is not None and self._clock.monotonic() >= self._late.until:
            async with self._store.db.write() as db:
                await self._correct_late(db)
            self._late = None
            self._store.before_commit = None
        switch = self._clock.pending_switch()
        if switch is not None:
            await self._switch(switch)
        if self._clock.synced and (
            self._saved_at is None or self._clock.monotonic() - self._saved_at >= SAVE_EVERY_S
        ):
            await asyncio.to_thread(self._remember_now)

    async def _switch(self, switch: Switch) -> None:
        epoch = self._state.epoch
        since = epoch.marks if epoch is not None and epoch.marks is not None else None
        if since is None:
            self._clock.apply(switch)  # nothing recorded to correct (no epoch marks)
            return
        try:
            corrected = await self._stamps.correct(
                since,
                (switch.epoch.wall, switch.provisional_now),
                switch.offset,
                before_commit=lambda: self._clock.apply(switch),
            )
        except StorageError as err:
            self._clock.undo(switch)
            log.error("provisional stamps not corrected (%s): trying again", err)
            return
        moved = corrected.outbox + corrected.sessions + corrected.ledger_events
        self.corrections += moved
        log.warning(
            "time known (%s): %d outbox message(s), %d session(s), %d ledger event(s),"
            " %d security log entr(ies) moved by %+.3f s",
            switch.source,
            corrected.outbox,
            corrected.sessions,
            corrected.ledger_events,
            corrected.security_log,
            switch.offset.total_seconds(),
        )
        # A stamp taken just before the switch may be written just after it: every
        # change() corrects its own rows before it commits, for a while, and a last sweep
        # catches writes made elsewhere. Only when trusted time is ahead of provisional
        # time can a late provisional stamp be told from a trusted one by its value.
        if switch.offset > timedelta(0):
            self._late = _Late(
                corrected.marks,
                (switch.epoch.wall, switch.provisional_now),
                switch.offset,
                self._clock.monotonic() + SWEEP_AFTER_S,
            )
            self._store.before_commit = self._correct_late
        self._state = ClockState(self._state.last_trusted, None, ())
        await asyncio.to_thread(self._remember_now)

    async def _correct_late(self, db: aiosqlite.Connection) -> None:
        """Rows written since the last look, inside the caller's transaction."""
        late = self._late
        if late is None:
            return
        corrected = await correct_rows(db, late.marks, late.window, late.offset)
        late.marks = corrected.marks
        moved = corrected.outbox + corrected.sessions + corrected.ledger_events
        if moved:
            self.corrections += moved
            log.warning("%d late provisional stamp(s) corrected", moved)

    def _remember_now(self) -> None:
        if self._clock.synced:
            self._state = ClockState(self._clock.utc_now(), self._state.epoch, self._state.stale)
        self._save()

    def _save(self) -> None:
        save_state(self._path, self._state)
        self._saved_at = self._clock.monotonic()


def is_own_csms(config: Config) -> bool:
    """Whether the charge point's CSMS is the embedded one: its time is this Pi's own clock.

    Its currentTime must never make our clock "synchronised": it is the same unsynchronised
    system clock seen through a socket.
    """
    if not config.csms.enabled:
        return False
    parts = urlsplit(config.chargepoint.csms_url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return loopback and port == config.csms.port
