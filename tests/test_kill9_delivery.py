"""kill -9 at random points of many sessions: no Start or Stop is lost, every duplicate is a resend.

The central system is the scripted one, which does not de-duplicate: a StartTransaction
seen twice gets two transaction ids. Its responders hold some replies back, so kills land
in each window where a crash matters: a Start/Stop committed but not yet sent (the
message ahead of it is slow), sent but not answered, answered but not yet deleted from
the outbox, and while a stop is under way. After every kill the daemon starts again.
At the end every session in the charge point's database must have reached the CSMS
exactly once by content, or more often only as resends carrying the unique id of the
first try (which a de-duplicating CSMS can drop): zero lost, zero duplicates with a new id.

EDGEPOINT_KILL9_ROUNDS=150 runs a longer campaign by hand; EDGEPOINT_KILL9_SEED replays one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, query, write_config
from support.scripted_csms import Received, ScriptedCsms

from edgepoint.control.client import request

ROUNDS = int(os.environ.get("EDGEPOINT_KILL9_ROUNDS", "24"))
SEED = int(os.environ.get("EDGEPOINT_KILL9_SEED", "99"))

pytestmark = pytest.mark.timeout(60 + 3 * ROUNDS)

# Empty polls in a row that make the card away longer than rfid.removal_s (tests: 0.2 s).
EMPTY_PROBES = 6
CARD = "0A1B2C3D"
BILLING = ("StartTransaction", "StopTransaction")
# How long a held-back reply waits: long enough for a kill to land inside it.
HOLD_S = 0.6


@dataclass
class Central:
    """Answers for the scripted CSMS that also say what was in flight when the kill came."""

    csms: ScriptedCsms
    holds: dict[str, float] = field(default_factory=dict)  # action -> reply delay
    issued: dict[str, list[int]] = field(default_factory=dict)  # Start unique id -> tx ids
    in_flight: set[str] = field(default_factory=set)  # received, not answered yet
    answered: set[str] = field(default_factory=set)
    # Called as an answer is handed over for sending: lets a kill follow within milliseconds.
    on_answer: Callable[[Received], None] | None = None
    _tx: itertools.count[int] = field(default_factory=lambda: itertools.count(5001))

    def install(self) -> None:
        for action in ("StartTransaction", "StopTransaction", "StatusNotification"):
            self.csms.responders[action] = self._answer

    async def _answer(self, call: Received) -> dict[str, Any]:
        self.in_flight.add(call.unique_id)
        try:
            await asyncio.sleep(self.holds.get(call.action, 0.0))
            if call.action == "StartTransaction":
                tx = next(self._tx)
                self.issued.setdefault(call.unique_id, []).append(tx)
                return {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}
            if call.action == "StopTransaction" and "idTag" in call.payload:
                return {"idTagInfo": {"status": "Accepted"}}
            return {}
        finally:
            self.in_flight.discard(call.unique_id)
            self.answered.add(call.unique_id)
            if self.on_answer is not None:
                self.on_answer(call)

    def received(self, action: str) -> list[Received]:
        return self.csms.calls(action)

    def billing_ids(self) -> set[str]:
        return {r.unique_id for r in self.csms.received if r.action in BILLING}


async def status(daemon: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = await request(daemon.socket, "status")
    return result


async def until(
    what: str, check: Callable[[], Awaitable[bool] | bool], within_s: float = 10
) -> None:
    """Poll `check` (sync or async) until it is true."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def daemon_shows(
    daemon: Daemon, what: str, check: Callable[[dict[str, Any]], bool], within_s: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        try:
            shown = await status(daemon)
        except Exception as err:  # not up yet
            last = repr(err)
        else:
            if check(shown):
                return shown
            last = shown
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last}\n{daemon.tail()}")


def ready(s: dict[str, Any]) -> bool:
    c = s["connector"]
    return (
        s["links"]["csms"]["state"] == "online"
        and c["status"] == "Available"
        and c["last_sample"] is not None
    )


def charging_confirmed(s: dict[str, Any]) -> bool:
    c = s["connector"]
    return (
        c["status"] == "Charging"
        and c["relay_closed"]
        and c["session"] is not None
        and c["session"]["transaction_id"] is not None
    )


