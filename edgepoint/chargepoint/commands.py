"""Answers to the CSMS's requests (Core, Remote Trigger, Local Auth List Management,
Reservation; other profiles' handlers are added with `extend`).

Each handler takes the request's schema-valid camelCase payload and returns the reply;
what changes a connector is done by the kiosk loop (`Kiosk.submit`), so a command is
ordered with the taps and telemetry around it. Actions OCPP 1.6 defines that we do not
implement get NotSupported; unknown actions never get here (NotImplemented).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from edgepoint.chargepoint.authorizer import tag_entry
from edgepoint.chargepoint.settings import ConfigurationStatus, Settings, TooManyKeysError
from edgepoint.charging.authorization import (
    TagEntry,
    UpdateStatus,
    UpdateType,
    apply_local_list,
)
from edgepoint.charging.events import IdTag
from edgepoint.clock import Clock
from edgepoint.kiosk import (
    CancelReservation,
    ChangeAvailability,
    Command,
    RemoteStart,
    RemoteStop,
    ReserveNow,
    Reset,
    TriggerMeterValues,
    TriggerStatus,
    Unlock,
)
from edgepoint.ocppj.endpoint import Reply
from edgepoint.ocppj.errors import ErrorCode, Refusal
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag, printable
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.reservations import Reservation
from edgepoint.storage.settings import SettingsRepository

log = logging.getLogger(__name__)


class KioskPort(Protocol):
    async def submit(self, command: Command) -> Any: ...

    @property
    def connector_ids(self) -> tuple[int, ...]: ...


class LinkPort(Protocol):
    async def send_boot(self) -> None: ...
    async def send_heartbeat(self) -> None: ...
    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]: ...


_Handler = Callable[["CommandHandler", dict[str, Any]], Awaitable[Reply]]
# A handler of another part of the charge point (firmware, security), added by `extend`.
ActionHandler = Callable[[dict[str, Any]], Awaitable[Reply]]


class CommandHandler:
    """The charge point's side of every CSMS-initiated CALL."""

    def __init__(
        self,
        kiosk: KioskPort,
        link: LinkPort,
        settings: Settings,
        settings_store: SettingsRepository,
        lists: AuthListStore,
        clock: Clock,
        request_reset: Callable[[bool], None],
        wake_outbox: Callable[[], None],
    ) -> None:
        self._kiosk = kiosk
        self._link = link
        self._settings = settings
        self._settings_store = settings_store
        self._lists = lists
        self._clock = clock
        self._request_reset = request_reset
        self._wake_outbox = wake_outbox
        self._extensions: dict[str, ActionHandler] = {}
        # Smart charging's judgement of a RemoteStartTransaction's chargingProfile (why it
        # cannot be used, or None); unset: the profile is ignored, as §5.11 allows a
        # charge point without smart charging.
        self.remote_profile_problem: Callable[[Mapping[str, Any]], str | None] | None = None
        self._triggers: dict[str, Callable[[], Awaitable[None]]] = {}

    def extend(
        self,
        handlers: dict[str, ActionHandler],
        triggers: dict[str, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        """Answer more actions (Firmware Management, the security extension), and send
        TriggerMessage's DiagnosticsStatusNotification / FirmwareStatusNotification with
        `triggers` (their current status) instead of Idle."""
        self._extensions.update(handlers)
        self._triggers.update(triggers or {})

    async def handle(self, action: str, payload: dict[str, Any]) -> Reply:
        handler = _HANDLERS.get(action)
        if handler is None:
            extension = self._extensions.get(action)
            if extension is not None:
                return await extension(payload)
            raise Refusal(
                ErrorCode.NOT_SUPPORTED, f"{action} is not supported by this charge point"
            )
        return await handler(self, payload)

    # -- Core ---------------------------------------------------------------------------

    async def change_availability(self, payload: dict[str, Any]) -> Reply:
        cid = int(payload["connectorId"])
        if cid < 0 or (cid > 0 and cid not in self._kiosk.connector_ids):
            return Reply({"status": "Rejected"})  # no such connector: refused, not malformed
        status = await self._kiosk.submit(ChangeAvailability(cid, payload["type"] == "Operative"))
        return Reply({"status": status})

    async def change_configuration(self, payload: dict[str, Any]) -> Reply:
        outcome = await self._settings_store.change_setting(
            self._settings, payload["key"], payload["value"], self._clock.utc_now()
        )
        if outcome.status is not ConfigurationStatus.ACCEPTED:
            log.info(
                "ChangeConfiguration %s: %s %s",
                printable(payload["key"], 50),
                outcome.status,
                outcome.reason,
            )
        return Reply({"status": outcome.status.value})

    async def clear_cache(self, payload: dict[str, Any]) -> Reply:
        removed = await self._lists.clear_cache()
        log.info("authorization cache cleared (%d entries)", removed)
        return Reply({"status": "Accepted"})

    async def data_transfer(self, payload: dict[str, Any]) -> Reply:
        # No vendor extensions: the spec's answer for a vendor we do not know.
        return Reply({"status": "UnknownVendorId"})

    async def get_configuration(self, payload: dict[str, Any]) -> Reply:
        try:
            result = self._settings.get(payload.get("key"))
        except TooManyKeysError as err:
            raise Refusal(ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION, str(err)) from err
        reply: dict[str, Any] = {}
        if result.known:
            reply["configurationKey"] = [entry.to_ocpp() for entry in result.known]
        if result.unknown:
            reply["unknownKey"] = [key[:50] for key in result.unknown]
        return Reply(reply)

    async def remote_start_transaction(self, payload: dict[str, Any]) -> Reply:
        tag = IdTag(payload["idTag"])
        cid = payload.get("connectorId")
        if cid is not None and (cid <= 0 or cid not in self._kiosk.connector_ids):
            return Reply({"status": "Rejected"})
        profile = payload.get("chargingProfile")
        if profile is not None and self.remote_profile_problem is not None:
            problem = self.remote_profile_problem(profile)
            if problem is not None:
                log.info("RemoteStartTransaction rejected: its charging profile: %s", problem)
                return Reply({"status": "Rejected"})
        elif profile is not None:
            profile = None
        accepted = await self._kiosk.submit(
            RemoteStart(tag, cid, self._settings.flag("AuthorizeRemoteTxRequests"), profile)
        )
        log.info(
            "RemoteStartTransaction for %s: %s",
            mask_id_tag(tag),
            "Accepted" if accepted else "Rejected",
        )
        return Reply({"status": "Accepted" if accepted else "Rejected"})

    async def remote_stop_transaction(self, payload: dict[str, Any]) -> Reply:
        accepted = await self._kiosk.submit(RemoteStop(int(payload["transactionId"])))
        return Reply({"status": "Accepted" if accepted else "Rejected"})

    async def reset(self, payload: dict[str, Any]) -> Reply:
        hard = payload["type"] == "Hard"
        # Sessions end (reason HardReset/SoftReset) before we answer; the restart itself
        # waits until the answer is on the wire.
        await self._kiosk.submit(Reset(hard))
        log.warning("%s reset requested by the CSMS", payload["type"])

        async def restart() -> None:
            self._request_reset(hard)

        return Reply({"status": "Accepted"}, after=restart)

    async def unlock_connector(self, payload: dict[str, Any]) -> Reply:
        cid = int(payload["connectorId"])
        status = await self._kiosk.submit(Unlock(cid))
        return Reply({"status": status})

    # -- Remote Trigger -----------------------------------------------------------------

    async def trigger_message(self, payload: dict[str, Any]) -> Reply:
        message = payload["requestedMessage"]
        cid = payload.get("connectorId")
        if cid is not None and (cid < 0 or (cid > 0 and cid not in self._kiosk.connector_ids)):
            return Reply({"status": "Rejected"})
        after: Callable[[], Awaitable[None]]
        if message == "BootNotification":
            after = self._link.send_boot
        elif message == "Heartbeat":
            after = self._link.send_heartbeat
        elif message == "StatusNotification":

            async def after() -> None:
                await self._kiosk.submit(TriggerStatus(cid))

        elif message == "MeterValues":

            async def after() -> None:
                await self._kiosk.submit(TriggerMeterValues(cid))

        elif message in self._triggers:
            after = self._triggers[message]
        elif message == "DiagnosticsStatusNotification":

            async def after() -> None:
                await self._link.call("DiagnosticsStatusNotification", {"status": "Idle"})

        elif message == "FirmwareStatusNotification":

            async def after() -> None:
                await self._link.call("FirmwareStatusNotification", {"status": "Idle"})

        else:  # the schema's enum leaves nothing else
            return Reply({"status": "NotImplemented"})
        return Reply({"status": "Accepted"}, after=after)

    # -- Reservation ----------------------------------------------------------------------

    async def reserve_now(self, payload: dict[str, Any]) -> Reply:
        cid = int(payload["connectorId"])
        if cid < 0 or (cid == 0 and not self._settings.flag("ReserveConnectorZeroSupported")):
            return Reply({"status": "Rejected"})
        parent = payload.get("parentIdTag")
        reservation = Reservation(
            int(payload["reservationId"]),
            cid,
            IdTag(payload["idTag"]),
            parse_datetime(payload["expiryDate"]),
            None if parent is None else IdTag(parent),
        )
        status = await self._kiosk.submit(ReserveNow(reservation))
        log.info(
            "ReserveNow %d on connector %d for %s: %s",
            reservation.reservation_id,
            cid,
            mask_id_tag(reservation.id_tag),
            status,
        )
        return Reply({"status": status})

    async def cancel_reservation(self, payload: dict[str, Any]) -> Reply:
        cancelled = await self._kiosk.submit(CancelReservation(int(payload["reservationId"])))
        return Reply({"status": "Accepted" if cancelled else "Rejected"})

    # -- Local Auth List Management -------------------------------------------------------

    async def get_local_list_version(self, payload: dict[str, Any]) -> Reply:
        if not self._settings.flag("LocalAuthListEnabled"):
            return Reply({"listVersion": -1})  # §6.27: -1 = no local list
        return Reply({"listVersion": await self._lists.local_list_version()})

    async def send_local_list(self, payload: dict[str, Any]) -> Reply:
        entries: list[tuple[IdTag, TagEntry | None]] = []
        for item in payload.get("localAuthorizationList", []):
            info = item.get("idTagInfo")
            entries.append((IdTag(item["idTag"]), None if info is None else tag_entry(info)))
        current = await self._lists.local_list()
        change = apply_local_list(
            await self._lists.local_list_version(),
            current,
            UpdateType(payload["updateType"]),
            int(payload["listVersion"]),
            entries,
            self._settings.integer("LocalAuthListMaxLength"),
            self._settings.integer("SendLocalListMaxLength"),
            self._settings.flag("LocalAuthListEnabled"),
        )
        if change.status is UpdateStatus.ACCEPTED:
            await self._lists.replace_local_list(change.version, change.entries)
            log.info("local list now version %d, %d cards", change.version, len(change.entries))
        else:
            log.info("SendLocalList %s: %s", change.status, change.reason)
        return Reply({"status": change.status.value})


_HANDLERS: dict[str, _Handler] = {
    "ChangeAvailability": CommandHandler.change_availability,
    "ChangeConfiguration": CommandHandler.change_configuration,
    "ClearCache": CommandHandler.clear_cache,
    "DataTransfer": CommandHandler.data_transfer,
    "GetConfiguration": CommandHandler.get_configuration,
    "RemoteStartTransaction": CommandHandler.remote_start_transaction,
    "RemoteStopTransaction": CommandHandler.remote_stop_transaction,
    "Reset": CommandHandler.reset,
    "UnlockConnector": CommandHandler.unlock_connector,
    "TriggerMessage": CommandHandler.trigger_message,
    "GetLocalListVersion": CommandHandler.get_local_list_version,
    "SendLocalList": CommandHandler.send_local_list,
    "ReserveNow": CommandHandler.reserve_now,
    "CancelReservation": CommandHandler.cancel_reservation,
}
