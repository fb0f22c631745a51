"""The charge point's OCPP 1.6J connection to its CSMS: connect, boot, heartbeat, carry calls.

The link only keeps a connection alive and moves frames over it (through ocppj.Endpoint);
what to answer is chargepoint/commands.py's, what to send and when is the outbox's and
the kiosk's. Any failure of a connection, expected or not, ends that connection only:
the link waits a jittered back-off and connects again, and it is itself supervised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from edgepoint import __version__
from edgepoint.backoff import exponential
from edgepoint.chargepoint.boot import Registration, on_boot_reply
from edgepoint.chargepoint.settings import Settings
from edgepoint.clock import Clock
from edgepoint.config import ChargePointConfig, StationConfig
from edgepoint.logthrottle import ThrottledLog
from edgepoint.ocppj.endpoint import Endpoint, EndpointStats, Handler, Priority, Reply
from edgepoint.ocppj.errors import (
    CallErrorReceived,
    ConnectionLost,
    ErrorCode,
    InvalidReply,
    Refusal,
)
from edgepoint.ocppj.validation import parse_datetime

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp1.6")
# A SendLocalList of a few thousand cards is the largest thing a CSMS sends us.
MAX_FRAME_BYTES = 1 << 20


class LinkState(StrEnum):
    """Where the link to the CSMS stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    BOOTING = "booting"  # connected, BootNotification not (yet) Accepted
    PENDING = "pending"  # BootNotification answered Pending
    REJECTED = "rejected"  # BootNotification answered Rejected
    ONLINE = "online"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """The link as the status page shows it."""

    state: LinkState
    url: str
    heartbeat_interval: int | None
    connects: int
    last_error: str
    stray_replies: int
    bad_frames: int


async def _refuse_all(action: str, payload: dict[str, Any]) -> Reply:
    raise Refusal(ErrorCode.NOT_SUPPORTED, f"{action} is not handled")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one connection attempt uses: where, with which password, over which TLS."""

    url: str  # the CSMS endpoint, without the charge point id
    auth_key: str | None  # HTTP Basic password (user = charge point id); None: no header
    tls: ssl.SSLContext | None  # None: plain ws://
    profile: int | None = None  # the OCPP SecurityProfile these make up, when known


class ConnectionPolicy(Protocol):
    """Chooses the credentials of each connection and hears how each attempt went.

    The security extension's policy (chargepoint/security.py) follows SecurityProfile,
    AuthorizationKey and the installed certificates, and falls back to the settings
    that last connected when new ones keep failing.
    """

    async def credentials(self) -> Credentials: ...

    async def connected(self) -> None:
        """The CSMS accepted us on a connection made with the last credentials."""

    async def failed(self, error: BaseException) -> None:
        """An attempt with the last credentials ended before the CSMS accepted us."""


class StaticPolicy:
    """The configuration's credentials, always: csms_url, the key file, the TLS files."""

    def __init__(self, config: ChargePointConfig, auth_key: str | None) -> None:
        self._config = config
        self._auth_key = auth_key

    async def credentials(self) -> Credentials:
        return Credentials(self._config.csms_url, self._auth_key, tls_context(self._config))

    async def connected(self) -> None:
        return None

    async def failed(self, error: BaseException) -> None:
        return None


def tls_context(
    config: ChargePointConfig,
    *,
    url: str | None = None,
    extra_roots: str | None = None,
    identity: tuple[Path, Path] | None = None,
    use_configured_identity: bool = True,
) -> ssl.SSLContext | None:
    """A verifying TLS 1.2+ client context for a wss:// `url` (default csms_url), else None.

    Trusts the system's CAs, `chargepoint.ca_file` and `extra_roots` (PEM); presents
    `identity` (certificate chain, key) or else the configured client certificate.
    """
    if not (url or config.csms_url).startswith("wss://"):
        return None
    context = ssl.create_default_context(
        cafile=None if config.ca_file is None else str(config.ca_file)
    )
    # The security whitepaper allows nothing older than TLS 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_roots:
        context.load_verify_locations(cadata=extra_roots)
    if identity is not None:
        context.load_cert_chain(str(identity[0]), str(identity[1]))
    elif (
        use_configured_identity
        and config.client_cert_file is not None
        and config.client_key_file is not None
    ):
        context.load_cert_chain(str(config.client_cert_file), str(config.client_key_file))
    return context


