"""The fuzz test's actors: a hostile charger that checks every answer, and an observer thread.

`FuzzCharger` sends Cases (fuzz_frames.py) one at a time on a raw OCPP-J WebSocket and
waits for each answer before the next (OCPP-J §4.1.1), so every answer is matched to its
frame. A connection the CSMS closes for too many bad frames (1008) is reopened and the
unanswered frame sent again; a close it owes (1009, 1007) is checked and reopened too.
CALLs the CSMS sends meanwhile (its local-list sync) get plausible answers.

`Observer` runs in a thread with its own event loop, so the fuzz's own CPU work does not
delay what it measures: a well-behaved charger's Heartbeats, card taps at the kiosk until
the relay moves (control socket `tap`, status stream), and `status` answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from csms_support import open_ws
from fuzz_frames import CHARGER_ACTIONS, RESULT, Case
from scripted_charger import ScriptedCharger, default_reply
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from edgepoint.control.client import request, watch
from edgepoint.ocppj.validation import response_problem

TOO_MANY_BAD_FRAMES = (1008, "too_many_bad_frames")
ANSWER_WITHIN_S = 10.0
MAX_KEPT = 25  # failures described in full; the rest are only counted


@dataclass(frozen=True, slots=True)
class Closed:
    """The CSMS closed a fuzzing connection."""

    code: int | None
    reason: str
    bad_frames: int  # bad frames sent on that connection
    frames: int  # all frames sent on it
    owed: bool  # the frame in flight deserved exactly this close


@dataclass
class FuzzReport:
    """What happened to every frame."""

    sent: int = 0
    answered: int = 0
    wrong: list[str] = field(default_factory=list)
    wrong_count: int = 0
    unexpected: list[str] = field(default_factory=list)
    closes: list[Closed] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    # (how the frame was broken, what it got): which of the accepted codes the CSMS chose
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    csms_calls: int = 0
    slowest_answer_s: float = 0.0
    bad_frames: int = 0


class FuzzCharger:
    """One registered charger sending hostile frames; see the module docstring."""

    def __init__(self, port: int, cp_id: str, key: str) -> None:
        self.url = f"ws://127.0.0.1:{port}/ocpp/{cp_id}"
        token = base64.b64encode(f"{cp_id}:{key}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.report = FuzzReport()
        self._ws: ClientConnection | None = None
        self._bad_here = 0
        self._frames_here = 0
        self._syncs = 0

    async def run(self, cases: Iterable[Case]) -> FuzzReport:
        try:
            for case in cases:
                await self._one(case)
            await self._sync()
        finally:
            if self._ws is not None:
                await self._ws.close()
        return self.report

    # -- one frame -------------------------------------------------------------------

    async def _one(self, case: Case) -> None:
        report = self.report
        report.kinds[case.kind] += 1
        for _ in range(4):
            ws = await self._connection()
            try:
                if isinstance(case.frame, bytes) and case.as_text:
                    await ws.send(case.frame, text=True)
                else:
                    await ws.send(case.frame)
            except ConnectionClosed as closed:
                if self._closed(closed, case):
                    continue
                return
            report.sent += 1
            self._frames_here += 1
            if case.bad:
                self._bad_here += 1
                report.bad_frames += 1
            expect = case.expect
            if expect.closes is None and expect.unique_id is None:
                return  # nothing owed; anything that comes anyway is `unexpected`
            started = time.perf_counter()
            try:
                async with asyncio.timeout(ANSWER_WITHIN_S):
                    answer = await self._answer_to(ws, expect.unique_id)
            except ConnectionClosed as closed:
                if self._closed(closed, case):
                    continue
                return
            except TimeoutError:
                self._wrong(case, "no answer" if expect.closes is None else "no close")
                return
            report.slowest_answer_s = max(report.slowest_answer_s, time.perf_counter() - started)
            self._check(case, answer)
            return
        self._wrong(case, "disconnected four times in a row")

    async def _answer_to(self, ws: ClientConnection, unique_id: str | None) -> list[Any]:
        """The answer carrying `unique_id` (None: wait for the close that is owed)."""
        while True:
            raw = await ws.recv()
            try:
                message = json.loads(raw)
            except ValueError:
                self._unexpected(f"not JSON: {raw[:80]!r}")
                continue
            if not isinstance(message, list) or not message:
                self._unexpected(f"not a frame: {str(raw)[:80]}")
            elif message[0] == 2:
                await self._serve_csms_call(ws, message)
            elif unique_id is not None and len(message) > 1 and message[1] == unique_id:
                return message
            else:
                self._unexpected(str(raw)[:160])

    async def _serve_csms_call(self, ws: ClientConnection, message: list[Any]) -> None:
        self.report.csms_calls += 1
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps([3, message[1], default_reply(str(message[2]))]))

    def _check(self, case: Case, answer: list[Any]) -> None:
        report = self.report
        report.answered += 1
        if answer[0] == 3 and len(answer) == 3 and isinstance(answer[2], dict):
            got = RESULT
            action = case.kind.split(":")[0]
            if action in CHARGER_ACTIONS and (bad := response_problem(action, answer[2])):
                self._wrong(case, f"invalid {action} CALLRESULT: {bad}")
        elif (
            answer[0] == 4
            and len(answer) == 5
            and isinstance(answer[2], str)
            and isinstance(answer[3], str)
            and isinstance(answer[4], dict)
        ):
            got = answer[2]
        else:
            self._wrong(case, f"malformed answer {str(answer)[:120]}")
            return
        report.codes[got] += 1
        report.outcomes[case.kind.split(":")[-1], got] += 1
        if got not in case.expect.codes:
            cause = answer[4].get("cause", "") if answer[0] == 4 else ""
            self._wrong(case, f"got {got} ({cause!s:.80}), owed {sorted(case.expect.codes)}")

    # -- connections -----------------------------------------------------------------

    async def _connection(self) -> ClientConnection:
        if self._ws is not None:
            return self._ws
        for attempt in range(50):
            try:
                self._ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol("ocpp1.6")],
                    additional_headers=self.headers,
                    open_timeout=5,
                    close_timeout=1,
                    max_size=2**20,
                )
                break
            except InvalidStatus as err:
                # 409 while the CSMS still holds the closed connection: it is going.
                if err.response.status_code != 409 or attempt == 49:
                    raise
                await asyncio.sleep(0.02)
        assert self._ws is not None
        self.report.connections += 1
        self._bad_here = 0
        self._frames_here = 0
        return self._ws

    def _closed(self, closed: ConnectionClosed, case: Case) -> bool:
        """Record a close; True if the frame in flight must be sent again (1008 limit)."""
        code = closed.rcvd.code if closed.rcvd is not None else None
        reason = closed.rcvd.reason if closed.rcvd is not None else ""
        owed = code is not None and code == case.expect.closes
        self.report.closes.append(Closed(code, reason, self._bad_here, self._frames_here, owed))
        self._ws = None
        if owed:
            return False
        if (code, reason) == TOO_MANY_BAD_FRAMES:
            # Closed before it read this frame (the answer would have come first).
            if case.bad:
                self.report.bad_frames -= 1
            return True
        self._wrong(case, f"connection closed: {code} {reason!r}")
        return False

    async def _sync(self) -> None:
        """A last Heartbeat: whatever arrives before its answer was unexpected."""
        self._syncs += 1
        unique_id = f"sync{self._syncs}"
        ws = await self._connection()
        try:
            await ws.send(json.dumps([2, unique_id, "Heartbeat", {}]))
            async with asyncio.timeout(ANSWER_WITHIN_S):
                answer = await self._answer_to(ws, unique_id)
        except ConnectionClosed as closed:
            # The last fuzzed frames may have reached the bad-frame limit just now: the
            # close overtakes this Heartbeat. Once more, on a new connection.
            if closed.rcvd is None or (closed.rcvd.code, closed.rcvd.reason) != TOO_MANY_BAD_FRAMES:
                raise
            self.report.closes.append(
                Closed(*TOO_MANY_BAD_FRAMES, self._bad_here, self._frames_here, False)
            )
            self._ws = None
            ws = await self._connection()
            await ws.send(json.dumps([2, unique_id, "Heartbeat", {}]))
            async with asyncio.timeout(ANSWER_WITHIN_S):
                answer = await self._answer_to(ws, unique_id)
        assert answer[0] == 3, answer

    # -- bookkeeping -------------------------------------------------------------------

    def _wrong(self, case: Case, what: str) -> None:
        self.report.wrong_count += 1
        if len(self.report.wrong) < MAX_KEPT:
            frame = case.frame[:160] if isinstance(case.frame, str) else repr(case.frame[:80])
            self.report.wrong.append(f"{case.kind}: {what}; frame {frame}")

    def _unexpected(self, what: str) -> None:
        if len(self.report.unexpected) < MAX_KEPT:
            self.report.unexpected.append(what)


# -- the observer --------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass
class Observations:
    heartbeat_ms: list[float] = field(default_factory=list)
    tap_ms: list[float] = field(default_factory=list)  # tap until the relay moved (on and off)
    status_ms: list[float] = field(default_factory=list)
    csms_pids: set[int | None] = field(default_factory=set)
    csms_not_listening: int = 0
    errors: list[str] = field(default_factory=list)


class Observer:
    """A well-behaved charger, card taps at the kiosk and status polls, in their own thread."""

    def __init__(
        self,
        control_socket: Path,
        port: int,
        charger: tuple[str, str],
        *,
        card: str | None,
        heartbeat_every_s: float = 0.1,
    ) -> None:
        self._socket = control_socket
        self._port = port
        self._charger = charger
        self._card = card
        self._every = heartbeat_every_s
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fuzz observer", daemon=True)
        self.seen = Observations()
        self.foreign_transaction: int | None = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(20) or self.failure is not None:
            raise AssertionError(f"observer did not start: {self.failure!r}")

    def observe_at_least(self, heartbeats: int, taps: int = 0, within_s: float = 20) -> None:
        """Go on observing until there are that many samples: a fuzz that a fast CSMS
        answers in under a second would otherwise leave too few to judge."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.failure is None:
            if len(self.seen.heartbeat_ms) >= heartbeats and len(self.seen.tap_ms) >= taps:
                return
            time.sleep(0.05)

    def stop(self) -> Observations:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "observer did not stop"
        if self.failure is not None:
            raise AssertionError(f"observer failed: {self.failure!r}") from self.failure
        return self.seen

    def _main(self) -> None:
        try:
            asyncio.run(self._observe())
        except BaseException as err:  # reported by start() / stop()
            self.failure = err
            self._ready.set()

    async def _observe(self) -> None:
        cp_id, key = self._charger
        async with open_ws(self._port, cp_id, key) as ws:
            charger = ScriptedCharger(ws)
            receiver = asyncio.create_task(charger.run())
            await charger.boot()
            now = datetime.now(UTC).isoformat(timespec="seconds")
            self.foreign_transaction = await charger.start_transaction(1, "GOODTAG01", 1000, now)
            jobs = [asyncio.create_task(self._heartbeats(charger))]
            jobs.append(asyncio.create_task(self._statuses()))
            if self._card is not None:
                jobs.append(asyncio.create_task(self._taps(self._card)))
            self._ready.set()
            try:
                while not self._stop.is_set():
                    await asyncio.sleep(0.05)
                    for job in jobs:
                        if job.done():
                            job.result()  # a failed job fails the observer
            finally:
                for task in [*jobs, receiver]:
                    task.cancel()
                await asyncio.gather(*jobs, receiver, return_exceptions=True)

    async def _heartbeats(self, charger: ScriptedCharger) -> None:
        while True:
            started = time.perf_counter()
            try:
                reply = await charger.call("Heartbeat", {})
                assert isinstance(reply, dict) and "currentTime" in reply, reply
            except (TimeoutError, AssertionError) as err:
                self.seen.errors.append(f"heartbeat: {err!r}")
            self.seen.heartbeat_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(self._every)

    async def _statuses(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                status = await request(self._socket, "status", answer_within_s=5)
                embedded = status["links"]["embedded_csms"]
                self.seen.csms_pids.add(embedded["pid"])
                if not embedded["listening"]:
                    self.seen.csms_not_listening += 1
            except Exception as err:
                self.seen.errors.append(f"status: {err!r}")
            self.seen.status_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.25)

    async def _taps(self, card: str) -> None:
        while True:
            for closed in (True, False):
                took = await self._tap_until_relay(card, closed)
                self.seen.tap_ms.append(took * 1000)
                # The emulated reader holds a card 0.3 s; the next tap needs it gone removal_s.
                await asyncio.sleep(0.8)
            await self._until(lambda s: s["connector"]["phase"] == "Available")
            await asyncio.sleep(0.1)

    async def _tap_until_relay(self, card: str, closed: bool) -> float:
        """Seconds from the tap request until the status stream shows the relay moved."""
        async with contextlib.aclosing(watch(self._socket)) as stream:
            await anext(stream)  # the watch is registered once its first status is in
            started = time.perf_counter()
            await request(self._socket, "tap", uid=card)
            async with asyncio.timeout(5):
                async for status in stream:
                    if status["connector"]["relay_closed"] is closed:
                        return time.perf_counter() - started
        raise AssertionError("status stream ended")

    async def _until(self, check: Any) -> None:
        async with contextlib.aclosing(watch(self._socket)) as stream, asyncio.timeout(10):
            async for status in stream:
                if check(status):
                    return
