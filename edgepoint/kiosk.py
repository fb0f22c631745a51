"""The kiosk loop: routes events to the connectors' state machines and carries out their actions.

Everything that changes a connector goes through one queue and is handled one item at a
time: card taps and telemetry from the drivers, verdicts of authorizations, and the
commands the CSMS or a technician sends. So a RemoteStop can never race the tap that
stops the same session, and each outcome's writes commit in one SQLite transaction
before the relay closes.

Reservations (ReserveNow) live here too: the kiosk knows the time of day, so it ends them
at their expiry, and it places a reservation for "any connector" (connector 0) on a
connector of its own as soon as only as many connectors are free as such reservations
wait (then that connector shows Reserved). A session that uses a reservation ends it in
the transaction that stores its StartTransaction (reservationId).

After every item the interlocks (charging/faults.py) judge what the kiosk knows, and
the faults they raise or clear go to the connectors as events. A failed database write
is such a fault (the writes are kept and retried in order), never a crash. A watchdog
task beside the loop opens every relay itself when the loop stops making progress, and
the loop pings the ESP32's own watchdog only while it turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from edgepoint import journal
from edgepoint.chargepoint import messages
from edgepoint.chargepoint.authorizer import Authorizer, tag_entry
from edgepoint.charging.actions import (
    Action,
    BeginSession,
    ConnectorStatus,
    EndSession,
    Feedback,
    Indication,
    RecordMeterValues,
    ReportStatus,
    RequestAuthorization,
    SetRelay,
    Signal,
)
from edgepoint.charging.connector import ActiveSession, Connector, Outcome, Phase, same_tag
from edgepoint.charging.events import (
    AuthorizationResolved,
    AuthorizationStatus,
    AvailabilityRequested,
    Event,
    Fault,
    FaultCleared,
    FaultRaised,
    IdTag,
    RemoteStartRequested,
    ReservationEnded,
    ReservationMade,
    SessionId,
    SessionInvalidated,
    StopReason,
    StopRequested,
    TelemetrySample,
    TokenPresented,
)
from edgepoint.charging.faults import (
    ChargePointReadings,
    ConnectorReadings,
    ErrorCode,
    FaultState,
    Limits,
    assess_charge_point,
    assess_connector,
    by_severity,
    error_code,
)
from edgepoint.clock import Clock
from edgepoint.errors import StorageError
from edgepoint.redact import mask_id_tag
from edgepoint.storage.chargepoint import Change, ChargePointStore
from edgepoint.storage.reservations import Reservation, drop_reservation, save_reservation

log = logging.getLogger(__name__)

# The loop handles an item at least this often even with no input, so that its progress
# (which feeds the systemd watchdog and the ESP32's) proves it is not stuck; periodic
# work (the ESP32 watchdog ping, retrying failed writes) runs at most this often.
KIOSK_TICK_S = 1.0
# A loop without progress for this long has its relays opened by the watchdog task.
LOOP_STALL_S = 5.0
# How long a stop waits for the item in hand to finish (its commit); a database that
# takes longer is failing, and the stop goes on without it.
STEP_FINISH_S = 5.0

# Writes kept in memory while the database refuses them, at most; past it the oldest
# that are not billing (statuses, sampled meter values) are dropped, never a session's.
MAX_UNSAVED = 1_000


@dataclass(frozen=True, slots=True)
class Write:
    """One step of a transaction, kept as it is so that a failed one can be run again."""

    run: Callable[[Change], Awaitable[None]]
    billing: bool = False  # a session row, StartTransaction/StopTransaction, availability


class PanelPort(Protocol):
    """What the kiosk needs of the panel: a relay per connector, shared LEDs and buzzer."""

    def set_relay(self, connector_id: int, closed: bool, /) -> None: ...
    def is_relay_closed(self, connector_id: int) -> bool: ...
    def show(self, indication: Indication, /) -> None: ...
    def signal(self, feedback: Feedback, /) -> None: ...


class Esp32Port(Protocol):
    """What the kiosk asks of the ESP32 link besides its telemetry."""

    def ping_watchdog(self) -> None:
        """Tell the firmware the Pi is alive (it opens the relays when the pings stop).
        Must not block: queue the command and return."""
        ...

    def relay_echo(self, channel: int) -> bool | None:
        """The relay contact of this meter channel as the ESP32 last reported it;
        None when it does not report one (yet)."""
        ...

    def report_relay(self, channel: int, closed: bool) -> None:
        """Tell the firmware what the Pi commands for this channel's relay (an open one
        also releases a relay its watchdog cut). Must not block."""
        ...

    def watchdog_tripped(self, channel: int) -> bool:
        """Whether the firmware's watchdog holds this channel's relay open (latched until
        the Pi reports its own relay open)."""
        ...


class SessionListener(Protocol):
    """Who follows the sessions besides the kiosk (smart charging). Must not block."""

    def session_began(
        self,
        connector_id: int,
        session_id: SessionId,
        id_tag: IdTag,
        at: datetime,
        charging_profile: Mapping[str, Any] | None,
    ) -> None:
        """A session began; `charging_profile` is the RemoteStartTransaction's, if any."""
        ...

    def session_ended(self, connector_id: int, session_id: SessionId) -> None: ...

    def transaction_known(self, session_id: SessionId, transaction_id: int) -> None: ...


class ReaderHealth(Protocol):
    """What the kiosk asks of the RFID reader besides its taps."""

    def reader_faulted(self) -> bool:
        """True while the reader is gone or failing (no taps can be read)."""
        ...


