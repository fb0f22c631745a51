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
    # 2: semantic checks. Per charge point: how many connectors it has (NULL = the default)
    # and when it was last heard from; per tag: how many open transactions it may have;
    # per transaction: when its StopTransaction came, whether a newer start on its
    # connector closed it, and whether its meter went backwards; the anomalies table
    # records refusals and flagged oddities (bounded per charge point, see db.py).
    """
    ALTER TABLE charge_points ADD COLUMN connector_count INTEGER
        CHECK (connector_count IS NULL OR connector_count BETWEEN 1 AND 1000);
    ALTER TABLE charge_points ADD COLUMN last_seen_at TEXT;
    ALTER TABLE charge_points ADD COLUMN firmware_status TEXT;
    ALTER TABLE charge_points ADD COLUMN firmware_status_at TEXT;
    ALTER TABLE charge_points ADD COLUMN diagnostics_status TEXT;
    ALTER TABLE charge_points ADD COLUMN diagnostics_status_at TEXT;
    ALTER TABLE id_tags ADD COLUMN max_concurrent_tx INTEGER NOT NULL DEFAULT 1
        CHECK (max_concurrent_tx >= 1);
    ALTER TABLE transactions ADD COLUMN stop_received_at TEXT;
    ALTER TABLE transactions ADD COLUMN superseded_by INTEGER;
    ALTER TABLE transactions ADD COLUMN meter_backwards INTEGER NOT NULL DEFAULT 0;
    UPDATE transactions SET stop_received_at = stop_timestamp WHERE stop_timestamp IS NOT NULL;
    CREATE INDEX transactions_open_tag
        ON transactions (id_tag COLLATE NOCASE) WHERE stop_timestamp IS NULL;
    CREATE INDEX meter_values_register ON meter_values (transaction_id, timestamp)
        WHERE measurand = 'Energy.Active.Import.Register' AND phase IS NULL;
    CREATE TABLE anomalies (
        id              INTEGER PRIMARY KEY,
        charge_point_id TEXT NOT NULL REFERENCES charge_points(id) ON DELETE CASCADE,
        kind            TEXT NOT NULL CHECK (kind IN ('refused', 'flagged', 'disconnected')),
        reason          TEXT NOT NULL,
        action          TEXT,
        detail          TEXT NOT NULL DEFAULT '',
        transaction_id  INTEGER,
        first_at        TEXT NOT NULL,
        last_at         TEXT NOT NULL,
        count           INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX anomalies_charge_point ON anomalies (charge_point_id, id)
    """,
    # 3: status history (for health), local lists sent per charger, load-management limits.
    """
    -- Every change of a connector's status or errorCode, written by the triggers below in
    -- the same transaction as the StatusNotification: the health score's history.
    CREATE TABLE IF NOT EXISTS connector_status_log (
        id              INTEGER PRIMARY KEY,
        charge_point_id TEXT NOT NULL REFERENCES charge_points(id) ON DELETE CASCADE,
        connector_id    INTEGER NOT NULL,
        status          TEXT NOT NULL,
        error_code      TEXT NOT NULL,
        timestamp       TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS connector_status_log_key
        ON connector_status_log (charge_point_id, connector_id, timestamp);
    CREATE TRIGGER IF NOT EXISTS connector_status_logged AFTER INSERT ON connectors
    BEGIN
        INSERT INTO connector_status_log
            (charge_point_id, connector_id, status, error_code, timestamp)
        VALUES (NEW.charge_point_id, NEW.connector_id, NEW.status, NEW.error_code,
            NEW.timestamp);
    END;
    CREATE TRIGGER IF NOT EXISTS connector_status_change_logged AFTER UPDATE ON connectors
    WHEN OLD.status IS NOT NEW.status OR OLD.error_code IS NOT NEW.error_code
    BEGIN
        INSERT INTO connector_status_log
            (charge_point_id, connector_id, status, error_code, timestamp)
        VALUES (NEW.charge_point_id, NEW.connector_id, NEW.status, NEW.error_code,
            NEW.timestamp);
    END;

    -- The site's local authorization list as last computed from id_tags: one row per tag
    -- ever listed, with the list version in which it last changed; status NULL marks a
    -- tag removed since (kept so a Differential update can delete it on the charger).
    CREATE TABLE IF NOT EXISTS local_list_entries (
        id_tag        TEXT PRIMARY KEY COLLATE NOCASE,
        status        TEXT,
        expiry_date   TEXT,
        parent_id_tag TEXT,
        version       INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS local_list_entries_version ON local_list_entries (version);
    -- version: the list's current version (1 = empty list, never changed);
    -- pruned_through: removals of versions up to this one may have been forgotten.
    CREATE TABLE IF NOT EXISTS local_list_meta (
        singleton      INTEGER PRIMARY KEY CHECK (singleton = 1),
        version        INTEGER NOT NULL,
        pruned_through INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO local_list_meta (singleton, version, pruned_through) VALUES (1, 1, 0);
    -- The version each charger accepted last.
    CREATE TABLE IF NOT EXISTS local_list_sent (
        charge_point_id TEXT PRIMARY KEY REFERENCES charge_points(id) ON DELETE CASCADE,
        version         INTEGER NOT NULL,
        update_type     TEXT NOT NULL,
        sent_at         TEXT NOT NULL
    );

    -- Load management: the share of each running transaction and where it stands.
    CREATE TABLE IF NOT EXISTS load_limits (
        transaction_id  INTEGER PRIMARY KEY,
        charge_point_id TEXT NOT NULL,
        connector_id    INTEGER NOT NULL,
        limit_w         INTEGER,
        applied_w       INTEGER,
        state           TEXT NOT NULL,
        detail          TEXT,
        updated_at      TEXT NOT NULL
    )
""",
    # 4: charger identity management. Unknown ids that tried to connect, one row each
    # (bounded by PendingRepository); per charge point a key version, bumped on every key
    # change and removal, against which a server checks the keys it verified before (the
    # CLI changes keys from another process); removed_at marks a removed charger, whose
    # row stays (its transactions refer to it) without a key.
    """
    CREATE TABLE pending_charge_points (
        id            TEXT PRIMARY KEY,
        first_seen_at TEXT NOT NULL,
        last_seen_at  TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 1,
        last_address  TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX pending_charge_points_seen ON pending_charge_points (last_seen_at);
    ALTER TABLE charge_points ADD COLUMN key_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE charge_points ADD COLUMN removed_at TEXT
    """,
)
