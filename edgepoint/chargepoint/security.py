"""The OCPP 1.6 Security Whitepaper (edition 3) on the charge point side.

- SecurityEvents: every security event goes to the security log and, as a
  SecurityEventNotification, through the outbox (durable, in order, delivered once).
- CertificateManager: the CSMS's root certificates (InstallCertificate, DeleteCertificate,
  GetInstalledCertificateIds), the charge point certificate of security profile 3
  (a key and CSR made here, SignCertificate; CertificateSigned installs the chain),
  renewed by the charge point itself before it expires (use case A03).
- SecurityPolicy: the credentials of each connection from SecurityProfile (0-3, only
  ever raised), AuthorizationKey (write-only) and the certificates; when new settings
  keep failing to connect, it falls back to the settings that last connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from websockets.exceptions import InvalidStatus

from edgepoint.chargepoint import pki
from edgepoint.chargepoint.link import Credentials, tls_context
from edgepoint.chargepoint.settings import (
    ChangeOutcome,
    ConfigurationStatus,
    SettingChange,
    Settings,
)
from edgepoint.clock import Clock
from edgepoint.config import ChargePointConfig
from edgepoint.errors import StorageError
from edgepoint.ocppj.endpoint import Reply
from edgepoint.ocppj.errors import CallErrorReceived, ConnectionLost, InvalidReply
from edgepoint.redact import printable
from edgepoint.storage.security import SecurityStore
from edgepoint.storage.settings import SettingsRepository

log = logging.getLogger(__name__)

# The whitepaper's security events (appendix), with whether each is critical. Critical
# ones must reach the CSMS; we send every event we raise, all through the outbox, and
# keep all of them in the security log.
EVENTS: Mapping[str, bool] = {
    "FirmwareUpdated": True,
    "FailedToAuthenticateAtCentralSystem": False,
    "CentralSystemFailedToAuthenticate": False,
    "SettingSystemTime": True,
    "StartupOfTheDevice": True,
    "ResetOrReboot": True,
    "SecurityLogWasCleared": True,
    "ReconfigurationOfSecurityParameters": False,
    "MemoryExhaustion": True,
    "InvalidMessages": False,
    "AttemptedReplayAttacks": False,
    "TamperDetectionActivated": True,
    "InvalidFirmwareSignature": False,
    "InvalidFirmwareSigningCertificate": False,
    "InvalidCentralSystemCertificate": False,
    "InvalidChargePointCertificate": False,
    "InvalidTLSVersion": False,
    "InvalidTLSCipherSuite": False,
}
CENTRAL_SYSTEM_ROOT = "CentralSystemRootCertificate"
MANUFACTURER_ROOT = "ManufacturerRootCertificate"
# Failed connections with new security settings before the previous ones come back.
FALLBACK_ATTEMPTS = 5
# AuthorizationKey: the whitepaper's passwordString, 16 to 40 characters.
_PASSWORD_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-_=:+|@."
)
# OpenSSL's reasons that name the TLS version or the cipher suites as the problem.
_TLS_VERSION_REASONS = frozenset(
    {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"}
)
_CIPHER_REASONS = frozenset(
    {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "TLSV1_ALERT_INSUFFICIENT_SECURITY"}
)
# The CSMS refused our client certificate.
_CLIENT_CERT_REASONS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
    }
)
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
# A03: the charge point asks for a new certificate once its own has this little left:
# a month, or its last fifth for a short-lived one (a 30-day certificate: 6 days).
RENEW_WITHIN = timedelta(days=30)
RENEW_SHARE = 0.2
# A CSR sent this recently is still being signed: no new key until then.
CSR_PATIENCE_S = 24 * 3600.0
_QUEUED_EVENTS_MAX = 256

ActionHandler = Callable[[dict[str, Any]], Awaitable[Reply]]


def new_message_id() -> str:
    return uuid.uuid4().hex


# -- security events ----------------------------------------------------------------------


class SecurityEvents:
    """Raises security events: the security log plus a SecurityEventNotification queued
    in the outbox, in one transaction. A supervised service writes those raised from
    code that cannot wait (`notice`)."""

    def __init__(self, store: SecurityStore, clock: Clock, wake_outbox: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake_outbox = wake_outbox
        self._pending: deque[tuple[str, str | None, datetime]] = deque()
        self._arrived = asyncio.Event()

    async def raise_event(
        self, event_type: str, tech_info: str | None = None, at: datetime | None = None
    ) -> None:
        """Log the event and queue its notification; StorageError if it cannot be stored."""
        info = None if tech_info is None else printable(tech_info, 255)
        moment = at or self._clock.utc_now()
        await self._store.record_event(
            event_type, info, EVENTS.get(event_type, False), moment, new_message_id()
        )
        log.warning("security event %s%s", event_type, f": {info}" if info else "")
        self._wake_outbox()

    def notice(self, event_type: str, tech_info: str | None = None) -> None:
        """Raise an event from code that cannot wait; the service writes it within moments."""
        if len(self._pending) >= _QUEUED_EVENTS_MAX:
            log.error("security events arrive faster than they are stored: %s dropped", event_type)
            return
        self._pending.append((event_type, tech_info, self._clock.utc_now()))
        self._arrived.set()

    async def run(self) -> None:
        """Store noticed events in order; an event leaves the queue only once stored."""
        while True:
            while self._pending:
                event_type, info, at = self._pending[0]
                await self.raise_event(event_type, info, at)
                self._pending.popleft()
            self._arrived.clear()
            await self._arrived.wait()


# -- certificates -------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (rename over the old one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


class CertificateManager:
    """Root certificates in edgepoint.db; the charge point's own key and certificate in
    files under `folder` (0700, keys 0600), since TLS loads them from files."""

    def __init__(
        self,
        store: SecurityStore,
        settings: Settings,
        events: SecurityEvents,
        clock: Clock,
        station_id: str,
        folder: Path,
        call: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
        configured_anchors: tuple[Path, ...] = (),
    ) -> None:
        self._store = store
        self._settings = settings
        self._events = events
        self._clock = clock
        self._station_id = station_id
        self._folder = folder
        self._call = call
        self._configured_anchors = configured_anchors
        self._roots: dict[str, list[x509.Certificate]] = {}

    @property
    def key_file(self) -> Path:
        return self._folder / "chargepoint.key"

    @property
    def certificate_file(self) -> Path:
        return self._folder / "chargepoint.pem"

    @property
    def pending_key_file(self) -> Path:
        return self._folder / "chargepoint.key.pending"

    async def load(self) -> None:
        """Read the installed roots into memory (the link needs them without waiting)."""
        roots: dict[str, list[x509.Certificate]] = {CENTRAL_SYSTEM_ROOT: [], MANUFACTURER_ROOT: []}
        for stored in await self._store.certificates():
            try:
                roots.setdefault(stored.use, []).extend(pki.parse_certificates(stored.pem)[:1])
            except pki.CertificateProblem as err:
                log.error("installed certificate #%d is unreadable: %s", stored.id, err)
        self._roots = roots

    def roots(self, use: str) -> list[x509.Certificate]:
        return list(self._roots.get(use, ()))

    def csms_roots_pem(self) -> str | None:
        roots = self.roots(CENTRAL_SYSTEM_ROOT)
        return "".join(pki.to_pem(c) for c in roots) or None

    def has_csms_trust(self, ca_file: Path | None) -> bool:
        return bool(self.roots(CENTRAL_SYSTEM_ROOT)) or ca_file is not None

    def identity(self) -> tuple[Path, Path] | None:
        """The installed charge point certificate chain and key, if any."""
        if self.certificate_file.is_file() and self.key_file.is_file():
            return self.certificate_file, self.key_file
        return None

    def _anchors(self) -> list[x509.Certificate]:
        anchors = self.roots(CENTRAL_SYSTEM_ROOT)
        for path in self._configured_anchors:
            with contextlib.suppress(OSError, pki.CertificateProblem):
                anchors.extend(pki.parse_certificates(path.read_text(encoding="utf-8")))
        return anchors

    # -- InstallCertificate / DeleteCertificate / GetInstalledCertificateIds -------------

    async def install_certificate(self, payload: dict[str, Any]) -> Reply:
        use = payload["certificateType"]
        try:
            certificate = pki.parse_certificates(payload["certificate"])[0]
            if not pki.is_ca(certificate):
                raise pki.CertificateProblem("not a CA certificate")
            if not pki.valid_at(certificate, self._clock.utc_now()):
                raise pki.CertificateProblem("not valid now")
        except pki.CertificateProblem as err:
            log.warning("InstallCertificate %s rejected: %s", use, err)
            return Reply({"status": "Rejected"})
        installed = self.roots(use)
        fingerprint = pki.fingerprint(certificate)
        if any(pki.fingerprint(c) == fingerprint for c in installed):
            return Reply({"status": "Accepted"})  # already there: nothing to do
        replace: tuple[int, ...] = ()
        if use == CENTRAL_SYSTEM_ROOT and installed and self._flag_additional_check():
            # AdditionalRootCertificateCheck: one CSMS root at a time, and the new one
            # must be signed by the one it replaces.
            if not any(pki.signed_by(certificate, old) for old in installed):
                log.warning("InstallCertificate: new CSMS root is not signed by the current one")
                return Reply({"status": "Rejected"})
            replace = tuple(
                stored.id for stored in await self._store.certificates(CENTRAL_SYSTEM_ROOT)
            )
        elif await self._store.certificate_count() >= self._settings.integer(
            "CertificateStoreMaxLength"
        ):
            log.warning("InstallCertificate rejected: CertificateStoreMaxLength reached")
            return Reply({"status": "Rejected"})
        try:
            await self._store.add_certificate(
                use, pki.to_pem(certificate), fingerprint, self._clock.utc_now(), replace
            )
        except StorageError as err:
            log.error("InstallCertificate failed: %s", err)
            return Reply({"status": "Failed"})
        await self.load()
        log.info("installed %s %s", use, pki.common_name(certificate) or fingerprint[:16])
        return Reply({"status": "Accepted"})

    def _flag_additional_check(self) -> bool:
        return self._settings.flag("AdditionalRootCertificateCheck")

    async def delete_certificate(self, payload: dict[str, Any]) -> Reply:
        wanted = payload["certificateHashData"]
        stored = await self._store.certificates()
        parsed = []
        for row in stored:
            with contextlib.suppress(pki.CertificateProblem):
                parsed.append((row, pki.parse_certificates(row.pem)[0]))
        everything = [c for _, c in parsed]
        for row, certificate in parsed:
            if pki.matches(certificate, pki.issuer_among(certificate, everything), wanted):
                csms_roots = [r for r, _ in parsed if r.use == CENTRAL_SYSTEM_ROOT]
                if (
                    row.use == CENTRAL_SYSTEM_ROOT
                    and len(csms_roots) == 1
                    and self._settings.integer("SecurityProfile") >= 2
                    and not self._configured_anchors
                ):
                    # The only root that lets us check the CSMS over TLS: deleting it
                    # would cut the charge point off at its next connection.
                    log.warning("DeleteCertificate refused: the last CSMS root in use")
                    return Reply({"status": "Failed"})
                try:
                    await self._store.delete_certificate(row.id)
                except StorageError as err:
                    log.error("DeleteCertificate failed: %s", err)
                    return Reply({"status": "Failed"})
                await self.load()
                log.info("deleted %s #%d", row.use, row.id)
                return Reply({"status": "Accepted"})
        return Reply({"status": "NotFound"})

    async def get_installed_certificate_ids(self, payload: dict[str, Any]) -> Reply:
        use = payload["certificateType"]
        everything = [c for roots in self._roots.values() for c in roots]
        found = [pki.hash_data(c, pki.issuer_among(c, everything)) for c in self.roots(use)]
        if not found:
            return Reply({"status": "NotFound"})
        return Reply({"status": "Accepted", "certificateHashData": found})

    # -- the charge point certificate ------------------------------------------------------

    async def send_csr(self) -> None:
        """A new key and CSR; the key is kept aside, the CSR goes out in SignCertificate."""
        await self._request_signing()

    async def _request_signing(self) -> bool:
        """send_csr; True if the CSMS accepted the CSR."""
        cpo = self._settings.value("CpoName") or None
        key_pem, csr_pem = await asyncio.to_thread(pki.new_key_and_csr, self._station_id, cpo)
        await asyncio.to_thread(_write_private, self.pending_key_file, key_pem)
        try:
            reply = await self._call("SignCertificate", {"csr": csr_pem})
        except (ConnectionLost, CallErrorReceived, InvalidReply, TimeoutError) as err:
            log.warning("SignCertificate got no answer: %s", err)
            return False
        log.info("SignCertificate: %s", reply.get("status"))
        return reply.get("status") == "Accepted"

    async def certificate_signed(self, payload: dict[str, Any]) -> Reply:
        chain_pem: str = payload["certificateChain"]
        try:
            if len(chain_pem) > self._settings.integer("CertificateSignedMaxChainSize"):
                raise pki.CertificateProblem("longer than CertificateSignedMaxChainSize")
            chain = pki.parse_certificates(chain_pem)
            leaf = chain[0]
            key_pem = await asyncio.to_thread(self._pending_key)
            if key_pem is None:
                raise pki.CertificateProblem("no certificate signing request is pending")
            if not pki.same_public_key(leaf, key_pem):
                raise pki.CertificateProblem("not for the key of our last CSR")
            if pki.common_name(leaf) != self._station_id:
                raise pki.CertificateProblem("its CN is not this charge point's id")
            cpo = self._settings.value("CpoName")
            if cpo and pki.organization(leaf) != cpo:
                raise pki.CertificateProblem("its O is not the CpoName")
            pki.verify_chain(chain, self._anchors(), self._clock.utc_now())
        except pki.CertificateProblem as err:
            log.warning("CertificateSigned rejected: %s", err)
            await self._events.raise_event("InvalidChargePointCertificate", str(err))
            return Reply({"status": "Rejected"})
        await asyncio.to_thread(self._install_identity, chain_pem, key_pem)
        log.info(
            "charge point certificate installed (valid %.0f days); used from the next connection",
            pki.expires_in_days(leaf, self._clock.utc_now()),
        )
        return Reply({"status": "Accepted"})

    async def renew_if_due(self) -> bool:
        """A03: send a CSR when the installed certificate nears its end; True if sent.

        Only the certificate installed by CertificateSigned: a configured
        client_cert_file is the operator's to renew.
        """
        identity = self.identity()
        if identity is None:
            return False
        try:
            text = await asyncio.to_thread(identity[0].read_text, encoding="utf-8")
            leaf = pki.parse_certificates(text)[0]
        except (OSError, pki.CertificateProblem) as err:
            log.error("the installed charge point certificate is unreadable: %s", err)
            return False
        now = self._clock.utc_now()
        if not renewal_due(leaf, now):
            return False
        waited = await asyncio.to_thread(self._csr_age_s)
        if waited is not None and waited < CSR_PATIENCE_S:
            return False
        log.info(
            "the charge point certificate expires in %.1f days: asking for a new one",
            pki.expires_in_days(leaf, now),
        )
        if not await self._request_signing():
            # Not being signed: the next check tries again, with a new key.
            await asyncio.to_thread(self.pending_key_file.unlink, missing_ok=True)
        return True

    def _csr_age_s(self) -> float | None:
        try:
            return time.time() - self.pending_key_file.stat().st_mtime
        except FileNotFoundError:
            return None

    def _pending_key(self) -> bytes | None:
        try:
            return self.pending_key_file.read_bytes()
        except FileNotFoundError:
            return None

    def _install_identity(self, chain_pem: str, key_pem: bytes) -> None:
        # The key first: a crash between the two leaves a key without its certificate
        # (ignored: identity() wants both), never a certificate without its key.
        _write_private(self.key_file, key_pem)
        _write_private(self.certificate_file, chain_pem.encode("utf-8"))
        self.pending_key_file.unlink(missing_ok=True)

    # -- SignedUpdateFirmware ----------------------------------------------------------------

    def check_signing_certificate(self, pem: str) -> x509.Certificate:
        """The firmware signing certificate, if it chains to an installed manufacturer root."""
        chain = pki.parse_certificates(pem)
        pki.verify_chain(chain, self.roots(MANUFACTURER_ROOT), self._clock.utc_now())
        return chain[0]

    def handlers(self) -> dict[str, ActionHandler]:
        return {
            "InstallCertificate": self.install_certificate,
            "DeleteCertificate": self.delete_certificate,
            "GetInstalledCertificateIds": self.get_installed_certificate_ids,
            "CertificateSigned": self.certificate_signed,
        }


def renewal_due(certificate: x509.Certificate, at: datetime) -> bool:
    """True when `certificate` is close enough to its end to ask for a new one (A03)."""
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    left = certificate.not_valid_after_utc - at
    return left <= min(RENEW_WITHIN, lifetime * RENEW_SHARE)


# -- connection settings ------------------------------------------------------------------


def configured_profile(config: ChargePointConfig, auth_key: str | None) -> int:
    """The SecurityProfile the configuration amounts to, before any CSMS change."""
    if config.csms_url.startswith("wss://"):
        return 3 if config.client_cert_file is not None else 2
    return 1 if auth_key else 0


def tls_url(config: ChargePointConfig) -> str:
    """Where profiles 2 and 3 connect: csms_tls_url, or csms_url over wss://."""
    if config.csms_tls_url:
        return config.csms_tls_url
    if config.csms_url.startswith("ws://"):
        return "wss://" + config.csms_url.removeprefix("ws://")
    return config.csms_url


