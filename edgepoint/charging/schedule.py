"""Smart charging's pure core: charging profiles, their stacking, limits and composite schedules.

OCPP 1.6 §3.13 and §5.16/§5.17, read as follows (each choice is tested):

- Three purposes. A ChargePointMaxProfile (connector 0 only) caps the whole charge point;
  TxDefaultProfiles (connector 0: every connector; connector N: that one) apply to any
  session; a TxProfile belongs to one session (transaction) and, while it has a period
  in effect, replaces the TxDefaultProfiles. A connector's limit is the lower of the
  charge point's cap and its session-level limit.
- Within one purpose the profile with the highest stackLevel that is valid (validFrom <=
  t < validTo) and has a period in effect at t prevails; one whose schedule has not
  begun or has run out (duration) lets the next one down through. At equal stackLevel a
  connector's own TxDefaultProfile beats connector 0's.
- Absolute schedules start at startSchedule (the receiver fills it in with the time of
  receipt when the CSMS left it out); Recurring ones at startSchedule plus a whole number
  of days (Daily) or weeks (Weekly), also before the first startSchedule, in fixed 24 h
  steps of UTC (a schedule keeps its UTC time across daylight-saving changes; a period
  past the recurrence length never applies, and is refused). Relative ones start with the
  session; without a session they start at the moment asked about, so an idle connector
  is limited by their first period and a composite schedule shows them from its start.
  A Relative ChargePointMaxProfile has no session to start with: its first period counts.
- A TxProfile may name its transaction; a session whose StartTransaction.conf has not
  reached us yet takes whatever id the CSMS names (it can only know the one it just gave).
- A and W: a connector has a supply (nominal phase voltage, phases wired). A period's
  phases are its numberPhases (3 when absent, as §7.13 says) but never more than the
  supply has, and W = A x V x phases. Limits go to the hardware in A; they are rounded
  down to 0.1 (the ESP32's step, and OCPP's multipleOf), so never above the profile.
- With several connectors in session, the ChargePointMaxProfile is shared equally among
  them (`Context.sharing`): the cap is the charge point's, not each connector's.
- The pilot signal cannot offer less than 6 A (IEC 61851-1, SAE J1772): a limit below
  it stops the car (the ESP32 then holds a steady pilot). So the hardware is told 0 A
  for any limit under 6 A and the session pauses (SuspendedEVSE), rather than showing
  Charging while nothing flows. A composite schedule still reports the profiles' limits.
- Where no profile limits a connector, the hardware's rating (`Context.rated_a`) is the
  limit; a composite schedule reports it there. A composite of connector 0 is the charge
  point's cap (its grid connection); its startPeriods count whole seconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

# §7.13 ChargingSchedulePeriod.numberPhases: "3 will be assumed unless another number is given".
DEFAULT_PHASES = 3
# GetCompositeSchedule asks for any duration; a month of periods is already far more than
# a CSMS plans ahead, and bounds the work (and the reply) on a Pi.
MAX_COMPOSITE_S = 31 * 86_400
# How far ahead `next_change` looks for the next boundary: a weekly recurrence and a bit.
_LOOKAHEAD = timedelta(days=8)
_STEP = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}
# The lowest current the control pilot can offer (IEC 61851-1 / J1772 duty cycle 10 %).
MIN_PILOT_A = 6.0


class Purpose(StrEnum):
    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    AMPS = "A"
    WATTS = "W"


@dataclass(frozen=True, slots=True)
class Period:
    """One ChargingSchedulePeriod: from `start_s` into the schedule until the next one."""

    start_s: int
    limit: float
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A ChargingSchedule."""

    unit: RateUnit
    periods: tuple[Period, ...]
    duration_s: int | None = None
    start: datetime | None = None  # startSchedule, aware UTC
    min_rate: float | None = None  # minChargingRate: kept and reported, not acted on


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """A csChargingProfiles object."""

    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: Schedule
    recurrency: Recurrency | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None


