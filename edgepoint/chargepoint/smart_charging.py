"""Smart charging on the charge point: the CSMS's profiles, each connector's limit, and that
limit carried to the ESP32 (its current limit) and to the kiosk (a pause at 0 A).

The rules are charging/schedule.py's; this module keeps the installed profiles (durably,
except TxProfiles, which end with their session), follows the sessions (the kiosk tells
it), answers SetChargingProfile, ClearChargingProfile and GetCompositeSchedule, and runs
a supervised service that re-evaluates every connector's limit when profiles change, a
session starts or stops, and at every period boundary, then:

- sends the limit to the ESP32 as the connector's current limit (in A, at most the
  rating, rounded down to 0.1 A) and keeps the value the firmware acknowledged (it may
  clamp it); a failed command is retried every `retry_s` (the serial link also sends
  standing limits again after a reconnect or an ESP32 reboot);
- tells the kiosk when the limit reaches 0 or leaves it (ChargingPaused): the connector
  reports SuspendedEVSE and the session goes on (connector.py says why the relay stays).
  A limit below the pilot's 6 A is a 0 A limit (schedule.py's MIN_PILOT_A).

Where no profile applies, the ESP32 gets the rating (`rated_a`: the interlocks'
max_current_a, at most what the command can carry), so a limit from a cleared profile
or from a previous run never lingers in the firmware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.events import ChargingPaused, Event, IdTag, SessionId
from edgepoint.charging.schedule import (
    ChargingProfile,
    Context,
    Installed,
    Kind,
    Limit,
    Period,
    ProfileRules,
    Purpose,
    RateUnit,
    Recurrency,
    Schedule,
    Supply,
    Transaction,
    admit,
    bind_transaction,
    clear,
    composite,
    end_transaction,
    limit_at,
    next_change,
    problem,
)
from edgepoint.clock import Clock, iso_utc
from edgepoint.errors import DeviceError, StorageError
from edgepoint.ocppj.endpoint import Reply
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.storage.charging_profiles import ChargingProfileStore

log = logging.getLogger(__name__)

# The longest the service sleeps without a reason: a wall clock that jumps (NTP, the
# CSMS's time adopted) is noticed within this.
MAX_SLEEP_S = 30.0
# A boundary is evaluated this long after it, so that it is surely past.
_SETTLE_S = 0.01
_UNITS = {"Current": RateUnit.AMPS, "Power": RateUnit.WATTS}


class CurrentLimiter(Protocol):
    """What smart charging needs of the ESP32 link (SerialTelemetryReader)."""

    async def set_current_limit(self, channel: int, amps: float) -> float:
        """Set a channel's limit; return the limit the firmware applied (DeviceError if not)."""
        ...


@dataclass(frozen=True, slots=True)
class Outlet:
    """A connector as smart charging sees it: its ESP32 channel and its supply."""

    connector_id: int
    channel: int
    supply: Supply = field(default_factory=Supply)


@dataclass(frozen=True, slots=True)
class LimitView:
    """A connector's limit as `status` shows it."""

    connector_id: int
    limit_a: float | None  # what the profiles say now; None: no profile applies
    commanded_a: float | None  # what was sent to the ESP32 (the rating when unlimited)
    acknowledged_a: float | None  # what the ESP32 acknowledged applying; None: not (yet)
    paused: bool  # limited to 0 A: the session is SuspendedEVSE
    profile_ids: tuple[int, ...]  # the prevailing profiles
    next_change_at: str | None  # the next period boundary (UTC), if any within 8 days
    error: str | None = None  # why the last command to the ESP32 failed


@dataclass
class _Applied:
    limit: Limit | None = None
    commanded: float | None = None
    acknowledged: float | None = None
    paused: bool = False
    error: str | None = None
    retry_at: float = 0.0
    next_change: datetime | None = None


# -- csChargingProfiles <-> ChargingProfile ------------------------------------------------


def _time(value: Any) -> datetime | None:
    return None if value is None else parse_datetime(str(value))