class Reconnect(Exception):
    """Raised inside a connection to end it on purpose: new credentials are to be used."""


class CsmsLink:
    """Keeps one OCPP connection to the CSMS alive and carries calls over it."""

    def __init__(
        self,
        station: StationConfig,
        config: ChargePointConfig,
        auth_key: str | None,
        settings: Settings,
        clock: Clock,
        *,
        backoff: Callable[[int], float] | None = None,
        adopt_time: Callable[[Any], bool] | None = None,
        policy: ConnectionPolicy | None = None,
    ) -> None:
        self._station = station
        self._config = config
        self._policy: ConnectionPolicy = policy or StaticPolicy(config, auth_key)
        self._base_url = config.csms_url
        self._reconnect_requested = False
        self._answering = 0
        self._settings = settings
        self._clock = clock
        self._backoff = backoff or (lambda n: exponential(n, cap_s=config.reconnect_max_s))
        self._adopt_time = adopt_time or (lambda _: False)
        self.handler: Handler = _refuse_all
        # Called once the CSMS accepted us on a connection; `True` the first time only.
        self.on_online: Callable[[bool], None] = lambda first: None
        self._watchers: set[Callable[[], None]] = set()
        self._state = LinkState.DISCONNECTED
        self._registered = False  # BootNotification accepted once in this process
        self._endpoint: Endpoint | None = None
        self._ws: ClientConnection | None = None
        self._online = asyncio.Event()
        self._heartbeat_interval: int | None = None
        self._heartbeat_changed = asyncio.Event()
        self._connects = 0
        self._last_error = ""
        self._stats = EndpointStats()
        self._went_online = False
        self._closing = False
        self._close_requested = asyncio.Event()
        self._throttled = ThrottledLog(log)

    # -- state ---------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @state.setter
    def state(self, state: LinkState) -> None:
        if state is not LinkState.ONLINE:
            self._online.clear()
        if state is not self._state:
            self._state = state
            for notify in list(self._watchers):
                notify()
        if state is LinkState.ONLINE:
            self._online.set()

    @property
    def online(self) -> bool:
        return self._state is LinkState.ONLINE

    @property
    def registered(self) -> bool:
        """The CSMS accepted our BootNotification (CSMS requests may be answered)."""
        return self._registered

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` whenever the link state changes; returns a function that unwatches."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    @property
    def url(self) -> str:
        """The endpoint of the current (or last) connection, charge point id included."""
        return f"{self._base_url}/{self._station.id}"

    def request_reconnect(self) -> None:
        """Connect again with fresh credentials: at once when idle, or right after the reply
        to the CSMS request being answered (a ChangeConfiguration of AuthorizationKey)."""
        self._reconnect_requested = True
        if not self._answering:
            self._heartbeat_changed.set()  # wakes the session, which then ends the connection

    def snapshot(self) -> LinkSnapshot:
        stats = self._endpoint.stats if self._endpoint is not None else self._stats
        return LinkSnapshot(
            self.state,
            self.url,
            self._heartbeat_interval,
            self._connects,
            self._last_error,
            stats.stray_replies,
            stats.bad_frames,
        )

    # -- what the rest of the charge point calls ------------------------------------

    async def wait_online(self) -> None:
        await self._online.wait()

    async def call(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        unique_id: str | None = None,
        priority: Priority = Priority.NORMAL,
        reply_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """One CALL over the current connection; ConnectionLost when there is none."""
        endpoint = self._endpoint
        if endpoint is None or (not self.online and action != "BootNotification"):
            raise ConnectionLost("CSMS link is not online")
        return await endpoint.call(
            action,
            payload,
            reply_timeout_s=reply_timeout_s or self._config.response_timeout,
            priority=priority,
            unique_id=unique_id,
        )

    async def authorize(self, id_tag: str, deadline_s: float) -> dict[str, Any] | None:
        """The CSMS's idTagInfo for a card, or None when it cannot answer within the deadline.

        The deadline covers waiting for the call slot too (a MeterValues in flight), so a
        driver never waits longer than it, whatever the network does.
        """
        if not self.online:
            return None
        try:
            async with asyncio.timeout(deadline_s):
                reply = await self.call(
                    "Authorize",
                    {"idTag": id_tag},
                    priority=Priority.URGENT,
                    reply_timeout_s=deadline_s,
                )
        except (TimeoutError, ConnectionLost, CallErrorReceived, InvalidReply) as err:
            self._throttled.log(
                logging.WARNING,
                f"authorize {type(err).__name__}",
                "Authorize got no usable answer (%s): offline rules decide",
                type(err).__name__,
            )
            return None
        info: dict[str, Any] = reply["idTagInfo"]
        return info

    async def send_heartbeat(self) -> None:
        reply = await self.call("Heartbeat", {}, priority=Priority.LOW)
        self._take_time(reply.get("currentTime"))

    async def send_boot(self) -> None:
        """A BootNotification outside the boot sequence (TriggerMessage)."""
        reply = await self.call("BootNotification", self._boot_payload())
        outcome = on_boot_reply(reply, self._settings.integer("HeartbeatInterval"))
        if outcome.registration is Registration.ACCEPTED:
            self._set_heartbeat(outcome.interval_s)

    def heartbeat_interval_changed(self) -> None:
        """HeartbeatInterval was changed by the CSMS: the next beat follows it."""
        self._heartbeat_interval = self._settings.integer("HeartbeatInterval")
        self._heartbeat_changed.set()

    # -- the connection loop ----------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect with jittered back-off, until close() or cancellation."""
        attempt = 0
        while not self._closing:
            self.state = LinkState.CONNECTING
            accepted = False
            # Else a failure before _converse (refused, DNS, TLS) would read the previous
            # connection's success and keep the back-off at attempt 0 for the whole outage.
            self._went_online = False
            try:
                accepted = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Reconnect as err:
                accepted = self._went_online
                log.info("reconnecting to the CSMS: %s", err)
            except Exception as err:  # any failure costs this connection, never the daemon
                accepted = self._went_online
                self._last_error = _describe(err)[:300]
                if not accepted and not self._closing:
                    await self._report_failure(err)
                if not self._closing:
                    self._throttled.log(
                        logging.WARNING,
                        f"down {type(err).__name__}",
                        "CSMS link down: %s",
                        self._last_error,
                    )
            if self._closing:
                break
            self.state = LinkState.DISCONNECTED
            # The back-off resets only once a BootNotification was accepted on the
            # connection: a CSMS that accepts the socket and then fails must not be
            # hammered.
            attempt = 0 if accepted else attempt + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._close_requested.wait(), self._backoff(attempt))
        self.state = LinkState.CLOSED

    async def close(self) -> None:
        """Close the WebSocket with a close frame (1000) and stop reconnecting."""
        self._closing = True
        self._close_requested.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(code=1000, reason="charge point shutting down")

    async def _report_failure(self, err: BaseException) -> None:
        try:
            await self._policy.failed(err)
        except Exception:  # the policy's trouble must not stop the reconnecting
            log.exception("the connection policy failed to take a failed attempt")

    def _headers(self, auth_key: str | None) -> dict[str, str]:
        if not auth_key:
            return {}
        token = base64.b64encode(f"{self._station.id}:{auth_key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _connect_once(self) -> bool:
        """One connection from open to close; True if the CSMS accepted us on it."""
        ping = self._settings.integer("WebSocketPingInterval")
        self._reconnect_requested = False
        credentials = await self._policy.credentials()
        self._base_url = credentials.url.rstrip("/")
        async with connect(
            self.url,
            subprotocols=[SUBPROTOCOL],
            additional_headers=self._headers(credentials.auth_key),
            ssl=credentials.tls,
            open_timeout=max(5.0, self._config.response_timeout),
            ping_interval=ping or None,
            ping_timeout=(ping or None) and ping,
            close_timeout=2,
            max_size=MAX_FRAME_BYTES,
            proxy=None,
        ) as ws:
            if ws.subprotocol != SUBPROTOCOL:
                raise ConnectionError("CSMS did not agree to subprotocol ocpp1.6")
            self._ws = ws
            self._connects += 1
            try:
                if self._closing:
                    await ws.close(code=1000, reason="charge point shutting down")
                    return False
                return await self._converse(ws)
            finally:
                self._ws = None

    async def _converse(self, ws: ClientConnection) -> bool:
        endpoint = Endpoint(ws, self._handle, name="CSMS", logger=log)
        self._endpoint = endpoint
        receiving = asyncio.create_task(endpoint.run(), name="csms receive")
        session = asyncio.create_task(self._session(), name="csms session")
        self._went_online = False
        try:
            done, _ = await asyncio.wait({receiving, session}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raise what ended the connection
            return self._went_online
        finally:
            self.state = LinkState.DISCONNECTED
            self._stats = endpoint.stats
            self._endpoint = None
            for task in (receiving, session):
                task.cancel()
            await asyncio.gather(receiving, session, return_exceptions=True)

    async def _handle(self, action: str, payload: dict[str, Any]) -> Reply:
        if self.state is LinkState.REJECTED:
            # OCPP 1.6 §4.2: while rejected, the charge point does not act on requests.
            raise Refusal(ErrorCode.GENERIC_ERROR, "not accepted by the central system")
        self._answering += 1
        try:
            reply = await self.handler(action, payload)
        finally:
            self._answering -= 1
        if not self._reconnect_requested:
            return reply
        # The reply goes out on this connection first; then the connection ends.
        follow = reply.after

        async def then() -> None:
            if follow is not None:
                await follow()
            self._heartbeat_changed.set()

        return Reply(reply.payload, after=then)

    async def _session(self) -> None:
        """Boot (once per process), then stay online with heartbeats until cancelled."""
        first = not self._registered
        if first:
            await self._boot()
        self.state = LinkState.ONLINE
        self._went_online = True
        try:
            await self._policy.connected()
        except Exception:  # the connection is good whatever the policy's trouble
            log.exception("the connection policy failed to take a successful connection")
        self.on_online(first)
        while True:
            if self._reconnect_requested:
                raise Reconnect("new credentials")
            interval = self._heartbeat_interval or self._settings.integer("HeartbeatInterval")
            self._heartbeat_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_changed.wait(), interval)
                continue  # interval changed: start a new wait
            try:
                await self.send_heartbeat()
            except (TimeoutError, CallErrorReceived, InvalidReply) as err:
                self._throttled.log(logging.WARNING, "heartbeat", "Heartbeat failed: %s", err)

    async def _boot(self) -> None:
        """Send BootNotification until Accepted; nothing else goes out before (OCPP 4.2)."""
        while True:
            self.state = LinkState.BOOTING
            try:
                reply = await self._call_boot()
            except (CallErrorReceived, InvalidReply, TimeoutError) as err:
                self._throttled.log(logging.WARNING, "boot", "BootNotification failed: %s", err)
                await asyncio.sleep(self._backoff(1))
                continue
            outcome = on_boot_reply(reply, self._settings.integer("HeartbeatInterval"))
            if outcome.csms_time is not None and self._adopt_time(outcome.csms_time):
                log.warning("system clock not set: using the CSMS's time %s", outcome.csms_time)
            if outcome.registration is Registration.ACCEPTED:
                self._registered = True
                self._set_heartbeat(outcome.interval_s)
                log.info("CSMS accepted boot; heartbeat every %d s", outcome.interval_s)
                return
            self.state = (
                LinkState.PENDING
                if outcome.registration is Registration.PENDING
                else LinkState.REJECTED
            )
            log.warning(
                "CSMS answered boot with %s; trying again in %d s",
                outcome.registration,
                outcome.interval_s,
            )
            await asyncio.sleep(outcome.interval_s)

    async def _call_boot(self) -> dict[str, Any]:
        endpoint = self._endpoint
        if endpoint is None:
            raise ConnectionLost("no connection")
        return await endpoint.call(
            "BootNotification",
            self._boot_payload(),
            reply_timeout_s=self._config.response_timeout,
        )

    def _boot_payload(self) -> dict[str, Any]:
        return {
            "chargePointVendor": self._station.vendor[:20],
            "chargePointModel": self._station.model[:20],
            "firmwareVersion": __version__,
        }

    def _set_heartbeat(self, interval_s: int) -> None:
        # The CSMS's interval is the HeartbeatInterval from now on (OCPP 1.6 §4.2).
        self._settings.change("HeartbeatInterval", str(interval_s))
        self._heartbeat_interval = interval_s
        self._heartbeat_changed.set()

    def _take_time(self, current_time: object) -> None:
        if not isinstance(current_time, str):
            return
        with contextlib.suppress(ValueError):
            moment = parse_datetime(current_time)
            if self._adopt_time(moment):
                log.warning("system clock not set: using the CSMS's time %s", moment)


def _describe(err: BaseException) -> str:
    if isinstance(err, InvalidStatus):
        return f"HTTP {err.response.status_code} on the WebSocket upgrade"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    return f"{type(err).__name__}: {err}"
