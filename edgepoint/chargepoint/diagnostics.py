"""GetDiagnostics and GetLog: pack the daemon's logs (or the security log) and upload them.

The daemon keeps its own log in `<storage.dir>/logs/edgepoint.log` (rotated, UTC
timestamps) so there is something to send on any system, journald or not. An upload
runs in a supervised service, one at a time (a new request cancels the running one:
GetLog answers AcceptedCanceled), with the request's retries and retryInterval; its
status notifications (DiagnosticsStatusNotification, LogStatusNotification) go through
the outbox like every other message.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import logging.handlers
import os
import ssl
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgepoint.chargepoint.transfer import Failure, TransferError, check_url, upload
from edgepoint.clock import Clock
from edgepoint.errors import StorageError
from edgepoint.ocppj.endpoint import Reply
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.storage.firmware import FirmwareStore, Notice
from edgepoint.storage.health import database_health, disk_free_bytes
from edgepoint.storage.security import SecurityStore

log = logging.getLogger(__name__)

LOG_FILE = "edgepoint.log"
LOG_FILE_BYTES = 1 << 20  # rotated at 1 MiB, four files kept: a few days of INFO
LOG_BACKUPS = 3
DEFAULT_RETRIES = 2  # when the CSMS leaves it to us: three tries in all
DEFAULT_RETRY_INTERVAL_S = 30
_STAMP = "%Y-%m-%dT%H:%M:%S"


class _UtcFormatter(logging.Formatter):
    """`2025-06-01T12:00:00.123Z LEVEL logger: message`: sortable, filterable by time."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return f"{moment.strftime(_STAMP)}.{int(record.msecs):03d}Z"


