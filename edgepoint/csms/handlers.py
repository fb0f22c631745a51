"""One connected charge point as the CSMS sees it: OCPP 1.6 handlers over an ocppj Endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

from websockets.asyncio.server import ServerConnection

from edgepoint.clock import Clock, iso_utc
from edgepoint.csms.db import DEFAULT_CONNECTOR_COUNT, CsmsStore
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.limiter import DEFAULT_LIMITS, ConnectionLimiter, CsmsLimits, GuardedTransport
from edgepoint.csms.records import (
    Anomaly,
    AnomalyKind,
    AnomalyReason,
    IdTagVerdict,
    MeterSample,
    StopOutcome,
)
from edgepoint.errors import StorageError
from edgepoint.logthrottle import ThrottledLog
from edgepoint.ocppj.endpoint import Endpoint, Priority, Reply
from edgepoint.ocppj.errors import ErrorCode, Refusal
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag, printable

log = logging.getLogger(__name__)

# last_seen_at is written on a connection's first CALL and then at most this often; the
# same write re-reads the connector count, so an operator's change applies within it.
SEEN_EVERY_S = 60.0
# A StatusNotification stamped further ahead of our clock than this is ordered by arrival.
MAX_CLOCK_AHEAD = timedelta(minutes=5)
# Samples a StopTransaction keeps when its transactionData is over the limit.
_KEPT_CONTEXTS = ("Transaction.Begin", "Transaction.End")

Payload = dict[str, Any]
_Handler = Callable[[Payload], Awaitable[Reply]]


def _timestamp(text: str) -> datetime:
    """An OCPP date-time as aware UTC (the endpoint's schema check already refused bad ones)."""
    try:
        return parse_datetime(text)
    except ValueError as err:
        raise Refusal(ErrorCode.TYPE_CONSTRAINT_VIOLATION, str(err)) from err


def _count_sampled(meter_values: Iterable[Mapping[str, Any]]) -> int:
    return sum(len(meter_value["sampledValue"]) for meter_value in meter_values)


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


@dataclass(frozen=True, slots=True)
class ChargerLogs:
    """One charge point's rate-limited log lines, kept across its connections.

    The CSMS closes a charger after max_bad_frames bad frames, and a charger may reconnect
    at will: were the quota per connection, each reconnection would log every kind of
    mistake afresh, and the log would grow with the garbage after all.
    """

    connections: ThrottledLog = field(
        default_factory=lambda: ThrottledLog(logging.getLogger("edgepoint.csms.server"))
    )
    session: ThrottledLog = field(default_factory=lambda: ThrottledLog(log))
    calls: ThrottledLog = field(
        default_factory=lambda: ThrottledLog(logging.getLogger("edgepoint.csms.ocpp"))
    )


class ChargePointSession:
    """The CSMS side of one charge point's WebSocket connection.

    The endpoint answers CALLs one at a time in arrival order, so a StopTransaction is
    never stored before the StartTransaction or MeterValues sent ahead of it; operator
    CALLs to the charge point go through `call` and do not wait behind them.

    Semantic checks on top of the endpoint's schema checks. Refused (CALLERROR, nothing
    stored, reason recorded in the anomalies table): a connector id outside 1..N (0 too
    in StatusNotification, and in MeterValues without a transaction: the main meter),
    N being the charge point's connector_count (DEFAULT_CONNECTOR_COUNT until set);
    a negative meterStart; MeterValues or StopTransaction naming another charge point's
    transaction; MeterValues with more than `max_sampled_values` sampled values. Stored
    and flagged (answered normally, so the charge point never retries them forever):
    meter readings going backwards, a start superseding the connector's open
    transaction, unknown transactions, starts and stops out of order, a status stamped
    more than MAX_CLOCK_AHEAD in the future (ordered by arrival instead).
    """

    def __init__(
        self,
        charge_point_id: ChargePointId,
        connection: ServerConnection,
        store: CsmsStore,
        clock: Clock,
        *,
        heartbeat_interval: int,
        limits: CsmsLimits = DEFAULT_LIMITS,
        monotonic: Callable[[], float] = time.monotonic,
        logs: ChargerLogs | None = None,
    ) -> None:
        logs = logs or ChargerLogs()
        self.charge_point_id = charge_point_id
        self.connection = connection
        self._store = store
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._limits = limits
        self._throttled = logs.session
        self._connector_count = DEFAULT_CONNECTOR_COUNT
        self._seen_at: float | None = None
        # CALLs our handlers refused or failed: the endpoint counts them among its
        # refusals, and only the rest (schema refusals) are the charge point's bad frames.
        self._own_refusals = 0
        self.limiter = ConnectionLimiter(limits, monotonic=monotonic)
        self.endpoint = Endpoint(
            GuardedTransport(
                connection,
                self.limiter,
                bad_total=self._bad_frames,
                on_violation=self._on_violation,
            ),
            self._handle,
            name=charge_point_id,
            logger=logging.getLogger("edgepoint.csms.ocpp"),
            throttled=logs.calls,
            precheck=self._precheck,
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
            # The security extension's notifications: acknowledged and logged (a charge
            # point queues them like transaction messages; a refusal would only pile up).
            "SecurityEventNotification": self.on_security_event_notification,
            "LogStatusNotification": self.on_log_status_notification,
            "SignedFirmwareStatusNotification": self.on_log_status_notification,
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
        await self.limiter.admit()
        try:
            await self._note_seen()
            return await handler(payload)
        except Exception:
            self._own_refusals += 1
            raise

    def _now(self) -> datetime:
        return self._clock.utc_now()

    def _bad_frames(self) -> int:
        stats = self.endpoint.stats
        return stats.bad_frames + max(0, stats.calls_refused - self._own_refusals)

    async def _note_seen(self) -> None:
        """Record that the charge point is alive (it may never send a BootNotification
        after a reconnect) and refresh its connector count, at most every SEEN_EVERY_S."""
        moment = self._clock.monotonic()
        if self._seen_at is not None and moment - self._seen_at < SEEN_EVERY_S:
            return
        self._connector_count = await self._store.charge_points.record_seen(
            self.charge_point_id, self._now()
        )
        self._seen_at = moment

    async def _record(self, anomaly: Anomaly) -> None:
        """Store an anomaly the handlers found (repositories store their own) and log it."""
        self._log_anomalies([anomaly])
        try:
            await self._store.anomalies.record(self.charge_point_id, anomaly, self._now())
        except StorageError as err:
            self._throttled.log(
                logging.ERROR,
                "anomaly not stored",
                "%s: could not record %s: %s",
                self.charge_point_id,
                anomaly.reason,
                err,
            )

    def _log_anomalies(self, anomalies: Sequence[Anomaly]) -> None:
        for anomaly in anomalies:
            level = logging.INFO if anomaly.kind is AnomalyKind.FLAGGED else logging.WARNING
            self._throttled.log(
                level,
                f"{anomaly.kind} {anomaly.reason}",
                "%s: %s %s (%s): %s",
                self.charge_point_id,
                anomaly.action or "connection",
                anomaly.kind,
                anomaly.reason,
                printable(anomaly.detail, 200),
            )

    async def _precheck(self, action: str, payload: Payload) -> None:
        """Count sampled values before the schema check, whose cost grows with them."""
        if action != "MeterValues":
            return
        meter_values = payload.get("meterValue")
        if not isinstance(meter_values, list):
            return  # malformed: the schema check says how
        sampled = sum(
            len(mv["sampledValue"])
            for mv in meter_values
            if isinstance(mv, dict) and isinstance(mv.get("sampledValue"), list)
        )
        if sampled > self._limits.max_sampled_values:
            transaction_id = payload.get("transactionId")
            self._own_refusals += 1  # a semantic refusal, as in the handler: not a bad frame
            await self._refuse(
                action,
                AnomalyReason.TOO_MANY_SAMPLED_VALUES,
                ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
                f"{sampled} sampled values, at most {self._limits.max_sampled_values}",
                transaction_id if isinstance(transaction_id, int) else None,
            )

    async def _refuse(
        self,
        action: str,
        reason: AnomalyReason,
        code: ErrorCode,
        detail: str,
        transaction_id: int | None = None,
    ) -> NoReturn:
        await self._record(Anomaly(AnomalyKind.REFUSED, reason, action, detail, transaction_id))
        raise Refusal(code, detail)

    async def _check_connector(self, action: str, connector_id: int, *, allow_zero: bool) -> None:
        lowest = 0 if allow_zero else 1
        if not lowest <= connector_id <= self._connector_count:
            await self._refuse(
                action,
                AnomalyReason.CONNECTOR_OUT_OF_RANGE,
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                f"connectorId {connector_id} is outside {lowest}..{self._connector_count}",
            )

    def _refused_by_store(self, notes: Sequence[Anomaly]) -> None:
        """Turn a repository's REFUSED anomaly (already recorded) into the CALLERROR."""
        self._log_anomalies(notes)
        for anomaly in notes:
            if anomaly.kind is AnomalyKind.REFUSED:
                raise Refusal(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, anomaly.detail)

    async def _on_violation(self, reason: AnomalyReason, detail: str) -> None:
        await self._record(Anomaly(AnomalyKind.DISCONNECTED, reason, None, detail))

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
        await self._check_connector("StatusNotification", connector_id, allow_zero=True)
        now = self._now()
        text = payload.get("timestamp")
        timestamp = now if text is None else _timestamp(text)
        if timestamp - now > MAX_CLOCK_AHEAD:
            # A status from the future would keep every later one out (older statuses never
            # overwrite newer ones): order it by when it came instead, and say so.
            await self._record(
                Anomaly(
                    AnomalyKind.FLAGGED,
                    AnomalyReason.FUTURE_TIMESTAMP,
                    "StatusNotification",
                    f"timestamp {iso_utc(timestamp)} is ahead of the CSMS clock"
                    f" ({iso_utc(now)}): stored as received",
                )
            )
            timestamp = now
        stored = await self._store.connectors.record_status(
            self.charge_point_id,
            connector_id,
            status=payload["status"],
            error_code=payload["errorCode"],
            info=payload.get("info"),
            vendor_id=payload.get("vendorId"),
            vendor_error_code=payload.get("vendorErrorCode"),
            timestamp=timestamp,
            received_at=now,
        )
        if not stored:
            self._throttled.log(
                logging.INFO,
                "older status",
                "%s: older status of connector %d kept out of the current one",
                self.charge_point_id,
                connector_id,
            )
        return Reply({})

    async def on_authorize(self, payload: Payload) -> Reply:
        id_tag: str = payload["idTag"]
        verdict = await self._store.cards.check(id_tag, self._now())
        log.info(
            "%s: authorize %s -> %s", self.charge_point_id, mask_id_tag(id_tag), verdict.status
        )
        return Reply({"idTagInfo": _id_tag_info(verdict)})

    async def on_start_transaction(self, payload: Payload) -> Reply:
        action = "StartTransaction"
        connector_id: int = payload["connectorId"]
        id_tag: str = payload["idTag"]
        meter_start: int = payload["meterStart"]
        await self._check_connector(action, connector_id, allow_zero=False)
        if meter_start < 0:
            await self._refuse(
                action,
                AnomalyReason.NEGATIVE_METER_START,
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                f"meterStart {meter_start} Wh is negative",
            )
        now = self._now()
        started_at = _timestamp(payload["timestamp"])
        # The charge point may have started offline on a cached authorization: the
        # transaction is always recorded, and idTagInfo tells it whether to go on.
        notes: list[Anomaly] = []
        outcome = await self._store.transactions.start(
            self.charge_point_id,
            connector_id,
            id_tag,
            meter_start=meter_start,
            timestamp=started_at,
            reservation_id=payload.get("reservationId"),
            received_at=now,
            notes=notes,
        )
        self._log_anomalies(notes)
        log.info(
            "%s: transaction %d %s on connector %d for %s (%s)",
            self.charge_point_id,
            outcome.transaction_id,
            "repeated" if outcome.repeated else "started",
            connector_id,
            mask_id_tag(id_tag),
            outcome.verdict.status,
        )
        return Reply(
            {"transactionId": outcome.transaction_id, "idTagInfo": _id_tag_info(outcome.verdict)}
        )

    async def on_stop_transaction(self, payload: Payload) -> Reply:
        action = "StopTransaction"
        now = self._now()
        transaction_id: int = payload["transactionId"]
        id_tag: str | None = payload.get("idTag")
        transaction_data = payload.get("transactionData", [])
        sampled = _count_sampled(transaction_data)
        samples = _samples(transaction_data)
        if sampled > self._limits.max_sampled_values:
            # Billing is never refused: keep the begin and end readings, record the cut.
            samples = [s for s in samples if s.context in _KEPT_CONTEXTS]
            samples = samples[: self._limits.max_sampled_values]
            await self._record(
                Anomaly(
                    AnomalyKind.FLAGGED,
                    AnomalyReason.TOO_MANY_SAMPLED_VALUES,
                    action,
                    f"transactionData of {sampled} sampled values (limit"
                    f" {self._limits.max_sampled_values}): kept {len(samples)}",
                    transaction_id,
                )
            )
        notes: list[Anomaly] = []
        outcome = await self._store.transactions.stop(
            self.charge_point_id,
            transaction_id,
            meter_stop=payload["meterStop"],
            timestamp=_timestamp(payload["timestamp"]),
            reason=payload.get("reason") or "Local",
            id_tag=id_tag,
            samples=samples,
            received_at=now,
            notes=notes,
        )
        self._refused_by_store(notes)
        if outcome is not StopOutcome.UNKNOWN:
            log.info("%s: transaction %d %s", self.charge_point_id, transaction_id, outcome)
        if id_tag is None:
            return Reply({})
        verdict = await self._store.cards.check(id_tag, now, count_open=False)
        return Reply({"idTagInfo": _id_tag_info(verdict)})

    async def on_meter_values(self, payload: Payload) -> Reply:
        action = "MeterValues"
        connector_id: int = payload["connectorId"]
        transaction_id: int | None = payload.get("transactionId")
        sampled = _count_sampled(payload["meterValue"])
        if sampled > self._limits.max_sampled_values:
            await self._refuse(
                action,
                AnomalyReason.TOO_MANY_SAMPLED_VALUES,
                ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
                f"{sampled} sampled values, at most {self._limits.max_sampled_values}",
                transaction_id,
            )
        # Connector 0 is the main meter, which carries no transaction.
        await self._check_connector(action, connector_id, allow_zero=transaction_id is None)
        samples = _samples(payload["meterValue"])
        notes: list[Anomaly] = []
        stored = await self._store.meter_values.add(
            self.charge_point_id,
            connector_id,
            transaction_id,
            samples,
            received_at=self._now(),
            notes=notes,
        )
        self._refused_by_store(notes)
        if stored < len(samples):
            self._throttled.log(
                logging.INFO,
                "repeated samples",
                "%s: %d repeated samples ignored",
                self.charge_point_id,
                len(samples) - stored,
            )
        return Reply({})

    async def on_data_transfer(self, payload: Payload) -> Reply:
        log.info(
            "%s: DataTransfer from vendor %.40r ignored", self.charge_point_id, payload["vendorId"]
        )
        return Reply({"status": "UnknownVendorId"})

    async def on_firmware_status_notification(self, payload: Payload) -> Reply:
        status: str = payload["status"]
        await self._store.charge_points.record_firmware_status(
            self.charge_point_id, status, self._now()
        )
        log.info("%s: firmware status %s", self.charge_point_id, status)
        return Reply({})

    async def on_diagnostics_status_notification(self, payload: Payload) -> Reply:
        status: str = payload["status"]
        await self._store.charge_points.record_diagnostics_status(
            self.charge_point_id, status, self._now()
        )
        log.info("%s: diagnostics status %s", self.charge_point_id, status)
        return Reply({})

    async def on_security_event_notification(self, payload: Payload) -> Reply:
        log.info(
            "%s: security event %s at %s%s",
            self.charge_point_id,
            printable(payload["type"], 50),
            payload["timestamp"],
            f": {printable(payload['techInfo'], 255)}" if "techInfo" in payload else "",
        )
        return Reply({})

    async def on_log_status_notification(self, payload: Payload) -> Reply:
        log.info(
            "%s: log or signed firmware status %s (request %s)",
            self.charge_point_id,
            payload["status"],
            payload.get("requestId", "-"),
        )
        return Reply({})
