"""CsmsLink + OutboxSender over a real store, against the site CSMS and a strict scripted one.

What is proved: in order, exactly once (a resend carries the first try's message id, so a
CSMS can de-duplicate); the transactionId a CSMS gives a StartTransaction reaches the
session's later messages; billing is parked, never dropped; MeterValues refused for good go
to the dead letters with the reason; an unreadable row is quarantined and the queue moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import free_port, query
from support.scripted_csms import SILENCE, Answer, Error, Received, ScriptedCsms

from edgepoint.chargepoint import messages
from edgepoint.chargepoint.delivery import PARKED_RETRY_S, RetryPolicy
from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.chargepoint.outbox import OutboxSender
from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import IdTag, SessionId, StopReason, TelemetrySample
from edgepoint.clock import SystemClock
from edgepoint.config import ChargePointConfig, StationConfig
from edgepoint.csms.db import (
    ConnectorRepository,
    MeterValueRepository,
    TransactionRepository,
    open_csms_database,
)
from edgepoint.csms.server import SiteCsms
from edgepoint.storage.chargepoint import ChargePointStore, OutboxEntry

pytestmark = pytest.mark.timeout(30)

CP_ID = "EP-OUTBOX-1"
CP_KEY = "outbox-test-key-0123456789"
CARD = IdTag("04A1B2C3")
S1 = SessionId("11111111-1111-4111-8111-111111111111")
S2 = SessionId("22222222-2222-4222-8222-222222222222")
ENERGY = "Energy.Active.Import.Register"
MEASURANDS_PER_SAMPLE = len(messages.sampled_values(TelemetrySample(0, 0, 0, 0, 0, 0), "x"))
ACCEPTED = {"status": "Accepted"}
# Every setting the link and sender read, with the heartbeat out of the way of counting.
SETTINGS = {"HeartbeatInterval": "300", "WebSocketPingInterval": "0"}
# TransactionMessageAttempts, TransactionMessageRetryInterval: small, for quick tests.
DEFAULT_POLICY = RetryPolicy(3, 0.01)


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


def energy_of(payload: dict[str, Any]) -> str:
    return str(payload["meterValue"][0]["sampledValue"][0]["value"])


def base_time() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class ShiftedClock(SystemClock):
    """The system clock, whose monotonic time a test can move on (the parked retry)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.shift


