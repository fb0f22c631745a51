"""CsmsLink through a fault proxy to a strict scripted CSMS: every failure ends ONLINE again."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.fault_proxy import FaultProxy
from support.scripted_csms import Answer, Received, Responder, ScriptedCsms, now_iso
from support.tls import TlsFiles, server_ssl_context, write_tls_files

from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.chargepoint.settings import Settings
from edgepoint.clock import EARLIEST_PLAUSIBLE, SystemClock
from edgepoint.config import ChargePointConfig, StationConfig
from edgepoint.ocppj.endpoint import Handler, Reply
from edgepoint.ocppj.errors import ConnectionLost

# Stall and half-open wait for the link's ping timeout (at least 5 s by the link's rule).
pytestmark = pytest.mark.timeout(30)

STATION = StationConfig(id="CP-1", vendor="edgepoint", model="kiosk")
KEY = "pr0file-1-Key-9f2c7d1e5a"  # security profile 1 AuthorizationKey
TOKEN = base64.b64encode(f"{STATION.id}:{KEY}".encode()).decode()
UNRESOLVABLE = "csms.edgepoint.invalid"  # RFC 2606: never resolves anywhere


# -- tools ------------------------------------------------------------------------------


@dataclass
class RecordingBackoff:
    """A back-off that notes each attempt number the link asks about and waits briefly."""

    delay_s: float = 0.05
    attempts: list[int] = field(default_factory=list)

    def __call__(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return self.delay_s


class Resolver:
    """The loop's name lookup, with one made-up name that resolves only while `up`.

    While down, the lookup goes to the system resolver, so the link meets a real DNS
    failure for a `.invalid` name; while up, that name means 127.0.0.1.
    """

    def __init__(self, real: Callable[..., Awaitable[Any]]) -> None:
        self.up = True
        self._real = real

    async def getaddrinfo(self, host: Any, port: Any, **kwargs: Any) -> Any:
        if host == UNRESOLVABLE and self.up:
            host = "127.0.0.1"
        return await self._real(host, port, **kwargs)


def make_link(
    csms_url: str,
    *,
    auth_key: str | None = None,
    ocpp: dict[str, str] | None = None,
    backoff: Callable[[int], float] | None = None,
    default_backoff: bool = False,
    adopt_time: Callable[[Any], bool] | None = None,
    clock: SystemClock | None = None,
    **chargepoint: Any,
) -> CsmsLink:
    options: dict[str, Any] = {"response_timeout": 2.0, "reconnect_max_s": 0.5} | chargepoint
    config = ChargePointConfig(csms_url=csms_url, auth_key_file=Path("unused.key"), **options)
    settings = Settings(file_values={"WebSocketPingInterval": "0"} | (ocpp or {}))
    return CsmsLink(
        STATION,
        config,
        auth_key,
        settings,
        clock or SystemClock(),
        backoff=None if default_backoff else backoff or RecordingBackoff(),
        adopt_time=adopt_time,
    )


@contextlib.asynccontextmanager
async def running(link: CsmsLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run the link; on exit, check run() was still going, then close it."""
    task = asyncio.create_task(link.run(), name="link under test")
    try:
        yield task
    finally:
        ended_by_itself = task.done()
        await link.close()
        async with asyncio.timeout(10):
            await task  # re-raises whatever ended run()
    assert not ended_by_itself, "run() returned before close()"
    assert link.state is LinkState.CLOSED


async def until(what: str, check: Callable[[], object], within_s: float = 5.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        if check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def header(received: dict[str, str], name: str) -> str | None:
    return next((v for k, v in received.items() if k.lower() == name.lower()), None)


def get_configuration(calls: list[tuple[str, dict[str, Any]]]) -> Handler:
    """A handler that answers GetConfiguration and notes every CALL it is given."""

    async def handle(action: str, payload: dict[str, Any]) -> Reply:
        calls.append((action, payload))
        assert action == "GetConfiguration"
        return Reply(
            {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "7"}]}
        )

    return handle


def boot_answer(status: str, interval: int, times: list[float] | None = None) -> Responder:
    """Answer every BootNotification with `status`, noting when each arrived."""

    def answer(call: Received) -> Answer:
        if times is not None:
            times.append(asyncio.get_running_loop().time())
        return {"status": status, "currentTime": now_iso(), "interval": interval}

    return answer


