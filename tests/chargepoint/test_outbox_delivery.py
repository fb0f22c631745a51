"""CsmsLink + ChargePointStore against a real SiteCsms: every message arrives, in order, once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import free_port
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from edgepoint.chargepoint import messages
from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.chargepoint.outbox import MAX_REFUSALS
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import (
    AuthorizationStatus,
    IdTag,
    SessionId,
    StopReason,
    TelemetrySample,
)
from edgepoint.clock import SystemClock
from edgepoint.config import ChargePointConfig, StationConfig
from edgepoint.csms.db import (
    ConnectorRepository,
    CsmsStore,
    MeterValueRepository,
    TransactionRepository,
    open_csms_database,
)
from edgepoint.csms.server import SiteCsms
from edgepoint.storage.chargepoint import ChargePointStore, _enqueue

pytestmark = pytest.mark.timeout(30)

CP_ID = "EP-OUTBOX-1"
CP_KEY = "outbox-test-key-0123456789"
CARD = IdTag("04A1B2C3")
S1 = SessionId("11111111-1111-4111-8111-111111111111")
S2 = SessionId("22222222-2222-4222-8222-222222222222")
ENERGY = "Energy.Active.Import.Register"
MEASURANDS_PER_SAMPLE = len(messages.sampled_values(TelemetrySample(0, 0, 0, 0, 0, 0), "x"))


async def eventually(
    what: str, check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 10
) -> None:
    """Poll `check` (sync or async) until true; fail naming `what` after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def sample(energy_wh: int) -> TelemetrySample:
    return TelemetrySample(1, energy_wh, 7360.0, 32.0, 230.0, 25.0)


@dataclass
class Received:
    """What the CSMS stored, in the order its repositories were called (real calls)."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        return [detail for k, detail in self.events if k == kind]


@pytest.fixture(name="received")
def received_fixture(monkeypatch: pytest.MonkeyPatch) -> Received:
    """Record every call into the CSMS repositories, then let the real method run."""
    received = Received()
    start, stop = TransactionRepository.start, TransactionRepository.stop
    add, status = MeterValueRepository.add, ConnectorRepository.record_status

    async def record_start(self: TransactionRepository, *args: Any, **kwargs: Any) -> Any:
        outcome = await start(self, *args, **kwargs)
        received.events.append(("start", (kwargs["meter_start"], outcome.repeated)))
        return outcome

    async def record_stop(self: TransactionRepository, *args: Any, **kwargs: Any) -> Any:
        outcome = await stop(self, *args, **kwargs)
        received.events.append(("stop", (args[1], kwargs["meter_stop"], str(outcome))))
        return outcome

    async def record_add(self: MeterValueRepository, *args: Any, **kwargs: Any) -> Any:
        stored = await add(self, *args, **kwargs)
        energy = [s.value for s in args[3] if s.measurand == ENERGY]
        received.events.append(("meter", (args[2], energy, stored)))
        return stored

    async def record_status(self: ConnectorRepository, *args: Any, **kwargs: Any) -> Any:
        stored = await status(self, *args, **kwargs)
        received.events.append(("status", kwargs["status"]))
        return stored

    monkeypatch.setattr(TransactionRepository, "start", record_start)
    monkeypatch.setattr(TransactionRepository, "stop", record_stop)
    monkeypatch.setattr(MeterValueRepository, "add", record_add)
    monkeypatch.setattr(ConnectorRepository, "record_status", record_status)
    return received


class Csms:
    """The real embedded CSMS on a fixed port and db file, which a test may stop and restart."""

    def __init__(self, db_path: Path, port: int) -> None:
        self.db_path = db_path
        self.port = port
        self.server: SiteCsms | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> SiteCsms:
        server = SiteCsms(
            self.db_path, "127.0.0.1", self.port, SystemClock(), heartbeat_interval=60,
            auth_iterations=1_000,
        )  # fmt: skip
        await server.register_charge_point(CP_ID, CP_KEY)
        self._task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.wait_started(), 5)
        self.server = server
        return server

    async def stop(self) -> None:
        """Like a crash of the CSMS's process as its clients see it: all connections drop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task, self.server = None, None

    @property
    def store(self) -> CsmsStore:
        assert self.server is not None and self.server.store is not None
        return self.server.store


