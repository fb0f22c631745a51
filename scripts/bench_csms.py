"""Benchmark the embedded CSMS under N simulated chargers, beside a prototype-style server.

Two servers get the same load, one after the other, on this machine (load generator included):
- edgepoint: a real `edgepoint run` (embedded CSMS on a free loopback port, simulated hardware,
  its own kiosk charge point connected to it);
- prototype: scripts/prototype_csms.py (the `ocpp` library's dispatcher, blocking sqlite3, one
  INSERT and one COMMIT per message, blocking PBKDF2 Basic auth).

Phases, per server:
1. idle taps (edgepoint only): tap-to-relay at the kiosk, control socket as scripts/bench.py;
2. connect: all --chargers chargers connect at the same instant (HTTP Basic auth, subprotocol
   ocpp1.6) and send BootNotification; time until all are open and all are Accepted;
3. load: the first --load-chargers chargers offer --rate calls/s in total (open loop) for
   --duration s: a mix of MeterValues (50 %), StatusNotification (25 %) and Heartbeat (25 %);
4. sweep: the same at rising rates, to find the highest throughput whose p99 stays under 50 ms;
5. full rate: the load chargers in closed loop (next CALL as soon as the reply is in), with the
   kiosk's taps measured meanwhile (edgepoint);
6. storm: every charger's TCP connection drops at once; each reconnects at once and sends a
   StatusNotification; time until all are answered again.

Latency: `rtt` is send to reply; `lag` is scheduled send time to reply, so a charger that falls
behind its schedule (OCPP-J allows one CALL in flight) counts its wait (no coordinated
omission). A rate is sustained when >= 95 % of the offered calls complete, lag p99 < 50 ms and no
call fails. The throughput target compares edgepoint's highest sustained rate with the most the
prototype completed in any phase at any latency (as the issue compared 438 with 770 calls/s).

The chargers run in --workers processes (1), each on its own loopback source address
(127.1.x.y; --same-source for all on 127.0.0.1), no permessage-deflate (--deflate to offer it),
no pings of their own (the server's are answered), server CALLs answered NotSupported, connect
retried after 1-3 s. Frames are pre-built strings; nothing is schema-checked on the generator's
side (tests/test_bench_csms_smoke.py checks the frames once). CPU and RSS cover the server's
process tree; `other_cpu_pct` is what the rest of the machine used meanwhile (noise).

Keys are registered with edgepoint's DEFAULT_AUTH_ITERATIONS in both servers (the daemon's
config has no iteration setting); the registered databases are cached under
~/.cache/edgepoint-bench and copied for each run, so only the first run pays the hashing.

Usage: scripts/bench-csms [--quick] [--chargers N] [--load-chargers N] [--rate R] [--duration S]
       [--workers K] [--only edgepoint|prototype] [--skip-storm] [--skip-sweep] [--taps N]
       [--step-duration S] [--connect-deadline S] [--deflate] [--same-source]
Prints progress and a PASS/FAIL table on stderr, one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)
from websockets.typing import Subprotocol

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
SUBPROTOCOL = Subprotocol("ocpp1.6")
ACTIONS = ("Heartbeat", "StatusNotification", "MeterValues")
# Half MeterValues, a quarter each of StatusNotification and Heartbeat; each charger starts
# at a random place in the cycle so the server sees the mix at every instant.
MIX = ("MeterValues", "StatusNotification", "MeterValues", "Heartbeat")
P99_TARGET_MS = 50.0
SUSTAINED_SHARE = 0.95
NOISY_CPU_PCT = 15.0  # CPU (% of one core) used by others during a phase worth a warning
OPEN_TIMEOUT_S = 30.0  # per connection attempt (TCP + HTTP upgrade incl. the server's auth)
REPLY_TIMEOUT_S = 30.0  # what chargers commonly wait for a CALLRESULT
CARD = "04A1B2C3"
Record = tuple[str, float, float, float, str]  # action, scheduled, sent, replied, outcome


# ---------------------------------------------------------------- the simulated chargers


def charger_ids(count: int) -> list[str]:
    """Charge point identities BENCH-0001... (valid for both servers)."""
    return [f"BENCH-{n:04d}" for n in range(1, count + 1)]


def loopback_source(index: int) -> str:
    """Charger `index`'s own loopback source address (127.1.0.1, 127.1.0.2, ...).

    On a site each charger has its own IP; per-address limits must see one charger each.
    """
    return f"127.{1 + index // 62_500}.{index // 250 % 250}.{index % 250 + 1}"


def password_for(charger_id: str) -> str:
    """A charger's Basic-auth key: 32 hex characters, derived so every process agrees."""
    return hashlib.sha256(f"edgepoint-bench:{charger_id}".encode()).hexdigest()[:32]


class UtcStamp:
    """RFC 3339 UTC time with milliseconds and `Z`, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


_BOOT = (
    '[2,"%s","BootNotification",{"chargePointVendor":"BenchCo","chargePointModel":"SIM-AC22",'
    '"chargePointSerialNumber":"%s","firmwareVersion":"1.4.2"}]'
)
_HEARTBEAT = '[2,"%s","Heartbeat",{}]'
_STATUS = (
    '[2,"%s","StatusNotification",{"connectorId":%d,"errorCode":"NoError","status":"%s",'
    '"timestamp":"%s"}]'
)
_SAMPLE = (
    '{"value":"%s","context":"Sample.Periodic","measurand":"%s",%s"location":"Outlet","unit":"%s"}'
)
_METER_VALUES = (
    '[2,"%s","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"%s","sampledValue":['
    + ",".join(
        (
            _SAMPLE % ("%d", "Energy.Active.Import.Register", "", "Wh"),
            _SAMPLE % ("%d", "Power.Active.Import", "", "W"),
            _SAMPLE % ("%.1f", "Current.Import", '"phase":"L1",', "A"),
            _SAMPLE % ("%.1f", "Voltage", '"phase":"L1-N",', "V"),
        )
    )
    + "]}]}]"
)


class Frames:
    """One charger's CALL texts from templates: only the id, the time and the readings vary."""

    def __init__(self, charger_id: str, tag: str) -> None:
        self.charger_id = charger_id
        self._tag = tag
        self._count = 0
        self._stamp = UtcStamp()
        self._energy_wh = random.randrange(10_000, 5_000_000)
        self._plugged = False

    def _uid(self) -> str:
        self._count += 1
        return f"{self._tag}{self._count}"

    def build(self, action: str) -> tuple[str, str]:
        """Return (unique id, CALL text) for one of ACTIONS or BootNotification."""
        uid = self._uid()
        if action == "MeterValues":
            self._energy_wh += 2  # readings only go up, as a real meter's
            wiggle = (self._count % 7) * 0.1
            text = _METER_VALUES % (
                uid,
                self._stamp(),
                self._energy_wh,
                7360 + self._count % 11,
                31.8 + wiggle,
                229.6 + wiggle,
            )
        elif action == "StatusNotification":
            self._plugged = not self._plugged
            text = _STATUS % (uid, 1, "Preparing" if self._plugged else "Available", self._stamp())
        elif action == "Heartbeat":
            text = _HEARTBEAT % uid
        elif action == "BootNotification":
            text = _BOOT % (uid, self.charger_id)
        else:
            raise ValueError(f"no template for {action}")
        return uid, text


