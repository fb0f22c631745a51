"""One connected charge point as the CSMS sees it: OCPP 1.6 handlers over an ocppj Endpoint."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from websockets.asyncio.server import ServerConnection

from edgepoint.clock import Clock, iso_utc
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.records import IdTagVerdict, MeterSample, StopOutcome
from edgepoint.ocppj.endpoint import Endpoint, Priority, Reply
from edgepoint.ocppj.errors import ErrorCode, Refusal
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag

log = logging.getLogger(__name__)

Payload = dict[str, Any]
_Handler = Callable[[Payload], Awaitable[Reply]]


def _timestamp(text: str) -> datetime:
    """An OCPP date-time as aware UTC (the endpoint's schema check already refused bad ones)."""
    try:
        return parse_datetime(text)
    except ValueError as err:
        raise Refusal(ErrorCode.TYPE_CONSTRAINT_VIOLATION, str(err)) from err


def _samples(meter_values: Iterable[Mapping[str, Any]]) -> list[MeterSample]:
    """Flatten OCPP meterValue entries (schema-checked camelCase) into stored samples."""
    samples = []
    for meter_value in meter_values:
        timestamp = _timestamp(meter_value["timestamp"])
        for sampled in meter_value["sampledValue"]:
            samples.append(
                MeterSample(
                    timestamp=timestamp,
                    value=sampled["value"],
                    measurand=sampled.get("measurand", "Energy.Active.Import.Register"),
                    phase=sampled.get("phase"),
                    unit=sampled.get("unit", "Wh"),
                    location=sampled.get("location", "Outlet"),
                    format=sampled.get("format", "Raw"),
                    context=sampled.get("context", "Sample.Periodic"),
                )
            )
    return samples


def _id_tag_info(verdict: IdTagVerdict) -> Payload:
    info: Payload = {"status": verdict.status.value}
    if verdict.expires is not None:
        info["expiryDate"] = iso_utc(verdict.expires)
    if verdict.parent_id_tag is not None:
        info["parentIdTag"] = verdict.parent_id_tag
    return info


class ChargePointSession:
    """The CSMS side of one charge point's WebSocket connection.

    The endpoint answers CALLs one at a time in arrival order, so a StopTransaction is
    never stored before the StartTransaction or MeterValues sent ahead of it; operator
    CALLs to the charge point go through `call` and do not wait behind them.
    """

    def __init__(
        self,
        charge_point_id: ChargePointId,
        connection: ServerConnection,
        store: CsmsStore,
        clock: Clock,
        *,
        heartbeat_interval: int,
    ) -> None:
        self.charge_point_id = charge_point_id
        self.connection = connection
        self._store = store
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self.endpoint = Endpoint(
            connection,
            self._handle,
            name=charge_point_id,
            logger=logging.getLogger("edgepoint.csms.ocpp"),
        )
        self._handlers: dict[str, _Handler] = {
            "BootNotification": self.on_boot_notification,
            "Heartbeat": self.on_heartbeat,
            "StatusNotification": self.on_status_notification,
            "Authorize": self.on_authorize,
            "StartTransaction": self.on_start_transaction,
            "StopTransaction": self.on_stop_transaction,
            "MeterValues": self.on_meter_values,
            "DataTransfer": self.on_data_transfer,
            "FirmwareStatusNotification": self.on_firmware_status_notification,
            "DiagnosticsStatusNotification": self.on_diagnostics_status_notification,
        }

    @property
    def actions(self) -> frozenset[str]:
        """The OCPP 1.6 actions this CSMS accepts from a charge point."""
        return frozenset(self._handlers)

    async def serve(self) -> None:
        """Handle messages until the connection closes (raises ConnectionClosed then)."""
        await self.endpoint.run()

    async def call(
        self,
        action: str,
        payload: Payload,
        # Counts from the send, not from the wait for the one CALL slot, which a caller's
        # asyncio.timeout could not tell apart.
        timeout: float = 30,  # noqa: ASYNC109
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Payload:
        """Send an operator CALL (camelCase payload) and return the charge point's reply.

        Raises what `Endpoint.call` raises: InvalidMessage, CallErrorReceived,
        InvalidReply, TimeoutError or ConnectionLost.
        """
        return await self.endpoint.call(action, payload, reply_timeout_s=timeout, priority=priority)

    async def _handle(self, action: str, payload: Payload) -> Reply:
        handler = self._handlers.get(action)
        if handler is None:
            # Unknown actions never get here: the endpoint answers them NotImplemented.
            raise Refusal(ErrorCode.NOT_SUPPORTED, f"the CSMS does not accept {action}")
        return await handler(payload)

    def _now(self) -> datetime:
        return self._clock.utc_now()

    async def on_boot_notification(self, payload: Payload) -> Reply:
        now = self._now()
        vendor = payload["chargePointVendor"]
        model = payload["chargePointModel"]
        firmware = payload.get("firmwareVersion")
        await self._store.charge_points.record_boot(
            self.charge_point_id,
            vendor=vendor,
            model=model,
            firmware=firmware,
            serial_number=payload.get("chargePointSerialNumber"),
            at=now,
        )
        log.info("%s booted: %r %r firmware %r", self.charge_point_id, vendor, model, firmware)
        return Reply(
            {
                "currentTime": iso_utc(now),
                "interval": self._heartbeat_interval,
                "status": "Accepted",
            }
        )

    async def on_heartbeat(self, payload: Payload) -> Reply:
        now = self._now()
        await self._store.charge_points.record_heartbeat(self.charge_point_id, now)
        return Reply({"currentTime": iso_utc(now)})

    async def on_status_notification(self, payload: Payload) -> Reply:
        connector_id: int = payload["connectorId"]
        if connector_id < 0:
            raise Refusal(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "connectorId must be >= 0")
        now = self._now()
        timestamp = payload.get("timestamp")
        stored = await self._store.connectors.record_status(
            self.charge_point_id,
            connector_id,
            status=payload["status"],
            error_code=payload["errorCode"],
            info=payload.get("info"),
            vendor_id=payload.get("vendorId"),
            vendor_error_code=payload.get("vendorErrorCode"),
            timestamp=now if timestamp is None else _timestamp(timestamp),
            received_at=now,
        )
        if not stored:
            log.info("%s: older status of connector %d ignored", self.charge_point_id, connector_id)
        return Reply({})

    async def on_authorize(self, payload: Payload) -> Reply:
        id_tag: str = payload["idTag"]
        verdict = await self._store.cards.check(id_tag, self._now())
        log.info(
            "%s: authorize %s -> %s", self.charge_point_id, mask_id_tag(id_tag), verdict.status
        )
        return Reply({"idTagInfo": _id_tag_info(verdict)})

    async def on_start_transaction(self, payload: Payload) -> Reply:
        connector_id: int = payload["connectorId"]
        id_tag: str = payload["idTag"]
        if connector_id < 1:
            raise Refusal(
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                "a transaction runs on a connector id >= 1",
            )
        now = self._now()
        started_at = _timestamp(payload["timestamp"])
        # The charge point may have started offline on a cached authorization: the
        # transaction is always recorded, and idTagInfo tells it whether to go on.
        verdict = await self._store.cards.check(id_tag, now)
        outcome = await self._store.transactions.start(
            self.charge_point_id,
            connector_id,
            id_tag,
            meter_start=payload["meterStart"],
            timestamp=started_at,
            id_tag_status=verdict.status,
            reservation_id=payload.get("reservationId"),
            received_at=now,
        )
        log.info(
            "%s: transaction %d %s on connector %d for %s (%s)",
            self.charge_point_id,
            outcome.transaction_id,
            "repeated" if outcome.repeated else "started",
            connector_id,
            mask_id_tag(id_tag),
            verdict.status,
        )
        return Reply({"transactionId": outcome.transaction_id, "idTagInfo": _id_tag_info(verdict)})

    async def on_stop_transaction(self, payload: Payload) -> Reply:
        now = self._now()
        transaction_id: int = payload["transactionId"]
        id_tag: str | None = payload.get("idTag")
        outcome = await self._store.transactions.stop(
            self.charge_point_id,
            transaction_id,
            meter_stop=payload["meterStop"],
            timestamp=_timestamp(payload["timestamp"]),
            reason=payload.get("reason") or "Local",
            id_tag=id_tag,
            samples=_samples(payload.get("transactionData", [])),
        )
        if outcome is StopOutcome.UNKNOWN:
            log.warning("%s: stop of unknown transaction %d", self.charge_point_id, transaction_id)
        else:
            log.info("%s: transaction %d %s", self.charge_point_id, transaction_id, outcome)
        if id_tag is None:
            return Reply({})
        verdict = await self._store.cards.check(id_tag, now)
        return Reply({"idTagInfo": _id_tag_info(verdict)})

    async def on_meter_values(self, payload: Payload) -> Reply:
        connector_id: int = payload["connectorId"]
        if connector_id < 0:
            raise Refusal(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "connectorId must be >= 0")
        samples = _samples(payload["meterValue"])
        stored = await self._store.meter_values.add(
            self.charge_point_id, connector_id, payload.get("transactionId"), samples
        )
        if stored < len(samples):
            log.info("%s: %d repeated samples ignored", self.charge_point_id, len(samples) - stored)
        return Reply({})

    async def on_data_transfer(self, payload: Payload) -> Reply:
        log.info(
            "%s: DataTransfer from vendor %.40r ignored", self.charge_point_id, payload["vendorId"]
        )
        return Reply({"status": "UnknownVendorId"})

    async def on_firmware_status_notification(self, payload: Payload) -> Reply:
        log.info("%s: firmware status %s", self.charge_point_id, payload["status"])
        return Reply({})

    async def on_diagnostics_status_notification(self, payload: Payload) -> Reply:
        log.info("%s: diagnostics status %s", self.charge_point_id, payload["status"])
        return Reply({})
