"""Firmware Management scenarios: the real daemon, the strict scripted CSMS, a local HTTP server.

GetDiagnostics and GetLog upload what the daemon packs to a file server in the test;
UpdateFirmware and SignedUpdateFirmware download from it and hand the file to an install
hook script in tmp_path. Every status notification must arrive once, in order, and
every frame both ways must pass the OCPP 1.6 schemas (`csms.violations == []`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_harness import Daemon
from scenario_support import Kiosk, running, scenario_config
from support.file_server import FileServer
from support.ftp_server import FtpServer
from support.scripted_csms import ScriptedCsms
from support.tls import TlsFiles, server_ssl_context, write_tls_files

from edgepoint.clock import iso_utc

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"
FIRMWARE = b"edgepoint firmware image " * 4000  # ~100 kB


# -- helpers ------------------------------------------------------------------------------


async def ready(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for(
        "online and Available with telemetry, boot messages delivered",
        lambda s: (
            s["links"]["csms"]["state"] == "online"
            and s["connector"]["status"] == "Available"
            and s["connector"]["last_sample"] is not None
            and s["outbox"]["depth"] == 0
        ),
    )


def hook(tmp_path: Path, exit_code: int = 0) -> Path:
    """An install hook that copies the firmware it is given and exits with `exit_code`."""
    script = tmp_path / f"install-{exit_code}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'cp "$1" "{tmp_path}/installed.bin"\n'
        f'echo "$1 signed=$EDGEPOINT_FIRMWARE_SIGNED" >> "{tmp_path}/hook-runs.txt"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def hook_runs(tmp_path: Path) -> list[str]:
    runs = tmp_path / "hook-runs.txt"
    return runs.read_text().splitlines() if runs.exists() else []


def statuses(csms: ScriptedCsms, action: str) -> list[str]:
    return [p["status"] for p in csms.payloads(action)]


def security_events(csms: ScriptedCsms) -> list[str]:
    return [p["type"] for p in csms.payloads("SecurityEventNotification")]


async def wait_status(csms: ScriptedCsms, action: str, status: str, count: int = 1) -> None:
    await csms.wait_for(
        f"{count} {action} {status}; got {statuses(csms, action)}",
        lambda: statuses(csms, action).count(status) >= count,
        within_s=20,
    )


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def sign(files: TlsFiles, data: bytes) -> str:
    """The base64 ECDSA-SHA256 signature of `data` by the PKI's client key (the signer)."""
    key = serialization.load_pem_private_key(files.client_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def in_seconds(seconds: float) -> str:
    return iso_utc(datetime.now(UTC) + timedelta(seconds=seconds))


# -- GetDiagnostics ------------------------------------------------------------------------


async def test_get_diagnostics_uploads_the_logs_and_database_health(tmp_path: Path) -> None:
    with FileServer() as server:
        async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
            await ready(kiosk)
            started = datetime.now(UTC) - timedelta(minutes=5)
            reply = await csms.call(
                "GetDiagnostics",
                {"location": server.url("/diagnostics/"), "startTime": iso_utc(started)},
            )
            await wait_status(csms, "DiagnosticsStatusNotification", "Uploaded")
            triggered = await csms.call(
                "TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"}
            )
            await wait_status(csms, "DiagnosticsStatusNotification", "Idle")

    assert csms.violations == []
    name = reply["fileName"]
    assert name.startswith("EP-TEST-1-diagnostics-") and name.endswith(".tar.gz")
    assert triggered == {"status": "Accepted"}
    # Idle only when asked for (TriggerMessage), after the upload's own statuses.
    assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "Uploaded", "Idle"]
    members = untar(server.uploads[f"/diagnostics/{name}"])
    assert set(members) == {"edgepoint.log", "health.json", "status.json"}
    log = members["edgepoint.log"].decode()
    assert "CSMS accepted boot" in log and "GetDiagnostics" not in log.split("accepted boot")[0]
    health = json.loads(members["health.json"])
    (database,) = [d for d in health["databases"] if d["file"] == "edgepoint.db"]
    assert database["quick_check"] == "ok" and database["mode"] == "600"
    assert database["rows"]["outbox"] >= 0 and "security_log" in database["rows"]
    status = json.loads(members["status.json"])
    assert status["connectors"][0]["status"] == "Available"
    assert status["csms_link"]["state"] == "online"


