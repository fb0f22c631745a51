"""`edgepoint chargers …` and `edgepoint transactions …` as separate processes, on csms.db and
through a running daemon, with raw OCPP-J chargers on real WebSockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from edgepoint.clock import SystemClock
from edgepoint.config import load_config
from edgepoint.csms.db import open_csms_store
from edgepoint.csms.server import SiteCsms

pytestmark = pytest.mark.timeout(90)

# Until the CSMS runs as the daemon's child process, the daemon serves no `chargers.*`.

KEY = "0123456789abcdef0123"
CARD = "04A1B2C3"


def edgepoint(
    config: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `edgepoint ARGS --config CONFIG` as a separate process."""
    command = [sys.executable, "-m", "edgepoint.cli", *args, "--config", str(config)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    result = edgepoint(config, *args, stdin=stdin)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def refused(config: Path, *args: str, code: int = 1, stdin: str | None = None) -> str:
    """Run a command that must fail with `code`; return its stderr."""
    result = edgepoint(config, *args, stdin=stdin)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("edgepoint"), result.stderr
    return result.stderr


def password_of(stdout: str) -> str:
    """The password `add`, `rekey` and `admit` print once, on their last line."""
    password = stdout.strip().splitlines()[-1]
    assert len(password) == 40 and int(password, 16) >= 0, stdout  # 20 random bytes
    return password


def listed(config: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(ok(config, "chargers", "list", "--json"))
    return {row["id"]: row for row in rows}


async def verifies(config: Path, cp_id: str, key: str) -> bool:
    async with open_csms_store(load_config(config).storage.csms_db, SystemClock()) as store:
        return await store.charge_points.verify_auth_key(cp_id, key)


# -- a raw OCPP-J charger -------------------------------------------------------------------


ACCEPTED = {"status": "Accepted"}
DEFAULT_REPLIES: dict[str, dict[str, Any]] = {
    "UnlockConnector": {"status": "Unlocked"},
    "GetLocalListVersion": {"listVersion": 0},
    "GetConfiguration": {"configurationKey": [], "unknownKey": []},
}


@dataclass
class Charger:
    """A charger on raw frames: answers every CALL from `replies` (default Accepted)."""

    ws: ClientConnection
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _answers: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame[0] == 2:
                    self.received.append((frame[2], frame[3]))
                    self._arrived.set()
                    reply = self.replies.get(frame[2], DEFAULT_REPLIES.get(frame[2], ACCEPTED))
                    await self.ws.send(json.dumps([3, frame[1], reply]))
                elif frame[0] in (3, 4) and frame[1] in self._answers:
                    self._answers.pop(frame[1]).set_result(frame)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        unique_id = f"m{len(self._answers)}-{action}"
        self._answers[unique_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        frame = await asyncio.wait_for(self._answers[unique_id], 10)
        return frame[2] if frame[0] == 3 else ("error", frame[2])

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.received if name == action]


def basic(cp_id: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{cp_id}:{key}".encode()).decode()}


@contextlib.asynccontextmanager
async def charger(port: int, cp_id: str, key: str) -> AsyncIterator[Charger]:
    """A booted charger connected to the CSMS on `port`."""
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/{cp_id}",
        subprotocols=[Subprotocol("ocpp1.6")],
        additional_headers=basic(cp_id, key),
        open_timeout=10,
        close_timeout=1,
    ) as ws:
        station = Charger(ws)
        serving = asyncio.create_task(station.serve())
        try:
            booted = await station.call(
                "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "AC22"}
            )
            assert booted["status"] == "Accepted"
            yield station
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


async def refused_with(port: int, cp_id: str, key: str) -> int:
    """The HTTP status a connection attempt is refused with."""
    with pytest.raises(InvalidStatus) as caught:
        async with charger(port, cp_id, key):
            pass
    return caught.value.response.status_code


@contextlib.asynccontextmanager
async def csms_beside(config: Path) -> AsyncIterator[SiteCsms]:
    """A CSMS on the config's csms.db, as the service process runs it (not the daemon)."""
    csms = SiteCsms(
        load_config(config).storage.csms_db, "127.0.0.1", 0, SystemClock(), store_pending=True
    )
    task = asyncio.create_task(csms.run())
    await asyncio.wait_for(csms.started.wait(), 10)
    try:
        yield csms
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- registration on csms.db, no daemon -----------------------------------------------------


def test_add_list_rekey_remove_without_a_daemon(daemon_config: Path) -> None:
    config = daemon_config
    assert ok(config, "chargers", "list").strip() == "no chargers"
    assert ok(config, "chargers", "pending").strip() == "no pending chargers"

    added = ok(config, "chargers", "add", "CP-1")
    assert "CP-1" in added and "shown only now" in added
    first = password_of(added)
    assert "already registered" in refused(config, "chargers", "add", "CP-1")
    quiet = ok(config, "chargers", "add", "CP-2", "--password-stdin", stdin=KEY + "\n")
    assert KEY not in quiet  # a password the operator chose is never echoed
    both = json.loads(ok(config, "chargers", "add", "CP-3", "--json"))
    assert both["id"] == "CP-3" and len(both["password"]) == 40
    assert first != both["password"]

    # Bad usage: exit 2, nothing registered.
    refused(config, "chargers", "add", "CP-4", "--password-stdin", code=2, stdin="short\n")
    refused(config, "chargers", "add", "bad id", code=2)
    refused(config, "chargers", "add", "x" * 49, code=2)

    rows = listed(config)
    assert set(rows) == {"CP-1", "CP-2", "CP-3"}
    assert rows["CP-1"]["online"] is None  # no daemon to ask
    assert rows["CP-1"]["last_seen"] is None and rows["CP-1"]["connectors"] == []
    human = ok(config, "chargers", "list")
    assert "CP-2" in human and "never" in human and "online state unknown" in human

    assert asyncio.run(verifies(config, "CP-1", first))
    assert asyncio.run(verifies(config, "CP-2", KEY))
    rekeyed = ok(config, "chargers", "rekey", "CP-1")
    second = password_of(rekeyed)
    assert second != first
    assert asyncio.run(verifies(config, "CP-1", second))
    assert not asyncio.run(verifies(config, "CP-1", first))
    assert "no charger CP-9" in refused(config, "chargers", "rekey", "CP-9")

    assert "CP-2 removed" in ok(config, "chargers", "remove", "CP-2")
    assert set(listed(config)) == {"CP-1", "CP-3"}
    assert not asyncio.run(verifies(config, "CP-2", KEY))
    assert "no charger CP-2" in refused(config, "chargers", "remove", "CP-2")
    # A removed id can be registered again.
    ok(config, "chargers", "add", "CP-2", "--password-stdin", stdin=KEY)
    assert set(listed(config)) == {"CP-1", "CP-2", "CP-3"}


def test_import_checks_every_line_first(daemon_config: Path, tmp_path: Path) -> None:
    config = daemon_config
    ok(config, "chargers", "add", "SITE-1", "--password-stdin", stdin=KEY)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,password\n"
        "A-1,0123456789abcdef\n"
        "bad id,0123456789abcdef\n"
        "A-2,short\n"
        "\n"
        "# spares\n"
        "A-1,0123456789abcdef9\n"
        "A-3,0123456789abcdef,extra\n"
        "SITE-1,0123456789abcdef\n"
        "A-4,0123456789abcdef\n"
    )
    errors = refused(config, "chargers", "import", str(bad))
    lines = [line for line in errors.splitlines() if line.startswith(str(bad))]
    assert [line.split(":")[1] for line in lines] == ["3", "4", "7", "8", "9"]
    assert "A-1 is also on line 2" in errors and "SITE-1 is already registered" in errors
    assert "5 bad line(s); nothing registered" in errors
    assert set(listed(config)) == {"SITE-1"}

    good = tmp_path / "good.csv"
    rows = [(f"B-{n:03d}", f"key-{n:03d}-0123456789ab") for n in range(1, 21)]
    good.write_text("".join(f"{cp_id},{key}\n" for cp_id, key in rows))
    result = edgepoint(config, "chargers", "import", str(good))
    assert result.returncode == 0, result.stderr
    assert "20 charger(s) registered" in result.stdout
    assert "hashing keys: 20/20" in result.stderr  # progress, off stdout
    assert set(listed(config)) == {"SITE-1", *(cp_id for cp_id, _ in rows)}
    assert asyncio.run(verifies(config, "B-007", "key-007-0123456789ab"))

    # Registered ids: refused as a whole unless --update re-keys them.
    again = tmp_path / "again.csv"
    again.write_text("B-001,another-key-0123456789\nC-1,0123456789abcdef\n")
    assert "B-001 is already registered" in refused(config, "chargers", "import", str(again))
    assert "C-1" not in listed(config)
    ok(config, "chargers", "import", str(again), "--update")
    assert asyncio.run(verifies(config, "B-001", "another-key-0123456789"))
    assert "C-1" in listed(config)
    empty = tmp_path / "empty.csv"
    empty.write_text("id,password\n")
    assert "no chargers in it" in refused(config, "chargers", "import", str(empty))


async def test_pending_admit_rekey_remove_beside_a_running_csms(daemon_config: Path) -> None:
    config = daemon_config

    async def run(*args: str, stdin: str | None = None) -> str:
        return await asyncio.to_thread(ok, config, *args, stdin=stdin)

    async with csms_beside(config) as csms:
        assert await refused_with(csms.port, "NEW-7", KEY) == 404
        pending = json.loads(await run("chargers", "pending", "--json"))
        assert [(p["id"], p["attempts"], p["last_address"]) for p in pending] == [
            ("NEW-7", 1, "127.0.0.1")
        ]
        assert "NEW-7" in await run("chargers", "pending")
        assert "not pending" in await asyncio.to_thread(
            refused, config, "chargers", "admit", "NEW-8"
        )

        password = password_of(await run("chargers", "admit", "NEW-7"))
        assert json.loads(await run("chargers", "pending", "--json")) == []
        async with charger(csms.port, "NEW-7", password) as station:
            await station.call("Heartbeat", {})
            # Re-keyed from this other process while connected, after the key was cached.
            fresh = password_of(await run("chargers", "rekey", "NEW-7"))
            assert await refused_with(csms.port, "NEW-7", password) == 401
        async with charger(csms.port, "NEW-7", fresh):
            pass
        rows = json.loads(await run("chargers", "list", "--json"))
        assert [(r["id"], r["vendor"], r["online"]) for r in rows] == [("NEW-7", "Acme", None)]
        assert rows[0]["last_seen"] is not None

        await run("chargers", "remove", "NEW-7")
        assert await refused_with(csms.port, "NEW-7", fresh) == 404
        assert [p["id"] for p in json.loads(await run("chargers", "pending", "--json"))] == [
            "NEW-7"
        ]


def test_operator_commands_need_a_daemon(daemon_config: Path) -> None:
    for args in (
        ("chargers", "reset", "CP-1"),
        ("chargers", "show", "CP-1"),
        ("transactions", "list"),
    ):
        assert "not running" in refused(daemon_config, *args)
    refused(daemon_config, "chargers", "unlock", "CP-1", "one", code=2)
    refused(daemon_config, "chargers", "call", "CP-1", "Reset", "[1]", code=2)


# -- through a running daemon ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon_with_charger(daemon: Daemon) -> AsyncIterator[Charger]:
    """The daemon running, ready, and a registered site charger SITE-1 connected to it."""
    await asyncio.to_thread(daemon.start)
    await asyncio.to_thread(
        daemon.wait_for,
        "the embedded CSMS serving",
        lambda s: bool((s["links"].get("embedded_csms") or {}).get("listening")),
    )
    await asyncio.to_thread(
        ok, daemon.config, "chargers", "add", "SITE-1", "--password-stdin", stdin=KEY
    )
    async with charger(load_config(daemon.config).csms.port, "SITE-1", KEY) as station:
        yield station


async def test_operator_commands_round_trip_through_the_daemon(daemon: Daemon) -> None:
    config = daemon.config

    async def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = await asyncio.to_thread(edgepoint, config, *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    async with daemon_with_charger(daemon) as station:
        reset = await run("chargers", "reset", "SITE-1", "--type", "Hard")
        assert reset.stdout.strip() == "SITE-1: Reset Accepted"
        assert station.calls("Reset") == [{"type": "Hard"}]

        started = await run("chargers", "remote-start", "SITE-1", CARD, "--connector", "2")
        assert "RemoteStartTransaction Accepted" in started.stdout
        assert station.calls("RemoteStartTransaction") == [{"idTag": CARD, "connectorId": 2}]

        station.replies["Reset"] = {"status": "Rejected"}
        rejected = await run("chargers", "reset", "SITE-1", "--json", code=1)
        assert json.loads(rejected.stdout) == {"status": "Rejected"}
        assert station.calls("Reset")[-1] == {"type": "Soft"}

        station.replies["GetConfiguration"] = {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
            "unknownKey": ["Nope"],
        }
        shown = await run("chargers", "config", "SITE-1", "HeartbeatInterval", "Nope")
        assert "HeartbeatInterval = 60" in shown.stdout and "unknown keys: Nope" in shown.stdout
        await run("chargers", "unlock", "SITE-1", "1")
        await run("chargers", "availability", "SITE-1", "0", "inoperative")
        assert station.calls("ChangeAvailability") == [{"connectorId": 0, "type": "Inoperative"}]
        await run("chargers", "set-config", "SITE-1", "HeartbeatInterval", "120")
        await run("chargers", "clear-cache", "SITE-1")
        await run("chargers", "trigger", "SITE-1", "StatusNotification", "--connector", "1")
        await run("chargers", "send-local-list", "SITE-1", "--full")
        assert station.calls("SendLocalList")[0]["updateType"] == "Full"
        await run("chargers", "call", "SITE-1", "GetLocalListVersion", "{}")
        await run("chargers", "trigger", "SITE-1", "Coffee", code=2)  # not an OCPP message
        await run("chargers", "reset", "OTHER", code=1)  # not registered

        tx = await station.call(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": CARD,
                "meterStart": 100,
                "timestamp": "2025-06-01T10:00:00Z",
            },
        )
        await run("chargers", "remote-stop", "SITE-1", str(tx["transactionId"]))
        rows = json.loads(
            (await run("transactions", "list", "--json", "--charger", "SITE-1")).stdout
        )
        assert [(r["transaction_id"], r["id_tag"], r["live"]) for r in rows] == [
            (tx["transactionId"], "****B2C3", True)
        ]
        assert CARD not in (await run("transactions", "list", "--live")).stdout

        view = json.loads((await run("chargers", "show", "SITE-1", "--json")).stdout)
        assert (view["online"], view["vendor"]) == (True, "Acme")
        assert listed(config)["SITE-1"]["online"] is True


async def test_rekey_and_remove_close_the_live_connection(daemon: Daemon) -> None:
    async with daemon_with_charger(daemon) as station:
        rekeyed = await asyncio.to_thread(ok, daemon.config, "chargers", "rekey", "SITE-1")
        assert "closed SITE-1's live connection" in rekeyed
        await asyncio.wait_for(station.ws.wait_closed(), 10)
        assert station.ws.close_code == 1008
    port = load_config(daemon.config).csms.port
    assert await refused_with(port, "SITE-1", KEY) == 401
    async with charger(port, "SITE-1", password_of(rekeyed.split("closed")[0])) as station:
        removed = await asyncio.to_thread(ok, daemon.config, "chargers", "remove", "SITE-1")
        assert "closed SITE-1's live connection" in removed
        await asyncio.wait_for(station.ws.wait_closed(), 10)