@dataclass
class Site:
    tmp_path: Path
    csms: Csms
    store: ChargePointStore
    links: list[tuple[CsmsLink, asyncio.Task[None]]] = field(default_factory=list)

    def link(self, backoff_s: float = 0.05) -> CsmsLink:
        config = ChargePointConfig(
            csms_url=f"ws://127.0.0.1:{self.csms.port}/ocpp",
            auth_key_file=self.tmp_path / "unused.key",
            response_timeout=2.0,
            reconnect_max_s=0.2,
        )
        station = StationConfig(id=CP_ID, vendor="edgepoint", model="test")
        return CsmsLink(
            station, config, CP_KEY, self.store, SystemClock(), backoff=lambda attempt: backoff_s
        )

    def run(self, link: CsmsLink) -> asyncio.Task[None]:
        task = asyncio.create_task(link.run())
        self.links.append((link, task))
        return task

    async def online(self, link: CsmsLink) -> None:
        await eventually("link online", lambda: link.state is LinkState.ONLINE)

    async def drained(self) -> None:
        async def empty() -> bool:
            return await self.store.outbox_depth() == 0

        await eventually("outbox drained", empty)

    async def add_card(self, id_tag: str = CARD) -> None:
        """Through csms.db directly, as `edgepoint cards add` does (CSMS running or not)."""
        store = await open_csms_database(self.csms.db_path, auth_iterations=1_000)
        try:
            await store.cards.add(id_tag, "Alice")
        finally:
            await store.close()

    async def transactions(self) -> list[Any]:
        return await self.csms.store.transactions.list(CP_ID)

    async def energy(self, transaction_id: int) -> list[int]:
        values = await self.csms.store.meter_values.list(CP_ID, transaction_id=transaction_id)
        return [int(v.sample.value) for v in values if v.sample.measurand == ENERGY]


@pytest.fixture(name="site")
async def site_fixture(tmp_path: Path) -> AsyncIterator[Site]:
    store = await ChargePointStore.open(tmp_path / "edgepoint.db")
    site = Site(tmp_path, Csms(tmp_path / "csms.db", free_port()), store)
    try:
        yield site
    finally:
        for link, task in site.links:
            await link.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await site.csms.stop()
        await store.close()


def at(base: datetime, seconds: int) -> datetime:
    return base + timedelta(seconds=seconds)


async def queue_session(
    store: ChargePointStore,
    sid: SessionId,
    meter_start: int,
    readings: list[int],
    meter_stop: int,
    base: datetime,
    connector_id: int = 1,
) -> None:
    """A whole session as the kiosk stores it, with payloads built by `messages`."""
    start = messages.start_transaction(connector_id, CARD, meter_start, base)
    await store.begin_session(sid, connector_id, CARD, meter_start, base, start)
    for i, energy in enumerate(readings, start=1):
        when = at(base, i)
        await store.queue_meter_values(sid, when, messages.meter_values(1, sample(energy), when))
    end = at(base, len(readings) + 1)
    stop = messages.stop_transaction(CARD, meter_stop, StopReason.LOCAL, end)
    await store.end_session(sid, CARD, meter_stop, "Local", end, stop)


async def dead_letters(store: ChargePointStore) -> list[tuple[Any, ...]]:
    # The same file; reading it through the store's connection (and its lock) is simplest.
    async with (
        store._db.read() as db,
        db.execute(
            "SELECT session_id, action, payload, reason FROM dead_letters ORDER BY seq"
        ) as cur,
    ):
        return [tuple(row) for row in await cur.fetchall()]


# -- (a) + (e): queued while the CSMS is down, delivered once it is up ---------------


