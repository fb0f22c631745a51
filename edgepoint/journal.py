"""Logging for the daemon: the systemd journal natively (levels, structured fields), else stderr.

Under systemd (JOURNAL_STREAM names our stderr) each record goes to journald as one
datagram of the native protocol on /run/systemd/journal/socket, no compiled module
needed: PRIORITY from the level, SYSLOG_IDENTIFIER, CODE_FILE/LINE/FUNC, LOGGER, and
EDGEPOINT_STATION on every entry, plus EDGEPOINT_SESSION, EDGEPOINT_TRANSACTION and
EDGEPOINT_CONNECTOR when the record carries them: passed as
`log.info(..., extra=journal.fields(session_id=..., transaction_id=...))` or bound to
the task with `with journal.bound(session_id=...)`. So `journalctl -u edgepoint
EDGEPOINT_SESSION=<uuid>` shows one session's story. A record too big for a datagram
goes in a sealed memfd, as sd_journal_send does. Elsewhere (a terminal, the tests),
plain lines on stderr with the same fields appended.
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import logging
import os
import socket
import struct
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
# Record attributes (set with `extra=`) that become journal fields.
FIELD_ATTRIBUTES = {
    "session_id": "EDGEPOINT_SESSION",
    "transaction_id": "EDGEPOINT_TRANSACTION",
    "connector_id": "EDGEPOINT_CONNECTOR",
}
# syslog priorities (journalctl -p) for Python's levels.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_bound: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "edgepoint_log_fields", default=None
)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: session_id, transaction_id, connector_id (None: left out)."""
    unknown = set(values) - set(FIELD_ATTRIBUTES)
    if unknown:
        raise ValueError(f"not journal fields: {sorted(unknown)}")
    return {k: v for k, v in values.items() if v is not None}


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Attach fields to every record logged in this context (this task and what it awaits)."""
    token = _bound.set({**(_bound.get() or {}), **fields(**values)})
    try:
        yield
    finally:
        _bound.reset(token)


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields of one record: bound ones, overridden by its own `extra`."""
    found = {FIELD_ATTRIBUTES[k]: str(v) for k, v in (_bound.get() or {}).items()}
    for attribute, name in FIELD_ATTRIBUTES.items():
        value = getattr(record, attribute, None)
        if value is not None:
            found[name] = str(value)
    return found


def journal_stream_connected() -> bool:
    """Whether stderr is systemd's journal stream (JOURNAL_STREAM=<dev>:<inode>)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def encode(entry: Mapping[str, str]) -> bytes:
    """The native journal protocol: KEY=value lines; a value with a newline length-prefixed."""
    out = bytearray()
    for key, value in entry.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends records to journald; a record it cannot deliver goes to stderr instead."""

    def __init__(
        self,
        station: str | None = None,
        identifier: str = "edgepoint",
        socket_path: Path = JOURNAL_SOCKET,
    ) -> None:
        super().__init__()
        self._station = station
        self._identifier = identifier
        self._path = str(socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(PlainFormatter(station))

    def entry(self, record: logging.LogRecord) -> dict[str, str]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            message += "\n" + record.exc_text
        entry = {
            "MESSAGE": message,
            "PRIORITY": str(_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self._identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "THREAD_NAME": record.threadName or "",
        }
        if self._station:
            entry["EDGEPOINT_STATION"] = self._station
        entry.update(record_fields(record))
        return entry

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode(self.entry(record))
            try:
                self._sock.sendto(data, self._path)
            except OSError as err:
                if err.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
                    raise
                self._send_memfd(data)
        except Exception:
            self._fallback.handle(record)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl

            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd]).tobytes()
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self._path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message [session=… transaction=…]` for stderr."""

    def __init__(self, station: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._station = station

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = record_fields(record)
        if not extra:
            return text
        shown = " ".join(
            f"{name.removeprefix('EDGEPOINT_').lower()}={value}" for name, value in extra.items()
        )
        first, newline, rest = text.partition("\n")
        return f"{first} [{shown}]{newline}{rest}"


def setup_logging(level: str, station: str | None, identifier: str = "edgepoint") -> None:
    """Route the root logger to the journal (under systemd) or stderr, at `level`."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if journal_stream_connected() and JOURNAL_SOCKET.exists():
        handler = JournalHandler(station, identifier)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PlainFormatter(station))
    root.addHandler(handler)
    root.setLevel(level)


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7
