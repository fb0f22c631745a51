"""One connected charge point as the CSMS sees it: OCPP 1.6 message routing and handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    NotSupportedError,
    OCPPError,
    PropertyConstraintViolationError,
)
from ocpp.messages import CallError, CallResult
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import (
    Action,
    DataTransferStatus,
    RegistrationStatus,
)
from ocpp.v16.enums import AuthorizationStatus as OcppAuthorizationStatus
from websockets.asyncio.server import ServerConnection

from edgepoint.clock import Clock, iso_utc
from edgepoint.csms import rpc
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.records import IdTagVerdict, MeterSample, StopOutcome

log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_Handler], _Handler]:
    """Type-preserving wrapper of the untyped `ocpp.routing.on` decorator."""
    return cast(Callable[[_Handler], _Handler], on(action))


def parse_timestamp(text: str) -> datetime:
    """Parse an OCPP date-time; a missing offset is read as UTC, as OCPP demands UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise FormationViolationError(
            details={"cause": f"not an ISO-8601 date-time: {text[:40]!r}"}
        ) from err
    if moment.tzinfo is None:
        log.warning("timestamp %r has no UTC offset; reading it as UTC", text)
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _samples(meter_values: Sequence[Mapping[str, Any]]) -> list[MeterSample]:
    """Flatten OCPP meterValue entries (already schema-checked, snake_case keys)."""
    samples = []
    for meter_value in meter_values:
        timestamp = parse_timestamp(meter_value["timestamp"])
        for sampled in meter_value["sampled_value"]:
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


def _id_tag_info(verdict: IdTagVerdict) -> Any:
    return IdTagInfo(
        status=OcppAuthorizationStatus(verdict.status.value),
        parent_id_tag=verdict.parent_id_tag,
        expiry_date=None if verdict.expires is None else iso_utc(verdict.expires),
    )


