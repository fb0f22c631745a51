"""The embedded CSMS's front door over real sockets: path, subprotocol, identity, lockout, TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from csms_support import CP_ID, CP_KEY, TEST_ITERATIONS, FakeClock, basic_auth
from support.tls import TlsFiles, client_ssl_context, write_tls_files
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from edgepoint.csms.auth import (
    FailureLimiter,
    LockoutPolicy,
    VerifiedKeyCache,
    source_of,
)
from edgepoint.csms.db import DEFAULT_AUTH_ITERATIONS
from edgepoint.csms.ids import ChargePointId
from edgepoint.csms.pending import PendingChargers
from edgepoint.csms.route import PathRejected, charge_point_id_from_path, parse_path_prefix
from edgepoint.csms.server import PING_INTERVAL_S, PING_TIMEOUT_S, SiteCsms
from edgepoint.csms.tls import ListenPolicyError, TlsSettings, TlsSetupError

pytestmark = pytest.mark.timeout(30)

CP2_ID = "CP-2"
CP2_KEY = "fedcba9876543210fedc"
ATTACKER = "127.0.0.1"
NEIGHBOUR = "127.0.0.2"  # Linux routes all of 127/8 to lo: a second source address


@dataclass
class Verifications:
    """Counts calls of the PBKDF2 path (ChargePointRepository.verify_auth_key)."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def guesses(self) -> int:
        return sum(1 for _, password in self.calls if password.startswith("guess-"))


@dataclass
class Csms:
    csms: SiteCsms
    verifications: Verifications
    scheme: str = "ws"

    @property
    def port(self) -> int:
        return self.csms.port

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def running_csms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> AsyncIterator[Csms]:
    clock = FakeClock(datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC))
    kwargs.setdefault("auth_iterations", TEST_ITERATIONS)
    csms = SiteCsms(tmp_path / "csms.db", "127.0.0.1", 0, clock, heartbeat_interval=60, **kwargs)
    await csms.register_charge_point(CP_ID, CP_KEY)
    await csms.register_charge_point(CP2_ID, CP2_KEY)
    task = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.started.wait(), 5)
    store = csms.store
    assert store is not None
    verifications = Verifications()
    real = store.charge_points.verify_auth_key

    async def counting(charge_point_id: str, key: str) -> bool:
        verifications.calls.append((charge_point_id, key))
        return await real(charge_point_id, key)

    monkeypatch.setattr(store.charge_points, "verify_auth_key", counting)
    try:
        yield Csms(csms, verifications, "wss" if "tls" in kwargs else "ws")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(name="site")
async def site_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Csms]:
    async with running_csms(tmp_path, monkeypatch) as site:
        yield site


def open_cp(
    site: Csms,
    cp_id: str = CP_ID,
    key: str | None = CP_KEY,
    *,
    user: str | None = None,
    path: str | None = None,
    subprotocols: list[str] | None = None,
    source: str = ATTACKER,
    ssl_context: ssl.SSLContext | None = None,
) -> connect:
    headers = basic_auth(user or cp_id, key) if key is not None else {}
    return connect(
        site.url(path if path is not None else f"/ocpp/{cp_id}"),
        subprotocols=[Subprotocol(s) for s in (subprotocols or ["ocpp1.6"])],
        additional_headers=headers,
        open_timeout=10,
        close_timeout=1,
        local_addr=(source, 0),
        ssl=ssl_context,
    )


