"""The unit and sd_notify: ready only when serving, alive, one-line status, stopping in time."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chargepoint.scenario_support import running, scenario_config
from daemon_harness import Daemon, cli, query
from support.scripted_csms import ScriptedCsms

from edgepoint import app, systemd
from edgepoint.chargepoint.link import LinkState
from edgepoint.config import load_config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edgepoint.service"
TEMPLATE = ROOT / "systemd" / "config.toml"
CARD = "04A1B2C3"


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit's sections, each key with all its values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def one(section: str, key: str) -> str:
    values = unit()[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def seconds(value: str) -> float:
    assert value.isdigit(), f"{value}: give the unit's times in plain seconds"
    return float(value)


# -- the unit file ------------------------------------------------------------------------


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; scripts/bootstrap --test)")
    # verify checks that ExecStart's binary exists: point it at a stand-in.
    binary = tmp_path / "edgepoint"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/edgepoint/current/bin/edgepoint", str(binary)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    """The hardening as systemd scores it (README: 2.5, "OK"); a change that loosens it
    past 3.0 fails here rather than on a fleet."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; scripts/bootstrap --test)")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/edgepoint/current/bin/edgepoint", "/bin/true"))
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=30", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr or "--threshold" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {result.stderr}")
    assert "Overall exposure level for edgepoint.service" in result.stdout, result.stderr
    assert result.returncode == 0, result.stdout.splitlines()[-1]