@dataclass
class Rig:
    """A CSMS behind a fault proxy, plus what some faults switch to."""

    csms: ScriptedCsms
    proxy: FaultProxy
    deaf: ScriptedCsms  # a CSMS that does not agree to ocpp1.6
    names: Resolver


@pytest.fixture
async def csms() -> AsyncIterator[ScriptedCsms]:
    async with ScriptedCsms() as server:
        yield server


@pytest.fixture
async def proxy(csms: ScriptedCsms) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", csms.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def rig(
    csms: ScriptedCsms, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    names = Resolver(loop.getaddrinfo)
    monkeypatch.setattr(loop, "getaddrinfo", names.getaddrinfo)
    async with ScriptedCsms(require_subprotocol=False) as deaf:
        yield Rig(csms, proxy, deaf, names)


# -- every failure mode: leave ONLINE, say why, back off, come back ------------------------


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Rig], Awaitable[None]]
    lift: Callable[[Rig], Awaitable[None]]
    error: str  # what last_error must say while the fault lasts
    # The fault also hits new connections: the link keeps failing until it is lifted.
    persists: bool
    host: str = "127.0.0.1"
    ping: str = "0"  # WebSocketPingInterval


async def _nothing(rig: Rig) -> None:
    pass


async def _refuse(rig: Rig) -> None:
    await rig.proxy.refuse_new(True)
    await rig.proxy.cut()


async def _unrefuse(rig: Rig) -> None:
    await rig.proxy.refuse_new(False)


def _http(status: int | None) -> Callable[[Rig], Awaitable[None]]:
    async def apply(rig: Rig) -> None:
        await rig.proxy.http_error(status)
        if status is not None:
            await rig.proxy.cut()

    return apply


async def _dns_down(rig: Rig) -> None:
    rig.names.up = False
    await rig.proxy.cut()


async def _dns_up(rig: Rig) -> None:
    rig.names.up = True


async def _to_deaf_csms(rig: Rig) -> None:
    rig.proxy.target_port = rig.deaf.port
    await rig.proxy.cut()


async def _to_good_csms(rig: Rig) -> None:
    rig.proxy.target_port = rig.csms.port


async def _reset(rig: Rig) -> None:
    await rig.proxy.reset()


async def _cut(rig: Rig) -> None:
    await rig.proxy.cut()


async def _stall(rig: Rig) -> None:
    await rig.proxy.stall()


async def _resume(rig: Rig) -> None:
    await rig.proxy.resume()


async def _half_open(rig: Rig) -> None:
    await rig.proxy.half_open()


FAULTS = {
    "refused": Fault(_refuse, _unrefuse, "ConnectionRefusedError", persists=True),
    "reset": Fault(_reset, _nothing, "ConnectionClosedError", persists=False),
    "cut": Fault(_cut, _nothing, "ConnectionClosedError", persists=False),
    "http-503": Fault(_http(503), _http(None), "HTTP 503 on the WebSocket upgrade", persists=True),
    "http-401": Fault(_http(401), _http(None), "HTTP 401 on the WebSocket upgrade", persists=True),
    "dns": Fault(_dns_down, _dns_up, "gaierror", persists=True, host=UNRESOLVABLE),
    "stall": Fault(_stall, _resume, "keepalive ping timeout", persists=False, ping="1"),
    "half-open": Fault(_half_open, _nothing, "keepalive ping timeout", persists=False, ping="1"),
    "no-ocpp1.6": Fault(_to_deaf_csms, _to_good_csms, "subprotocol ocpp1.6", persists=True),
}


