"""Measure the technician's TUI: start time, memory and CPU against a running daemon.

A simulated `edgepoint run` is started; then the real `edgepoint tui` runs in a tmux
terminal of 80x24 (TERM=screen), several times. Printed:
- start time: process spawn until the screen shows the overview filled from the daemon
  (a connector's state and the PN532 link), median and worst of the runs; and until the
  first frame (the top bar) is drawn;
- memory of the last run after it followed a charging session (statuses 10 a second,
  plots filling) for --seconds: RSS now (VmRSS) and its peak (VmHWM);
- CPU of the TUI over that window, in % of one core (utime + stime from /proc).

Usage: scripts/bench-tui [--runs 5] [--seconds 20]   (needs tmux)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgepoint.control.client import request

TICKS = os.sysconf("SC_CLK_TCK")
CARD = "04A1B2C3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> Path:
    port = free_port()
    text = f"""
[station]
id = "EP-BENCH-TUI"
[chargepoint]
csms_url = "ws://127.0.0.1:{port}/ocpp"
[csms]
port = {port}
[storage]
dir = "var"
[simulation]
charge_power_w = 36000
telemetry_interval_s = 0.1
[safety]
# 36 kW on the single-phase simulated meter is 157 A, over a real kiosk's limit.
max_current_a = 1000
[control]
socket = "var/edgepoint.sock"
[log]
level = "INFO"
[ocpp]
MeterValueSampleInterval = 1
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


def edgepoint(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgepoint.cli", *args, "--config", str(config)]


def proc_status(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class Tmux:
    """A tmux server of our own (its socket in the bench folder)."""

    def __init__(self, folder: Path) -> None:
        self.base = ["tmux", "-S", str(folder / "tmux.sock")]
        # A session that keeps the server up, so a run's time is the TUI's, not tmux's.
        self.run("new-session", "-d", "-s", "keep", "-x", "80", "-y", "24", "sleep", "3600")

    def run(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], check=True, capture_output=True, text=True
        ).stdout

    def start(self, name: str, command: list[str]) -> int:
        self.run(
            "new-session", "-d", "-s", name, "-x", "80", "-y", "24", "env", "TERM=screen", *command
        )
        return int(self.run("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0])

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def wait_daemon(path: Path, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            status = asyncio.run(request(path, "status", answer_within_s=2))
            if status["connector"]["status"] == "Available":
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon did not start")


def one_start(tmux: Tmux, name: str, command: list[str]) -> tuple[int, float, float]:
    """(pid, seconds to the first frame, seconds to the filled overview)."""
    started = time.monotonic()
    pid = tmux.start(name, command)
    first = None
    deadline = started + 60
    while time.monotonic() < deadline:
        screen = tmux.screen(name)
        if first is None and "edgepoint" in screen:
            first = time.monotonic() - started
        if "PN532" in screen and "Available" in screen:
            return pid, first or 0.0, time.monotonic() - started
        time.sleep(0.01)
    raise SystemExit(f"the TUI did not show the overview:\n{tmux.screen(name)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed (apt-get install tmux)")
    folder = Path(tempfile.mkdtemp(prefix="ep-bench-tui-"))
    config = write_config(folder)
    sock = folder / "var" / "edgepoint.sock"
    log = (folder / "daemon.log").open("wb")
    daemon = subprocess.Popen(edgepoint(config, "run"), stdout=log, stderr=log)
    tmux = Tmux(folder)
    try:
        subprocess.run(edgepoint(config, "cards", "add", CARD), check=True, capture_output=True)
        wait_daemon(sock)
        firsts, starts = [], []
        pid = 0
        for run in range(args.runs):
            pid, first, start = one_start(tmux, f"tui{run}", edgepoint(config, "tui"))
            firsts.append(first)
            starts.append(start)
            if run < args.runs - 1:
                tmux.run("kill-session", "-t", f"tui{run}")
        # The last one follows a charging session for a while.
        asyncio.run(request(sock, "tap", uid=CARD))
        time.sleep(2)  # into Charging
        cpu_before, at = cpu_s(pid), time.monotonic()
        time.sleep(args.seconds)
        cpu = (cpu_s(pid) - cpu_before) / (time.monotonic() - at)
        screen = tmux.screen(f"tui{args.runs - 1}")
        print(f"TUI start (spawn to first frame): median {statistics.median(firsts):.2f} s")
        print(
            f"TUI start (spawn to filled overview): median {statistics.median(starts):.2f} s,"
            f" worst {max(starts):.2f} s over {args.runs} runs"
        )
        print(
            f"TUI memory after {args.seconds:g} s of a charging session:"
            f" RSS {proc_status(pid, 'VmRSS') / 1024:.1f} MiB,"
            f" peak {proc_status(pid, 'VmHWM') / 1024:.1f} MiB"
        )
        print(f"TUI CPU while following 10 statuses/s: {100 * cpu:.1f} % of one core")
        if "Charging" not in screen:
            print("warning: the screen did not show Charging:\n" + screen, file=sys.stderr)
    finally:
        tmux.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
