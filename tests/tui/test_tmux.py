"""The real `edgepoint tui` in a real terminal (tmux, 80x24, TERM=screen: 8/16 colours).

A card tapped at the kiosk shows up on the technician's screen as Charging with the masked
card and rising energy. A frozen TUI (Ctrl-Z: SIGSTOP) and a client that stops reading do
not delay a tap: the daemon never waits on a client, and drops them once they fall behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli, write_config
from tui_support import present, wait_away

from edgepoint.control.client import request

CARD = "04A1B2C3"
MASKED = "****B2C3"

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux missing (scripts/bootstrap --test installs it)"
)


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Daemon]:
    config = write_config(tmp_path)
    cli(config, "cards", "add", CARD, "--name", "Alice")
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


class Terminal:
    """One tmux session of 80x24 running a command; its screen read with capture-pane."""

    def __init__(self, name: str, command: list[str], socket_dir: Path) -> None:
        # A tmux server of our own (-S), so tests never touch a user's sessions.
        self.tmux = ["tmux", "-S", str(socket_dir / "tmux.sock")]
        self.name = name
        subprocess.run(
            [
                *self.tmux,
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "80",
                "-y",
                "24",
                "env",
                "TERM=screen",
                *command,
            ],
            check=True,
        )
        panes = subprocess.run(
            [*self.tmux, "list-panes", "-t", name, "-F", "#{pane_pid}"],
            check=True,
            capture_output=True,
            text=True,
        )
        self.pid = int(panes.stdout.split()[0])

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def child(self, marker: str) -> int:
        """The pid of the pane process's child whose command line has `marker`."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == self.pid and marker in (entry / "cmdline").read_text():
                    return int(entry.name)
        raise AssertionError(f"no child of {self.pid} runs {marker}")

    def screen(self) -> str:
        result = subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
        )
        return result.stdout

    def wait(self, check: Callable[[str], bool], what: str, within_s: float = 15) -> str:
        deadline = time.monotonic() + within_s
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"not on the terminal within {within_s} s: {what}\n{screen}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@contextlib.contextmanager
def tui_in_tmux(daemon: Daemon, tmp_path: Path) -> Iterator[Terminal]:
    command = [sys.executable, "-m", "edgepoint.cli", "tui", "--config", str(daemon.config)]
    terminal = Terminal(f"ep-tui-{os.getpid()}", command, tmp_path)
    try:
        yield terminal
    finally:
        terminal.close()


def energy_kwh(screen: str) -> float:
    match = re.search(r"energy (\d+\.\d+) kWh", screen)
    assert match, screen
    return float(match.group(1))


def test_a_tap_shows_charging_the_masked_card_and_rising_energy(
    station: Daemon, tmp_path: Path
) -> None:
    with tui_in_tmux(station, tmp_path) as terminal:
        terminal.wait(lambda s: "Available" in s and "PN532" in s, "the overview")
        asyncio.run(present(station.socket, CARD))
        first = terminal.wait(lambda s: "Charging" in s and MASKED in s, "Charging")
        later = terminal.wait(lambda s: energy_kwh(s) > energy_kwh(first), "energy rising", 5)
        assert re.search(r"1 Charging\s+relay closed\s+card \*\*\*\*B2C3", later)
        assert CARD not in later
        lines = later.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "q Quit" in lines[-1]  # the footer's key bindings


def _frozen_watcher(path: Path) -> socket.socket:
    """A client that asks for every status and then reads nothing."""
    client = socket.socket(socket.AF_UNIX)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(str(path))
    client.sendall(json.dumps({"v": 1, "id": 1, "cmd": "watch", "args": {}}).encode() + b"\n")
    return client


def _state(pid: int) -> str:
    """The kernel's run state of a process: R, S, T (stopped)..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_frozen_tui_and_a_stalled_client_do_not_delay_a_tap(
    station: Daemon, tmp_path: Path
) -> None:
    # A shell in the terminal, as over SSH, so that Ctrl-Z stops the TUI as a job (tmux
    # would resume a pane's own process if it were stopped).
    shell = ["bash", "--norc", "--noprofile", "-i"]
    terminal = Terminal(f"ep-tui-z-{os.getpid()}", shell, tmp_path)
    try:
        terminal.keys(f"{sys.executable} -m edgepoint.cli tui --config {station.config}", "Enter")
        terminal.wait(lambda s: "PN532" in s, "the overview")
        tui = terminal.child("edgepoint.cli")
        terminal.keys("C-z")
        terminal.wait(lambda s: _state(tui) == "T", "the TUI stopped (Ctrl-Z)", 5)
        stalled = _frozen_watcher(station.socket)
        try:
            # Until the daemon gives up on both (its buffers full, then 5 s without a
            # read), every tap must be handled as fast as with nobody watching.
            slowest = 0.0
            taps = 0
            deadline = time.monotonic() + 40
            while station.log.read_text().count("control: dropped") < 2:
                assert time.monotonic() < deadline, station.tail(400)
                expected = "Available" if taps % 2 else "Charging"
                before = station.status()["rfid"]["published"]
                tapped = time.monotonic()
                asyncio.run(request(station.socket, "tap", uid=CARD))
                station.wait_for(expected, lambda s, e=expected: s["connector"]["status"] == e)
                slowest = max(slowest, time.monotonic() - tapped)
                asyncio.run(wait_away(station.socket, before))
                taps += 1
            assert _state(tui) == "T"  # frozen all along
            assert slowest < 2.0, f"a tap took {slowest:.2f} s with a frozen client"
        finally:
            stalled.close()
        # fg: the TUI finds its connection gone and connects again by itself.
        terminal.keys("fg", "Enter")
        expected = "Available" if taps % 2 == 0 else "Charging"
        terminal.wait(lambda s: f"1 {expected}" in s and "PN532" in s, f"{expected} again")
        print(f"\n{taps} taps with a frozen TUI and a stalled client; slowest {slowest:.3f} s")
    finally:
        terminal.close()