@pytest.mark.parametrize("name", FAULTS)
async def test_link_leaves_online_reports_and_comes_back(rig: Rig, name: str) -> None:
    fault = FAULTS[name]
    backoff = RecordingBackoff()
    url = f"ws://{fault.host}:{rig.proxy.port}/ocpp"
    link = make_link(url, backoff=backoff, ocpp={"WebSocketPingInterval": fault.ping})
    async with running(link):
        await until("online", lambda: link.online)
        assert link.snapshot().connects == 1
        assert link.snapshot().last_error == ""

        await fault.inject(rig)
        await until("the link to leave ONLINE", lambda: not link.online, within_s=12)
        await until(
            f"last_error to say {fault.error!r}",
            lambda: fault.error in link.snapshot().last_error,
            within_s=12,
        )
        if fault.persists:
            # Still refused after several tries, each waiting longer: the connection that
            # broke had gone online (attempt 0), every failure since counts up.
            await until("four reconnect attempts", lambda: len(backoff.attempts) >= 4)
            assert backoff.attempts[:4] == [0, 1, 2, 3]
            assert not link.online
            assert link.snapshot().connects == 1
        else:
            assert backoff.attempts[0] == 0

        await fault.lift(rig)
        await until("online again", lambda: link.online, within_s=12)
        snapshot = link.snapshot()
        assert snapshot.state is LinkState.ONLINE
        assert snapshot.connects == 2
        assert fault.error in snapshot.last_error  # the last failure stays visible
    # Registered once: the reconnect did not boot again.
    boots = rig.csms.calls("BootNotification")
    assert [b.connection for b in boots] == [1]
    assert rig.csms.violations == []


async def test_attempt_count_resets_only_after_an_accepted_boot(
    csms: ScriptedCsms, proxy: FaultProxy
) -> None:
    backoff = RecordingBackoff()
    # The CSMS takes the WebSocket and answers the boot, but not with Accepted.
    csms.responders["BootNotification"] = boot_answer("Pending", 60)
    link = make_link(proxy.url("/ocpp"), backoff=backoff)
    async with running(link):
        for n in (1, 2, 3):
            await csms.wait_calls("BootNotification", n)
            await until(f"Pending on connection {n}", lambda: link.state is LinkState.PENDING)
            await proxy.cut()
            await until(f"back-off attempt {n}", lambda: len(backoff.attempts) >= n)  # noqa: B023
        # Three WebSocket connections, none accepted: the back-off kept growing.
        assert link.snapshot().connects >= 3
        assert backoff.attempts[:3] == [1, 2, 3]

        del csms.responders["BootNotification"]
        await until("online", lambda: link.online)
        accepted_at = len(backoff.attempts)

        # After the acceptance the count starts again, and grows while the CSMS is away.
        await proxy.refuse_new(True)
        await proxy.cut()
        await until("four more attempts", lambda: len(backoff.attempts) >= accepted_at + 4)
        assert backoff.attempts[accepted_at : accepted_at + 4] == [0, 1, 2, 3]

        # A reconnect that goes online (no boot needed any more) counts as accepted too.
        await proxy.refuse_new(False)
        await until("online again", lambda: link.online)
        again_at = len(backoff.attempts)
        await proxy.cut()
        await until("a new attempt", lambda: len(backoff.attempts) > again_at)
        assert backoff.attempts[again_at] == 0
        await until("online once more", lambda: link.online)
    assert csms.violations == []


async def test_default_backoff_is_capped_by_reconnect_max_s(
    csms: ScriptedCsms, proxy: FaultProxy
) -> None:
    """Without an injected back-off, retries wait the half-jittered rule up to reconnect_max_s."""
    cap_s = 0.2
    await proxy.http_error(503)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    def note(stats: Any) -> bool:
        # Called as each connection is accepted: exact arrival times.
        while len(arrivals) < stats.accepted:
            arrivals.append(loop.time())
        return bool(stats.accepted >= 6)

    link = make_link(proxy.url("/ocpp"), reconnect_max_s=cap_s, default_backoff=True)
    async with running(link):
        async with asyncio.timeout(10):
            await proxy.wait_for(note)
        assert link.snapshot().last_error == "HTTP 503 on the WebSocket upgrade"
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Never sooner than half the cap (no hammering), nowhere near the 60 s default cap.
    assert min(gaps) >= cap_s / 2 - 0.01, gaps
    assert max(gaps) < cap_s + 1.0, gaps


# -- BootNotification -------------------------------------------------------------------


async def test_boot_is_sent_once_per_process_not_on_reconnect(
    csms: ScriptedCsms, proxy: FaultProxy
) -> None:
    firsts: list[bool] = []
    link = make_link(proxy.url("/ocpp"))
    link.on_online = firsts.append
    async with running(link):
        for n in (1, 2, 3):
            await until(
                f"online on connection {n}",
                lambda: link.online and link.snapshot().connects == n,  # noqa: B023
            )
            if n < 3:
                await proxy.cut()
        assert link.registered
        assert firsts == [True, False, False]
    boots = csms.calls("BootNotification")
    assert [b.connection for b in boots] == [1]
    assert boots[0].payload["chargePointVendor"] == "edgepoint"
    assert boots[0].payload["chargePointModel"] == "kiosk"
    assert csms.violations == []


