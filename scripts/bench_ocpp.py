"""Benchmark the charge point's OCPP behaviour against a scripted central system.

Prints, for a real `edgepoint run` subprocess on simulated hardware:
- tap-to-decision latency (card presented until the relay closes) with the CSMS online
  and answering at once, with a slow CSMS (Authorize answered after 10 s: the deadline
  `chargepoint.authorize_timeout_s` and the offline rules decide), and offline (CSMS
  unreachable, the card in the local list);
- the drain time of a backlog of N queued messages after an outage, against N times
  the round-trip time of one CALL measured on the same connection, and the commit
  window (reply received -> row deleted) the daemon measured while draining.

The central system is the test suite's ScriptedCsms (tests/support/scripted_csms.py).
Usage: scripts/bench-ocpp [--taps N] [--backlog N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench import percentile, until, wait_socket
from support.scripted_csms import ScriptedCsms

from edgepoint.chargepoint import messages
from edgepoint.charging.events import IdTag, SessionId, TelemetrySample
from edgepoint.control.client import request
from edgepoint.storage.chargepoint import ChargePointStore

CARD = "04A1B2C3"


def write_config(folder: Path, csms_url: str, extra_ocpp: str = "") -> Path:
    text = f"""
[station]
id = "EP-BENCH-OCPP"
[chargepoint]
csms_url = "{csms_url}"
response_timeout = 30
reconnect_max_s = 1
authorize_timeout_s = 3
[csms]
enabled = false
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
MeterValueSampleInterval = 60
{extra_ocpp}
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


async def tap_until_relay(sock: Path, closed: bool) -> float:
    t0 = time.perf_counter()
    waiting = asyncio.create_task(until(sock, lambda s: s["connector"]["relay_closed"] is closed))
    await asyncio.sleep(0)
    await request(sock, "tap", uid=CARD)
    await waiting
    return time.perf_counter() - t0


async def sessions(sock: Path, taps: int) -> list[float]:
    """Tap on, measure; tap off; let the emulated card leave the field between taps."""
    decided = []
    for _ in range(taps):
        decided.append(await tap_until_relay(sock, True))
        await asyncio.sleep(0.8)
        await tap_until_relay(sock, False)
        await until(sock, lambda s: s["connector"]["phase"] == "Available")
        await asyncio.sleep(0.8)
    return decided


def start_daemon(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgepoint.cli", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def send_local_list(csms: ScriptedCsms) -> None:
    await csms.call(
        "SendLocalList",
        {
            "listVersion": 1,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": CARD, "idTagInfo": {"status": "Accepted"}}],
        },
    )


async def tap_latencies(taps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgepoint-bench-") as tmp:
        folder = Path(tmp)
        async with ScriptedCsms() as csms:
            config = write_config(folder, csms.url)
            sock = folder / "var" / "edgepoint.sock"
            proc = start_daemon(config)
            try:
                await wait_socket(sock, proc)
                await until(
                    sock,
                    lambda s: (
                        s["links"]["csms"]["state"] == "online"
                        and s["connector"]["last_sample"] is not None
                    ),
                )
                await send_local_list(csms)
                results["online"] = summary(await sessions(sock, taps))

                async def slow(_: Any) -> dict[str, Any]:
                    await asyncio.sleep(10)
                    return {"idTagInfo": {"status": "Accepted"}}

                csms.responders["Authorize"] = slow
                results["slow_csms_10s"] = summary(await sessions(sock, max(3, taps // 10)))
                del csms.responders["Authorize"]
            finally:
                stop_daemon(proc)
        # The CSMS is gone: the local list (sent above, persisted) decides at once.
        proc = start_daemon(config)
        try:
            await wait_socket(sock, proc)
            await until(sock, lambda s: s["connector"]["last_sample"] is not None)
            results["offline_local_list"] = summary(await sessions(sock, taps))
        finally:
            stop_daemon(proc)
    return results


async def fill_backlog(db: Path, count: int) -> None:
    """A long outage's worth of queued messages: sessions of Start, MeterValues, Stop."""
    store = await ChargePointStore.open(db)
    now = datetime.now(UTC)
    sample = TelemetrySample(1, 100_000, 7360.0, 32.0, 230.0, 25.0)
    try:
        written = 0
        session_no = 0
        while written < count:
            sid = SessionId(f"bench-{session_no:06d}")
            session_no += 1
            async with store.change() as change:
                await change.begin_session(sid, 1, IdTag(CARD), 100_000, now)
                start = messages.start_transaction(1, IdTag(CARD), 100_000, now)
                await change.enqueue("StartTransaction", start, now, f"s{sid}", sid)
                metered = min(98, count - written - 2)
                for n in range(metered):
                    values = messages.meter_values(1, sample, now)
                    await change.enqueue("MeterValues", values, now, f"m{sid}{n}", sid)
                stop = messages.stop_transaction(IdTag(CARD), 100_100, _reason(), now)
                await change.end_session(sid, IdTag(CARD), 100_100, "Local", now)
                await change.enqueue("StopTransaction", stop, now, f"e{sid}", sid)
                written += metered + 2
    finally:
        await store.close()


def _reason() -> Any:
    from edgepoint.charging.events import StopReason

    return StopReason.LOCAL


async def drain(backlog: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgepoint-bench-") as tmp:
        folder = Path(tmp)
        async with ScriptedCsms() as csms:
            config = write_config(folder, csms.url)
            sock = folder / "var" / "edgepoint.sock"
            await fill_backlog(folder / "var" / "edgepoint.db", backlog)
            t0 = time.perf_counter()
            proc = start_daemon(config)
            try:
                await wait_socket(sock, proc)
                status = await until(
                    sock,
                    lambda s: s["outbox"]["depth"] == 0 and s["links"]["csms"]["state"] == "online",
                    timeout=600,
                )
                drained = time.perf_counter() - t0
                # Round-trip of one CALL on the same connection (CSMS -> CP -> CSMS).
                rtts = []
                for _ in range(200):
                    t = time.perf_counter()
                    await csms.call("DataTransfer", {"vendorId": "bench"})
                    rtts.append(time.perf_counter() - t)
            finally:
                stop_daemon(proc)
        delivered = len(csms.received) - len(csms.calls("BootNotification"))
        rtt = statistics.median(rtts)
        return {
            "backlog": backlog,
            "delivered_calls": delivered,
            "drain_s_from_process_start": round(drained, 2),
            "round_trip_ms_median": round(rtt * 1000, 3),
            "backlog_x_rtt_s": round(backlog * rtt, 2),
            "drain_over_backlog_x_rtt": round(drained / (backlog * rtt), 2),
            "per_message_ms": round(drained / backlog * 1000, 3),
            "commit_window_ms_p50": status["outbox"]["commit_window_ms_p50"],
            "commit_window_ms_max": status["outbox"]["commit_window_ms_max"],
            "duplicate_unique_ids": len(csms.received) - len({r.unique_id for r in csms.received}),
            "schema_violations": len(csms.violations),
        }


async def bench(taps: int, backlog: int) -> dict[str, Any]:
    return {
        "tap_to_decision": await tap_latencies(taps),
        "drain": await drain(backlog),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.taps, args.backlog)), indent=2))


if __name__ == "__main__":
    main()
