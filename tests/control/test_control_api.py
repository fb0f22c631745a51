"""Control API v1 over real Unix sockets: envelopes, error codes, bounds, peers and permissions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from control_support import Conn, FakeStation, serving, station_api, wait_until

from edgepoint.config import load_config
from edgepoint.control.api import Access, ControlApi, Peer
from edgepoint.control.client import request, subscribe
from edgepoint.control.server import MAX_REQUEST, Limits
from edgepoint.errors import ConfigError, ControlError

pytestmark = pytest.mark.timeout(20)

NOBODY = 65534  # nobody:nogroup on Debian and Raspberry Pi OS


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can get close.
    assert len(str(tmp_path / "run" / "ep.sock")) < 100
    return tmp_path / "run" / "ep.sock"


@contextlib.asynccontextmanager
async def connected(path: Path) -> AsyncIterator[Conn]:
    conn = await Conn.open(path)
    try:
        yield conn
    finally:
        await conn.close()


# -- envelopes ---------------------------------------------------------------------------


async def test_v1_round_trip_echoes_the_id(sock: Path) -> None:
    station = FakeStation()
    async with serving(sock, station), connected(sock) as conn:
        for request_id in ("abc-7", 42, {"screen": "overview", "n": 3}, None):
            answer = await conn.ask({"v": 1, "id": request_id, "cmd": "status", "args": {}})
            assert answer == {
                "v": 1,
                "id": request_id,
                "ok": True,
                "result": {"counter": 0, "taps": []},
            }
        tapped = await conn.ask({"v": 1, "id": 8, "cmd": "tap", "args": {"uid": "04A1B2C3"}})
        assert tapped == {"v": 1, "id": 8, "ok": True, "result": None}
        assert station.taps == ["04A1B2C3"]
        # "args" may be left out; unknown envelope keys are ignored (later v1 additions).
        answer = await conn.ask({"v": 1, "id": 9, "cmd": "status", "trace": "x"})
        assert (answer["id"], answer["ok"]) == (9, True)


async def test_the_unversioned_form_still_works_and_is_answered_as_v1(sock: Path) -> None:
    station = FakeStation()
    async with serving(sock, station), connected(sock) as conn:
        assert await conn.ask(b'{"cmd": "status"}\n') == {
            "v": 1,
            "id": None,
            "ok": True,
            "result": {"counter": 0, "taps": []},
        }
        # Its args sit next to "cmd".
        assert (await conn.ask(b'{"cmd": "tap", "uid": "04A1B2C3"}\n'))["ok"] is True
        assert station.taps == ["04A1B2C3"]
        answer = await conn.ask(b'{"cmd": "tap"}\n')
        assert answer["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("raw", "code", "message", "echoed_id"),
    [
        (b"this is not json\n", "bad_request", "not JSON", None),
        (b"\xff\xfe\n", "bad_request", "not JSON", None),  # not even UTF-8
        (b"[" * 50_000 + b"\n", "bad_request", "not JSON", None),  # deep enough to recurse
        (b"[1, 2]\n", "bad_request", "a request is a JSON object", None),
        (b'"status"\n', "bad_request", "a request is a JSON object", None),
        (b"{}\n", "bad_request", 'a request needs a string "cmd"', None),
        (b'{"v": 1, "id": 3, "cmd": 5}\n', "bad_request", 'string "cmd"', 3),
        (b'{"v": 1, "id": 3, "cmd": "status", "args": []}\n', "bad_request", '"args"', 3),
        (b'{"v": 2, "id": 3, "cmd": "status"}\n', "unsupported_version", "speaks 1", 3),
        (b'{"v": true, "id": 3, "cmd": "status"}\n', "unsupported_version", "True", 3),
        (b'{"v": 1, "id": 4, "cmd": "launch"}\n', "unknown_command", "'launch'", 4),
        (b'{"v": 1, "id": 5, "cmd": "tap"}\n', "bad_request", "missing argument 'uid'", 5),
        (
            b'{"v": 1, "id": 6, "cmd": "tap", "args": {"uid": 1234}}\n',
            "bad_request",
            "argument 'uid' must be str, got int",
            6,
        ),
        (
            b'{"v": 1, "id": 7, "cmd": "tap", "args": {"uid": "04A1B2C3", "force": true}}\n',
            "bad_request",
            "unknown argument 'force'",
            7,
        ),
        (
            b'{"v": 1, "id": 8, "cmd": "status", "args": {"verbose": true}}\n',
            "bad_request",
            "unknown argument 'verbose' (arguments: none)",
            8,
        ),
        (b'{"v": 1, "id": 9, "cmd": "tap", "args": {"uid": "BAD"}}\n', "bad_request", "hex", 9),
        (
            b'{"v": 1, "id": 10, "cmd": "tap", "args": {"uid": "OFF"}}\n',
            "unavailable",
            "simulated hardware",
            10,
        ),
        (
            b'{"v": 1, "id": 11, "cmd": "watch", "args": {"events": ["x"]}}\n',
            "bad_request",
            "'x'",
            11,
        ),
        (
            b'{"v": 1, "id": 12, "cmd": "watch", "args": {"events": []}}\n',
            "bad_request",
            "list",
            12,
        ),
    ],
)
async def test_bad_requests_get_their_code_and_the_connection_stays_usable(
    sock: Path, raw: bytes, code: str, message: str, echoed_id: Any
) -> None:
    station = FakeStation()
    async with serving(sock, station), connected(sock) as conn:
        answer = await conn.ask(raw)
        assert answer["v"] == 1
        assert answer["ok"] is False
        assert answer["id"] == echoed_id
        assert answer["error"]["code"] == code
        assert message in answer["error"]["message"]
        assert (await conn.ask({"v": 1, "id": "next", "cmd": "status"}))["ok"] is True
        assert station.taps == []


async def test_the_client_raises_the_servers_message_with_its_code(sock: Path) -> None:
    async with serving(sock, FakeStation()):
        with pytest.raises(ControlError, match="argument 'uid' must be str, got int") as err:
            await request(sock, "tap", uid=1234)
        assert err.value.code == "bad_request"
        with pytest.raises(ControlError) as err:
            await request(sock, "tap", uid="OFF")
        assert (err.value.code, str(err.value)) == ("unavailable", "tap needs simulated hardware")


async def test_a_failing_handler_costs_one_answer_not_the_connection(sock: Path) -> None:
    api = station_api(FakeStation())

    async def boom() -> None:
        raise RuntimeError("bug")

    async def not_json() -> object:
        return object()

    api.add_command("boom", boom)
    api.add_command("not_json", not_json)
    async with serving(sock, api), connected(sock) as conn:
        for cmd in ("boom", "not_json"):
            answer = await conn.ask({"v": 1, "id": cmd, "cmd": cmd})
            assert (answer["id"], answer["error"]["code"]) == (cmd, "failed")
            assert "internal error" in answer["error"]["message"]
        assert (await conn.ask({"v": 1, "id": 1, "cmd": "status"}))["ok"] is True


# -- bounds ------------------------------------------------------------------------------


async def test_a_request_over_64_kib_is_refused_and_the_connection_closed(sock: Path) -> None:
    async with serving(sock, FakeStation()) as served:
        async with connected(sock) as conn:
            # Just under the limit is fine (unknown envelope keys are ignored).
            big = {"v": 1, "id": 1, "cmd": "status", "pad": "x" * (MAX_REQUEST - 100)}
            assert len(json.dumps(big)) < MAX_REQUEST
            assert (await conn.ask(big))["ok"] is True

            conn.writer.write(b'{"v": 1, "id": 2, "pad": "' + b"x" * MAX_REQUEST + b'"}\n')
            with contextlib.suppress(ConnectionError):
                await conn.writer.drain()
            answer = await conn.receive()
            assert answer["error"]["code"] == "too_large"
            assert str(MAX_REQUEST) in answer["error"]["message"]
            assert await conn.at_eof()
        assert served.server.snapshot().refused_too_large == 1
        assert await request(sock, "status") == {"counter": 0, "taps": []}


async def test_a_client_over_max_clients_is_told_busy(sock: Path) -> None:
    async with serving(sock, FakeStation(), limits=Limits(max_clients=2)) as served:
        first, second = await Conn.open(sock), await Conn.open(sock)
        try:
            for conn in (first, second):
                assert (await conn.ask({"v": 1, "id": 1, "cmd": "status"}))["ok"] is True
            async with connected(sock) as third:
                answer = await third.receive()  # told before it even asks
                assert (answer["ok"], answer["error"]["code"]) == (False, "busy")
                assert await third.at_eof()
            with pytest.raises(ControlError, match="2 clients are connected") as err:
                await request(sock, "status")
            assert err.value.code == "busy"
            assert served.server.snapshot().refused_busy == 2
        finally:
            await first.close()
        # A slot is free again as soon as a client leaves.
        await wait_until(lambda: served.server.snapshot().clients == 1, "first one gone")
        assert await request(sock, "status") == {"counter": 0, "taps": []}
        await second.close()


async def test_a_watcher_that_does_not_read_is_dropped_and_nobody_waits_for_it(sock: Path) -> None:
    # Each status is 256 KiB: two fill the kernel's socket buffer and asyncio's.
    station = FakeStation(padding=256 * 1024)
    async with serving(sock, station, limits=Limits(send_timeout_s=1.5)) as served:
        loop = asyncio.get_running_loop()
        stuck = socket.socket(socket.AF_UNIX)
        stuck.setblocking(False)
        try:
            await loop.sock_connect(stuck, str(sock))
            await loop.sock_sendall(stuck, b'{"v": 1, "id": 1, "cmd": "watch"}\n')
            await wait_until(lambda: station.reads == 1, "first status sent")
            station.change()
            await wait_until(lambda: station.reads == 2, "second status written")
            for _ in range(5):
                station.change()  # coalesced while the send waits
            # The stuck watcher is still waiting on its send; others are served meanwhile.
            started = time.monotonic()
            status = await request(sock, "status")
            elapsed = time.monotonic() - started
            assert status["counter"] == 6
            assert station.watchers, "the stuck watcher was dropped before the check"
            assert elapsed < 0.75, f"a status took {elapsed:.2f} s behind a stuck watcher"
            # ... and it is dropped once its send times out.
            await wait_until(lambda: not station.watchers, "stuck watcher dropped", 5)
            snapshot = served.server.snapshot()
            assert (snapshot.dropped_slow, snapshot.watchers, snapshot.clients) == (1, 0, 0)
        finally:
            stuck.close()
        assert not served.task.done()


async def test_a_watcher_that_disconnects_is_unregistered_at_once(sock: Path) -> None:
    station = FakeStation()
    async with serving(sock, station) as served:
        async with connected(sock) as conn:
            ack = await conn.ask({"v": 1, "id": "w", "cmd": "watch"})
            assert ack == {"v": 1, "id": "w", "ok": True, "result": {"events": ["status"]}}
            event = await conn.receive()
            assert event == {"v": 1, "event": "status", "data": {"counter": 0, "taps": []}}
            assert len(station.watchers) == 1
            assert served.server.snapshot().watchers == 1
        # No change happens: the server notices the EOF by itself.
        await wait_until(lambda: not station.watchers, "watcher unregistered")
        await wait_until(lambda: served.server.snapshot().clients == 0, "client gone")
        assert served.server.snapshot().watchers == 0


async def test_a_watching_connection_still_answers_requests(sock: Path) -> None:
    station = FakeStation()
    async with serving(sock, station), connected(sock) as conn:
        await conn.ask({"v": 1, "id": 1, "cmd": "watch"})
        assert (await conn.receive())["data"]["counter"] == 0
        await conn.send({"v": 1, "id": 2, "cmd": "tap", "args": {"uid": "04A1B2C3"}})
        station.change()
        seen = [await conn.receive(), await conn.receive()]
        assert {"v": 1, "id": 2, "ok": True, "result": None} in seen
        assert any(m.get("event") == "status" and m["data"]["counter"] == 1 for m in seen)
        again = await conn.ask({"v": 1, "id": 3, "cmd": "watch"})
        assert again["error"]["code"] == "bad_request"
        assert "watches already" in again["error"]["message"]


class FakeLog:
    """A stream event source: what a log handler will look like."""

    def __init__(self) -> None:
        self.subscribers: list[Callable[[Any], None]] = []

    def subscribe(self, push: Callable[[Any], None]) -> Callable[[], None]:
        self.subscribers.append(push)
        return lambda: self.subscribers.remove(push)

    def emit(self, line: str) -> None:
        for push in list(self.subscribers):
            push(line)


async def test_stream_events_keep_order_and_say_what_a_slow_client_lost(sock: Path) -> None:
    api = station_api(FakeStation())
    log = FakeLog()
    api.add_stream_event("log", log.subscribe, backlog=3)
    async with serving(sock, api):
        events = subscribe(sock, ["log"])
        try:
            first = asyncio.create_task(anext(events))
            await wait_until(lambda: bool(log.subscribers), "subscribed")
            for n in range(10):  # all at once, before the sender runs: only 3 fit
                log.emit(f"line {n}")
            got = [await asyncio.wait_for(first, 5)]
            got += [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
            assert [(e.kind, e.data, e.lost) for e in got] == [
                ("log", "line 7", 7),
                ("log", "line 8", 0),
                ("log", "line 9", 0),
            ]
            log.emit("line 10")
            assert (await asyncio.wait_for(anext(events), 5)).data == "line 10"
        finally:
            await events.aclose()
        await wait_until(lambda: not log.subscribers, "unsubscribed")


# -- peers and permissions ---------------------------------------------------------------


async def test_the_peers_credentials_reach_the_handler(sock: Path) -> None:
    api = station_api(FakeStation())
    seen: list[Peer] = []

    async def whoami(peer: Peer) -> dict[str, Any]:
        seen.append(peer)
        return {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "user": peer.user}

    api.add_command("whoami", whoami, with_peer=True)
    async with serving(sock, api):
        me = await request(sock, "whoami")
    assert me == {
        "uid": os.geteuid(),
        "gid": os.getegid(),
        "pid": os.getpid(),
        "user": pwd.getpwuid(os.geteuid()).pw_name,
    }
    assert os.getegid() in seen[0].groups


async def test_hello_describes_the_api_for_this_peer(sock: Path) -> None:
    async with serving(sock, FakeStation()):
        hello = await request(sock, "hello")
    assert hello["protocol"] == 1
    assert hello["peer"]["uid"] == os.geteuid()
    assert hello["peer"]["may_act"] is True
    assert hello["events"] == ["status"]
    assert hello["limits"]["max_request"] == MAX_REQUEST
    commands = {c["name"]: c for c in hello["commands"]}
    assert commands["status"]["hardware"] is False
    assert commands["tap"] == {
        "name": "tap",
        "summary": "present a card to the emulated PN532 (simulated hardware only)",
        "args": {"uid": {"type": "str", "required": True}},
        "mutates": True,
        "hardware": True,
        "allowed": True,
    }


async def test_state_changing_commands_are_logged_with_the_user(
    sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgepoint.control")
    async with serving(sock, FakeStation()):
        await request(sock, "status")
        await request(sock, "tap", uid="04A1B2C3")
        with pytest.raises(ControlError):
            await request(sock, "tap", uid="OFF")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert any("tap" in line and f"by {me} (uid {os.geteuid()}" in line for line in lines), lines
    assert any("failed (unavailable)" in line for line in lines), lines
    assert not any("status" in line for line in lines), "reads are not audited"
    assert not any("04A1B2C3" in r.getMessage() for r in caplog.records), "card UIDs are masked"
    assert any("****B2C3" in line for line in lines)


def test_who_may_act_on_hardware() -> None:
    access = Access(daemon_uid=999, group_id=50, group_name="ops")

    def peer(uid: int, *groups: int) -> Peer:
        return Peer(pid=1, uid=uid, gid=groups[0], user=f"u{uid}", groups=frozenset(groups))

    assert access.allows_hardware(peer(0, 0))  # root
    assert access.allows_hardware(peer(999, 999))  # the daemon's own user
    assert access.allows_hardware(peer(1000, 1000, 50))  # a member of the group
    assert access.allows_hardware(peer(1001, 50))  # ... or as its primary group
    assert not access.allows_hardware(peer(1002, 1002, 51))
    unknown = Peer(pid=0, uid=-1, gid=-1, user="unknown", groups=frozenset())
    assert not access.allows_hardware(unknown)


def test_a_peer_is_named_from_the_user_database() -> None:
    me = Peer.lookup(os.getpid(), os.geteuid(), os.getegid())
    assert me.user == pwd.getpwuid(os.geteuid()).pw_name
    assert os.getegid() in me.groups
    ghost = Peer.lookup(1, 4_000_000, 4_000_000)  # no passwd entry
    assert (ghost.user, ghost.groups) == ("4000000", frozenset({4_000_000}))


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder another user can traverse (pytest's tmp_path sits under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="ep-ctl-", dir="/tmp"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_other_user(path: Path, uid: int, gid: int, requests: list[dict[str, Any]]) -> list[Any]:
    """Send `requests` on one connection from a child process running as uid:gid."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only syscalls and json, then _exit (no pytest teardown)
        code = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(5)
                conn.connect(str(path))
                stream = conn.makefile("rwb")
                answers = []
                for message in requests:
                    stream.write(json.dumps(message).encode() + b"\n")
                    stream.flush()
                    answers.append(json.loads(stream.readline()))
            os.write(wfd, json.dumps(answers).encode())
            code = 0
        except BaseException as err:
            os.write(wfd, json.dumps(repr(err)).encode())
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(output)
    assert os.waitstatus_to_exitcode(status) == 0, result
    assert isinstance(result, list)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize(("group_id", "may_act"), [(0, False), (NOBODY, True)])
