"""UpdateFirmware and SignedUpdateFirmware: download at the given time, verify, install by hook.

One update at a time, stored in edgepoint.db with the stage it reached (storage/firmware.py),
so a restart carries on: a download starts again, a downloaded file is verified again,
an install the restart interrupted is reported InstallationFailed, and an install that
asked for the restart is reported Installed. Stages and what the CSMS hears:

    scheduled    -> (DownloadScheduled, signed only) until retrieveDate
    downloading  -> Downloading; tries 1 + retries times, retryInterval apart;
                    DownloadFailed when none worked
    downloaded   -> Downloaded; a signed firmware's signature is checked against its
                    signing certificate: SignatureVerified, or InvalidSignature
                    (and the InvalidFirmwareSignature security event)
    verified     -> (InstallScheduled, signed only) until installDateTime; then, with
                    `[firmware] wait_for_sessions`, until no connector has a session
    installing   -> Installing; `install_hook <file>` runs: exit 0 Installed (and the
                    FirmwareUpdated security event), exit 10 InstallRebooting and a
                    restart of edgepoint, then Installed; else InstallationFailed

UpdateFirmware reports with FirmwareStatusNotification, SignedUpdateFirmware with
SignedFirmwareStatusNotification (and its requestId), both through the outbox. The work
runs in a supervised service; the kiosk loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import ssl
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

from edgepoint.chargepoint import pki
from edgepoint.chargepoint.security import CertificateManager, SecurityEvents
from edgepoint.chargepoint.transfer import (
    Failure,
    TransferError,
    check_url,
    download,
    redacted,
)
from edgepoint.clock import Clock
from edgepoint.config import FirmwareConfig
from edgepoint.ocppj.endpoint import Reply
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.storage.firmware import FirmwareJob, FirmwareStore, Notice

log = logging.getLogger(__name__)

PLAIN = "UpdateFirmware"
SIGNED = "SignedUpdateFirmware"
# The install hook's exit status for "installed; restart edgepoint to run it".
RESTART_EXIT = 10
DEFAULT_RETRIES = 2
DEFAULT_RETRY_INTERVAL_S = 30
# Waits are cut into slices so a wall clock set meanwhile (NTP, the CSMS's time) counts.
_WAIT_SLICE_S = 30.0
_SESSION_POLL_S = 1.0
_OUTPUT_LOGGED = 2000
# FirmwareStatusNotification (UpdateFirmware's enum) for a signed update's status.
_AS_PLAIN = {
    "Downloading": "Downloading",
    "Downloaded": "Downloaded",
    "SignatureVerified": "Downloaded",
    "InstallScheduled": "Downloaded",
    "Installing": "Installing",
    "InstallRebooting": "Installing",
}


class FirmwareService:
    """Carries out the stored firmware update; a supervised service."""

    def __init__(
        self,
        config: FirmwareConfig,
        store: FirmwareStore,
        certificates: CertificateManager,
        events: SecurityEvents,
        clock: Clock,
        folder: Path,
        wake_outbox: Callable[[], None],
        sessions_running: Callable[[], bool],
        request_restart: Callable[[], None],
        *,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        station_id: str = "",
    ) -> None:
        self._config = config
        self._store = store
        self._certificates = certificates
        self._events = events
        self._clock = clock
        self._folder = folder
        self._wake_outbox = wake_outbox
        self._sessions_running = sessions_running
        self._request_restart = request_restart
        self._tls = tls
        self._station_id = station_id
        self._job: FirmwareJob | None = None  # what the running task works on
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        # Held while the update changes hands, so the service never picks up the old one.
        self._switching = asyncio.Lock()
        self._restarting = False

    # -- the CSMS's requests ---------------------------------------------------------------

    async def update_firmware(self, payload: dict[str, Any]) -> Reply:
        # UpdateFirmware.conf carries nothing: whatever we decide, the CSMS hears it
        # through FirmwareStatusNotification.
        if not await self._replace_job(PLAIN, payload, payload["location"]):
            log.warning("UpdateFirmware ignored: an update is being installed")
        return Reply({})

    async def signed_update_firmware(self, payload: dict[str, Any]) -> Reply:
        firmware = payload["firmware"]
        try:
            self._certificates.check_signing_certificate(firmware["signingCertificate"])
        except pki.CertificateProblem as err:
            log.warning("SignedUpdateFirmware: signing certificate refused: %s", err)
            await self._events.raise_event("InvalidFirmwareSigningCertificate", str(err))
            return Reply({"status": "InvalidCertificate"})
        if self._config.install_hook is None:
            log.warning("SignedUpdateFirmware refused: no [firmware] install_hook configured")
            return Reply({"status": "Rejected"})
        try:
            check_url(firmware["location"])
        except TransferError as err:
            log.warning("SignedUpdateFirmware refused: %s", err)
            return Reply({"status": "Rejected"})
        busy = self._job is not None
        if not await self._replace_job(SIGNED, payload, firmware["location"]):
            return Reply({"status": "Rejected"})
        return Reply({"status": "AcceptedCanceled" if busy else "Accepted"})

    async def _replace_job(self, action: str, payload: dict[str, Any], location: str) -> bool:
        """Store the new update in place of the current one; False while one installs."""
        async with self._switching:
            current = await self._store.job()
            if current is not None and current.stage in ("installing", "rebooting"):
                return False
            if self._task is not None and not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task})
                log.info("%s replaces the update in progress", action)
            await self._store.start(action, payload, "scheduled", self._clock.utc_now())
            self._job = None
            self._arrived.set()
        log.info("%s of %s accepted", action, redacted(location)[:200])
        return True

    async def trigger_status(self) -> None:
        """TriggerMessage FirmwareStatusNotification: where an update stands, or Idle."""
        job = self._job
        status = "Idle"
        if job is not None and job.status is not None:
            status = job.status if job.action == PLAIN else _AS_PLAIN.get(job.status, "Idle")
        await self._notify(Notice("FirmwareStatusNotification", {"status": status}, _id()))

    async def trigger_signed_status(self) -> None:
        """ExtendedTriggerMessage FirmwareStatusNotification: SignedFirmwareStatusNotification."""
        job = self._job
        payload: dict[str, Any] = {"status": "Idle"}
        if job is not None and job.status is not None:
            payload = {"status": job.status}
            if job.action == SIGNED:
                payload["requestId"] = job.request["requestId"]
        await self._notify(Notice("SignedFirmwareStatusNotification", payload, _id()))

    async def _notify(self, notice: Notice) -> None:
        await self._store.notify(notice, self._clock.utc_now())
        self._wake_outbox()

    # -- the service -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            async with self._switching:
                job = await self._store.job()
                self._job = job
                self._arrived.clear()
                if job is not None and not self._restarting:
                    self._task = asyncio.create_task(self._carry_out(job), name="firmware update")
            if job is None or self._restarting or self._task is None:
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait({self._task})
            finally:
                if not self._task.done():  # the service itself is stopping
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
            if self._task.cancelled():
                continue  # replaced by a new request
            if (error := self._task.exception()) is not None:
                raise error

    async def _carry_out(self, job: FirmwareJob) -> None:
        stage = job.stage
        if stage == "scheduled":
            await self._wait_until(job, _retrieve_at(job), "DownloadScheduled")
            stage = "downloading"
            await self._advance(job, stage, "Downloading")
        if stage == "downloading":
            file = await self._download(job)
            if file is None:
                return
            await self._advance(job, "downloaded", "Downloaded", file=str(file))
            job = await self._reload()
            stage = "downloaded"
        if stage == "downloaded":
            if not await self._verify(job):
                return
            stage = "verified"
            job = await self._reload()
        if stage == "verified":
            await self._install(job)
        elif stage == "installing":
            log.error("the restart interrupted the firmware install: reported as failed")
            await self._finish(job, "InstallationFailed")
        elif stage == "rebooting":
            log.info("firmware installed; edgepoint restarted to run it")
            await self._finish(job, "Installed")
            await self._events.raise_event("FirmwareUpdated", redacted(_location(job))[:255])

    async def _reload(self) -> FirmwareJob:
        job = await self._store.job()
        if job is None:  # only a replacing request removes it, and that cancels us first
            raise RuntimeError("the stored firmware update vanished")
        self._job = job
        return job

    async def _advance(
        self, job: FirmwareJob, stage: str, status: str | None, file: str | None = None
    ) -> None:
        notice = None if status is None else self._notice(job, status)
        await self._store.advance(stage, self._clock.utc_now(), notice, file)
        self._job = await self._store.job()
        self._wake_outbox()

    async def _finish(self, job: FirmwareJob, status: str) -> None:
        await self._store.finish(self._clock.utc_now(), self._notice(job, status))
        self._job = None
        self._wake_outbox()
        await asyncio.to_thread(self._clean_folder)

    def _notice(self, job: FirmwareJob, status: str) -> Notice:
        if job.action == SIGNED:
            payload = {"status": status, "requestId": job.request["requestId"]}
            return Notice("SignedFirmwareStatusNotification", payload, _id())
        return Notice("FirmwareStatusNotification", {"status": status}, _id())

    async def _wait_until(self, job: FirmwareJob, moment: datetime | None, status: str) -> None:
        if moment is None or moment <= self._clock.utc_now():
            return
        if job.action == SIGNED and job.status != status:
            await self._advance(job, job.stage, status)
        log.info("firmware: waiting until %s (%s)", moment.isoformat(), status)
        # Slices, not one sleep: the wall clock may be set meanwhile (NTP, the CSMS).
        while (left := (moment - self._clock.utc_now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, _WAIT_SLICE_S))

    # -- downloading -------------------------------------------------------------------------

    async def _download(self, job: FirmwareJob) -> Path | None:
        """Download with retries; the file, or None once DownloadFailed was reported."""
        url, fragment = urldefrag(_location(job))
        expected_sha256 = _sha256_in(fragment)
        retries = _int(job.request.get("retries"), DEFAULT_RETRIES)
        interval = _int(job.request.get("retryInterval"), DEFAULT_RETRY_INTERVAL_S)
        target = self._folder / f"firmware-{uuid.uuid4().hex[:12]}.bin"
        await asyncio.to_thread(self._clean_folder)
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(interval)
            try:
                got = await asyncio.to_thread(
                    download,
                    url,
                    target,
                    timeout_s=self._config.transfer_timeout_s,
                    max_bytes=self._config.max_download_mb << 20,
                    tls=self._tls(),
                )
                if expected_sha256 and not hmac.compare_digest(got.sha256, expected_sha256):
                    target.unlink(missing_ok=True)
                    raise TransferError(Failure.FAILED, "the file's SHA-256 is not the one asked")
            except TransferError as err:
                log.warning("firmware download, try %d of %d: %s", attempt + 1, retries + 1, err)
                if err.kind is Failure.NO_SPACE:
                    await self._events.raise_event("MemoryExhaustion", "no space for the firmware")
                if err.kind in (Failure.DENIED, Failure.UNSUPPORTED, Failure.BAD_URL):
                    break
                continue
            log.info("firmware downloaded: %d bytes, sha256 %s", got.size, got.sha256)
            return got.path
        await self._finish(job, "DownloadFailed")
        return None

    def _clean_folder(self) -> None:
        """Remove the files of earlier updates (blocking)."""
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        current = self._job.file if self._job is not None else None
        for path in self._folder.iterdir():
            if path.name.startswith("firmware-") and str(path) != current:
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- verifying -----------------------------------------------------------------------------

    async def _verify(self, job: FirmwareJob) -> bool:
        file = Path(job.file or "")
        if not await asyncio.to_thread(file.is_file):
            log.error("the downloaded firmware file is gone")
            await self._finish(job, "DownloadFailed")
            return False
        if job.action != SIGNED:
            await self._advance(job, "verified", None)
            return True
        firmware = job.request["firmware"]
        try:
            certificate = self._certificates.check_signing_certificate(
                firmware["signingCertificate"]
            )
            await asyncio.to_thread(
                pki.verify_file_signature, certificate, firmware["signature"], file
            )
        except OSError as err:
            log.error("the downloaded firmware cannot be read: %s", err)
            await self._finish(job, "DownloadFailed")
            return False
        except pki.CertificateProblem as err:
            log.error("firmware signature refused: %s", err)
            await self._finish(job, "InvalidSignature")
            await self._events.raise_event("InvalidFirmwareSignature", str(err))
            return False
        await self._advance(job, "verified", "SignatureVerified")
        return True

    # -- installing ------------------------------------------------------------------------------

    async def _install(self, job: FirmwareJob) -> None:
        if job.action == SIGNED:
            await self._wait_until(job, _install_at(job), "InstallScheduled")
        if self._config.wait_for_sessions and self._sessions_running():
            log.info("firmware: waiting for the running sessions to end before installing")
            # Polled: a second beside an install is nothing, and the kiosk stays unaware.
            while self._sessions_running():  # noqa: ASYNC110
                await asyncio.sleep(_SESSION_POLL_S)
        hook = self._config.install_hook
        await self._advance(job, "installing", "Installing")
        if hook is None:
            log.error("firmware cannot be installed: no [firmware] install_hook configured")
            await self._finish(job, "InstallationFailed")
            return
        code = await self._run_hook(hook, Path(job.file or ""), job.action == SIGNED)
        if code == 0:
            await self._finish(job, "Installed")
            await self._events.raise_event("FirmwareUpdated", redacted(_location(job))[:255])
        elif code == RESTART_EXIT:
            await self._advance(
                job, "rebooting", "InstallRebooting" if job.action == SIGNED else None
            )
            log.warning("firmware installed: restarting edgepoint to run it")
            self._restarting = True
            self._request_restart()
        else:
            await self._finish(job, "InstallationFailed")

    async def _run_hook(self, hook: Path, file: Path, signed: bool) -> int | None:
        """Run the hook; its exit status, or None if it could not run or timed out."""
        env = {
            **os.environ,
            "EDGEPOINT_STATION": self._station_id,
            "EDGEPOINT_FIRMWARE_SIGNED": "1" if signed else "0",
        }
        try:
            process = await asyncio.create_subprocess_exec(
                str(hook),
                str(file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        except OSError as err:
            log.error("firmware install hook %s cannot run: %s", hook, err)
            return None
        try:
            async with asyncio.timeout(self._config.hook_timeout_s):
                output, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.error("firmware install hook timed out after %.0f s", self._config.hook_timeout_s)
            return None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        text = output.decode("utf-8", "replace").strip()[-_OUTPUT_LOGGED:]
        level = logging.INFO if process.returncode in (0, RESTART_EXIT) else logging.ERROR
        log.log(
            level,
            "firmware install hook exited %s%s",
            process.returncode,
            f": {text}" if text else "",
        )
        return process.returncode


def _id() -> str:
    return uuid.uuid4().hex


def _location(job: FirmwareJob) -> str:
    if job.action == SIGNED:
        return str(job.request["firmware"]["location"])
    return str(job.request["location"])


def _retrieve_at(job: FirmwareJob) -> datetime | None:
    text = (
        job.request["firmware"].get("retrieveDateTime")
        if job.action == SIGNED
        else job.request.get("retrieveDate")
    )
    return _parse(text)


def _install_at(job: FirmwareJob) -> datetime | None:
    return _parse(job.request["firmware"].get("installDateTime"))


def _parse(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def _int(value: object, default: int) -> int:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else default


def _sha256_in(fragment: str) -> str | None:
    """UpdateFirmware has no hash field: a location may carry `#sha256=<hex>` to check."""
    for part in fragment.split("&"):
        name, _, value = part.partition("=")
        if name.lower() == "sha256" and len(value) == 64:
            return value.lower()
    return None