@dataclass(frozen=True)
class Caught:
    """The billing messages a kill left in the outbox, and what the CSMS had of them."""

    connections: tuple[int, int]  # the killed process's connections: (low, high]
    answered: set[str]
    outbox: list[tuple[Any, ...]]


class Campaign:
    """One charge point, one CSMS, and the rounds of sessions and kills between them."""

    def __init__(self, tmp_path: Path, central: Central, rng: random.Random) -> None:
        self.central = central
        self.rng = rng
        self.config = write_config(
            tmp_path,
            chargepoint__csms_url=central.csms.url,
            csms__enabled=False,
            # Once the CSMS accepted the card it is in the cache and a tap starts at once,
            # so the Start can be committed while a slow StatusNotification holds the line.
            ocpp__LocalPreAuthorize=True,
        )
        self.db = tmp_path / "var" / "edgepoint.db"
        self.daemon = Daemon(self.config)
        self.kills: Counter[str] = Counter()  # scenario -> kills
        self.caught: list[Caught] = []
        self.published = 0
        # Every kind of round comes once per deck, in a seeded order.
        self._deck: list[Callable[[], Awaitable[None]]] = []
        self.connections_before = 0

    async def start(self) -> dict[str, Any]:
        self.connections_before = len(self.central.csms.headers)
        self.daemon = Daemon(self.config).start()
        return await daemon_shows(self.daemon, "ready after a (re)start", ready)

    def kill(self, scenario: str) -> None:
        answered = set(self.central.answered)
        connections = (self.connections_before, len(self.central.csms.headers))
        self.daemon.kill()  # SIGKILL: no shutdown code runs
        self.kills[scenario] += 1
        caught = query(
            self.db, "SELECT message_id, action FROM outbox WHERE action IN (?, ?)", *BILLING
        )
        self.caught.append(Caught(connections, answered, caught))

    def windows(self) -> Counter[str]:
        """Where each Start/Stop still in the outbox stood when a kill came.

        Judged at the end, once the CSMS has read everything the killed process wrote:
        "sent" means the CSMS received it on one of that process's connections.
        """
        counts: Counter[str] = Counter()
        for kill in self.caught:
            low, high = kill.connections
            sent = {r.unique_id for r in self.central.csms.received if low < r.connection <= high}
            for message_id, action in kill.outbox:
                if message_id not in sent:
                    counts[f"{action}: committed, not sent"] += 1
                elif message_id in kill.answered:
                    counts[f"{action}: answered, not yet deleted"] += 1
                else:
                    counts[f"{action}: sent, not answered"] += 1
        return counts

    async def tap(self) -> None:
        self.published = (await status(self.daemon))["rfid"]["published"] + 1
        await request(self.daemon.socket, "tap", uid=CARD)

    async def card_gone(self) -> None:
        """The last tap was read and the card has left the field: the next tap is new."""
        await daemon_shows(
            self.daemon, "tap read", lambda s: s["rfid"]["published"] >= self.published
        )
        last: dict[str, int] = {}

        def away(status: dict[str, Any]) -> bool:
            # Polls of an empty field in a row, longer than the test config's removal_s.
            rfid = status["rfid"]
            if rfid["reads"] != last.get("reads"):
                last.update(reads=rfid["reads"], probes=rfid["probes"])
            return bool(rfid["probes"] - last["probes"] >= EMPTY_PROBES)

        await daemon_shows(self.daemon, "card gone", away)

    def session_committed(self, state: str) -> Callable[[], bool]:
        before = query(self.db, "SELECT COUNT(*) FROM sessions WHERE state = ?", state)[0][0]
        return lambda: (
            query(self.db, "SELECT COUNT(*) FROM sessions WHERE state = ?", state)[0][0] > before
        )

    def new_call(self, action: str, answered: bool) -> Callable[[], bool]:
        """True once a CALL of `action` not seen before is in flight (or answered)."""
        before = {r.unique_id for r in self.central.received(action)}

        def check() -> bool:
            fresh = {r.unique_id for r in self.central.received(action)} - before
            done = self.central.answered if answered else self.central.in_flight
            return bool(fresh & done)

        return check

    async def pause(self, up_to_s: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, up_to_s))

    # -- the rounds: each one ends with a kill -------------------------------------------

    async def start_committed_not_sent(self) -> None:
        self.central.holds = {"StatusNotification": HOLD_S}  # Preparing blocks the line
        committed = self.session_committed("active")
        await self.tap()
        await until("session committed", committed)
        await self.pause(HOLD_S / 4)

    async def start_sent_not_answered(self) -> None:
        self.central.holds = {"StartTransaction": HOLD_S}
        sent = self.new_call("StartTransaction", answered=False)
        await self.tap()
        await until("Start in flight", sent)
        await self.pause(HOLD_S / 2)

    def kill_after_answer(self, action: str) -> Callable[[], bool]:
        """SIGKILL a few milliseconds after the CSMS answers `action`: the reply may or may
        not have been committed (the outbox row deleted) by then."""
        proc = self.daemon.proc
        assert proc is not None
        # The charge point commits a reply within a millisecond: mostly kill at once.
        delay = self.rng.choice([0.0, 0.0, 0.0, self.rng.uniform(0.0, 0.002)])

        def on_answer(call: Received) -> None:
            if call.action == action:
                self.central.on_answer = None
                asyncio.get_running_loop().call_later(delay, proc.kill)

        self.central.on_answer = on_answer
        return lambda: proc.poll() is not None

    async def start_answered(self) -> None:
        killed = self.kill_after_answer("StartTransaction")
        await self.tap()
        await until("killed after the Start's answer", killed)

    async def mid_session(self) -> None:
        await self.tap()
        await daemon_shows(self.daemon, "charging", charging_confirmed)
        await self.pause(0.5)

    async def _charging_then_stop(self) -> None:
        await self.tap()
        await daemon_shows(self.daemon, "charging", charging_confirmed)
        await self.card_gone()

    async def stop_committed_not_sent(self) -> None:
        await self._charging_then_stop()
        self.central.holds = {"StatusNotification": HOLD_S}  # Finishing blocks the line
        committed = self.session_committed("stopped")
        await self.tap()
        await until("stop committed", committed)
        await self.pause(HOLD_S / 4)

    async def stop_sent_not_answered(self) -> None:
        await self._charging_then_stop()
        self.central.holds = {"StopTransaction": HOLD_S}
        sent = self.new_call("StopTransaction", answered=False)
        await self.tap()
        await until("Stop in flight", sent)
        await self.pause(HOLD_S / 2)

    async def stop_answered(self) -> None:
        await self._charging_then_stop()
        killed = self.kill_after_answer("StopTransaction")
        await self.tap()
        await until("killed after the Stop's answer", killed)

    async def stop_anywhen(self) -> None:
        await self._charging_then_stop()
        self.central.holds = {"StopTransaction": self.rng.choice([0.0, HOLD_S])}
        await self.tap()
        await self.pause(0.4)

    async def round(self) -> None:
        """Start the daemon, run the next kind of round, kill it."""
        if not self._deck:
            self._deck = [
                self.start_committed_not_sent,
                self.start_sent_not_answered,
                self.start_answered,
                self.mid_session,
                self.stop_committed_not_sent,
                self.stop_sent_not_answered,
                self.stop_answered,
                self.stop_anywhen,
            ]
            self.rng.shuffle(self._deck)
        scenario = self._deck.pop()
        await self.start()
        try:
            await scenario()
        finally:
            self.kill(scenario.__name__)
            self.central.holds = {}
            self.central.on_answer = None