async def test_a_user_outside_the_group_reads_status_but_may_not_act(
    open_folder: Path, group_id: int, may_act: bool
) -> None:
    sock = open_folder / "run" / "ep.sock"
    station = FakeStation()
    api = station_api(station)

    async def whoami(peer: Peer) -> int:
        return peer.uid

    api.add_command("whoami", whoami, with_peer=True)
    # The daemon is root here; acting takes group `group_id`. Reading takes the socket
    # file's group, which nobody's primary group (nogroup) is given, as technicians are.
    access = Access(daemon_uid=0, group_id=group_id, group_name=f"g{group_id}")
    async with serving(sock, api, access=access):
        os.chown(sock.parent, -1, NOBODY)
        os.chown(sock, -1, NOBODY)
        whoami_, status, tap, hello = await asyncio.to_thread(
            _as_other_user,
            sock,
            NOBODY,
            NOBODY,
            [
                {"v": 1, "id": 1, "cmd": "whoami"},
                {"v": 1, "id": 2, "cmd": "status"},
                {"v": 1, "id": 3, "cmd": "tap", "args": {"uid": "04A1B2C3"}},
                {"v": 1, "id": 4, "cmd": "hello"},
            ],
        )
    assert whoami_["result"] == NOBODY  # what the kernel says, not what the client claims
    assert status == {"v": 1, "id": 2, "ok": True, "result": {"counter": 0, "taps": []}}
    assert hello["result"]["peer"]["may_act"] is may_act
    if may_act:
        assert tap == {"v": 1, "id": 3, "ok": True, "result": None}
        assert station.taps == ["04A1B2C3"]
    else:
        assert tap["error"]["code"] == "forbidden"
        assert f"group 'g{group_id}'" in tap["error"]["message"]
        assert "nobody" in tap["error"]["message"]
        assert station.taps == []


