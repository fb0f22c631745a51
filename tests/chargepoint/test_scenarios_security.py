"""Security extension scenarios (OCPP 1.6 Security Whitepaper ed. 3) against the strict CSMS.

The real daemon starts at security profile 1 (Basic auth over ws://) on one scripted
CSMS; profiles 2 and 3 go to a second one serving wss:// with tests/support/tls.py's
PKI, whose CA also signs the charge point's CSR here, as a CPO's CA would. Every frame
both ways must pass the schemas (`violations == []`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import ssl
import stat
import tarfile
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from daemon_harness import Daemon, free_port, query
from scenario_support import Kiosk, running, scenario_config
from support.file_server import FileServer
from support.scripted_csms import Error, Received, ScriptedCsms
from support.tls import TlsFiles, server_ssl_context, write_tls_files

pytestmark = pytest.mark.timeout(90)

STATION = "EP-TEST-1"
KEY = "first-Key_0123456789ab"  # 22 characters of the whitepaper's passwordString
CPO = "edgepoint test CPO"


# -- helpers ------------------------------------------------------------------------------


def with_key(tmp_path: Path, key: str = KEY) -> None:
    """The charge point's AuthorizationKey file, as an operator installs it (0600)."""
    folder = tmp_path / "var" / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chargepoint.key"
    path.write_text(key + "\n")
    path.chmod(0o600)