class ChargePointSession(OcppChargePoint):  # type: ignore[misc]  # ocpp is untyped
    """The CSMS side of one charge point's WebSocket connection.

    Messages are handled one at a time in arrival order, so a StopTransaction is never
    stored before the StartTransaction or MeterValues sent ahead of it. The library's
    `route_message` only logs frames it cannot parse; ours answers them (see rpc.py).
    """

    def __init__(
        self,
        charge_point_id: ChargePointId,
        connection: ServerConnection,
        store: CsmsStore,
        clock: Clock,
        *,
        heartbeat_interval: int,
        response_timeout: float = 30,
    ) -> None:
        super().__init__(
            charge_point_id,
            connection,
            response_timeout=response_timeout,
            logger=logging.getLogger("edgepoint.csms.ocpp"),
        )
        self.charge_point_id = charge_point_id
        self.connection = connection
        self._store = store
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval

    async def start(self) -> None:
        """Handle messages until the connection closes (raises ConnectionClosed then)."""
        while True:
            message = await self.connection.recv()
            log.debug("%s: received %s", self.charge_point_id, message)
            await self.route_message(message)

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Route one frame: answer a CALL, hand a response to `call()`, reject garbage."""
        frame = rpc.parse_frame(raw_msg)
        if isinstance(frame, rpc.InboundCall):
            await self._answer(frame)
        elif isinstance(frame, rpc.InboundResult):
            self._response_queue.put_nowait(CallResult(frame.unique_id, frame.payload))
        elif isinstance(frame, rpc.InboundError):
            self._response_queue.put_nowait(
                CallError(
                    frame.unique_id,
                    frame.error_code,
                    frame.error_description,
                    frame.error_details,
                )
            )
        else:
            log.warning("%s: bad frame (%s): %.200r", self.charge_point_id, frame.reason, raw_msg)
            if frame.reply is not None:
                await self._send(frame.reply)

    async def _answer(self, call: rpc.InboundCall) -> None:
        try:
            rpc.check_action_known(call.action)
            handler = self.route_map.get(call.action, {}).get("_on_action")
            if handler is None:
                raise NotSupportedError(
                    description="Requested Action is recognized but not supported by the receiver",
                    details={"cause": f"the CSMS does not accept {call.action}"},
                )
            rpc.validate_call(call.action, call.payload)
            result = await handler(**camel_to_snake_case(call.payload))
            payload = snake_to_camel_case(remove_nones(serialize_as_dict(result)))
            if not rpc.result_is_valid(call.action, payload):
                log.error("%s: our %s reply is invalid: %r", self.id, call.action, payload)
                raise InternalError(details={"cause": "the CSMS built an invalid reply"})
        except OCPPError as error:
            log.info("%s: %s %s -> %s", self.id, call.action, call.unique_id, error.code)
            await self._send(rpc.call_error(call.unique_id, error))
            return
        except Exception:
            log.exception("%s: %s handler failed", self.id, call.action)
            await self._send(rpc.call_error(call.unique_id, InternalError()))
            return
        await self._send(rpc.call_result(call.unique_id, payload))

    async def _send(self, message: str) -> None:
        log.debug("%s: sending %s", self.charge_point_id, message)
        await self.connection.send(message)

    def _now(self) -> datetime:
        return self._clock.utc_now()

    @_on(Action.boot_notification)
    async def on_boot_notification(
        self,
        charge_point_vendor: str,
        charge_point_model: str,
        firmware_version: str | None = None,
        charge_point_serial_number: str | None = None,
        **_: Any,
    ) -> Any:
        now = self._now()
        await self._store.charge_points.record_boot(
            self.charge_point_id,
            vendor=charge_point_vendor,
            model=charge_point_model,
            firmware=firmware_version,
            serial_number=charge_point_serial_number,
            at=now,
        )
        log.info(
            "%s booted: %s %s firmware %s",
            self.charge_point_id,
            charge_point_vendor,
            charge_point_model,
            firmware_version,
        )
        return call_result.BootNotification(
            current_time=iso_utc(now),
            interval=self._heartbeat_interval,
            status=RegistrationStatus.accepted,
        )

    @_on(Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> Any:
        now = self._now()
        await self._store.charge_points.record_heartbeat(self.charge_point_id, now)
        return call_result.Heartbeat(current_time=iso_utc(now))

    @_on(Action.status_notification)
    async def on_status_notification(
        self,
        connector_id: int,
        error_code: str,
        status: str,
        info: str | None = None,
        timestamp: str | None = None,
        vendor_id: str | None = None,
        vendor_error_code: str | None = None,
        **_: Any,
    ) -> Any:
        if connector_id < 0:
            raise PropertyConstraintViolationError(details={"cause": "connectorId must be >= 0"})
        now = self._now()
        stored = await self._store.connectors.record_status(
            self.charge_point_id,
            connector_id,
            status=status,
            error_code=error_code,
            info=info,
            vendor_id=vendor_id,
            vendor_error_code=vendor_error_code,
            timestamp=now if timestamp is None else parse_timestamp(timestamp),
            received_at=now,
        )
        if not stored:
            log.info("%s: older status of connector %d ignored", self.id, connector_id)
        return call_result.StatusNotification()

    @_on(Action.authorize)
    async def on_authorize(self, id_tag: str, **_: Any) -> Any:
        verdict = await self._store.cards.check(id_tag, self._now())
        log.info("%s: authorize %s -> %s", self.id, id_tag, verdict.status)
        return call_result.Authorize(id_tag_info=_id_tag_info(verdict))

    @_on(Action.start_transaction)
    async def on_start_transaction(
        self,
        connector_id: int,
        id_tag: str,
        meter_start: int,
        timestamp: str,
        reservation_id: int | None = None,
        **_: Any,
    ) -> Any:
        if connector_id < 1:
            raise PropertyConstraintViolationError(
                details={"cause": "a transaction runs on a connector id >= 1"}
            )
        now = self._now()
        started_at = parse_timestamp(timestamp)
        # The charge point may have started offline on a cached authorization: the
        # transaction is always recorded, and idTagInfo tells it whether to go on.
        verdict = await self._store.cards.check(id_tag, now)
        outcome = await self._store.transactions.start(
            self.charge_point_id,
            connector_id,
            id_tag,
            meter_start=meter_start,
            timestamp=started_at,
            id_tag_status=verdict.status,
            reservation_id=reservation_id,
            received_at=now,
        )
        log.info(
            "%s: transaction %d %s on connector %d for %s (%s)",
            self.id,
            outcome.transaction_id,
            "repeated" if outcome.repeated else "started",
            connector_id,
            id_tag,
            verdict.status,
        )
        return call_result.StartTransaction(
            transaction_id=outcome.transaction_id, id_tag_info=_id_tag_info(verdict)
        )

    @_on(Action.stop_transaction)
    async def on_stop_transaction(
        self,
        meter_stop: int,
        timestamp: str,
        transaction_id: int,
        reason: str | None = None,
        id_tag: str | None = None,
        transaction_data: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        now = self._now()
        outcome = await self._store.transactions.stop(
            self.charge_point_id,
            transaction_id,
            meter_stop=meter_stop,
            timestamp=parse_timestamp(timestamp),
            reason=reason or "Local",
            id_tag=id_tag,
            samples=_samples(transaction_data or []),
        )
        if outcome is StopOutcome.UNKNOWN:
            log.warning("%s: stop of unknown transaction %d", self.id, transaction_id)
        else:
            log.info("%s: transaction %d %s", self.id, transaction_id, outcome)
        if id_tag is None:
            return call_result.StopTransaction()
        verdict = await self._store.cards.check(id_tag, now)
        return call_result.StopTransaction(id_tag_info=_id_tag_info(verdict))

    @_on(Action.meter_values)
    async def on_meter_values(
        self,
        connector_id: int,
        meter_value: list[dict[str, Any]],
        transaction_id: int | None = None,
        **_: Any,
    ) -> Any:
        samples = _samples(meter_value)
        stored = await self._store.meter_values.add(
            self.charge_point_id, connector_id, transaction_id, samples
        )
        if stored < len(samples):
            log.info("%s: %d repeated samples ignored", self.id, len(samples) - stored)
        return call_result.MeterValues()

    @_on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        log.info("%s: DataTransfer from vendor %s ignored", self.id, vendor_id)
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @_on(Action.firmware_status_notification)
    async def on_firmware_status_notification(self, status: str, **_: Any) -> Any:
        log.info("%s: firmware status %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    @_on(Action.diagnostics_status_notification)
    async def on_diagnostics_status_notification(self, status: str, **_: Any) -> Any:
        log.info("%s: diagnostics status %s", self.id, status)
        return call_result.DiagnosticsStatusNotification()
