"""The security extension's rules without a daemon: events, profile guards, the fallback."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.tls import TlsFiles
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from edgepoint.chargepoint.security import (
    CertificateManager,
    SecurityEvents,
    SecurityPolicy,
    classify_failure,
    configured_profile,
    password_problem,
    renewal_due,
    tls_url,
)
from edgepoint.chargepoint.settings import Settings
from edgepoint.clock import SystemClock
from edgepoint.config import ChargePointConfig
from edgepoint.ocppj.endpoint import Reply
from edgepoint.storage import security as security_storage
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.security import SecurityStore
from edgepoint.storage.settings import SettingsRepository

KEY = "file-Key_0123456789abcd"


def chargepoint(url: str = "ws://csms.example:9000/ocpp", **extra: Any) -> ChargePointConfig:
    return ChargePointConfig(
        csms_url=url, auth_key_file=Path("k"), response_timeout=5, reconnect_max_s=1, **extra
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChargePointStore]:
    opened = await ChargePointStore.open(tmp_path / "edgepoint.db")
    yield opened
    await opened.close()


async def outbox(store: ChargePointStore) -> list[tuple[str, dict[str, Any]]]:
    return [(e.action, e.payload) for e in await store.outbox_batch(100) if hasattr(e, "action")]


def tls_error(kind: type[ssl.SSLError], **attributes: Any) -> ssl.SSLError:
    error = kind(1, "handshake failed")
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


@pytest.mark.parametrize(
    ("error", "event"),
    [
        (InvalidStatus(Response(401, "Unauthorized", [])), "FailedToAuthenticateAtCentralSystem"),
        (InvalidStatus(Response(404, "Not Found", [])), None),
        (
            tls_error(ssl.SSLCertVerificationError, verify_code=20, verify_message="unknown CA"),
            "InvalidCentralSystemCertificate",
        ),
        (
            tls_error(ssl.SSLCertVerificationError, verify_code=62, verify_message="mismatch"),
            "CentralSystemFailedToAuthenticate",
        ),
        (tls_error(ssl.SSLError, reason="UNSUPPORTED_PROTOCOL"), "InvalidTLSVersion"),
        (tls_error(ssl.SSLError, reason="NO_SHARED_CIPHER"), "InvalidTLSCipherSuite"),
        (
            tls_error(ssl.SSLError, reason="TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            "FailedToAuthenticateAtCentralSystem",
        ),
        (tls_error(ssl.SSLError, reason="WRONG_VERSION_NUMBER"), None),
        (ConnectionRefusedError(111, "refused"), None),
    ],
)
def test_failed_connections_map_onto_the_whitepapers_events(
    error: BaseException, event: str | None
) -> None:
    found = classify_failure(error)
    assert (found[0] if found else None) == event


def test_passwords_urls_and_the_configured_profile() -> None:
    assert password_problem("x" * 15) and password_problem("x" * 41)
    assert password_problem("sixteen chars ok") is not None  # blanks are not allowed
    assert password_problem(KEY) is None
    assert configured_profile(chargepoint(), None) == 0
    assert configured_profile(chargepoint(), KEY) == 1
    assert configured_profile(chargepoint("wss://c/ocpp"), KEY) == 2
    assert tls_url(chargepoint()) == "wss://csms.example:9000/ocpp"
    assert tls_url(chargepoint(csms_tls_url="wss://tls.example/ocpp")) == "wss://tls.example/ocpp"


async def test_events_are_logged_and_queued_in_the_outbox_in_order(
    store: ChargePointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security_storage, "SECURITY_LOG_ROWS", 3)
    woken: list[int] = []
    all_stored = asyncio.Event()

    def wake() -> None:
        woken.append(1)
        if len(woken) == 4:
            all_stored.set()

    events = SecurityEvents(SecurityStore(store.db), SystemClock(), wake)
    service = asyncio.create_task(events.run())
    try:
        await events.raise_event("StartupOfTheDevice", "edgepoint 1.0")
        events.notice("SettingSystemTime", "x" * 400)
        events.notice("InvalidMessages")
        events.notice("TamperDetectionActivated", "line\nbreak")
        async with asyncio.timeout(5):
            await all_stored.wait()
    finally:
        service.cancel()
    queued = await outbox(store)
    assert [a for a, _ in queued] == ["SecurityEventNotification"] * 4
    assert [p["type"] for _, p in queued] == [
        "StartupOfTheDevice",
        "SettingSystemTime",
        "InvalidMessages",
        "TamperDetectionActivated",
    ]
    assert len(queued[1][1]["techInfo"]) == 255 and "techInfo" not in queued[2][1]
    assert queued[3][1]["techInfo"] == "line?break"  # no forged log lines
    logged = await SecurityStore(store.db).security_log()
    assert [(e.type, e.critical) for e in logged] == [  # a rolling log of 3
        ("SettingSystemTime", True),
        ("InvalidMessages", False),
        ("TamperDetectionActivated", True),
    ]


class Link:
    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}


async def policy_for(
    store: ChargePointStore, tmp_path: Path, config: ChargePointConfig, fallback_after: int = 2
) -> tuple[SecurityPolicy, Settings, CertificateManager]:
    settings = Settings({"SecurityProfile": "1"})
    events = SecurityEvents(SecurityStore(store.db), SystemClock(), lambda: None)
    certificates = CertificateManager(
        SecurityStore(store.db),
        settings,
        events,
        SystemClock(),
        "CP-1",
        tmp_path / "pki",
        Link().call,
    )
    await certificates.load()
    policy = SecurityPolicy(
        config,
        KEY,
        settings,
        SettingsRepository(store.db),
        SecurityStore(store.db),
        certificates,
        events,
        SystemClock(),
        fallback_after,
    )
    await policy.load()
    settings.guard("SecurityProfile", policy.check_security_profile)
    settings.guard("AuthorizationKey", policy.check_authorization_key)
    policy.attach()
    return policy, settings, certificates


async def test_profile_guards_need_their_certificates_first(
    store: ChargePointStore, tmp_path: Path, tls_files: TlsFiles
) -> None:
    policy, settings, certificates = await policy_for(store, tmp_path, chargepoint())
    assert settings.change("SecurityProfile", "2").reason.startswith("needs a CentralSystemRoot")
    install = {"certificateType": "CentralSystemRootCertificate"}
    reply = await certificates.install_certificate(
        install | {"certificate": tls_files.ca_cert.read_text()}
    )
    assert reply == Reply({"status": "Accepted"})
    assert settings.change("SecurityProfile", "3").reason.startswith("needs a charge point")
    assert settings.change("SecurityProfile", "2").accepted
    assert (
        settings.change("SecurityProfile", "1").reason == "the security profile is only ever raised"
    )
    credentials = await policy.credentials()
    assert credentials.url == "wss://csms.example:9000/ocpp" and credentials.auth_key == KEY
    assert credentials.tls is not None and credentials.profile == 2
    # A configured client certificate is the identity profile 3 needs.
    configured = chargepoint(
        "wss://c/ocpp", client_cert_file=tls_files.client_cert, client_key_file=tls_files.client_key
    )
    policy3, settings3, _ = await policy_for(store, tmp_path, configured)
    assert settings3.change("SecurityProfile", "3").accepted
    three = await policy3.credentials()
    assert three.auth_key is None and three.profile == 3


async def test_new_settings_that_keep_failing_fall_back_and_say_so(
    store: ChargePointStore, tmp_path: Path, tls_files: TlsFiles
) -> None:
    policy, settings, certificates = await policy_for(store, tmp_path, chargepoint())
    reconnects: list[int] = []
    policy.reconnect = lambda: reconnects.append(1)
    await policy.connected()  # profile 1 with the file's key connected
    await certificates.install_certificate(
        {
            "certificateType": "CentralSystemRootCertificate",
            "certificate": tls_files.ca_cert.read_text(),
        }
    )
    assert settings.change("SecurityProfile", "2").accepted
    assert settings.change("AuthorizationKey", "new-Key_0123456789abcd").accepted
    assert reconnects == [1]  # the new key at once; the profile from the next connection
    refused = InvalidStatus(Response(401, "Unauthorized", []))
    await policy.failed(refused)
    assert settings.integer("SecurityProfile") == 2
    await policy.failed(refused)
    assert settings.integer("SecurityProfile") == 1
    assert settings.value("AuthorizationKey") == ""  # the file's key again
    assert (await policy.credentials()).auth_key == KEY
    stored = {o.key: o.value for o in await SettingsRepository(store.db).overrides()}
    assert stored["SecurityProfile"] == "1" and stored["AuthorizationKey"] == ""
    # (The changes themselves were noticed for the events service, not running here.)
    logged = [e.type for e in await SecurityStore(store.db).security_log()]
    assert logged == ["FailedToAuthenticateAtCentralSystem", "ReconfigurationOfSecurityParameters"]
    # A restart remembers what connected last.
    again, _, _ = await policy_for(store, tmp_path, chargepoint())
    assert again._connected_with == {"SecurityProfile": "1", "AuthorizationKey": ""}


def certificate(valid_from: timedelta, valid_for: timedelta) -> tuple[x509.Certificate, bytes]:
    """A self-signed certificate for CP-1 valid from now + `valid_from`, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CP-1")])
    start = datetime.now(UTC) + valid_from
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return built, key_pem


