"""The embedded CSMS on the control API: site queries and the operator's commands to chargers.

`register_csms_commands` adds them to the ControlApi the CSMS service serves; the daemon's
own socket forwards every command of COMMAND_FLAGS to it, with those permission flags.
Every operator command answers the charger's reply payload (camelCase, as the charger
sent it). Errors: a charger not registered is `not_found`; not connected (or gone before
it answered) `unavailable`; a request that breaks the OCPP 1.6 schema `bad_request`
(nothing is sent); a CALLERROR, an invalid reply or no reply in time `failed`. Card ids
in results are masked (****B2C3). docs/chargers.md lists the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from edgepoint.control.api import ArgType, Code, ControlApi
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.load import LoadBalancer
from edgepoint.csms.operator import (
    DEFAULT_TIMEOUT_S,
    ChargerOffline,
    CsmsNotRunning,
    Payload,
    SiteOperator,
)
from edgepoint.csms.records import AnomalyRecord, MeterValueRecord
from edgepoint.csms.reports import SiteReports, jsonable
from edgepoint.csms.server import SiteCsms
from edgepoint.errors import ControlError
from edgepoint.ocppj.errors import CallErrorReceived, InvalidMessage, InvalidReply
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag

log = logging.getLogger(__name__)

T = TypeVar("T")

_QUERY = (False, False)
_CHANGE = (True, False)
_HARDWARE = (True, True)

# name -> (mutates, hardware): the daemon's proxy applies these before it forwards.
COMMAND_FLAGS: dict[str, tuple[bool, bool]] = {
    # Queries.
    "chargers.list": _QUERY,
    "chargers.show": _QUERY,
    "chargers.pending": _QUERY,
    "transactions.list": _QUERY,
    "transactions.show": _QUERY,
    "csms.status": _QUERY,
    "load.limits": _QUERY,
    # CALLs that only read from the charger.
    "chargers.get_configuration": _QUERY,
    "chargers.get_local_list_version": _QUERY,
    "chargers.get_composite_schedule": _QUERY,
    # CALLs that change what the charger knows, not what it does with power.
    "chargers.change_configuration": _CHANGE,
    "chargers.clear_cache": _CHANGE,
    "chargers.send_local_list": _CHANGE,
    "chargers.trigger": _CHANGE,
    # CALLs that act on the charger's hardware or sessions.
    "chargers.remote_start": _HARDWARE,
    "chargers.remote_stop": _HARDWARE,
    "chargers.reset": _HARDWARE,
    "chargers.unlock": _HARDWARE,
    "chargers.availability": _HARDWARE,
    "chargers.reserve_now": _HARDWARE,
    "chargers.cancel_reservation": _HARDWARE,
    "chargers.set_charging_profile": _HARDWARE,
    "chargers.clear_charging_profile": _HARDWARE,
    "chargers.get_diagnostics": _HARDWARE,
    "chargers.update_firmware": _HARDWARE,
    # Vendor-specific or any action at all: may do anything the above do.
    "chargers.data_transfer": _HARDWARE,
    "chargers.call": _HARDWARE,
    # Takes a charger offline (after a re-key or removal, the CLI asks for it).
    "chargers.disconnect": _HARDWARE,
}

# Keys whose values are card ids, in charger replies (camelCase) and in our views.
_TAG_KEYS = frozenset({"idTag", "parentIdTag", "id_tag", "stop_id_tag", "parent_id_tag"})
MAX_TIMEOUT_S = 300.0
MAX_TRANSACTIONS = 1000
_RECENT_ANOMALIES = 20
_TIMEOUT: Mapping[str, ArgType] = {"timeout_s": float}


def mask_tags(value: Any) -> Any:
    """A JSON-ready value with every card id in it masked (`****B2C3`)."""
    if isinstance(value, dict):
        return {
            key: mask_id_tag(item)
            if key in _TAG_KEYS and isinstance(item, str)
            else mask_tags(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_tags(item) for item in value]
    return value


def _bad(message: str) -> ControlError:
    return ControlError(message, Code.BAD_REQUEST)


def _moment(name: str, text: str) -> datetime:
    try:
        return parse_datetime(text)
    except ValueError as err:
        raise _bad(f"{name}: {err} (e.g. 2025-06-01T12:00:00Z)") from err


def _optional_moment(name: str, text: str | None) -> datetime | None:
    return None if text is None else _moment(name, text)


def _timeout(timeout_s: float | None) -> float | None:
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise _bad(f"timeout_s must be above 0 and at most {MAX_TIMEOUT_S:g}")
    return timeout_s


def _anomaly(record: AnomalyRecord) -> dict[str, Any]:
    return {
        "kind": record.anomaly.kind.value,
        "reason": record.anomaly.reason.value,
        "action": record.anomaly.action,
        "detail": record.anomaly.detail,
        "transaction_id": record.anomaly.transaction_id,
        "first_at": jsonable(record.first_at),
        "last_at": jsonable(record.last_at),
        "count": record.count,
    }


def _sample(record: MeterValueRecord) -> dict[str, Any]:
    return {"connector_id": record.connector_id, **jsonable(record.sample)}


@dataclass(frozen=True, slots=True)
class _Csms:
    """The handlers, over the running parts of the CSMS service."""

    csms: SiteCsms
    operator: SiteOperator
    reports: SiteReports
    balancer: LoadBalancer | None
    status_extra: Callable[[], Awaitable[dict[str, Any]]] | None = None

    def _store(self) -> CsmsStore:
        store = self.csms.store
        if store is None:
            raise ControlError("the CSMS is not running", Code.UNAVAILABLE)
        return store

    async def _ask(self, charger: str, send: Callable[[], Awaitable[T]]) -> T:
        """Run one operator CALL, its failures as control API errors."""
        store = self._store()
        if not self.operator.is_online(charger) and await store.charge_points.get(charger) is None:
            raise ControlError(f"no charger {charger!r} is registered", Code.NOT_FOUND)
        try:
            return await send()
        except ChargerOffline as err:
            raise ControlError(str(err), Code.UNAVAILABLE) from err
        except CsmsNotRunning as err:
            raise ControlError(str(err), Code.UNAVAILABLE) from err
        except InvalidMessage as err:
            raise _bad(f"{charger}: {err}") from err
        except CallErrorReceived as err:
            raise ControlError(
                f"{charger} answered {err.action} with CALLERROR {err.code}: {err.description}",
                Code.FAILED,
            ) from err
        except InvalidReply as err:
            raise ControlError(f"{charger}: {err}", Code.FAILED) from err
        except TimeoutError as err:
            raise ControlError(f"{charger}: no answer in time", Code.FAILED) from err

    async def _reply(self, charger: str, send: Callable[[], Awaitable[Payload]]) -> Any:
        return mask_tags(await self._ask(charger, send))

    # -- queries ---------------------------------------------------------------------------

    async def chargers(self, health: bool = True) -> list[Any]:
        self._store()
        return [jsonable(view) for view in await self.reports.chargers(with_health=health)]

    async def show(self, charger: str) -> dict[str, Any]:
        store = self._store()
        record = await store.charge_points.get(charger)
        view = await self.reports.charger(charger)
        if record is None or view is None:
            raise ControlError(f"no charger {charger!r} is registered", Code.NOT_FOUND)
        session = self.csms.session(charger)
        anomalies = await store.anomalies.list(charger, limit=_RECENT_ANOMALIES)
        limits = [] if self.balancer is None else self.balancer.limits()
        return {
            **jsonable(view),
            "serial_number": record.serial_number,
            "connector_count": record.connector_count,
            "last_boot_at": jsonable(record.last_boot_at),
            "last_heartbeat_at": jsonable(record.last_heartbeat_at),
            "firmware_status": record.firmware_status,
            "diagnostics_status": record.diagnostics_status,
            "anomalies": [_anomaly(a) for a in anomalies],
            "limiter": None if session is None else jsonable(session.limiter.snapshot()),
            "calls": None if session is None else jsonable(session.endpoint.stats),
            "load_limits": [jsonable(x) for x in limits if x.charge_point_id == charger],
        }

    async def pending(self) -> list[dict[str, Any]]:
        if self.csms.pending is not None:  # kept in memory (SiteCsms without store_pending)
            found = self.csms.pending.list()
        else:
            found = await self._store().pending.list()
        return [
            {
                "id": p.charge_point_id,
                "first_seen": jsonable(p.first_seen),
                "last_seen": jsonable(p.last_seen),
                "attempts": p.attempts,
                "last_address": p.last_address,
            }
            for p in found
        ]

    async def transactions(
        self,
        charger: str | None = None,
        live: bool | None = None,
        since: str | None = None,
        limit: int = 100,
    ) -> list[Any]:
        self._store()
        if not 1 <= limit <= MAX_TRANSACTIONS:
            raise _bad(f"limit must be 1 to {MAX_TRANSACTIONS}")
        views = await self.reports.transactions(
            charger, live=live, since=_optional_moment("since", since), limit=limit
        )
        return [mask_tags(jsonable(view)) for view in views]

    async def transaction(self, transaction: int) -> dict[str, Any]:
        self._store()
        view = await self.reports.transaction(transaction)
        if view is None:
            raise ControlError(f"no transaction {transaction}", Code.NOT_FOUND)
        samples = await self.reports.meter_values(transaction)
        return {
            **mask_tags(jsonable(view)),
            "meter_values": [_sample(sample) for sample in samples],
        }

    async def status(self) -> dict[str, Any]:
        store = self.csms.store
        listening = store is not None and self.csms.started.is_set()
        worker = None if store is None else jsonable(store.db.stats())
        pending = (
            len(self.csms.pending.list())
            if self.csms.pending is not None
            else None
            if store is None
            else len(await store.pending.list())
        )
        extra = {} if self.status_extra is None else await self.status_extra()
        return {
            **extra,
            "listening": listening,
            "port": self.csms.port if listening else None,
            "connected": list(self.csms.connected_ids()),
            "refused": {str(int(status)): n for status, n in sorted(self.csms.refused.items())},
            "lockouts": self.csms.limiter.lockouts,
            "sources_tracked": len(self.csms.limiter),
            "pending": pending,
            "worker": worker,
            "site_limit_w": None if self.balancer is None else self.balancer.site_limit_w,
        }

    async def load_limits(self) -> dict[str, Any]:
        if self.balancer is None:
            return {"enabled": False, "site_limit_w": None, "rounds": 0, "limits": []}
        return {
            "enabled": True,
            "site_limit_w": self.balancer.site_limit_w,
            "rounds": self.balancer.rounds,
            "limits": [jsonable(limit) for limit in self.balancer.limits()],
        }

    async def disconnect(self, charger: str, reason: str = "disconnected by the operator") -> Any:
        self.csms.forget(charger)  # its next login is checked against csms.db
        return {"disconnected": await self.csms.disconnect(charger, reason)}

    # -- operator commands -----------------------------------------------------------------

    async def remote_start(
        self,
        charger: str,
        id_tag: str,
        connector: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.remote_start(
                charger, id_tag, connector, charging_profile=charging_profile, timeout_s=wait
            ),
        )

    async def remote_stop(
        self, charger: str, transaction: int, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.remote_stop(charger, transaction, timeout_s=wait)
        )

    # `type` is OCPP's name for it, so the control API's argument is named the same.
    async def reset(self, charger: str, type: str, timeout_s: float | None = None) -> Any:
        wait = _timeout(timeout_s)
        if type == "Soft":
            return await self._reply(
                charger, lambda: self.operator.reset(charger, "Soft", timeout_s=wait)
            )
        if type == "Hard":
            return await self._reply(
                charger, lambda: self.operator.reset(charger, "Hard", timeout_s=wait)
            )
        raise _bad(f"reset type must be Soft or Hard, not {type[:20]!r}")

    async def unlock(self, charger: str, connector: int, timeout_s: float | None = None) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.unlock(charger, connector, timeout_s=wait)
        )

    async def availability(
        self, charger: str, connector: int, operative: bool, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.change_availability(
                charger, connector, operative, timeout_s=wait
            ),
        )

    async def get_configuration(
        self, charger: str, keys: list[Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        if keys is not None and not all(isinstance(key, str) for key in keys):
            raise _bad("keys must be a list of strings")
        return await self._reply(
            charger, lambda: self.operator.get_configuration(charger, keys, timeout_s=wait)
        )

    async def change_configuration(
        self, charger: str, key: str, value: str, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.change_configuration(charger, key, value, timeout_s=wait),
        )

    async def clear_cache(self, charger: str, timeout_s: float | None = None) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.clear_cache(charger, timeout_s=wait)
        )

    async def trigger(
        self,
        charger: str,
        message: str,
        connector: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.trigger(charger, message, connector, timeout_s=wait)
        )

    async def send_local_list(
        self, charger: str, full: bool = False, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        outcome = await self._ask(
            charger, lambda: self.operator.send_local_list(charger, full, timeout_s=wait)
        )
        return mask_tags(jsonable(outcome))

    async def get_local_list_version(self, charger: str, timeout_s: float | None = None) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.get_local_list_version(charger, timeout_s=wait)
        )

    async def data_transfer(
        self,
        charger: str,
        vendor_id: str,
        message_id: str | None = None,
        data: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.data_transfer(
                charger, vendor_id, message_id, data, timeout_s=wait
            ),
        )

    async def reserve_now(
        self,
        charger: str,
        connector: int,
        id_tag: str,
        expiry: str,
        reservation: int,
        parent_id_tag: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        until = _moment("expiry", expiry)
        return await self._reply(
            charger,
            lambda: self.operator.reserve_now(
                charger, connector, id_tag, until, reservation, parent_id_tag, timeout_s=wait
            ),
        )

    async def cancel_reservation(
        self, charger: str, reservation: int, timeout_s: float | None = None
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.cancel_reservation(charger, reservation, timeout_s=wait)
        )

    async def set_charging_profile(
        self,
        charger: str,
        connector: int,
        profile: dict[str, Any],
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.set_charging_profile(charger, connector, profile, timeout_s=wait),
        )

    async def clear_charging_profile(
        self,
        charger: str,
        profile: int | None = None,
        connector: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger,
            lambda: self.operator.clear_charging_profile(
                charger, profile, connector, purpose, stack_level, timeout_s=wait
            ),
        )

    async def get_composite_schedule(
        self,
        charger: str,
        connector: int,
        duration: int,
        rate_unit: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        unit: Literal["A", "W"] | None = None
        if rate_unit == "A":
            unit = "A"
        elif rate_unit == "W":
            unit = "W"
        elif rate_unit is not None:
            raise _bad("rate_unit must be A or W")
        return await self._reply(
            charger,
            lambda: self.operator.get_composite_schedule(
                charger, connector, duration, unit, timeout_s=wait
            ),
        )

    async def get_diagnostics(
        self,
        charger: str,
        location: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        start_time: str | None = None,
        stop_time: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        start = _optional_moment("start_time", start_time)
        stop = _optional_moment("stop_time", stop_time)
        return await self._reply(
            charger,
            lambda: self.operator.get_diagnostics(
                charger,
                location,
                retries=retries,
                retry_interval_s=retry_interval,
                start_time=start,
                stop_time=stop,
                timeout_s=wait,
            ),
        )

    async def update_firmware(
        self,
        charger: str,
        location: str,
        retrieve_date: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        when = _moment("retrieve_date", retrieve_date)
        return await self._reply(
            charger,
            lambda: self.operator.update_firmware(
                charger,
                location,
                when,
                retries=retries,
                retry_interval_s=retry_interval,
                timeout_s=wait,
            ),
        )

    async def call(
        self,
        charger: str,
        action: str,
        payload: dict[str, Any],
        timeout_s: float | None = None,
    ) -> Any:
        wait = _timeout(timeout_s)
        return await self._reply(
            charger, lambda: self.operator.command(charger, action, payload, wait)
        )


def register_csms_commands(
    api: ControlApi,
    csms: SiteCsms,
    operator: SiteOperator,
    reports: SiteReports,
    balancer: LoadBalancer | None,
    *,
    status_extra: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> None:
    """Register every command of COMMAND_FLAGS on `api` (before its server starts).

    `status_extra` adds fields to `csms.status` (the service's supervised tasks). A
    `csms.status` registered on `api` before is kept, and ours left out.
    """
    h = _Csms(csms, operator, reports, balancer, status_extra)
    charger: dict[str, ArgType] = {"charger": str}
    wait = f"; waits up to timeout_s (default {DEFAULT_TIMEOUT_S:g} s) for the answer"

    def add(
        name: str,
        handler: Callable[..., Awaitable[Any]],
        summary: str,
        required: Mapping[str, ArgType] | None = None,
        optional: Mapping[str, ArgType] | None = None,
        private: tuple[str, ...] = (),
    ) -> None:
        mutates, hardware = COMMAND_FLAGS[name]
        if name == "csms.status" and api.command(name) is not None:
            return
        api.add_command(
            name,
            handler,
            summary=summary,
            required=required,
            optional=optional,
            mutates=mutates,
            hardware=hardware,
            private=private,
        )

    def ocpp(
        name: str,
        handler: Callable[..., Awaitable[Any]],
        action: str,
        required: Mapping[str, ArgType] | None = None,
        optional: Mapping[str, ArgType] | None = None,
        private: tuple[str, ...] = (),
    ) -> None:
        add(
            name,
            handler,
            f"send {action} to a connected charger; the result is its answer" + wait,
            {**charger, **(required or {})},
            {**(optional or {}), **_TIMEOUT},
            private,
        )

    add(
        "chargers.list",
        h.chargers,
        "registered chargers: online, last seen, connectors, health",
        optional={"health": bool},
    )
    add(
        "chargers.show",
        h.show,
        "one charger: connectors, recent anomalies, limiter, load limits",
        charger,
    )
    add("chargers.pending", h.pending, "unknown charger ids that tried to connect")
    add(
        "transactions.list",
        h.transactions,
        "transactions with energy, newest first (live: open ones only; false: closed ones)",
        optional={"charger": str, "live": bool, "since": str, "limit": int},
    )
    add(
        "transactions.show",
        h.transaction,
        "one transaction with its meter values",
        {"transaction": int},
    )
    add("csms.status", h.status, "listening, connected ids, refusals, lockouts, database writes")
    add("load.limits", h.load_limits, "the site power limit and each running transaction's share")
    add(
        "chargers.disconnect",
        h.disconnect,
        "close a charger's connection (after a re-key or removal); it is checked again on"
        " reconnecting",
        charger,
        {"reason": str},
    )

    ocpp(
        "chargers.remote_start",
        h.remote_start,
        "RemoteStartTransaction",
        {"id_tag": str},
        {"connector": int, "charging_profile": dict},
        ("id_tag",),
    )
    ocpp("chargers.remote_stop", h.remote_stop, "RemoteStopTransaction", {"transaction": int})
    ocpp("chargers.reset", h.reset, "Reset (type Soft or Hard)", {"type": str})
    ocpp("chargers.unlock", h.unlock, "UnlockConnector", {"connector": int})
    ocpp(
        "chargers.availability",
        h.availability,
        "ChangeAvailability (connector 0: all)",
        {"connector": int, "operative": bool},
    )
    ocpp(
        "chargers.get_configuration",
        h.get_configuration,
        "GetConfiguration (all keys if none)",
        optional={"keys": list},
    )
    ocpp(
        "chargers.change_configuration",
        h.change_configuration,
        "ChangeConfiguration",
        {"key": str, "value": str},
    )
    ocpp("chargers.clear_cache", h.clear_cache, "ClearCache")
    ocpp("chargers.trigger", h.trigger, "TriggerMessage", {"message": str}, {"connector": int})
    ocpp(
        "chargers.send_local_list",
        h.send_local_list,
        "SendLocalList built from the card table (Differential unless full)",
        optional={"full": bool},
    )
    ocpp("chargers.get_local_list_version", h.get_local_list_version, "GetLocalListVersion")
    ocpp(
        "chargers.data_transfer",
        h.data_transfer,
        "DataTransfer",
        {"vendor_id": str},
        {"message_id": str, "data": str},
    )
    ocpp(
        "chargers.reserve_now",
        h.reserve_now,
        "ReserveNow (expiry: ISO-8601 with offset)",
        {"connector": int, "id_tag": str, "expiry": str, "reservation": int},
        {"parent_id_tag": str},
        ("id_tag", "parent_id_tag"),
    )
    ocpp(
        "chargers.cancel_reservation",
        h.cancel_reservation,
        "CancelReservation",
        {"reservation": int},
    )
    ocpp(
        "chargers.set_charging_profile",
        h.set_charging_profile,
        "SetChargingProfile (profile: an OCPP csChargingProfiles object)",
        {"connector": int, "profile": dict},
    )
    ocpp(
        "chargers.clear_charging_profile",
        h.clear_charging_profile,
        "ClearChargingProfile (by id, or by connector, purpose, stack level)",
        optional={"profile": int, "connector": int, "purpose": str, "stack_level": int},
    )
    ocpp(
        "chargers.get_composite_schedule",
        h.get_composite_schedule,
        "GetCompositeSchedule (duration in s, rate_unit A or W)",
        {"connector": int, "duration": int},
        {"rate_unit": str},
    )
    ocpp(
        "chargers.get_diagnostics",
        h.get_diagnostics,
        "GetDiagnostics (upload to location)",
        {"location": str},
        {"retries": int, "retry_interval": int, "start_time": str, "stop_time": str},
    )
    ocpp(
        "chargers.update_firmware",
        h.update_firmware,
        "UpdateFirmware (download from location from retrieve_date on)",
        {"location": str, "retrieve_date": str},
        {"retries": int, "retry_interval": int},
    )
    ocpp(
        "chargers.call",
        h.call,
        "any CALL a central system may send (action, camelCase payload)",
        {"action": str, "payload": dict},
        private=("payload",),
    )
    missing = COMMAND_FLAGS.keys() - {c["name"] for c in api.describe(may_act=True)}
    if missing:  # a name in COMMAND_FLAGS with no handler: the proxy would forward in vain
        raise RuntimeError(f"COMMAND_FLAGS names unregistered commands: {sorted(missing)}")
