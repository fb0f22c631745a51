"""Smart charging's pure core: stacking, recurring and relative schedules, validity windows,
purposes, A and W, composite schedules, installing and clearing profiles."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from edgepoint.charging.schedule import (
    MAX_COMPOSITE_S,
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
    floor_tenth,
    from_amps,
    limit_at,
    next_change,
    period_at,
)

MONDAY = datetime(2025, 3, 10, tzinfo=UTC)  # a Monday, 00:00 UTC
H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
DAY = timedelta(days=1)
ONE_PHASE = Supply(230.0, 1)
THREE_PHASE = Supply(230.0, 3)
RATED = 32.0
A, W = RateUnit.AMPS, RateUnit.WATTS
TXD, TX, CPMAX = Purpose.TX_DEFAULT, Purpose.TX, Purpose.CHARGE_POINT_MAX
RULES = ProfileRules(
    max_installed=5, max_stack_level=10, units=frozenset({A, W}), max_periods=4, connectors=2
)


def profile(
    pid: int = 1,
    *periods: tuple[int, float] | tuple[int, float, int],
    stack: int = 0,
    purpose: Purpose = TXD,
    kind: Kind = Kind.ABSOLUTE,
    unit: RateUnit = A,
    start: datetime | None = MONDAY,
    duration: int | None = None,
    recurrency: Recurrency | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    transaction_id: int | None = None,
) -> ChargingProfile:
    return ChargingProfile(
        id=pid,
        stack_level=stack,
        purpose=purpose,
        kind=kind,
        schedule=Schedule(
            unit,
            tuple(Period(*p) for p in (periods or ((0, 16.0),))),
            duration_s=duration,
            start=None if kind is Kind.RELATIVE else start,
        ),
        recurrency=recurrency,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=transaction_id,
    )


def on(connector: int, *profiles: ChargingProfile, session: str | None = None) -> list[Installed]:
    return [Installed(connector, p, session) for p in profiles]


def ctx(
    connector: int = 1,
    tx: Transaction | None = None,
    supply: Supply = ONE_PHASE,
    sharing: int = 1,
) -> Context:
    return Context(connector, supply, RATED, tx, sharing)


def amps(installed: list[Installed], at: datetime, context: Context | None = None) -> float | None:
    return limit_at(installed, context or ctx(), at).amps


SESSION = Transaction("s1", MONDAY + 5 * M, transaction_id=42)


# -- absolute -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MONDAY - S, None),  # not begun: nothing limits
        (MONDAY, 16.0),
        (MONDAY + H - S, 16.0),
        (MONDAY + H, 10.0),
        (MONDAY + 2 * H, 6.0),
        (MONDAY + 40 * DAY, 6.0),  # no duration: the last period lasts
    ],
)
def test_absolute_periods_last_until_the_next(moment: datetime, expected: float | None) -> None:
    installed = on(0, profile(1, (0, 16.0), (3600, 10.0), (7200, 6.0)))
    assert amps(installed, moment) == expected


def test_an_absolute_schedule_ends_after_its_duration() -> None:
    installed = on(0, profile(1, (0, 16.0), duration=7200))
    assert amps(installed, MONDAY + 2 * H - S) == 16.0
    assert amps(installed, MONDAY + 2 * H) is None


# -- recurring --------------------------------------------------------------------------

# Daily from Monday 22:00: 6 A until 02:00, 16 A until 06:00, then 32 A until 22:00.
NIGHTLY = profile(
    1,
    (0, 6.0),
    (4 * 3600, 16.0),
    (8 * 3600, 32.0),
    kind=Kind.RECURRING,
    recurrency=Recurrency.DAILY,
    start=MONDAY + 22 * H,
)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MONDAY + 22 * H, 6.0),
        (MONDAY + DAY - S, 6.0),  # 23:59:59
        (MONDAY + DAY, 6.0),  # midnight: the same occurrence goes on
        (MONDAY + DAY + 2 * H - S, 6.0),
        (MONDAY + DAY + 2 * H, 16.0),  # Tuesday 02:00
        (MONDAY + DAY + 6 * H, 32.0),
        (MONDAY + DAY + 22 * H - S, 32.0),
        (MONDAY + DAY + 22 * H, 6.0),  # the next occurrence
        (MONDAY + 30 * DAY + 3 * H, 16.0),  # a month later, still in step
        # Before the first startSchedule the recurrence runs backwards too.
        (MONDAY + 21 * H, 32.0),
        (MONDAY + H, 6.0),
    ],
)
def test_a_daily_schedule_repeats_across_midnight(moment: datetime, expected: float) -> None:
    assert amps(on(0, NIGHTLY), moment) == expected


def test_a_daily_schedule_with_a_duration_lets_the_lower_stack_through_after_it() -> None:
    nightly = replace(
        NIGHTLY, stack_level=1, schedule=replace(NIGHTLY.schedule, duration_s=8 * 3600)
    )
    base = profile(2, (0, 20.0), start=MONDAY - 10 * DAY)
    installed = on(0, nightly, base)
    assert amps(installed, MONDAY + DAY + 5 * H) == 16.0
    assert amps(installed, MONDAY + DAY + 6 * H) == 20.0  # 8 h after 22:00
    assert amps(installed, MONDAY + DAY + 22 * H) == 6.0


# Weekly from Monday 00:00: 32 A on weekdays, 10 A from Saturday 00:00.
WEEKLY = profile(
    1,
    (0, 32.0),
    (5 * 86_400, 10.0),
    kind=Kind.RECURRING,
    recurrency=Recurrency.WEEKLY,
    start=MONDAY,
)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MONDAY + 5 * DAY - S, 32.0),  # Friday 23:59:59
        (MONDAY + 5 * DAY, 10.0),  # Saturday 00:00
        (MONDAY + 7 * DAY - S, 10.0),  # Sunday 23:59:59
        (MONDAY + 7 * DAY, 32.0),  # the next Monday
        (MONDAY + 7 * DAY * 52 + 6 * DAY, 10.0),  # a year of weeks later, a Sunday
        (MONDAY - S, 10.0),  # the Sunday before the first occurrence
    ],
)
def test_a_weekly_schedule_repeats_across_the_week_boundary(
    moment: datetime, expected: float
) -> None:
    assert amps(on(0, WEEKLY), moment) == expected


# -- validity windows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MONDAY + H - S, 20.0),
        (MONDAY + H, 10.0),  # validFrom is inclusive
        (MONDAY + 2 * H - S, 10.0),
        (MONDAY + 2 * H, 20.0),  # validTo is exclusive
    ],
)
def test_a_profile_limits_only_inside_its_validity_window(
    moment: datetime, expected: float
) -> None:
    window = profile(1, (0, 10.0), stack=1, valid_from=MONDAY + H, valid_to=MONDAY + 2 * H)
    installed = on(0, window, profile(2, (0, 20.0)))
    assert amps(installed, moment) == expected


def test_a_recurring_profile_only_repeats_inside_its_validity_window() -> None:
    wednesday_only = replace(NIGHTLY, valid_from=MONDAY + 2 * DAY, valid_to=MONDAY + 3 * DAY)
    installed = on(0, wednesday_only)
    assert amps(installed, MONDAY + DAY + 3 * H) is None  # Tuesday
    assert amps(installed, MONDAY + 2 * DAY + 3 * H) == 16.0  # Wednesday 03:00
    assert amps(installed, MONDAY + 3 * DAY + 3 * H) is None  # Thursday


# -- relative -----------------------------------------------------------------------------

RAMP = profile(1, (0, 10.0), (600, 16.0), kind=Kind.RELATIVE)


def test_a_relative_schedule_starts_with_the_session() -> None:
    installed = on(1, RAMP)
    with_session = ctx(tx=SESSION)
    assert amps(installed, SESSION.started_at, with_session) == 10.0
    assert amps(installed, SESSION.started_at + 10 * M - S, with_session) == 10.0
    assert amps(installed, SESSION.started_at + 10 * M, with_session) == 16.0


def test_without_a_session_a_relative_schedule_is_read_from_its_first_period() -> None:
    installed = on(1, RAMP)
    for moment in (MONDAY, MONDAY + 15 * M, MONDAY + 3 * DAY):
        assert amps(installed, moment) == 10.0
    assert next_change(installed, ctx(), MONDAY) is None


# -- stack levels ----------------------------------------------------------------------


def test_the_highest_stack_level_prevails() -> None:
    installed = on(0, profile(1, (0, 16.0), stack=0), profile(2, (0, 20.0), stack=3))
    assert limit_at(installed, ctx(), MONDAY) == Limit(20.0, 1, (2,))


def test_a_higher_stack_that_has_not_begun_lets_the_lower_through() -> None:
    later = profile(2, (0, 6.0), stack=5, start=MONDAY + H)
    installed = on(0, profile(1, (0, 16.0)), later)
    assert amps(installed, MONDAY + 30 * M) == 16.0
    assert amps(installed, MONDAY + H) == 6.0


def test_at_equal_stack_the_connectors_own_default_beats_connector_zeros() -> None:
    installed = [*on(0, profile(1, (0, 10.0), stack=1)), *on(1, profile(2, (0, 8.0), stack=1))]
    assert limit_at(installed, ctx(1), MONDAY).profile_ids == (2,)
    # Another connector only sees connector 0's.
    assert amps(installed, MONDAY, ctx(2)) == 10.0


def test_a_higher_stack_on_connector_zero_beats_the_connectors_own() -> None:
    installed = [*on(0, profile(1, (0, 10.0), stack=2)), *on(1, profile(2, (0, 8.0), stack=1))]
    assert amps(installed, MONDAY) == 10.0


# -- purposes -------------------------------------------------------------------------------


def test_a_tx_profile_replaces_the_defaults_even_when_higher() -> None:
    installed = [
        *on(0, profile(1, (0, 10.0), stack=9)),
        *on(1, profile(2, (0, 16.0), purpose=TX), session="s1"),
    ]
    assert limit_at(installed, ctx(tx=SESSION), MONDAY + H) == Limit(16.0, 1, (2,))


def test_a_tx_profile_applies_to_its_own_session_only() -> None:
    installed = [
        *on(0, profile(1, (0, 10.0))),
        *on(1, profile(2, (0, 16.0), purpose=TX), session="other"),
    ]
    assert amps(installed, MONDAY + H, ctx(tx=SESSION)) == 10.0
    assert amps(installed, MONDAY + H) == 10.0  # no session at all


def test_a_tx_profile_that_ran_out_hands_back_to_the_defaults() -> None:
    installed = [
        *on(0, profile(1, (0, 10.0))),
        *on(1, profile(2, (0, 16.0), purpose=TX, kind=Kind.RELATIVE, duration=60), session="s1"),
    ]
    assert amps(installed, SESSION.started_at + 59 * S, ctx(tx=SESSION)) == 16.0
    assert amps(installed, SESSION.started_at + 60 * S, ctx(tx=SESSION)) == 10.0


@pytest.mark.parametrize(("cap", "expected", "ids"), [(12.0, 12.0, (9, 2)), (20.0, 16.0, (9, 2))])
def test_the_charge_point_max_caps_the_session_limit(
    cap: float, expected: float, ids: tuple[int, ...]
) -> None:
    installed = [
        *on(0, profile(9, (0, cap), purpose=CPMAX)),
        *on(1, profile(2, (0, 16.0), purpose=TX), session="s1"),
    ]
    assert limit_at(installed, ctx(tx=SESSION), MONDAY + H) == Limit(expected, 1, ids)


def test_the_charge_point_max_is_shared_by_the_connectors_in_session() -> None:
    installed = on(0, profile(9, (0, 20.0), purpose=CPMAX))
    assert amps(installed, MONDAY, ctx(sharing=1)) == 20.0
    assert amps(installed, MONDAY, ctx(sharing=2)) == 10.0
    # Connector 0 is the charge point as a whole: its cap undivided, no session profiles.
    whole = [*installed, *on(0, profile(1, (0, 6.0)))]
    assert amps(whole, MONDAY, ctx(0, sharing=2)) == 20.0


# -- A and W ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "phases", "supply", "expected"),
    [
        (2300.0, None, ONE_PHASE, 10.0),
        (3680.0, None, ONE_PHASE, 16.0),
        # Three phases wired, numberPhases absent (3): the power spreads over all three.
        (11040.0, None, THREE_PHASE, 16.0),
        # The period says one phase: all the power on it.
        (3680.0, 1, THREE_PHASE, 16.0),
        # The period says three, the connector has one: one it is.
        (3680.0, 3, ONE_PHASE, 16.0),
        (Supply(120.0, 1).voltage_v * 40, None, Supply(120.0, 1), 40.0),
    ],
)
def test_a_power_limit_becomes_a_current_with_the_connectors_supply(
    limit: float, phases: int | None, supply: Supply, expected: float
) -> None:
    p = profile(1, (0, limit, phases) if phases else (0, limit), unit=W)
    assert amps(on(0, p), MONDAY, ctx(supply=supply)) == pytest.approx(expected)


def test_a_current_limit_is_per_phase_whatever_the_supply() -> None:
    assert amps(on(0, profile(1, (0, 16.0))), MONDAY, ctx(supply=THREE_PHASE)) == 16.0


def test_a_power_cap_and_a_current_session_limit_compare_in_amps() -> None:
    installed = [
        *on(0, profile(9, (0, 2300.0), purpose=CPMAX, unit=W)),
        *on(1, profile(2, (0, 16.0), purpose=TX), session="s1"),
    ]
    assert limit_at(installed, ctx(tx=SESSION), MONDAY + H).amps == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (Limit(None, 1), RATED),  # nothing limits: the rating
        (Limit(40.0, 1), RATED),  # never above the rating
        (Limit(2000 / 230, 1), 8.6),  # rounded down to 0.1 A
        (Limit(6.3, 1), 6.3),  # float noise does not round 6.3 down to 6.2
        (Limit(6.0, 1), 6.0),  # the least the pilot offers
        (Limit(5.99, 1), 0.0),  # below it the car cannot charge: paused
        (Limit(1000 / 230, 1), 0.0),
        (Limit(0.05, 1), 0.0),
        (Limit(0.0, 1), 0.0),
    ],
)
def test_what_the_hardware_is_told(limit: Limit, expected: float) -> None:
    assert limit.effective_a(RATED) == expected


def test_floor_tenth_never_rounds_up_and_never_goes_negative() -> None:
    assert floor_tenth(16.09) == 16.0
    assert floor_tenth(2.3) == 2.3  # float noise does not round it down to 2.2
    assert floor_tenth(-1.0) == 0.0
    assert from_amps(16.0, W, 3, ONE_PHASE) == 16.0 * 230 * 3


# -- composite schedules ------------------------------------------------------------------


def periods(schedule_periods: tuple[Period, ...]) -> list[tuple[int, float]]:
    return [(p.start_s, p.limit) for p in schedule_periods]


def test_without_profiles_the_composite_is_the_rating() -> None:
    schedule = composite([], ctx(), MONDAY, 3600, A)
    assert (schedule.start, schedule.duration_s, schedule.unit) == (MONDAY, 3600, A)
    assert schedule.periods == (Period(0, RATED, 1),)


def test_the_composite_shows_a_profile_beginning_inside_it() -> None:
    installed = on(0, profile(1, (0, 16.0), (1800, 10.0), start=MONDAY + 10 * M))
    schedule = composite(installed, ctx(), MONDAY, 3 * 3600, A)
    assert periods(schedule.periods) == [(0, RATED), (600, 16.0), (2400, 10.0)]


def test_the_composite_of_a_daily_schedule_across_two_midnights() -> None:
    schedule = composite(on(0, NIGHTLY), ctx(), MONDAY + 20 * H, 2 * 86_400, A)
    hours = [(start // 3600, limit) for start, limit in periods(schedule.periods)]
    # From Monday 20:00: 32 A until 22:00, 6 A until 02:00, 16 A until 06:00, and again.
    assert hours == [(0, 32.0), (2, 6.0), (6, 16.0), (10, 32.0), (26, 6.0), (30, 16.0), (34, 32.0)]


def test_the_composite_of_a_weekly_schedule_across_the_week_boundary() -> None:
    schedule = composite(on(0, WEEKLY), ctx(), MONDAY + 4 * DAY, 4 * 86_400, A)
    days = [(start // 86_400, limit) for start, limit in periods(schedule.periods)]
    assert days == [(0, 32.0), (1, 10.0), (3, 32.0)]  # Fri, Sat+Sun, Mon


def test_the_composite_merges_equal_neighbours_and_follows_validity_and_stacking() -> None:
    installed = on(
        0,
        profile(1, (0, 16.0)),
        profile(2, (0, 16.0), stack=1, valid_from=MONDAY + H, valid_to=MONDAY + 2 * H),
        profile(3, (0, 8.0), stack=2, valid_from=MONDAY + 3 * H, valid_to=MONDAY + 4 * H),
    )
    schedule = composite(installed, ctx(), MONDAY, 5 * 3600, A)
    assert periods(schedule.periods) == [(0, 16.0), (3 * 3600, 8.0), (4 * 3600, 16.0)]


def test_a_composite_in_watts_converts_with_the_phases_used() -> None:
    installed = on(0, profile(1, (0, 16.0), (600, 10.0, 1)))
    schedule = composite(installed, ctx(supply=THREE_PHASE), MONDAY, 1200, W)
    assert schedule.periods == (Period(0, 11040.0, 3), Period(600, 2300.0, 1))


def test_a_composite_shows_the_sessions_relative_profile_from_its_start() -> None:
    installed = on(1, replace(RAMP, purpose=TX), session="s1")
    schedule = composite(installed, ctx(tx=SESSION), SESSION.started_at + 5 * M, 3600, A)
    assert periods(schedule.periods) == [(0, 10.0), (300, 16.0)]
    # Without the session the TxProfile is not this connector's: the rating.
    assert periods(composite(installed, ctx(), MONDAY, 3600, A).periods) == [(0, RATED)]


def test_an_idle_connectors_composite_shows_a_relative_default_from_its_start() -> None:
    schedule = composite(on(0, RAMP), ctx(), MONDAY + H, 3600, A)
    assert periods(schedule.periods) == [(0, 10.0), (600, 16.0)]


def test_a_composite_is_at_most_a_month_long() -> None:
    schedule = composite(on(0, NIGHTLY), ctx(), MONDAY, 10 * 365 * 86_400, A)
    assert schedule.duration_s == MAX_COMPOSITE_S
    assert len(schedule.periods) == 3 * 31 + 1  # Monday 00:00 starts inside 6 A's night


def test_the_composite_of_connector_zero_is_the_charge_point_cap() -> None:
    installed = [*on(0, profile(9, (0, 40.0), purpose=CPMAX)), *on(0, profile(1, (0, 6.0)))]
    assert periods(composite(installed, ctx(0), MONDAY, 60, A).periods) == [(0, 40.0)]


@pytest.mark.parametrize("seed", range(60))
def test_the_composite_agrees_with_the_limit_at_every_moment(seed: int) -> None:
    """Random stacks of every kind; the composite's period covering any moment has the
    limit (converted, rounded) that limit_at gives for that moment."""
    rng = random.Random(seed)
    start = MONDAY + rng.randrange(0, 7 * 86_400) * S
    installed: list[Installed] = []
    for pid in range(1, rng.randint(1, 6)):
        kind = rng.choice(list(Kind))
        count = rng.randint(1, 4)
        offsets = sorted(rng.sample(range(1, 86_000), count - 1))
        p = profile(
            pid,
            *((offset, float(rng.randint(0, 40))) for offset in [0, *offsets]),
            stack=rng.randint(0, 10),
            purpose=rng.choice([TXD, TXD, TX, CPMAX]),
            kind=kind,
            unit=rng.choice([A, W]),
            start=MONDAY + rng.randrange(-86_400, 3 * 86_400) * S,
            duration=rng.choice([None, rng.randint(600, 200_000)]),
            recurrency=rng.choice(list(Recurrency)) if kind is Kind.RECURRING else None,
            valid_from=rng.choice([None, start + rng.randrange(-3600, 86_400) * S]),
        )
        purpose_connector = 0 if p.purpose is CPMAX else rng.choice([0, 1])
        if p.purpose is TX:
            purpose_connector = 1
        installed.append(Installed(purpose_connector, p, "s1" if p.purpose is TX else None))
    context = ctx(
        tx=SESSION if rng.random() < 0.7 else None, supply=rng.choice([ONE_PHASE, THREE_PHASE])
    )
    if context.transaction is None:
        # Without a session a relative schedule is anchored at the composite's start.
        installed = [
            i
            for i in installed
            if i.profile.kind is not Kind.RELATIVE or i.profile.purpose is CPMAX
        ]
    unit = rng.choice([A, W])
    schedule = composite(installed, context, start, 2 * 86_400, unit)
    starts = [p.start_s for p in schedule.periods]
    assert starts == sorted(set(starts)) and starts[0] == 0
    for _ in range(150):
        offset = rng.randrange(0, 2 * 86_400)
        covering = [p for p in schedule.periods if p.start_s <= offset][-1]
        limit = limit_at(installed, context, start + offset * S)
        value = limit.amps if limit.amps is not None else RATED
        expected = floor_tenth(from_amps(value, unit, limit.phases, context.supply))
        assert (covering.limit, covering.phases) == (expected, limit.phases), offset


# -- when to look again -------------------------------------------------------------------


def test_the_next_change_is_the_next_boundary_of_any_relevant_profile() -> None:
    installed = [
        *on(0, profile(1, (0, 16.0), (3600, 10.0))),
        *on(0, profile(2, (0, 20.0), stack=1, valid_to=MONDAY + 30 * M)),
        *on(2, profile(3, (0, 6.0), stack=2, start=MONDAY + 10 * M)),  # another connector's
    ]
    assert next_change(installed, ctx(), MONDAY + M) == MONDAY + 30 * M
    assert next_change(installed, ctx(), MONDAY + 30 * M) == MONDAY + H
    assert next_change(installed, ctx(), MONDAY + H) is None


def test_the_next_change_of_a_daily_schedule_crosses_midnight() -> None:
    assert next_change(on(0, NIGHTLY), ctx(), MONDAY + 23 * H) == MONDAY + DAY + 2 * H
    assert next_change(on(0, NIGHTLY), ctx(), MONDAY + DAY + 7 * H) == MONDAY + DAY + 22 * H


def test_the_next_change_of_a_sessions_relative_profile() -> None:
    installed = on(1, replace(RAMP, purpose=TX), session="s1")
    later = next_change(installed, ctx(tx=SESSION), SESSION.started_at + M)
    assert later == SESSION.started_at + 10 * M


# -- installing ---------------------------------------------------------------------------


def as_tx(p: ChargingProfile) -> ChargingProfile:
    return replace(p, purpose=TX, kind=Kind.RELATIVE, schedule=replace(p.schedule, start=None))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (profile(1, stack=11), "stackLevel 11 is outside 0..10"),
        (profile(1, stack=-1), "outside"),
        (profile(1, (0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)), "5 periods; 1..4"),
        (profile(1, (60, 16.0)), "first period must start at 0"),
        (profile(1, (0, 16.0), (600, 10.0), (600, 8.0)), "increasing order"),
        (profile(1, (0, -1.0)), "negative"),
        (profile(1, (0, 16.0, 4)), "numberPhases"),
        (profile(1, duration=0), "duration must be positive"),
        (profile(1, valid_from=MONDAY, valid_to=MONDAY), "validTo is not after validFrom"),
        (profile(1, kind=Kind.RECURRING), "needs recurrencyKind and startSchedule"),
        (replace(NIGHTLY, schedule=replace(NIGHTLY.schedule, start=None)), "startSchedule"),
        (
            profile(1, (0, 16.0), (86_400, 8.0), kind=Kind.RECURRING, recurrency=Recurrency.DAILY),
            "must start within 86400 s",
        ),
        (profile(1, start=None), "an Absolute profile needs startSchedule"),
    ],
)
def test_a_malformed_profile_is_refused_with_the_reason(bad: ChargingProfile, reason: str) -> None:
    out = admit([], 1, bad, RULES, None)
    assert not out.accepted and reason in out.reason and out.installed == ()


def test_a_unit_the_charge_point_does_not_take_is_refused() -> None:
    amps_only = replace(RULES, units=frozenset({A}))
    out = admit([], 0, profile(1, (0, 3680.0), unit=W), amps_only, None)
    assert not out.accepted and "chargingRateUnit W" in out.reason


@pytest.mark.parametrize(
    ("connector", "p", "tx", "reason"),
    [
        (3, profile(1), None, "no connector 3"),
        (-1, profile(1), None, "no connector -1"),
        (1, profile(1, purpose=CPMAX), None, "ChargePointMaxProfile belongs on connector 0"),
        (0, as_tx(profile(1)), SESSION, "TxProfile belongs on the connector"),
        (1, as_tx(profile(1)), None, "no transaction on connector 1"),
        (1, replace(as_tx(profile(1)), transaction_id=41), SESSION, "transaction 41"),
    ],
)
def test_a_profile_in_the_wrong_place_is_refused(
    connector: int, p: ChargingProfile, tx: Transaction | None, reason: str
) -> None:
    out = admit([], connector, p, RULES, tx)
    assert not out.accepted and reason in out.reason


def test_a_tx_profile_may_name_the_transaction_before_its_confirmation_reached_us() -> None:
    unconfirmed = replace(SESSION, transaction_id=None)
    out = admit([], 1, replace(as_tx(profile(1)), transaction_id=77), RULES, unconfirmed)
    assert out.accepted and out.installed[0].session_id == "s1"


def test_a_tx_profile_belongs_to_the_running_session() -> None:
    out = admit([], 1, replace(as_tx(profile(1)), transaction_id=42), RULES, SESSION)
    assert out.accepted and out.installed == (Installed(1, out.installed[0].profile, "s1"),)


def test_a_profile_replaces_the_same_id_anywhere_and_the_same_slot() -> None:
    installed = [
        *on(0, profile(1, stack=0)),  # the same id: replaced, though on connector 0
        *on(1, profile(2, stack=3)),  # the same purpose, stack and connector: replaced
        *on(2, profile(3, stack=3)),  # another connector: kept
        *on(1, profile(4, stack=2)),  # another stack: kept
        *on(0, profile(5, stack=3, purpose=CPMAX)),  # another purpose: kept
    ]
    new = profile(1, (0, 8.0), stack=3)
    out = admit(installed, 1, new, RULES, None)
    assert out.accepted and out.replaced == (1, 2)
    assert [(i.connector_id, i.profile.id) for i in out.installed] == [
        (2, 3),
        (1, 4),
        (0, 5),
        (1, 1),
    ]


def test_no_more_profiles_than_max_installed_but_a_replacement_still_fits() -> None:
    full = on(0, *(profile(n, stack=n) for n in range(1, 6)))
    out = admit(full, 0, profile(6, stack=6), RULES, None)
    assert not out.accepted and "5 profiles installed already" in out.reason
    assert admit(full, 0, profile(3, (0, 6.0), stack=3), RULES, None).accepted


# -- clearing, and the end of a session ----------------------------------------------------

INSTALLED = [
    *on(0, profile(1, stack=0), profile(2, stack=1), profile(9, purpose=CPMAX)),
    *on(1, profile(3, stack=1)),
    *on(1, as_tx(profile(4)), session="s1"),
]


@pytest.mark.parametrize(
    ("criteria", "removed"),
    [
        ({"profile_id": 3}, [3]),
        # With an id the other criteria are ignored.
        ({"profile_id": 3, "connector_id": 0, "purpose": CPMAX}, [3]),
        ({"profile_id": 77}, []),
        ({"connector_id": 0}, [1, 2, 9]),
        ({"connector_id": 1, "purpose": TXD}, [3]),
        ({"stack_level": 1}, [2, 3]),
        ({"purpose": TX}, [4]),
        ({"connector_id": 0, "stack_level": 1, "purpose": TXD}, [2]),
        ({"connector_id": 2}, []),
        ({}, [1, 2, 9, 3, 4]),  # no criteria: everything
    ],
)
def test_clear_removes_what_matches(criteria: dict[str, object], removed: list[int]) -> None:
    kept, gone = clear(INSTALLED, **criteria)  # type: ignore[arg-type]
    assert [i.profile.id for i in gone] == removed
    assert len(kept) + len(gone) == len(INSTALLED)


def test_a_sessions_tx_profiles_end_with_it_and_learn_its_transaction_id() -> None:
    bound = bind_transaction(INSTALLED, "s1", 42)
    assert next(i for i in bound if i.profile.id == 4).profile.transaction_id == 42
    assert [i.profile.id for i in end_transaction(bound, "s1")] == [1, 2, 9, 3]
    assert end_transaction(bound, "another") == tuple(bound)


def test_period_at_reports_nothing_before_the_first_period() -> None:
    assert period_at(profile(1), MONDAY - S, MONDAY) is None
    assert period_at(profile(1), MONDAY, MONDAY) == Period(0, 16.0)