def password_problem(value: str) -> str | None:
    if not 16 <= len(value) <= 40:
        return "must be 16 to 40 characters"
    if not set(value) <= _PASSWORD_CHARS:
        return "may hold only letters, digits and *-_=:+|@."
    return None


def classify_failure(error: BaseException) -> tuple[str, str] | None:
    """The security event a failed connection attempt amounts to, with its tech info."""
    if isinstance(error, InvalidStatus) and error.response.status_code in (401, 403):
        return "FailedToAuthenticateAtCentralSystem", f"HTTP {error.response.status_code}"
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or str(error)
        if error.verify_code == _HOSTNAME_MISMATCH:
            return "CentralSystemFailedToAuthenticate", detail
        return "InvalidCentralSystemCertificate", detail
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if reason in _TLS_VERSION_REASONS:
            return "InvalidTLSVersion", reason
        if reason in _CIPHER_REASONS:
            return "InvalidTLSCipherSuite", reason
        if reason in _CLIENT_CERT_REASONS:
            return "FailedToAuthenticateAtCentralSystem", f"client certificate refused: {reason}"
    return None


class SecurityPolicy:
    """The link's credentials from SecurityProfile, AuthorizationKey and the certificates.

    A raised SecurityProfile applies from the next connection (the CSMS usually follows
    it with a Reset); a new AuthorizationKey at once (the link reconnects after the
    reply). The settings of the last accepted connection are kept in edgepoint.db;
    after `fallback_after` failed attempts with other settings, those come back (and
    are stored as the CSMS's values), with a ReconfigurationOfSecurityParameters event.
    """

    STATE = "connected_with"

    def __init__(
        self,
        config: ChargePointConfig,
        file_key: str | None,
        settings: Settings,
        settings_store: SettingsRepository,
        store: SecurityStore,
        certificates: CertificateManager,
        events: SecurityEvents,
        clock: Clock,
        fallback_after: int = FALLBACK_ATTEMPTS,
    ) -> None:
        self._config = config
        self._file_key = file_key
        self._settings = settings
        self._settings_store = settings_store
        self._store = store
        self._certificates = certificates
        self._events = events
        self._clock = clock
        self._fallback_after = max(1, fallback_after)
        self._connected_with: dict[str, str] | None = None
        self._failures = 0
        self._reported: set[str] = set()  # events raised in this outage (once each)
        self._reverting = False
        self.reconnect: Callable[[], None] = lambda: None  # the link's request_reconnect

    async def load(self) -> None:
        state = await self._store.state(self.STATE)
        self._connected_with = (
            {k: str(v) for k, v in state.items() if isinstance(v, str)} if state else None
        )

    def attach(self) -> None:
        """Guard and follow the keys this policy owns."""
        self._settings.subscribe(self._follow, ["SecurityProfile", "AuthorizationKey"])

    # -- rules for ChangeConfiguration (Settings guards) ---------------------------------

    def check_security_profile(self, old: str, new: str) -> str | None:
        current, wanted = int(old), int(new)
        if wanted < current:
            return "the security profile is only ever raised"
        if wanted == current:
            return None
        if wanted in (1, 2) and not self.auth_key():
            return "needs an AuthorizationKey first"
        if wanted >= 2 and not self._certificates.has_csms_trust(self._config.ca_file):
            return "needs a CentralSystemRootCertificate first"
        if wanted == 3 and self._identity() is None:
            return "needs a charge point certificate first (SignCertificate)"
        return None

    @staticmethod
    def check_authorization_key(old: str, new: str) -> str | None:
        return password_problem(new)

    # -- ConnectionPolicy -----------------------------------------------------------------

    def auth_key(self) -> str | None:
        return self._settings.value("AuthorizationKey") or self._file_key

    def profile(self) -> int:
        return self._settings.integer("SecurityProfile")

    def _identity(self) -> tuple[Path, Path] | None:
        installed = self._certificates.identity()
        if installed is not None:
            return installed
        if self._config.client_cert_file is not None and self._config.client_key_file is not None:
            return self._config.client_cert_file, self._config.client_key_file
        return None

    async def credentials(self) -> Credentials:
        profile = self.profile()
        url = self._config.csms_url if profile <= 1 else tls_url(self._config)
        tls = await asyncio.to_thread(
            tls_context,
            self._config,
            url=url,
            extra_roots=self._certificates.csms_roots_pem(),
            identity=self._identity() if profile == 3 else None,
            use_configured_identity=False,
        )
        key = self.auth_key() if profile in (1, 2) else None
        return Credentials(url, key, tls, profile)

    def _current(self) -> dict[str, str]:
        return {
            "SecurityProfile": self._settings.value("SecurityProfile"),
            "AuthorizationKey": self._settings.value("AuthorizationKey"),
        }

    async def connected(self) -> None:
        self._failures = 0
        self._reported.clear()
        current = self._current()
        if current != self._connected_with:
            await self._store.set_state(self.STATE, current)
            self._connected_with = current
            log.info("connected with SecurityProfile %s", current["SecurityProfile"])

    async def failed(self, error: BaseException) -> None:
        event = classify_failure(error)
        if event is not None and event[0] not in self._reported:
            self._reported.add(event[0])
            await self._events.raise_event(*event)
        previous = self._connected_with
        current = self._current()
        if previous is None or previous == current:
            return
        self._failures += 1
        if self._failures < self._fallback_after:
            return
        self._failures = 0
        await self._fall_back(previous, current)

    async def _fall_back(self, previous: dict[str, str], current: dict[str, str]) -> None:
        now = self._clock.utc_now()
        changed = [key for key in previous if previous[key] != current.get(key)]
        self._reverting = True
        try:
            for key in changed:
                value = previous[key]
                await self._settings_store.save_override(
                    key, value, self._settings.file_value(key), now
                )
                self._settings.apply(ChangeOutcome(ConfigurationStatus.ACCEPTED, key, value))
        finally:
            self._reverting = False
        what = ", ".join(
            f"SecurityProfile {current['SecurityProfile']} -> {previous['SecurityProfile']}"
            if key == "SecurityProfile"
            else "AuthorizationKey restored"
            for key in changed
        )
        log.error(
            "new security settings failed to connect %d times: back to the previous ones (%s)",
            self._fallback_after,
            what,
        )
        await self._events.raise_event(
            "ReconfigurationOfSecurityParameters", f"fallback after failed connections: {what}"
        )

    def _follow(self, change: SettingChange) -> None:
        if self._reverting:
            return
        if change.key == "SecurityProfile":
            self._events.notice(
                "ReconfigurationOfSecurityParameters",
                f"SecurityProfile {change.old} -> {change.new}, from the next connection",
            )
        else:
            self._events.notice("ReconfigurationOfSecurityParameters", "AuthorizationKey changed")
            self.reconnect()


# -- ExtendedTriggerMessage ------------------------------------------------------------------


def extended_trigger(
    core_trigger: ActionHandler,
    triggers: Mapping[str, Callable[[], Awaitable[None]]],
) -> ActionHandler:
    """ExtendedTriggerMessage: the Core messages as TriggerMessage does, the rest from
    `triggers` (SignChargePointCertificate, FirmwareStatusNotification, LogStatusNotification)."""

    async def handle(payload: dict[str, Any]) -> Reply:
        message = payload["requestedMessage"]
        if message in ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification"):
            return await core_trigger(payload)
        send = triggers.get(message)
        if send is None:
            return Reply({"status": "NotImplemented"})
        return Reply({"status": "Accepted"}, after=send)

    return handle