class Link:
    """One open WebSocket of a charger: a reader routes the reply to the one CALL in flight."""

    def __init__(self, ws: ClientConnection, sock: socket.socket) -> None:
        self.ws = ws
        self._sock = sock
        self._uid: str | None = None
        self._waiter: asyncio.Future[tuple[Any, float]] | None = None
        self.stray_replies = 0
        self.server_calls = 0
        self.reader = asyncio.create_task(self._read())

    @property
    def open(self) -> bool:
        return not self.reader.done()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    continue
                try:
                    frame = json.loads(message)
                    kind, uid = frame[0], frame[1]
                except (ValueError, IndexError, TypeError, KeyError):
                    continue
                if kind == 2:
                    # The bench's chargers implement no CSMS->CP action; answer as OCPP-J says.
                    self.server_calls += 1
                    await self.ws.send(json.dumps([4, uid, "NotSupported", "bench charger", {}]))
                elif uid == self._uid and self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result((frame, now))
                else:
                    self.stray_replies += 1
        except ConnectionClosed:
            pass
        finally:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result((None, time.monotonic()))

    async def call(self, uid: str, text: str, timeout: float) -> tuple[str, float, Any]:
        """Send a CALL; return (outcome, monotonic time of the reply, reply payload)."""
        waiter: asyncio.Future[tuple[Any, float]] = asyncio.get_running_loop().create_future()
        self._uid, self._waiter = uid, waiter
        try:
            try:
                await self.ws.send(text)
            except ConnectionClosed:
                return "closed", time.monotonic(), None
            try:
                async with asyncio.timeout(timeout):
                    frame, replied = await waiter
            except TimeoutError:
                return "timeout", time.monotonic(), None
        finally:
            self._uid = self._waiter = None
        if frame is None:
            return "closed", replied, None
        if frame[0] == 3 and len(frame) >= 3:
            return "ok", replied, frame[2]
        if frame[0] == 4 and len(frame) >= 3:
            return f"CallError {frame[2]}", replied, None
        return "bad reply", replied, None

    def drop(self) -> None:
        """End the TCP connection now, without a WebSocket close (a charger losing its link)."""
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._sock.shutdown(socket.SHUT_RDWR)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


def _classify(err: BaseException) -> str:
    if isinstance(err, InvalidStatus):
        return f"HTTP {err.response.status_code}"
    if isinstance(err, TimeoutError):
        return "connect timeout"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, InvalidMessage):
        # The server closed the TCP connection instead of answering the upgrade (e.g. its own
        # handshake timeout ran out while the request waited for authentication).
        return "closed before the HTTP response"
    if isinstance(err, InvalidHandshake | ConnectionClosed):
        return type(err).__name__
    if isinstance(err, OSError):
        return f"OSError {err.errno}"
    return type(err).__name__


