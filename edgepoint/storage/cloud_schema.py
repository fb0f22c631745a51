"""The cloud outputs' tables in edgepoint.db: ledger events, entries, upload cursors, fleet cards.

CLOUD_SCHEMA is one migration, appended to `chargepoint.MIGRATIONS`. Its triggers copy
every session start and stop into `ledger_events` inside the transaction that writes the
session (DESIGN invariant 2: durable in the same commit as the state change), with an
AUTOINCREMENT number that is the commit order across connectors. The columns are
lenient (no NOT NULL beyond the keys) so that a trigger can never fail, and so never
roll back, the kiosk's commit; the recorder checks each event before signing it.
A database that already holds sessions when this migration runs starts its ledger with
the first session after it.
"""

from __future__ import annotations

CLOUD_SCHEMA = """
    CREATE TABLE ledger_events (
        event_seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        event          TEXT NOT NULL,
        session_id     TEXT NOT NULL,
        connector_id   INTEGER,
        id_tag         TEXT,
        meter_start_wh INTEGER,
        meter_stop_wh  INTEGER,
        reason         TEXT,
        recorded_at    TEXT,
        UNIQUE (session_id, event)
    );
    CREATE TRIGGER ledger_session_started AFTER INSERT ON sessions
    BEGIN
        INSERT OR IGNORE INTO ledger_events
            (event, session_id, connector_id, id_tag, meter_start_wh, recorded_at)
        VALUES ('start', new.session_id, new.connector_id, new.id_tag, new.meter_start_wh,
            new.started_at);
    END;
    CREATE TRIGGER ledger_session_stopped AFTER UPDATE OF state ON sessions
    WHEN old.state = 'active' AND new.state = 'stopped'
    BEGIN
        INSERT OR IGNORE INTO ledger_events
            (event, session_id, connector_id, id_tag, meter_start_wh, meter_stop_wh, reason,
             recorded_at)
        VALUES ('stop', new.session_id, new.connector_id, new.id_tag, new.meter_start_wh,
            new.meter_stop_wh, new.stop_reason, new.stopped_at);
    END;
    CREATE TABLE ledger_entries (
        seq        INTEGER PRIMARY KEY,
        event_seq  INTEGER NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        event      TEXT NOT NULL,
        body       TEXT NOT NULL,
        hash       TEXT NOT NULL,
        sig        TEXT NOT NULL,
        UNIQUE (session_id, event)
    );
    CREATE TABLE ledger_meters (
        connector_id INTEGER PRIMARY KEY,
        high_wh      INTEGER NOT NULL
    );
    CREATE TABLE ledger_refused (
        event_seq  INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        event      TEXT NOT NULL,
        detail     TEXT NOT NULL,
        reason     TEXT NOT NULL,
        refused_at TEXT NOT NULL
    );
    CREATE TABLE ledger_sinks (
        name      TEXT PRIMARY KEY,
        acked_seq INTEGER NOT NULL
    );
    CREATE TABLE fleet_local_list (
        id_tag    TEXT PRIMARY KEY COLLATE NOCASE,
        written   TEXT NOT NULL,
        displaced TEXT
    );
    CREATE TABLE fleet_csms_cards (
        id_tag    TEXT PRIMARY KEY COLLATE NOCASE,
        written   TEXT,
        displaced TEXT,
        intended  TEXT
    )
"""
