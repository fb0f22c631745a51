"""Benchmark the cloud ledger and the Firebase sync, and print the numbers.

Measures:
- append+sign: sessions committed offline (start and stop each), then the time the
  recorder takes to turn them into chained, signed entries (SQLite fsync'd commits);
- upload after a long offline period: that backlog drained to a real Realtime Database
  server (firebase-server over HTTP, batches of 100) and to an HTTPS ledger endpoint
  (the tests' reference server, TLS, batches of 100), entries per second;
- the daemon's peak RSS (VmHWM) with Firebase and the ledger on, after a session,
  beside the same daemon with both off.

Usage: scripts/bench-ledger [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "cloud"))

from cloud_support import T0, TestClock, open_store  # noqa: E402
from daemon_harness import Daemon, cli, write_config  # noqa: E402
from support.firebase_server import NAMESPACE, FirebaseServer  # noqa: E402
from support.ledger_endpoint import LedgerEndpoint  # noqa: E402
from support.tls import server_ssl_context, write_tls_files  # noqa: E402

from edgepoint.charging.events import IdTag, SessionId  # noqa: E402
from edgepoint.clock import SystemClock  # noqa: E402
from edgepoint.cloud.endpoint import HttpLedgerSink  # noqa: E402
from edgepoint.cloud.health import Health  # noqa: E402
from edgepoint.cloud.ledger import LedgerRecorder  # noqa: E402
from edgepoint.cloud.rtdb import EMULATOR_ENV, Rtdb  # noqa: E402
from edgepoint.cloud.signing import LedgerKey  # noqa: E402
from edgepoint.cloud.upload import LedgerUploader, RtdbLedgerSink  # noqa: E402
from edgepoint.storage.ledger import LedgerStore  # noqa: E402


async def ledger_numbers(folder: Path, sessions: int) -> dict[str, Any]:
    store = await open_store(folder / "edgepoint.db")
    try:
        # The kiosk's writes while offline: one transaction per start and per stop.
        began = time.perf_counter()
        for n in range(sessions):
            async with store.change() as change:
                await change.begin_session(SessionId(f"s-{n}"), 1, IdTag("04A1B2C3"), 10 * n, T0)
            async with store.change() as change:
                await change.end_session(SessionId(f"s-{n}"), None, 10 * n + 5, "Local", T0)
        kiosk_s = time.perf_counter() - began
        ledger = LedgerStore(store.db)
        recorder = LedgerRecorder(ledger, LedgerKey.generate(), "EP-BENCH-1", TestClock())
        began = time.perf_counter()
        appended = await recorder.record_pending()
        append_s = time.perf_counter() - began
        assert appended == 2 * sessions, appended

        server = FirebaseServer().start()
        executor = ThreadPoolExecutor(4)
        tls = write_tls_files(folder / "tls")
        endpoint = LedgerEndpoint(server_ssl_context(tls), "bench").start()
        token = folder / "token"
        token.write_text("bench")
        os.chmod(token, 0o600)
        os.environ[EMULATOR_ENV] = server.host
        rtdb = Rtdb(f"https://{NAMESPACE}.firebaseio.com", None, "EP-BENCH-1", 30, executor)
        try:
            rates = {}
            for sink in (
                RtdbLedgerSink(rtdb, "EP-BENCH-1"),
                HttpLedgerSink(endpoint.url, token, "EP-BENCH-1", 30, executor, tls.ca_cert),
            ):
                uploader = LedgerUploader(sink, ledger, Health(SystemClock()), 100)
                began = time.perf_counter()
                task = asyncio.create_task(uploader.run())
                while uploader.stats().acked_seq < appended:
                    await asyncio.sleep(0.01)
                    assert not task.done(), task
                rates[sink.name] = time.perf_counter() - began
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            held = len(server.get("ledger/EP-BENCH-1") or {})
            assert held == appended and endpoint.acked("EP-BENCH-1") == appended
        finally:
            rtdb.close()
            endpoint.stop()
            server.stop()
            executor.shutdown(wait=False)
    finally:
        await store.close()
    return {
        "entries": appended,
        "kiosk_commits_per_s": round(2 * sessions / kiosk_s),
        "append_sign_per_s": round(appended / append_s),
        "upload_rtdb_per_s": round(appended / rates["rtdb"]),
        "upload_endpoint_per_s": round(appended / rates["endpoint"]),
        "upload_rtdb_s": round(rates["rtdb"], 2),
        "upload_endpoint_s": round(rates["endpoint"], 2),
    }


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def daemon_rss(folder: Path, firebase: bool) -> float:
    folder.mkdir()
    server = FirebaseServer().start() if firebase else None
    extra: dict[str, Any] = {"ledger__enabled": firebase}
    env = {}
    if server is not None:
        extra |= {
            "firebase__enabled": True,
            "firebase__database_url": f"https://{NAMESPACE}.firebaseio.com",
            "firebase__publish_interval_s": 1.0,
        }
        env = {EMULATOR_ENV: server.host}
        os.environ[EMULATOR_ENV] = server.host
    config = write_config(folder, **extra)
    cli(config, "cards", "add", "04A1B2C3")
    daemon = Daemon(config).start(env=env)
    try:
        daemon.wait_ready()
        cli(config, "sim", "tap", "04A1B2C3")
        daemon.wait_for(
            "energy", lambda s: (s["connector"]["session"] or {}).get("energy_wh", 0) > 20
        )
        cli(config, "sim", "tap", "04A1B2C3")
        daemon.wait_for("available", lambda s: s["connector"]["status"] == "Available")
        if firebase:
            daemon.wait_for(
                "ledger uploaded",
                lambda s: s["cloud"]["ledger"]["sinks"]["rtdb"]["acked_seq"] == 2,
            )
        time.sleep(2)
        assert daemon.proc is not None
        return peak_rss_mib(daemon.proc.pid)
    finally:
        daemon.kill()
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000, help="sessions committed offline")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon RSS runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(json.dumps(asyncio.run(ledger_numbers(folder, args.sessions)), indent=2), flush=True)
        if not args.no_daemon:
            rss = {
                "daemon_peak_rss_mib_cloud_off": daemon_rss(folder / "off", firebase=False),
                "daemon_peak_rss_mib_cloud_on": daemon_rss(folder / "on", firebase=True),
            }
            print(json.dumps(rss, indent=2))


if __name__ == "__main__":
    main()