@dataclass(frozen=True, slots=True)
class Installed:
    """A profile the charge point holds, on a connector (0: the charge point)."""

    connector_id: int
    profile: ChargingProfile
    session_id: str | None = None  # a TxProfile's session; None for the other purposes


@dataclass(frozen=True, slots=True)
class Supply:
    """How a connector is wired: nominal phase-to-neutral voltage and phases."""

    voltage_v: float = 230.0
    phases: int = 1


@dataclass(frozen=True, slots=True)
class Transaction:
    """The session running on a connector."""

    session_id: str
    started_at: datetime
    transaction_id: int | None = None  # None until the CSMS confirmed StartTransaction


@dataclass(frozen=True, slots=True)
class Context:
    """What a connector's limit depends on besides the profiles."""

    connector_id: int  # 0: the charge point as a whole (its ChargePointMaxProfile only)
    supply: Supply
    rated_a: float  # the limit where no profile applies
    transaction: Transaction | None = None
    sharing: int = 1  # connectors in session that share the ChargePointMaxProfile


@dataclass(frozen=True, slots=True)
class Limit:
    """A connector's limit at one moment."""

    amps: float | None  # None: no profile limits it (the rating applies)
    phases: int  # phases the limit is drawn on
    profile_ids: tuple[int, ...] = ()  # the prevailing profiles (cap first, then session)

    def effective_a(self, rated_a: float) -> float:
        """What the hardware is told: the limit, never above the rating, rounded down;
        0 (a pause) for a limit the pilot cannot offer (below MIN_PILOT_A)."""
        if self.amps is None:
            return floor_tenth(rated_a)
        amps = floor_tenth(min(self.amps, rated_a))
        return amps if amps >= MIN_PILOT_A else 0.0


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    """GetCompositeSchedule.conf's schedule."""

    start: datetime
    duration_s: int
    unit: RateUnit
    periods: tuple[Period, ...]


def floor_tenth(value: float) -> float:
    """Round down to 0.1 (tolerating float noise: 2.3 stays 2.3)."""
    return max(0.0, math.floor(value * 10 + 1e-6) / 10)


def phases_used(period_phases: int | None, supply: Supply) -> int:
    return max(1, min(period_phases or DEFAULT_PHASES, supply.phases))


def to_amps(limit: float, unit: RateUnit, phases: int, supply: Supply) -> float:
    if unit is RateUnit.AMPS:
        return limit
    return limit / (supply.voltage_v * phases)


def from_amps(amps: float, unit: RateUnit, phases: int, supply: Supply) -> float:
    if unit is RateUnit.AMPS:
        return amps
    return amps * supply.voltage_v * phases


# -- installing and clearing (SetChargingProfile, ClearChargingProfile) -------------------


@dataclass(frozen=True, slots=True)
class ProfileRules:
    """The configuration keys that bound what may be installed."""

    max_installed: int  # MaxChargingProfilesInstalled
    max_stack_level: int  # ChargeProfileMaxStackLevel
    units: frozenset[RateUnit]  # ChargingScheduleAllowedChargingRateUnit
    max_periods: int  # ChargingScheduleMaxPeriods
    connectors: int  # NumberOfConnectors


@dataclass(frozen=True, slots=True)
class Admission:
    """SetChargingProfile's verdict: the profiles held afterwards, and what was replaced."""

    accepted: bool
    installed: tuple[Installed, ...]
    reason: str = ""
    replaced: tuple[int, ...] = ()  # ids of profiles the new one replaced