async def ready(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for(
        "online, Available, boot messages delivered",
        lambda s: (
            s["links"]["csms"]["state"] == "online"
            and s["connector"]["status"] == "Available"
            and s["outbox"]["depth"] == 0
        ),
        within_s=30,
    )


def events(*csmss: ScriptedCsms) -> list[str]:
    return [p["type"] for c in csmss for p in c.payloads("SecurityEventNotification")]


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{STATION}:{key}".encode()).decode()


def authorization(csms: ScriptedCsms, index: int = -1) -> str | None:
    headers = {k.lower(): v for k, v in csms.headers[index].items()}
    return headers.get("authorization")


async def configure(csms: ScriptedCsms, key: str, value: str) -> str:
    reply = await csms.call("ChangeConfiguration", {"key": key, "value": value})
    return str(reply["status"])


async def get_key(csms: ScriptedCsms, key: str) -> dict[str, Any]:
    reply = await csms.call("GetConfiguration", {"key": [key]})
    (entry,) = reply["configurationKey"]
    return dict(entry)


async def install_root(
    csms: ScriptedCsms, pem: str, use: str = "CentralSystemRootCertificate"
) -> str:
    reply = await csms.call("InstallCertificate", {"certificateType": use, "certificate": pem})
    return str(reply["status"])


def hash_data(certificate: x509.Certificate, issuer: x509.Certificate) -> dict[str, str]:
    """The whitepaper's CertificateHashDataType, computed here independently of edgepoint."""
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    bits = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(certificate.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(bits).hexdigest(),
        "serialNumber": format(certificate.serial_number, "x"),
    }


def sign_csr(files: TlsFiles, csr_pem: str) -> str:
    """The CPO's CA signs the charge point's CSR (what the CSMS does with SignCertificate)."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = ca.not_valid_before_utc
    certificate = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def refuse_all_but(
    key: str,
) -> tuple[Callable[[Any, Any], Awaitable[Any]], list[str | None]]:
    """A process_request for ScriptedCsms that answers 401 unless Basic auth carries `key`;
    and the Authorization header of every attempt."""
    records: list[str | None] = []

    async def check(connection: Any, request: Any) -> Any:
        records.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != basic(key):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong credentials\n")
        return None

    return check, records


# -- security events ------------------------------------------------------------------------


async def test_startup_and_reset_are_security_events_sent_once_in_order(tmp_path: Path) -> None:
    with_key(tmp_path)
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        reply = await csms.call("Reset", {"type": "Soft"})
        await csms.wait_calls("BootNotification", 2)
        await csms.wait_for(
            "the second StartupOfTheDevice", lambda: events(csms).count("StartupOfTheDevice") == 2
        )

    assert csms.violations == []
    assert reply == {"status": "Accepted"}
    assert events(csms) == ["StartupOfTheDevice", "ResetOrReboot", "StartupOfTheDevice"]
    notifications = csms.calls("SecurityEventNotification")
    assert len({r.unique_id for r in notifications}) == 3  # each once
    reset = notifications[1]
    assert reset.payload["techInfo"] == "soft reset requested by the CSMS"
    # The reset's event goes out before the restarted daemon's boot.
    boots = csms.calls("BootNotification")
    assert csms.received.index(reset) < csms.received.index(boots[1])


async def test_security_events_raised_offline_survive_a_kill_and_are_retried_like_transactions(
    tmp_path: Path,
) -> None:
    """The whitepaper: SecurityEventNotification is queued like transaction messages."""
    port = free_port()
    config = scenario_config(
        tmp_path, ScriptedCsms(port=port), ocpp__TransactionMessageRetryInterval=1
    )
    db = tmp_path / "var" / "edgepoint.db"

    def queued_events() -> list[tuple[Any, ...]]:
        return query(
            db,
            "SELECT message_id, payload FROM outbox"
            " WHERE action = 'SecurityEventNotification' ORDER BY seq",
        )

    daemon = Daemon(config).start()
    kiosk = Kiosk(daemon)
    try:
        # No CSMS: the startup event waits in the outbox, and SIGKILL does not lose it.
        await kiosk.wait_for("the first startup event queued", lambda s: bool(queued_events()))
        daemon.kill()
        daemon.start()
        await kiosk.wait_for("the second one queued", lambda s: len(queued_events()) == 2)
        offline = queued_events()
        refusals: list[str] = []

        def refuse_once(call: Received) -> Any:
            if not refusals:
                refusals.append(call.unique_id)
                return Error("InternalError", "busy")
            return {}

        async with ScriptedCsms(port=port) as csms:
            csms.responders["SecurityEventNotification"] = refuse_once
            await ready(kiosk)
            await csms.wait_calls("SecurityEventNotification", 3, within_s=20)
    finally:
        daemon.kill()

    assert csms.violations == []
    sent = csms.calls("SecurityEventNotification")
    # The refused one again, with its message id (a resend, not a new event), then the next.
    assert [r.unique_id for r in sent] == [refusals[0], refusals[0], offline[1][0]]
    assert [r.unique_id for r in sent[1:]] == [row[0] for row in offline]
    assert [r.payload["type"] for r in sent] == ["StartupOfTheDevice"] * 3
    stamps = [r.payload["timestamp"] for r in sent[1:]]
    assert stamps == sorted(stamps) and stamps[0] != stamps[1]
    # Delivered once each: the CSMS confirmed them, the rows are gone.
    assert queued_events() == []
    boot = csms.calls("BootNotification")[0]
    assert csms.received.index(boot) < csms.received.index(sent[0])


# -- certificates -----------------------------------------------------------------------------


async def test_root_certificates_install_list_and_delete_by_hash(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    with_key(tmp_path)
    other = write_tls_files(tmp_path / "other")
    csms_root = x509.load_pem_x509_certificate(tls_files.ca_cert.read_bytes())
    maker_root = x509.load_pem_x509_certificate(other.ca_cert.read_bytes())
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        await ready(kiosk)
        empty = await csms.call(
            "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"}
        )
        installed = await install_root(csms, tls_files.ca_cert.read_text())
        again = await install_root(csms, tls_files.ca_cert.read_text())
        maker = await install_root(csms, other.ca_cert.read_text(), "ManufacturerRootCertificate")
        not_a_ca = await install_root(csms, tls_files.client_cert.read_text())
        garbage = await install_root(csms, "-----BEGIN CERTIFICATE-----\nAAAA\n")
        listed = await csms.call(
            "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"}
        )
        makers = await csms.call(
            "GetInstalledCertificateIds", {"certificateType": "ManufacturerRootCertificate"}
        )
        wanted = hash_data(csms_root, csms_root)
        deleted = await csms.call("DeleteCertificate", {"certificateHashData": wanted})
        gone = await csms.call("DeleteCertificate", {"certificateHashData": wanted})
        after = await csms.call(
            "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"}
        )

    assert csms.violations == []
    assert empty == {"status": "NotFound"}
    assert (installed, again, maker) == ("Accepted", "Accepted", "Accepted")
    assert not_a_ca == garbage == "Rejected"
    assert listed == {"status": "Accepted", "certificateHashData": [wanted]}
    assert makers["certificateHashData"] == [hash_data(maker_root, maker_root)]
    assert deleted == {"status": "Accepted"}
    assert gone == {"status": "NotFound"}
    assert after == {"status": "NotFound"}


async def test_certificate_signing_and_the_upgrade_to_profiles_2_and_3(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    with_key(tmp_path)
    server = server_ssl_context(tls_files, require_client_cert=True)
    server.verify_mode = ssl.CERT_OPTIONAL  # profile 2 first; profile 3 demands it below
    signed: list[str] = []

    async def sign_certificate(call: Received) -> dict[str, Any]:
        signed.append(call.payload["csr"])
        return {"status": "Accepted"}

    async with ScriptedCsms() as plain, ScriptedCsms(ssl=server) as secure:
        secure.responders["SignCertificate"] = sign_certificate
        config = scenario_config(tmp_path, plain, chargepoint__csms_tls_url=secure.url)
        async with running(config) as kiosk:
            await ready(kiosk)
            profile = await get_key(plain, "SecurityProfile")
            too_early = [
                await configure(plain, "SecurityProfile", "2"),  # no CSMS root yet
                await configure(plain, "SecurityProfile", "3"),  # no certificate yet
            ]
            assert await configure(plain, "CpoName", CPO) == "Accepted"
            assert await install_root(plain, tls_files.ca_cert.read_text()) == "Accepted"
            to_2 = await configure(plain, "SecurityProfile", "2")
            # From the next connection: the CSMS resets the charge point (TC_083_CS).
            await plain.call("Reset", {"type": "Hard"})
            await secure.wait_calls("BootNotification")
            await ready(kiosk)
            down = await configure(secure, "SecurityProfile", "1")
            # The charge point certificate: a CSR on request, the CA's answer installed.
            trigger = await secure.call(
                "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}
            )
            await secure.wait_calls("SignCertificate")
            stranger = write_tls_files(tmp_path / "stranger", charge_point_id=STATION)
            wrong = await secure.call(
                "CertificateSigned", {"certificateChain": stranger.client_cert.read_text()}
            )
            accepted = await secure.call(
                "CertificateSigned", {"certificateChain": sign_csr(tls_files, signed[0])}
            )
            to_3 = await configure(secure, "SecurityProfile", "3")
            server.verify_mode = ssl.CERT_REQUIRED
            await secure.call("Reset", {"type": "Hard"})
            await secure.wait_calls("BootNotification", 2)
            await ready(kiosk)
            finally_3 = await get_key(secure, "SecurityProfile")
            await secure.wait_for(
                "InvalidChargePointCertificate",
                lambda: "InvalidChargePointCertificate" in events(plain, secure),
            )

    assert plain.violations == [] and secure.violations == []
    assert profile == {"key": "SecurityProfile", "readonly": False, "value": "1"}
    assert too_early == ["Rejected", "Rejected"]
    assert to_2 == "Accepted" and down == "Rejected"
    assert trigger == {"status": "Accepted"}
    csr = x509.load_pem_x509_csr(signed[0].encode())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == STATION
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CPO
    assert wrong == {"status": "Rejected"}  # a certificate for a key that is not ours
    assert accepted == {"status": "Accepted"} and to_3 == "Accepted"
    assert finally_3["value"] == "3"
    key_file = tmp_path / "var" / "pki" / "chargepoint.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    # Profile 1 and 2 sent Basic auth; profile 3 authenticates by its certificate only.
    assert authorization(plain, 0) == basic(KEY)
    assert authorization(secure, 0) == basic(KEY)
    assert authorization(secure, -1) is None
    assert len(secure.headers) == 2
    assert events(plain, secure).count("ReconfigurationOfSecurityParameters") == 2


async def test_a_security_profile_upgrade_that_fails_falls_back_to_the_previous_one(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    with_key(tmp_path)
    # The root the CSMS installs is not the one its TLS server's certificate chains to.
    wrong_root = write_tls_files(tmp_path / "wrong").ca_cert.read_text()
    async with ScriptedCsms() as plain, ScriptedCsms(ssl=server_ssl_context(tls_files)) as secure:
        config = scenario_config(
            tmp_path,
            plain,
            chargepoint__csms_tls_url=secure.url,
            chargepoint__fallback_attempts=2,
        )
        async with running(config) as kiosk:
            await ready(kiosk)
            assert await install_root(plain, wrong_root) == "Accepted"
            to_2 = await configure(plain, "SecurityProfile", "2")
            await plain.call("Reset", {"type": "Hard"})
            await plain.wait_calls("BootNotification", 2, within_s=30)
            await ready(kiosk)
            await plain.wait_for(
                "the fallback's security event",
                lambda: any(
                    "fallback" in p.get("techInfo", "")
                    for p in plain.payloads("SecurityEventNotification")
                ),
            )
            profile = await get_key(plain, "SecurityProfile")
        fallback_log = kiosk.daemon.log.read_text()

    assert plain.violations == [] and secure.violations == []
    assert to_2 == "Accepted"
    assert profile["value"] == "1"
    assert secure.calls() == []  # the TLS handshake never got through
    sent = events(plain)
    assert "InvalidCentralSystemCertificate" in sent
    assert sent.index("InvalidCentralSystemCertificate") < len(sent) - 1
    assert sent[-1] == "ReconfigurationOfSecurityParameters"
    assert plain.payloads("SecurityEventNotification")[-1]["techInfo"].endswith(
        "SecurityProfile 2 -> 1"
    )
    assert authorization(plain, -1) == basic(KEY)
    assert "new security settings failed to connect 2 times" in fallback_log


async def test_authorization_key_is_write_only_and_a_key_the_csms_refuses_falls_back(
    tmp_path: Path,
) -> None:
    with_key(tmp_path)
    check, attempts = refuse_all_but(KEY)
    csms = ScriptedCsms()
    csms._record_request = check  # type: ignore[method-assign,assignment]
    async with csms:
        config = scenario_config(tmp_path, csms, chargepoint__fallback_attempts=2)
        async with running(config) as kiosk:
            await ready(kiosk)
            shown = await get_key(csms, "AuthorizationKey")
            everything = await csms.call("GetConfiguration", {})
            too_short = await configure(csms, "AuthorizationKey", "short")
            new_key = "second-Key_0123456789ab"
            changed = await configure(csms, "AuthorizationKey", new_key)
            await csms.wait_for(
                "two refused connections with the new key, then the old one again",
                lambda: attempts[-3:] == [basic(new_key), basic(new_key), basic(KEY)],
                within_s=30,
            )
            await ready(kiosk)
            await csms.wait_for(
                "the fallback event",
                lambda: any(
                    "AuthorizationKey restored" in p.get("techInfo", "")
                    for p in csms.payloads("SecurityEventNotification")
                ),
            )
        log = kiosk.daemon.log.read_text()

    assert csms.violations == []
    assert shown == {"key": "AuthorizationKey", "readonly": False}  # named, never shown
    listed = [e for e in everything["configurationKey"] if e["key"] == "AuthorizationKey"]
    assert listed == [{"key": "AuthorizationKey", "readonly": False}]
    assert too_short == "Rejected" and changed == "Accepted"
    sent = events(csms)
    assert "FailedToAuthenticateAtCentralSystem" in sent
    assert sent.count("ReconfigurationOfSecurityParameters") == 2  # the change, the fallback
    assert new_key not in log and KEY not in log
    assert len(csms.calls("BootNotification")) == 1  # reconnections, not restarts


# -- GetLog and ExtendedTriggerMessage ---------------------------------------------------------


async def test_get_log_uploads_the_security_log_and_extended_triggers_answer(
    tmp_path: Path,
) -> None:
    with_key(tmp_path)
    with FileServer() as server:
        server.allow_put = False  # a server that takes form uploads only
        async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
            await ready(kiosk)
            reply = await csms.call(
                "GetLog",
                {
                    "logType": "SecurityLog",
                    "requestId": 9,
                    "log": {"remoteLocation": server.url("/logs/")},
                },
            )
            await csms.wait_for(
                "Uploaded",
                lambda: (
                    [p["status"] for p in csms.payloads("LogStatusNotification")]
                    == ["Uploading", "Uploaded"]
                ),
            )
            triggers = {
                message: await csms.call("ExtendedTriggerMessage", {"requestedMessage": message})
                for message in ("LogStatusNotification", "Heartbeat", "StatusNotification")
            }
            await csms.wait_calls("Heartbeat")
            await csms.wait_for("Idle", lambda: len(csms.payloads("LogStatusNotification")) == 3)
            unusable = await csms.call(
                "GetLog",
                {
                    "logType": "DiagnosticsLog",
                    "requestId": 10,
                    "log": {"remoteLocation": "gopher://127.0.0.1/logs"},
                },
            )

    assert csms.violations == []
    assert reply["status"] == "Accepted" and reply["filename"].endswith(".tar.gz")
    assert all(t == {"status": "Accepted"} for t in triggers.values())
    assert csms.payloads("LogStatusNotification") == [
        {"status": "Uploading", "requestId": 9},
        {"status": "Uploaded", "requestId": 9},
        {"status": "Idle"},
    ]
    assert unusable == {"status": "Rejected"}
    assert server.count("PUT", f"/logs/{reply['filename']}") == 1
    archive = server.uploads[f"/logs/{reply['filename']}"]
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("security-log.csv")
        assert member is not None
        rows = member.read().decode().splitlines()
    assert rows[0] == "seq,timestamp,type,critical,techInfo"
    assert ",StartupOfTheDevice,true," in rows[1]


async def test_a_new_get_log_cancels_the_upload_in_progress(tmp_path: Path) -> None:
    with FileServer() as server:
        server.fail["/broken"] = 500
        async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
            await ready(kiosk)

            def get_log(request_id: int, location: str) -> dict[str, Any]:
                return {
                    "logType": "DiagnosticsLog",
                    "requestId": request_id,
                    "retries": 3,
                    "retryInterval": 60,
                    "log": {"remoteLocation": location},
                }

            first = await csms.call("GetLog", get_log(10, server.url("/broken")))
            # The first try failed; the upload now waits a minute for its retry.
            await server.wait_for("the first try", lambda: server.count("PUT", "/broken"))
            second = await csms.call("GetLog", get_log(11, server.url("/logs/")))
            await csms.wait_for(
                "request 11 uploaded",
                lambda: (
                    {"status": "Uploaded", "requestId": 11}
                    in csms.payloads("LogStatusNotification")
                ),
            )

    assert csms.violations == []
    assert first["status"] == "Accepted" and second["status"] == "AcceptedCanceled"
    assert server.count("PUT", "/broken") == 1  # no retry after the cancel
    assert csms.payloads("LogStatusNotification") == [
        {"status": "Uploading", "requestId": 10},
        {"status": "Uploading", "requestId": 11},
        {"status": "Uploaded", "requestId": 11},
    ]
    members = server.uploads[f"/logs/{second['filename']}"]
    with tarfile.open(fileobj=io.BytesIO(members), mode="r:gz") as tar:
        assert {"edgepoint.log", "health.json"} <= set(tar.getnames())
