"""Benchmark the simulated kiosk against the embedded CSMS and print the numbers.

Measures, on a real `edgepoint run` subprocess:
- start-up: process spawn until the charge point is Available and online;
- tap-to-relay latency: card presented (control socket) until the status stream
  shows the relay closed, p50/p99 over many sessions;
- peak RSS of the daemon (VmHWM) over the run.

Usage: scripts/bench [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepoint.control.client import request, watch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> Path:
    port = free_port()
    text = f"""
[station]
id = "EP-BENCH-1"
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
[rfid]
# As a kiosk with the PN532's IRQ line wired: a tap is seen at once, not at the next poll.
irq_pin = 16
# The bench taps again 0.8 s after the last tap, the card away 0.5 s of it: a new tap,
# not the reader's flicker (removal_s is at least 3 poll intervals).
poll_interval_s = 0.1
removal_s = 0.4
[log]
level = "WARNING"
[ocpp]
MeterValueSampleInterval = 1
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def until(sock: Path, predicate: Any, timeout: float = 20) -> dict[str, Any]:
    async def scan() -> dict[str, Any]:
        async with contextlib.aclosing(watch(sock)) as stream:
            async for status in stream:
                if predicate(status):
                    return status
        raise RuntimeError("status stream ended")

    return await asyncio.wait_for(scan(), timeout)


async def wait_socket(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        if sock.exists():
            try:
                await request(sock, "status")
                return
            except Exception:
                pass
        await asyncio.sleep(0.01)
    raise RuntimeError("daemon did not open its control socket")


async def tap_and_wait(sock: Path, card: str, relay_closed: bool) -> float:
    """Tap, then return seconds until the status stream shows the relay in that state."""

    async def scan() -> float:
        async with contextlib.aclosing(watch(sock)) as stream:
            async for status in stream:
                if status["connector"]["relay_closed"] is relay_closed:
                    return time.perf_counter() - t0
        raise RuntimeError("status stream ended")

    stream = asyncio.create_task(scan())
    await asyncio.sleep(0.02)  # the watch is registered before the tap
    t0 = time.perf_counter()
    await request(sock, "tap", uid=card)
    return await asyncio.wait_for(stream, 10)


async def bench(sessions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgepoint-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder)
        sock = folder / "var" / "edgepoint.sock"
        card = "04A1B2C3"
        edgepoint = [sys.executable, "-m", "edgepoint.cli"]
        subprocess.run([*edgepoint, "cards", "add", card, "--config", str(config)], check=True)

        t_spawn = time.perf_counter()
        proc = subprocess.Popen([*edgepoint, "run", "--config", str(config)])
        try:
            await wait_socket(sock, proc)
            await until(
                sock,
                lambda s: (
                    s["connector"]["status"] == "Available"
                    and s["links"]["csms"]["state"] == "online"
                    and s["telemetry"]["last"] is not None
                ),
            )
            startup = time.perf_counter() - t_spawn

            latencies: list[float] = []
            for _ in range(sessions):
                # The emulated card dwells in the field for 0.3 s; a tap while it is
                # still there is the same presentation (debounced): leave it off the reader a while.
                latencies.append(await tap_and_wait(sock, card, relay_closed=True))
                await asyncio.sleep(0.8)
                await tap_and_wait(sock, card, relay_closed=False)
                await until(sock, lambda s: s["connector"]["phase"] == "Available")
                await asyncio.sleep(0.8)
            rss = peak_rss_kib(proc.pid)
            status = await request(sock, "status")
        finally:
            proc.send_signal(signal.SIGTERM)
            t_stop = time.perf_counter()
            code = proc.wait(timeout=10)
            shutdown = time.perf_counter() - t_stop
    ms = [v * 1000 for v in latencies]
    return {
        "sessions": sessions,
        "startup_to_available_s": round(startup, 3),
        "tap_to_relay_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p99": round(percentile(ms, 99), 1),
            "mean": round(statistics.fmean(ms), 1),
            "max": round(max(ms), 1),
        },
        "daemon_peak_rss_mib": round(rss / 1024, 1),
        "shutdown_s": round(shutdown, 3),
        "exit_code": code,
        "outbox_depth_at_end": status["outbox"]["depth"],
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.sessions)), indent=2))


if __name__ == "__main__":
    main()