class Charger:
    """One simulated charger: its identity, frames and current link."""

    def __init__(
        self,
        charger_id: str,
        password: str,
        url: str,
        tag: str,
        deflate: bool,
        source: str | None = None,
    ) -> None:
        self.id = charger_id
        self._source = source
        self.url = url
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        token = base64.b64encode(f"{charger_id}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._deflate = deflate
        self.frames = Frames(charger_id, tag)
        self.link: Link | None = None
        self.mix_offset = random.randrange(len(MIX))

    @property
    def online(self) -> bool:
        return self.link is not None and self.link.open

    async def open_link(self, timeout: float) -> Link:
        """Open TCP (our own socket, so `drop` can cut it) and upgrade with Basic auth."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self._source is not None:
                sock.bind((self._source, 0))
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, self._address)
                ws = await connect(
                    f"{self.url}/{self.id}",
                    sock=sock,
                    subprotocols=[SUBPROTOCOL],
                    additional_headers=self._headers,
                    compression="deflate" if self._deflate else None,
                    open_timeout=None,
                    # Server pings are answered; the charger sends none of its own (a stalled
                    # server would otherwise see its connections closed under it).
                    ping_interval=None,
                    close_timeout=1,
                    proxy=None,
                    user_agent_header="edgepoint-bench",
                )
        except BaseException:
            sock.close()
            raise
        return Link(ws, sock)

    async def go_online(self, at: float, deadline_s: float, probe: str) -> dict[str, Any]:
        """Connect (retrying after 1-3 s like a charger) and get `probe` answered."""
        attempts = 0
        errors: Counter[str] = Counter()
        opened: float | None = None
        while True:
            remaining = at + deadline_s - time.monotonic()
            if remaining <= 0:
                return {"open_s": None, "online_s": None, "attempts": attempts, "errors": errors}
            attempts += 1
            try:
                link = await self.open_link(min(OPEN_TIMEOUT_S, remaining))
            except Exception as err:
                errors[_classify(err)] += 1
                await asyncio.sleep(min(random.uniform(1, 3), max(0.0, remaining - 0.1)))
                continue
            opened = time.monotonic()
            if link.ws.subprotocol != SUBPROTOCOL:
                errors["no ocpp1.6 subprotocol"] += 1
            uid, text = self.frames.build(probe)
            outcome, replied, payload = await link.call(uid, text, min(REPLY_TIMEOUT_S, remaining))
            if outcome == "ok" and probe == "BootNotification":
                status = payload.get("status") if isinstance(payload, dict) else None
                outcome = "ok" if status == "Accepted" else f"boot {status}"
            if outcome == "ok":
                self.link = link
                return {
                    "open_s": opened - at,
                    "online_s": replied - at,
                    "attempts": attempts,
                    "errors": errors,
                }
            errors[outcome] += 1
            await link.close()
            await asyncio.sleep(min(random.uniform(1, 3), max(0.0, remaining - 0.1)))


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Fleet:
    """The chargers of one process: connect them, load them, drop them (monotonic times)."""

    def __init__(
        self,
        url: str,
        credentials: Sequence[tuple[str, str]],
        *,
        tag: str = "",
        deflate: bool = False,
        sources: Sequence[str | None] | None = None,
    ) -> None:
        self.chargers = [
            Charger(
                cp_id, password, url, f"{tag}{n}-", deflate, None if sources is None else sources[n]
            )
            for n, (cp_id, password) in enumerate(credentials)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._sleeping: set[asyncio.Task[None]] = set()
        self._records: list[Record] = []
        self._send_lag: list[tuple[float, float]] = []  # (sent, lag) when on schedule
        self._stopping = False
        self._not_online = 0

    def online(self) -> int:
        return sum(c.online for c in self.chargers)

    async def connect(self, at: float, deadline_s: float, probe: str) -> list[dict[str, Any]]:
        """From `at`, bring every offline charger online at once; one result per charger."""
        await _sleep_until(at)
        waiting = [c for c in self.chargers if not c.online]
        return list(await asyncio.gather(*(c.go_online(at, deadline_s, probe) for c in waiting)))

    def start_load(
        self, at: float, rate_per_charger: float | None, active: int, reply_timeout: float
    ) -> None:
        """Start the first `active` chargers: open loop at `rate_per_charger`, None = closed."""
        self._records, self._send_lag = [], []
        self._stopping = False
        chosen = self.chargers[:active]
        self._not_online = sum(not c.online for c in chosen)
        interval = None if rate_per_charger is None else 1.0 / rate_per_charger
        for charger in chosen:
            if charger.link is None or not charger.online:
                continue
            first = at + (random.uniform(0, interval) if interval else random.uniform(0, 0.05))
            self._tasks.append(
                asyncio.create_task(
                    self._drive(charger, charger.link, interval, first, reply_timeout)
                )
            )

    async def _drive(
        self,
        charger: Charger,
        link: Link,
        interval: float | None,
        scheduled: float,
        reply_timeout: float,
    ) -> None:
        step = charger.mix_offset
        replied = 0.0
        task = asyncio.current_task()
        assert task is not None
        records, send_lag = self._records, self._send_lag
        while not self._stopping:
            delay = scheduled - time.monotonic()
            if delay > 0:
                self._sleeping.add(task)
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._sleeping.discard(task)
                if self._stopping:
                    return
            action = MIX[step % len(MIX)]
            step += 1
            uid, text = charger.frames.build(action)
            sent = time.monotonic()
            if replied <= scheduled:  # on schedule: the gap is the generator's own delay
                send_lag.append((sent, sent - scheduled))
            outcome, replied, _ = await link.call(uid, text, reply_timeout)
            records.append((action, scheduled, sent, replied, outcome))
            if outcome == "closed":
                return
            scheduled = scheduled + interval if interval is not None else replied

    async def stop_load(
        self, window_from: float, window_to: float, grace_s: float = 10
    ) -> dict[str, Any]:
        """Stop sending; return what completed in the window, raw, for `load_summary`."""
        self._stopping = True
        for task in list(self._sleeping):
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return window_answer(
            self._records, self._send_lag, window_from, window_to, self._not_online
        )

    async def storm(self, at: float, deadline_s: float) -> list[dict[str, Any]]:
        """At `at` drop every charger's connection; all reconnect at once (StatusNotification)."""
        await _sleep_until(at)
        for charger in self.chargers:
            if charger.link is not None:
                charger.link.drop()
                charger.link = None
        return await self.connect(at, deadline_s, "StatusNotification")

    def counters(self) -> dict[str, int]:
        links = [c.link for c in self.chargers if c.link is not None]
        return {
            "online": self.online(),
            "stray_replies": sum(link.stray_replies for link in links),
            "server_calls": sum(link.server_calls for link in links),
        }

    async def close(self) -> None:
        await asyncio.gather(*(c.link.close() for c in self.chargers if c.link is not None))


def window_answer(
    records: Iterable[Record],
    send_lag: Iterable[tuple[float, float]],
    window_from: float,
    window_to: float,
    not_online: int,
) -> dict[str, Any]:
    """Calls answered inside [from, to]: latencies in ms per action, failures by kind."""
    actions: dict[str, dict[str, Any]] = {a: {"rtt": [], "lag": [], "early": 0} for a in ACTIONS}
    errors: Counter[str] = Counter()
    for action, scheduled, sent, replied, outcome in records:
        if not window_from <= replied <= window_to:
            continue
        if outcome != "ok":
            errors[outcome] += 1
            continue
        if scheduled < window_from:
            # Completed in the window but scheduled during warm-up: counts for throughput,
            # not for latency (warm-up latencies are the connection's, not the steady state's).
            actions[action]["early"] += 1
            continue
        actions[action]["rtt"].append(round((replied - sent) * 1000, 3))
        actions[action]["lag"].append(round((replied - scheduled) * 1000, 3))
    return {
        "actions": actions,
        "errors": dict(errors),
        "send_lag": [
            round(lag * 1000, 3) for sent, lag in send_lag if window_from <= sent <= window_to
        ],
        "not_online": not_online,
    }


# ------------------------------------------------------------ statistics and merging


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None when there is nothing to rank)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 2)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": round(max(values), 2) if values else None,
    }


def load_summary(
    answers: Sequence[dict[str, Any]], window_s: float, offered_per_s: float | None, chargers: int
) -> dict[str, Any]:
    """Merge the workers' window answers into per-action and total numbers."""
    per_action: dict[str, Any] = {}
    all_rtt: list[float] = []
    all_lag: list[float] = []
    completed = 0
    errors: Counter[str] = Counter()
    send_lag: list[float] = []
    for answer in answers:
        errors.update(answer["errors"])
        send_lag.extend(answer["send_lag"])
    for action in ACTIONS:
        rtt = [v for a in answers for v in a["actions"][action]["rtt"]]
        lag = [v for a in answers for v in a["actions"][action]["lag"]]
        early = sum(a["actions"][action]["early"] for a in answers)
        done = len(rtt) + early
        completed += done
        all_rtt.extend(rtt)
        all_lag.extend(lag)
        per_action[action] = {
            "completed": done,
            "per_s": round(done / window_s, 1),
            "rtt_ms": spread(rtt),
            "lag_ms": spread(lag),
        }
    share = None if not offered_per_s else round(completed / (offered_per_s * window_s), 3)
    p99_lag = pct(all_lag, 99)
    failed = sum(errors.values())
    return {
        "mode": "closed loop" if offered_per_s is None else "open loop",
        "chargers": chargers,
        "offered_per_s": offered_per_s,
        "window_s": round(window_s, 2),
        "completed": completed,
        "completed_per_s": round(completed / window_s, 1),
        "completed_share": share,
        "all": {"rtt_ms": spread(all_rtt), "lag_ms": spread(all_lag)},
        "actions": per_action,
        "errors": dict(errors),
        "failed_calls": failed,
        "chargers_not_online": sum(a["not_online"] for a in answers),
        "generator_send_lag_ms": spread(send_lag),
        "sustained": (
            share is not None
            and share >= SUSTAINED_SHARE
            and p99_lag is not None
            and p99_lag < P99_TARGET_MS
            and failed == 0
        ),
    }


