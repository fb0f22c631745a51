"""Firmware Management and Security extension tables in edgepoint.db (one migration).

MAINTENANCE_SCHEMA is appended to `chargepoint.MIGRATIONS`:

- certificates: the root certificates the CSMS installed (InstallCertificate); `use` is
  OCPP's CertificateUseEnumType, `fingerprint` the SHA-256 of the DER (hex), so the same
  certificate installed twice is one row.
- security_log: every security event, critical or not (GetLog SecurityLog); a rolling log,
  the oldest rows pruned by the repository.
- security_state: small named JSON values (the connection settings a new SecurityProfile
  or AuthorizationKey would fall back to).
- firmware_job: the one firmware update in progress (UpdateFirmware or
  SignedUpdateFirmware) and how far it got, so a restart carries on where it stopped.
"""

from __future__ import annotations

MAINTENANCE_SCHEMA = """
CREATE TABLE certificates (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    use          TEXT NOT NULL CHECK (use IN ('CentralSystemRootCertificate',
                                              'ManufacturerRootCertificate')),
    pem          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    installed_at TEXT NOT NULL,
    UNIQUE (use, fingerprint)
);
CREATE TABLE security_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    at         TEXT NOT NULL,
    tech_info  TEXT,
    critical   INTEGER NOT NULL
);
CREATE TABLE security_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE firmware_job (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    action      TEXT NOT NULL CHECK (action IN ('UpdateFirmware', 'SignedUpdateFirmware')),
    request     TEXT NOT NULL,
    stage       TEXT NOT NULL,
    file        TEXT,
    status      TEXT,
    updated_at  TEXT NOT NULL
)
"""