async def test_messages_queued_while_the_csms_is_down_arrive_in_order_once(
    site: Site, received: Received
) -> None:
    link = site.link()
    site.run(link)
    await eventually("a failed connection attempt", lambda: link.snapshot().last_error != "")
    assert link.state is not LinkState.ONLINE
    assert await link.authorize(CARD) is AuthorizationStatus.UNAVAILABLE

    base = datetime.now(UTC).replace(microsecond=0)
    await queue_session(site.store, S1, 1000, [1001, 1002, 1003], 1004, base)
    link.wake_outbox()
    await site.add_card()
    assert await site.store.outbox_depth() == 5

    await site.csms.start()
    await site.drained()

    (tx,) = await site.transactions()
    assert (tx.id_tag, tx.connector_id, tx.meter_start, tx.meter_stop) == (CARD, 1, 1000, 1004)
    assert tx.id_tag_status == "Accepted" and tx.stop_reason == "Local"
    assert tx.start_timestamp == base and tx.stop_timestamp == at(base, 4)
    assert await site.energy(tx.transaction_id) == [1001, 1002, 1003]
    values = await site.csms.store.meter_values.list(CP_ID, transaction_id=tx.transaction_id)
    assert len(values) == 3 * MEASURANDS_PER_SAMPLE

    # In order, each exactly once, and each meter value attached to the transaction.
    kinds = [(k, d) for k, d in received.events if k != "status"]
    assert kinds == [
        ("start", (1000, False)),
        ("meter", (tx.transaction_id, ["1001"], MEASURANDS_PER_SAMPLE)),
        ("meter", (tx.transaction_id, ["1002"], MEASURANDS_PER_SAMPLE)),
        ("meter", (tx.transaction_id, ["1003"], MEASURANDS_PER_SAMPLE)),
        ("stop", (tx.transaction_id, 1004, "stopped")),
    ]
    row = await site.store.session(S1)
    assert row is not None and row.transaction_id == tx.transaction_id
    assert await site.store.dead_letter_count() == 0


async def test_authorize_gets_the_csms_verdict_when_online(site: Site) -> None:
    await site.add_card("04A1B2C3")
    await site.add_card("0BADCAFE")
    await site.csms.start()
    await site.csms.store.cards.block("0BADCAFE")
    link = site.link()
    site.run(link)
    await site.online(link)
    assert await link.authorize(IdTag("04A1B2C3")) is AuthorizationStatus.ACCEPTED
    assert await link.authorize(IdTag("0BADCAFE")) is AuthorizationStatus.BLOCKED
    assert await link.authorize(IdTag("DEADBEEF")) is AuthorizationStatus.INVALID

    await site.csms.stop()
    await eventually("link offline", lambda: link.state is not LinkState.ONLINE)
    assert await link.authorize(IdTag("04A1B2C3")) is AuthorizationStatus.UNAVAILABLE


# -- (b): the CSMS goes away mid-session and comes back ------------------------------


async def test_csms_restart_mid_session_delivers_the_rest_without_duplicates(
    site: Site, received: Received
) -> None:
    await site.add_card()
    await site.csms.start()
    link = site.link()
    site.run(link)
    await site.online(link)

    base = datetime.now(UTC).replace(microsecond=0)
    start = messages.start_transaction(1, CARD, 5000, base)
    await site.store.begin_session(S1, 1, CARD, 5000, base, start)
    for i in (1, 2):
        values = messages.meter_values(1, sample(5000 + i), at(base, i))
        await site.store.queue_meter_values(S1, at(base, i), values)
    link.wake_outbox()
    await site.drained()
    (tx,) = await site.transactions()

    await site.csms.stop()
    await eventually("link offline", lambda: link.state is not LinkState.ONLINE)
    for i in (3, 4):
        values = messages.meter_values(1, sample(5000 + i), at(base, i))
        await site.store.queue_meter_values(S1, at(base, i), values)
    stop = messages.stop_transaction(CARD, 5005, StopReason.LOCAL, at(base, 5))
    await site.store.end_session(S1, CARD, 5005, "Local", at(base, 5), stop)
    link.wake_outbox()
    await asyncio.sleep(0.3)  # several reconnect attempts fail meanwhile
    assert await site.store.outbox_depth() == 3

    await site.csms.start()  # same port, same csms.db
    await site.drained()
    assert link.snapshot().connects == 2

    (after,) = await site.transactions()
    assert after.transaction_id == tx.transaction_id
    assert (after.meter_start, after.meter_stop) == (5000, 5005)
    assert await site.energy(tx.transaction_id) == [5001, 5002, 5003, 5004]
    assert [k for k, _ in received.events if k != "status"] == [
        "start",
        "meter",
        "meter",
        "meter",
        "meter",
        "stop",
    ]
    assert await site.store.dead_letter_count() == 0