def online_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-charger connect (or reconnect) results."""
    opened = [r["open_s"] for r in results if r["open_s"] is not None]
    online = [r["online_s"] for r in results if r["online_s"] is not None]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    everyone = len(online) == len(results)
    return {
        "chargers": len(results),
        "online": len(online),
        "all_open_s": round(max(opened), 3) if opened and len(opened) == len(results) else None,
        "all_online_s": round(max(online), 3) if online and everyone else None,
        "online_s": spread(online),
        "attempts": sum(r["attempts"] for r in results),
        "errors": dict(errors),
    }


# --------------------------------------------------------------- generator processes


async def worker_main() -> None:
    """A generator subprocess: one JSON command per stdin line, one JSON answer per line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet: Fleet | None = None

    def answer(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "setup":
            fleet = Fleet(
                cmd["url"],
                cmd["credentials"],
                tag=cmd["tag"],
                deflate=cmd["deflate"],
                sources=cmd["sources"],
            )
            answer({"ok": True})
        elif op == "quit":
            if fleet is not None:
                await fleet.close()
            answer({"ok": True})
            return
        elif fleet is None:
            answer({"error": "setup first"})
        elif op == "connect":
            answer(await fleet.connect(cmd["at"], cmd["deadline_s"], cmd["probe"]))
        elif op == "start_load":
            fleet.start_load(
                cmd["at"], cmd["rate_per_charger"], cmd["active"], cmd["reply_timeout"]
            )
            answer({"ok": True})
        elif op == "stop_load":
            answer(await fleet.stop_load(cmd["from"], cmd["to"]))
        elif op == "storm":
            answer(await fleet.storm(cmd["at"], cmd["deadline_s"]))
        elif op == "counters":
            answer(fleet.counters())
        else:
            answer({"error": f"unknown op {op}"})


class Generator:
    """The load generator as K worker processes, charger i on worker i mod K."""

    def __init__(self, procs: list[asyncio.subprocess.Process], shares: list[int]) -> None:
        self._procs = procs
        self._shares = shares

    @classmethod
    async def start(
        cls,
        url: str,
        credentials: Sequence[tuple[str, str]],
        workers: int,
        deflate: bool,
        sources: Sequence[str | None] | None = None,
    ) -> Generator:
        procs = []
        for _ in range(workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )
            procs.append(proc)
        generator = cls(procs, [len(credentials[w::workers]) for w in range(workers)])
        await generator._ask(
            [
                {
                    "op": "setup",
                    "url": url,
                    "credentials": list(credentials[w::workers]),
                    "sources": None if sources is None else list(sources[w::workers]),
                    "tag": f"w{w}c",
                    "deflate": deflate,
                }
                for w in range(workers)
            ]
        )
        return generator

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def _ask(self, commands: Sequence[dict[str, Any]]) -> list[Any]:
        async def one(proc: asyncio.subprocess.Process, cmd: dict[str, Any]) -> Any:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await proc.stdin.drain()
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"generator worker {proc.pid} died")
            return json.loads(line)

        return list(
            await asyncio.gather(*(one(p, c) for p, c in zip(self._procs, commands, strict=True)))
        )

    async def _ask_all(self, cmd: dict[str, Any]) -> list[Any]:
        return await self._ask([cmd] * len(self._procs))

    async def connect(self, deadline_s: float, probe: str = "BootNotification") -> dict[str, Any]:
        at = time.monotonic() + 0.3
        answers = await self._ask_all(
            {"op": "connect", "at": at, "deadline_s": deadline_s, "probe": probe}
        )
        return online_summary([r for answer in answers for r in answer])

    async def storm(self, deadline_s: float) -> dict[str, Any]:
        at = time.monotonic() + 0.3
        answers = await self._ask_all({"op": "storm", "at": at, "deadline_s": deadline_s})
        return online_summary([r for answer in answers for r in answer])

    async def start_load(self, at: float, rate: float | None, active: int) -> None:
        k = len(self._procs)
        await self._ask(
            [
                {
                    "op": "start_load",
                    "at": at,
                    "rate_per_charger": None if rate is None else rate / active,
                    "active": len(range(w, active, k)),
                    "reply_timeout": REPLY_TIMEOUT_S,
                }
                for w in range(k)
            ]
        )

    async def stop_load(self, window_from: float, window_to: float) -> list[dict[str, Any]]:
        return await self._ask_all({"op": "stop_load", "from": window_from, "to": window_to})

    async def counters(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for answer in await self._ask_all({"op": "counters"}):
            total.update(answer)
        return dict(total)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ask_all({"op": "quit"}), 15)
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


# ------------------------------------------------------------ process measurements


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and its live descendants (the daemon may run the CSMS in a child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [
        Path(a.decode(errors="replace")).name if n == 0 else a.decode(errors="replace")
        for n, a in enumerate(argv)
        if a
    ]
    return " ".join(words)[:100]


def memory_mib(pid: int) -> dict[str, Any]:
    """RSS and peak RSS (VmHWM) of the process tree: totals and per process."""
    processes: list[dict[str, Any]] = []
    for member in process_tree(pid):
        values = {}
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)
        processes.append(
            {
                "pid": member,
                "command": _command(member),
                "rss_mib": values.get("VmRSS", 0.0),
                "peak_rss_mib": values.get("VmHWM", 0.0),
            }
        )
    return {
        "rss_mib": round(sum(p["rss_mib"] for p in processes), 1),
        # Sum of each process's own peak: an upper bound of the tree's peak.
        "peak_rss_mib": round(sum(p["peak_rss_mib"] for p in processes), 1),
        "processes": processes,
    }


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over its cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / tick, (busy + idle + iowait) / tick