def test_renewal_is_due_in_the_last_month_or_the_last_fifth() -> None:
    now = datetime.now(UTC)
    year, _ = certificate(timedelta(days=-300), timedelta(days=365))  # 65 days left
    assert not renewal_due(year, now)
    assert renewal_due(year, now + timedelta(days=36))  # 29 days left
    month, _ = certificate(timedelta(days=-1), timedelta(days=30))  # 29 of 30 left
    assert not renewal_due(month, now)
    assert renewal_due(month, now + timedelta(days=24))  # 5 days left: the last fifth
    assert renewal_due(month, now + timedelta(days=40))  # expired


class SigningLink:
    """A CSMS that answers SignCertificate with `status` and keeps the CSRs."""

    def __init__(self, status: str = "Accepted") -> None:
        self.status = status
        self.csrs: list[str] = []

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert action == "SignCertificate"
        self.csrs.append(payload["csr"])
        return {"status": self.status}


async def test_a_certificate_near_its_end_is_renewed_with_a_new_key_once(
    store: ChargePointStore, tmp_path: Path
) -> None:
    link = SigningLink("Rejected")
    folder = tmp_path / "pki"
    settings = Settings({"CpoName": "CPO"})
    events = SecurityEvents(SecurityStore(store.db), SystemClock(), lambda: None)
    manager = CertificateManager(
        SecurityStore(store.db), settings, events, SystemClock(), "CP-1", folder, link.call
    )
    assert await manager.renew_if_due() is False  # no certificate installed: nothing to renew
    folder.mkdir(mode=0o700)
    fresh, key_pem = certificate(timedelta(days=-1), timedelta(days=365))
    manager.key_file.write_bytes(key_pem)
    manager.certificate_file.write_bytes(fresh.public_bytes(serialization.Encoding.PEM))
    assert await manager.renew_if_due() is False and link.csrs == []
    ending, _ = certificate(timedelta(days=-360), timedelta(days=365))
    manager.certificate_file.write_bytes(ending.public_bytes(serialization.Encoding.PEM))
    # The CSMS refuses: no key kept, the next check asks again.
    assert await manager.renew_if_due() is True
    assert not manager.pending_key_file.exists()
    link.status = "Accepted"
    assert await manager.renew_if_due() is True
    assert len(link.csrs) == 2 and link.csrs[0] != link.csrs[1]
    csr = x509.load_pem_x509_csr(link.csrs[1].encode())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CP-1"
    assert stat.S_IMODE(manager.pending_key_file.stat().st_mode) == 0o600
    # Accepted: the CA is at it; no new key at every check meanwhile.
    assert await manager.renew_if_due() is False
    assert len(link.csrs) == 2
    # The key in use is untouched until CertificateSigned brings the new certificate.
    assert manager.key_file.read_bytes() == key_pem
