"""SiteOperator: the site operator's commands to connected chargers (every CSMS-to-charger CALL).

Each method sends one CALL through the charger's live session and returns the charger's
reply payload (camelCase, schema-checked). Errors: ChargerOffline (not connected, or the
connection dropped before the reply), InvalidMessage (the request breaks the OCPP 1.6
schema or is not a CSMS-to-charger action: never sent), CallErrorReceived (the charger
answered with a CALLERROR), InvalidReply (its reply breaks the schema) and TimeoutError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from edgepoint.clock import Clock, iso_utc
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.ids import ChargePointId, CsmsError
from edgepoint.csms.site_db import LocalListRepository
from edgepoint.csms.site_records import LocalListUpdate, UpdateType
from edgepoint.ocppj.errors import ConnectionLost, InvalidMessage
from edgepoint.ocppj.validation import request_problem
from edgepoint.redact import printable
from edgepoint.storage.worker import SqliteWorker

log = logging.getLogger(__name__)

Payload = dict[str, Any]

# The CALLs OCPP 1.6 (with the security whitepaper's extension) lets a central system send.
CSMS_TO_CHARGER_ACTIONS: frozenset[str] = frozenset(
    {
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "DataTransfer",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
        # Security extension.
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    }
)

DEFAULT_TIMEOUT_S = 30.0


class ChargerOffline(CsmsError):
    """The charger is not connected (or its connection closed before it answered)."""

    def __init__(self, charge_point_id: str, detail: str = "not connected") -> None:
        self.charge_point_id = charge_point_id
        super().__init__(f"{charge_point_id}: {detail}")


class CsmsNotRunning(CsmsError):
    """The CSMS has no open database (it is not serving)."""


class ChargerSession(Protocol):
    """What the operator needs of a connected charger (ChargePointSession fits)."""

    async def call(
        self,
        action: str,
        payload: Payload,
        timeout: float = ...,  # noqa: ASYNC109  (the session's own reply timeout)
    ) -> Payload: ...


class Site(Protocol):
    """What the operator needs of the running CSMS (SiteCsms fits)."""

    @property
    def store(self) -> CsmsStore | None: ...

    def connected_ids(self) -> list[ChargePointId]: ...

    def session(self, charge_point_id: str) -> ChargerSession | None: ...


@dataclass(frozen=True, slots=True)
class LocalListOutcome:
    """What send_local_list did: the update built, whether it went out, the charger's reply.

    `sent` is False when a Differential had nothing to carry (the charger is up to date).
    """

    update_type: UpdateType
    list_version: int
    entries: int
    sent: bool
    reply: Payload | None


def _put(payload: Payload, key: str, value: object) -> Payload:
    if value is not None:
        payload[key] = iso_utc(value) if isinstance(value, datetime) else value
    return payload


class SiteOperator:
    """Commands from the site operator to the chargers connected to a running SiteCsms."""

    def __init__(
        self, csms: Site, clock: Clock, *, default_timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._csms = csms
        self._clock = clock
        self._timeout = default_timeout_s

    @property
    def site(self) -> Site:
        return self._csms

    def is_online(self, charge_point_id: str) -> bool:
        """Tell whether the charger is connected now."""
        return self._csms.session(charge_point_id) is not None

    async def command(
        self,
        charge_point_id: str,
        action: str,
        payload: Payload,
        timeout_s: float | None = None,
    ) -> Payload:
        """Send any CSMS-to-charger CALL (camelCase payload) and return the reply payload."""
        if action not in CSMS_TO_CHARGER_ACTIONS:
            raise InvalidMessage(
                f"{printable(action, 40)} is not a CALL a central system sends in OCPP 1.6"
            )
        problem = request_problem(action, payload)
        if problem is not None:
            raise InvalidMessage(f"{action}: {problem.cause or problem.description}")
        session = self._csms.session(charge_point_id)
        if session is None:
            raise ChargerOffline(charge_point_id)
        try:
            reply = await session.call(
                action, payload, self._timeout if timeout_s is None else timeout_s
            )
        except ConnectionLost as err:
            raise ChargerOffline(charge_point_id, "connection closed before the reply") from err
        # The payloads may carry id tags: the log names only the action and the outcome.
        log.info(
            "%s: %s -> %s", charge_point_id, action, printable(str(reply.get("status", "ok")), 32)
        )
        return reply

    # -- typed helpers, one per common action ------------------------------------------

    async def remote_start(
        self,
        charge_point_id: str,
        id_tag: str,
        connector_id: int | None = None,
        *,
        charging_profile: Payload | None = None,
        timeout_s: float | None = None,
    ) -> Payload:
        """RemoteStartTransaction; `charging_profile` is an OCPP csChargingProfiles object."""
        payload = _put({"idTag": id_tag}, "connectorId", connector_id)
        _put(payload, "chargingProfile", charging_profile)
        return await self.command(charge_point_id, "RemoteStartTransaction", payload, timeout_s)

    async def remote_stop(
        self, charge_point_id: str, transaction_id: int, *, timeout_s: float | None = None
    ) -> Payload:
        """RemoteStopTransaction."""
        payload = {"transactionId": transaction_id}
        return await self.command(charge_point_id, "RemoteStopTransaction", payload, timeout_s)

    async def reset(
        self,
        charge_point_id: str,
        kind: Literal["Hard", "Soft"],
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """Reset (Hard or Soft)."""
        return await self.command(charge_point_id, "Reset", {"type": kind}, timeout_s)

    async def unlock(
        self, charge_point_id: str, connector_id: int, *, timeout_s: float | None = None
    ) -> Payload:
        """UnlockConnector."""
        payload = {"connectorId": connector_id}
        return await self.command(charge_point_id, "UnlockConnector", payload, timeout_s)

    async def change_availability(
        self,
        charge_point_id: str,
        connector_id: int,
        operative: bool,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """ChangeAvailability (connector 0 = the whole charger)."""
        payload = {"connectorId": connector_id, "type": "Operative" if operative else "Inoperative"}
        return await self.command(charge_point_id, "ChangeAvailability", payload, timeout_s)

    async def get_configuration(
        self,
        charge_point_id: str,
        keys: Sequence[str] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """GetConfiguration of the given keys, or of every key when None."""
        payload = {} if keys is None else {"key": list(keys)}
        return await self.command(charge_point_id, "GetConfiguration", payload, timeout_s)

    async def change_configuration(
        self, charge_point_id: str, key: str, value: str, *, timeout_s: float | None = None
    ) -> Payload:
        """ChangeConfiguration."""
        payload = {"key": key, "value": value}
        return await self.command(charge_point_id, "ChangeConfiguration", payload, timeout_s)

    async def clear_cache(self, charge_point_id: str, *, timeout_s: float | None = None) -> Payload:
        """ClearCache (the charger's authorization cache)."""
        return await self.command(charge_point_id, "ClearCache", {}, timeout_s)

    async def trigger(
        self,
        charge_point_id: str,
        message: str,
        connector_id: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """TriggerMessage (BootNotification, Heartbeat, MeterValues, StatusNotification, ...)."""
        payload = _put({"requestedMessage": message}, "connectorId", connector_id)
        return await self.command(charge_point_id, "TriggerMessage", payload, timeout_s)

    async def get_local_list_version(
        self, charge_point_id: str, *, timeout_s: float | None = None
    ) -> Payload:
        """GetLocalListVersion."""
        return await self.command(charge_point_id, "GetLocalListVersion", {}, timeout_s)

    async def data_transfer(
        self,
        charge_point_id: str,
        vendor_id: str,
        message_id: str | None = None,
        data: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """DataTransfer to the charger."""
        payload = _put({"vendorId": vendor_id}, "messageId", message_id)
        _put(payload, "data", data)
        return await self.command(charge_point_id, "DataTransfer", payload, timeout_s)

    async def reserve_now(
        self,
        charge_point_id: str,
        connector_id: int,
        id_tag: str,
        expiry: datetime,
        reservation_id: int,
        parent_id_tag: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """ReserveNow (connector 0 reserves any connector, if the charger allows it)."""
        payload: Payload = {
            "connectorId": connector_id,
            "expiryDate": iso_utc(expiry),
            "idTag": id_tag,
            "reservationId": reservation_id,
        }
        _put(payload, "parentIdTag", parent_id_tag)
        return await self.command(charge_point_id, "ReserveNow", payload, timeout_s)

    async def cancel_reservation(
        self, charge_point_id: str, reservation_id: int, *, timeout_s: float | None = None
    ) -> Payload:
        """CancelReservation."""
        payload = {"reservationId": reservation_id}
        return await self.command(charge_point_id, "CancelReservation", payload, timeout_s)

    async def set_charging_profile(
        self,
        charge_point_id: str,
        connector_id: int,
        profile: Payload,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """SetChargingProfile; `profile` is an OCPP csChargingProfiles object."""
        payload = {"connectorId": connector_id, "csChargingProfiles": profile}
        return await self.command(charge_point_id, "SetChargingProfile", payload, timeout_s)

    async def clear_charging_profile(
        self,
        charge_point_id: str,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """ClearChargingProfile by id, or by connector / purpose / stack level (all if none)."""
        payload = _put({}, "id", profile_id)
        _put(payload, "connectorId", connector_id)
        _put(payload, "chargingProfilePurpose", purpose)
        _put(payload, "stackLevel", stack_level)
        return await self.command(charge_point_id, "ClearChargingProfile", payload, timeout_s)

    async def get_composite_schedule(
        self,
        charge_point_id: str,
        connector_id: int,
        duration_s: int,
        rate_unit: Literal["A", "W"] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Payload:
        """GetCompositeSchedule for the next `duration_s` seconds."""
        payload = _put(
            {"connectorId": connector_id, "duration": duration_s}, "chargingRateUnit", rate_unit
        )
        return await self.command(charge_point_id, "GetCompositeSchedule", payload, timeout_s)

    async def get_diagnostics(
        self,
        charge_point_id: str,
        location: str,
        *,
        retries: int | None = None,
        retry_interval_s: int | None = None,
        start_time: datetime | None = None,
        stop_time: datetime | None = None,
        timeout_s: float | None = None,
    ) -> Payload:
        """GetDiagnostics: the charger uploads its diagnostics to `location` (a URI)."""
        payload = _put({"location": location}, "retries", retries)
        _put(payload, "retryInterval", retry_interval_s)
        _put(payload, "startTime", start_time)
        _put(payload, "stopTime", stop_time)
        return await self.command(charge_point_id, "GetDiagnostics", payload, timeout_s)

    async def update_firmware(
        self,
        charge_point_id: str,
        location: str,
        retrieve_date: datetime,
        *,
        retries: int | None = None,
        retry_interval_s: int | None = None,
        timeout_s: float | None = None,
    ) -> Payload:
        """UpdateFirmware: the charger downloads from `location` from `retrieve_date` on."""
        payload = {"location": location, "retrieveDate": iso_utc(retrieve_date)}
        _put(payload, "retries", retries)
        _put(payload, "retryInterval", retry_interval_s)
        return await self.command(charge_point_id, "UpdateFirmware", payload, timeout_s)

    async def send_local_list(
        self, charge_point_id: str, full: bool, *, timeout_s: float | None = None
    ) -> LocalListOutcome:
        """SendLocalList built from the CSMS's id_tags table.

        Full: every tag with its idTagInfo (Accepted, Blocked or Expired, expiryDate,
        parentIdTag). Differential: the tags changed since the version this charger last
        accepted (a removed tag goes without idTagInfo, which deletes it). A Differential
        becomes Full when no accepted version is recorded, when GetLocalListVersion shows
        the charger holds another version, or when the charger answers VersionMismatch.
        An accepted update is recorded as the base of the next Differential; Failed or
        NotSupported forgets the charger's version, so the next update is Full.
        """
        lists = LocalListRepository(await self._ready_store())
        if not self.is_online(charge_point_id):
            raise ChargerOffline(charge_point_id)
        charger_version = None
        if not full and await lists.accepted_version(charge_point_id) is not None:
            reply = await self.get_local_list_version(charge_point_id, timeout_s=timeout_s)
            charger_version = int(reply["listVersion"])
        now = self._clock.utc_now()
        update = await lists.prepare(
            charge_point_id, full=full, now=now, charger_version=charger_version
        )
        outcome = await self._send_list(lists, charge_point_id, update, timeout_s)
        mismatch = outcome.reply is not None and outcome.reply["status"] == "VersionMismatch"
        if mismatch and update.update_type is UpdateType.DIFFERENTIAL:
            update = await lists.prepare(charge_point_id, full=True, now=now)
            outcome = await self._send_list(lists, charge_point_id, update, timeout_s)
        return outcome

    async def _send_list(
        self,
        lists: LocalListRepository,
        charge_point_id: str,
        update: LocalListUpdate,
        timeout_s: float | None,
    ) -> LocalListOutcome:
        if update.update_type is UpdateType.DIFFERENTIAL and not update.entries:
            return LocalListOutcome(update.update_type, update.list_version, 0, False, None)
        reply = await self.command(charge_point_id, "SendLocalList", update.payload(), timeout_s)
        if reply["status"] == "Accepted":
            await lists.record_accepted(charge_point_id, update, self._clock.utc_now())
        else:
            await lists.forget_accepted(charge_point_id)
        return LocalListOutcome(
            update.update_type, update.list_version, len(update.entries), True, reply
        )

    async def _ready_store(self) -> SqliteWorker:
        store = self._csms.store
        if store is None:
            raise CsmsNotRunning("the CSMS is not running")
        return store.db