class CpuMeter:
    """CPU used between start() and read() by the server, the generator and the rest.

    The rest is everything else on the machine: other people's processes make numbers noisy.
    """

    def __init__(self, server_pid: int, generator_pids: Sequence[int]) -> None:
        self._server = server_pid
        self._generator = list(generator_pids)
        self._t0 = 0.0
        self._s0: dict[int, float] = {}
        self._g0 = 0.0
        self._me0 = 0.0
        self._busy0 = 0.0

    def _gen(self) -> float:
        return sum(cpu_seconds(pid) for pid in self._generator)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._s0 = {pid: cpu_seconds(pid) for pid in process_tree(self._server)}
        self._g0 = self._gen()
        self._me0 = cpu_seconds(os.getpid())
        self._busy0 = machine_busy_seconds()[0]

    def read(self) -> dict[str, Any]:
        wall = max(1e-6, time.monotonic() - self._t0)
        used = {
            pid: cpu_seconds(pid) - self._s0.get(pid, 0.0) for pid in process_tree(self._server)
        }
        server = sum(used.values())
        generator = self._gen() - self._g0
        me = cpu_seconds(os.getpid()) - self._me0
        busy = machine_busy_seconds()[0] - self._busy0
        result: dict[str, Any] = {
            "server_cpu_pct": round(server / wall * 100, 1),
            "generator_cpu_pct": round(generator / wall * 100, 1),
            # The rest of the machine (incl. the kernel's network work for both sides);
            # tens of percent mean someone else was using the cores.
            "other_cpu_pct": round(max(0.0, busy - server - generator - me) / wall * 100, 1),
        }
        if len(used) > 1:
            result["server_cpu_pct_by_process"] = {
                f"{pid} {_command(pid)}": round(cpu / wall * 100, 1) for pid, cpu in used.items()
            }
        return result