async def test_pending_stays_connected_answers_the_csms_and_sends_nothing_else(
    csms: ScriptedCsms,
) -> None:
    times: list[float] = []
    csms.responders["BootNotification"] = boot_answer("Pending", 1, times)
    csms.heartbeat_interval = 1  # once accepted
    handled: list[tuple[str, dict[str, Any]]] = []
    # Our own heartbeat is due every second: none may go out while Pending.
    link = make_link(csms.url, ocpp={"HeartbeatInterval": "1"})
    link.handler = get_configuration(handled)
    async with running(link):
        await until("Pending", lambda: link.state is LinkState.PENDING)
        reply = await csms.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert reply == {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "7"}]
        }
        assert handled == [("GetConfiguration", {"key": ["HeartbeatInterval"]})]
        # What the outbox and the authorizer would send is held back.
        with pytest.raises(ConnectionLost):
            await link.call("Heartbeat", {})
        assert await link.authorize("04A1B2C3", 1.0) is None

        await csms.wait_calls("BootNotification", 2)
        assert times[1] - times[0] >= 0.95  # the interval the CSMS asked for
        del csms.responders["BootNotification"]
        await until("online", lambda: link.online)
        await csms.wait_calls("Heartbeat", 1)
        assert link.snapshot().connects == 1
    actions = [r.action for r in csms.received]
    boots = actions.count("BootNotification")
    assert boots >= 3
    assert actions[:boots] == ["BootNotification"] * boots  # nothing else before acceptance
    assert {r.connection for r in csms.received} == {1}  # one connection throughout
    assert csms.violations == []


async def test_rejected_refuses_csms_requests_and_boots_again_after_the_interval(
    csms: ScriptedCsms,
) -> None:
    times: list[float] = []
    csms.responders["BootNotification"] = boot_answer("Rejected", 1, times)
    csms.heartbeat_interval = 1
    handled: list[tuple[str, dict[str, Any]]] = []
    link = make_link(csms.url, ocpp={"HeartbeatInterval": "1"})
    link.handler = get_configuration(handled)
    async with running(link):
        await until("Rejected", lambda: link.state is LinkState.REJECTED)
        assert await csms.call("GetConfiguration", {}) == ("error", "GenericError")
        assert handled == []
        with pytest.raises(ConnectionLost):
            await link.call("Heartbeat", {})

        await csms.wait_calls("BootNotification", 2)
        assert times[1] - times[0] >= 0.95
        del csms.responders["BootNotification"]
        await until("online", lambda: link.online)
        assert "configurationKey" in await csms.call("GetConfiguration", {})
        assert len(handled) == 1
        await csms.wait_calls("Heartbeat", 1)
    actions = [r.action for r in csms.received]
    boots = actions.count("BootNotification")
    assert actions[:boots] == ["BootNotification"] * boots
    assert {r.connection for r in csms.received} == {1}
    assert csms.violations == []


@pytest.mark.parametrize("interval", [-1, 0])
async def test_accepted_with_a_nonsense_interval_keeps_our_own_heartbeat(
    csms: ScriptedCsms, interval: int
) -> None:
    csms.heartbeat_interval = interval
    link = make_link(csms.url, ocpp={"HeartbeatInterval": "1"})
    async with running(link):
        await until("online", lambda: link.online)
        assert link.snapshot().heartbeat_interval == 1
        await asyncio.sleep(1.5)  # counting what happens within a window is the point
        beats = len(csms.calls("Heartbeat"))
    assert 1 <= beats <= 2
    assert csms.violations == []


@pytest.mark.parametrize(("status", "interval"), [("Pending", 0), ("Rejected", -1)])
async def test_unaccepted_boot_with_a_nonsense_interval_does_not_storm(
    csms: ScriptedCsms, status: str, interval: int
) -> None:
    csms.responders["BootNotification"] = boot_answer(status, interval)
    link = make_link(csms.url, ocpp={"HeartbeatInterval": "1"})
    state = LinkState(status.lower())
    async with running(link):
        await until(status, lambda: link.state is state)
        await asyncio.sleep(1.5)  # counting what happens within a window is the point
        assert link.state is state
    assert len(csms.calls("BootNotification")) == 1
    assert csms.calls("Heartbeat") == []