def problem(profile: ChargingProfile, rules: ProfileRules) -> str | None:
    """Why `profile` cannot be installed on any connector, or None."""
    schedule = profile.schedule
    if not 0 <= profile.stack_level <= rules.max_stack_level:
        return f"stackLevel {profile.stack_level} is outside 0..{rules.max_stack_level}"
    if schedule.unit not in rules.units:
        return f"chargingRateUnit {schedule.unit} is not allowed"
    periods = schedule.periods
    if not 1 <= len(periods) <= rules.max_periods:
        return f"{len(periods)} periods; 1..{rules.max_periods} allowed"
    if periods[0].start_s != 0:
        return "the first period must start at 0"
    if any(b.start_s <= a.start_s for a, b in itertools.pairwise(periods)):
        return "periods must start in increasing order"
    if any(p.limit < 0 for p in periods):
        return "a limit is negative"
    if any(p.phases is not None and not 1 <= p.phases <= 3 for p in periods):
        return "numberPhases must be 1..3"
    if schedule.duration_s is not None and schedule.duration_s <= 0:
        return "duration must be positive"
    if profile.valid_from and profile.valid_to and profile.valid_to <= profile.valid_from:
        return "validTo is not after validFrom"
    if profile.kind is Kind.RECURRING:
        if profile.recurrency is None or schedule.start is None:
            return "a Recurring profile needs recurrencyKind and startSchedule"
        step = _STEP[profile.recurrency].total_seconds()
        if periods[-1].start_s >= step:
            return f"a {profile.recurrency} schedule's periods must start within {step:.0f} s"
    if profile.kind is Kind.ABSOLUTE and schedule.start is None:
        return "an Absolute profile needs startSchedule"
    return None


def admit(
    installed: Sequence[Installed],
    connector_id: int,
    profile: ChargingProfile,
    rules: ProfileRules,
    transaction: Transaction | None,
) -> Admission:
    """Install `profile` on `connector_id` (SetChargingProfile), or say why not.

    A profile replaces the one with the same chargingProfileId (on any connector), and the
    one of the same purpose and stackLevel on the same connector (for a TxProfile: of the
    same session), as §5.16.2 says.
    """
    unchanged = tuple(installed)

    def refused(reason: str) -> Admission:
        return Admission(False, unchanged, reason)

    if not 0 <= connector_id <= rules.connectors:
        return refused(f"there is no connector {connector_id}")
    why = problem(profile, rules)
    if why is not None:
        return refused(why)
    session_id: str | None = None
    if profile.purpose is Purpose.CHARGE_POINT_MAX and connector_id != 0:
        return refused("a ChargePointMaxProfile belongs on connector 0")
    if profile.purpose is Purpose.TX:
        if connector_id == 0:
            return refused("a TxProfile belongs on the connector of its transaction")
        if transaction is None:
            return refused(f"no transaction on connector {connector_id}")
        # A session whose StartTransaction.conf is still on its way to us (the CSMS may
        # send the profile right behind it) takes the id the CSMS names: it can only
        # name the one it just gave.
        known = transaction.transaction_id
        named = profile.transaction_id
        if named is not None and known is not None and named != known:
            return refused(f"transaction {named} is not the one running")
        session_id = transaction.session_id
    new = Installed(connector_id, profile, session_id)
    kept: list[Installed] = []
    replaced: list[int] = []
    for old in installed:
        same_slot = (
            old.connector_id == connector_id
            and old.profile.purpose is profile.purpose
            and old.profile.stack_level == profile.stack_level
            and old.session_id == session_id
        )
        if old.profile.id == profile.id or same_slot:
            replaced.append(old.profile.id)
        else:
            kept.append(old)
    if len(kept) + 1 > rules.max_installed:
        return refused(f"{rules.max_installed} profiles installed already")
    return Admission(True, (*kept, new), replaced=tuple(replaced))


def clear(
    installed: Sequence[Installed],
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: Purpose | None = None,
    stack_level: int | None = None,
) -> tuple[tuple[Installed, ...], tuple[Installed, ...]]:
    """ClearChargingProfile: (kept, removed). With an id only that profile goes (the other
    criteria are then ignored); else every profile matching all the criteria given, which
    is every profile when none is given."""
    if profile_id is not None:

        def match(item: Installed) -> bool:
            return item.profile.id == profile_id

    else:

        def match(item: Installed) -> bool:
            return (
                (connector_id is None or item.connector_id == connector_id)
                and (purpose is None or item.profile.purpose is purpose)
                and (stack_level is None or item.profile.stack_level == stack_level)
            )

    kept = tuple(item for item in installed if not match(item))
    removed = tuple(item for item in installed if match(item))
    return kept, removed