# ----------------------------------------------------------------------- the servers


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "edgepoint-bench"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _fingerprint(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


def progress(message: str) -> None:
    print(f"[bench-csms {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def edgepoint_registrations(ids: Sequence[str]) -> Path:
    """A csms.db with every charger registered through the Python API, cached per code version."""
    from edgepoint.clock import SystemClock
    from edgepoint.csms import db as csms_db
    from edgepoint.csms import schema

    key = _fingerprint(
        Path(csms_db.__file__).read_bytes(),
        Path(schema.__file__).read_bytes(),
        str(csms_db.DEFAULT_AUTH_ITERATIONS).encode(),
        ",".join(ids).encode(),
    )
    path = cache_dir() / f"edgepoint-csms-{len(ids)}-{key}.db"
    if path.exists():
        return path
    progress(
        f"registering {len(ids)} chargers in a csms.db (PBKDF2, "
        f"{csms_db.DEFAULT_AUTH_ITERATIONS} iterations; cached for later runs) ..."
    )
    building = path.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    async with csms_db.open_csms_store(building, SystemClock()) as store:
        await asyncio.gather(
            *(store.charge_points.set_auth_key(cp_id, password_for(cp_id)) for cp_id in ids)
        )
    _checkpoint(building)
    os.replace(building, path)
    return path


def _checkpoint(path: Path) -> None:
    """Fold the WAL into the file so that copying the file alone copies everything."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def prototype_registrations(ids: Sequence[str]) -> Path:
    """The prototype's database with every charger's PBKDF2 hash, cached the same way."""
    script = SCRIPTS / "prototype_csms.py"
    key = _fingerprint(script.read_bytes(), ",".join(ids).encode())
    path = cache_dir() / f"prototype-{len(ids)}-{key}.db"
    if path.exists():
        return path
    progress(f"registering {len(ids)} chargers in the prototype's database ...")
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        credentials = Path(tmp) / "credentials.csv"
        with credentials.open("w", newline="") as handle:
            csv.writer(handle).writerows((cp_id, password_for(cp_id)) for cp_id in ids)
        subprocess.run(
            [
                sys.executable,
                str(script),
                "register",
                "--db",
                str(building),
                "--credentials",
                str(credentials),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    _checkpoint(building)
    os.replace(building, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # a daemon started here must not talk to our systemd
    return env


class Server(Protocol):
    """What the phases need of a server under test."""

    name: str

    @property
    def pid(self) -> int: ...
    @property
    def url(self) -> str: ...

    async def start(self) -> None: ...
    async def stop(self) -> dict[str, Any]: ...


class EdgepointServer:
    """`edgepoint run` on simulated hardware with the embedded CSMS on a free loopback port."""

    name = "edgepoint"

    def __init__(self, folder: Path, ids: Sequence[str]) -> None:
        self.folder = folder
        self.ids = ids
        self.sock = folder / "var" / "edgepoint.sock"
        self.log = folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def _write_config(self) -> Path:
        self.port = free_port()
        path = self.folder / "config.toml"
        path.write_text(
            f"""
[station]
id = "EP-BENCH-CSMS"
[chargepoint]
csms_url = "ws://127.0.0.1:{self.port}/ocpp"
[csms]
host = "127.0.0.1"
port = {self.port}
heartbeat_interval = 300
[storage]
dir = "var"
[simulation]
charge_power_w = 36000
telemetry_interval_s = 0.1
[control]
socket = "var/edgepoint.sock"
[log]
level = "WARNING"
[safety]
# The simulated 36 kW (single phase, about 157 A) is not an over-current here.
max_current_a = 1000
[rfid]
# As a kiosk with the PN532's IRQ line wired: a tap is seen at once, not at the next poll.
irq_pin = 16
# The bench taps again 0.8 s after the last tap, the card away 0.5 s of it: a new tap,
# not the reader's flicker (removal_s is at least 3 poll intervals).
poll_interval_s = 0.1
removal_s = 0.4
[ocpp]
MeterValueSampleInterval = 1
# As the shipped config.toml: the embedded CSMS keeps the kiosk's local list in step,
# so the kiosk decides a tap itself and the site's load cannot delay it.
LocalPreAuthorize = true
"""
        )
        return path

    async def start(self) -> None:
        from bench import until, wait_socket

        template = await edgepoint_registrations(self.ids)
        var = self.folder / "var"
        var.mkdir(mode=0o750)
        shutil.copyfile(template, var / "csms.db")
        os.chmod(var / "csms.db", 0o600)
        config = self._write_config()
        edgepoint = [sys.executable, "-m", "edgepoint.cli"]
        subprocess.run(
            [*edgepoint, "cards", "add", CARD, "--config", str(config)],
            check=True,
            stdout=subprocess.DEVNULL,
            env=_child_env(),
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*edgepoint, "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=_child_env(),
            )
        try:
            await wait_socket(self.sock, self.proc)
            await until(
                self.sock,
                lambda s: (
                    s["links"]["csms"]["state"] == "online"
                    and s["connector"]["status"] == "Available"
                    and s["connector"]["last_sample"] is not None
                ),
                timeout=60,
            )
        except BaseException:
            progress("edgepoint did not come up; its log ends with:\n" + self.log_tail())
            await self.stop()
            raise

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def status(self) -> dict[str, Any]:
        from edgepoint.control.client import request

        result: dict[str, Any] = await request(self.sock, "status")
        return result

    async def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait)
        return {
            "exit_code": code,
            "shutdown_s": round(time.monotonic() - t0, 2),
            "log_bytes": self.log.stat().st_size if self.log.exists() else 0,
            "log_tail": self.log_tail(5),
        }


class PrototypeServer:
    """scripts/prototype_csms.py serving on a free loopback port."""

    name = "prototype"

    def __init__(self, folder: Path, ids: Sequence[str]) -> None:
        self.folder = folder
        self.ids = ids
        self.log = folder / "prototype.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> None:
        template = await asyncio.to_thread(prototype_registrations, self.ids)
        db = self.folder / "prototype.db"
        shutil.copyfile(template, db)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(SCRIPTS / "prototype_csms.py"),
                    "serve",
                    "--db",
                    str(db),
                    "--port",
                    "0",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                env=_child_env(),
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        if not line.startswith(b"READY "):
            await self.stop()
            raise RuntimeError(f"prototype did not start: {line!r}")
        self.port = int(line.split()[1])

    async def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait)
        return {
            "exit_code": code,
            "shutdown_s": round(time.monotonic() - t0, 2),
            "log_bytes": self.log.stat().st_size if self.log.exists() else 0,
        }


# ------------------------------------------------------------------ the kiosk's taps


async def tap_until_relay(sock: Path, closed: bool, timeout: float = 60) -> float:
    """Seconds from the tap request until the status stream shows the relay in that state."""
    from edgepoint.control.client import request, watch

    async with contextlib.aclosing(watch(sock)) as stream:
        await anext(stream)  # the watch is registered once its first status is in
        t0 = time.perf_counter()
        await request(sock, "tap", uid=CARD)
        async with asyncio.timeout(timeout):
            async for status in stream:
                if status["connector"]["relay_closed"] is closed:
                    return time.perf_counter() - t0
    raise RuntimeError("status stream ended")


async def kiosk_sessions(sock: Path, count: int) -> dict[str, Any]:
    """Tap on (measured), tap off, wait for Available; the card leaves the field in between."""
    from bench import until

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    for _ in range(count):
        try:
            latencies.append(await tap_until_relay(sock, True) * 1000)
            await asyncio.sleep(0.8)
            await tap_until_relay(sock, False)
            await until(sock, lambda s: s["connector"]["phase"] == "Available", timeout=60)
            await asyncio.sleep(0.8)
        except Exception as err:
            errors[type(err).__name__] += 1
            with contextlib.suppress(Exception):
                await until(
                    sock,
                    lambda s: (
                        s["connector"]["phase"] == "Available"
                        and s["connector"]["relay_closed"] is False
                    ),
                    timeout=60,
                )
    return {"taps": len(latencies), "tap_to_relay_ms": spread(latencies), "errors": dict(errors)}


# ---------------------------------------------------------------------- the phases


async def run_load(
    server: Server,
    gen: Generator,
    rate: float | None,
    active: int,
    duration_s: float,
    warmup_s: float,
    during: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """One load window: start, warm up, measure `duration_s` (or while `during` runs), stop."""
    meter = CpuMeter(server.pid, gen.pids)
    at = time.monotonic() + 0.3
    await gen.start_load(at, rate, active)
    await _sleep_until(at + warmup_s)
    window_from = time.monotonic()
    meter.start()
    extra = None
    if during is not None:
        extra = await during()
    else:
        await asyncio.sleep(duration_s)
    window_to = time.monotonic()
    cpu = meter.read()
    answers = await gen.stop_load(window_from, window_to)
    summary = load_summary(answers, window_to - window_from, rate, active)
    summary.update(cpu)
    if extra is not None:
        summary["kiosk"] = extra
    return summary


async def sweep(
    server: Server, gen: Generator, active: int, step_s: float, quick: bool
) -> dict[str, Any]:
    """Find the highest sustained offered rate: double from 100/s (halve if that fails), bisect.

    A step's window holds at least ~1,000 calls (up to 30 s) so that its p99 means something.
    """
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed_rate: float | None = None

    async def step(rate: float) -> dict[str, Any]:
        window = step_s if quick else min(30.0, max(step_s, 1000 / rate))
        progress(f"{server.name}: sweep at {rate:g} calls/s for {window:.0f} s ...")
        result = await run_load(server, gen, rate, active, window, 1.0)
        steps.append(result)
        return result

    rate = 100.0
    factor = 4 if quick else 2
    while rate <= 40_000 and (not quick or len(steps) < 3):
        result = await step(rate)
        if not result["sustained"]:
            failed_rate = rate
            break
        best = result
        rate *= factor
    rate = 50.0
    while best is None and rate >= 10 and not quick:
        result = await step(rate)
        if result["sustained"]:
            best = result
        else:
            failed_rate = rate
            rate /= 2
    for _ in range(0 if quick else 2):
        if best is None or failed_rate is None:
            break
        result = await step(round((best["offered_per_s"] + failed_rate) / 2))
        if result["sustained"]:
            best = result
        else:
            failed_rate = result["offered_per_s"]
    compact = [
        {
            "offered_per_s": s["offered_per_s"],
            "completed_per_s": s["completed_per_s"],
            "lag_p99_ms": s["all"]["lag_ms"]["p99"],
            "rtt_p99_ms": s["all"]["rtt_ms"]["p99"],
            "failed_calls": s["failed_calls"],
            "generator_send_lag_p99_ms": s["generator_send_lag_ms"]["p99"],
            "server_cpu_pct": s["server_cpu_pct"],
            "generator_cpu_pct": s["generator_cpu_pct"],
            "other_cpu_pct": s["other_cpu_pct"],
            "sustained": s["sustained"],
        }
        for s in steps
    ]
    return {
        "chargers": active,
        "capacity_per_s": None if best is None else best["completed_per_s"],
        "capacity_offered_per_s": None if best is None else best["offered_per_s"],
        "first_unsustained_offered_per_s": failed_rate,
        "steps": compact,
    }


async def measure(
    server: Server, credentials: Sequence[tuple[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Every phase against one server; returns its numbers."""
    out: dict[str, Any] = {}
    progress(f"{server.name}: starting ...")
    await server.start()
    stopped: dict[str, Any] = {}
    try:
        out["url"] = server.url
        out["memory_at_start"] = memory_mib(server.pid)
        edgepoint = server if isinstance(server, EdgepointServer) else None
        if edgepoint is not None and args.taps:
            progress(f"{server.name}: {args.taps} idle taps ...")
            out["kiosk_idle"] = await kiosk_sessions(edgepoint.sock, args.taps)
        sources = (
            None if args.same_source else [loopback_source(n) for n in range(len(credentials))]
        )
        gen = await Generator.start(server.url, credentials, args.workers, args.deflate, sources)
        try:
            meter = CpuMeter(server.pid, gen.pids)
            progress(f"{server.name}: connecting {len(credentials)} chargers at once ...")
            meter.start()
            out["connect"] = await gen.connect(args.connect_deadline)
            out["connect"].update(meter.read())
            out["connect"]["memory"] = memory_mib(server.pid)
            if edgepoint is not None:
                status = await edgepoint.status()
                embedded = status.get("links", {}).get("embedded_csms") or {}
                out["connect"]["server_sees_connected"] = len(embedded.get("connected", []))
            active = min(args.load_chargers, len(credentials))

            progress(
                f"{server.name}: {active} chargers offering {args.rate:g} calls/s"
                f" for {args.duration:g} s ..."
            )
            out["load"] = await run_load(server, gen, args.rate, active, args.duration, 2.0)
            if not args.skip_sweep:
                out["sweep"] = await sweep(server, gen, active, args.step_duration, args.quick)

            progress(f"{server.name}: {active} chargers at full rate (closed loop) ...")
            if edgepoint is not None and args.taps:
                sock = edgepoint.sock

                async def taps() -> dict[str, Any]:
                    started = time.monotonic()
                    result = await kiosk_sessions(sock, args.taps)
                    # Keep the window at least --duration long for the throughput numbers.
                    await _sleep_until(started + args.duration)
                    return result

                out["full_rate"] = await run_load(server, gen, None, active, 0, 2.0, taps)
            else:
                out["full_rate"] = await run_load(server, gen, None, active, args.duration, 2.0)

            if not args.skip_storm:
                # Let the server settle (late replies, closing sessions) before the drop.
                await asyncio.sleep(1)
                progress(f"{server.name}: reconnect storm of {len(credentials)} chargers ...")
                meter.start()
                out["storm"] = await gen.storm(args.connect_deadline)
                out["storm"].update(meter.read())
            out["generator_counters"] = await gen.counters()
        finally:
            await gen.close()
        out["memory_at_end"] = memory_mib(server.pid)
        if edgepoint is not None:
            status = await edgepoint.status()
            out["daemon_status"] = {
                "services": status.get("services"),
                "alarms": status.get("alarms"),
                "outbox_depth": (status.get("outbox") or {}).get("depth"),
            }
    finally:
        stopped = await server.stop()
    out["stop"] = stopped
    return out


# ------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    import edgepoint

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    tmp = Path(tempfile.gettempdir()).resolve()
    fs = "?"
    best = -1
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(tmp).startswith(parts[1]) and len(parts[1]) > best:
            best, fs = len(parts[1]), parts[2]

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    def sysctl(name: str) -> str:
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
        except OSError:
            return "?"

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "websockets": version("websockets"),
        "ocpp": version("ocpp"),
        "aiosqlite": version("aiosqlite"),
        "sqlite": sqlite3.sqlite_version,
        "tmp_dir": str(tmp),
        "tmp_filesystem": fs,
        "somaxconn": sysctl("net.core.somaxconn"),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "edgepoint_source": str(Path(edgepoint.__file__).resolve().parent),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": len(git("status", "--porcelain").splitlines()),
    }


def targets(servers: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets with PASS/FAIL (edgepoint's numbers; the prototype's for context)."""
    ep = servers.get("edgepoint", {})
    proto = servers.get("prototype", {})
    n = args.chargers
    rows: list[dict[str, Any]] = []

    def verdict(ok: bool | None) -> str:
        return "N/A" if ok is None else ("PASS" if ok else "FAIL")

    # edgepoint's throughput with p99 under 50 ms against the most the prototype completed in
    # any phase at any latency (the comparison: 770 calls/s at p99 480 ms); the ratio
    # of both latency-bounded capacities is kept for context.
    cap_e = (ep.get("sweep") or {}).get("capacity_per_s")
    cap_p = (proto.get("sweep") or {}).get("capacity_per_s")
    best_p = best_throughput(proto)
    ratio = round(cap_e / best_p, 2) if cap_e is not None and best_p else None
    rows.append(
        {
            "target": f"throughput at p99 < {P99_TARGET_MS:g} ms >= 2x the prototype's",
            "edgepoint": cap_e,
            "prototype": best_p,
            "value": ratio,
            "unit": "x",
            "prototype_at_p99_under_50ms": cap_p,
            "ratio_of_p99_bounded_capacities": (
                round(cap_e / cap_p, 2) if cap_e is not None and cap_p else None
            ),
            "result": verdict(None if ratio is None else ratio >= 2),
        }
    )
    for phase, label in (("connect", "connected at once"), ("storm", "back online after a storm")):
        e = ep.get(phase)
        p = proto.get(phase)
        all_online = None if e is None else e["all_online_s"]
        ok: bool | None = None
        if e is not None:
            ok = e["online"] == e["chargers"] and (
                phase == "connect" or (all_online is not None and all_online < 10)
            )
        rows.append(
            {
                "target": f"{n:,} chargers {label}" + (" within 10 s" if phase == "storm" else ""),
                "edgepoint": _online_text(e),
                "prototype": _online_text(p),
                "value": all_online,
                "unit": "s",
                "result": verdict(ok),
            }
        )
    full = (ep.get("full_rate") or {}).get("kiosk")
    p99 = None if full is None else full["tap_to_relay_ms"]["p99"]
    idle = (ep.get("kiosk_idle") or {}).get("tap_to_relay_ms", {}).get("p99")
    rows.append(
        {
            "target": f"tap-to-relay p99 < {P99_TARGET_MS:g} ms while {args.load_chargers}"
            " chargers send at full rate",
            "edgepoint": p99,
            "prototype": None,
            "value": p99,
            "unit": "ms",
            "idle_p99_ms": idle,
            "result": verdict(
                None if full is None or p99 is None else p99 < P99_TARGET_MS and not full["errors"]
            ),
        }
    )
    if n != 1000 or args.load_chargers != 200:
        for row in rows:
            row["note"] = "not the issue's fleet (1,000 chargers, 200 sending)"
    return rows


def best_throughput(numbers: dict[str, Any]) -> float | None:
    """The most calls/s a server completed in any load phase, whatever the latency."""
    rates = [
        phase["completed_per_s"]
        for phase in (numbers.get("load"), numbers.get("full_rate"))
        if phase is not None
    ]
    rates += [s["completed_per_s"] for s in (numbers.get("sweep") or {}).get("steps", [])]
    return max(rates) if rates else None


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio}x"


def _online_text(phase: dict[str, Any] | None) -> str | None:
    if phase is None:
        return None
    return f"{phase['online']}/{phase['chargers']} in {phase['all_online_s']} s"


def print_table(report: dict[str, Any]) -> None:
    out = sys.stderr
    print("\n== embedded CSMS benchmark", file=out)
    for name, numbers in report["servers"].items():
        load = numbers.get("load")
        if load:
            rtt, lag = load["all"]["rtt_ms"], load["all"]["lag_ms"]
            print(
                f"{name:>10}: {load['chargers']} chargers offering {load['offered_per_s']:g}/s:"
                f" {load['completed_per_s']}/s completed, rtt p50 {rtt['p50']} ms"
                f" p99 {rtt['p99']} ms, lag p99 {lag['p99']} ms,"
                f" {load['failed_calls']} failed; server CPU {load['server_cpu_pct']} %",
                file=out,
            )
        full = numbers.get("full_rate")
        if full:
            print(
                f"{'':>10}  full rate: {full['completed_per_s']}/s, rtt p99"
                f" {full['all']['rtt_ms']['p99']} ms; peak RSS"
                f" {numbers.get('memory_at_end', {}).get('peak_rss_mib')} MiB",
                file=out,
            )
    noisy = [
        f"{name} {phase} {numbers[phase]['other_cpu_pct']} %"
        for name, numbers in report["servers"].items()
        for phase in ("connect", "load", "full_rate", "storm")
        if (numbers.get(phase) or {}).get("other_cpu_pct", 0) > NOISY_CPU_PCT
    ]
    if noisy:
        print(
            "  warning: other processes used CPU during the measurement (numbers are noisy): "
            + ", ".join(noisy),
            file=out,
        )
    for row in report["targets"]:
        print(
            f"  [{row['result']:>4}] {row['target']}: edgepoint {row['edgepoint']}"
            f" | prototype {row['prototype']}"
            + (
                f" | ratio {_times(row['value'])} (p99-bounded capacities:"
                f" {_times(row['ratio_of_p99_bounded_capacities'])})"
                if row["unit"] == "x"
                else ""
            ),
            file=out,
        )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = charger_ids(args.chargers)
    credentials = [(cp_id, password_for(cp_id)) for cp_id in ids]
    names = [args.only] if args.only else ["edgepoint", "prototype"]
    servers: dict[str, Any] = {}
    for name in names:
        # The previous server's files were just deleted (and discarded on an SSD): let the
        # disk settle so its fsyncs do not land in this server's numbers.
        await asyncio.to_thread(os.sync)
        await asyncio.sleep(3)
        with tempfile.TemporaryDirectory(prefix=f"edgepoint-bench-csms-{name}-") as tmp:
            folder = Path(tmp)
            server: Server
            if name == "edgepoint":
                server = EdgepointServer(folder, ids)
            else:
                server = PrototypeServer(folder, ids)
            try:
                servers[name] = await measure(server, credentials, args)
            except Exception as err:
                # Keep the other server's numbers; the traceback says what went wrong.
                traceback.print_exc()
                servers[name] = {"error": f"{type(err).__name__}: {err}"}
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            key: getattr(args, key)
            for key in (
                "quick",
                "chargers",
                "load_chargers",
                "rate",
                "duration",
                "step_duration",
                "workers",
                "taps",
                "deflate",
                "same_source",
                "skip_storm",
                "skip_sweep",
                "connect_deadline",
            )
        }
        | {
            "mix": {"MeterValues": 0.5, "StatusNotification": 0.25, "Heartbeat": 0.25},
            "meter_values_samples_per_message": 4,
            "p99_target_ms": P99_TARGET_MS,
            "sustained_means": f">= {SUSTAINED_SHARE:.0%} of offered completed, lag p99 < "
            f"{P99_TARGET_MS:g} ms, no failed call",
        },
        "servers": servers,
    }
    report["targets"] = targets(servers, args)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small fleet, short phases (~1 min)")
    parser.add_argument("--chargers", type=int, help="fleet for connect and storm (1000)")
    parser.add_argument("--load-chargers", type=int, help="chargers that send in load phases (200)")
    parser.add_argument("--rate", type=float, help="offered calls/s in total, open loop (1000)")
    parser.add_argument("--duration", type=float, help="seconds of the load window (30)")
    parser.add_argument("--step-duration", type=float, help="seconds per sweep step (6)")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (1)")
    parser.add_argument("--taps", type=int, help="kiosk sessions per tap phase (20)")
    parser.add_argument("--only", choices=("edgepoint", "prototype"))
    parser.add_argument("--skip-storm", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--same-source",
        action="store_true",
        help="connect every charger from 127.0.0.1 (default: one loopback address each)",
    )
    parser.add_argument("--connect-deadline", type=float, help="give up connecting after (120 s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (
        {
            "chargers": 100,
            "load_chargers": 20,
            "rate": 200.0,
            "duration": 3.0,
            "step_duration": 2.0,
            "taps": 3,
            "connect_deadline": 60.0,
        }
        if args.quick
        else {
            "chargers": 1000,
            "load_chargers": 200,
            "rate": 1000.0,
            "duration": 30.0,
            "step_duration": 6.0,
            "taps": 20,
            "connect_deadline": 120.0,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.workers < 1 or args.chargers < 1 or args.load_chargers < 1 or args.rate <= 0:
        parser.error("--workers, --chargers, --load-chargers and --rate must be positive")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        asyncio.run(worker_main())
        return
    sys.path.insert(0, str(SCRIPTS))
    report = asyncio.run(bench(args))
    print_table(report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
