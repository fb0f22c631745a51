"""The daemon with Firebase and the ledger on, against a real Realtime Database server.

A driver page's JS SDK listener sees a session; the ledger reaches RTDB and an HTTPS
endpoint once each; `edgepoint ledger pubkey/verify/export` agree with what was
published; kill -9 with the cloud unreachable loses and doubles nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, cli, write_config
from support.fault_proxy import FaultProxy
from support.firebase_server import NAMESPACE, FirebaseServer, firebase_server, js_listener
from support.ledger_endpoint import LedgerEndpoint
from support.tls import TlsFiles, server_ssl_context

from edgepoint.cloud.stationkey import station_key
from edgepoint.cloud.upload import seq_key
from edgepoint.storage.chargepoint import MIGRATIONS
from edgepoint.storage.cloud_schema import CLOUD_SCHEMA

__all__ = ["firebase_server"]

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        CLOUD_SCHEMA not in MIGRATIONS,
        reason="CLOUD_SCHEMA is not in storage/chargepoint.py MIGRATIONS yet (the lead appends it)",
    ),
]

STATION = "EP.TEST-1"  # a '.' that Realtime Database keys forbid
KEY = station_key(STATION)
CARD = "04A1B2C3"


def cloud_config(folder: Path, emulator_port: int, **extra: Any) -> Path:
    return write_config(
        folder,
        station__id=STATION,
        firebase__enabled=True,
        firebase__database_url=f"https://{NAMESPACE}.firebaseio.com",
        firebase__publish_interval_s=0.5,
        firebase__finished_hold_s=1.0,
        firebase__cards_poll_interval_s=1.0,
        **extra,
    )


async def acli(config: Path, *args: str, check: bool = True) -> Any:
    return await asyncio.to_thread(cli, config, *args, check=check)


def emulator(port: int) -> dict[str, str]:
    return {"FIREBASE_DATABASE_EMULATOR_HOST": f"127.0.0.1:{port}"}


@pytest.fixture(autouse=True)
def _emulator_for_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI checks [firebase] too: without credentials it needs the emulator variable.
    monkeypatch.setenv("FIREBASE_DATABASE_EMULATOR_HOST", "127.0.0.1:9")


async def test_a_session_in_firebase_and_in_the_ledger(
    firebase_server: FirebaseServer, tmp_path: Path
) -> None:
    config = cloud_config(tmp_path, firebase_server.port)
    firebase_server.put("fleet/cards", {CARD: {"status": "Accepted", "name": "Alice"}})
    daemon = Daemon(config).start(env=emulator(firebase_server.port))
    try:
        await asyncio.to_thread(daemon.wait_ready)
        # The fleet's card reached the embedded CSMS: no `cards add` on this kiosk.
        await asyncio.to_thread(
            daemon.wait_for, "fleet cards", lambda s: s["cloud"]["cards"]["polls"] >= 1
        )
        async with js_listener(firebase_server, f"chargers/{KEY}") as page:
            await page.wait_for("STANDBY", lambda v: v[-1] and v[-1]["status"] == "STANDBY")
            await acli(config, "sim", "tap", CARD)
            seen = await page.wait_for("CHARGING", lambda v: v[-1]["status"] == "CHARGING")
            doc = seen[-1]
            assert (doc["uid"], doc["username"]) == ("****B2C3", "User B2C3")
            assert doc["station_id"] == STATION and doc["connectors"]["connector_1"]
            # Some energy, and the card's first presentation long over.
            await page.wait_for("energy", lambda v: v[-1]["energy_wh"] >= 10)
            assert seen[-1]["power"].endswith(" kW") and seen[-1]["energy"].endswith(" kWh")
            await acli(config, "sim", "tap", CARD)
            await page.wait_for("FINISHED", lambda v: v[-1]["status"] == "FINISHED")
            await page.wait_for("STANDBY", lambda v: v[-1]["status"] == "STANDBY")
            assert CARD not in json.dumps(page.values)

        held = await firebase_server.wait_for(
            "two ledger entries", lambda v: v and len(v) == 2, f"ledger/{KEY}"
        )
        assert sorted(held) == [seq_key(1), seq_key(2)]
        assert [held[k]["kind"] for k in sorted(held)] == ["start", "stop"]
        stop = held[seq_key(2)]
        assert stop["energy_wh"] == stop["meter_stop_wh"] - stop["meter_start_wh"] > 0
        status = await asyncio.to_thread(daemon.status)
        ledger = status["cloud"]["ledger"]
        assert (ledger["entries"], ledger["sinks"]["rtdb"]["acked_seq"]) == (2, 2)
        assert status["cloud"]["faults"] == []
        assert status["cloud"]["firebase"]["state"] == "ok"

        pubkey = (await acli(config, "ledger", "pubkey")).stdout.strip()
        assert firebase_server.get(f"stations/{KEY}/pubkey") == pubkey
        verified = await acli(config, "ledger", "verify")
        assert "2 entries" in verified.stdout
        exported = (await acli(config, "ledger", "export")).stdout.splitlines()
        assert [json.loads(line) for line in exported] == [held[k] for k in sorted(held)]
        # What Firebase holds verifies against the published key too.
        export = tmp_path / "from-firebase.jsonl"
        export.write_text("".join(json.dumps(held[k]) + "\n" for k in sorted(held)))
        assert await acli(config, "ledger", "verify", "--export", str(export), "--pubkey", pubkey)
        tampered = [dict(held[k]) for k in sorted(held)]
        tampered[1]["energy_wh"] += 1
        export.write_text("".join(json.dumps(e) + "\n" for e in tampered))
        bad = await acli(config, "ledger", "verify", "--export", str(export), check=False)
        assert bad.returncode == 1
        assert bad.stdout.startswith("entry 2 (seq 2): hash does not match")
    finally:
        daemon.kill()


async def test_kill9_before_upload_loses_and_doubles_nothing(
    firebase_server: FirebaseServer, tmp_path: Path, tls_files: TlsFiles
) -> None:
    endpoint = LedgerEndpoint(server_ssl_context(tls_files), token="t0ken").start()
    token = tmp_path / "ledger.token"
    token.write_text("t0ken\n")
    os.chmod(token, 0o600)
    async with FaultProxy("127.0.0.1", firebase_server.port) as proxy:
        config = cloud_config(
            tmp_path,
            proxy.port,
            ledger__endpoint_url=endpoint.url,
            ledger__endpoint_token_file=str(token),
            ledger__endpoint_ca_file=str(tls_files.ca_cert),
        )
        await acli(config, "cards", "add", CARD)
        endpoint.fail(503, times=1000)  # both clouds are down
        await proxy.refuse_new(True)
        daemon = Daemon(config).start(env=emulator(proxy.port))
        try:
            await asyncio.to_thread(daemon.wait_ready)
            for _ in range(3):
                await acli(config, "sim", "tap", CARD)
                # Some energy (and the first tap's card long gone from the field).
                await asyncio.to_thread(
                    daemon.wait_for,
                    "charging",
                    lambda s: (s["connector"]["session"] or {}).get("energy_wh", 0) >= 10,
                )
                await acli(config, "sim", "tap", CARD)
                await asyncio.to_thread(
                    daemon.wait_for, "available", lambda s: s["connector"]["status"] == "Available"
                )
                # The emulated card stays in the field 0.3 s: the next tap is a new one.
                await asyncio.sleep(0.6)
            status = await asyncio.to_thread(
                daemon.wait_for, "6 entries", lambda s: s["cloud"]["ledger"]["entries"] == 6
            )
            assert status["cloud"]["ledger"]["sinks"]["rtdb"]["backlog"] == 6
            daemon.kill()  # SIGKILL: committed, never uploaded
            assert firebase_server.get(f"ledger/{KEY}") is None and endpoint.entries == {}

            await proxy.refuse_new(False)
            endpoint.recover()
            daemon.start(env=emulator(proxy.port))
            deadline = time.monotonic() + 30
            while (
                endpoint.acked(STATION) < 6 or len(firebase_server.get(f"ledger/{KEY}") or {}) < 6
            ):
                assert time.monotonic() < deadline, daemon.tail()
                await asyncio.sleep(0.1)
        finally:
            daemon.kill()
            endpoint.stop()
    held = firebase_server.get(f"ledger/{KEY}")
    assert sorted(held) == [seq_key(n) for n in range(1, 7)]
    assert sorted(endpoint.entries[STATION]) == list(range(1, 7))
    assert endpoint.duplicates == 0
    assert [held[seq_key(n)]["hash"] for n in range(1, 7)] == [
        endpoint.entries[STATION][n]["hash"] for n in range(1, 7)
    ]