def sessions(db: Path) -> list[dict[str, Any]]:
    columns = (
        "session_id, connector_id, id_tag, meter_start_wh, started_at, transaction_id,"
        " meter_stop_wh, stopped_at, stop_reason, state"
    )
    names = [c.strip() for c in columns.split(",")]
    return [
        dict(zip(names, row, strict=True)) for row in query(db, f"SELECT {columns} FROM sessions")
    ]


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True)


@dataclass
class Ledger:
    """What the CSMS received, checked against what the charge point says happened."""

    lost: list[str] = field(default_factory=list)
    new_id_duplicates: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    resends: Counter[str] = field(default_factory=Counter)

    def match(self, action: str, session: dict[str, Any], calls: list[Received]) -> None:
        sid = session["session_id"]
        if not calls:
            self.lost.append(f"{action} of session {sid}")
            return
        ids = {c.unique_id for c in calls}
        contents = {canonical(c.payload) for c in calls}
        if len(ids) > 1:
            self.new_id_duplicates.append(f"{action} of session {sid}: {len(ids)} unique ids")
        if len(contents) > 1:
            self.other.append(f"{action} of session {sid} was sent with {len(contents)} contents")
        self.resends[action] += len(calls) - 1


async def test_kill_9_anywhere_loses_no_start_or_stop_and_duplicates_only_as_resends(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    async with ScriptedCsms() as csms:
        central = Central(csms)
        central.install()
        campaign = Campaign(tmp_path, central, rng)
        try:
            for _ in range(ROUNDS):
                await campaign.round()
            # The last start: everything still queued goes out, no session stays open.
            await campaign.start()
            drained = await daemon_shows(
                campaign.daemon,
                "outbox drained, no session open",
                lambda s: s["outbox"]["depth"] == 0 and s["connector"]["session"] is None,
                within_s=30,
            )
            code, _ = campaign.daemon.stop()
            assert code == 0, campaign.daemon.tail()
        finally:
            campaign.daemon.kill()

    assert drained["outbox"]["dead_letters"] == 0 and drained["outbox"]["quarantined"] == 0
    assert drained["outbox"]["parked"] == 0 and drained["alarms"] == []
    assert query(campaign.db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert csms.violations == []

    rows = sessions(campaign.db)
    assert rows, "no session was ever committed"
    ledger = Ledger()
    starts, stops = csms.calls("StartTransaction"), csms.calls("StopTransaction")
    matched: set[str] = set()
    for row in rows:
        assert row["state"] == "stopped" and row["transaction_id"] is not None, row
        mine_start = [
            c
            for c in starts
            if (c.payload["idTag"], c.payload["meterStart"], c.payload["timestamp"])
            == (row["id_tag"], row["meter_start_wh"], row["started_at"])
        ]
        mine_stop = [
            c
            for c in stops
            if (c.payload["transactionId"], c.payload["timestamp"])
            == (row["transaction_id"], row["stopped_at"])
        ]
        ledger.match("StartTransaction", row, mine_start)
        ledger.match("StopTransaction", row, mine_stop)
        matched |= {c.unique_id for c in mine_start + mine_stop}
        # The transaction id the charge point keeps is one the CSMS gave for this Start.
        given = [tx for c in mine_start for tx in central.issued.get(c.unique_id, [])]
        if row["transaction_id"] not in given:
            ledger.other.append(
                f"session {row['session_id']}: tx {row['transaction_id']} not in {given}"
            )
        for stop in mine_stop:
            if stop.payload["meterStop"] < row["meter_start_wh"]:
                ledger.other.append(f"session {row['session_id']}: meterStop below meterStart")
    phantoms = [c for c in starts + stops if c.unique_id not in matched]
    windows = campaign.windows()

    print(
        f"\nkill -9 campaign (seed {SEED}): {sum(campaign.kills.values())} kills"
        f" in {time.monotonic() - started:.1f} s, {len(rows)} sessions;"
        f" CSMS saw {len(starts)} StartTransaction and {len(stops)} StopTransaction;"
        f" resends (same unique id) {dict(ledger.resends)};"
        f" duplicates with a new id {len(ledger.new_id_duplicates)}; lost {len(ledger.lost)}"
        f"\n  kills by round: {dict(campaign.kills)}"
        f"\n  billing messages caught by a kill: {dict(windows)}"
    )
    assert ledger.lost == [], ledger.lost
    assert ledger.new_id_duplicates == [], ledger.new_id_duplicates
    assert ledger.other == [], ledger.other
    assert phantoms == [], [(c.action, c.payload) for c in phantoms]
    # Every resend is explained: each one follows a kill that caught its message sent
    # (or answered) but not yet deleted, and each such kill costs exactly one resend.
    caught_sent = sum(n for window, n in windows.items() if "not sent" not in window)
    assert sum(ledger.resends.values()) == caught_sent, (dict(ledger.resends), dict(windows))
    if ROUNDS >= 8:  # one full deck: the held replies put a kill in each of these windows
        for action in BILLING:
            for window in ("committed, not sent", "sent, not answered"):
                assert windows[f"{action}: {window}"] > 0, (action, window, dict(windows))