def test_the_unit_asks_for_what_unattended_operation_needs() -> None:
    service = unit()["Service"]
    assert one("Service", "Type") == "notify" and one("Service", "NotifyAccess") == "main"
    assert seconds(one("Service", "WatchdogSec")) >= 10
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "RestartPreventExitStatus") == "2"  # invalid configuration
    assert seconds(one("Unit", "StartLimitIntervalSec")) > 0
    assert int(one("Unit", "StartLimitBurst")) > 0
    assert one("Service", "User") == "edgepoint"
    assert {"gpio", "i2c", "dialout"} <= set(one("Service", "SupplementaryGroups").split())
    for kind in ("State", "Runtime", "Configuration", "Logs"):
        assert one("Service", f"{kind}Directory") == "edgepoint"
    hardening = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }
    for key, value in hardening.items():
        assert one("Service", key) == value
    families = set(one("Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # What would cut the kiosk off its hardware is left out, on purpose.
    for key in ("PrivateDevices", "DevicePolicy", "PrivateUsers", "ProcSubset", "ProtectClock"):
        assert key not in service, key
    assert "adjtimex" in one("Service", "SystemCallFilter").split()  # reading the NTP state
    assert "ExecStopPost" in service  # relay-off (tests/test_interlocks.py)


def test_every_writable_path_of_the_installed_config_is_under_the_units_directories() -> None:
    config = load_config(TEMPLATE)
    state, runtime = Path("/var/lib/edgepoint"), Path("/run/edgepoint")
    assert config.storage.dir == state
    for path in (config.chargepoint.auth_key_file, config.ledger.key_file):
        assert path.is_relative_to(state), path
    for path in (config.control.socket, config.csms.control_socket):
        assert path.is_relative_to(runtime), path
    assert config.hardware.simulate is False and config.clock.trust_rtc is False
    start = one("Service", "ExecStart").split()
    assert start[start.index("--config") + 1] == "/etc/edgepoint/config.toml"


def test_the_installed_config_template_has_every_key_of_config_toml() -> None:
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    installed = tomllib.loads(TEMPLATE.read_text())
    assert {t: set(v) for t, v in shipped.items()} == {t: set(v) for t, v in installed.items()}
    differing = {
        f"{table}.{key}"
        for table, values in shipped.items()
        for key, value in values.items()
        if installed[table][key] != value
    }
    assert differing == {
        "station.id",
        "chargepoint.auth_key_file",
        "csms.control_socket",
        "storage.dir",
        "hardware.simulate",
        "control.socket",
        "ledger.key_file",
    }


def test_the_unit_parses_as_an_ini_file() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


# -- sd_notify ------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        yield sock, path
    finally:
        sock.close()


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_sends_a_datagram(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("STATUS=testing") is True
    assert sock.recv(256) == b"STATUS=testing"


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval_s() is None


def receive_until(
    sock: socket.socket,
    prefix: str,
    seen: list[str],
    start: int = 0,
    containing: tuple[str, ...] = (),
    within_s: float = 20,
) -> str:
    """The first datagram from `seen[start:]` on that starts with `prefix` (and contains
    each of `containing`), reading more into `seen` as they come. Pings arrive all the
    time, so the deadline is the test's own, not the socket's."""
    deadline = time.monotonic() + within_s
    index = start
    while True:
        for message in seen[index:]:
            if message.startswith(prefix) and all(part in message for part in containing):
                return message
        index = len(seen)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {prefix!r} within {within_s:g} s; last: {seen[-5:]}")
        sock.settimeout(remaining)
        with contextlib.suppress(TimeoutError):
            seen.append(sock.recv(4096).decode())


def test_ready_watchdog_status_and_stopping_from_a_real_daemon(
    daemon: Daemon, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    seen: list[str] = []
    ready = receive_until(sock, "READY=1", seen)
    after_ready = seen.index(ready) + 1
    # READY only once it serves: the control socket answers, the CSMS link has booted.
    status = daemon.status()
    assert status["links"]["csms"]["state"] == "online"
    # The CSMS process listened before READY (its part of `status` may lag by 0.5 s).
    daemon.wait_for("the CSMS listening", lambda s: s["links"]["embedded_csms"]["listening"])
    assert "STATUS=EP-TEST-1: serving (csms online)" in ready.splitlines()
    # WatchdogSec=0.4 s: pings every 0.2 s while the loop is alive; STATUS= one line, sent
    # whenever it changes (before or after the next ping).
    receive_until(sock, "WATCHDOG=1", seen, after_ready)
    wanted = ("csms online", "1 Available")
    line = receive_until(sock, "STATUS=EP-TEST-1: ", seen, after_ready, wanted)
    assert "\n" not in line
    code, _ = daemon.stop()
    assert code == 0
    receive_until(sock, "STOPPING=1", seen)
    assert [m for m in seen if m.startswith("READY=1")] == [ready]


async def test_ready_says_offline_when_the_csms_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "READY_BOOT_WAIT_S", 0.3)
    socket_path = tmp_path / "control.sock"
    server = await asyncio.start_unix_server(lambda r, w: w.close(), str(socket_path))

    class Link:
        state = LinkState.CONNECTING

    class Control:
        socket = socket_path

    class Config:
        control = Control()

    try:
        started = time.monotonic()
        mode = await app._until_serving(Config(), Link(), asyncio.Event())  # type: ignore[arg-type]
        assert time.monotonic() - started < 2
    finally:
        server.close()
    assert mode == "offline: csms connecting, charging on local rules"


def test_the_status_line_is_one_short_line() -> None:
    status: dict[str, Any] = {
        "station": "EP-1",
        "connectors": [{"status": "Charging"}, {"status": "Available"}],
        "links": {"csms": {"state": "online"}},
        "outbox": {"depth": 3, "dead_letters": 1},
        "clock": {"source": "provisional"},
        "faults": [],
        "storage": {"faults": ["storage-low: 3.0 MiB free in /var/lib/edgepoint"]},
        "alarms": ["x"],
    }
    assert systemd.status_line(status) == (
        "EP-1: 1 Available, 1 Charging; csms online; outbox 3 (1 dead); clock provisional;"
        " FAULT storage-low; 1 alarm(s)"
    )


# -- stop within TimeoutStopSec -------------------------------------------------------------


def test_sigterm_mid_session_stops_cleanly_within_timeout_stop_sec(daemon: Daemon) -> None:
    limit = seconds(one("Service", "TimeoutStopSec"))
    cli(daemon.config, "cards", "add", CARD)
    daemon.start()
    daemon.wait_ready()
    cli(daemon.config, "sim", "tap", CARD)
    daemon.wait_for("charging", lambda s: s["connector"]["relay_closed"] is True, timeout=10)
    code, took = daemon.stop(timeout=limit)
    assert code == 0, daemon.tail()
    # Well inside the unit's limit, so systemd never has to SIGKILL it.
    assert took < limit / 2, f"stopped in {took:.1f} s; TimeoutStopSec={limit:g}"
    var = daemon.config.parent / "var"
    assert query(var / "edgepoint.db", "SELECT state, stop_reason FROM sessions") == [
        ("stopped", "Reboot")
    ]
    # The link was online: the StopTransaction reached the CSMS before the socket closed.
    assert query(var / "edgepoint.db", "SELECT COUNT(*) FROM outbox") == [(0,)]
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as probe:
        assert probe.connect_ex(str(daemon.socket)) != 0  # control socket gone


async def test_sigterm_delivers_the_stop_and_closes_the_websocket_with_a_close_frame(
    tmp_path: Path,
) -> None:
    limit = seconds(one("Service", "TimeoutStopSec"))
    async with ScriptedCsms() as csms:
        async with running(scenario_config(tmp_path, csms)) as kiosk:
            await kiosk.wait_for("online", lambda s: s["links"]["csms"]["state"] == "online")
            await kiosk.wait_for("telemetry", lambda s: s["connector"]["last_sample"] is not None)
            await kiosk.present(CARD)
            await kiosk.wait_for("charging", lambda s: s["connector"]["relay_closed"] is True)
            # systemctl stop; in a thread: the CSMS answers on this event loop meanwhile.
            code, took = await asyncio.to_thread(kiosk.daemon.stop, signal.SIGTERM, limit)
        assert code == 0, kiosk.daemon.tail()
        assert took < limit / 2, f"stopped in {took:.1f} s; TimeoutStopSec={limit:g}"
        [stop] = csms.calls("StopTransaction")
        assert stop.payload["reason"] == "Reboot"
        # The last thing on the wire: a close frame (1000), not a dropped TCP connection.
        await csms.wait_for("the connection to end", lambda: bool(csms.closes))
        assert csms.closes == [(1000, "charge point shutting down")]
        assert csms.violations == []
