"""SiteCsms: the WebSocket server of the embedded CSMS (OCPP 1.6J, security profiles 1-3).

Admission. Every check runs before the WebSocket upgrade, cheapest first, and each
refusal is made before the next check's cost is paid:

1. Path: only `<path_prefix>/<id>` (default `/ocpp/<id>`; exactly one segment after
   the prefix, the id URL-decoded, a query string ignored). Anything else: 404; a
   malformed id: 400.
2. Subprotocol: the client must offer `ocpp1.6`, else 400.
3. Lockout: a source (an IPv4 address, or an IPv6 /64) that failed authentication
   `max_failures` times (5) within a minute is locked for 60 s, doubling on each new
   lockout up to 15 min. While locked it gets 429 with Retry-After; nothing is read
   or hashed. Failures are: unknown id, missing or wrong credentials, missing or
   wrong client certificate. Running verifications count against the budget, so a
   burst of parallel attempts cannot slip past it.
4. Identity: an id that is not registered gets 404 and is reported through
   `on_unknown` (for `chargers pending`).
5. Credentials:
   - Security profile 3 (`tls_client_ca_file` set): the TLS client certificate must
     chain to that CA and its subject CN must equal the id, else 403. The certificate
     is then the credential and Basic auth may be omitted; if the client sends Basic
     credentials anyway they must be right (user = id, the registered password):
     a wrong secret is refused, never ignored.
   - Profiles 1 and 2: HTTP Basic with user name = id and the registered password,
     else 401. A password that verified before is recognised by a keyed digest in
     memory (VerifiedKeyCache) with no hashing; otherwise PBKDF2 runs in one of two
     worker slots, at most `max_verifications` waiting (beyond: 503, not a failure).
     The cached digest counts only while the id's key_version in csms.db stays the one
     seen when it was cached: a re-key or removal by the CLI (another process) bumps it.
   - `require_auth = False` (allowed on loopback only) skips credentials.
6. One connection per id (the duplicate policy): a newcomer with valid credentials
   for an id that is already connected never silences the connection in place. The
   current connection is pinged: if it answers within `duplicate_ping_timeout` (2 s)
   the newcomer is refused with 409 Conflict and the current one carries on
   untouched; if it does not answer, or is already closing, it is closed and the
   newcomer takes over. A newcomer arriving while another one for the same id is
   being checked or is mid-handshake is refused with 409 too.

Dead peers: the server pings every connection every 20 s and drops one that has not
answered 20 s later, so a dead peer is found within 40 s.

Refusals are logged through a ThrottledLog (one line per kind per minute, with a
count), never one line per attempt; passwords and Authorization headers never are.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import Counter
from collections.abc import Coroutine
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.frames import CloseCode
from websockets.headers import parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from edgepoint.clock import Clock
from edgepoint.csms.auth import FailureLimiter, LockoutPolicy, VerifiedKeyCache, source_of
from edgepoint.csms.db import DEFAULT_AUTH_ITERATIONS, CsmsStore, open_csms_store
from edgepoint.csms.handlers import ChargePointSession, ChargerLogs
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.limiter import DEFAULT_LIMITS, CsmsLimits
from edgepoint.csms.pending import OnUnknown, PendingChargers
from edgepoint.csms.records import Anomaly, AnomalyKind, AnomalyReason
from edgepoint.csms.route import (
    DEFAULT_PATH_PREFIX,
    PathRejected,
    charge_point_id_from_path,
    parse_path_prefix,
)
from edgepoint.csms.tls import TlsSettings, check_listen_policy, peer_common_name, server_context
from edgepoint.errors import StorageError
from edgepoint.logthrottle import ThrottledLog
from edgepoint.redact import printable

if TYPE_CHECKING:
    from edgepoint.config import CsmsConfig

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PathRejected",
    "SiteCsms",
    "charge_point_id_from_path",
]

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048

SUBPROTOCOL = Subprotocol("ocpp1.6")
_REALM = 'Basic realm="edgepoint-csms", charset="UTF-8"'
# OCPP 1.6 messages are small (a long session's StopTransaction with its transactionData
# is the largest); the cap keeps a hostile peer from making us buffer more. This is the
# default; [csms] max_frame_bytes (CsmsLimits) sets it.
MAX_MESSAGE_BYTES = DEFAULT_LIMITS.max_frame_bytes
# Keepalive: a peer that has not answered a ping 20 s after it was sent is dropped, so
# a dead peer is found within 40 s (well inside the 60 s the site promises).
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
# PBKDF2 runs in worker threads; how many at once, and how many may wait for them.
_AUTH_SLOTS = 2
_MAX_VERIFICATIONS = 64


class _QuietWebsockets(logging.Filter):
    """Keep keys out of websockets' log and its per-connection lines out of ours.

    websockets logs each request header at DEBUG (the Basic-auth key among them) and
    one INFO line per accepted or refused connection; we log admissions ourselves,
    refusals through a ThrottledLog, so its INFO lines would only let a flood of
    attempts write one line each.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            return False
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() in ("authorization", "proxy-authorization")
        ):
            record.args = (args[0], "<redacted>")
        return True