def profile_from_ocpp(data: Mapping[str, Any], received_at: datetime) -> ChargingProfile:
    """A schema-valid csChargingProfiles object as a ChargingProfile; an Absolute one
    without startSchedule starts at `received_at`. ValueError when it makes no sense."""
    try:
        raw = data["chargingSchedule"]
        kind = Kind(data["chargingProfileKind"])
        start = _time(raw.get("startSchedule"))
        if kind is Kind.ABSOLUTE and start is None:
            start = received_at
        schedule = Schedule(
            unit=RateUnit(raw["chargingRateUnit"]),
            periods=tuple(
                Period(int(p["startPeriod"]), float(p["limit"]), p.get("numberPhases"))
                for p in raw["chargingSchedulePeriod"]
            ),
            duration_s=raw.get("duration"),
            start=start,
            min_rate=raw.get("minChargingRate"),
        )
        recurrency = data.get("recurrencyKind")
        return ChargingProfile(
            id=int(data["chargingProfileId"]),
            stack_level=int(data["stackLevel"]),
            purpose=Purpose(data["chargingProfilePurpose"]),
            kind=kind,
            schedule=schedule,
            recurrency=None if recurrency is None else Recurrency(recurrency),
            valid_from=_time(data.get("validFrom")),
            valid_to=_time(data.get("validTo")),
            transaction_id=data.get("transactionId"),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"not a charging profile: {err!r}") from err


def profile_to_ocpp(profile: ChargingProfile) -> dict[str, Any]:
    """The csChargingProfiles object of `profile` (as stored, and as sent back)."""
    schedule = profile.schedule
    periods: list[dict[str, Any]] = []
    for period in schedule.periods:
        entry: dict[str, Any] = {"startPeriod": period.start_s, "limit": period.limit}
        if period.phases is not None:
            entry["numberPhases"] = period.phases
        periods.append(entry)
    raw: dict[str, Any] = {
        "chargingRateUnit": schedule.unit.value,
        "chargingSchedulePeriod": periods,
    }
    if schedule.duration_s is not None:
        raw["duration"] = schedule.duration_s
    if schedule.start is not None:
        raw["startSchedule"] = iso_utc(schedule.start)
    if schedule.min_rate is not None:
        raw["minChargingRate"] = schedule.min_rate
    data: dict[str, Any] = {
        "chargingProfileId": profile.id,
        "stackLevel": profile.stack_level,
        "chargingProfilePurpose": profile.purpose.value,
        "chargingProfileKind": profile.kind.value,
        "chargingSchedule": raw,
    }
    if profile.transaction_id is not None:
        data["transactionId"] = profile.transaction_id
    if profile.recurrency is not None:
        data["recurrencyKind"] = profile.recurrency.value
    if profile.valid_from is not None:
        data["validFrom"] = iso_utc(profile.valid_from)
    if profile.valid_to is not None:
        data["validTo"] = iso_utc(profile.valid_to)
    return data