def led_indication(phases: Iterable[Phase], csms_online: bool) -> Indication:
    """What the shared LEDs show for these connectors: the most urgent wins, and an idle
    kiosk shows whether the CSMS is reachable."""
    seen = set(phases)
    for phase, indication in (
        # A driver who just tapped looks for a sign of it, whatever the other connectors do.
        (Phase.AUTHORIZING, Indication.AUTHORIZING),
        (Phase.FAULTED, Indication.FAULT),
        (Phase.CHARGING, Indication.CHARGING),
        (Phase.FINISHING, Indication.FINISHING),
        (Phase.SUSPENDED, Indication.SUSPENDED),
        (Phase.PAUSED, Indication.SUSPENDED),
    ):
        if phase in seen:
            return indication
    # A reserved connector waits for its driver's card like a free one.
    if Phase.AVAILABLE in seen or Phase.RESERVED in seen:
        return Indication.AVAILABLE if csms_online else Indication.OFFLINE
    return Indication.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class ConnectorSetup:
    """A connector as the kiosk runs it: its state machine and the meter that feeds it."""

    id: int
    connector: Connector
    meter_channel: int = 1


# -- commands: what the CSMS and the control socket ask of the kiosk -----------------


@dataclass(frozen=True, slots=True)
class RemoteStart:
    id_tag: IdTag
    connector_id: int | None
    authorize: bool  # AuthorizeRemoteTxRequests
    # The request's chargingProfile (a TxProfile), handed to the SessionListener with the
    # session it starts.
    charging_profile: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RemoteStop:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class ChangeAvailability:
    connector_id: int  # 0: the whole charge point
    operative: bool


@dataclass(frozen=True, slots=True)
class Unlock:
    connector_id: int


@dataclass(frozen=True, slots=True)
class Reset:
    hard: bool


@dataclass(frozen=True, slots=True)
class TriggerStatus:
    connector_id: int | None  # None: connector 0 and every connector


@dataclass(frozen=True, slots=True)
class TriggerMeterValues:
    connector_id: int | None


@dataclass(frozen=True, slots=True)
class ReserveNow:
    """Answered with ReserveNow.conf's status."""

    reservation: Reservation


@dataclass(frozen=True, slots=True)
class CancelReservation:
    """Answered with True when the reservation existed (and now is gone)."""

    reservation_id: int


Command = (
    RemoteStart
    | RemoteStop
    | ChangeAvailability
    | Unlock
    | Reset
    | TriggerStatus
    | TriggerMeterValues
    | ReserveNow
    | CancelReservation
)


@dataclass(frozen=True, slots=True)
class _Tick:
    """Periodic work: judge the timers (telemetry, relay echo), ping the ESP32, retry
    failed writes; and it proves the loop turns."""


@dataclass(frozen=True, slots=True)
class _LinkChanged:
    """The CSMS link went online or offline (for the LEDs)."""

    online: bool


@dataclass(frozen=True, slots=True)
class _Confirmed:
    """The CSMS confirmed a session's StartTransaction (or its StopTransaction)."""

    session_id: SessionId
    transaction_id: int | None
    id_tag_info: Mapping[str, Any] | None
    stop: bool = False


@dataclass(slots=True)
class _Item:
    connector_id: int | None
    what: Event | Command | _Confirmed | _Tick | _LinkChanged
    reply: asyncio.Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class ConnectorSnapshot:
    """One connector as the status page shows it."""

    id: int
    phase: Phase
    status: ConnectorStatus
    operative: bool
    relay_closed: bool
    session_id: str | None
    id_tag: str | None  # masked
    transaction_id: int | None
    meter_start_wh: int | None
    last_sample: TelemetrySample | None
    telemetry_lost: bool
    faults: tuple[Fault, ...] = ()  # active, most severe first (the charge point's included)
    error_code: str = ErrorCode.NO_ERROR.value  # what its StatusNotification says
    reservation: Reservation | None = None  # held, or claimed by the card being decided


@dataclass(frozen=True, slots=True)
class KioskSnapshot:
    """Every connector, and counters."""

    connectors: tuple[ConnectorSnapshot, ...]
    events_rejected: int
    unrouted_samples: int
    # Charge-point-wide faults (reader, storage, a stalled loop), most severe first.
    faults: tuple[Fault, ...] = ()
    unsaved_writes: int = 0  # transactions' writes kept in memory since storage failed
    dropped_writes: int = 0  # kept writes dropped over MAX_UNSAVED (never billing)
    indication: Indication = Indication.AVAILABLE
    csms_online: bool = True


def new_session_id() -> SessionId:
    return SessionId(str(uuid.uuid4()))


def new_message_id() -> str:
    return uuid.uuid4().hex


async def sessions_to_resume(store: ChargePointStore) -> dict[int, ActiveSession]:
    """Sessions a previous run left open (crash, power cut), per connector, to close."""
    resumed: dict[int, ActiveSession] = {}
    for row in await store.open_sessions():
        log.warning("closing session %s left open by a previous run", row.session_id)
        resumed[row.connector_id] = ActiveSession(
            row.session_id, row.id_tag, row.meter_start_wh, row.last_reading_wh
        )
    return resumed


@dataclass
class KioskOptions:
    """What the kiosk reads from the configuration keys as it runs."""

    meter_measurands: Callable[[], tuple[str, ...]] = lambda: messages.DEFAULT_MEASURANDS
    stop_on_invalid_id: Callable[[], bool] = lambda: True
    max_energy_on_invalid_id: Callable[[], int] = lambda: 0
    outbox_budget: int = 50_000
    on_outbox: Callable[[], None] = lambda: None
    transaction_ids: dict[SessionId, int] = field(default_factory=dict)