def end_transaction(installed: Sequence[Installed], session_id: str) -> tuple[Installed, ...]:
    """The profiles left once a session ended: its TxProfiles go with it (§3.13.3)."""
    return tuple(item for item in installed if item.session_id != session_id)


def bind_transaction(
    installed: Sequence[Installed], session_id: str, transaction_id: int
) -> tuple[Installed, ...]:
    """Record the transactionId the CSMS gave a session in its TxProfiles."""
    return tuple(
        replace(item, profile=replace(item.profile, transaction_id=transaction_id))
        if item.session_id == session_id and item.profile.transaction_id is None
        else item
        for item in installed
    )


# -- evaluating -----------------------------------------------------------------------


def _origin(profile: ChargingProfile, at: datetime, relative_start: datetime) -> datetime | None:
    """When the occurrence of the schedule that covers `at` began."""
    schedule = profile.schedule
    if profile.kind is Kind.RELATIVE:
        return relative_start
    if profile.kind is Kind.ABSOLUTE:
        return schedule.start
    if schedule.start is None or profile.recurrency is None:
        return None
    step = _STEP[profile.recurrency]
    return schedule.start + step * ((at - schedule.start) // step)


def period_at(profile: ChargingProfile, at: datetime, relative_start: datetime) -> Period | None:
    """The period of `profile` in effect at `at`, or None (not valid, not begun, run out)."""
    if profile.valid_from is not None and at < profile.valid_from:
        return None
    if profile.valid_to is not None and at >= profile.valid_to:
        return None
    origin = _origin(profile, at, relative_start)
    if origin is None or at < origin:
        return None
    offset = (at - origin).total_seconds()
    duration = profile.schedule.duration_s
    if duration is not None and offset >= duration:
        return None
    found: Period | None = None
    for period in profile.schedule.periods:
        if period.start_s > offset:
            break
        found = period
    return found


def _prevailing(
    candidates: Iterable[Installed], at: datetime, relative_start: datetime
) -> tuple[Installed, Period] | None:
    ranked = sorted(
        candidates,
        key=lambda item: (item.profile.stack_level, item.connector_id != 0),
        reverse=True,
    )
    for item in ranked:
        period = period_at(item.profile, at, relative_start)
        if period is not None:
            return item, period
    return None


def _groups(
    installed: Sequence[Installed], ctx: Context
) -> tuple[list[Installed], list[Installed], list[Installed]]:
    """(charge point caps, this session's TxProfiles, TxDefaultProfiles) for the connector."""
    caps = [i for i in installed if i.profile.purpose is Purpose.CHARGE_POINT_MAX]
    if ctx.connector_id == 0:
        return caps, [], []
    tx = ctx.transaction
    own = [
        i
        for i in installed
        if i.profile.purpose is Purpose.TX
        and i.connector_id == ctx.connector_id
        and tx is not None
        and i.session_id == tx.session_id
    ]
    defaults = [
        i
        for i in installed
        if i.profile.purpose is Purpose.TX_DEFAULT and i.connector_id in (0, ctx.connector_id)
    ]
    return caps, own, defaults


def _limit(
    installed: Sequence[Installed], ctx: Context, at: datetime, relative_start: datetime
) -> Limit:
    caps, own, defaults = _groups(installed, ctx)
    cap = _prevailing(caps, at, at)  # the charge point's cap has no session to start with
    session = _prevailing(own, at, relative_start) or _prevailing(defaults, at, relative_start)
    amps: float | None = None
    phases = ctx.supply.phases
    ids: list[int] = []
    for found, share in ((cap, max(1, ctx.sharing) if ctx.connector_id else 1), (session, 1)):
        if found is None:
            continue
        item, period = found
        used = phases_used(period.phases, ctx.supply)
        value = to_amps(period.limit, item.profile.schedule.unit, used, ctx.supply) / share
        ids.append(item.profile.id)
        if amps is None or value < amps or (value == amps and used < phases):
            amps, phases = value, used
    return Limit(amps, phases, tuple(ids))


def _relative_start(ctx: Context, fallback: datetime) -> datetime:
    return ctx.transaction.started_at if ctx.transaction is not None else fallback


def limit_at(installed: Sequence[Installed], ctx: Context, at: datetime) -> Limit:
    """The connector's limit at `at`."""
    return _limit(installed, ctx, at, _relative_start(ctx, at))


def _boundaries(
    item: Installed, low: datetime, high: datetime, relative_start: datetime | None
) -> set[datetime]:
    """Moments in (low, high) at which `item` may start or stop limiting, or change.
    `relative_start` None: a Relative profile read from its first period at every moment
    (only its validity window has edges)."""
    profile = item.profile
    schedule = profile.schedule
    times: set[datetime] = set()
    for edge in (profile.valid_from, profile.valid_to):
        if edge is not None:
            times.add(edge)
    origins: list[datetime] = []
    if profile.kind is Kind.RELATIVE and relative_start is None:
        pass
    elif profile.kind is Kind.RECURRING:
        first = _origin(profile, low, low)
        if first is not None and profile.recurrency is not None:
            step = _STEP[profile.recurrency]
            origin = first
            while origin < high:
                origins.append(origin)
                origin += step
            origins.append(origin)
    else:
        only = _origin(profile, low, relative_start or low)
        if only is not None:
            origins.append(only)
    for origin in origins:
        times.update(origin + timedelta(seconds=p.start_s) for p in schedule.periods)
        if schedule.duration_s is not None:
            times.add(origin + timedelta(seconds=schedule.duration_s))
    return {t for t in times if low < t < high}


def _relevant(installed: Sequence[Installed], ctx: Context) -> list[Installed]:
    caps, own, defaults = _groups(installed, ctx)
    return [*caps, *own, *defaults]


def next_change(installed: Sequence[Installed], ctx: Context, after: datetime) -> datetime | None:
    """The first moment after `after` at which the connector's limit may change; None when
    nothing is scheduled within the next eight days. Relative profiles of an idle
    connector never change (they are read from their first period)."""
    found: datetime | None = None
    for item in _relevant(installed, ctx):
        anchored = (
            ctx.transaction is not None and item.profile.purpose is not Purpose.CHARGE_POINT_MAX
        )
        relative_start = ctx.transaction.started_at if anchored and ctx.transaction else None
        for moment in _boundaries(item, after, after + _LOOKAHEAD, relative_start):
            if found is None or moment < found:
                found = moment
    return found


def composite(
    installed: Sequence[Installed],
    ctx: Context,
    start: datetime,
    duration_s: int,
    unit: RateUnit,
) -> CompositeSchedule:
    """GetCompositeSchedule: the connector's limits from `start` for `duration_s` (at most
    MAX_COMPOSITE_S), in `unit`, as periods that each last until the next.

    startPeriod counts whole seconds: boundaries within one second collapse into the last
    of them. Without a session, Relative profiles are shown as if one began at `start`.
    """
    duration_s = max(0, min(duration_s, MAX_COMPOSITE_S))
    end = start + timedelta(seconds=duration_s)
    relative_start = _relative_start(ctx, start)
    moments = {start}
    for item in _relevant(installed, ctx):
        # The charge point's cap is read from its first period at every moment.
        cap = item.profile.purpose is Purpose.CHARGE_POINT_MAX
        moments |= _boundaries(item, start, end, None if cap else relative_start)
    periods: list[Period] = []
    for moment in sorted(moments):
        limit = _limit(installed, ctx, moment, relative_start)
        amps = limit.amps if limit.amps is not None else ctx.rated_a
        value = floor_tenth(from_amps(amps, unit, limit.phases, ctx.supply))
        period = Period(int((moment - start).total_seconds()), value, limit.phases)
        if periods and periods[-1].start_s == period.start_s:
            periods[-1] = period  # within the same second: the later one counts
        else:
            periods.append(period)
    merged: list[Period] = []
    for period in periods:
        if merged and (merged[-1].limit, merged[-1].phases) == (period.limit, period.phases):
            continue
        merged.append(period)
    return CompositeSchedule(start, duration_s, unit, tuple(merged))