async def refusal(site: Csms, *args: Any, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        async with open_cp(site, *args, **kwargs):
            pass
    return refused.value


async def status_of(site: Csms, *args: Any, **kwargs: Any) -> int:
    try:
        async with open_cp(site, *args, **kwargs):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def heartbeat(ws: ClientConnection, unique_id: str = "hb") -> list[Any]:
    await ws.send(json.dumps([2, unique_id, "Heartbeat", {}]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(reply, list)
    return reply


async def wait_until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- path and subprotocol: refused before anything is read or hashed --------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ocpp/CP-1/extra", 404),  # exactly one segment after the prefix
        ("/ocpp/v16/CP-1", 404),
        ("/other/CP-1", 404),
        ("/ocpp/", 404),
        ("/ocpp", 404),
        ("/ocpp/CP-1/", 404),  # trailing slash
        ("/ocppX/CP-1", 404),
        ("//evil/ocpp/CP-1", 404),  # not a network location
        ("/OCPP/CP-1", 404),  # the prefix is case-sensitive
        ("/ocpp/CP%201", 400),  # a malformed id
        ("/ocpp/CP%2F1", 400),  # an encoded slash is no way around the one-segment rule
    ],
)
async def test_only_prefix_slash_id_is_accepted(site: Csms, path: str, status: int) -> None:
    assert await status_of(site, path=path) == status
    assert site.verifications.calls == []
    assert site.csms.connected_ids() == []


async def test_a_query_string_is_ignored(site: Csms) -> None:
    async with open_cp(site, path="/ocpp/CP-1?vendor=x") as ws:
        assert (await heartbeat(ws))[0] == 3


async def test_configured_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_csms(tmp_path, monkeypatch, path_prefix="/csms/v16") as site:
        assert await status_of(site, path="/ocpp/CP-1") == 404
        assert await status_of(site, path="/csms/CP-1") == 404
        assert await status_of(site, path="/csms/v16/x/CP-1") == 404
        async with open_cp(site, path="/csms/v16/CP-1") as ws:
            assert (await heartbeat(ws))[0] == 3


@pytest.mark.parametrize("prefix", ["ocpp", "/ocpp/", "/", "", "/oc pp", "/ocpp//v16"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="must look like /ocpp"):
        parse_path_prefix(prefix)


def test_charge_point_id_from_path_with_a_prefix() -> None:
    assert charge_point_id_from_path("/a/b/CP-1?x=1", "/a/b") == "CP-1"
    with pytest.raises(PathRejected):
        charge_point_id_from_path("/a/CP-1", "/a/b")


@pytest.mark.parametrize("offered", [None, ["ocpp2.0.1"], ["ocpp1.5", "ocpp2.0"]])
async def test_missing_subprotocol_is_refused_before_hashing(
    site: Csms, offered: list[str] | None
) -> None:
    # Wrong credentials too: the subprotocol check comes first and counts no failure.
    for _ in range(8):
        refused = await refusal(site, key="wrong-password-000", subprotocols=offered or ["x"])
        assert refused.response.status_code == 400
    assert site.verifications.calls == []
    assert not site.csms.limiter.is_locked(source_of((ATTACKER, 0)))


async def test_ocpp16_among_other_subprotocols_is_accepted(site: Csms) -> None:
    async with open_cp(site, subprotocols=["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"


# -- identity and credentials ------------------------------------------------------------


async def test_unknown_id_gets_404_and_is_recorded_as_pending(site: Csms) -> None:
    for _ in range(2):
        refused = await refusal(site, "CP-NEW", "whatever-password-1")
        assert refused.response.status_code == 404
    await refusal(site, "CP-NEW2", None)  # without a password too: it asked to connect
    assert site.verifications.calls == []  # no hashing for an unknown id
    assert site.csms.pending is not None
    pending = {p.charge_point_id: p for p in site.csms.pending.list()}
    assert set(pending) == {"CP-NEW", "CP-NEW2"}
    assert pending[ChargePointId("CP-NEW")].attempts == 2
    assert pending[ChargePointId("CP-NEW")].last_address == ATTACKER
    assert site.csms.connected_ids() == []


async def test_unknown_ids_go_to_the_given_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, datetime]] = []

    async def on_unknown(cp_id: ChargePointId, address: str, at: datetime) -> None:
        seen.append((cp_id, address, at))

    async with running_csms(tmp_path, monkeypatch, on_unknown=on_unknown) as site:
        assert await status_of(site, "CP-X", source=NEIGHBOUR) == 404
        assert site.csms.pending is None
    assert seen == [("CP-X", NEIGHBOUR, datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC))]


async def test_a_failing_pending_recorder_still_refuses_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(cp_id: ChargePointId, address: str, at: datetime) -> None:
        raise RuntimeError("disk full")

    async with running_csms(tmp_path, monkeypatch, on_unknown=broken) as site:
        assert await status_of(site, "CP-X") == 404


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"key": "wrong-password-000"}, "wrong password"),
        ({"key": None}, "no credentials"),
        ({"cp_id": CP2_ID, "user": CP_ID}, "user name is another charger's id"),
        ({"key": ""}, "empty password"),
    ],
)
async def test_bad_credentials_get_401(site: Csms, kwargs: dict[str, Any], reason: str) -> None:
    refused = await refusal(site, **kwargs)
    assert refused.response.status_code == 401, reason
    assert refused.response.headers["WWW-Authenticate"].startswith("Basic ")
    assert site.csms.connected_ids() == []


