"""`edgepoint outbox list|show|retry|drop`: dead letters and quarantined rows, by hand."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemon_harness import cli, query, write_config

from edgepoint.charging.events import IdTag, SessionId
from edgepoint.config import load_config
from edgepoint.storage.chargepoint import ChargePointStore

AT = "2025-06-01T12:00:00.000Z"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    db = load_config(path).storage.chargepoint_db

    async def seed() -> None:
        store = await ChargePointStore.open(db)
        try:
            async with store.change() as change:
                await change.begin_session(
                    SessionId("s-1"), 1, IdTag("04A1B2C3"), 0, datetime(2025, 6, 1, tzinfo=UTC)
                )
            async with store.db.write() as conn:
                rows = [
                    (11, "s-1", "MeterValues", '{"connectorId":1,"meterValue":[]}', "dead", "m-11"),
                    (12, "s-1", "StopTransaction", '{"meterStop":5}', "quarantined", "m-12"),
                    (13, None, "StatusNotification", "{not json", "quarantined", "m-13"),
                ]
                await conn.executemany(
                    "INSERT INTO dead_letters (seq, session_id, action, payload, created_at,"
                    " failed_at, reason, kind, message_id) VALUES (?, ?, ?, ?, ?, ?,"
                    " 'CSMS refused it 3 times: FormationViolation', ?, ?)",
                    [
                        (seq, sid, action, body, AT, AT, kind, mid)
                        for seq, sid, action, body, kind, mid in rows
                    ],
                )
        finally:
            await store.close()

    asyncio.run(seed())
    return path


def test_list_and_show(config: Path) -> None:
    listing = cli(config, "outbox", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "KIND", "ACTION", "FAILED", "AT", "REASON"]
    assert [line.split()[:3] for line in listing[1:]] == [
        ["11", "dead", "MeterValues"],
        ["12", "quarantined", "StopTransaction"],
        ["13", "quarantined", "StatusNotification"],
    ]
    as_json = json.loads(cli(config, "outbox", "list", "--json").stdout)
    assert as_json[2]["payload"] == "{not json"  # unreadable: shown as it is
    shown = json.loads(cli(config, "outbox", "show", "11").stdout)
    assert shown["payload"] == {"connectorId": 1, "meterValue": []}
    assert shown["message_id"] == "m-11" and shown["session_id"] == "s-1"
    missing = cli(config, "outbox", "show", "99", check=False)
    assert missing.returncode == 1 and "no dead letter 99" in missing.stderr


def test_retry_queues_it_again_with_its_message_id(config: Path) -> None:
    result = cli(config, "outbox", "retry", "11")
    assert "queued again as outbox #" in result.stdout
    db = load_config(config).storage.chargepoint_db
    assert query(db, "SELECT action, message_id, attempts, wire FROM outbox") == [
        ("MeterValues", "m-11", 0, 1)
    ]
    assert [seq for (seq,) in query(db, "SELECT seq FROM dead_letters")] == [12, 13]


def test_drop_needs_yes_and_billing_needs_force(config: Path) -> None:
    db = load_config(config).storage.chargepoint_db
    asked = cli(config, "outbox", "drop", "11", check=False)
    assert asked.returncode == 2 and "--yes" in asked.stderr
    billing = cli(config, "outbox", "drop", "12", "--yes", check=False)
    assert billing.returncode == 2 and "StopTransaction" in billing.stderr
    assert "--force" in billing.stderr
    assert query(db, "SELECT COUNT(*) FROM dead_letters") == [(3,)]  # nothing dropped yet
    cli(config, "outbox", "drop", "11", "--yes")
    cli(config, "outbox", "drop", "12", "--yes", "--force")
    assert [seq for (seq,) in query(db, "SELECT seq FROM dead_letters")] == [13]


def test_a_retry_whose_session_is_gone_is_refused(config: Path) -> None:
    db = load_config(config).storage.chargepoint_db
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE dead_letters SET session_id = 'pruned' WHERE seq = 11")
    refused = cli(config, "outbox", "retry", "11", check=False)
    assert refused.returncode == 1 and "no longer stored" in refused.stderr


def test_without_a_database_it_says_so(tmp_path: Path) -> None:
    result = cli(write_config(tmp_path), "outbox", "list", check=False)
    assert result.returncode == 1 and "no database" in result.stderr
