"""Ledger upload to a real Realtime Database server and to an HTTPS endpoint: once, in order."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cloud_support import T0, TestClock, open_store, start_session, stop_session
from support.fault_proxy import FaultProxy
from support.firebase_server import NAMESPACE, FirebaseServer, firebase_server
from support.ledger_endpoint import LedgerEndpoint
from support.tls import TlsFiles, server_ssl_context

from edgepoint.cloud.endpoint import HttpLedgerSink
from edgepoint.cloud.health import Health
from edgepoint.cloud.ledger import LedgerRecorder
from edgepoint.cloud.rtdb import EMULATOR_ENV, Rtdb
from edgepoint.cloud.signing import LedgerKey, public_key_from_b64
from edgepoint.cloud.upload import LedgerUploader, RtdbLedgerSink, seq_key
from edgepoint.cloud.verify import verify_entries
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.ledger import LedgerStore

__all__ = ["firebase_server"]


class Rig:
    def __init__(self, store: ChargePointStore, key: LedgerKey, executor: ThreadPoolExecutor):
        self.store = store
        self.ledger = LedgerStore(store.db)
        self.key = key
        self.executor = executor
        self.recorder = LedgerRecorder(self.ledger, key, "EP-1", TestClock())
        self.sessions = 0

    async def sessions_done(self, n: int) -> None:
        for _ in range(n):
            k = self.sessions
            await start_session(self.store, f"s-{k}", 100 * k, T0)
            await stop_session(self.store, f"s-{k}", 100 * k + 50, T0)
            self.sessions += 1
        await self.recorder.record_pending()

    def uploader(self, sink: Any, batch: int = 10) -> LedgerUploader:
        from edgepoint.clock import SystemClock

        return LedgerUploader(sink, self.ledger, Health(SystemClock()), batch)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await open_store(tmp_path / "edgepoint.db")
    executor = ThreadPoolExecutor(2)
    try:
        yield Rig(store, LedgerKey.generate(), executor)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        await store.close()


async def running(uploader: LedgerUploader) -> asyncio.Task[None]:
    return asyncio.create_task(uploader.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], Any], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not await _value(check):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def _value(check: Callable[[], Any]) -> Any:
    value = check()
    return await value if asyncio.iscoroutine(value) else value


# -- Realtime Database ------------------------------------------------------------------


@pytest.fixture
async def rtdb(
    firebase_server: FirebaseServer, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Rtdb, FaultProxy]]:
    async with FaultProxy("127.0.0.1", firebase_server.port) as proxy:
        monkeypatch.setenv(EMULATOR_ENV, f"127.0.0.1:{proxy.port}")
        db = Rtdb(f"https://{NAMESPACE}.firebaseio.com", None, "EP-1", 2.0, rig.executor)
        yield db, proxy
        db.close()


def remote(server: FirebaseServer) -> dict[str, Any]:
    return server.get("ledger/EP-1") or {}


async def test_entries_land_once_in_order_under_seq_keys(
    rig: Rig, rtdb: tuple[Rtdb, FaultProxy], firebase_server: FirebaseServer
) -> None:
    db, _ = rtdb
    await rig.sessions_done(12)  # 24 entries, batches of 10
    uploader = rig.uploader(RtdbLedgerSink(db, "EP-1"))
    task = await running(uploader)
    try:
        await until(lambda: uploader.stats().acked_seq == 24)
    finally:
        await stop(task)
    held = remote(firebase_server)
    assert sorted(held) == [seq_key(n) for n in range(1, 25)]
    assert seq_key(7) == "seq_000000000007"
    local = await rig.ledger.entries_after(0, 100)
    assert [held[seq_key(e["seq"])] for e in local] == local
    assert (
        verify_entries([held[k] for k in sorted(held)], public_key_from_b64(rig.key.public_b64))
        == []
    )
    assert await rig.ledger.acked("rtdb") == 24


async def test_an_outage_of_any_length_loses_and_doubles_nothing(
    rig: Rig, rtdb: tuple[Rtdb, FaultProxy], firebase_server: FirebaseServer
) -> None:
    db, proxy = rtdb
    uploader = rig.uploader(RtdbLedgerSink(db, "EP-1"))
    task = await running(uploader)
    try:
        await rig.sessions_done(2)
        await until(lambda: uploader.stats().acked_seq == 4)
        await proxy.refuse_new(True)
        await proxy.reset()
        await rig.sessions_done(20)  # offline: 40 more entries pile up in SQLite
        uploader.wake.set()
        await until(lambda: uploader.health.state == "retrying")
        assert len(remote(firebase_server)) == 4
        await proxy.refuse_new(False)
        await until(lambda: uploader.stats().acked_seq == 44, within_s=15)
    finally:
        await stop(task)
    held = remote(firebase_server)
    assert sorted(held) == [seq_key(n) for n in range(1, 45)]
    assert (
        verify_entries([held[k] for k in sorted(held)], public_key_from_b64(rig.key.public_b64))
        == []
    )


async def test_a_batch_sent_before_a_crash_is_not_sent_again(
    rig: Rig, rtdb: tuple[Rtdb, FaultProxy], firebase_server: FirebaseServer
) -> None:
    db, _ = rtdb
    await rig.sessions_done(5)
    sink = RtdbLedgerSink(db, "EP-1")
    # The previous run sent entries 1..6, and died before it stored the cursor.
    assert await sink.send(await rig.ledger.entries_after(0, 6), 0, in_doubt=False) == 6
    assert await rig.ledger.acked("rtdb") == 0
    writes: list[int] = []
    original = db.update

    async def counting_update(path: str, values: dict[str, Any]) -> None:
        writes.extend(v["seq"] for v in values.values())
        await original(path, values)

    db.update = counting_update  # type: ignore[method-assign]
    uploader = rig.uploader(sink)
    task = await running(uploader)
    try:
        await until(lambda: uploader.stats().acked_seq == 10)
    finally:
        await stop(task)
    assert writes == [7, 8, 9, 10]  # 1..6 were found there, not written twice
    assert sorted(remote(firebase_server)) == [seq_key(n) for n in range(1, 11)]


async def test_a_different_entry_at_our_seq_is_a_fault_not_an_overwrite(
    rig: Rig, rtdb: tuple[Rtdb, FaultProxy], firebase_server: FirebaseServer
) -> None:
    db, _ = rtdb
    await rig.sessions_done(1)
    firebase_server.put(f"ledger/EP-1/{seq_key(1)}", {"seq": 1, "hash": "other"})
    uploader = rig.uploader(RtdbLedgerSink(db, "EP-1"))
    task = await running(uploader)
    try:
        await until(lambda: uploader.health.state == "fault")
    finally:
        await stop(task)
    assert "holds another entry at ledger/EP-1/seq_000000000001" in uploader.health.detail
    assert remote(firebase_server)[seq_key(1)] == {"seq": 1, "hash": "other"}
    assert await rig.ledger.acked("rtdb") == 0


# -- HTTPS endpoint ---------------------------------------------------------------------


@pytest.fixture
def endpoint(tls_files: TlsFiles) -> Any:
    server = LedgerEndpoint(server_ssl_context(tls_files), token="s3cret").start()
    yield server
    server.stop()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "ledger.token"
    path.write_text(token + "\n")
    os.chmod(path, 0o600)
    return path


def http_sink(rig: Rig, endpoint: LedgerEndpoint, tmp_path: Path, tls: TlsFiles) -> HttpLedgerSink:
    return HttpLedgerSink(
        endpoint.url, token_file(tmp_path, "s3cret"), "EP-1", 5.0, rig.executor, tls.ca_cert
    )


async def test_the_endpoint_gets_every_entry_once_through_failures(
    rig: Rig, endpoint: LedgerEndpoint, tmp_path: Path, tls_files: TlsFiles
) -> None:
    await rig.sessions_done(10)
    endpoint.fail(503, times=2)
    uploader = rig.uploader(http_sink(rig, endpoint, tmp_path, tls_files))
    task = await running(uploader)
    try:
        await until(lambda: uploader.stats().acked_seq == 20, within_s=15)
        assert uploader.health.state == "ok"
        # The endpoint lost entries 15 and later: it says so, and they are sent again.
        endpoint.forget_from("EP-1", 15)
        await rig.sessions_done(1)
        uploader.wake.set()
        await until(lambda: endpoint.acked("EP-1") == 22, within_s=15)
    finally:
        await stop(task)
    held = endpoint.entries["EP-1"]
    assert sorted(held) == list(range(1, 23))
    assert (
        verify_entries([held[n] for n in sorted(held)], public_key_from_b64(rig.key.public_b64))
        == []
    )


async def test_a_refused_token_is_a_fault(
    rig: Rig, endpoint: LedgerEndpoint, tmp_path: Path, tls_files: TlsFiles
) -> None:
    await rig.sessions_done(1)
    sink = HttpLedgerSink(
        endpoint.url, token_file(tmp_path, "wrong"), "EP-1", 5.0, rig.executor, tls_files.ca_cert
    )
    uploader = rig.uploader(sink)
    task = await running(uploader)
    try:
        await until(lambda: uploader.health.state == "fault")
        requests = endpoint.requests
        await asyncio.sleep(0.5)
        assert endpoint.requests == requests  # no retry storm
    finally:
        await stop(task)
    assert "refused the token (HTTP 401)" in uploader.health.detail


async def test_an_untrusted_certificate_is_a_fault(
    rig: Rig, endpoint: LedgerEndpoint, tmp_path: Path
) -> None:
    await rig.sessions_done(1)
    sink = HttpLedgerSink(endpoint.url, token_file(tmp_path, "s3cret"), "EP-1", 5.0, rig.executor)
    uploader = rig.uploader(sink)
    task = await running(uploader)
    try:
        await until(lambda: uploader.health.state == "fault")
    finally:
        await stop(task)
    assert "certificate" in uploader.health.detail
    assert endpoint.entries == {}
