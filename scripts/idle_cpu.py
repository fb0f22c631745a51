"""Measure the idle CPU of a simulated `edgepoint run` and print it as % of one core.

The daemon runs with its usual simulated devices: the emulated PN532 polled for
cards (no IRQ line, unless --irq), the emulated ESP32 sending a frame a second
and answering the kiosk's watchdog pings, the embedded CSMS (in a child process
or not: children are counted) and the charge point's link to it. Once it is up
and has settled, the time each of its threads spent on a CPU is read at the
start and the end of the window; nothing talks to the daemon in between. The
times come from /proc/<pid>/task/*/schedstat (exact nanoseconds from the
scheduler); utime + stime in /proc/<pid>/stat are sampled at each 10 ms clock
tick, too coarse for a process that wakes briefly and often, and are the
fallback where schedstat is missing. Each thread's wake-ups per second are
printed too: on a virtual machine a wake-up costs a few hundred microseconds,
so they, more than the work done, make the idle cost. So is the steal time of
the window (/proc/stat), and a calibration: what a bare loop of time.sleep(0.1)
costs on this machine right after the window. The price of a wake-up on a
virtual machine varies several-fold with the host's state, so compare runs made
side by side, or in units of the calibration loop.

Usage: scripts/idle-cpu [--seconds 30] [--settle 5] [--irq] [--root CHECKOUT]
(--root measures another checkout's daemon with this script, e.g. the previous
commit unpacked with `git archive`, for a before/after comparison.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgepoint.control.client import request

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, irq: bool, poll_s: float | None) -> Path:
    port = free_port()
    # The shipped defaults otherwise (1 s telemetry frames, 10 s MeterValues), so the
    # number is the kiosk's at rest; keys every version of the daemon knows.
    text = f"""
[station]
id = "EP-IDLE-1"
[chargepoint]
csms_url = "ws://127.0.0.1:{port}/ocpp"
[csms]
port = {port}
[storage]
dir = "var"
[control]
socket = "var/edgepoint.sock"
[log]
level = "WARNING"
"""
    if irq or poll_s is not None:
        text += "[rfid]\n"
    if irq:
        text += "irq_pin = 16\n"
    if poll_s is not None:
        text += f"poll_interval_s = {poll_s}\nremoval_s = {max(1.0, 3 * poll_s)}\n"
    path = folder / "config.toml"
    path.write_text(text)
    return path


def cpu_times() -> tuple[int, int]:
    """(all, steal) jiffies of the machine so far, from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), steal


def calibrate(wakes: int = 50) -> float:
    """% of one core that a bare time.sleep(0.1) loop costs now (this thread, schedstat)."""
    path = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
    if not path.exists():
        return float("nan")
    before, started = int(path.read_text().split()[0]), time.monotonic()
    for _ in range(wakes):
        time.sleep(0.1)
    return (int(path.read_text().split()[0]) - before) / 1e9 / (time.monotonic() - started) * 100


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the daemon may run the embedded CSMS as a child)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                found += process_tree(int(child))
    return found


def cpu_seconds(pid: int) -> dict[str, tuple[float, int]]:
    """(seconds on a CPU, times scheduled in) of every thread of the daemon and its children."""
    threads: dict[str, tuple[float, int]] = {}
    for process in process_tree(pid):
        prefix = "" if process == pid else f"child {process}: "
        threads.update({prefix + name: value for name, value in _threads(process).items()})
    return threads


def _threads(pid: int) -> dict[str, tuple[float, int]]:
    threads: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _task_seconds(task)
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            name = "?"
        threads["main" if task.name == str(pid) else f"{name} ({task.name})"] = seconds
    return threads


def _task_seconds(task: Path) -> tuple[float, int]:
    schedstat = task / "schedstat"
    if schedstat.exists():
        on_cpu, _, slices = schedstat.read_text().split()[:3]
        return int(on_cpu) / 1e9, int(slices)
    text = (task / "stat").read_text()
    # The name sits in parentheses and may hold spaces; the fields follow it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS, 0


async def wait_ready(sock: Path, proc: subprocess.Popen[bytes], within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            status = await request(sock, "status")
            if (
                status["connector"]["status"] == "Available"
                and status["links"]["csms"]["state"] == "online"
                and status["telemetry"]["last"] is not None
            ):
                return status
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("daemon did not become ready")


def measure(
    root: Path, seconds: float, settle: float, irq: bool, poll_s: float | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgepoint-idle-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, irq, poll_s)
        sock = folder / "var" / "edgepoint.sock"
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgepoint.cli", "run", "--config", str(config)],
            cwd=root,
            env=env,
        )
        try:
            asyncio.run(wait_ready(sock, proc))
            time.sleep(settle)  # start-up work (boot, first status, migrations) is over
            threads_before, machine_before = cpu_seconds(proc.pid), cpu_times()
            started = time.monotonic()
            time.sleep(seconds)
            wall = time.monotonic() - started
            threads_after, machine_after = cpu_seconds(proc.pid), cpu_times()
            status = asyncio.run(request(sock, "status"))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    per_thread = {
        name: (
            (after[0] - threads_before.get(name, (0.0, 0))[0]) / wall * 100,
            (after[1] - threads_before.get(name, (0.0, 0))[1]) / wall,
        )
        for name, after in threads_after.items()
    }
    # Threads that ended during the window are lost; a daemon at rest keeps its threads.
    return {
        "percent": sum(percent for percent, _ in per_thread.values()),
        "steal": (machine_after[1] - machine_before[1])
        / max(1, machine_after[0] - machine_before[0])
        * 100,
        "wall": wall,
        "threads": per_thread,
        "rfid": status.get("rfid", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window (30)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait after ready (5)")
    parser.add_argument("--irq", action="store_true", help="wire the PN532's IRQ line")
    parser.add_argument("--poll", type=float, help="rfid.poll_interval_s (default: the config's)")
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to run"
    )
    args = parser.parse_args()
    result = measure(args.root.resolve(), args.seconds, args.settle, args.irq, args.poll)
    loop = calibrate()
    mode = "IRQ line" if args.irq else "polled"
    print(f"daemon: {args.root.resolve()}  (simulated, reader {mode})")
    print(
        f"idle CPU: {result['percent']:.2f} % of one core over {result['wall']:.0f} s"
        f" ({os.cpu_count()} cores; host steal {result['steal']:.1f} % of the machine)"
    )
    print(
        f"calibration: a bare 10 Hz time.sleep loop costs {loop:.2f} % here now:"
        f" the daemon idles at {result['percent'] / loop:.1f} such loops"
    )
    busy = sorted(result["threads"].items(), key=lambda item: -item[1][0])
    for name, (percent, wakes) in busy:
        if percent >= 0.01:
            print(f"  {name:<24} {percent:6.2f} %  {wakes:6.1f} wake-ups/s")
    rfid = result["rfid"]
    if "probes" in rfid:
        print(
            f"reader: {rfid['probes']} status reads, {rfid['arms']} listen commands,"
            f" {rfid['health_checks']} health checks since start"
        )
    elif "polls" in rfid:
        print(f"reader: {rfid['polls']} polls since start")


if __name__ == "__main__":
    main()