@pytest.mark.parametrize("adopted", [False, True])
async def test_csms_time_goes_to_adopt_time_parsed(
    csms: ScriptedCsms, caplog: pytest.LogCaptureFixture, adopted: bool
) -> None:
    caplog.set_level(logging.INFO, logger="edgepoint.chargepoint.link")
    seen: list[datetime] = []

    def adopt(moment: datetime) -> bool:
        seen.append(moment)
        return adopted

    csms.responders["BootNotification"] = lambda call: {
        "status": "Accepted",
        "currentTime": "2026-01-02T03:04:05.678Z",
        "interval": 1,
    }
    csms.responders["Heartbeat"] = lambda call: {"currentTime": "2026-01-02T04:04:06+01:00"}
    link = make_link(csms.url, adopt_time=adopt)
    async with running(link):
        await until("the boot's and a heartbeat's time", lambda: len(seen) >= 2)
    assert seen[:2] == [
        datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    ]
    assert all(moment.tzinfo is not None for moment in seen)
    # Whether to adopt is the clock's call; the link only says so when it happened.
    assert ("system clock not set" in caplog.text) is adopted


async def test_a_clock_the_system_reports_synchronised_keeps_its_own_time(
    csms: ScriptedCsms,
) -> None:
    if datetime.now(UTC) < EARLIEST_PLAUSIBLE:
        pytest.skip("this host's own clock is not plausible")
    # NTP's word (adjtimex), not plausibility, is what makes the system clock trusted.
    clock = SystemClock(system_synced=lambda: True)
    far = datetime.now(UTC) + timedelta(days=400)
    csms.responders["BootNotification"] = lambda call: {
        "status": "Accepted",
        "currentTime": far.isoformat(timespec="milliseconds"),
        "interval": 300,
    }
    link = make_link(csms.url, clock=clock, adopt_time=clock.adopt)  # as app.py wires it
    async with running(link):
        await until("online", lambda: link.online)
    assert abs(clock.utc_now() - datetime.now(UTC)) < timedelta(seconds=5)


# -- security profiles ------------------------------------------------------------------