# -- the registry and the configuration ---------------------------------------------------


def test_the_registry_refuses_clashing_or_malformed_registrations() -> None:
    api = ControlApi()

    async def handler() -> None:
        return None

    api.add_command("chargers.reset", handler, required={"charger": str}, hardware=True)
    assert api.command("chargers.reset") is not None
    assert api.command("chargers.reset").mutates is True  # type: ignore[union-attr]
    for name in ("chargers.reset", "watch", "hello", "Chargers", "chargers..x", "", "a b"):
        with pytest.raises(ValueError):
            api.add_command(name, handler)
    with pytest.raises(TypeError, match="not a JSON type"):
        api.add_command("sessions.list", handler, optional={"since": object})
    with pytest.raises(ValueError, match="both required and optional"):
        api.add_command("x", handler, required={"a": str}, optional={"a": int})
    api.add_state_event("status", handler, lambda notify: lambda: None)
    with pytest.raises(ValueError):
        api.add_state_event("status", handler, lambda notify: lambda: None)
    with pytest.raises(ValueError):
        api.add_stream_event("log", lambda push: lambda: None, backlog=0)


def test_argument_types_follow_json() -> None:
    api = ControlApi()

    async def handler(**args: Any) -> None:
        return None

    command = api.add_command(
        "t", handler, required={"f": float, "i": int}, optional={"n": (str, type(None))}
    )
    assert command.check_args({"f": 1, "i": 2, "n": None}, 1) == {"f": 1, "i": 2, "n": None}
    for bad, reason in (
        ({"f": True, "i": 2}, "'f' must be float, got bool"),
        ({"f": 1.5, "i": 2.0}, "'i' must be int, got float"),
        ({"f": 1.5, "i": False}, "'i' must be int, got bool"),
        ({"f": 1.5, "i": 2, "n": 3}, "'n' must be str or null, got int"),
    ):
        with pytest.raises(ControlError, match=reason):
            command.check_args(bad, 1)


MINIMAL = '[station]\nid = "EP-1"\n[chargepoint]\ncsms_url = "ws://127.0.0.1:9000/ocpp"\n'


def test_control_group_and_max_clients_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "edgepoint.toml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert (config.control.group, config.control.max_clients) == (None, 16)
    path.write_text(MINIMAL + '[control]\ngroup = "root"\nmax_clients = 4\n')
    config = load_config(path)
    assert (config.control.group, config.control.max_clients) == ("root", 4)
    assert Access.for_group(config.control.group).group_id == 0
    for extra, reason in (
        ('group = "no-such-group-here"', "there is no group 'no-such-group-here'"),
        ('group = ""', "must not be empty"),
        ("max_clients = 0", "between 1 and 1024"),
    ):
        path.write_text(MINIMAL + f"[control]\n{extra}\n")
        with pytest.raises(ConfigError, match=reason) as err:
            load_config(path)
        assert err.value.key.startswith("control.")
