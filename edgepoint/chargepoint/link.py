"""The charge point's OCPP 1.6J link: connect, boot, heartbeat, statuses and the outbox."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import websockets
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from edgepoint import __version__
from edgepoint.backoff import exponential
from edgepoint.chargepoint.outbox import REFUSED, OutboxSender, TransactionStarted
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.clock import Clock, iso_utc
from edgepoint.config import ChargePointConfig, StationConfig
from edgepoint.storage.chargepoint import ChargePointStore

log = logging.getLogger(__name__)

# Until the CSMS tells us otherwise (BootNotification.conf), retry boot this often.
DEFAULT_BOOT_RETRY_S = 10


_Status = tuple[ConnectorStatus, str, datetime]


class LinkState(StrEnum):
    """Where the link to the CSMS stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    BOOTING = "booting"  # connected, BootNotification not yet Accepted
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


class CsmsClient(OcppChargePoint):  # type: ignore[misc]
    """Our side of the OCPP conversation; CSMS-initiated requests get their handlers here."""


class CsmsLink:
    """Keeps one OCPP connection to the CSMS alive and carries the kiosk's messages over it."""

    def __init__(
        self,
        station: StationConfig,
        config: ChargePointConfig,
        auth_key: str | None,
        store: ChargePointStore,
        clock: Clock,
        connector_id: int = 1,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._station = station
        self._config = config
        self._auth_key = auth_key
        self._store = store
        self._clock = clock
        self._connector_id = connector_id
        self._backoff = backoff or (lambda n: exponential(n, cap_s=config.reconnect_max_s))
        self._watchers: set[Callable[[], None]] = set()
        self._state = LinkState.DISCONNECTED
        self.outbox_wake = asyncio.Event()
        self.on_transaction_started: TransactionStarted = lambda *_: None
        # (status, error code, when it changed): the timestamp sent is the change's, even
        # when the message goes out later (behind a slow call, or after a reconnect).
        self._status: _Status = (ConnectorStatus.AVAILABLE, "NoError", clock.utc_now())
        # Every change is reported in order (Preparing then Charging), not just the last.
        self._pending_statuses: deque[_Status] = deque()
        self._status_dirty = asyncio.Event()
        self._peer: CsmsClient | None = None
        self._ws: ClientConnection | None = None
        self._heartbeat_interval: int | None = None
        self._connects = 0
        self._last_error = ""
        self._closing = False
        self._close_requested = asyncio.Event()

    @property
    def state(self) -> LinkState:
        return self._state

    @state.setter
    def state(self, state: LinkState) -> None:
        if state is not self._state:
            self._state = state
            for notify in list(self._watchers):
                notify()

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` whenever the link state changes; returns a function that unwatches."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    @property
    def url(self) -> str:
        return f"{self._config.csms_url}/{self._station.id}"

    def snapshot(self) -> LinkSnapshot:
        return LinkSnapshot(
            self.state, self.url, self._heartbeat_interval, self._connects, self._last_error
        )

    # -- what the kiosk calls ----------------------------------------------------

    async def authorize(self, id_tag: IdTag) -> AuthorizationStatus:
        """Ask the CSMS about a card; Unavailable when offline or it does not answer."""
        peer = self._peer
        if peer is None or self.state is not LinkState.ONLINE:
            return AuthorizationStatus.UNAVAILABLE
        try:
            result = await peer.call(call.Authorize(id_tag=id_tag), suppress=False)
        except (*REFUSED, TimeoutError, websockets.ConnectionClosed) as err:
            log.warning("Authorize for a card failed: %s", type(err).__name__)
            return AuthorizationStatus.UNAVAILABLE
        try:
            return AuthorizationStatus(result.id_tag_info["status"])
        except (KeyError, ValueError):
            return AuthorizationStatus.INVALID

    def report_status(self, status: ConnectorStatus, error_code: str = "NoError") -> None:
        """Remember the newest status; the link sends it now or right after the next boot."""
        self._status = (status, error_code, self._clock.utc_now())
        if self.state is LinkState.ONLINE:
            self._pending_statuses.append(self._status)
            self._status_dirty.set()

    def wake_outbox(self) -> None:
        self.outbox_wake.set()

    # -- the connection loop ----------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect with back-off, until close() or cancellation."""
        attempt = 0
        while not self._closing:
            self.state = LinkState.CONNECTING
            try:
                async with connect(
                    self.url,
                    subprotocols=[Subprotocol("ocpp1.6")],
                    additional_headers=self._headers(),
                    open_timeout=10,
                    close_timeout=2,
                    proxy=None,
                ) as ws:
                    if ws.subprotocol != "ocpp1.6":
                        raise ConnectionError("CSMS did not agree to subprotocol ocpp1.6")
                    self._ws = ws
                    self._connects += 1
                    attempt = 0
                    # close() may have come while the connection was being opened.
                    if self._closing:
                        await ws.close(code=1000, reason="charge point shutting down")
                    else:
                        await self._converse(ws)
            except* (OSError, TimeoutError, websockets.WebSocketException, *REFUSED) as group:
                err = group.exceptions[0]
                self._last_error = f"{type(err).__name__}: {err}"
                if not self._closing:
                    log.warning("CSMS link down: %s", self._last_error)
            finally:
                self._ws = None
                self._peer = None
            if self._closing:
                break
            self.state = LinkState.DISCONNECTED
            # Wait out the back-off, unless close() asks us to stop sooner.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._close_requested.wait(), self._backoff(attempt))
            attempt += 1
        self.state = LinkState.CLOSED

    async def close(self) -> None:
        """Close the WebSocket with a close frame (1000) and stop reconnecting."""
        self._closing = True
        self._close_requested.set()
        ws = self._ws
        if ws is not None:
            await ws.close(code=1000, reason="charge point shutting down")

    def _headers(self) -> dict[str, str]:
        if not self._auth_key:
            return {}
        token = base64.b64encode(f"{self._station.id}:{self._auth_key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _converse(self, ws: ClientConnection) -> None:
        peer = CsmsClient(self._station.id, ws, response_timeout=self._config.response_timeout)
        async with asyncio.TaskGroup() as tg:
            receiving = tg.create_task(peer.start())
            self.state = LinkState.BOOTING
            interval = await self._boot(peer)
            self._heartbeat_interval = interval
            self._peer = peer
            self.state = LinkState.ONLINE
            log.info("CSMS accepted boot; heartbeat every %d s", interval)
            sender = OutboxSender(
                self._store, self._clock, self.outbox_wake, self.on_transaction_started
            )
            # After every boot the CSMS learns where we stand now, not the history.
            self._pending_statuses.clear()
            self._pending_statuses.append(self._status)
            self._status_dirty.set()
            tg.create_task(self._heartbeat(peer, interval))
            tg.create_task(self._send_statuses(peer))
            tg.create_task(sender.run(peer))
            # The receive loop ends only by an exception (the connection closed); the
            # TaskGroup then cancels the other tasks and raises it to run().
            await receiving

    async def _boot(self, peer: CsmsClient) -> int:
        """Send BootNotification until Accepted; nothing else may be sent before (OCPP 4.2)."""
        while True:
            result = await peer.call(
                call.BootNotification(
                    charge_point_vendor=self._station.vendor,
                    charge_point_model=self._station.model,
                    firmware_version=__version__,
                ),
                suppress=False,
            )
            interval = int(result.interval) if result.interval else DEFAULT_BOOT_RETRY_S
            if result.status == "Accepted":
                return interval or DEFAULT_BOOT_RETRY_S
            log.warning("CSMS answered boot with %s; retrying in %d s", result.status, interval)
            await asyncio.sleep(interval)

    async def _heartbeat(self, peer: CsmsClient, interval: int) -> None:
        while True:
            await asyncio.sleep(interval)
            await peer.call(call.Heartbeat(), suppress=False)

    async def _send_statuses(self, peer: CsmsClient) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            while self._pending_statuses:
                status, error_code, changed_at = self._pending_statuses.popleft()
                request: Any = call.StatusNotification(
                    connector_id=self._connector_id,
                    error_code=error_code,
                    status=status.value,
                    timestamp=iso_utc(changed_at),
                )
                try:
                    await peer.call(request, suppress=False)
                except REFUSED as err:
                    # A refused status must not tear the link down; the next change resends.
                    log.warning("CSMS refused StatusNotification %s: %s", status, err)