async def test_get_diagnostics_to_a_failing_server_retries_then_reports_upload_failed(
    tmp_path: Path,
) -> None:
    with FileServer() as server:
        server.fail["/broken"] = 500
        async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
            await ready(kiosk)
            reply = await csms.call(
                "GetDiagnostics",
                {"location": server.url("/broken"), "retries": 2, "retryInterval": 1},
            )
            await wait_status(csms, "DiagnosticsStatusNotification", "UploadFailed")
            tries = server.count("PUT", "/broken")

    assert csms.violations == []
    assert "fileName" in reply
    assert tries == 3  # the first try and two retries
    assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "UploadFailed"]
    # Each status went once: no message id twice.
    ids = [r.unique_id for r in csms.received]
    assert len(ids) == len(set(ids))


async def test_get_diagnostics_over_ftp_with_the_urls_credentials(tmp_path: Path) -> None:
    password = "s3cret-Ftp-pw"
    async with (
        FtpServer(password=password) as ftp,
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms)) as kiosk,
    ):
        await ready(kiosk)
        reply = await csms.call("GetDiagnostics", {"location": ftp.url("/diag/")})
        await wait_status(csms, "DiagnosticsStatusNotification", "Uploaded")
        logins = ftp.commands.count("PASS")
        # A password the server refuses: no point in the retries asked for.
        await csms.call(
            "GetDiagnostics",
            {"location": ftp.url("/diag/", password="wrong"), "retries": 3, "retryInterval": 1},
        )
        await wait_status(csms, "DiagnosticsStatusNotification", "UploadFailed")
        refused_logins = ftp.commands.count("PASS") - logins

    assert csms.violations == []
    members = untar(ftp.files[f"/diag/{reply['fileName']}"])
    assert set(members) == {"edgepoint.log", "health.json", "status.json"}
    assert statuses(csms, "DiagnosticsStatusNotification") == [
        "Uploading",
        "Uploaded",
        "Uploading",
        "UploadFailed",
    ]
    assert refused_logins == 1
    # The URL's password reaches neither the daemon's output nor the log it uploads.
    own_log = tmp_path / "var" / "logs" / "edgepoint.log"
    assert "/diag/" in own_log.read_text()
    for text in (kiosk.daemon.log.read_text(), own_log.read_text()):
        assert password not in text


