"""Firmware Management and the Security extension, assembled for the composition root.

app.py builds a Maintenance before the CSMS link (the link takes its SecurityPolicy),
attaches it once the kiosk and the command handler exist (their handlers, the
triggers, the guards of SecurityProfile and AuthorizationKey), runs its services under
the supervisor, and tells it when the daemon stops for a reset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from edgepoint import __version__
from edgepoint.chargepoint.diagnostics import DiagnosticsService
from edgepoint.chargepoint.firmware import FirmwareService
from edgepoint.chargepoint.security import (
    ActionHandler,
    CertificateManager,
    SecurityEvents,
    SecurityPolicy,
    configured_profile,
    extended_trigger,
)
from edgepoint.chargepoint.settings import Settings
from edgepoint.clock import Clock
from edgepoint.config import Config
from edgepoint.errors import StorageError
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.firmware import FirmwareStore
from edgepoint.storage.security import SecurityStore
from edgepoint.storage.settings import SettingsRepository

log = logging.getLogger(__name__)

LOG_FOLDER = "logs"
PKI_FOLDER = "pki"
FIRMWARE_FOLDER = "firmware"
UPLOAD_FOLDER = "uploads"
# How often the charge point certificate's remaining validity is looked at (A03).
RENEWAL_CHECK_S = 6 * 3600.0


class CommandsPort(Protocol):
    def extend(
        self,
        handlers: dict[str, ActionHandler],
        triggers: dict[str, Callable[[], Awaitable[None]]] | None = None,
    ) -> None: ...

    async def trigger_message(self, payload: dict[str, Any]) -> Any: ...


class LinkPort(Protocol):
    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]: ...
    async def wait_online(self) -> None: ...
    def request_reconnect(self) -> None: ...
    def snapshot(self) -> Any: ...


class KioskPort(Protocol):
    def snapshot(self) -> Any: ...


def file_values(config: Config, auth_key: str | None) -> dict[str, str]:
    """config.toml's [ocpp] values, with the SecurityProfile its connection settings make
    (unless [ocpp] sets it): the value a CSMS change is compared against at each start."""
    values = dict(config.ocpp)
    values.setdefault("SecurityProfile", str(configured_profile(config.chargepoint, auth_key)))
    return values


class Maintenance:
    """The security events, certificates, connection policy, diagnostics and firmware."""

    def __init__(
        self,
        config: Config,
        store: ChargePointStore,
        settings: Settings,
        auth_key: str | None,
        clock: Clock,
    ) -> None:
        self._config = config
        self._store = store
        self._settings = settings
        self._clock = clock
        self._wake: Callable[[], None] = lambda: None
        self._link: LinkPort | None = None
        self._kiosk: KioskPort | None = None
        self._reset: str | None = None
        folder = config.storage.dir
        security_store = SecurityStore(store.db)
        notices = FirmwareStore(store.db)
        self.events = SecurityEvents(security_store, clock, self.wake_outbox)
        self.certificates = CertificateManager(
            security_store,
            settings,
            self.events,
            clock,
            config.station.id,
            folder / PKI_FOLDER,
            self._call,
            () if config.chargepoint.ca_file is None else (config.chargepoint.ca_file,),
        )
        self.policy = SecurityPolicy(
            config.chargepoint,
            auth_key,
            settings,
            SettingsRepository(store.db),
            security_store,
            self.certificates,
            self.events,
            clock,
            config.chargepoint.fallback_attempts,
        )
        self.diagnostics = DiagnosticsService(
            config.station.id,
            folder / LOG_FOLDER,
            folder / UPLOAD_FOLDER,
            (config.storage.chargepoint_db, config.storage.csms_db),
            notices,
            security_store,
            clock,
            self.wake_outbox,
            status=self._status,
            timeout_s=config.firmware.transfer_timeout_s,
            tls=self.transfer_tls,
        )
        self.firmware = FirmwareService(
            config.firmware,
            notices,
            self.certificates,
            self.events,
            clock,
            folder / FIRMWARE_FOLDER,
            self.wake_outbox,
            self._sessions_running,
            self._restart_for_firmware,
            tls=self.transfer_tls,
            station_id=config.station.id,
        )
        self._restart: Callable[[bool], None] = lambda hard: None

    @classmethod
    async def open(
        cls,
        config: Config,
        store: ChargePointStore,
        settings: Settings,
        auth_key: str | None,
        clock: Clock,
    ) -> Maintenance:
        maintenance = cls(config, store, settings, auth_key, clock)
        await maintenance.certificates.load()
        await maintenance.policy.load()
        return maintenance

    @property
    def services(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("security events", self.events.run),
            ("diagnostics", self.diagnostics.run),
            ("firmware", self.firmware.run),
            ("certificate renewal", self._renew_certificate),
        ]

    def wake_outbox(self) -> None:
        self._wake()

    def attach(
        self,
        link: LinkPort,
        commands: CommandsPort,
        kiosk: KioskPort,
        wake_outbox: Callable[[], None],
        restart: Callable[[bool], None],
    ) -> None:
        """Wire the handlers, triggers and guards; after this the CSMS may use them all."""
        self._link = link
        self._kiosk = kiosk
        self._wake = wake_outbox
        self._restart = restart
        self.policy.reconnect = link.request_reconnect
        self._settings.guard("SecurityProfile", self.policy.check_security_profile)
        self._settings.guard("AuthorizationKey", self.policy.check_authorization_key)
        self.policy.attach()
        handlers: dict[str, ActionHandler] = {
            "GetDiagnostics": self.diagnostics.get_diagnostics,
            "UpdateFirmware": self.firmware.update_firmware,
            "GetLog": self.diagnostics.get_log,
            "SignedUpdateFirmware": self.firmware.signed_update_firmware,
            **self.certificates.handlers(),
        }
        handlers["ExtendedTriggerMessage"] = extended_trigger(
            commands.trigger_message,
            {
                "SignChargePointCertificate": self.certificates.send_csr,
                "FirmwareStatusNotification": self.firmware.trigger_signed_status,
                "LogStatusNotification": self.diagnostics.trigger_log_status,
            },
        )
        commands.extend(
            handlers,
            {
                "DiagnosticsStatusNotification": self.diagnostics.trigger_diagnostics_status,
                "FirmwareStatusNotification": self.firmware.trigger_status,
            },
        )

    def noting_time(self, adopt: Callable[[Any], bool] | None) -> Callable[[Any], bool] | None:
        """Wrap the clock's adopt_time: a time taken from the CSMS is a SettingSystemTime event."""
        if adopt is None:
            return None

        def adopt_and_note(moment: Any) -> bool:
            adopted = adopt(moment)
            if adopted:
                when = moment.isoformat() if isinstance(moment, datetime) else str(moment)
                self.events.notice("SettingSystemTime", f"set from the CSMS's time {when}")
            return adopted

        return adopt_and_note

    async def started(self) -> None:
        """The daemon is up: the StartupOfTheDevice event (critical: it reaches the CSMS)."""
        await self._raise("StartupOfTheDevice", f"edgepoint {__version__}")

    def note_reset(self, hard: bool, why: str = "requested by the CSMS") -> None:
        self._reset = f"{'hard' if hard else 'soft'} reset {why}"

    async def stopping(self) -> None:
        """The daemon stops: a reset is the ResetOrReboot event (queued; sent if online)."""
        if self._reset is not None:
            await self._raise("ResetOrReboot", self._reset)

    async def _raise(self, event: str, info: str) -> None:
        try:
            await self.events.raise_event(event, info)
        except StorageError as err:  # the daemon carries on without its security log
            log.error("cannot store the security event %s: %s", event, err)

    def transfer_tls(self) -> ssl.SSLContext:
        """HTTPS/FTPS for uploads and downloads: system CAs, ca_file, the CSMS roots."""
        ca_file = self._config.chargepoint.ca_file
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        roots = self.certificates.csms_roots_pem()
        if roots:
            context.load_verify_locations(cadata=roots)
        return context

    # -- what the services ask of the rest -------------------------------------------------

    async def _call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._link is None:
            raise RuntimeError("not attached to the CSMS link")
        return await self._link.call(action, payload)

    async def _renew_certificate(self) -> None:
        """A03: look at the charge point certificate once online, then every few hours."""
        while True:
            if self._link is not None:
                await self._link.wait_online()
                await self.certificates.renew_if_due()
            await asyncio.sleep(RENEWAL_CHECK_S)

    def _sessions_running(self) -> bool:
        if self._kiosk is None:
            return False
        return any(c.session_id is not None for c in self._kiosk.snapshot().connectors)

    def _restart_for_firmware(self) -> None:
        self.note_reset(False, "to run the installed firmware")
        self._restart(False)

    async def _status(self) -> dict[str, Any]:
        """What the diagnostics archive says about the charge point (no card ids)."""
        status: dict[str, Any] = {"station": self._config.station.id, "version": __version__}
        if self._kiosk is not None:
            status["connectors"] = [
                {
                    "id": c.id,
                    "status": str(c.status),
                    "phase": str(c.phase),
                    "operative": c.operative,
                    "faults": [str(f) for f in c.faults],
                    "in_session": c.session_id is not None,
                }
                for c in self._kiosk.snapshot().connectors
            ]
        if self._link is not None:
            status["csms_link"] = _plain(self._link.snapshot())
        status["outbox"] = _plain(await self._store.outbox_summary())
        status["security_profile"] = self._settings.value("SecurityProfile")
        return status


def _plain(snapshot: Any) -> Mapping[str, Any] | Any:
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        return dataclasses.asdict(snapshot)
    return snapshot