@dataclass
class ChargePoint:
    """The charge point's delivery half, wired as app.py wires it."""

    store: ChargePointStore
    link: CsmsLink
    sender: OutboxSender
    clock: ShiftedClock
    db_path: Path
    started: list[tuple[SessionId, int, dict[str, Any]]] = field(default_factory=list)
    stopped: list[tuple[SessionId, dict[str, Any] | None]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def alive(self) -> None:
        for task in self.tasks:
            if task.done():
                raise AssertionError(f"{task.get_name()} ended: {task.exception()!r}")

    async def drained(self) -> None:
        async def empty() -> bool:
            self.alive()
            return await self.store.outbox_depth() == 0

        await eventually("outbox drained", empty)

    async def parked(self, count: int = 1) -> None:
        async def parked() -> bool:
            self.alive()
            return len(await self.store.outbox_parked()) == count

        await eventually(f"{count} parked", parked)

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return query(
            self.db_path,
            "SELECT session_id, action, payload, reason, kind, message_id FROM dead_letters"
            " ORDER BY seq",
        )


@contextlib.asynccontextmanager
async def charge_point(
    tmp_path: Path,
    url: str,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    response_timeout: float = 2.0,
) -> AsyncIterator[ChargePoint]:
    db_path = tmp_path / "edgepoint.db"
    store = await ChargePointStore.open(db_path)
    clock = ShiftedClock()
    link = CsmsLink(
        StationConfig(id=CP_ID, vendor="edgepoint", model="test"),
        ChargePointConfig(
            csms_url=url,
            auth_key_file=tmp_path / "unused.key",
            response_timeout=response_timeout,
            reconnect_max_s=0.2,
        ),
        CP_KEY,
        Settings(file_values=SETTINGS),
        SystemClock(),
        backoff=lambda attempt: 0.05,
    )
    cp: ChargePoint

    async def fast_sleep(seconds: float) -> None:
        cp.sleeps.append(seconds)
        await asyncio.sleep(0.005)

    sender = OutboxSender(
        store,
        link,
        clock,
        lambda: policy,
        lambda sid, tid, info: cp.started.append((sid, tid, info)),
        lambda sid, info: cp.stopped.append((sid, info)),
        sleep=fast_sleep,
    )
    cp = ChargePoint(store, link, sender, clock, db_path)
    link.on_online = lambda first: sender.reconnected()
    cp.tasks = [
        asyncio.create_task(link.run(), name="link"),
        asyncio.create_task(sender.run(), name="sender"),
    ]
    try:
        yield cp
    finally:
        await link.close()
        for task in cp.tasks:
            task.cancel()
        await asyncio.gather(*cp.tasks, return_exceptions=True)
        await store.close()


async def queue_session(
    cp: ChargePoint,
    sid: SessionId,
    meter_start: int,
    readings: list[int],
    meter_stop: int,
    base: datetime,
    connector_id: int = 1,
) -> list[str]:
    """A whole session as the kiosk stores it; returns the message ids in queue order."""
    ids: list[str] = []

    def new_id() -> str:
        ids.append(uuid.uuid4().hex)
        return ids[-1]

    async with cp.store.change() as change:
        await change.begin_session(sid, connector_id, CARD, meter_start, base)
        start = messages.start_transaction(connector_id, CARD, meter_start, base)
        await change.enqueue("StartTransaction", start, base, new_id(), sid)
    for i, energy in enumerate(readings, start=1):
        when = base + timedelta(seconds=i)
        async with cp.store.change() as change:
            values = messages.meter_values(connector_id, sample(energy), when)
            await change.enqueue("MeterValues", values, when, new_id(), sid)
            await change.record_reading(sid, energy)
    end = base + timedelta(seconds=len(readings) + 1)
    async with cp.store.change() as change:
        await change.end_session(sid, CARD, meter_stop, "Local", end)
        stop = messages.stop_transaction(CARD, meter_stop, StopReason.LOCAL, end)
        await change.enqueue("StopTransaction", stop, end, new_id(), sid)
    cp.sender.wake.set()  # as the kiosk's on_outbox does
    return ids


async def queue_status(cp: ChargePoint, status: ConnectorStatus, at: datetime) -> str:
    message_id = uuid.uuid4().hex
    async with cp.store.change() as change:
        payload = messages.status_notification(1, status, "NoError", at)
        await change.enqueue("StatusNotification", payload, at, message_id)
    cp.sender.wake.set()
    return message_id


def outbox_calls(csms: ScriptedCsms) -> list[Received]:
    """What the charge point sent from its outbox (the boot is the link's own)."""
    return [r for r in csms.received if r.action not in ("BootNotification", "Heartbeat")]


def start_reply(transaction_id: object, info: object = ACCEPTED) -> dict[str, Any]:
    return {"transactionId": transaction_id, "idTagInfo": info}


# == (b) the strict scripted CSMS, which does not de-duplicate ==========================


async def test_messages_queued_offline_reach_a_strict_csms_in_order_exactly_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with charge_point(tmp_path, f"ws://127.0.0.1:{port}/ocpp") as cp:
        await eventually("a failed connection attempt", lambda: cp.link.snapshot().last_error != "")
        base = base_time()
        ids = [await queue_status(cp, ConnectorStatus.PREPARING, base)]
        ids += await queue_session(cp, S1, 1000, [1001, 1002, 1003], 1004, base)
        ids += [await queue_status(cp, ConnectorStatus.AVAILABLE, base + timedelta(seconds=5))]
        assert cp.link.state is not LinkState.ONLINE
        assert await cp.store.outbox_depth() == 7

        async with ScriptedCsms(port=port) as csms:
            await cp.drained()
            sent = outbox_calls(csms)
            assert csms.received[0].action == "BootNotification"
            assert csms.violations == []
            # In order, each once, each under the id it was stored with.
            assert [r.unique_id for r in sent] == ids
            assert [r.action for r in sent] == [
                "StatusNotification",
                "StartTransaction",
                "MeterValues",
                "MeterValues",
                "MeterValues",
                "StopTransaction",
                "StatusNotification",
            ]
            # The session started offline: its later messages carry the CSMS's transactionId.
            assert [energy_of(p) for p in csms.payloads("MeterValues")] == ["1001", "1002", "1003"]
            assert {p["transactionId"] for p in csms.payloads("MeterValues")} == {1001}
            (stop,) = csms.payloads("StopTransaction")
            assert (stop["transactionId"], stop["meterStop"]) == (1001, 1004)
            assert cp.started == [(S1, 1001, ACCEPTED)]
            assert cp.stopped == [(S1, ACCEPTED)]
            assert await cp.store.transaction_id(S1) == 1001
            snapshot = cp.sender.snapshot()
            assert snapshot.delivered == 7 and snapshot.retries == 0
            assert snapshot.commit_window_ms_max is not None
            assert cp.dead_letters() == []


async def test_a_reply_that_never_comes_is_resent_with_the_same_id_and_is_no_refusal(
    tmp_path: Path,
) -> None:
    silences = {"StartTransaction": 2, "MeterValues": 1}

    def silent_first(reply: Callable[[Received], Answer]) -> Callable[[Received], Answer]:
        def responder(call: Received) -> Answer:
            if silences[call.action] > 0:
                silences[call.action] -= 1  # the CSMS has it; its answer gets lost
                return SILENCE
            return reply(call)

        return responder

    async with ScriptedCsms() as csms:
        csms.responders["StartTransaction"] = silent_first(lambda _: start_reply(555))
        csms.responders["MeterValues"] = silent_first(lambda _: {})
        # One refusal would park the Start: timeouts must not count as refusals.
        async with charge_point(
            tmp_path, csms.url, policy=RetryPolicy(1, 0.01), response_timeout=0.5
        ) as cp:
            ids = await queue_session(cp, S1, 1000, [1001], 1002, base_time())
            await cp.drained()
            assert cp.sender.snapshot().alarms == ()
            assert cp.dead_letters() == []
            assert cp.started == [(S1, 555, ACCEPTED)]

    sent = outbox_calls(csms)
    assert [(r.action, r.unique_id) for r in sent] == [
        ("StartTransaction", ids[0]),
        ("StartTransaction", ids[0]),
        ("StartTransaction", ids[0]),
        ("MeterValues", ids[1]),
        ("MeterValues", ids[1]),
        ("StopTransaction", ids[2]),
    ]
    assert {r.connection for r in sent} == {1}  # a slow CSMS is not a dead connection
    assert sent[0].payload == sent[1].payload == sent[2].payload
    assert all(r.payload["transactionId"] == 555 for r in sent[3:])
    assert csms.violations == []


async def test_a_reply_lost_with_the_connection_is_resent_with_the_same_id_on_the_next(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms:
        transaction_ids = itertools.count(1001)
        cut: set[str] = set()
        replies: dict[str, Callable[[], Answer]] = {
            "StartTransaction": lambda: start_reply(next(transaction_ids)),
            "MeterValues": lambda: {},
            "StopTransaction": lambda: {"idTagInfo": ACCEPTED},
        }

        async def store_then_cut(call: Received) -> Answer:
            reply = replies[call.action]()  # stored (a Start gets its id) before the cut
            if call.action in cut:
                return reply
            cut.add(call.action)
            await csms.disconnect()
            return SILENCE

        for action in replies:
            csms.responders[action] = store_then_cut
        async with charge_point(tmp_path, csms.url) as cp:
            ids = await queue_session(cp, S1, 7000, [7001], 7002, base_time())
            await cp.drained()
            assert cp.link.snapshot().connects == 4  # one cut per kind of message
            # The CSMS stored transaction 1001 but only 1002 reached the charge point.
            assert cp.started == [(S1, 1002, ACCEPTED)]
            assert await cp.store.transaction_id(S1) == 1002
            assert cp.dead_letters() == []

    sent = outbox_calls(csms)
    assert [(r.action, r.unique_id, r.connection) for r in sent] == [
        ("StartTransaction", ids[0], 1),
        ("StartTransaction", ids[0], 2),
        ("MeterValues", ids[1], 2),
        ("MeterValues", ids[1], 3),
        ("StopTransaction", ids[2], 3),
        ("StopTransaction", ids[2], 4),
    ]
    assert [r.payload["transactionId"] for r in sent[2:]] == [1002] * 4
    assert len(csms.calls("BootNotification")) == 1  # once per process, not per connection
    assert csms.violations == []


@pytest.mark.parametrize("retry", ["reconnect", "fifteen minutes later"])
async def test_a_refused_start_is_parked_and_its_session_follows_once_accepted(
    tmp_path: Path, retry: str
) -> None:
    async with ScriptedCsms() as csms:
        refusing = True
        transaction_ids = itertools.count(1001)

        def start(call: Received) -> Answer:
            if refusing and call.payload["meterStart"] == 100:
                return Error("InternalError", "billing backend down")
            return start_reply(next(transaction_ids))

        csms.responders["StartTransaction"] = start
        async with charge_point(tmp_path, csms.url, policy=RetryPolicy(3, 0.01)) as cp:
            base = base_time()
            first = await queue_session(cp, S1, 100, [101], 102, base)
            status_id = await queue_status(cp, ConnectorStatus.PREPARING, base)
            second = await queue_session(cp, S2, 200, [201], 202, base, connector_id=2)
            await csms.wait_calls("StopTransaction")
            await cp.parked()
            await eventually("S2 confirmed", lambda: len(cp.stopped) == 1)

            sent = outbox_calls(csms)
            # Tried TransactionMessageAttempts times, waiting interval x tries in between;
            # then set aside so the next session and the status go on.
            assert [r.unique_id for r in sent] == [first[0]] * 3 + [status_id, *second]
            assert cp.sleeps == [0.01, 0.02]
            (alarm,) = cp.sender.snapshot().alarms
            assert "StartTransaction" in alarm and "parked" in alarm
            assert "InternalError" in alarm and "billing backend down" in alarm
            summary = await cp.store.outbox_summary()
            # The parked Start's MeterValues and Stop wait behind it: billing is not dropped.
            assert (summary.depth, summary.parked, summary.dead_letters) == (3, 1, 0)
            assert cp.started == [(S2, 1001, ACCEPTED)]

            refusing = False
            if retry == "reconnect":
                await csms.disconnect()  # a new connection retries parked messages at once
                later: list[str] = []
            else:
                cp.clock.shift += PARKED_RETRY_S
                later = [await queue_status(cp, ConnectorStatus.AVAILABLE, base)]
            await cp.drained()
            assert cp.sender.snapshot().alarms == ()
            assert cp.started == [(S2, 1001, ACCEPTED), (S1, 1002, ACCEPTED)]
            assert cp.dead_letters() == []

    resent = outbox_calls(csms)[len(sent) :]
    # The same Start (same id) from its own place in the queue, then its session in order.
    assert [r.unique_id for r in resent] == [first[0], first[1], first[2], *later]
    assert [r.payload["transactionId"] for r in resent[1:3]] == [1002, 1002]
    assert csms.violations == []


async def test_a_reconnect_while_the_sender_finds_the_queue_empty_retries_the_parked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconnect lands between the sender's last look at the queue and its wait."""
    async with ScriptedCsms() as csms:
        refusing = [True]
        csms.responders["StartTransaction"] = lambda _: (
            Error("InternalError", "not yet") if refusing[0] else start_reply(1001)
        )
        async with charge_point(tmp_path, csms.url, policy=RetryPolicy(1, 0.01)) as cp:
            base = base_time()
            ids = await queue_session(cp, S1, 100, [], 101, base)
            await cp.parked()
            refusing[0] = False

            read_batch = cp.store.outbox_batch
            armed = [True]

            async def read_then_reconnect(limit: int) -> list[Any]:
                rows = await read_batch(limit)
                if not rows and armed[0]:
                    armed[0] = False
                    cp.sender.reconnected()
                return rows

            monkeypatch.setattr(cp.store, "outbox_batch", read_then_reconnect)
            status_id = await queue_status(cp, ConnectorStatus.AVAILABLE, base)
            await cp.drained()
            assert not armed[0]
            assert cp.started == [(S1, 1001, ACCEPTED)]

    assert [r.unique_id for r in outbox_calls(csms)] == [ids[0], status_id, *ids]


@pytest.mark.parametrize(
    "reply",
    [
        start_reply("abc"),
        start_reply(2**70),
        {"transactionId": 7},
    ],
    ids=["transactionId abc", "transactionId 2**70", "no idTagInfo"],
)
async def test_a_start_answered_with_an_invalid_reply_is_parked_never_dead_lettered(
    tmp_path: Path, reply: dict[str, Any]
) -> None:
    async with ScriptedCsms() as csms:
        answers = [reply]
        csms.responders["StartTransaction"] = lambda _: answers[-1]
        async with charge_point(tmp_path, csms.url, policy=RetryPolicy(2, 0.01)) as cp:
            ids = await queue_session(cp, S1, 100, [101], 102, base_time())
            await cp.parked()
            assert [r.unique_id for r in outbox_calls(csms)] == [ids[0], ids[0]]
            (alarm,) = cp.sender.snapshot().alarms
            assert "StartTransaction" in alarm and "bad reply" in alarm
            assert await cp.store.transaction_id(S1) is None
            assert cp.started == []
            summary = await cp.store.outbox_summary()
            assert (summary.depth, summary.parked) == (3, 1)
            assert (summary.dead_letters, summary.quarantined) == (0, 0)

            answers.append(start_reply(4242))
            cp.sender.reconnected()
            await cp.drained()
            assert cp.started == [(S1, 4242, ACCEPTED)]
            assert cp.sender.snapshot().alarms == ()
            assert cp.dead_letters() == []

    sent = outbox_calls(csms)
    assert [r.unique_id for r in sent] == [ids[0]] * 3 + ids[1:]
    assert [r.payload["transactionId"] for r in sent[3:]] == [4242, 4242]


async def test_a_refused_stop_is_parked_with_an_alarm_and_never_dead_lettered(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms:
        refusing = [True]

        def stop(call: Received) -> Answer:
            if refusing[0] and call.payload["meterStop"] == 102:
                return Error("GenericError", "meter values do not add up")
            return {"idTagInfo": ACCEPTED}

        csms.responders["StopTransaction"] = stop
        async with charge_point(tmp_path, csms.url, policy=RetryPolicy(2, 0.01)) as cp:
            base = base_time()
            first = await queue_session(cp, S1, 100, [101], 102, base)
            second = await queue_session(cp, S2, 200, [], 202, base, connector_id=2)
            await cp.parked()
            await eventually("S2 confirmed", lambda: len(cp.stopped) == 1)
            (alarm,) = cp.sender.snapshot().alarms
            assert "StopTransaction" in alarm and "meter values do not add up" in alarm
            assert cp.dead_letters() == []
            assert cp.stopped == [(S2, ACCEPTED)]

            refusing[0] = False
            cp.sender.reconnected()
            await cp.drained()
            assert cp.stopped == [(S2, ACCEPTED), (S1, ACCEPTED)]
            assert cp.sender.snapshot().alarms == ()

    assert [r.unique_id for r in outbox_calls(csms)] == [
        *first[:2],
        first[2],
        first[2],
        *second,
        first[2],
    ]
    assert {p["transactionId"] for p in csms.payloads("StopTransaction")[:2]} == {1001}


async def test_meter_values_refused_beyond_the_attempts_go_to_the_dead_letters(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms:

        def meter_values(call: Received) -> Answer:
            if energy_of(call.payload) == "1002":
                return Error("FormationViolation", "sampledValue out of range")
            return {}

        csms.responders["MeterValues"] = meter_values
        async with charge_point(tmp_path, csms.url, policy=RetryPolicy(2, 0.01)) as cp:
            ids = await queue_session(cp, S1, 1000, [1001, 1002, 1003], 1004, base_time())
            await cp.drained()
            ((sid, action, payload, reason, kind, message_id),) = cp.dead_letters()
            stored = json.loads(payload)
            assert (sid, action, kind, message_id) == (S1, "MeterValues", "dead", ids[2])
            assert energy_of(stored) == "1002" and "transactionId" not in stored
            assert reason.startswith("refused 2 time(s)")
            assert "CallError FormationViolation: sampledValue out of range" in reason
            assert cp.sender.snapshot().alarms == ()  # resolution lost, not money
            summary = await cp.store.outbox_summary()
            assert (summary.dead_letters, summary.quarantined, summary.parked) == (1, 0, 0)

    assert [(r.action, r.unique_id) for r in outbox_calls(csms)] == [
        ("StartTransaction", ids[0]),
        ("MeterValues", ids[1]),
        ("MeterValues", ids[2]),
        ("MeterValues", ids[2]),
        ("MeterValues", ids[3]),
        ("StopTransaction", ids[4]),
    ]


async def test_unreadable_and_invalid_rows_are_quarantined_and_delivery_goes_on(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with charge_point(tmp_path, f"ws://127.0.0.1:{port}/ocpp") as cp:
        base = base_time()
        bad_values = messages.meter_values(1, sample(1002), base)
        bad_values["meterValue"][0]["sampledValue"][0]["measurand"] = "Energy.Made.Up"
        good_values = messages.meter_values(1, sample(1003), base)
        stop = messages.stop_transaction(CARD, 1004, StopReason.LOCAL, base)
        ids = [uuid.uuid4().hex for _ in range(3)]
        async with cp.store.change() as change:
            await change.begin_session(S1, 1, CARD, 1000, base)
            start = messages.start_transaction(1, CARD, 1000, base)
            await change.enqueue("StartTransaction", start, base, ids[0], S1)
        # Rows as an older or broken version could have left them, behind the Start.
        async with cp.store.db.write() as db:
            for sid, action, payload, message_id in [
                (S1, "MeterValues", "{cut short", "a" * 32),
                (None, "StartTransaction", json.dumps(start), "b" * 32),
                (S1, "MeterValues", json.dumps(bad_values), "c" * 32),
            ]:
                await db.execute(
                    "INSERT INTO outbox (session_id, action, payload, created_at, message_id,"
                    " wire) VALUES (?, ?, ?, '2025-06-01T12:00:00.000Z', ?, 1)",
                    (sid, action, payload, message_id),
                )
        async with cp.store.change() as change:
            await change.enqueue("MeterValues", good_values, base, ids[1], S1)
            await change.end_session(S1, CARD, 1004, "Local", base)
            await change.enqueue("StopTransaction", stop, base, ids[2], S1)

        async with ScriptedCsms(port=port) as csms:
            await cp.drained()
            letters = cp.dead_letters()
            alarms = cp.sender.snapshot().alarms
            summary = await cp.store.outbox_summary()
            assert cp.started == [(S1, 1001, ACCEPTED)]

    assert [(r.action, r.unique_id) for r in outbox_calls(csms)] == [
        ("StartTransaction", ids[0]),
        ("MeterValues", ids[1]),
        ("StopTransaction", ids[2]),
    ]
    assert [(kind, message_id) for *_, kind, message_id in letters] == [
        ("quarantined", "a" * 32),
        ("quarantined", "b" * 32),
        ("quarantined", "c" * 32),
    ]
    reasons = [reason for _, _, _, reason, _, _ in letters]
    assert reasons[0].startswith("unreadable: payload is not JSON")
    assert reasons[1] == "unreadable: StartTransaction without its session"
    assert "never sent" in reasons[2] and "sampledValue/0/measurand" in reasons[2]
    assert (summary.quarantined, summary.dead_letters, summary.depth) == (3, 0, 0)
    assert any("quarantined" in alarm and "not JSON" in alarm for alarm in alarms)
    assert csms.violations == []


async def test_the_csms_verdict_on_the_card_reaches_the_kiosk_with_the_transaction(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms:
        csms.id_tags[CARD] = "Blocked"
        async with charge_point(tmp_path, csms.url) as cp:
            await queue_session(cp, S1, 1000, [], 1001, base_time())
            await cp.drained()
            assert cp.started == [(S1, 1001, {"status": "Blocked"})]
            assert cp.stopped == [(S1, {"status": "Blocked"})]
            assert query(cp.db_path, "SELECT transaction_id, auth_status FROM sessions") == [
                (1001, "Blocked")
            ]


# == (a) the embedded site CSMS, which de-duplicates ====================================


@dataclass
class Stored:
    """What the site CSMS stored, in the order its repositories were called (real calls)."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        return [detail for k, detail in self.events if k == kind]


@pytest.fixture(name="stored")
def stored_fixture(monkeypatch: pytest.MonkeyPatch) -> Stored:
    """Record every call into the CSMS repositories, then let the real method run."""
    stored = Stored()
    start, stop = TransactionRepository.start, TransactionRepository.stop
    add, status = MeterValueRepository.add, ConnectorRepository.record_status

    async def record_start(self: TransactionRepository, *args: Any, **kwargs: Any) -> Any:
        outcome = await start(self, *args, **kwargs)
        stored.events.append(("start", (kwargs["meter_start"], outcome.repeated)))
        return outcome

    async def record_stop(self: TransactionRepository, *args: Any, **kwargs: Any) -> Any:
        outcome = await stop(self, *args, **kwargs)
        stored.events.append(("stop", (args[1], kwargs["meter_stop"], str(outcome))))
        return outcome

    async def record_add(self: MeterValueRepository, *args: Any, **kwargs: Any) -> Any:
        count = await add(self, *args, **kwargs)
        energy = [s.value for s in args[3] if s.measurand == ENERGY]
        stored.events.append(("meter", (args[2], energy, count)))
        return count

    async def record_status(self: ConnectorRepository, *args: Any, **kwargs: Any) -> Any:
        result = await status(self, *args, **kwargs)
        stored.events.append(("status", kwargs["status"]))
        return result

    monkeypatch.setattr(TransactionRepository, "start", record_start)
    monkeypatch.setattr(TransactionRepository, "stop", record_stop)
    monkeypatch.setattr(MeterValueRepository, "add", record_add)
    monkeypatch.setattr(ConnectorRepository, "record_status", record_status)
    return stored


class Site:
    """The real embedded CSMS on a fixed port and db file, which a test may start late."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.port = free_port()
        self.server: SiteCsms | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def add_card(self, id_tag: str = CARD) -> None:
        """Through csms.db directly, as `edgepoint cards add` does."""
        store = await open_csms_database(self.db_path, auth_iterations=1_000)
        try:
            await store.cards.add(id_tag, "Alice")
        finally:
            await store.close()

    async def start(self) -> SiteCsms:
        server = SiteCsms(
            self.db_path, "127.0.0.1", self.port, SystemClock(), heartbeat_interval=300,
            auth_iterations=1_000,
        )  # fmt: skip
        await server.register_charge_point(CP_ID, CP_KEY)
        self._task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.wait_started(), 5)
        self.server = server
        return server

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task, self.server = None, None

    async def transactions(self) -> list[Any]:
        assert self.server is not None and self.server.store is not None
        return await self.server.store.transactions.list(CP_ID)

    async def energy(self, transaction_id: int) -> list[int]:
        assert self.server is not None and self.server.store is not None
        values = await self.server.store.meter_values.list(CP_ID, transaction_id=transaction_id)
        return [int(v.sample.value) for v in values if v.sample.measurand == ENERGY]


@pytest.fixture(name="site")
async def site_fixture(tmp_path: Path) -> AsyncIterator[Site]:
    site = Site(tmp_path / "csms.db")
    await site.add_card()
    try:
        yield site
    finally:
        await site.stop()


async def test_messages_queued_while_the_site_csms_is_down_are_stored_in_order_once(
    tmp_path: Path, site: Site, stored: Stored
) -> None:
    async with charge_point(tmp_path, site.url) as cp:
        await eventually("a failed connection attempt", lambda: cp.link.snapshot().last_error != "")
        base = base_time()
        await queue_status(cp, ConnectorStatus.PREPARING, base)
        await queue_session(cp, S1, 1000, [1001, 1002, 1003], 1004, base)
        assert await cp.store.outbox_depth() == 6

        await site.start()
        await cp.drained()
        (tx,) = await site.transactions()
        assert (tx.id_tag, tx.connector_id, tx.meter_start, tx.meter_stop) == (CARD, 1, 1000, 1004)
        assert tx.id_tag_status == "Accepted" and tx.stop_reason == "Local"
        assert tx.start_timestamp == base and tx.stop_timestamp == base + timedelta(seconds=4)
        assert await site.energy(tx.transaction_id) == [1001, 1002, 1003]
        assert cp.started == [(S1, tx.transaction_id, ACCEPTED)]
        assert await cp.store.transaction_id(S1) == tx.transaction_id

    n = MEASURANDS_PER_SAMPLE
    assert stored.events == [
        ("status", "Preparing"),
        ("start", (1000, False)),
        ("meter", (tx.transaction_id, ["1001"], n)),
        ("meter", (tx.transaction_id, ["1002"], n)),
        ("meter", (tx.transaction_id, ["1003"], n)),
        ("stop", (tx.transaction_id, 1004, "stopped")),
    ]


async def test_a_cut_after_the_site_csms_stored_a_message_is_resent_and_stored_once(
    tmp_path: Path, site: Site, stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await site.start()
    cut: set[str] = set()

    def cut_after_first(repo: type, name: str) -> None:
        real = getattr(repo, name)  # already wrapped by `stored`: records, then stores

        async def store_then_cut(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await real(self, *args, **kwargs)
            if name not in cut:
                cut.add(name)
                session = server.session(CP_ID)
                assert session is not None
                session.connection.transport.abort()  # no close frame, no reply
            return result

        monkeypatch.setattr(repo, name, store_then_cut)

    cut_after_first(TransactionRepository, "start")
    cut_after_first(MeterValueRepository, "add")
    cut_after_first(TransactionRepository, "stop")

    async with charge_point(tmp_path, site.url) as cp:
        await queue_session(cp, S1, 7000, [7001, 7002], 7003, base_time())
        await cp.drained()
        assert cut == {"start", "add", "stop"}
        assert cp.link.snapshot().connects == 4
        (tx,) = await site.transactions()
        assert (tx.meter_start, tx.meter_stop) == (7000, 7003)
        assert await site.energy(tx.transaction_id) == [7001, 7002]
        assert await cp.store.transaction_id(S1) == tx.transaction_id
        assert cp.started == [(S1, tx.transaction_id, ACCEPTED)]

    tid, n = tx.transaction_id, MEASURANDS_PER_SAMPLE
    assert stored.events == [
        ("start", (7000, False)),
        ("start", (7000, True)),  # the resend got the same transaction back
        ("meter", (tid, ["7001"], n)),
        ("meter", (tid, ["7001"], 0)),  # the resend added nothing
        ("meter", (tid, ["7002"], n)),
        ("stop", (tid, 7003, "stopped")),
        ("stop", (tid, 7003, "already_stopped")),
    ]


async def test_the_site_csms_refusals_park_a_start_and_dead_letter_meter_values(
    tmp_path: Path, site: Site, stored: Stored
) -> None:
    async with charge_point(tmp_path, site.url, policy=RetryPolicy(2, 0.01)) as cp:
        base = base_time()
        # connectorId 0 is the whole charge point: the CSMS refuses a transaction on it.
        await queue_session(cp, S1, 100, [101], 102, base, connector_id=0)
        second = await queue_session(cp, S2, 200, [201, 202], 203, base + timedelta(minutes=1))
        # A connectorId the schema allows and the CSMS refuses.
        async with cp.store.db.write() as db:
            await db.execute(
                "UPDATE outbox SET payload = json_set(payload, '$.connectorId', -1)"
                " WHERE message_id = ?",
                (second[1],),
            )
        # Only now the CSMS: a sender online from the start could send that MeterValues
        # before the edit above.
        await site.start()
        await cp.parked()
        await eventually("S2 confirmed", lambda: len(cp.stopped) == 1)

        (tx,) = await site.transactions()
        assert (tx.meter_start, tx.meter_stop) == (200, 203)
        assert await site.energy(tx.transaction_id) == [202]
        ((sid, action, _, reason, kind, message_id),) = cp.dead_letters()
        assert (sid, action, kind, message_id) == (S2, "MeterValues", "dead", second[1])
        assert reason.startswith("refused 2 time(s): CallError PropertyConstraintViolation")
        (parked,) = await cp.store.outbox_parked()
        assert isinstance(parked, OutboxEntry)
        assert (parked.session_id, parked.action) == (S1, "StartTransaction")
        (alarm,) = cp.sender.snapshot().alarms
        assert "PropertyConstraintViolation" in alarm
        summary = await cp.store.outbox_summary()
        assert (summary.depth, summary.parked, summary.dead_letters) == (3, 1, 1)
        assert await cp.store.transaction_id(S1) is None
        assert cp.link.state is LinkState.ONLINE and cp.link.snapshot().connects == 1
