"""csms.db: migrations, the card repository, auth keys and idempotent writes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from csms_fixtures import clock_fixture  # noqa: F401  (fixtures)
from csms_support import (
    TEST_ITERATIONS,
    FakeClock,
)

from edgepoint.csms.db import CsmsStore, open_csms_store
from edgepoint.csms.ids import ChargePointId, CsmsError, InvalidIdentifierError
from edgepoint.csms.records import (
    AuthorizationStatus,
    CardExistsError,
    CardStatus,
    MeterSample,
    StartOutcome,
    StopOutcome,
)
from edgepoint.csms.schema import MIGRATIONS

CP = ChargePointId("CP-1")
KEY = "0123456789abcdef0123"


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[CsmsStore]:
    async with open_csms_store(
        tmp_path / "csms.db", clock, auth_iterations=TEST_ITERATIONS
    ) as opened:
        await opened.charge_points.set_auth_key(CP, KEY)
        yield opened


def schema(path: Path) -> tuple[int, list[tuple[str, str]]]:
    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        objects = db.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    return version, objects


async def test_migrations_from_scratch_and_reopen_is_a_noop(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "sub" / "csms.db"
    async with open_csms_store(path, clock) as first:
        await first.cards.add("CARD1", "Alice")
    version, objects = schema(path)
    assert version == len(MIGRATIONS) == 4
    tables = {name for kind, name in objects if kind == "table"}
    assert tables == {
        "charge_points",
        "connectors",
        "id_tags",
        "transactions",
        "meter_values",
        "anomalies",
        "connector_status_log",
        "local_list_entries",
        "local_list_meta",
        "local_list_sent",
        "load_limits",
        "pending_charge_points",
    }
    assert ("index", "meter_values_key") in objects
    assert ("index", "transactions_start_key") in objects
    assert path.stat().st_mode & 0o777 == 0o600

    async with open_csms_store(path, clock) as second:
        assert [card.id_tag for card in await second.cards.list()] == ["CARD1"]
    assert schema(path) == (version, objects)


async def test_card_lifecycle(store: CsmsStore, clock: FakeClock) -> None:
    now = clock.now
    cards = store.cards
    added = await cards.add("  04A1B2C3 ", "Alice", date(2025, 6, 1), parent_id_tag="FLEET")
    assert added.id_tag == "04A1B2C3"
    assert added.expires == datetime(2025, 6, 2, tzinfo=UTC)  # valid through that day
    await cards.add("OLD", "Bob", now - timedelta(seconds=1))
    await cards.add("FOREVER")

    listed = await cards.list()
    assert [c.id_tag for c in listed] == ["04A1B2C3", "FOREVER", "OLD"]
    assert listed[0] == added
    assert listed[0].parent_id_tag == "FLEET"
    assert listed[0].created_at == now

    assert await cards.authorize("04A1B2C3", now) is AuthorizationStatus.ACCEPTED
    assert await cards.authorize("04a1b2c3", now) is AuthorizationStatus.ACCEPTED  # CiString
    assert await cards.authorize("04A1B2C3", now + timedelta(days=1)) is (
        AuthorizationStatus.EXPIRED
    )
    assert await cards.authorize("OLD", now) is AuthorizationStatus.EXPIRED
    assert await cards.authorize("FOREVER", now) is AuthorizationStatus.ACCEPTED
    assert await cards.authorize("NOBODY", now) is AuthorizationStatus.INVALID

    verdict = await cards.check("04A1B2C3", now)
    assert (verdict.expires, verdict.parent_id_tag) == (added.expires, "FLEET")

    assert await cards.block("forever")
    blocked = await cards.get("FOREVER")
    assert blocked is not None and blocked.status is CardStatus.BLOCKED
    assert await cards.authorize("FOREVER", now) is AuthorizationStatus.BLOCKED
    assert await cards.unblock("FOREVER")
    assert await cards.authorize("FOREVER", now) is AuthorizationStatus.ACCEPTED

    assert await cards.remove("OLD")
    assert await cards.authorize("OLD", now) is AuthorizationStatus.INVALID
    assert not await cards.remove("OLD")
    assert not await cards.block("NOBODY")
    assert [c.id_tag for c in await cards.list()] == ["04A1B2C3", "FOREVER"]


async def test_card_input_is_checked(store: CsmsStore) -> None:
    await store.cards.add("DUP")
    with pytest.raises(CardExistsError):
        await store.cards.add("dup")
    with pytest.raises(InvalidIdentifierError):
        await store.cards.add("X" * 21)
    with pytest.raises(InvalidIdentifierError):
        await store.cards.add("   ")
    with pytest.raises(CsmsError):
        await store.cards.add("NAIVE", expires=datetime(2030, 1, 1))
    assert [c.id_tag for c in await store.cards.list()] == ["DUP"]


async def test_cli_and_daemon_share_the_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "csms.db"
    async with open_csms_store(path, clock) as daemon, open_csms_store(path, clock) as cli:
        await cli.cards.add("TAP1", "from the CLI")
        assert await daemon.cards.authorize("TAP1", clock.now) is AuthorizationStatus.ACCEPTED
        await cli.cards.block("TAP1")
        assert await daemon.cards.authorize("TAP1", clock.now) is AuthorizationStatus.BLOCKED


async def test_auth_keys_are_hashed_and_verified(store: CsmsStore, tmp_path: Path) -> None:
    repo = store.charge_points
    assert await repo.verify_auth_key(CP, KEY)
    assert not await repo.verify_auth_key(CP, KEY + "x")
    assert not await repo.verify_auth_key("CP-404", KEY)
    await repo.set_auth_key(CP, "a-brand-new-key-123")
    assert not await repo.verify_auth_key(CP, KEY)
    assert await repo.verify_auth_key(CP, "a-brand-new-key-123")
    with pytest.raises(InvalidIdentifierError):
        await repo.set_auth_key(CP, "short")
    with pytest.raises(InvalidIdentifierError):
        await repo.set_auth_key("bad id", KEY)
    record = await repo.get(CP)
    assert record is not None and record.has_auth_key
    assert b"a-brand-new-key-123" not in (tmp_path / "csms.db").read_bytes()


async def test_transactions_and_samples_are_idempotent(store: CsmsStore, clock: FakeClock) -> None:
    now = clock.now

    async def start() -> StartOutcome:
        return await store.transactions.start(
            CP,
            1,
            "TAG",
            meter_start=100,
            timestamp=now,
            id_tag_status=AuthorizationStatus.ACCEPTED,
            reservation_id=None,
            received_at=now,
        )

    first = await start()
    again = await start()
    assert (first.repeated, again.repeated) == (False, True)
    assert again.transaction_id == first.transaction_id

    samples = [
        MeterSample(timestamp=now, value="230.1", measurand="Voltage", unit="V"),
        MeterSample(timestamp=now, value="230.1", measurand="Voltage", unit="V", phase="L1"),
    ]
    tx = first.transaction_id
    assert await store.meter_values.add(CP, 1, tx, samples) == 2
    assert await store.meter_values.add(CP, 1, tx, samples) == 0  # NULL phase deduped too
    assert await store.meter_values.add(CP, 1, None, samples) == 2
    assert await store.meter_values.add(CP, 1, None, samples) == 0

    async def stop(cp: ChargePointId, meter_stop: int) -> StopOutcome:
        return await store.transactions.stop(
            cp, tx, meter_stop=meter_stop, timestamp=now, reason="Local", id_tag="TAG"
        )

    assert await stop(CP, 900) is StopOutcome.STOPPED
    assert await stop(CP, 5) is StopOutcome.ALREADY_STOPPED
    record = await store.transactions.get(tx)
    assert record is not None and record.meter_stop == 900
    # Another charge point cannot stop this transaction.
    await store.charge_points.set_auth_key("CP-2", KEY)
    assert await stop(ChargePointId("CP-2"), 1) is StopOutcome.FOREIGN


async def test_older_connector_status_does_not_win(store: CsmsStore, clock: FakeClock) -> None:
    now = clock.now

    async def record(status: str, at: datetime) -> bool:
        return await store.connectors.record_status(
            CP,
            1,
            status=status,
            error_code="NoError",
            info=None,
            vendor_id=None,
            vendor_error_code=None,
            timestamp=at,
            received_at=now,
        )

    assert await record("Charging", now)
    assert not await record("Available", now - timedelta(seconds=1))
    (status,) = await store.connectors.list()
    assert status.status == "Charging"