class Kiosk:
    """Owns the connectors; the only place that turns decided actions into effects."""

    def __init__(
        self,
        connectors: list[ConnectorSetup],
        store: ChargePointStore,
        panel: PanelPort,
        authorizer: Authorizer,
        clock: Clock,
        telemetry_timeout_s: float,
        options: KioskOptions | None = None,
        *,
        limits: Limits | None = None,
        esp32: Esp32Port | None = None,
        reader: ReaderHealth | None = None,
        loop_stall_s: float = LOOP_STALL_S,
        sessions: SessionListener | None = None,
    ) -> None:
        self._setups = {setup.id: setup for setup in connectors}
        self._by_channel = {setup.meter_channel: setup.id for setup in connectors}
        self._store = store
        self._panel = panel
        self._authorizer = authorizer
        self._clock = clock
        self._limits = replace(limits or Limits(), telemetry_timeout_s=telemetry_timeout_s)
        self._esp32 = esp32
        self._reader = reader
        self._loop_stall_s = loop_stall_s
        self._options = options or KioskOptions()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._status: dict[int, ConnectorStatus] = {
            cid: setup.connector.status for cid, setup in self._setups.items()
        }
        self._error_codes: dict[int, str] = dict.fromkeys(self._setups, ErrorCode.NO_ERROR.value)
        self._operative_cp = True  # connector 0: the whole charge point
        now = clock.monotonic()
        # The interlocks: one judgement per connector, one for the charge point.
        self._faults = {cid: FaultState.watching_from(now) for cid in self._setups}
        self._cp_faults = FaultState.watching_from(now)
        self._relay_commanded = dict.fromkeys(self._setups, (False, now))
        self._relay_reported: dict[int, bool] = {}  # to the ESP32, by connector
        self._trips_seen: set[int] = set()  # connectors the ESP32's watchdog cut
        # Writes of transactions that failed (StorageError), retried in order, first.
        self._unsaved: list[Write] = []
        self._dropped = 0
        self._storage_failed = False
        self._stall_seen = False  # the watchdog found the loop stuck; not yet judged
        self._tick_queued = False
        self._last_periodic = -KIOSK_TICK_S
        self._csms_online = True
        self._indication: Indication | None = None
        self._tx_ids: dict[SessionId, int] = dict(self._options.transaction_ids)
        self._rejected = 0
        self._unrouted = 0
        self._handled = 0  # events given to connectors (watchers hear of idle ticks only then)
        self._watchers: set[Callable[[], None]] = set()
        self._authorizations: set[asyncio.Task[None]] = set()
        self._sessions = sessions
        # Accepted reservations by id, and the connector each is placed on (a connector-0
        # one only once it must be); RemoteStart profiles waiting for their session.
        self._reservations: dict[int, Reservation] = {}
        self._placed: dict[int, int] = {}
        self._remote_profiles: dict[int, tuple[IdTag, Mapping[str, Any]]] = {}
        self.last_progress = now  # monotonic time the loop last finished an item

    @property
    def connector_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._setups))

    def connector(self, connector_id: int) -> Connector:
        return self._setups[connector_id].connector

    # -- inputs --------------------------------------------------------------------

    def publish(self, event: Event, connector_id: int | None = None) -> None:
        """Hand an event to the kiosk loop; safe to call from drivers' callbacks."""
        self._queue.put_nowait(_Item(connector_id, event))

    async def submit(self, command: Command) -> Any:
        """Run a command in the kiosk loop and return its answer."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(None, command, reply))
        return await reply

    def transaction_started(
        self, session_id: SessionId, transaction_id: int, id_tag_info: Mapping[str, Any]
    ) -> None:
        """The CSMS confirmed StartTransaction (called by the outbox sender)."""
        self._queue.put_nowait(_Item(None, _Confirmed(session_id, transaction_id, id_tag_info)))

    def transaction_stopped(
        self, session_id: SessionId, id_tag_info: Mapping[str, Any] | None
    ) -> None:
        """The CSMS confirmed StopTransaction (called by the outbox sender)."""
        self._queue.put_nowait(_Item(None, _Confirmed(session_id, None, id_tag_info, stop=True)))

    def csms_online(self, online: bool) -> None:
        """The CSMS link went online or offline: the idle LEDs say which."""
        self._csms_online = online  # for the very first LEDs, before the loop turns
        self._queue.put_nowait(_Item(None, _LinkChanged(online)))

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` after every handled item; returns a function that unwatches."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    def snapshot(self) -> KioskSnapshot:
        views = []
        for cid in self.connector_ids:
            c = self.connector(cid)
            session = c.session
            tag = session.id_tag if session else c.pending_tag
            views.append(
                ConnectorSnapshot(
                    id=cid,
                    phase=c.phase,
                    status=self._status[cid],
                    operative=c.operative,
                    relay_closed=self._panel.is_relay_closed(cid),
                    session_id=session.session_id if session else None,
                    id_tag=mask_id_tag(tag) if tag else None,
                    transaction_id=self._tx_ids.get(session.session_id) if session else None,
                    meter_start_wh=session.meter_start_wh if session else None,
                    last_sample=c.last_sample,
                    telemetry_lost=Fault.TELEMETRY_LOST in c.faults,
                    faults=tuple(by_severity(c.faults)),
                    error_code=self._error_codes[cid],
                    reservation=None
                    if c.reservation_id is None
                    else self._reservations.get(c.reservation_id),
                )
            )
        return KioskSnapshot(
            tuple(views),
            self._rejected,
            self._unrouted,
            faults=tuple(by_severity(self._cp_faults.active)),
            unsaved_writes=len(self._unsaved),
            dropped_writes=self._dropped,
            indication=self._indication or Indication.AVAILABLE,
            csms_online=self._csms_online,
        )

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Process items one at a time, in arrival order, until cancelled.

        A cancellation while an item is being handled lets that item finish first: the
        connector has already moved in memory, and cutting its commit short would leave
        the database behind it (a session ended in memory, open on disk, closed as
        PowerLoss at the next start instead of with its own reason).
        """
        now = self._clock.utc_now()
        await self._commit([self._status_write(0, self._cp_status(), self._cp_error_code(), now)])
        for cid in self.connector_ids:
            await self._execute(cid, self.connector(cid).start())
        await self._place_restored()
        self._show()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch())
            while True:
                item = await self._queue.get()  # cancelled here: nothing is half done
                step = asyncio.ensure_future(self._step(item))
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STEP_FINISH_S):
                            await step
                    raise

    async def shutdown(self, reason: StopReason = StopReason.REBOOT) -> None:
        """End running sessions now (relay open, StopTransaction stored) before exiting."""
        for cid in self.connector_ids:
            c = self.connector(cid)
            if c.session is not None:
                await self._handle(cid, StopRequested(reason, immediate=True))
            self._set_relay(cid, False)
        for task in self._authorizations:
            task.cancel()
        if self._unsaved:
            log.error("exiting with %d writes the database refused: lost", len(self._unsaved))

    async def _step(self, item: _Item) -> None:
        fresh: dict[int, TelemetrySample] = {}
        handled = self._handled
        try:
            answer = await self._dispatch(item, fresh)
        except StorageError as err:
            # A failing SD card faults the charge point (relay open), it does not stop it.
            self._note_storage_failure(err)
            if item.reply is not None and not item.reply.done():
                item.reply.set_exception(err)
        except Exception as err:
            if item.reply is not None and not item.reply.done():
                item.reply.set_exception(err)
            raise  # a failing kiosk loop stops the daemon (relay open): invariant 9
        else:
            if item.reply is not None and not item.reply.done():
                item.reply.set_result(answer)
        await self._judge_faults(fresh)
        await self._place_reservations()
        self._show()
        self.last_progress = self._clock.monotonic()
        if isinstance(item.what, _Tick) and self._handled == handled:
            return  # an idle tick changed nothing a watcher shows
        # Every other item changes what a watcher shows (at least the live telemetry).
        for notify in list(self._watchers):
            notify()

    async def _dispatch(self, item: _Item, fresh: dict[int, TelemetrySample]) -> Any:
        what = item.what
        if isinstance(what, _Tick):
            self._tick_queued = False
            await self._periodic()
            return None
        if isinstance(what, _LinkChanged):
            self._csms_online = what.online
            return None
        if isinstance(what, _Confirmed):
            await self._confirmed(what)
            return None
        if isinstance(what, TokenPresented):
            await self._tap(what)
            return None
        if isinstance(what, TelemetrySample):
            cid = self._by_channel.get(what.channel)
            if cid is None:
                self._unrouted += 1  # a meter channel no connector is wired to
                return None
            fresh[cid] = what
            return await self._handle(cid, what)
        if isinstance(what, Event):
            assert item.connector_id is not None
            return await self._handle(item.connector_id, what)
        return await self._command(what)

    async def _handle(self, cid: int, event: Event, writes: Iterable[Write] = ()) -> Outcome:
        """Hand `event` to connector `cid` and carry out its actions; `writes` commit in
        the same transaction as the outcome's own. What it logs carries the connector, its
        session and transaction (journal fields: `journalctl EDGEPOINT_SESSION=...`)."""
        session = self.connector(cid).session
        sid = session.session_id if session is not None else None
        tx = self._tx_ids.get(sid) if sid is not None else None
        with journal.bound(connector_id=cid, session_id=sid, transaction_id=tx):
            return await self._handle_bound(cid, event, writes)

    async def _handle_bound(self, cid: int, event: Event, writes: Iterable[Write]) -> Outcome:
        self._handled += 1
        c = self.connector(cid)
        outcome = c.handle(event, self._clock.monotonic())
        if not outcome.accepted:
            self._rejected += 1
            log.info("connector %d: %s rejected: %s", cid, type(event).__name__, outcome.reason)
        await self._execute(cid, outcome.actions, list(writes))
        if c.phase is not Phase.AUTHORIZING:
            self._remote_profiles.pop(cid, None)  # its remote start came to nothing
        await self._lost_reservations(cid)
        return outcome

    async def _tap(self, event: TokenPresented) -> None:
        """One reader for all connectors: a card stops its own session, else starts one
        (on the connector reserved for it, else on a free one)."""
        ids = self.connector_ids
        tag = event.id_tag
        mine = [c for c in ids if (s := self.connector(c).session) and s.id_tag == tag]
        reserved = [c for c in ids if self._reserved_for(c, tag)]
        if not mine and not reserved:
            reserved = await self._place_for(tag)
        free = [c for c in ids if self.connector(c).phase is Phase.AVAILABLE]
        # Reserved for a group: the card's parent is known only once it is authorized.
        grouped = [
            c
            for c in ids
            if self.connector(c).phase is Phase.RESERVED
            and (r := self.connector(c).reservation) is not None
            and r.parent_id_tag is not None
        ]
        # No connector for it: the first one tells the driver why (busy, faulted,
        # unavailable, reserved for someone else).
        await self._handle((mine or reserved or free or grouped or [ids[0]])[0], event)

    def _reserved_for(self, cid: int, tag: IdTag) -> bool:
        c = self.connector(cid)
        return (
            c.phase is Phase.RESERVED
            and c.reservation is not None
            and same_tag(c.reservation.id_tag, tag)
        )

    # -- interlocks --------------------------------------------------------------------

    async def _judge_faults(self, fresh: Mapping[int, TelemetrySample]) -> None:
        """Let the interlocks judge what is known now; tell each connector what changed."""
        now = self._clock.monotonic()
        cp_before = self._cp_faults.active
        self._cp_faults = assess_charge_point(
            self._cp_faults,
            ChargePointReadings(
                now,
                reader_failed=self._reader is not None and self._reader.reader_faulted(),
                storage_failed=self._storage_failed,
                loop_stalled=self._stall_seen,
            ),
            self._limits,
        )
        self._stall_seen = False
        if self._cp_faults.active != cp_before:
            self._log_changes("charge point", cp_before, self._cp_faults.active)
            if error_code(cp_before) != error_code(self._cp_faults.active):
                write = self._status_write(
                    0, self._cp_status(), self._cp_error_code(), self._clock.utc_now()
                )
                await self._commit([write])
        for cid in self.connector_ids:
            setup = self._setups[cid]
            closed, changed_at = self._relay_commanded[cid]
            before = self._faults[cid].active
            self._faults[cid] = assess_connector(
                self._faults[cid],
                ConnectorReadings(
                    now,
                    sample=fresh.get(cid),
                    relay_closed=closed,
                    relay_changed_at=changed_at,
                    relay_echo=self._esp32.relay_echo(setup.meter_channel) if self._esp32 else None,
                ),
                self._limits,
            )
            self._log_changes(f"connector {cid}", before, self._faults[cid].active)
            wanted = self._faults[cid].active | self._cp_faults.active
            held = setup.connector.faults
            # Raised most severe first, so that the session's reason is the gravest one's.
            for fault in by_severity(wanted - held):
                await self._handle(cid, FaultRaised(fault))
            for fault in by_severity(held - wanted):
                await self._handle(cid, FaultCleared(fault))

    def _log_changes(self, where: str, before: frozenset[Fault], after: frozenset[Fault]) -> None:
        for fault in by_severity(after - before):
            log.error("%s: %s: relay open, no charging until it clears", where, fault)
        for fault in by_severity(before - after):
            log.warning("%s: %s cleared", where, fault)

    async def _periodic(self) -> None:
        now = self._clock.monotonic()
        if now - self._last_periodic < KIOSK_TICK_S:
            return
        self._last_periodic = now
        if self._esp32 is not None:
            # Only from here: a loop that stops turning stops the pings, and the
            # firmware then opens the relays by itself.
            self._esp32.ping_watchdog()
            self._release_tripped(self._esp32)
        if self._storage_failed:
            await self._commit([])  # the kept writes, or an empty probe transaction
        if self._reservations:
            await self._expire_reservations()

    def _release_tripped(self, esp32: Esp32Port) -> None:
        """The firmware cut a relay when the pings stopped and holds it open until the Pi
        says its own relay is open too: say so, once it is (a relay still commanded
        closed shows as a relay-mismatch fault first, which opens it)."""
        for cid, setup in self._setups.items():
            channel = setup.meter_channel
            if not esp32.watchdog_tripped(channel):
                self._trips_seen.discard(cid)
                continue
            if cid not in self._trips_seen:
                self._trips_seen.add(cid)
                log.error("connector %d: the ESP32's watchdog opened its relay", cid)
            if not self._relay_commanded[cid][0]:
                esp32.report_relay(channel, False)

    async def _watch(self) -> None:
        """Beside the loop: ticks for it, and the relays opened when it stops turning."""
        period = min(0.5, self._limits.telemetry_timeout_s / 4, self._loop_stall_s / 4)
        stalled = False
        while True:
            await asyncio.sleep(period)
            now = self._clock.monotonic()
            if now - self.last_progress > self._loop_stall_s:
                if not stalled:
                    stalled = True
                    log.critical(
                        "the kiosk loop has made no progress for %.1f s: opening every relay",
                        now - self.last_progress,
                    )
                # The loop may hang in a write before a relay closes: every time, and
                # the stall is judged (a fault) as soon as the loop turns again.
                self._stall_seen = True
                for cid in self.connector_ids:
                    self._set_relay(cid, False)
            elif stalled:
                stalled = False
                log.warning("the kiosk loop turns again")
            if not self._tick_queued:
                # One at a time: a stuck loop must not pile up ticks.
                self._tick_queued = True
                self._queue.put_nowait(_Item(None, _Tick()))

    # -- commands ----------------------------------------------------------------------

    async def _command(self, command: Command) -> Any:
        match command:
            case RemoteStart(
                id_tag=tag, connector_id=cid, authorize=authorize, charging_profile=profile
            ):
                return await self._remote_start(tag, cid, authorize, profile)
            case RemoteStop(transaction_id=tx):
                for cid in self.connector_ids:
                    session = self.connector(cid).session
                    if session is not None and self._tx_ids.get(session.session_id) == tx:
                        outcome = await self._handle(cid, StopRequested(StopReason.REMOTE))
                        return outcome.accepted
                return False
            case ChangeAvailability(connector_id=cid, operative=operative):
                return await self._change_availability(cid, operative)
            case Unlock(connector_id=cid):
                if cid not in self._setups:
                    return "NotSupported"
                if self.connector(cid).session is not None:
                    await self._handle(cid, StopRequested(StopReason.UNLOCK_COMMAND))
                # The kiosk holds no cable lock: the cable is free to be removed.
                return "Unlocked"
            case Reset(hard=hard):
                reason = StopReason.HARD_RESET if hard else StopReason.SOFT_RESET
                for cid in self.connector_ids:
                    await self._handle(cid, StopRequested(reason, immediate=hard))
                return True
            case TriggerStatus(connector_id=cid):
                now = self._clock.utc_now()
                targets = [0, *self.connector_ids] if cid is None else [cid]
                await self._commit(
                    [
                        self._status_write(0, self._cp_status(), self._cp_error_code(), now)
                        if target == 0
                        else self._status_write(
                            target, self._status[target], self._error_codes[target], now
                        )
                        for target in targets
                    ]
                )
                return True
            case TriggerMeterValues(connector_id=cid):
                return await self._trigger_meter_values(cid)
            case ReserveNow(reservation=reservation):
                return await self._reserve(reservation)
            case CancelReservation(reservation_id=rid):
                if rid not in self._reservations:
                    return False
                await self._end_reservation(rid, "cancelled")
                return True
        raise AssertionError(f"unknown command {command!r}")

    async def _remote_start(
        self,
        tag: IdTag,
        cid: int | None,
        authorize: bool,
        profile: Mapping[str, Any] | None = None,
    ) -> bool:
        if cid is None:
            ids = self.connector_ids
            reserved = [c for c in ids if self._reserved_for(c, tag)] or await self._place_for(tag)
            free = [c for c in ids if self.connector(c).phase is Phase.AVAILABLE]
            if not reserved and not free:
                return False
            cid = (reserved or free)[0]
        if cid not in self._setups:
            return False
        if profile is not None:
            # Before the event: without authorization the session begins while handling it.
            self._remote_profiles[cid] = (tag, profile)
        outcome = await self._handle(cid, RemoteStartRequested(tag, authorize))
        if not outcome.accepted:
            self._remote_profiles.pop(cid, None)
        return outcome.accepted

    # -- reservations ------------------------------------------------------------------

    async def _reserve(self, reservation: Reservation) -> str:
        """ReserveNow: Accepted, or why not (Occupied, Faulted, Unavailable, Rejected)."""
        rid, cid = reservation.reservation_id, reservation.connector_id
        if reservation.expiry <= self._clock.utc_now():
            return "Rejected"
        if cid != 0 and cid not in self._setups:
            return "Rejected"
        held = self._placed.get(rid)
        if held is not None and held == cid and rid in self._reservations:
            # The same id on the same connector: replaced in place, still Reserved.
            event = ReservationMade(rid, reservation.id_tag, reservation.parent_id_tag)
            await self._handle(cid, event, [self._reservation_write(reservation)])
            self._reservations[rid] = reservation
            return "Accepted"
        if rid in self._reservations:
            await self._end_reservation(rid, "replaced")
        targets = list(self.connector_ids) if cid == 0 else [cid]
        phases = [self.connector(t).phase for t in targets]
        free = [c for c in self.connector_ids if self.connector(c).phase is Phase.AVAILABLE]
        waiting = len(self._waiting_reservations())
        if cid == 0:
            if len(free) <= waiting:
                return self._refusal(phases)
            await self._commit([self._reservation_write(reservation)])
            self._reservations[rid] = reservation
            log.info("reservation %d accepted for any connector", rid)
            return "Accepted"
        if phases[0] is not Phase.AVAILABLE or len(free) - 1 < waiting:
            return self._refusal(phases)
        event = ReservationMade(rid, reservation.id_tag, reservation.parent_id_tag)
        outcome = await self._handle(cid, event, [self._reservation_write(reservation)])
        if not outcome.accepted:  # pragma: no cover - the phase was checked above
            return "Occupied"
        self._reservations[rid] = reservation
        self._placed[rid] = cid
        log.info("reservation %d accepted on connector %d", rid, cid)
        return "Accepted"

    def _refusal(self, phases: list[Phase]) -> str:
        if not self._operative_cp or all(p is Phase.UNAVAILABLE for p in phases):
            return "Unavailable"
        if all(p is Phase.FAULTED for p in phases):
            return "Faulted"
        return "Occupied"

    def _reservation_write(self, reservation: Reservation) -> Write:
        async def write(change: Change) -> None:
            await save_reservation(change, reservation)

        return Write(write)

    def _unreservation_write(self, reservation_id: int) -> Write:
        async def write(change: Change) -> None:
            await drop_reservation(change, reservation_id)

        return Write(write)

    async def _end_reservation(self, rid: int, why: str) -> None:
        """Cancelled, expired or replaced: forget it, and free its connector."""
        self._reservations.pop(rid, None)
        cid = self._placed.pop(rid, None)
        drop = self._unreservation_write(rid)
        log.info("reservation %d %s", rid, why)
        if cid is not None and self.connector(cid).reservation_id == rid:
            await self._handle(cid, ReservationEnded(rid), [drop])
        else:
            await self._commit([drop])

    async def _lost_reservations(self, cid: int) -> None:
        """A reservation placed on `cid` that the connector no longer holds was used (its
        session's write dropped it) or lost to a fault or Inoperative: one for this
        connector ends, one for any connector waits to be placed again."""
        held = self.connector(cid).reservation_id
        for rid, placed in list(self._placed.items()):
            if placed != cid or rid == held:
                continue
            del self._placed[rid]
            reservation = self._reservations.get(rid)
            if reservation is None or reservation.connector_id == 0:
                continue
            log.warning(
                "reservation %d ends: connector %d is %s", rid, cid, self.connector(cid).phase
            )
            del self._reservations[rid]
            await self._commit([self._unreservation_write(rid)])

    async def _place_reservations(self) -> None:
        """Keep a connector free for each reservation of any connector: once only as many
        connectors are free as such reservations wait, each takes one (Reserved)."""
        waiting = self._waiting_reservations()
        if not waiting:
            return
        free = [c for c in self.connector_ids if self.connector(c).phase is Phase.AVAILABLE]
        if len(free) > len(waiting):
            return
        for reservation, cid in zip(waiting, free, strict=False):
            await self._place(reservation, cid)

    def _waiting_reservations(self) -> list[Reservation]:
        """Reservations for any connector not placed on one yet."""
        return [
            r
            for r in self._reservations.values()
            if r.connector_id == 0 and r.reservation_id not in self._placed
        ]

    async def _place(self, reservation: Reservation, cid: int) -> bool:
        rid = reservation.reservation_id
        event = ReservationMade(rid, reservation.id_tag, reservation.parent_id_tag)
        if not (await self._handle(cid, event)).accepted:
            return False
        self._placed[rid] = cid
        log.info("reservation %d for any connector placed on connector %d", rid, cid)
        return True

    async def _place_for(self, tag: IdTag) -> list[int]:
        """The card of a waiting reservation for any connector takes a free connector
        with it, so its session uses (and ends) the reservation."""
        for reservation in self._waiting_reservations():
            if not same_tag(reservation.id_tag, tag):
                continue
            for cid in self.connector_ids:
                if self.connector(cid).phase is Phase.AVAILABLE and await self._place(
                    reservation, cid
                ):
                    return [cid]
        return []

    def restore_reservations(self, stored: Iterable[Reservation]) -> None:
        """Reservations accepted before a restart; placed when the loop starts."""
        self._reservations = {r.reservation_id: r for r in stored}

    async def _place_restored(self) -> None:
        now = self._clock.utc_now()
        for reservation in list(self._reservations.values()):
            cid = reservation.connector_id
            if reservation.expiry <= now:
                await self._end_reservation(reservation.reservation_id, "expired meanwhile")
                continue
            if cid == 0:
                continue  # placed by _place_reservations as the loop turns
            if cid in self._setups and self.connector(cid).phase is Phase.AVAILABLE:
                await self._place(reservation, cid)
            else:
                await self._end_reservation(reservation.reservation_id, "cannot be kept")

    async def _expire_reservations(self) -> None:
        now = self._clock.utc_now()
        for rid, reservation in list(self._reservations.items()):
            if reservation.expiry <= now:
                await self._end_reservation(rid, "expired")

    async def _change_availability(self, cid: int, operative: bool) -> str:
        targets = list(self.connector_ids) if cid == 0 else [cid]
        if cid != 0 and cid not in self._setups:
            return "Rejected"
        scheduled = False
        writes = [self._availability_write(target, operative) for target in targets]
        if cid == 0:
            writes.append(self._availability_write(0, operative))
        await self._commit(writes)
        if cid == 0 and self._operative_cp != operative:
            self._operative_cp = operative
            now = self._clock.utc_now()
            await self._commit(
                [self._status_write(0, self._cp_status(), self._cp_error_code(), now)]
            )
        for target in targets:
            outcome = await self._handle(target, AvailabilityRequested(operative))
            scheduled = scheduled or outcome.scheduled
        return "Scheduled" if scheduled else "Accepted"

    def restore_availability(self, stored: Mapping[int, bool]) -> None:
        """Availability set by ChangeAvailability before a restart (it persists)."""
        self._operative_cp = stored.get(0, True)

    async def _trigger_meter_values(self, cid: int | None) -> bool:
        targets = list(self.connector_ids) if cid in (None, 0) else [cid]
        if any(t not in self._setups for t in targets):
            return False
        now = self._clock.utc_now()
        writes: list[Write] = []
        for target in targets:
            c = self.connector(target)
            if c.last_sample is None:
                continue
            payload = messages.meter_values(
                target, c.last_sample, now, "Trigger", self._options.meter_measurands()
            )
            session = c.session.session_id if c.session else None
            writes.append(self._enqueue_write("MeterValues", payload, now, session))
        await self._commit(writes)
        return True

    async def _confirmed(self, confirmed: _Confirmed) -> None:
        session_id = confirmed.session_id
        if confirmed.transaction_id is not None:
            self._tx_ids[session_id] = confirmed.transaction_id
            if self._sessions is not None:
                self._sessions.transaction_known(session_id, confirmed.transaction_id)
        info = confirmed.id_tag_info
        if info is None:
            return
        entry = tag_entry(dict(info))
        for cid in self.connector_ids:
            session = self.connector(cid).session
            if session is None or session.session_id != session_id:
                continue
            await self._authorizer.remember(session.id_tag, entry)
            if confirmed.stop or entry.status is AuthorizationStatus.ACCEPTED:
                return
            log.warning("CSMS refused the card of session %s (%s)", session_id, entry.status)
            await self._handle(
                cid,
                SessionInvalidated(
                    entry.status,
                    self._options.stop_on_invalid_id(),
                    self._options.max_energy_on_invalid_id(),
                ),
            )
            return
        # The session is over (an offline one is confirmed late): its Start.conf still
        # updates the cache (§3.5.1), or a card the CSMS refused stays "unknown" offline.
        stored = await self._store.session(session_id)
        if stored is not None:
            await self._authorizer.remember(stored.id_tag, entry)

    # -- effects -----------------------------------------------------------------------

    def _set_relay(self, cid: int, closed: bool) -> None:
        if closed and self._stall_seen:
            # The loop just came back from a stall in the middle of this very step: the
            # watchdog opened the relays, and the stall fault is judged right after it.
            log.error("connector %d: relay stays open after a stalled loop", cid)
            return
        self._panel.set_relay(cid, closed)
        if self._relay_commanded[cid][0] != closed:
            self._relay_commanded[cid] = (closed, self._clock.monotonic())
        if self._esp32 is not None and self._relay_reported.get(cid) is not closed:
            self._relay_reported[cid] = closed
            self._esp32.report_relay(self._setups[cid].meter_channel, closed)

    async def _execute(
        self, cid: int, actions: tuple[Action, ...], writes: list[Write] | None = None
    ) -> None:
        """Carry out actions in order; the writes of one outcome (and `writes`) commit
        together, before the relay closes (durable before energized) and before the
        outbox is woken."""
        now = self._clock.utc_now()
        writes = writes if writes is not None else []
        metered = False

        async def flush() -> bool:
            batch = list(writes)
            writes.clear()
            return await self._commit(batch)

        for action in actions:
            match action:
                case SetRelay(closed=True):
                    if await flush():
                        self._set_relay(cid, True)
                    else:
                        # Not stored, not energized: the storage fault ends the session.
                        log.error("connector %d: session not stored: relay stays open", cid)
                case SetRelay(closed=False):
                    self._set_relay(cid, False)  # safety never waits for the disk
                case Signal(feedback=feedback):
                    self._panel.signal(feedback)
                case ReportStatus(status=status, error_code=code):
                    self._status[cid] = status
                    self._error_codes[cid] = code
                    self._show()  # the driver sees it now, not after the disk
                    writes.append(self._status_write(cid, status, code, now))
                case RequestAuthorization(id_tag=id_tag):
                    task = asyncio.create_task(self._authorize(cid, id_tag))
                    self._authorizations.add(task)
                    task.add_done_callback(self._authorizations.discard)
                case BeginSession(
                    session_id=sid, id_tag=id_tag, meter_start_wh=meter, reservation_id=rid
                ):
                    writes.append(self._begin_write(cid, sid, id_tag, meter, now, rid))
                    if rid is not None:
                        # Used: gone in the same transaction as the StartTransaction.
                        self._reservations.pop(rid, None)
                        self._placed.pop(rid, None)
                        writes.append(self._unreservation_write(rid))
                        log.info("reservation %d used on connector %d", rid, cid)
                    self._session_began(cid, action, now)
                case RecordMeterValues(session_id=sid, sample=sample):
                    writes.append(self._meter_write(cid, sid, sample, now))
                    metered = True
                case EndSession(session_id=sid):
                    log.info(
                        "connector %d: session ended (%s) at %d Wh",
                        cid,
                        action.reason,
                        action.meter_stop_wh,
                        extra=journal.fields(session_id=sid, transaction_id=self._tx_ids.get(sid)),
                    )
                    writes.append(self._end_write(action, now))
                    if self._sessions is not None:
                        self._sessions.session_ended(cid, sid)
        saved = await flush()
        if metered and saved and self._options.outbox_budget:
            # Only sampled values grow without bound while offline; over the budget they
            # are thinned (every other one), never Start or Stop.
            try:
                thinned = await self._store.thin_meter_values(self._options.outbox_budget)
            except StorageError as err:
                self._note_storage_failure(err)
            else:
                if thinned:
                    log.warning("outbox over its budget: %d sampled MeterValues thinned", thinned)

    def _session_began(self, cid: int, begin: BeginSession, now: datetime) -> None:
        """Tell the listener at once (before the relay closes: a limit applies from the
        start), with the RemoteStartTransaction's charging profile when it is this card's."""
        remote = self._remote_profiles.pop(cid, None)
        log.info(
            "connector %d: session started by card %s at %d Wh",
            cid,
            mask_id_tag(begin.id_tag),
            begin.meter_start_wh,
            extra=journal.fields(session_id=begin.session_id),
        )
        if self._sessions is not None:
            profile = remote[1] if remote and same_tag(remote[0], begin.id_tag) else None
            self._sessions.session_began(cid, begin.session_id, begin.id_tag, now, profile)

    async def _commit(self, writes: list[Write]) -> bool:
        """Run the writes in one transaction, after any kept from failed ones (so the
        outbox keeps its order). On a StorageError they are all kept for the next try and
        the charge point is faulted; True when everything is stored."""
        if not writes and not self._storage_failed:
            return True
        batch = [*self._unsaved, *writes]
        try:
            async with self._store.change() as change:
                for write in batch:
                    await write.run(change)
        except StorageError as err:
            self._unsaved = self._bounded(batch)
            self._note_storage_failure(err)
            return False
        if self._storage_failed:
            log.warning("storage works again: %d kept writes stored", len(self._unsaved))
        self._unsaved = []
        self._storage_failed = False
        if batch:
            self._options.on_outbox()
        return True

    def _bounded(self, batch: list[Write]) -> list[Write]:
        excess = len(batch) - MAX_UNSAVED
        if excess <= 0:
            return batch
        kept: list[Write] = []
        for write in batch:
            if excess > 0 and not write.billing:
                excess -= 1
                self._dropped += 1
            else:
                kept.append(write)
        log.error("storage still failing: %d kept writes dropped so far", self._dropped)
        return kept

    def _note_storage_failure(self, err: StorageError) -> None:
        if not self._storage_failed:
            log.error("storage failed: %s; charging stops until it works again", err)
        self._storage_failed = True

    def _show(self) -> None:
        phases = [self.connector(cid).phase for cid in self.connector_ids]
        indication = led_indication(phases, self._csms_online)
        if indication is not self._indication:
            self._indication = indication
            self._panel.show(indication)

    def _status_write(self, cid: int, status: ConnectorStatus, code: str, now: datetime) -> Write:
        payload = messages.status_notification(cid, status, code, now)
        return self._enqueue_write("StatusNotification", payload, now, None)

    def _enqueue_write(
        self, action: str, payload: dict[str, Any], now: datetime, session: SessionId | None
    ) -> Write:
        # The message id is minted now, so a retried write queues the same message.
        message_id = new_message_id()

        async def write(change: Change) -> None:
            await change.enqueue(action, payload, now, message_id, session)

        return Write(write)

    def _availability_write(self, cid: int, operative: bool) -> Write:
        async def write(change: Change) -> None:
            await change.set_availability(cid, operative)

        return Write(write, billing=True)

    def _begin_write(
        self,
        cid: int,
        sid: SessionId,
        id_tag: IdTag,
        meter: int,
        now: datetime,
        reservation_id: int | None = None,
    ) -> Write:
        message_id = new_message_id()

        async def write(change: Change) -> None:
            await change.begin_session(sid, cid, id_tag, meter, now)
            start = messages.start_transaction(cid, id_tag, meter, now, reservation_id)
            await change.enqueue("StartTransaction", start, now, message_id, sid)

        return Write(write, billing=True)

    def _meter_write(
        self, cid: int, sid: SessionId, sample: TelemetrySample, now: datetime
    ) -> Write:
        message_id = new_message_id()

        async def write(change: Change) -> None:
            await change.record_reading(sid, sample.energy_wh)
            values = messages.meter_values(
                cid, sample, now, measurands=self._options.meter_measurands()
            )
            await change.enqueue("MeterValues", values, now, message_id, sid)

        return Write(write)

    def _end_write(self, end: EndSession, now: datetime) -> Write:
        message_id = new_message_id()

        async def write(change: Change) -> None:
            stopped = await change.end_session(
                end.session_id, end.id_tag, end.meter_stop_wh, end.reason.value, now
            )
            if not stopped:
                log.error(
                    "session %s was already stopped; no second StopTransaction", end.session_id
                )
                return
            stop = messages.stop_transaction(end.id_tag, end.meter_stop_wh, end.reason, now)
            await change.enqueue("StopTransaction", stop, now, message_id, end.session_id)

        return Write(write, billing=True)

    def _cp_status(self) -> ConnectorStatus:
        if self._cp_faults.active:
            return ConnectorStatus.FAULTED
        return ConnectorStatus.AVAILABLE if self._operative_cp else ConnectorStatus.UNAVAILABLE

    def _cp_error_code(self) -> str:
        return error_code(self._cp_faults.active).value

    async def _authorize(self, cid: int, id_tag: IdTag) -> None:
        parent: IdTag | None = None
        try:
            verdict = await self._authorizer.authorize(id_tag)
            status, parent = verdict.status, verdict.parent_id_tag
        except asyncio.CancelledError:
            raise
        except Exception:
            # No verdict is a refusal, never a hung connector.
            log.exception("authorizing a card failed")
            status = AuthorizationStatus.INVALID
        self.publish(AuthorizationResolved(id_tag, status, parent), cid)
