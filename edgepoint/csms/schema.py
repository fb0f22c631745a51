"""The CSMS database schema (csms.db) as numbered migrations."""

from __future__ import annotations

from collections.abc import Sequence

from edgepoint.storage.sqlite import Migration

# Migration N brings user_version from N-1 to N. Never edit a released entry; append.
# Timestamps are TEXT in one format (iso_utc: ...T..:..:..mmmZ) so they sort as strings.
MIGRATIONS: Sequence[Migration] = (
    """
    CREATE TABLE charge_points (
        id                TEXT PRIMARY KEY,
        vendor            TEXT,
        model             TEXT,
        firmware          TEXT,
        serial_number     TEXT,
        auth_salt         BLOB,
        auth_hash         BLOB,
        auth_iterations   INTEGER,
        registered_at     TEXT NOT NULL,
        last_boot_at      TEXT,
        last_heartbeat_at TEXT
    );
    CREATE TABLE connectors (
        charge_point_id   TEXT NOT NULL REFERENCES charge_points(id) ON DELETE CASCADE,
        connector_id      INTEGER NOT NULL CHECK (connector_id >= 0),
        status            TEXT NOT NULL,
        error_code        TEXT NOT NULL,
        info              TEXT,
        vendor_id         TEXT,
        vendor_error_code TEXT,
        timestamp         TEXT NOT NULL,
        received_at       TEXT NOT NULL,
        PRIMARY KEY (charge_point_id, connector_id)
    );
    CREATE TABLE id_tags (
        id_tag        TEXT PRIMARY KEY COLLATE NOCASE,
        name          TEXT NOT NULL DEFAULT '',
        status        TEXT NOT NULL CHECK (status IN ('Accepted', 'Blocked')),
        expires_at    TEXT,
        parent_id_tag TEXT COLLATE NOCASE,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE transactions (
        transaction_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        charge_point_id TEXT NOT NULL REFERENCES charge_points(id),
        connector_id    INTEGER NOT NULL,
        id_tag          TEXT NOT NULL,
        id_tag_status   TEXT NOT NULL,
        meter_start     INTEGER NOT NULL,
        start_timestamp TEXT NOT NULL,
        reservation_id  INTEGER,
        meter_stop      INTEGER,
        stop_timestamp  TEXT,
        stop_reason     TEXT,
        stop_id_tag     TEXT,
        received_at     TEXT NOT NULL
    );
    CREATE UNIQUE INDEX transactions_start_key
        ON transactions (charge_point_id, connector_id, id_tag, start_timestamp, meter_start);
    CREATE INDEX transactions_open
        ON transactions (charge_point_id, connector_id) WHERE stop_timestamp IS NULL;
    CREATE TABLE meter_values (
        id              INTEGER PRIMARY KEY,
        charge_point_id TEXT NOT NULL,
        connector_id    INTEGER NOT NULL,
        transaction_id  INTEGER,
        timestamp       TEXT NOT NULL,
        measurand       TEXT NOT NULL,
        phase           TEXT,
        unit            TEXT NOT NULL,
        location        TEXT NOT NULL,
        format          TEXT NOT NULL,
        context         TEXT NOT NULL,
        value           TEXT NOT NULL
    );
    CREATE UNIQUE INDEX meter_values_key ON meter_values (
        charge_point_id, connector_id, IFNULL(transaction_id, -1), timestamp, measurand,
        IFNULL(phase, ''), unit, location, format, context, value
    );
    CREATE INDEX meter_values_transaction ON meter_values (transaction_id)
    """,
)