async def test_get_diagnostics_over_https_trusts_the_installed_csms_root(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    with FileServer(tls=server_ssl_context(tls_files)) as server:
        async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
            await ready(kiosk)
            location = server.url("/secure/")
            # The server's certificate chains to a root the charge point does not know yet.
            await csms.call("GetDiagnostics", {"location": location, "retries": 0})
            await wait_status(csms, "DiagnosticsStatusNotification", "UploadFailed")
            installed = await csms.call(
                "InstallCertificate",
                {
                    "certificateType": "CentralSystemRootCertificate",
                    "certificate": tls_files.ca_cert.read_text(),
                },
            )
            reply = await csms.call("GetDiagnostics", {"location": location, "retries": 0})
            await wait_status(csms, "DiagnosticsStatusNotification", "Uploaded")

    assert csms.violations == []
    assert installed == {"status": "Accepted"}
    assert statuses(csms, "DiagnosticsStatusNotification") == [
        "Uploading",
        "UploadFailed",
        "Uploading",
        "Uploaded",
    ]
    assert server.count("PUT", f"/secure/{reply['fileName']}") == 1
    assert "health.json" in untar(server.uploads[f"/secure/{reply['fileName']}"])


# -- UpdateFirmware ---------------------------------------------------------------------------


async def test_update_firmware_downloads_at_the_retrieve_date_and_installs_by_hook(
    tmp_path: Path,
) -> None:
    digest = hashlib.sha256(FIRMWARE).hexdigest()
    with FileServer() as server:
        server.files["/fw/edgepoint-2.0.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(
                tmp_path, csms, firmware__install_hook=str(hook(tmp_path, exit_code=0))
            )
            async with running(config) as kiosk:
                await ready(kiosk)
                retrieve = datetime.now(UTC) + timedelta(seconds=2)
                reply = await csms.call(
                    "UpdateFirmware",
                    {
                        "location": server.url(f"/fw/edgepoint-2.0.bin#sha256={digest}"),
                        "retrieveDate": iso_utc(retrieve),
                        "retries": 1,
                        "retryInterval": 1,
                    },
                )
                await server.wait_for(
                    "the download", lambda: server.count("GET", "/fw/edgepoint-2.0.bin")
                )
                fetched_at = datetime.now(UTC)
                await wait_status(csms, "FirmwareStatusNotification", "Installed")
                await csms.wait_for(
                    "FirmwareUpdated", lambda: "FirmwareUpdated" in security_events(csms)
                )
                await csms.call(
                    "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
                )
                await wait_status(csms, "FirmwareStatusNotification", "Idle")

    assert csms.violations == []
    assert reply == {}
    assert statuses(csms, "FirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
        "Idle",
    ]
    # Fetched once (the fragment with the hash stays ours), not before the retrieve date.
    assert server.count("GET", "/fw/edgepoint-2.0.bin") == 1
    assert fetched_at >= retrieve
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE
    assert [run.split()[1] for run in hook_runs(tmp_path)] == ["signed=0"]
    # The security event of the install follows its Installed status.
    actions = [(r.action, r.payload.get("status") or r.payload.get("type")) for r in csms.received]
    assert actions.index(("SecurityEventNotification", "FirmwareUpdated")) > actions.index(
        ("FirmwareStatusNotification", "Installed")
    )


async def test_a_download_that_keeps_failing_reports_download_failed(tmp_path: Path) -> None:
    with FileServer() as server:
        server.fail["/fw/missing.bin"] = 503
        async with ScriptedCsms() as csms:
            config = scenario_config(tmp_path, csms, firmware__install_hook=str(hook(tmp_path)))
            async with running(config) as kiosk:
                await ready(kiosk)
                await csms.call(
                    "UpdateFirmware",
                    {
                        "location": server.url("/fw/missing.bin"),
                        "retrieveDate": in_seconds(-60),
                        "retries": 2,
                        "retryInterval": 1,
                    },
                )
                await wait_status(csms, "FirmwareStatusNotification", "DownloadFailed")

    assert csms.violations == []
    assert server.count("GET", "/fw/missing.bin") == 3
    assert statuses(csms, "FirmwareStatusNotification") == ["Downloading", "DownloadFailed"]
    assert hook_runs(tmp_path) == []


async def test_install_waits_for_the_session_and_a_failing_hook_is_installation_failed(
    tmp_path: Path,
) -> None:
    with FileServer() as server:
        server.files["/fw/a.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(
                tmp_path, csms, firmware__install_hook=str(hook(tmp_path, exit_code=3))
            )
            async with running(config) as kiosk:
                await ready(kiosk)
                await kiosk.present(CARD)
                await kiosk.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")
                await csms.call(
                    "UpdateFirmware",
                    {"location": server.url("/fw/a.bin"), "retrieveDate": in_seconds(0)},
                )
                await wait_status(csms, "FirmwareStatusNotification", "Downloaded")
                # The session runs: no install yet, however long we wait for one.
                with pytest.raises((AssertionError, TimeoutError)):
                    await csms.wait_for(
                        "Installing",
                        lambda: "Installing" in statuses(csms, "FirmwareStatusNotification"),
                        within_s=2,
                    )
                await kiosk.present(CARD)  # the driver stops the session
                await wait_status(csms, "FirmwareStatusNotification", "InstallationFailed")

    assert csms.violations == []
    assert statuses(csms, "FirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "Installing",
        "InstallationFailed",
    ]
    stop = csms.calls("StopTransaction")[0]
    installing = next(
        r for r in csms.calls("FirmwareStatusNotification") if r.payload["status"] == "Installing"
    )
    assert csms.received.index(stop) < csms.received.index(installing)
    assert len(hook_runs(tmp_path)) == 1
    assert "FirmwareUpdated" not in security_events(csms)


async def test_an_install_that_restarts_edgepoint_is_reported_installed_after_the_restart(
    tmp_path: Path,
) -> None:
    with FileServer() as server:
        server.files["/fw/b.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(
                tmp_path, csms, firmware__install_hook=str(hook(tmp_path, exit_code=10))
            )
            async with running(config) as kiosk:
                await ready(kiosk)
                await csms.call(
                    "UpdateFirmware",
                    {"location": server.url("/fw/b.bin"), "retrieveDate": in_seconds(0)},
                )
                await csms.wait_calls("BootNotification", 2, within_s=20)
                await wait_status(csms, "FirmwareStatusNotification", "Installed")
                await csms.wait_for(
                    "FirmwareUpdated", lambda: "FirmwareUpdated" in security_events(csms)
                )

    assert csms.violations == []
    assert statuses(csms, "FirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
    ]
    boots = csms.calls("BootNotification")
    installed = next(
        r for r in csms.calls("FirmwareStatusNotification") if r.payload["status"] == "Installed"
    )
    # Installed comes from the restarted daemon, on its connection.
    assert installed.connection == boots[1].connection > boots[0].connection
    assert len(hook_runs(tmp_path)) == 1  # the restart does not install again
    events = security_events(csms)
    assert events.count("StartupOfTheDevice") == 2
    assert events.index("ResetOrReboot") < events.index("FirmwareUpdated")


async def test_a_scheduled_update_survives_a_kill_of_the_daemon(tmp_path: Path) -> None:
    with FileServer() as server:
        server.files["/fw/c.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(tmp_path, csms, firmware__install_hook=str(hook(tmp_path)))
            daemon = Daemon(config).start()
            kiosk = Kiosk(daemon)
            try:
                await ready(kiosk)
                retrieve = datetime.now(UTC) + timedelta(seconds=4)
                await csms.call(
                    "UpdateFirmware",
                    {"location": server.url("/fw/c.bin"), "retrieveDate": iso_utc(retrieve)},
                )
                daemon.kill()  # SIGKILL while the update waits for its retrieve date
                daemon.start()
                await csms.wait_calls("BootNotification", 2, within_s=20)
                await wait_status(csms, "FirmwareStatusNotification", "Installed")
            finally:
                daemon.kill()

    assert csms.violations == []
    assert statuses(csms, "FirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
    ]
    assert server.count("GET", "/fw/c.bin") == 1
    assert len(hook_runs(tmp_path)) == 1
    second_boot = csms.calls("BootNotification")[1]
    downloading = csms.calls("FirmwareStatusNotification")[0]
    assert downloading.connection == second_boot.connection  # the restarted daemon did it


# -- SignedUpdateFirmware ---------------------------------------------------------------------


async def install_manufacturer_root(csms: ScriptedCsms, files: TlsFiles) -> None:
    reply = await csms.call(
        "InstallCertificate",
        {
            "certificateType": "ManufacturerRootCertificate",
            "certificate": files.ca_cert.read_text(),
        },
    )
    assert reply == {"status": "Accepted"}


@pytest.mark.parametrize("good", [True, False], ids=["verified", "bad signature"])
async def test_signed_update_firmware_checks_the_signature(
    tmp_path: Path, tls_files: TlsFiles, good: bool
) -> None:
    signature = sign(tls_files, FIRMWARE if good else FIRMWARE + b"tampered")
    with FileServer() as server:
        server.files["/fw/signed.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(tmp_path, csms, firmware__install_hook=str(hook(tmp_path)))
            async with running(config) as kiosk:
                await ready(kiosk)
                await install_manufacturer_root(csms, tls_files)
                # The good one is scheduled: downloaded in 3 s, installed in 5 s.
                retrieve = datetime.now(UTC) + timedelta(seconds=3 if good else 0)
                firmware = {
                    "location": server.url("/fw/signed.bin"),
                    "retrieveDateTime": iso_utc(retrieve),
                    "signingCertificate": tls_files.client_cert.read_text(),
                    "signature": signature,
                }
                if good:
                    firmware["installDateTime"] = in_seconds(5)
                reply = await csms.call(
                    "SignedUpdateFirmware", {"requestId": 42, "retries": 0, "firmware": firmware}
                )
                await server.wait_for("the download", lambda: server.count("GET", "/fw/signed.bin"))
                fetched_at = datetime.now(UTC)
                final = "Installed" if good else "InvalidSignature"
                await wait_status(csms, "SignedFirmwareStatusNotification", final)
                event = "FirmwareUpdated" if good else "InvalidFirmwareSignature"
                await csms.wait_for(event, lambda: event in security_events(csms))

    assert csms.violations == []
    assert reply == {"status": "Accepted"}
    sent = csms.payloads("SignedFirmwareStatusNotification")
    assert {p["requestId"] for p in sent} == {42}
    if good:
        assert [p["status"] for p in sent] == [
            "DownloadScheduled",
            "Downloading",
            "Downloaded",
            "SignatureVerified",
            "InstallScheduled",
            "Installing",
            "Installed",
        ]
        assert fetched_at >= retrieve
        assert [run.split()[1] for run in hook_runs(tmp_path)] == ["signed=1"]
    else:
        assert [p["status"] for p in sent] == ["Downloading", "Downloaded", "InvalidSignature"]
        assert hook_runs(tmp_path) == []
    assert csms.calls("FirmwareStatusNotification") == []


async def test_a_signing_certificate_from_another_manufacturer_is_refused(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    stranger = write_tls_files(tmp_path / "stranger")
    with FileServer() as server:
        server.files["/fw/signed.bin"] = FIRMWARE
        async with ScriptedCsms() as csms:
            config = scenario_config(tmp_path, csms, firmware__install_hook=str(hook(tmp_path)))
            async with running(config) as kiosk:
                await ready(kiosk)
                request = {
                    "requestId": 7,
                    "firmware": {
                        "location": server.url("/fw/signed.bin"),
                        "retrieveDateTime": in_seconds(0),
                        "signingCertificate": stranger.client_cert.read_text(),
                        "signature": sign(stranger, FIRMWARE),
                    },
                }
                # No manufacturer root yet, then one the signer does not chain to.
                without_root = await csms.call("SignedUpdateFirmware", request)
                await install_manufacturer_root(csms, tls_files)
                wrong_root = await csms.call("SignedUpdateFirmware", request)
                await csms.wait_for(
                    "two InvalidFirmwareSigningCertificate events",
                    lambda: security_events(csms).count("InvalidFirmwareSigningCertificate") == 2,
                )
                triggered = await csms.call(
                    "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
                )
                await wait_status(csms, "SignedFirmwareStatusNotification", "Idle")

    assert csms.violations == []
    assert without_root == wrong_root == {"status": "InvalidCertificate"}
    assert triggered == {"status": "Accepted"}
    assert server.count("GET", "/fw/signed.bin") == 0
    assert statuses(csms, "SignedFirmwareStatusNotification") == ["Idle"]