class SmartCharging:
    """The charge point's charging profiles and the limits they make (see the module)."""

    def __init__(
        self,
        outlets: Sequence[Outlet],
        store: ChargingProfileStore,
        settings: Settings,
        clock: Clock,
        esp32: CurrentLimiter | None,
        publish: Callable[[Event, int], None],
        rated_a: float,
        *,
        retry_s: float = 2.0,
    ) -> None:
        if not outlets:
            raise ValueError("smart charging needs at least one connector")
        self._outlets = {outlet.connector_id: outlet for outlet in outlets}
        self._store = store
        self._settings = settings
        self._clock = clock
        self._esp32 = esp32
        self._publish = publish
        self._rated_a = rated_a
        self._retry_s = retry_s
        self._installed: tuple[Installed, ...] = ()
        self._sessions: dict[int, Transaction] = {}
        self._applied = {cid: _Applied() for cid in self._outlets}
        self._lock = asyncio.Lock()  # one SetChargingProfile/ClearChargingProfile at a time
        self._wake = asyncio.Event()
        self._unstored_drops: set[int] = set()  # replaced by a RemoteStart's TxProfile

    @property
    def installed(self) -> tuple[Installed, ...]:
        return self._installed

    async def load(self) -> None:
        """The profiles installed before this start (TxProfiles are never kept)."""
        kept: list[Installed] = []
        broken: list[int] = []
        for row in await self._store.profiles():
            try:
                if row.data is None:
                    raise ValueError(row.error)
                profile = profile_from_ocpp(row.data, self._clock.utc_now())
            except ValueError as err:
                log.error(
                    "stored charging profile %d is unreadable (%s): dropped", row.profile_id, err
                )
                broken.append(row.profile_id)
                continue
            kept.append(Installed(row.connector_id, profile))
        if broken:
            await self._store.drop(broken)
        self._installed = tuple(kept)
        if kept:
            log.info("%d charging profiles restored", len(kept))

    def rules(self) -> ProfileRules:
        return ProfileRules(
            max_installed=self._settings.integer("MaxChargingProfilesInstalled"),
            max_stack_level=self._settings.integer("ChargeProfileMaxStackLevel"),
            units=frozenset(
                _UNITS[name]
                for name in self._settings.csl("ChargingScheduleAllowedChargingRateUnit")
                if name in _UNITS
            ),
            max_periods=self._settings.integer("ChargingScheduleMaxPeriods"),
            connectors=len(self._outlets),
        )

    def context(self, connector_id: int) -> Context:
        """What connector `connector_id`'s limit depends on now (0: the charge point)."""
        outlet = self._outlets.get(connector_id) or self._outlets[min(self._outlets)]
        return Context(
            connector_id,
            outlet.supply,
            self._rated_a,
            self._sessions.get(connector_id) if connector_id else None,
            sharing=max(1, len(self._sessions)),
        )

    # -- the CSMS's requests ----------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Reply]]]:
        """The Smart Charging actions, for CommandHandler.extend."""
        return {
            "SetChargingProfile": self.set_charging_profile,
            "ClearChargingProfile": self.clear_charging_profile,
            "GetCompositeSchedule": self.get_composite_schedule,
        }

    async def set_charging_profile(self, payload: dict[str, Any]) -> Reply:
        return Reply(
            {
                "status": await self.set_profile(
                    int(payload["connectorId"]), payload["csChargingProfiles"]
                )
            }
        )

    async def clear_charging_profile(self, payload: dict[str, Any]) -> Reply:
        purpose = payload.get("chargingProfilePurpose")
        removed = await self.clear_profiles(
            payload.get("id"),
            payload.get("connectorId"),
            None if purpose is None else Purpose(purpose),
            payload.get("stackLevel"),
        )
        return Reply({"status": "Accepted" if removed else "Unknown"})

    async def get_composite_schedule(self, payload: dict[str, Any]) -> Reply:
        unit = payload.get("chargingRateUnit")
        return Reply(
            self.composite_schedule(
                int(payload["connectorId"]),
                int(payload["duration"]),
                None if unit is None else RateUnit(unit),
            )
        )

    async def set_profile(self, connector_id: int, data: Mapping[str, Any]) -> str:
        """SetChargingProfile: Accepted (stored, then in effect) or Rejected."""
        # Whole seconds: an Absolute profile given the time of receipt then has its
        # boundaries on whole seconds, like a composite schedule's startPeriods.
        now = self._clock.utc_now().replace(microsecond=0)
        try:
            profile = profile_from_ocpp(data, now)
        except ValueError as err:
            log.info("SetChargingProfile rejected: %s", err)
            return "Rejected"
        async with self._lock:
            tx = self._sessions.get(connector_id) if connector_id else None
            admission = admit(self._installed, connector_id, profile, self.rules(), tx)
            if not admission.accepted:
                log.info("SetChargingProfile %d rejected: %s", profile.id, admission.reason)
                return "Rejected"
            # Stored before answered: an Accepted profile survives a crash right after.
            keep = (
                None
                if profile.purpose is Purpose.TX
                else (connector_id, profile.id, profile_to_ocpp(profile))
            )
            await self._store.replace(admission.replaced, keep, now)
            self._installed = admission.installed
        log.info(
            "charging profile %d (%s, stack level %d) installed on connector %d",
            profile.id,
            profile.purpose,
            profile.stack_level,
            connector_id,
        )
        self._wake.set()
        return "Accepted"

    async def clear_profiles(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile: how many profiles were removed (0: Unknown)."""
        async with self._lock:
            kept, removed = clear(self._installed, profile_id, connector_id, purpose, stack_level)
            if removed:
                await self._store.drop(item.profile.id for item in removed)
                self._installed = kept
        if removed:
            log.info("charging profiles cleared: %s", ", ".join(str(i.profile.id) for i in removed))
            self._wake.set()
        return len(removed)

    def composite_schedule(
        self, connector_id: int, duration_s: int, unit: RateUnit | None
    ) -> dict[str, Any]:
        """GetCompositeSchedule.conf for the connector over the next `duration_s`."""
        if (connector_id != 0 and connector_id not in self._outlets) or duration_s < 0:
            return {"status": "Rejected"}
        # Whole seconds, as startPeriod counts them: boundaries given in whole seconds
        # (CSMSs' startSchedules) land on exact offsets.
        now = self._clock.utc_now().replace(microsecond=0)
        chosen = unit or RateUnit.AMPS  # the unit the hardware works in
        schedule = composite(self._installed, self.context(connector_id), now, duration_s, chosen)
        return {
            "status": "Accepted",
            "connectorId": connector_id,
            "scheduleStart": iso_utc(now),
            "chargingSchedule": {
                "duration": schedule.duration_s,
                "startSchedule": iso_utc(now),
                "chargingRateUnit": chosen.value,
                "chargingSchedulePeriod": [
                    {"startPeriod": p.start_s, "limit": p.limit, "numberPhases": p.phases}
                    if p.phases is not None
                    else {"startPeriod": p.start_s, "limit": p.limit}
                    for p in schedule.periods
                ],
            },
        }

    def remote_profile_problem(self, data: Mapping[str, Any]) -> str | None:
        """Why RemoteStartTransaction's chargingProfile cannot be used, or None."""
        try:
            profile = profile_from_ocpp(data, self._clock.utc_now())
        except ValueError as err:
            return str(err)
        if profile.purpose is not Purpose.TX:
            return "a RemoteStartTransaction's profile must be a TxProfile"
        if profile.transaction_id is not None:
            return "a RemoteStartTransaction's profile cannot name a transaction yet"
        return problem(profile, self.rules())

    # -- the kiosk's sessions (kiosk.SessionListener) ----------------------------------------

    def session_began(
        self,
        connector_id: int,
        session_id: SessionId,
        id_tag: IdTag,
        at: datetime,
        charging_profile: Mapping[str, Any] | None,
    ) -> None:
        tx = Transaction(session_id, at)
        self._sessions[connector_id] = tx
        if charging_profile is not None:
            self._install_remote(connector_id, charging_profile, tx)
        self._wake.set()

    def _install_remote(self, connector_id: int, data: Mapping[str, Any], tx: Transaction) -> None:
        try:
            profile = profile_from_ocpp(data, tx.started_at)
        except ValueError as err:
            log.warning("the RemoteStartTransaction's charging profile is unusable: %s", err)
            return
        admission = admit(self._installed, connector_id, profile, self.rules(), tx)
        if not admission.accepted:
            log.warning(
                "the RemoteStartTransaction's charging profile %d is refused: %s",
                profile.id,
                admission.reason,
            )
            return
        self._installed = admission.installed
        # A stored profile it replaced (same id) goes from the database in the service.
        self._unstored_drops.update(admission.replaced)
        log.info("charging profile %d applies to the remotely started session", profile.id)

    def session_ended(self, connector_id: int, session_id: SessionId) -> None:
        tx = self._sessions.get(connector_id)
        if tx is not None and tx.session_id == session_id:
            del self._sessions[connector_id]
        self._installed = end_transaction(self._installed, session_id)
        self._wake.set()

    def transaction_known(self, session_id: SessionId, transaction_id: int) -> None:
        for cid, tx in self._sessions.items():
            if tx.session_id == session_id:
                self._sessions[cid] = Transaction(tx.session_id, tx.started_at, transaction_id)
        self._installed = bind_transaction(self._installed, session_id, transaction_id)

    # -- the service ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[LimitView, ...]:
        views = []
        for cid, state in sorted(self._applied.items()):
            limit = state.limit
            views.append(
                LimitView(
                    connector_id=cid,
                    limit_a=None if limit is None or limit.amps is None else round(limit.amps, 3),
                    commanded_a=state.commanded,
                    acknowledged_a=state.acknowledged,
                    paused=state.paused,
                    profile_ids=() if limit is None else limit.profile_ids,
                    next_change_at=None
                    if state.next_change is None
                    else iso_utc(state.next_change),
                    error=state.error,
                )
            )
        return tuple(views)

    def wake(self) -> None:
        """Re-evaluate every limit now."""
        self._wake.set()

    async def run(self) -> None:
        """Apply the limits until cancelled (a supervised service)."""
        for state in self._applied.values():
            state.commanded = None  # a restarted service sends every limit again
        while True:
            self._wake.clear()
            await self._drop_replaced()
            delay = await self.apply()
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _drop_replaced(self) -> None:
        if not self._unstored_drops:
            return
        drops = set(self._unstored_drops)
        try:
            await self._store.drop(drops)
        except StorageError as err:
            log.error("cannot drop replaced charging profiles: %s", err)
            return
        self._unstored_drops -= drops

    async def apply(self) -> float:
        """Evaluate and apply every connector's limit now; return how long until the next
        evaluation is due (a boundary, a retry, or MAX_SLEEP_S)."""
        now = self._clock.utc_now()
        delay = MAX_SLEEP_S
        for cid, outlet in sorted(self._outlets.items()):
            ctx = self.context(cid)
            limit = limit_at(self._installed, ctx, now)
            state = self._applied[cid]
            state.limit = limit
            state.next_change = next_change(self._installed, ctx, now)
            commanded = limit.effective_a(self._rated_a)
            paused = limit.amps is not None and commanded <= 0
            if paused != state.paused:
                state.paused = paused
                log.info(
                    "connector %d: %s by smart charging", cid, "paused" if paused else "resumed"
                )
                self._publish(ChargingPaused(paused), cid)
            if self._esp32 is not None:
                await self._command(outlet, state, commanded)
                if state.acknowledged is None:
                    wait = state.retry_at - self._clock.monotonic()
                    delay = min(delay, max(0.05, wait))
            if state.next_change is not None:
                until = (state.next_change - now).total_seconds() + _SETTLE_S
                delay = min(delay, max(_SETTLE_S, until))
        return delay

    async def _command(self, outlet: Outlet, state: _Applied, amps: float) -> None:
        assert self._esp32 is not None
        due = state.acknowledged is None and self._clock.monotonic() >= state.retry_at
        if amps == state.commanded and not due:
            return
        state.commanded = amps
        try:
            state.acknowledged = await self._esp32.set_current_limit(outlet.channel, amps)
        except DeviceError as err:
            if state.error != str(err):
                log.warning(
                    "connector %d: current limit %.1f A not applied: %s",
                    outlet.connector_id,
                    amps,
                    err,
                )
            state.acknowledged = None
            state.error = str(err)
            state.retry_at = self._clock.monotonic() + self._retry_s
            return
        if state.error is not None:
            log.info("connector %d: current limit applied again", outlet.connector_id)
        state.error = None
        log.debug(
            "connector %d: current limit %.1f A (the ESP32 applies %.1f A)",
            outlet.connector_id,
            amps,
            state.acknowledged,
        )
