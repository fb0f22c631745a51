"""A real `edgepoint run` subprocess on a temp config, its CLI, and ways to look at it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepoint.control.client import request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, **overrides: Any) -> Path:
    """A fast simulated configuration in `folder`; `section__key=value` overrides."""
    values: dict[str, dict[str, Any]] = {
        "station": {"id": "EP-TEST-1"},
        "chargepoint": {
            "csms_url": "",
            "response_timeout": 5,
            "reconnect_max_s": 1,
        },
        "csms": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "storage": {"dir": "var"},
        "hardware": {"simulate": True, "telemetry_timeout_s": 3},
        # 36 kW: the register rises 1 Wh every 0.1 s, so a short test sees real energy.
        "simulation": {"charge_power_w": 36000, "telemetry_interval_s": 0.1},
        # 36 kW on the single-phase simulated meter is 157 A: above a real kiosk's limit.
        "safety": {"max_current_a": 1000},
        # A quick reader: taps are seen within 50 ms, and a card away for 0.2 s (not the
        # shipped 1 s) taps again, so tests can tap the same card in quick succession.
        "rfid": {"poll_interval_s": 0.05, "removal_s": 0.2},
        "control": {"socket": "var/edgepoint.sock"},
        "log": {"level": "INFO"},
        "ocpp": {"MeterValueSampleInterval": 1},
        # A test machine's clock is right, but a container has no NTP state to say so
        # (tests/test_timesync.py covers the unsynchronised clock).
        "clock": {"trust_rtc": True},
    }
    values["chargepoint"]["csms_url"] = f"ws://127.0.0.1:{values['csms']['port']}/ocpp"
    for key, value in overrides.items():
        section, name = key.split("__")
        values.setdefault(section, {})[name] = value
    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `edgepoint ARGS --config CONFIG` as a separate process."""
    command = [sys.executable, "-m", "edgepoint.cli", *args, "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}): {result.stderr}")
    return result


class Daemon:
    """A running `edgepoint run` and ways to look at it."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.socket = config.parent / "var" / "edgepoint.sock"
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgepoint.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        return self

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = asyncio.run(request(self.socket, "status"))
        return result

    def wait_for(
        self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                last = self.status()
                if predicate(last):
                    return last
            except Exception as err:  # not up yet
                last = repr(err)
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.tail()}")

    def wait_ready(self) -> dict[str, Any]:
        return self.wait_for(
            "online, Available, with telemetry",
            lambda s: (
                s["links"]["csms"]["state"] == "online"
                and s["connector"]["status"] == "Available"
                and s["telemetry"]["last"] is not None
            ),
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Signal the daemon; return its exit code and how long it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "daemon log:\n" + "\n".join(text.splitlines()[-lines:])


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read a database file with a separate connection: what is committed, not cached."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def register(status: dict[str, Any]) -> int:
    """The ESP32 energy register (Wh) in a daemon status."""
    return int(status["telemetry"]["last"]["energy_wh"])