async def test_connection_cut_before_each_reply_is_resent_and_stored_once(
    site: Site, received: Received, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSMS stores a message, the network dies before its reply: resend, no duplicate."""
    await site.add_card()
    await site.csms.start()
    cut: set[str] = set()

    def cut_after_first(repo: type, name: str) -> None:
        real = getattr(repo, name)  # already wrapped by `received`: records, then stores

        async def store_then_cut(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await real(self, *args, **kwargs)
            if name not in cut:
                cut.add(name)
                server = site.csms.server
                assert server is not None
                session = server.session(CP_ID)
                assert session is not None
                session.connection.transport.abort()  # no close frame, no reply
            return result

        monkeypatch.setattr(repo, name, store_then_cut)

    cut_after_first(TransactionRepository, "start")
    cut_after_first(MeterValueRepository, "add")
    cut_after_first(TransactionRepository, "stop")

    base = datetime.now(UTC).replace(microsecond=0)
    await queue_session(site.store, S1, 7000, [7001, 7002], 7003, base)
    link = site.link()
    site.run(link)
    await site.drained()

    assert cut == {"start", "add", "stop"}
    assert link.snapshot().connects == 4  # one cut per kind of message
    (tx,) = await site.transactions()
    assert (tx.meter_start, tx.meter_stop) == (7000, 7003)
    assert await site.energy(tx.transaction_id) == [7001, 7002]
    tid = tx.transaction_id
    n = MEASURANDS_PER_SAMPLE
    assert [(k, d) for k, d in received.events if k != "status"] == [
        ("start", (7000, False)),
        ("start", (7000, True)),  # the resend got the same transaction back
        ("meter", (tid, ["7001"], n)),
        ("meter", (tid, ["7001"], 0)),  # the resend added nothing
        ("meter", (tid, ["7002"], n)),
        ("stop", (tid, 7003, "stopped")),
        ("stop", (tid, 7003, "already_stopped")),
    ]
    row = await site.store.session(S1)
    assert row is not None and row.transaction_id == tid


# -- (c) + (d): refused messages go to the dead letters, the queue moves on ----------


async def test_a_message_the_csms_keeps_refusing_is_dead_lettered_and_the_next_delivered(
    site: Site, received: Received
) -> None:
    await site.add_card()
    await site.csms.start()
    base = datetime.now(UTC).replace(microsecond=0)
    start = messages.start_transaction(1, CARD, 100, base)
    await site.store.begin_session(S1, 1, CARD, 100, base, start)
    # The 1.6 schema does not check `format`, so a local-time string without a date
    # passes the library's validation and reaches the CSMS, which refuses to parse it.
    bad = messages.meter_values(1, sample(101), at(base, 1))
    bad["meter_value"][0]["timestamp"] = "13:37 yesterday"
    await site.store.queue_meter_values(S1, at(base, 1), bad)
    good = messages.meter_values(1, sample(102), at(base, 2))
    await site.store.queue_meter_values(S1, at(base, 2), good)
    stop = messages.stop_transaction(CARD, 103, StopReason.LOCAL, at(base, 3))
    await site.store.end_session(S1, CARD, 103, "Local", at(base, 3), stop)

    link = site.link()
    site.run(link)
    await site.drained()

    ((sid, action, payload, reason),) = await dead_letters(site.store)
    assert (sid, action) == (S1, "MeterValues")
    assert json.loads(payload) == bad
    assert reason.startswith("CallError FormationViolation")
    assert "13:37 yesterday" in reason  # the CSMS's own words: why it refused
    (tx,) = await site.transactions()
    assert (tx.meter_start, tx.meter_stop) == (100, 103)
    assert await site.energy(tx.transaction_id) == [102]
    assert link.state is LinkState.ONLINE and link.snapshot().connects == 1
    assert MAX_REFUSALS >= 2


async def test_a_message_that_fails_local_validation_is_dead_lettered(site: Site) -> None:
    await site.add_card()
    await site.csms.start()
    base = datetime.now(UTC).replace(microsecond=0)
    start = messages.start_transaction(1, CARD, 100, base)
    await site.store.begin_session(S1, 1, CARD, 100, base, start)
    bad = messages.meter_values(1, sample(101), at(base, 1))
    bad["meter_value"][0]["sampled_value"][0]["measurand"] = "Energy.Made.Up"
    await site.store.queue_meter_values(S1, at(base, 1), bad)
    good = messages.meter_values(1, sample(102), at(base, 2))
    await site.store.queue_meter_values(S1, at(base, 2), good)

    link = site.link()
    site.run(link)
    await site.drained()
    ((_, action, _, reason),) = await dead_letters(site.store)
    assert action == "MeterValues" and "Energy.Made.Up" in reason and "never sent" in reason
    (tx,) = await site.transactions()
    assert await site.energy(tx.transaction_id) == [102]


async def test_an_entry_that_cannot_be_built_is_dead_lettered_not_fatal(site: Site) -> None:
    """A stored payload from an older version (unknown field, unknown action) is data."""
    await site.add_card()
    await site.csms.start()
    base = datetime.now(UTC).replace(microsecond=0)
    start = messages.start_transaction(1, CARD, 100, base)
    await site.store.begin_session(S1, 1, CARD, 100, base, start)
    odd = messages.meter_values(1, sample(101), at(base, 1))
    odd["legacy_field"] = 1
    await site.store.queue_meter_values(S1, at(base, 1), odd)
    # Written as an older or broken version would have: straight into the outbox table.
    async with site.store._db.write() as db:
        await _enqueue(db, None, "NoSuchAction", {"x": 1}, at(base, 1))
    good = messages.meter_values(1, sample(102), at(base, 2))
    await site.store.queue_meter_values(S1, at(base, 2), good)

    link = site.link()
    task = site.run(link)

    async def drained_or_dead() -> bool:
        return task.done() or await site.store.outbox_depth() == 0

    await eventually("outbox drained (or the link dead)", drained_or_dead)
    assert not task.done(), task.exception()  # a bad entry must not kill the link
    letters = await dead_letters(site.store)
    assert [a for _, a, _, _ in letters] == ["MeterValues", "NoSuchAction"]
    assert all("cannot build" in reason for *_, reason in letters), letters
    (tx,) = await site.transactions()
    assert await site.energy(tx.transaction_id) == [102]


async def test_messages_of_a_session_whose_start_was_refused_do_not_block_the_queue(
    site: Site, received: Received
) -> None:
    await site.add_card()
    await site.csms.start()
    base = datetime.now(UTC).replace(microsecond=0)
    # connectorId 0 is the whole charge point: the CSMS refuses a transaction on it.
    await queue_session(site.store, S1, 100, [101], 102, base, connector_id=0)
    await queue_session(site.store, S2, 200, [201], 202, at(base, 60))

    link = site.link()
    site.run(link)
    await site.drained()

    letters = await dead_letters(site.store)
    assert [(sid, action) for sid, action, _, _ in letters] == [
        (S1, "StartTransaction"),
        (S1, "MeterValues"),
        (S1, "StopTransaction"),
    ]
    assert "PropertyConstraintViolation" in letters[0][3]
    for _, _, _, reason in letters[1:]:
        assert "no transaction id" in reason and "StartTransaction" in reason
    (tx,) = await site.transactions()
    assert (tx.meter_start, tx.meter_stop) == (200, 202)
    assert await site.energy(tx.transaction_id) == [201]
    s1 = await site.store.session(S1)
    assert s1 is not None and s1.transaction_id is None


# -- (f): statuses ------------------------------------------------------------------


async def test_statuses_arrive_in_order_and_the_current_one_after_a_reconnect(
    site: Site, received: Received
) -> None:
    await site.csms.start()
    link = site.link()
    site.run(link)
    await site.online(link)
    link.report_status(ConnectorStatus.PREPARING)
    link.report_status(ConnectorStatus.CHARGING)
    await eventually("both statuses", lambda: len(received.of("status")) >= 3)

    async def csms_shows(status: str) -> bool:
        rows = await site.csms.store.connectors.list(CP_ID)
        return [(r.connector_id, r.status) for r in rows] == [(1, status)]

    await eventually("CSMS shows Charging", lambda: csms_shows("Charging"))
    assert received.of("status") == ["Available", "Preparing", "Charging"]

    await site.csms.stop()
    await eventually("link offline", lambda: link.state is not LinkState.ONLINE)
    link.report_status(ConnectorStatus.FINISHING)
    link.report_status(ConnectorStatus.FAULTED, "OtherError")
    faulted_at = datetime.now(UTC)
    await asyncio.sleep(0.5)  # offline for a while before the CSMS is back
    await site.csms.start()
    await site.online(link)
    await eventually("CSMS shows Faulted", lambda: csms_shows("Faulted"))
    # After a reconnect the CSMS learns where the connector stands, not the history.
    await asyncio.sleep(0.2)
    assert received.of("status") == ["Available", "Preparing", "Charging", "Faulted"]
    (row,) = await site.csms.store.connectors.list(CP_ID)
    assert row.error_code == "OtherError"
    # Stamped when the connector faulted, not when the message could finally be sent.
    assert abs((row.timestamp - faulted_at).total_seconds()) < 0.2


# -- (g): closing ----------------------------------------------------------------------


async def test_close_sends_a_close_frame_and_run_returns(site: Site) -> None:
    server = await site.csms.start()
    link = site.link()
    task = site.run(link)
    await site.online(link)
    session = server.session(CP_ID)
    assert session is not None
    await link.close()
    await asyncio.wait_for(task, 3)
    assert link.state is LinkState.CLOSED
    await eventually("CSMS saw the close", lambda: server.connected_ids() == [])
    assert session.connection.close_code == 1000
    assert session.connection.close_reason == "charge point shutting down"


async def test_close_while_connecting_or_waiting_stops_the_link(site: Site) -> None:
    server = await site.csms.start()
    link = site.link()
    task = site.run(link)
    await asyncio.sleep(0)  # the link is now opening its connection
    await link.close()
    await asyncio.wait_for(task, 3)
    await asyncio.sleep(0.2)
    assert server.connected_ids() == []
    assert link.state is LinkState.CLOSED

    await site.csms.stop()
    slow = site.link(backoff_s=30.0)  # close() must not have to wait this out
    waiting = site.run(slow)
    await eventually("a failed connection attempt", lambda: slow.snapshot().last_error != "")
    await slow.close()
    await asyncio.wait_for(waiting, 2)
    assert slow.state is LinkState.CLOSED


async def test_a_call_error_with_a_code_ocpp_does_not_define_is_a_refusal_not_a_crash(
    site: Site,
) -> None:
    """Another vendor's CSMS may answer with its own error code; ours only sends 1.6 codes,
    so this one CSMS is a few lines of raw WebSocket."""
    answers: dict[str, Any] = {
        "BootNotification": {
            "status": "Accepted",
            "currentTime": "2025-06-01T12:00:00Z",
            "interval": 60,
        },
        "Authorize": {"idTagInfo": {"status": "Accepted"}},
    }
    seen: list[str] = []

    async def vendor_csms(ws: ServerConnection) -> None:
        async for raw in ws:
            _, unique_id, action, _ = json.loads(raw)
            seen.append(action)
            if action == "StartTransaction":
                reply = [4, unique_id, "VendorTransactionRefused", "no", {}]
            else:
                reply = [3, unique_id, answers.get(action, {})]
            await ws.send(json.dumps(reply))

    async with serve(
        vendor_csms, "127.0.0.1", site.csms.port, subprotocols=[Subprotocol("ocpp1.6")]
    ):
        base = datetime.now(UTC).replace(microsecond=0)
        await queue_session(site.store, S1, 100, [], 101, base)
        link = site.link()
        task = site.run(link)

        async def drained_or_dead() -> bool:
            return task.done() or await site.store.outbox_depth() == 0

        await eventually("outbox drained (or the link dead)", drained_or_dead)
        assert not task.done(), task.exception()
        assert link.snapshot().connects == 1
        assert await link.authorize(CARD) is AuthorizationStatus.ACCEPTED  # still talking
    letters = await dead_letters(site.store)
    assert [action for _, action, _, _ in letters] == ["StartTransaction", "StopTransaction"]
    assert "VendorTransactionRefused" in letters[0][3]
    assert seen.count("StartTransaction") == MAX_REFUSALS
