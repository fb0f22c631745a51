"""SiteCsms: the WebSocket server of the embedded CSMS (OCPP 1.6J, security profile 1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.frames import CloseCode
from websockets.headers import parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edgepoint.clock import Clock
from edgepoint.csms.db import DEFAULT_AUTH_ITERATIONS, CsmsStore, open_csms_store
from edgepoint.csms.handlers import ChargePointSession
from edgepoint.csms.ids import ChargePointId, InvalidIdentifierError, parse_charge_point_id

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp1.6")
PATH_PREFIX = "/ocpp/"
_REALM = 'Basic realm="edgepoint-csms", charset="UTF-8"'
# OCPP 1.6 messages are small (a long session's StopTransaction with its transactionData
# is the largest); the cap keeps a hostile peer from making us buffer more.
MAX_MESSAGE_BYTES = 1024 * 1024


class _RedactAuthorization(logging.Filter):
    """Keep the Basic-auth key out of websockets' debug log of request headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() in ("authorization", "proxy-authorization")
        ):
            record.args = (args[0], "<redacted>")
        return True


_ws_log = logging.getLogger("edgepoint.csms.websockets")
_ws_log.addFilter(_RedactAuthorization())


class PathRejected(Exception):
    """The request path names no acceptable charge point (carries the HTTP status)."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def charge_point_id_from_path(path: str) -> ChargePointId:
    """Take the charge point id from `/ocpp/<id>` (URL-decoded); raise PathRejected if bad."""
    route = urlsplit(path).path
    if not route.startswith(PATH_PREFIX):
        raise PathRejected(HTTPStatus.NOT_FOUND, f"not found; connect to {PATH_PREFIX}<id>")
    segment = route.rsplit("/", 1)[-1]
    if not segment:
        raise PathRejected(HTTPStatus.NOT_FOUND, "charge point id missing from the path")
    try:
        return parse_charge_point_id(unquote(segment, errors="strict"))
    except (InvalidIdentifierError, UnicodeDecodeError) as err:
        raise PathRejected(HTTPStatus.BAD_REQUEST, str(err)) from err


class SiteCsms:
    """Serves OCPP 1.6J to the site's charge points until cancelled.

    A charge point connects to ws://host:port/ocpp/<id> with subprotocol ocpp1.6
    and HTTP Basic auth (username = id, password = its registered auth key).
    """

    def __init__(
        self,
        db_path: Path,
        host: str,
        port: int,
        clock: Clock,
        heartbeat_interval: int = 300,
        *,
        close_timeout: float = 1.0,
        auth_iterations: int = DEFAULT_AUTH_ITERATIONS,
    ) -> None:
        self._db_path = db_path
        self._host = host
        self._port = port
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._close_timeout = close_timeout
        self._auth_iterations = auth_iterations
        self._store: CsmsStore | None = None
        self._bound_port: int | None = None
        self._sessions: dict[ChargePointId, ChargePointSession] = {}
        self._chores: set[asyncio.Task[None]] = set()
        # PBKDF2 runs in worker threads; bound how many unauthenticated clients may use.
        self._auth_slots = asyncio.Semaphore(2)
        self.started = asyncio.Event()

    async def wait_started(self) -> None:
        """Return once the server listens (the port is bound and csms.db is open)."""
        await self.started.wait()

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0); only valid once `started`."""
        if self._bound_port is None:
            raise RuntimeError("SiteCsms is not serving yet; wait for `started`")
        return self._bound_port

    @property
    def store(self) -> CsmsStore | None:
        """The open database while running (for status views and operator commands)."""
        return self._store

    def connected_ids(self) -> list[ChargePointId]:
        """Ids of the charge points connected now, sorted."""
        return sorted(self._sessions)

    def session(self, charge_point_id: str) -> ChargePointSession | None:
        """The live session of a connected charge point (to send it CALLs), or None."""
        return self._sessions.get(ChargePointId(charge_point_id))

    async def register_charge_point(self, charge_point_id: str, auth_key: str) -> None:
        """Register a charge point or change its key; works whether or not `run` is active."""
        if self._store is not None:
            await self._store.charge_points.set_auth_key(charge_point_id, auth_key)
            return
        async with open_csms_store(
            self._db_path, self._clock, auth_iterations=self._auth_iterations
        ) as store:
            await store.charge_points.set_auth_key(charge_point_id, auth_key)

    async def run(self) -> None:
        """Open csms.db and serve until cancelled; then close every connection (1001)."""
        if self._store is not None:
            raise RuntimeError("SiteCsms is already running")
        store = await CsmsStore.open(
            self._db_path, self._clock, auth_iterations=self._auth_iterations
        )
        self._store = store
        try:
            async with serve(
                self._serve_connection,
                self._host,
                self._port,
                subprotocols=[SUBPROTOCOL],
                process_request=self._check_request,
                close_timeout=self._close_timeout,
                max_size=MAX_MESSAGE_BYTES,
                logger=_ws_log,
            ) as server:
                self._bound_port = _bound_port(server)
                log.info("CSMS listening on %s:%d", self._host, self._bound_port)
                self.started.set()
                # Cancelling serve_forever closes connections with 1001 and waits for
                # every connection handler to return.
                await server.serve_forever()
        finally:
            self.started.clear()
            self._bound_port = None
            for task in self._chores:
                task.cancel()
            if self._chores:
                await asyncio.gather(*self._chores, return_exceptions=True)
            self._sessions.clear()
            self._store = None
            await store.close()
            log.info("CSMS stopped")

    async def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Reject before the upgrade: bad path (404/400), missing or wrong credentials (401)."""
        try:
            cp_id = charge_point_id_from_path(request.path)
        except PathRejected as rejected:
            log.warning("CSMS refused path %.80r: %s", request.path, rejected.reason)
            return connection.respond(rejected.status, rejected.reason + "\n")
        if not await self._authenticated(cp_id, request.headers.get("Authorization")):
            log.warning("CSMS refused %s: missing or wrong credentials", cp_id)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
            response.headers["WWW-Authenticate"] = _REALM
            return response
        return None

    async def _authenticated(self, cp_id: ChargePointId, header: str | None) -> bool:
        if self._store is None or header is None:
            return False
        try:
            username, password = parse_authorization_basic(header)
        except InvalidHeader:
            return False
        if username != cp_id:
            return False
        async with self._auth_slots:
            return await self._store.charge_points.verify_auth_key(cp_id, password)

    async def _serve_connection(self, connection: ServerConnection) -> None:
        store = self._store
        request = connection.request
        if store is None or request is None:
            return
        cp_id = charge_point_id_from_path(request.path)
        session = ChargePointSession(
            cp_id,
            connection,
            store,
            self._clock,
            heartbeat_interval=self._heartbeat_interval,
        )
        previous = self._sessions.get(cp_id)
        self._sessions[cp_id] = session
        if previous is not None:
            # Closing waits for the peer, which may be dead (why it reconnected):
            # don't make the new connection wait for it.
            log.info("%s reconnected; closing its previous connection", cp_id)
            self._spawn(previous.connection.close(CloseCode.NORMAL_CLOSURE, "replaced"))
        log.info("%s connected from %s", cp_id, connection.remote_address)
        try:
            await session.serve()
        except ConnectionClosed as closed:
            log.info("%s disconnected (%s)", cp_id, closed)
        finally:
            if self._sessions.get(cp_id) is session:
                del self._sessions[cp_id]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


def _bound_port(server: Server) -> int:
    port = server.sockets[0].getsockname()[1]
    return int(port)
