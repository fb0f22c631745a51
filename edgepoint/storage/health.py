"""A database file's health for the diagnostics archive: integrity, size, schema, row counts.

Read-only and on a connection of its own (blocking: callers run it in a thread), so the
running daemon's WAL is not disturbed; it reads counts, never rows, so the archive holds
no card ids or keys.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any


def database_health(path: Path) -> dict[str, Any]:
    """What a technician asks about a database first; an `error` key when it cannot be read."""
    report: dict[str, Any] = {"file": path.name}
    try:
        stat = path.stat()
    except OSError as err:
        report["error"] = f"cannot stat: {err.strerror or err}"
        return report
    report["bytes"] = stat.st_size
    wal = Path(f"{path}-wal")
    report["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    report["mode"] = f"{stat.st_mode & 0o777:03o}"
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        ) as conn:
            report["quick_check"] = conn.execute("PRAGMA quick_check").fetchone()[0]
            report["schema_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            report["free_bytes"] = conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
            tables = [
                str(row[0])
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            # Table names come from the file's own catalogue, quoted as identifiers.
            report["rows"] = {
                table: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
                for table in tables
            }
    except sqlite3.Error as err:
        report["error"] = str(err)
    return report


def disk_free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system holding `folder`, None when it cannot be read."""
    try:
        usage = os.statvfs(folder)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize
