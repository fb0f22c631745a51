"""sd_notify: the daemon tells systemd it is ready, alive and stopping."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon

from edgepoint import systemd


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
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


def test_daemon_reports_ready_watchdog_and_stopping(
    daemon: Daemon, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages = [sock.recv(256).decode()]
    assert messages[0].startswith("READY=1")
    assert "EP-TEST-1" in messages[0]
    daemon.wait_ready()
    # WatchdogSec=0.4 s: pings every 0.2 s while the loop is alive.
    assert sock.recv(256) == b"WATCHDOG=1"
    code, _ = daemon.stop()
    assert code == 0
    rest = []
    sock.settimeout(1)
    try:
        while True:
            rest.append(sock.recv(256).decode())
    except TimeoutError:
        pass
    assert "STOPPING=1" in rest