class LogFile:
    """The daemon's own rotated log file, attached to the root logger while it runs."""

    def __init__(self, folder: Path, level: int = logging.INFO) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / LOG_FILE
        # Created 0600 before the handler opens it: logs name stations and masked cards.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self.folder = folder
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        self.handler.setLevel(level)
        self.handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    @classmethod
    def attach(cls, folder: Path, level: int = logging.INFO) -> LogFile:
        log_file = cls(folder, level)
        logging.getLogger().addHandler(log_file.handler)
        return log_file

    def detach(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def log_files(folder: Path) -> list[Path]:
    """The rotated log files, oldest first."""
    names = [f"{LOG_FILE}.{n}" for n in range(LOG_BACKUPS, 0, -1)] + [LOG_FILE]
    return [folder / name for name in names if (folder / name).is_file()]


def lines_between(
    lines: Iterable[str], start: datetime | None, stop: datetime | None
) -> Iterable[str]:
    """Log lines stamped within [start, stop]; a line without a stamp goes with the last one."""
    keep = True
    for line in lines:
        try:
            moment = datetime.strptime(line[:19], _STAMP).replace(tzinfo=UTC)
        except ValueError:
            moment = None
        if moment is not None:
            keep = (start is None or moment >= start.replace(microsecond=0)) and (
                stop is None or moment <= stop
            )
        if keep:
            yield line


@dataclass(frozen=True, slots=True)
class Upload:
    """One GetDiagnostics or GetLog request being carried out."""

    action: str  # GetDiagnostics | GetLog
    location: str
    file_name: str
    retries: int
    retry_interval_s: float
    start: datetime | None
    stop: datetime | None
    log_type: str = "DiagnosticsLog"  # GetLog: DiagnosticsLog | SecurityLog
    request_id: int | None = None


class DiagnosticsService:
    """Builds diagnostics archives and uploads them; a supervised service."""

    def __init__(
        self,
        station_id: str,
        log_folder: Path,
        work_folder: Path,
        databases: Sequence[Path],
        notices: FirmwareStore,
        security_log: SecurityStore,
        clock: Clock,
        wake_outbox: Callable[[], None],
        *,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        timeout_s: float = 60.0,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
    ) -> None:
        self._station_id = station_id
        self._log_folder = log_folder
        self._work = work_folder
        self._databases = tuple(databases)
        self._notices = notices
        self._security_log = security_log
        self._clock = clock
        self._wake_outbox = wake_outbox
        self._status = status
        self._timeout_s = timeout_s
        self._tls = tls
        self._next: Upload | None = None
        self._current: Upload | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    # -- the CSMS's requests ---------------------------------------------------------------

    async def get_diagnostics(self, payload: dict[str, Any]) -> Reply:
        try:
            check_url(payload["location"])
        except TransferError as err:
            # GetDiagnostics.conf has no status: no fileName means nothing will be sent.
            log.warning("GetDiagnostics to an unusable location: %s", err)
            return Reply({})
        job = self._job(
            "GetDiagnostics",
            payload["location"],
            payload,
            "diagnostics",
            _moment(payload.get("startTime")),
            _moment(payload.get("stopTime")),
        )
        self._submit(job)
        return Reply({"fileName": job.file_name})

    async def get_log(self, payload: dict[str, Any]) -> Reply:
        params = payload["log"]
        try:
            check_url(params["remoteLocation"])
        except TransferError as err:
            log.warning("GetLog to an unusable location: %s", err)
            return Reply({"status": "Rejected"})
        kind = "security-log" if payload["logType"] == "SecurityLog" else "diagnostics"
        job = self._job(
            "GetLog",
            params["remoteLocation"],
            payload,
            kind,
            _moment(params.get("oldestTimestamp")),
            _moment(params.get("latestTimestamp")),
            payload["logType"],
            int(payload["requestId"]),
        )
        canceled = self._submit(job)
        return Reply(
            {"status": "AcceptedCanceled" if canceled else "Accepted", "filename": job.file_name}
        )

    def _job(
        self,
        action: str,
        location: str,
        payload: dict[str, Any],
        kind: str,
        start: datetime | None,
        stop: datetime | None,
        log_type: str = "DiagnosticsLog",
        request_id: int | None = None,
    ) -> Upload:
        stamp = self._clock.utc_now().strftime("%Y%m%dT%H%M%SZ")
        retries = payload.get("retries")
        interval = payload.get("retryInterval")
        return Upload(
            action,
            location,
            f"{self._station_id}-{kind}-{stamp}.tar.gz",
            DEFAULT_RETRIES if retries is None else max(0, int(retries)),
            DEFAULT_RETRY_INTERVAL_S if interval is None else max(0, int(interval)),
            start,
            stop,
            log_type,
            request_id,
        )

    def _submit(self, job: Upload) -> bool:
        """Queue `job`, cancelling the upload in progress; True if one was cancelled."""
        canceled = self._next is not None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            canceled = True
        if canceled:
            log.info("%s cancels the upload in progress", job.action)
        self._next = job
        self._arrived.set()
        return canceled

    async def trigger_diagnostics_status(self) -> None:
        job = self._current
        status = "Uploading" if job is not None and job.action == "GetDiagnostics" else "Idle"
        await self._notify("DiagnosticsStatusNotification", {"status": status})

    async def trigger_log_status(self) -> None:
        job = self._current
        if job is not None and job.action == "GetLog":
            payload: dict[str, Any] = {"status": "Uploading", "requestId": job.request_id}
        else:
            payload = {"status": "Idle"}
        await self._notify("LogStatusNotification", payload)

    # -- the service -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            job, self._next = self._next, None
            if job is None:
                continue
            self._current = job
            self._task = asyncio.create_task(self._carry_out(job), name=f"{job.action} upload")
            try:
                await asyncio.wait({self._task})
            finally:
                if not self._task.done():  # the service itself is stopping
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                self._current = None
            if not self._task.cancelled() and (error := self._task.exception()) is not None:
                raise error

    async def _carry_out(self, job: Upload) -> None:
        await self._status_of(job, "Uploading")
        archive = self._work / job.file_name
        try:
            try:
                await self._build(job, archive)
            except (OSError, StorageError) as err:
                log.error("%s: cannot pack %s: %s", job.action, job.file_name, err)
                outcome = "UploadFailed" if job.action == "GetDiagnostics" else "UploadFailure"
            else:
                outcome = await self._upload(job, archive)
        finally:
            with contextlib.suppress(OSError):
                archive.unlink(missing_ok=True)
        await self._status_of(job, outcome)

    async def _upload(self, job: Upload, archive: Path) -> str:
        """Try the upload 1 + retries times; the final status to report."""
        failure = Failure.FAILED
        for attempt in range(job.retries + 1):
            if attempt:
                await asyncio.sleep(job.retry_interval_s)
            try:
                where = await asyncio.to_thread(
                    upload, job.location, archive, timeout_s=self._timeout_s, tls=self._tls()
                )
            except TransferError as err:
                failure = err.kind
                log.warning(
                    "%s upload, try %d of %d: %s", job.action, attempt + 1, job.retries + 1, err
                )
                if err.kind in (Failure.DENIED, Failure.UNSUPPORTED, Failure.BAD_URL):
                    break  # trying again cannot help
                continue
            log.info("%s: %s uploaded (%s)", job.action, job.file_name, where)
            return "Uploaded"
        if job.action == "GetDiagnostics":
            return "UploadFailed"
        return {
            Failure.DENIED: "PermissionDenied",
            Failure.UNSUPPORTED: "NotSupportedOperation",
            Failure.BAD_URL: "BadMessage",
        }.get(failure, "UploadFailure")

    async def _status_of(self, job: Upload, status: str) -> None:
        if job.action == "GetDiagnostics":
            await self._notify("DiagnosticsStatusNotification", {"status": status})
        else:
            await self._notify(
                "LogStatusNotification", {"status": status, "requestId": job.request_id}
            )

    async def _notify(self, action: str, payload: dict[str, Any]) -> None:
        await self._notices.notify(Notice(action, payload, uuid.uuid4().hex), self._clock.utc_now())
        self._wake_outbox()

    # -- the archive -------------------------------------------------------------------------

    async def _build(self, job: Upload, archive: Path) -> None:
        members: dict[str, bytes] = {}
        if job.log_type == "SecurityLog":
            entries = await self._security_log.security_log(job.start, job.stop)
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["seq", "timestamp", "type", "critical", "techInfo"])
            for e in entries:
                writer.writerow([e.seq, e.at, e.type, str(e.critical).lower(), e.tech_info or ""])
            members["security-log.csv"] = text.getvalue().encode("utf-8")
        else:
            status: dict[str, Any] | None = None
            if self._status is not None:
                with contextlib.suppress(Exception):  # a status that fails costs its file only
                    async with asyncio.timeout(5):
                        status = await self._status()
            members |= await asyncio.to_thread(self._diagnostics, job, status)
        await asyncio.to_thread(_write_archive, archive, members)

    def _diagnostics(self, job: Upload, status: dict[str, Any] | None) -> dict[str, bytes]:
        """The log lines of the window, the databases' health, the status (blocking)."""
        lines: list[str] = []
        for path in log_files(self._log_folder):
            with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
                lines.extend(lines_between(f, job.start, job.stop))
        health = {
            "generated_at": self._clock.utc_now().isoformat(),
            "station": self._station_id,
            "window": [_iso(job.start), _iso(job.stop)],
            "disk_free_bytes": disk_free_bytes(self._work),
            "databases": [database_health(path) for path in self._databases if path.exists()],
        }
        members = {
            LOG_FILE: "".join(lines).encode("utf-8"),
            "health.json": json.dumps(health, indent=2).encode("utf-8"),
        }
        if status is not None:
            members["status.json"] = json.dumps(status, indent=2, default=str).encode("utf-8")
        return members


def _write_archive(archive: Path, members: dict[str, bytes]) -> None:
    archive.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))


def _moment(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