_ws_log = logging.getLogger("edgepoint.csms.websockets")
_ws_log.addFilter(_QuietWebsockets())


class _Outcome(enum.Enum):
    ADMITTED = "admitted"
    REFUSED = "refused"  # counted as a failure of the source
    BUSY = "busy"  # too many verifications waiting; not the client's fault
    LOCKED = "locked"  # the source ran out of attempts meanwhile


def _offers_ocpp16(headers: Headers) -> bool:
    offered = (
        token.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for token in value.split(",")
    )
    return SUBPROTOCOL in offered


class SiteCsms:
    """Serves OCPP 1.6J to the site's charge points until cancelled.

    A charge point connects to ws[s]://host:port/<path_prefix>/<id> with subprotocol
    ocpp1.6 and HTTP Basic auth (user name = id, password = its registered auth key),
    or with a client certificate (CN = id) under security profile 3. The module
    docstring gives the admission order and the duplicate-connection policy.
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
        path_prefix: str = DEFAULT_PATH_PREFIX,
        tls: TlsSettings | None = None,
        require_auth: bool = True,
        allow_plaintext_on_network: bool = False,
        on_unknown: OnUnknown | None = None,
        store_pending: bool = False,
        lockout: LockoutPolicy | None = None,
        key_cache: VerifiedKeyCache | None = None,
        ping_interval: float = PING_INTERVAL_S,
        ping_timeout: float = PING_TIMEOUT_S,
        duplicate_ping_timeout: float = 2.0,
        max_verifications: int = _MAX_VERIFICATIONS,
        limits: CsmsLimits = DEFAULT_LIMITS,
    ) -> None:
        # Both raise (CsmsError subclasses) before anything listens.
        check_listen_policy(
            host,
            tls=tls is not None,
            require_auth=require_auth,
            allow_plaintext_on_network=allow_plaintext_on_network,
        )
        self._ssl = None if tls is None else server_context(tls)
        self._tls = tls
        self._path_prefix = parse_path_prefix(path_prefix)
        self._db_path = db_path
        self._host = host
        self._port = port
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._limits = limits  # per-connection limits (csms/limiter.py)
        self._close_timeout = close_timeout
        self._auth_iterations = auth_iterations
        self._require_auth = require_auth
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._duplicate_ping_timeout = duplicate_ping_timeout
        self._max_verifications = max_verifications
        # Unknown ids go to `on_unknown`; else to csms.db's pending_charge_points with
        # `store_pending` (what `chargers pending` reads), else to memory (`pending`).
        self.pending: PendingChargers | None = None
        if on_unknown is None and store_pending:
            on_unknown = self.record_pending
        elif on_unknown is None:
            self.pending = PendingChargers()
            on_unknown = self.pending.record
        self._on_unknown = on_unknown
        self._limiter = FailureLimiter(lockout)
        self._keys = key_cache or VerifiedKeyCache()
        # The key_version each id had when last seen at admission: a cached key is only
        # good while it stays the same (the CLI re-keys in another process).
        self._key_versions: dict[ChargePointId, int] = {}
        self._store: CsmsStore | None = None
        self._bound_port: int | None = None
        self._sessions: dict[ChargePointId, ChargePointSession] = {}
        # Per admitted (so registered) id: log quotas that survive its reconnections.
        self._charger_logs: dict[ChargePointId, ChargerLogs] = {}
        # The connection that holds each id, from the moment it passed admission.
        self._owners: dict[ChargePointId, ServerConnection] = {}
        self._contended: set[ChargePointId] = set()
        self._chores: set[asyncio.Task[None]] = set()
        self._auth_slots = asyncio.Semaphore(_AUTH_SLOTS)
        self._verifications = 0  # waiting for or holding an auth slot
        self._refusals = ThrottledLog(log, interval_s=60.0)
        self.refused: Counter[int] = Counter()  # refusals by HTTP status, since start
        self.started = asyncio.Event()

    @classmethod
    def from_config(cls, config: CsmsConfig, db_path: Path, clock: Clock) -> SiteCsms:
        """Build the server the [csms] table describes (raises CsmsError if it may not run)."""
        tls = None
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            tls = TlsSettings(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
        return cls(
            db_path,
            config.host,
            config.port,
            clock,
            heartbeat_interval=config.heartbeat_interval,
            path_prefix=config.path_prefix,
            tls=tls,
            require_auth=config.require_auth,
            allow_plaintext_on_network=config.allow_plaintext_on_network,
            limits=CsmsLimits.from_config(config),
            store_pending=True,
        )

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

    @property
    def limiter(self) -> FailureLimiter:
        """The per-source failure limiter (for status views and `release`)."""
        return self._limiter

    def connected_ids(self) -> list[ChargePointId]:
        """Ids of the charge points connected now, sorted."""
        return sorted(self._sessions)

    def session(self, charge_point_id: str) -> ChargePointSession | None:
        """The live session of a connected charge point (to send it CALLs), or None."""
        return self._sessions.get(ChargePointId(charge_point_id))

    def forget(self, charge_point_id: str) -> None:
        """Drop the cached verified key of a charge point; call after a re-key or removal.

        Its next login is checked against csms.db again. A connection already open is
        left alone.
        """
        self._keys.forget(charge_point_id)

    async def record_pending(
        self, charge_point_id: ChargePointId, address: str, at: datetime
    ) -> None:
        """The `OnUnknown` that keeps unknown ids in csms.db (for `chargers pending`)."""
        store = self._store
        if store is not None:
            await store.pending.record(charge_point_id, address, at)

    async def disconnect(self, charge_point_id: str, reason: str) -> bool:
        """Close a charge point's connection (1008) and record `reason` as an anomaly.

        For a re-keyed or removed charger: admission checks it again when it reconnects.
        False if it was not connected.
        """
        cp_id = ChargePointId(charge_point_id)
        connection = self._owners.get(cp_id)
        if connection is None:
            return False
        detail = printable(reason, 100)
        store = self._store
        if store is not None:
            anomaly = Anomaly(
                AnomalyKind.DISCONNECTED, AnomalyReason.OPERATOR_DISCONNECT, None, detail
            )
            try:
                await store.anomalies.record(cp_id, anomaly, self._now())
            except StorageError as err:
                log.warning("%s: disconnect not recorded: %s", cp_id, err)
        if self._owners.get(cp_id) is not connection:
            return True  # it went (or was replaced) while the anomaly was written
        log.info("%s: disconnected by the operator: %s", cp_id, detail)
        if connection.state is State.CONNECTING:
            # Mid-handshake: releasing the id makes _serve_connection close it (1008).
            del self._owners[cp_id]
            return True
        # A close reason must fit in a close frame (123 bytes).
        await connection.close(
            CloseCode.POLICY_VIOLATION, detail.encode()[:120].decode(errors="ignore")
        )
        return True

    def _check_key_version(self, cp_id: ChargePointId, version: int) -> None:
        """Drop the cached key of an id whose key changed since it was last seen here."""
        if self._key_versions.get(cp_id, version) != version:
            self._keys.forget(cp_id)
        self._key_versions[cp_id] = version

    async def register_charge_point(self, charge_point_id: str, auth_key: str) -> None:
        """Register a charge point or change its key; works whether or not `run` is active."""
        if self._store is not None:
            await self._store.charge_points.set_auth_key(charge_point_id, auth_key)
        else:
            async with open_csms_store(
                self._db_path, self._clock, auth_iterations=self._auth_iterations
            ) as store:
                await store.charge_points.set_auth_key(charge_point_id, auth_key)
        # After the write: a verification that read the old key cannot re-cache it.
        self.forget(charge_point_id)

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
                process_response=self._after_response,
                ssl=self._ssl,
                close_timeout=self._close_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                max_size=self._limits.max_frame_bytes,
                logger=_ws_log,
                # A site's chargers all reconnect at once after an outage: asyncio's
                # default accept backlog of 100 would drop most of their SYNs and make
                # them wait out their back-off (the kernel caps it at net.core.somaxconn).
                backlog=LISTEN_BACKLOG,
            ) as server:
                self._bound_port = _bound_port(server)
                log.info(
                    "CSMS listening on %s:%d (%s)",
                    self._host,
                    self._bound_port,
                    self._security_profile(),
                )
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
            self._owners.clear()
            self._store = None
            await store.close()
            log.info("CSMS stopped")

    def _security_profile(self) -> str:
        if self._tls is None:
            return "ws://, Basic auth" if self._require_auth else "ws://, NO authentication"
        if self._tls.client_certificates:
            return "wss://, client certificates"
        return "wss://, Basic auth"

    # -- admission ---------------------------------------------------------------------

    def _refuse(
        self,
        connection: ServerConnection,
        status: HTTPStatus,
        body: str,
        kind: str,
        message: str,
        *args: object,
    ) -> Response:
        self.refused[status] += 1
        self._refusals.log(logging.WARNING, kind, "CSMS refused " + message, *args)
        return connection.respond(status, body + "\n")

    async def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Admit or refuse before the upgrade, in the order the module docstring gives."""
        peer = _host_of(connection.remote_address)
        try:
            cp_id = charge_point_id_from_path(request.path, self._path_prefix)
        except PathRejected as rejected:
            return self._refuse(
                connection,
                rejected.status,
                rejected.reason,
                "path",
                "path %.80r from %s: %s",
                request.path,
                peer,
                rejected.reason,
            )
        if not _offers_ocpp16(request.headers):
            return self._refuse(
                connection,
                HTTPStatus.BAD_REQUEST,
                f"offer the WebSocket subprotocol {SUBPROTOCOL}",
                "subprotocol",
                "%s from %s: subprotocol %s not offered",
                cp_id,
                peer,
                SUBPROTOCOL,
            )
        source = source_of(connection.remote_address)
        if self._limiter.retry_after(source) > 0:
            return self._locked_out(connection, cp_id, peer, source)
        store = self._store
        if store is None:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not serving\n")
        record = await store.charge_points.get(cp_id)
        if record is None:
            self._keys.forget(cp_id)
            self._key_versions.pop(cp_id, None)
            self._limiter.fail(source)
            await self._report_unknown(cp_id, peer)
            return self._refuse(
                connection,
                HTTPStatus.NOT_FOUND,
                "unknown charge point",
                "unknown",
                "unknown charge point %s from %s (recorded as pending)",
                cp_id,
                peer,
            )
        self._check_key_version(cp_id, record.key_version)
        refusal = await self._authenticate(connection, request, store, cp_id, source, peer)
        if refusal is not None:
            return refusal
        return await self._claim(connection, cp_id, peer)

    def _locked_out(
        self, connection: ServerConnection, cp_id: ChargePointId, peer: str, source: str
    ) -> Response:
        response = self._refuse(
            connection,
            HTTPStatus.TOO_MANY_REQUESTS,
            "too many failed attempts; try later",
            "locked",
            "%s from %s: too many failed authentications from %s",
            cp_id,
            peer,
            source,
        )
        response.headers["Retry-After"] = str(max(1, math.ceil(self._limiter.retry_after(source))))
        return response

    async def _report_unknown(self, cp_id: ChargePointId, peer: str) -> None:
        try:
            await self._on_unknown(cp_id, peer, self._now())
        except Exception:  # the refusal stands whatever the recorder does
            self._refusals.log(
                logging.ERROR, "pending", "CSMS could not record pending %s", cp_id, exc_info=True
            )

    def _now(self) -> datetime:
        return self._clock.utc_now()

    async def _authenticate(
        self,
        connection: ServerConnection,
        request: Request,
        store: CsmsStore,
        cp_id: ChargePointId,
        source: str,
        peer: str,
    ) -> Response | None:
        header = request.headers.get("Authorization")
        if self._tls is not None and self._tls.client_certificates:
            common_name = peer_common_name(connection.transport.get_extra_info("peercert"))
            if common_name != cp_id:
                self._limiter.fail(source)
                return self._refuse(
                    connection,
                    HTTPStatus.FORBIDDEN,
                    "a client certificate whose CN is the charge point id is required",
                    "certificate",
                    "%s from %s: client certificate %s",
                    cp_id,
                    peer,
                    "missing" if common_name is None else "for another id",
                )
            if header is None:
                return None  # the certificate is the credential (profile 3)
        elif not self._require_auth:
            return None
        outcome = await self._check_credentials(store, cp_id, header, source)
        if outcome is _Outcome.ADMITTED:
            return None
        if outcome is _Outcome.LOCKED:
            return self._locked_out(connection, cp_id, peer, source)
        if outcome is _Outcome.BUSY:
            response = self._refuse(
                connection,
                HTTPStatus.SERVICE_UNAVAILABLE,
                "busy verifying other logins; try again shortly",
                "busy",
                "%s from %s: too many logins waiting for verification",
                cp_id,
                peer,
            )
            response.headers["Retry-After"] = "5"
            return response
        response = self._refuse(
            connection,
            HTTPStatus.UNAUTHORIZED,
            "unauthorized",
            "credentials",
            "%s from %s: missing or wrong credentials",
            cp_id,
            peer,
        )
        response.headers["WWW-Authenticate"] = _REALM
        return response

    async def _check_credentials(
        self, store: CsmsStore, cp_id: ChargePointId, header: str | None, source: str
    ) -> _Outcome:
        """Check Basic credentials, counting each failure against the source."""
        if header is None:
            self._limiter.fail(source)
            return _Outcome.REFUSED
        try:
            username, password = parse_authorization_basic(header)
        except InvalidHeader:
            self._limiter.fail(source)
            return _Outcome.REFUSED
        if username != cp_id:
            self._limiter.fail(source)
            return _Outcome.REFUSED
        if self._keys.matches(cp_id, password):
            return _Outcome.ADMITTED
        if self._verifications >= self._max_verifications:
            return _Outcome.BUSY
        # Again, with no await before `begin`: a burst that passed the first check
        # together (while the id was looked up) must not all reach PBKDF2.
        if self._limiter.retry_after(source) > 0:
            return _Outcome.LOCKED
        epoch = self._keys.epoch
        verified: bool | None = None
        self._limiter.begin(source)
        self._verifications += 1
        try:
            async with self._auth_slots:
                verified = await store.charge_points.verify_auth_key(cp_id, password)
        finally:
            self._verifications -= 1
            self._limiter.end(source, failed=verified is False)
        if not verified:
            return _Outcome.REFUSED
        self._keys.remember(cp_id, password, epoch=epoch)
        return _Outcome.ADMITTED

    async def _claim(
        self, connection: ServerConnection, cp_id: ChargePointId, peer: str
    ) -> Response | None:
        """Apply the duplicate policy; on success the connection owns the id."""
        if cp_id in self._contended:
            return self._duplicate(connection, cp_id, peer)
        current = self._owners.get(cp_id)
        if current is not None:
            self._contended.add(cp_id)
            try:
                alive = await self._answers_ping(current)
            finally:
                self._contended.discard(cp_id)
            if alive:
                return self._duplicate(connection, cp_id, peer)
            self._logs_of(cp_id).connections.log(
                logging.WARNING,
                "replaced",
                "%s: connection from %s replaces one that did not answer a ping",
                cp_id,
                peer,
            )
            self._spawn(current.close(CloseCode.GOING_AWAY, "replaced by a new connection"))
        self._owners[cp_id] = connection
        return None

    def _duplicate(self, connection: ServerConnection, cp_id: ChargePointId, peer: str) -> Response:
        return self._refuse(
            connection,
            HTTPStatus.CONFLICT,
            "this charge point is already connected",
            "duplicate",
            "%s from %s: already connected and answering",
            cp_id,
            peer,
        )

    async def _answers_ping(self, connection: ServerConnection) -> bool:
        if connection.state is State.CONNECTING:
            return True  # mid-handshake, and it passed admission first
        if connection.state is not State.OPEN:
            return False
        try:
            async with asyncio.timeout(self._duplicate_ping_timeout):
                pong = await connection.ping()
                await pong
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    def _after_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Release the id if the upgrade fails after admission (e.g. server closing)."""
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            return
        try:
            cp_id = charge_point_id_from_path(request.path, self._path_prefix)
        except PathRejected:
            return
        if self._owners.get(cp_id) is connection:
            del self._owners[cp_id]

    # -- connections -------------------------------------------------------------------

    async def _serve_connection(self, connection: ServerConnection) -> None:
        store = self._store
        request = connection.request
        if store is None or request is None:
            return
        cp_id = charge_point_id_from_path(request.path, self._path_prefix)
        if self._owners.get(cp_id) is not connection:
            # Admission handed the id to this connection; someone took it since.
            await connection.close(CloseCode.POLICY_VIOLATION, "superseded")
            return
        logs = self._logs_of(cp_id)
        session = ChargePointSession(
            cp_id,
            connection,
            store,
            self._clock,
            heartbeat_interval=self._heartbeat_interval,
            limits=self._limits,
            logs=logs,
        )
        self._sessions[cp_id] = session
        host = _host_of(connection.remote_address)
        logs.connections.log(logging.INFO, "connected", "%s connected from %s", cp_id, host)
        try:
            await session.serve()
        except ConnectionClosed as closed:
            logs.connections.log(
                logging.INFO, "disconnected", "%s disconnected (%s)", cp_id, closed
            )
        finally:
            if self._sessions.get(cp_id) is session:
                del self._sessions[cp_id]
            if self._owners.get(cp_id) is connection:
                del self._owners[cp_id]

    def _logs_of(self, cp_id: ChargePointId) -> ChargerLogs:
        logs = self._charger_logs.get(cp_id)
        if logs is None:
            logs = self._charger_logs[cp_id] = ChargerLogs()
        return logs

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


def _host_of(remote_address: Any) -> str:
    if isinstance(remote_address, tuple) and remote_address:
        return str(remote_address[0])
    return "?"


def _bound_port(server: Server) -> int:
    port = server.sockets[0].getsockname()[1]
    return int(port)