async def test_a_garbled_authorization_header_gets_401(site: Csms) -> None:
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(InvalidStatus) as refused:
            await stack.enter_async_context(
                connect(
                    site.url("/ocpp/CP-1"),
                    subprotocols=[Subprotocol("ocpp1.6")],
                    additional_headers={"Authorization": "Basic !!!not-base64"},
                )
            )
    assert refused.value.response.status_code == 401
    assert site.verifications.calls == []


async def test_verified_keys_are_cached_until_rekeyed_or_forgotten(site: Csms) -> None:
    for n in range(3):
        async with open_cp(site) as ws:
            assert (await heartbeat(ws, f"h{n}"))[0] == 3
    assert site.verifications.calls == [(CP_ID, CP_KEY)]  # hashed once, then the cache

    # A wrong password is not answered from the cache: the database decides.
    assert await status_of(site, key="wrong-password-000", source=NEIGHBOUR) == 401
    assert len(site.verifications.calls) == 2

    # Re-keyed: the old password stops working at once, the new one is verified.
    new_key = "brand-new-key-0000001"
    await site.csms.register_charge_point(CP_ID, new_key)
    assert await status_of(site, key=CP_KEY, source=NEIGHBOUR) == 401
    assert await status_of(site, key=new_key) == 101
    assert await status_of(site, key=new_key) == 101
    assert [k for _, k in site.verifications.calls[2:]] == [CP_KEY, new_key]

    # forget() (what the operator API calls after a change made elsewhere) re-verifies.
    site.csms.forget(CP_ID)
    assert await status_of(site, key=new_key) == 101
    assert [k for _, k in site.verifications.calls[4:]] == [new_key]


async def test_the_cache_answers_in_microseconds() -> None:
    cache = VerifiedKeyCache()
    cache.remember(CP_ID, CP_KEY)
    started = time.perf_counter()
    for _ in range(1000):
        assert cache.matches(CP_ID, CP_KEY)
    assert (time.perf_counter() - started) / 1000 < 100e-6


# -- brute force -----------------------------------------------------------------------


async def login_time(site: Csms, source: str) -> float:
    site.csms.forget(CP2_ID)  # a cold cache: the login needs a PBKDF2 slot
    started = time.perf_counter()
    async with open_cp(site, CP2_ID, CP2_KEY, source=source):
        pass
    return time.perf_counter() - started


async def test_brute_force_is_locked_out_while_a_neighbour_logs_in_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production hashing cost, so that hashing 200 passwords would take seconds.
    async with running_csms(tmp_path, monkeypatch, auth_iterations=DEFAULT_AUTH_ITERATIONS) as site:
        normal = min([await login_time(site, NEIGHBOUR) for _ in range(3)])
        statuses: list[int] = []
        attempts = iter(range(200))

        async def attacker() -> None:
            for n in attempts:
                statuses.append(await status_of(site, key=f"guess-{n:012d}", source=ATTACKER))

        hammering = [asyncio.create_task(attacker()) for _ in range(100)]
        await wait_until(lambda: 429 in statuses)
        during = [await login_time(site, NEIGHBOUR) for _ in range(3)]
        await asyncio.gather(*hammering)

        assert len(statuses) == 200
        # At most one window's worth of guesses were hashed; the rest got 429.
        assert site.verifications.guesses() <= 5
        assert statuses.count(401) <= 5
        assert statuses.count(429) >= 195
        # The neighbour's login costs about what it costs when nobody attacks (~25 ms
        # here). The median of three: the first shares the loop with the attack's burst
        # of handshakes, and a loaded test machine adds its own hiccups. Without the
        # lockout every one took 2.4 s: 200 guesses queued for the 2 PBKDF2 slots.
        assert sorted(during)[1] < normal + 1.0, (normal, during)
        # Locked means locked, for every id, with a Retry-After; no hashing.
        locked = await refusal(site, CP2_ID, CP2_KEY, source=ATTACKER)
        assert locked.response.status_code == 429
        assert 1 <= int(locked.response.headers["Retry-After"]) <= 60
        assert site.verifications.guesses() <= 5


