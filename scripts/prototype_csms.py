"""Prototype-style OCPP 1.6J central system: the baseline scripts/bench_csms.py measures against.

Written the way the original prototype was, on purpose, and not to be improved:
- the `ocpp` library's `ChargePoint` with `@on` handlers (its dispatcher, its schema
  validation with its defaults: in a thread-pool executor, snake_case conversion);
- a blocking `sqlite3` connection shared by every handler, one INSERT and one COMMIT per
  message (journal_mode=WAL, synchronous=FULL, like edgepoint's databases);
- HTTP Basic auth checked in `process_request` against a salted PBKDF2-SHA256 hash with
  edgepoint's DEFAULT_AUTH_ITERATIONS, computed on the event loop (blocking, no cache);
- websockets' defaults otherwise (listen backlog, ping, permessage-deflate offered).

Usage:
  prototype_csms.py register --db FILE --credentials CSV   (CSV lines `id,password`)
  prototype_csms.py serve --db FILE [--host H] [--port P] [--heartbeat-interval S]
`serve` prints `READY <port>` on stdout once it listens and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import csv
import hashlib
import hmac
import json
import logging
import os
import signal
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edgepoint.csms.db import DEFAULT_AUTH_ITERATIONS

PATH_PREFIX = "/ocpp/"
SALT_BYTES = 16

SCHEMA = """
CREATE TABLE IF NOT EXISTS chargers (
    id TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, iterations INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS boots (
    id INTEGER PRIMARY KEY, charger_id TEXT, vendor TEXT, model TEXT, firmware TEXT,
    received_at TEXT);
CREATE TABLE IF NOT EXISTS heartbeats (id INTEGER PRIMARY KEY, charger_id TEXT, received_at TEXT);
CREATE TABLE IF NOT EXISTS statuses (
    id INTEGER PRIMARY KEY, charger_id TEXT, connector_id INTEGER, status TEXT, error_code TEXT,
    timestamp TEXT, received_at TEXT);
CREATE TABLE IF NOT EXISTS meter_values (
    id INTEGER PRIMARY KEY, charger_id TEXT, connector_id INTEGER, transaction_id INTEGER,
    meter_value TEXT, received_at TEXT);
"""

log = logging.getLogger("prototype")


def open_db(path: Path) -> sqlite3.Connection:
    """The one connection every handler uses (the prototype had no pool, no thread)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.executescript(SCHEMA)
    return db


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_key(key: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), salt, iterations)


def register(db_path: Path, credentials: list[tuple[str, str]], iterations: int) -> None:
    """Store a salted hash per charger; hashing uses every core (hashlib releases the GIL)."""
    salted = [(cp_id, key, os.urandom(SALT_BYTES)) for cp_id, key in credentials]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda row: hash_key(row[1], row[2], iterations), salted))
    db = open_db(db_path)
    try:
        db.executemany(
            "INSERT OR REPLACE INTO chargers (id, salt, hash, iterations) VALUES (?, ?, ?, ?)",
            [
                (cp_id, salt, digest, iterations)
                for (cp_id, _, salt), digest in zip(salted, digests, strict=True)
            ],
        )
        db.commit()
    finally:
        db.close()


class PrototypeChargePoint(OcppChargePoint):  # type: ignore[misc]
    """One connected charger, handled by the ocpp library's dispatcher."""

    def __init__(
        self, cp_id: str, connection: ServerConnection, db: sqlite3.Connection, interval: int
    ) -> None:
        super().__init__(cp_id, connection)
        self.db = db
        self.interval = interval

    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> Any:
        self.db.execute(
            "INSERT INTO boots (charger_id, vendor, model, firmware, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                self.id,
                charge_point_vendor,
                charge_point_model,
                kwargs.get("firmware_version"),
                now_text(),
            ),
        )
        self.db.commit()
        return call_result.BootNotification(
            current_time=now_text(), interval=self.interval, status=RegistrationStatus.accepted
        )

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    async def on_heartbeat(self, **kwargs: Any) -> Any:
        self.db.execute(
            "INSERT INTO heartbeats (charger_id, received_at) VALUES (?, ?)", (self.id, now_text())
        )
        self.db.commit()
        return call_result.Heartbeat(current_time=now_text())

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> Any:
        self.db.execute(
            "INSERT INTO statuses (charger_id, connector_id, status, error_code, timestamp,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (self.id, connector_id, status, error_code, kwargs.get("timestamp"), now_text()),
        )
        self.db.commit()
        return call_result.StatusNotification()

    @on(Action.meter_values)  # type: ignore[untyped-decorator]
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> Any:
        self.db.execute(
            "INSERT INTO meter_values (charger_id, connector_id, transaction_id, meter_value,"
            " received_at) VALUES (?, ?, ?, ?, ?)",
            (
                self.id,
                connector_id,
                kwargs.get("transaction_id"),
                json.dumps(meter_value),
                now_text(),
            ),
        )
        self.db.commit()
        return call_result.MeterValues()


def charger_id(path: str) -> str | None:
    if not path.startswith(PATH_PREFIX):
        return None
    cp_id = path[len(PATH_PREFIX) :]
    return cp_id if cp_id and "/" not in cp_id else None


def check_basic_auth(db: sqlite3.Connection, cp_id: str, header: str | None) -> bool:
    """Blocking: a SELECT and a PBKDF2 on the event loop, as the prototype did it."""
    if header is None or not header.startswith("Basic "):
        return False
    try:
        user, _, password = binascii.a2b_base64(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    row = db.execute(
        "SELECT salt, hash, iterations FROM chargers WHERE id = ?", (cp_id,)
    ).fetchone()
    if user != cp_id or row is None:
        return False
    salt, digest, iterations = row
    return hmac.compare_digest(hash_key(password, salt, iterations), digest)


async def serve_forever(db_path: Path, host: str, port: int, interval: int) -> None:
    db = open_db(db_path)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        cp_id = charger_id(request.path)
        if cp_id is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if not check_basic_auth(db, cp_id, request.headers.get("Authorization")):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        return None

    async def on_connect(connection: ServerConnection) -> None:
        assert connection.request is not None
        cp_id = charger_id(connection.request.path) or "?"
        charge_point = PrototypeChargePoint(cp_id, connection, db, interval)
        with contextlib.suppress(ConnectionClosed):
            await charge_point.start()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        on_connect,
        host,
        port,
        subprotocols=[Subprotocol("ocpp1.6")],
        process_request=process_request,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"READY {bound}", flush=True)
        await stop
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="store PBKDF2 hashes of chargers' keys")
    reg.add_argument("--db", type=Path, required=True)
    reg.add_argument("--credentials", type=Path, required=True, help="CSV of id,password")
    reg.add_argument("--iterations", type=int, default=DEFAULT_AUTH_ITERATIONS)
    run = sub.add_parser("serve", help="serve OCPP 1.6J until SIGTERM")
    run.add_argument("--db", type=Path, required=True)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=9100)
    run.add_argument("--heartbeat-interval", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr)
    if args.command == "register":
        with args.credentials.open(newline="") as handle:
            rows = [(row[0], row[1]) for row in csv.reader(handle) if row]
        register(args.db, rows, args.iterations)
        print(f"registered {len(rows)} chargers in {args.db}")
    else:
        asyncio.run(serve_forever(args.db, args.host, args.port, args.heartbeat_interval))


if __name__ == "__main__":
    main()
