"""An upgrade from the first released schema: edgepoint.db and csms.db at migration 1,
holding what version 1 wrote, brought up by `edgepoint migrate` and served by the daemon."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from daemon_harness import Daemon, cli, query, write_config

from edgepoint.config import load_config
from edgepoint.csms.schema import MIGRATIONS as CSMS_MIGRATIONS
from edgepoint.storage.chargepoint import MIGRATIONS as CP_MIGRATIONS
from edgepoint.storage.sqlite import split_statements

CARD = "04A1B2C3"


def at_version_1(path: Path, migrations: list[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    for statement in split_statements(migrations[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    return conn


def first_release(var: Path) -> None:
    """What edgepoint 0.1's first schema held after a crash mid-session, offline."""
    var.mkdir()
    with contextlib.closing(at_version_1(var / "edgepoint.db", CP_MIGRATIONS)) as cp:
        cp.executemany(
            "INSERT INTO sessions (session_id, connector_id, id_tag, meter_start_wh,"
            " started_at, meter_stop_wh, stopped_at, stop_reason, state)"
            " VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("s-old", CARD, 1000, "2025-05-01T10:00:00.000Z", 4000,
                 "2025-05-01T11:00:00.000Z", "Local", "stopped"),
                ("s-open", CARD, 4000, "2025-05-02T10:00:00.000Z", None, None, None, "active"),
            ],
        )  # fmt: skip
        # Version 1 queued the ocpp library's snake_case arguments.
        outbox = [
            ("s-old", "StartTransaction", {"connector_id": 1, "id_tag": CARD, "meter_start": 1000,
             "timestamp": "2025-05-01T10:00:00.000Z"}),
            ("s-old", "StopTransaction", {"meter_stop": 4000, "timestamp":
             "2025-05-01T11:00:00.000Z", "reason": "Local", "id_tag": CARD}),
            ("s-open", "StartTransaction", {"connector_id": 1, "id_tag": CARD, "meter_start": 4000,
             "timestamp": "2025-05-02T10:00:00.000Z"}),
        ]  # fmt: skip
        cp.executemany(
            "INSERT INTO outbox (session_id, action, payload, created_at) VALUES (?, ?, ?, ?)",
            [(s, a, json.dumps(p), p["timestamp"]) for s, a, p in outbox],
        )
        # Recent: retention (90 days by default) would rightly remove an old one at start.
        failed = datetime.now(UTC).isoformat()
        cp.execute(
            "INSERT INTO dead_letters (seq, action, payload, created_at, failed_at, reason)"
            " VALUES (99, 'MeterValues', '{}', ?, ?, 'given up after 5 attempts')",
            (failed, failed),
        )
        cp.commit()
    with contextlib.closing(at_version_1(var / "csms.db", CSMS_MIGRATIONS)) as csms:
        csms.execute(
            "INSERT INTO id_tags (id_tag, name, status, created_at)"
            " VALUES (?, 'Alice', 'Accepted', '2025-04-01T00:00:00Z')",
            (CARD,),
        )
        csms.commit()


def test_migrate_brings_the_first_schema_up_and_keeps_everything(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    var = load_config(config).storage.dir
    first_release(var)
    out = cli(config, "migrate").stdout
    assert f"edgepoint.db: schema version {len(CP_MIGRATIONS)}, ok" in out
    assert f"csms.db: schema version {len(CSMS_MIGRATIONS)}, ok" in out
    db = var / "edgepoint.db"
    assert query(db, "SELECT session_id, state FROM sessions ORDER BY 1") == [
        ("s-old", "stopped"),
        ("s-open", "active"),
    ]
    rows = query(db, "SELECT action, wire, message_id IS NOT NULL FROM outbox ORDER BY seq")
    assert rows == [
        ("StartTransaction", 0, 1),
        ("StopTransaction", 0, 1),
        ("StartTransaction", 0, 1),
    ]
    assert query(db, "SELECT kind, reason FROM dead_letters") == [
        ("dead", "given up after 5 attempts")
    ]
    cards = json.loads(cli(config, "cards", "list", "--json").stdout)
    assert [(c["id_tag"], c["name"]) for c in cards] == [(CARD, "Alice")]
    # A second run finds nothing to do.
    assert cli(config, "migrate").stdout == out


def test_the_daemon_serves_an_upgraded_database(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    var = load_config(config).storage.dir
    first_release(var)
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        # The old queue drains to the CSMS; the session the crash left open is closed.
        status = daemon.wait_for("the old queue delivered", lambda s: s["outbox"]["depth"] == 0)
        assert status["outbox"]["quarantined"] == 0 and status["outbox"]["dead_letters"] == 1
    finally:
        daemon.kill()
    db = var / "edgepoint.db"
    assert query(db, "SELECT session_id, state FROM sessions ORDER BY 1") == [
        ("s-old", "stopped"),
        ("s-open", "stopped"),
    ]
    ids = query(db, "SELECT transaction_id FROM sessions WHERE transaction_id IS NOT NULL")
    assert len(ids) == 2
    csms = var / "csms.db"
    starts = query(csms, "SELECT meter_start, meter_stop FROM transactions ORDER BY meter_start")
    assert starts[0] == (1000, 4000) and starts[1][0] == 4000