async def test_profile1_sends_basic_auth_and_never_logs_the_key(
    csms: ScriptedCsms, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # As the daemon configures it (cli.py): websockets' DEBUG lines echo request headers.
    caplog.set_level(logging.WARNING, logger="websockets")
    link = make_link(proxy.url("/ocpp"), auth_key=KEY)
    async with running(link):
        await until("online", lambda: link.online)
        await proxy.http_error(401)
        await proxy.cut()
        await until("HTTP 401", lambda: "HTTP 401" in link.snapshot().last_error)
        await proxy.http_error(None)
        await until("online again", lambda: link.online and link.snapshot().connects == 2)
        snapshot = repr(link.snapshot())
    assert [header(h, "Authorization") for h in csms.headers] == [f"Basic {TOKEN}"] * 2
    assert csms.paths == [f"/ocpp/{STATION.id}"] * 2
    assert "CSMS link down" in caplog.text  # the failure path did log
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged
    assert TOKEN not in logged
    assert KEY not in snapshot


async def test_profile2_wss_with_the_csms_ca_connects(tls_files: TlsFiles) -> None:
    async with ScriptedCsms(ssl=server_ssl_context(tls_files)) as csms:
        assert csms.url.startswith("wss://")
        link = make_link(csms.url, auth_key=KEY, ca_file=tls_files.ca_cert)
        async with running(link):
            await until("online over TLS", lambda: link.online)
        assert [header(h, "Authorization") for h in csms.headers] == [f"Basic {TOKEN}"]
        assert csms.violations == []


@pytest.mark.parametrize("trust", ["system CAs only", "a foreign CA"])
async def test_profile2_without_the_ca_fails_with_a_tls_error_and_keeps_retrying(
    tls_files: TlsFiles, tmp_path: Path, trust: str
) -> None:
    ca_file = None if trust == "system CAs only" else write_tls_files(tmp_path / "foreign").ca_cert
    backoff = RecordingBackoff()
    async with ScriptedCsms(ssl=server_ssl_context(tls_files)) as csms:
        link = make_link(csms.url, auth_key=KEY, ca_file=ca_file, backoff=backoff)
        async with running(link):
            await until("three failed attempts", lambda: len(backoff.attempts) >= 3)
            snapshot = link.snapshot()
        assert backoff.attempts[:3] == [1, 2, 3]
        assert snapshot.connects == 0
        assert snapshot.last_error.startswith("TLS: ")
        assert "CERTIFICATE_VERIFY_FAILED" in snapshot.last_error
        assert csms.headers == []  # the key never went to a server we could not verify


async def test_profile3_presents_its_client_certificate(tls_files: TlsFiles) -> None:
    server = server_ssl_context(tls_files, require_client_cert=True)
    async with ScriptedCsms(ssl=server) as csms:
        link = make_link(
            csms.url,
            ca_file=tls_files.ca_cert,
            client_cert_file=tls_files.client_cert,
            client_key_file=tls_files.client_key,
        )
        async with running(link):
            await until("online with a client certificate", lambda: link.online)
        assert csms.calls("BootNotification")
        assert csms.violations == []


async def test_profile3_without_a_client_certificate_is_refused(tls_files: TlsFiles) -> None:
    backoff = RecordingBackoff()
    server = server_ssl_context(tls_files, require_client_cert=True)
    async with ScriptedCsms(ssl=server) as csms:
        link = make_link(csms.url, ca_file=tls_files.ca_cert, backoff=backoff)
        async with running(link):
            await until("three failed attempts", lambda: len(backoff.attempts) >= 3)
            snapshot = link.snapshot()
        assert backoff.attempts[:3] == [1, 2, 3]
        assert snapshot.connects == 0
        assert not snapshot.state.startswith("online")
        # TLS 1.3 refuses the missing certificate only after the client's handshake is done;
        # the alert is lost in asyncio, so the link sees the server hang up before HTTP.
        assert snapshot.last_error == "InvalidMessage: did not receive a valid HTTP response"
        assert csms.headers == []  # never got as far as the WebSocket upgrade


# -- unexpected exceptions ----------------------------------------------------------------


async def test_link_survives_exceptions_in_callbacks_and_handlers(csms: ScriptedCsms) -> None:
    firsts: list[bool] = []

    def on_online(first: bool) -> None:
        firsts.append(first)
        if len(firsts) <= 2:
            raise RuntimeError("on_online bug")

    async def broken(action: str, payload: dict[str, Any]) -> Reply:
        raise RuntimeError("handler bug")

    backoff = RecordingBackoff()
    link = make_link(csms.url, backoff=backoff)
    link.on_online = on_online
    async with running(link) as task:
        # A raising callback costs the connection it ran on, and only that.
        await until("online on connection 3", lambda: link.online and link.snapshot().connects == 3)
        assert firsts == [True, False, False]
        assert "RuntimeError: on_online bug" in link.snapshot().last_error
        assert backoff.attempts == [0, 0]  # each of those connections had gone online

        # A raising handler costs one CALL (InternalError), not even the connection.
        link.handler = broken
        assert await csms.call("GetConfiguration", {}) == ("error", "InternalError")
        link.handler = get_configuration([])
        assert "configurationKey" in await csms.call("GetConfiguration", {})
        assert link.online and link.snapshot().connects == 3
        assert not task.done()
    assert [b.connection for b in csms.calls("BootNotification")] == [1]


async def test_link_survives_an_exception_before_the_boot_is_accepted(csms: ScriptedCsms) -> None:
    failed: list[datetime] = []

    def adopt(moment: datetime) -> bool:
        if not failed:
            failed.append(moment)
            raise ValueError("clock bug")
        return False

    backoff = RecordingBackoff()
    link = make_link(csms.url, backoff=backoff, adopt_time=adopt)
    async with running(link):
        await until("online", lambda: link.online)
        assert link.snapshot().connects == 2
        assert "ValueError: clock bug" in link.snapshot().last_error
    assert backoff.attempts == [1]  # that connection never got accepted
    assert [b.connection for b in csms.calls("BootNotification")] == [1, 2]
