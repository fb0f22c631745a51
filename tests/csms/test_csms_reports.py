"""Site queries (chargers, transactions, health) on real csms.db files, retention, the schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from csms_fixtures import clock_fixture, running_fixture  # noqa: F401  (fixtures)
from csms_support import CP_ID, FakeClock, RunningCsms
from scripted_charger import scripted_charger

from edgepoint.csms.db import CsmsStore
from edgepoint.csms.health import StatusChange, score_health, service_share
from edgepoint.csms.records import AuthorizationStatus, MeterSample
from edgepoint.csms.reports import Retention, RetentionPolicy, SiteReports, jsonable
from edgepoint.csms.schema import MIGRATIONS
from edgepoint.csms.site_records import ChargerView
from edgepoint.storage.worker import SqliteWorker

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
KEY = "0123456789abcdef0123"


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def text(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(name="store")
async def store_fixture(tmp_path: Path) -> AsyncIterator[CsmsStore]:
    """csms.db with every migration."""
    worker = await SqliteWorker.open(tmp_path / "csms.db", MIGRATIONS)
    store = CsmsStore(worker, FakeClock(NOW), auth_iterations=1_000)
    try:
        yield store
    finally:
        await store.close()


async def status(
    store: CsmsStore, cp: str, connector: int, state: str, at: datetime, code: str = "NoError"
) -> None:
    await store.connectors.record_status(
        cp,  # type: ignore[arg-type]  # ChargePointId
        connector,
        status=state,
        error_code=code,
        info=None,
        vendor_id=None,
        vendor_error_code=None,
        timestamp=at,
        received_at=at,
    )


async def transaction(
    store: CsmsStore, cp: str, connector: int, started: datetime, meter_start: int = 0
) -> int:
    outcome = await store.transactions.start(
        cp,  # type: ignore[arg-type]  # ChargePointId
        connector,
        "TAG",
        meter_start=meter_start,
        timestamp=started,
        id_tag_status=AuthorizationStatus.ACCEPTED,
        reservation_id=None,
        received_at=started,
    )
    return outcome.transaction_id


async def stop(store: CsmsStore, cp: str, tx: int, at: datetime, meter_stop: int) -> None:
    await store.transactions.stop(
        cp,  # type: ignore[arg-type]  # ChargePointId
        tx,
        meter_stop=meter_stop,
        timestamp=at,
        reason="Local",
        id_tag=None,
    )


async def samples(
    store: CsmsStore, cp: str, tx: int | None, times: list[datetime], value: str = "5"
) -> None:
    await store.meter_values.add(
        cp,  # type: ignore[arg-type]  # ChargePointId
        1,
        tx,
        [MeterSample(timestamp=at, value=f"{value}{i}") for i, at in enumerate(times)],
    )


async def count(store: CsmsStore, sql: str) -> int:
    return int(await store.db.read(lambda conn: conn.execute(sql).fetchone()[0]))


# -- the schema -------------------------------------------------------------------------


async def test_operator_tables_are_migration_3_of_csms_db(tmp_path: Path) -> None:
    migrated = await SqliteWorker.open(tmp_path / "a.db", MIGRATIONS)
    try:
        version = await migrated.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == len(MIGRATIONS) >= 3
        names = await migrated.read(
            lambda c: {row[0] for row in c.execute("SELECT name FROM sqlite_master")}
        )
        assert {"connector_status_logged", "local_list_meta", "load_limits"} <= names
        assert await migrated.read(
            lambda c: [tuple(r) for r in c.execute("SELECT * FROM local_list_meta")]
        ) == [(1, 1, 0)]
    finally:
        await migrated.close()


async def test_status_changes_are_logged_once(store: CsmsStore) -> None:
    await store.charge_points.set_auth_key("CP-H", KEY)
    await status(store, "CP-H", 1, "Available", ago(hours=3))
    await status(store, "CP-H", 1, "Available", ago(hours=2))  # same: no change logged
    await status(store, "CP-H", 1, "Available", ago(hours=1), "GroundFailure")
    await status(store, "CP-H", 1, "Charging", ago(hours=4))  # older: not stored at all
    rows = await store.db.read(
        lambda c: c.execute(
            "SELECT status, error_code, timestamp FROM connector_status_log ORDER BY id"
        ).fetchall()
    )
    assert [tuple(r) for r in rows] == [
        ("Available", "NoError", text(ago(hours=3))),
        ("Available", "GroundFailure", text(ago(hours=1))),
    ]


# -- chargers, connectors, transactions over the wire --------------------------------------


async def test_chargers_with_online_state_last_seen_and_connectors(running: RunningCsms) -> None:
    running.clock.now = NOW
    await running.csms.register_charge_point("CP-2", "another-key-of-16+")
    reports = SiteReports(running.csms, running.clock)
    async with scripted_charger(running.port) as charger:
        for connector, state, code in (
            (1, "Available", "NoError"),
            (2, "Faulted", "GroundFailure"),
        ):
            await charger.call(
                "StatusNotification",
                {"connectorId": connector, "status": state, "errorCode": code},
            )
        running.clock.now = NOW + timedelta(minutes=5)
        await charger.call("Heartbeat", {})
        views: dict[str, ChargerView] = {view.id: view for view in await reports.chargers()}

    one, two = views[CP_ID], views["CP-2"]
    assert one.online is True and two.online is False
    assert one.last_seen == NOW + timedelta(minutes=5)
    assert two.last_seen is None
    assert (one.vendor, one.model) == ("Test", "Scripted")
    assert [(c.connector_id, c.status, c.error_code, c.in_error) for c in one.connectors] == [
        (1, "Available", "NoError", False),
        (2, "Faulted", "GroundFailure", True),
    ]
    assert one.health is not None and one.health.error_share == 0.5
    assert two.connectors == () and two.health is not None and two.health.score is None

    # A CLI reading csms.db beside the daemon cannot tell who is online.
    store = running.csms.store
    assert store is not None
    offline_view = await SiteReports(store, running.clock).chargers(with_health=False)
    assert [(v.id, v.online, v.health) for v in offline_view] == [
        (CP_ID, None, None),
        ("CP-2", None, None),
    ]
    assert [c.status for c in await reports.connectors(CP_ID)] == ["Available", "Faulted"]


async def test_transactions_with_energy_and_meter_values(running: RunningCsms) -> None:
    reports = SiteReports(running.csms, running.clock)
    async with scripted_charger(running.port) as charger:
        live = await charger.start_transaction(1, "TAG-L", 1000, "2025-06-01T12:00:00Z")
        done = await charger.start_transaction(2, "TAG-D", 200, "2025-06-01T11:00:00Z")
        assert (await reports.transaction(live)).energy_wh is None  # type: ignore[union-attr]

        def sample(value: str, at: str, **extra: str) -> dict[str, object]:
            return {"timestamp": at, "sampledValue": [{"value": value, **extra}]}

        await charger.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": live,
                "meterValue": [
                    sample("1500", "2025-06-01T12:05:00Z", unit="Wh"),
                    sample("2.5", "2025-06-01T12:10:00Z", unit="kWh"),
                    # Neither a phase reading nor another measurand is the energy total.
                    sample("9999", "2025-06-01T12:11:00Z", phase="L1"),
                    sample(
                        "7400", "2025-06-01T12:11:00Z", measurand="Power.Active.Import", unit="W"
                    ),
                ],
            },
        )
        await charger.stop_transaction(done, 7200, "2025-06-01T11:50:00Z")

    views = {view.transaction_id: view for view in await reports.transactions()}
    assert views[live].live and views[live].energy_wh == 1500.0
    assert views[live].last_reading_at == datetime(2025, 6, 1, 12, 10, tzinfo=UTC)
    assert not views[done].live and views[done].energy_wh == 7000.0
    assert [v.transaction_id for v in await reports.transactions(live=True)] == [live]
    assert [v.transaction_id for v in await reports.transactions(live=False)] == [done]
    assert [v.transaction_id for v in await reports.transactions()] == [done, live]  # newest first
    assert await reports.transactions("CP-OTHER") == []
    since = datetime(2025, 6, 1, 11, 30, tzinfo=UTC)
    assert [v.transaction_id for v in await reports.transactions(since=since)] == [live]

    readings = await reports.meter_values(live)
    assert [(r.sample.value, r.sample.measurand, r.sample.phase) for r in readings] == [
        ("1500", "Energy.Active.Import.Register", None),
        ("2.5", "Energy.Active.Import.Register", None),
        ("9999", "Energy.Active.Import.Register", "L1"),
        ("7400", "Power.Active.Import", None),
    ]
    as_json = json.loads(json.dumps(jsonable(views[live])))
    assert as_json["live"] is True and as_json["started_at"] == "2025-06-01T12:00:00.000Z"


# -- health -------------------------------------------------------------------------------


async def test_health_score_from_recorded_history(store: CsmsStore) -> None:
    cp = "CP-H"
    await store.charge_points.set_auth_key(cp, KEY)
    # Connector 1: in service all day except a fault from -6 h to -3 h.
    await status(store, cp, 1, "Available", ago(hours=30))
    await status(store, cp, 1, "Faulted", ago(hours=6), "GroundFailure")
    await status(store, cp, 1, "Available", ago(hours=3))
    # Connector 2: charging, then unavailable for the last 12 h, with an error now.
    await status(store, cp, 2, "Charging", ago(hours=26))
    await status(store, cp, 2, "Unavailable", ago(hours=12), "OtherError")
    # The whole charger was unavailable for an hour (connector 1 could not serve then).
    await status(store, cp, 0, "Available", ago(hours=30))
    await status(store, cp, 0, "Unavailable", ago(hours=2))
    await status(store, cp, 0, "Available", ago(hours=1))
    # Sessions: one before the window, two in it.
    for started in (ago(hours=25), ago(hours=20), ago(hours=4)):
        await transaction(store, cp, 1, started)

    reports = SiteReports(store, FakeClock(NOW))
    health = await reports.health(cp)
    # Connector 1: 24 h - 3 h faulted - 1 h charger unavailable = 20 h; connector 2: 12 h.
    assert health.in_service_share == pytest.approx((20 + 12) / 48)
    assert health.error_share == 0.5  # connector 2 reports OtherError now
    assert health.sessions == 2
    assert health.score == round(100 * (32 / 48) * 0.5)
    [view] = await reports.chargers()
    assert view.health == health


def test_health_arithmetic_edges() -> None:
    start, end = ago(hours=24), NOW

    def change(connector: int, state: str, at: datetime) -> StatusChange:
        return StatusChange(connector, state, "NoError", at)

    # Nothing known: no share, no score.
    assert service_share({}, start, end) is None
    assert score_health({}, [], 0, start, end).score is None
    # Known only from -6 h: the 18 h before are not judged.
    assert service_share({1: [change(1, "Charging", ago(hours=6))]}, start, end) == 1.0
    # A charger that reports only connector 0 is judged on it.
    only_zero = {0: [change(0, "Available", ago(hours=48)), change(0, "Faulted", ago(hours=6))]}
    assert service_share(only_zero, start, end) == pytest.approx(18 / 24)
    # A status of the charger's own invention is unknown time, not good or bad time.
    odd = {1: [change(1, "Available", ago(hours=24)), change(1, "Sleeping", ago(hours=12))]}
    assert service_share(odd, start, end) == 1.0
    # Changes after the end of the window do not count.
    late = {
        1: [change(1, "Available", ago(hours=24)), change(1, "Faulted", NOW + timedelta(hours=1))]
    }
    assert service_share(late, start, end) == 1.0


# -- retention ----------------------------------------------------------------------------


async def test_retention_deletes_old_rows_in_small_batches(store: CsmsStore) -> None:
    cp = "CP-R"
    await store.charge_points.set_auth_key(cp, KEY)
    old = await transaction(store, cp, 1, ago(days=401))
    await stop(store, cp, old, ago(days=400), 10)
    await samples(store, cp, old, [ago(days=400, minutes=m) for m in range(5)])
    middle = await transaction(store, cp, 1, ago(days=101))
    await stop(store, cp, middle, ago(days=100), 10)
    await samples(store, cp, middle, [ago(days=100, minutes=m) for m in range(3)])
    still_open = await transaction(store, cp, 2, ago(days=60))
    await samples(store, cp, still_open, [ago(days=60, minutes=m) for m in range(3)])
    recent = await transaction(store, cp, 1, ago(days=2))
    await stop(store, cp, recent, ago(days=1), 10)
    await samples(store, cp, recent, [ago(days=1, minutes=m) for m in range(2)])
    await samples(store, cp, None, [ago(days=40), ago(days=41)], value="7")
    await samples(store, cp, None, [ago(hours=1)], value="8")
    for days, state in ((20, "Available"), (10, "Faulted"), (8, "Available"), (1, "Charging")):
        await status(store, cp, 1, state, ago(days=days))

    retention = Retention(
        store,
        FakeClock(NOW),
        RetentionPolicy(meter_values_days=30, transactions_days=365, status_history_days=7),
        window=3,
        batch=2,
    )
    report = await retention.run_once()

    assert report.transactions == 1
    assert report.meter_values == 5 + 3 + 2  # old's, middle's, two loose ones
    assert report.status_changes == 2
    assert report.batches > 10  # many small writes, not one big one
    left = await store.db.read(
        lambda c: c.execute(
            "SELECT transaction_id FROM transactions ORDER BY transaction_id"
        ).fetchall()
    )
    assert [r[0] for r in left] == [middle, still_open, recent]
    by_tx = await store.db.read(
        lambda c: c.execute(
            "SELECT IFNULL(transaction_id, -1), COUNT(*) FROM meter_values GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    assert [tuple(r) for r in by_tx] == [(-1, 1), (still_open, 3), (recent, 2)]
    changes = await store.db.read(
        lambda c: c.execute("SELECT status FROM connector_status_log ORDER BY id").fetchall()
    )
    # The status at the cutoff (-8 d) stays: health still needs to know how a day began.
    assert [r[0] for r in changes] == ["Available", "Charging"]

    again = await retention.run_once()
    assert (again.transactions, again.meter_values, again.status_changes) == (0, 0, 0)


async def test_retention_keeps_everything_when_off(store: CsmsStore) -> None:
    cp = "CP-R"
    await store.charge_points.set_auth_key(cp, KEY)
    tx = await transaction(store, cp, 1, ago(days=3000))
    await stop(store, cp, tx, ago(days=2999), 10)
    await samples(store, cp, tx, [ago(days=2999)])
    policy = RetentionPolicy(
        meter_values_days=None, transactions_days=None, status_history_days=None
    )
    report = await Retention(store, FakeClock(NOW), policy).run_once()
    assert (report.transactions, report.meter_values) == (0, 0)
    assert await count(store, "SELECT COUNT(*) FROM meter_values") == 1
    with pytest.raises(ValueError):
        RetentionPolicy(meter_values_days=0)


async def test_retention_forgets_removed_tags_every_charger_already_has(
    running: RunningCsms,
) -> None:
    from edgepoint.csms.operator import SiteOperator

    store = running.csms.store
    assert store is not None
    operator = SiteOperator(running.csms, running.clock, default_timeout_s=5)
    await store.cards.add("GONE", "Gone")
    await store.cards.add("STAYS", "Stays")
    async with scripted_charger(running.port) as charger:
        first = await operator.send_local_list(CP_ID, full=True)
        await store.cards.remove("GONE")
        charger.responders["GetLocalListVersion"] = lambda _p: {"listVersion": first.list_version}
        second = await operator.send_local_list(CP_ID, full=False)
        assert charger.calls("SendLocalList")[-1]["localAuthorizationList"] == [{"idTag": "GONE"}]
    report = await Retention(store, running.clock, RetentionPolicy()).run_once()
    assert report.local_list_tombstones == 1
    assert second.list_version > first.list_version
    assert await count(store, "SELECT COUNT(*) FROM local_list_entries") == 1