async def test_failures_are_logged_throttled_and_without_secrets(
    site: Csms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for n in range(30):
        await status_of(site, key=f"secret-guess-{n:06d}", source=ATTACKER)
    for n in range(10):
        await status_of(site, f"NOPE-{n}", source=NEIGHBOUR)
    ours = [r for r in caplog.records if r.name.startswith("edgepoint.")]
    refusals = [r for r in ours if "refused" in r.getMessage()]
    # One line per kind (credentials, locked, unknown), not one per attempt.
    assert 1 <= len(refusals) <= 4, [r.getMessage() for r in refusals]
    text = "\n".join(r.getMessage() for r in ours)
    assert "secret-guess" not in text
    assert base64.b64encode(f"{CP_ID}:secret-guess-000000".encode()).decode() not in text
    # websockets' own per-connection INFO lines are silenced, its DEBUG header log redacted.
    assert not [r for r in ours if r.name == "edgepoint.csms.websockets" and r.levelno == 20]


async def test_too_many_waiting_verifications_get_503_and_count_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_csms(tmp_path, monkeypatch, max_verifications=0) as site:
        for _ in range(8):
            refused = await refusal(site)
            assert refused.response.status_code == 503
            assert refused.response.headers["Retry-After"] == "5"
        assert site.verifications.calls == []
        assert not site.csms.limiter.is_locked(source_of((ATTACKER, 0)))


# -- the limiter and the cache on their own -----------------------------------------------


class Tick:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_grows_and_expires() -> None:
    tick = Tick()
    limiter = FailureLimiter(LockoutPolicy(max_failures=3, window_s=60, lockout_s=10), tick)
    for _ in range(2):
        limiter.fail("a")
    assert limiter.retry_after("a") == 0
    limiter.fail("a")
    assert limiter.retry_after("a") == 10 and limiter.retry_after("b") == 0
    tick.now += 10
    assert limiter.retry_after("a") == 0
    for _ in range(3):
        limiter.fail("a")
    assert limiter.retry_after("a") == 20  # the second lockout doubles
    tick.now += 20 + 900  # quiet for max_lockout_s: strikes are forgiven
    for _ in range(3):
        limiter.fail("a")
    assert limiter.retry_after("a") == 10
    assert limiter.lockouts == 3


def test_failures_outside_the_window_do_not_add_up() -> None:
    tick = Tick()
    limiter = FailureLimiter(LockoutPolicy(max_failures=3, window_s=60), tick)
    for _ in range(10):
        limiter.fail("a")
        tick.now += 31
    assert not limiter.is_locked("a")


def test_running_verifications_count_against_the_budget() -> None:
    limiter = FailureLimiter(LockoutPolicy(max_failures=3), Tick())
    for _ in range(3):
        assert limiter.retry_after("a") == 0
        limiter.begin("a")
    assert limiter.retry_after("a") > 0  # a burst cannot all pass before one fails
    limiter.end("a", failed=False)
    assert limiter.retry_after("a") == 0


def test_the_limiter_memory_is_bounded() -> None:
    tick = Tick()
    limiter = FailureLimiter(LockoutPolicy(max_failures=2, max_sources=100), tick)
    for n in range(10_000):
        limiter.fail(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) <= 100
    limiter.fail("attacker")
    limiter.fail("attacker")
    assert limiter.is_locked("attacker")


def test_ipv6_sources_are_counted_per_64() -> None:
    assert source_of(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:bbbb::7", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert source_of(("192.0.2.7", 1)) == "192.0.2.7"
    assert source_of(None) == "unknown"


def test_the_cache_expires_is_bounded_and_ignores_stale_verifications() -> None:
    tick = Tick()
    cache = VerifiedKeyCache(max_entries=2, ttl_s=60, clock=tick)
    cache.remember("a", CP_KEY)
    assert cache.matches("a", CP_KEY) and not cache.matches("a", CP_KEY + "x")
    assert not cache.matches("b", CP_KEY)  # digests are per charge point
    tick.now += 60
    assert not cache.matches("a", CP_KEY)
    for name in "abc":
        cache.remember(name, CP_KEY)
    assert len(cache) == 2 and not cache.matches("a", CP_KEY)
    epoch = cache.epoch
    cache.forget("b")  # a re-key lands while a verification of the old key runs
    cache.remember("b", CP_KEY, epoch=epoch)
    assert not cache.matches("b", CP_KEY)


async def test_pending_chargers_are_bounded() -> None:
    pending = PendingChargers(max_entries=3)
    at = datetime(2025, 6, 1, tzinfo=UTC)
    for n in range(10):
        await pending.record(ChargePointId(f"X{n}"), "10.0.0.1", at)
    assert [p.charge_point_id for p in pending.list()] == ["X9", "X8", "X7"]
    pending.discard("X8")
    assert [p.charge_point_id for p in pending.list()] == ["X9", "X7"]


# -- one connection per id ------------------------------------------------------------------


async def silent_peer(site: Csms, cp_id: str = CP_ID, key: str = CP_KEY) -> asyncio.StreamReader:
    """A charger that completes the upgrade and then never reads again (no pongs)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ocpp/{cp_id} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: ocpp1.6\r\n"
            f"Authorization: {basic_auth(cp_id, key)['Authorization']}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader


async def test_a_second_connection_is_refused_while_the_first_answers(site: Csms) -> None:
    async with open_cp(site) as first:
        assert (await heartbeat(first, "a"))[0] == 3
        started = time.monotonic()
        refused = await refusal(site, source=NEIGHBOUR)
        assert refused.response.status_code == 409
        assert time.monotonic() - started < 1.5  # a live first one answers the ping at once
        assert (await heartbeat(first, "b"))[:2] == [3, "b"]  # untouched
        assert site.csms.connected_ids() == [CP_ID]
        session = site.csms.session(CP_ID)
        assert session is not None and session.connection.state.name == "OPEN"


async def test_a_second_connection_replaces_a_first_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_csms(tmp_path, monkeypatch, duplicate_ping_timeout=0.3) as site:
        dead = await silent_peer(site)
        await wait_until(lambda: site.csms.connected_ids() == [CP_ID])
        first_session = site.csms.session(CP_ID)
        async with open_cp(site, source=NEIGHBOUR) as second:
            assert (await heartbeat(second, "b"))[:2] == [3, "b"]
            session = site.csms.session(CP_ID)
            assert session is not None and session is not first_session
            assert site.csms.connected_ids() == [CP_ID]
            # The dead one's socket is closed by the server.
            async with asyncio.timeout(5):
                while await dead.read(65536):
                    pass


async def test_concurrent_newcomers_never_both_win(site: Csms) -> None:
    async with open_cp(site) as first:
        statuses = await asyncio.gather(*(status_of(site, source=NEIGHBOUR) for _ in range(5)))
        assert statuses == [409] * 5
        assert (await heartbeat(first))[0] == 3


async def test_dead_peers_are_dropped_by_keepalive_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PING_INTERVAL_S + PING_TIMEOUT_S <= 60  # the promise for the defaults
    async with running_csms(tmp_path, monkeypatch, ping_interval=0.2, ping_timeout=0.2) as site:
        await silent_peer(site)
        await wait_until(lambda: site.csms.connected_ids() == [CP_ID])
        await wait_until(lambda: site.csms.connected_ids() == [], within=3)


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_profile_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles
) -> None:
    settings = TlsSettings(tls_files.server_cert, tls_files.server_key)
    async with running_csms(tmp_path, monkeypatch, tls=settings) as site:
        trusting = client_ssl_context(trust=tls_files)
        async with open_cp(site, ssl_context=trusting) as ws:
            assert (await heartbeat(ws))[0] == 3
        assert await status_of(site, key="wrong-password-000", ssl_context=trusting) == 401
        # Plain ws:// to the TLS port gets no WebSocket.
        with pytest.raises((InvalidMessage, ConnectionError)):
            async with connect(f"ws://127.0.0.1:{site.port}/ocpp/CP-1", open_timeout=2):
                pass


async def test_tls_key_file_must_be_private(tmp_path: Path, tls_files: TlsFiles) -> None:
    tls_files.server_key.chmod(0o644)
    with pytest.raises(TlsSetupError, match=str(tls_files.server_key)):
        SiteCsms(
            tmp_path / "csms.db",
            "127.0.0.1",
            0,
            FakeClock(datetime(2025, 6, 1, tzinfo=UTC)),
            tls=TlsSettings(tls_files.server_cert, tls_files.server_key),
        )


@pytest.fixture(name="profile3")
async def profile3_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles
) -> AsyncIterator[Csms]:
    settings = TlsSettings(tls_files.server_cert, tls_files.server_key, tls_files.ca_cert)
    async with running_csms(tmp_path, monkeypatch, tls=settings) as site:
        yield site


async def test_profile_3_right_cn_is_accepted_without_a_password(
    profile3: Csms, tls_files: TlsFiles
) -> None:
    with_cert = client_ssl_context(trust=tls_files, identity=tls_files)
    async with open_cp(profile3, key=None, ssl_context=with_cert) as ws:
        assert (await heartbeat(ws))[0] == 3
    assert profile3.verifications.calls == []
    # With its password as well (a charger set up for profile 2 too): still fine.
    assert await status_of(profile3, ssl_context=with_cert) == 101
    # But a password that is sent must be right.
    assert await status_of(profile3, key="wrong-password-000", ssl_context=with_cert) == 401


async def test_profile_3_wrong_cn_or_no_certificate_is_refused(
    profile3: Csms, tls_files: TlsFiles, tmp_path: Path
) -> None:
    with_cert = client_ssl_context(trust=tls_files, identity=tls_files)
    # CP-1's certificate for CP-2's id, even with CP-2's password.
    assert await status_of(profile3, CP2_ID, CP2_KEY, ssl_context=with_cert) == 403
    # No certificate, right password.
    assert await status_of(profile3, ssl_context=client_ssl_context(trust=tls_files)) == 403
    # A certificate from another CA never completes the TLS handshake.
    foreign = write_tls_files(tmp_path / "foreign")
    with pytest.raises((InvalidMessage, ssl.SSLError, ConnectionError)):
        async with open_cp(
            profile3, ssl_context=client_ssl_context(trust=tls_files, identity=foreign)
        ):
            pass
    assert profile3.csms.connected_ids() == []


# -- where it may listen -----------------------------------------------------------------------


def make_csms(tmp_path: Path, host: str, **kwargs: Any) -> SiteCsms:
    clock = FakeClock(datetime(2025, 6, 1, tzinfo=UTC))
    return SiteCsms(tmp_path / "csms.db", host, 0, clock, **kwargs)


@pytest.mark.parametrize(
    ("host", "kwargs", "key"),
    [
        ("0.0.0.0", {}, "csms.host"),
        ("::", {}, "csms.host"),
        ("192.168.1.10", {}, "csms.host"),
        ("kiosk.local", {}, "csms.host"),
        (
            "0.0.0.0",
            {"require_auth": False, "allow_plaintext_on_network": True},
            "csms.require_auth",
        ),
    ],
)
def test_listening_beyond_loopback_is_refused(
    tmp_path: Path, host: str, kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(ListenPolicyError) as refused:
        make_csms(tmp_path, host, **kwargs)
    assert refused.value.key == key


def test_listening_beyond_loopback_is_allowed_with_tls_or_an_explicit_yes(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    make_csms(tmp_path, "0.0.0.0", allow_plaintext_on_network=True)
    make_csms(tmp_path, "0.0.0.0", tls=TlsSettings(tls_files.server_cert, tls_files.server_key))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):
        make_csms(tmp_path, host, require_auth=False)


async def test_without_auth_on_loopback_registered_ids_connect_without_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_csms(tmp_path, monkeypatch, require_auth=False) as site:
        async with open_cp(site, key=None) as ws:
            assert (await heartbeat(ws))[0] == 3
        assert await status_of(site, "CP-UNKNOWN", key=None) == 404
        assert site.verifications.calls == []
