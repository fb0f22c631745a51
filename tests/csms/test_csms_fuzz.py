"""A registered charger fuzzes the embedded CSMS of a running `edgepoint run` (issue 6's proof).

Thousands of mutated and hostile frames (tests/csms/fuzz_frames.py: seeded, each with the
CALLERROR code OCPP-J 1.6 owes it, derived from the OCPP 1.6 schemas) go to the CSMS
child process over a real WebSocket with Basic auth, while a well-behaved charger sends
Heartbeats and a card is tapped at the kiosk. The daemon and its CSMS process must stay
up (same pids), answer every bad CALL with the right code, keep their memory and log
bounded, and neither the kiosk's tap nor the good charger may feel it.

EDGEPOINT_CSMS_FUZZ_SEED replays a run; EDGEPOINT_CSMS_FUZZ_FRAMES scales it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import secrets
import time
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli, query, write_config
from fuzz_charger import (
    TOO_MANY_BAD_FRAMES,
    FuzzCharger,
    FuzzReport,
    Observations,
    Observer,
    percentile,
)
from fuzz_frames import Context, FrameMaker

from edgepoint.clock import SystemClock
from edgepoint.config import load_config
from edgepoint.csms.db import MAX_ANOMALIES_PER_CHARGE_POINT, open_csms_store

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("EDGEPOINT_CSMS_FUZZ_SEED", "1606"))
FRAMES = int(os.environ.get("EDGEPOINT_CSMS_FUZZ_FRAMES", "5000"))
WARM_UP = 300  # frames before the memory baseline: validators and caches built lazily
# Stray CALLRESULTs of 60 KB each (60 MB in all) after the fuzz: a CSMS that kept replies
# nobody asked for (the prototype did, for the connection's life) would grow by that much.
STRAYS = 1000

FUZZER = "FUZZ-1"
GOOD = "GOOD-1"
CARD = "04F00D5E"

# Bounds, with what the 2-core CI machine measured in brackets (seeds 1606, 1, 2, 3, 9).
# Tap until the status stream shows the relay moved, on and off, during the fuzz: [p50
# 31-51 ms, p99 49-106 ms; idle p50 28 ms]. It does not wait for the CSMS (local list).
# The suite runs 4 tests at once on 2 cores, so a single tap can lose a few hundred ms
# to a neighbouring test: the median is the tight bound, the worst a loose one (before
# the CSMS had its own process, one 1 MB frame held a tap for 8.5 s).
TAP_P50_MS = 150
TAP_MAX_MS = 1000
# The good charger's Heartbeat round trip meanwhile [p99 12-44 ms]. The CSMS process
# runs at a lower CPU priority than the kiosk and, in the suite, than the neighbouring
# tests too: again the median is the tight bound, the worst a loose one (a stall is
# many seconds).
HEARTBEAT_P50_MS = 100
HEARTBEAT_MAX_MS = 3000
# The CSMS process over the fuzz and the 60 MB of stray replies [+1.2 to +2.4 MiB].
RSS_GROWTH_KIB = 32 * 1024
# Log lines about bad input from the fuzzer (refusals, bad frames, anomalies, connections):
# one per kind a minute per charger, about fifty kinds [2-4 after the warm-up over 3,700
# bad frames; 31-32 over 740 bad frames and 40 connections with the default limits].
GARBAGE_LINES = 100
GARBAGE = re.compile(
    r" (WARNING|ERROR|CRITICAL) |refused|bad frame|reply to no CALL|connected|flagged"
)
# All of the log while the fuzz runs, per frame sent; nearly all of it is the INFO line of
# each BootNotification, Authorize, StartTransaction... accepted [8-12.5; the issue: 310].
LOG_BYTES_PER_FRAME = 24

# Kinds of break (fuzz_frames.py) whose code OCPP-J leaves open (see its table).
AMBIGUOUS = (
    "too_long",
    "payload_not_object",
    "digits",
    "overflow",
    "deep",
    "surrogate",
    "long_action",
)

LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")


def register(config: Path, *charge_points: str) -> dict[str, str]:
    """Register charge points in csms.db (daemon stopped); return their keys."""
    keys = {cp_id: secrets.token_hex(16) for cp_id in charge_points}

    async def write() -> None:
        db = load_config(config).storage.csms_db
        db.parent.mkdir(parents=True, exist_ok=True)
        async with open_csms_store(db, SystemClock()) as store:
            for cp_id, key in keys.items():
                await store.charge_points.set_auth_key(cp_id, key)

    asyncio.run(write())
    return keys


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fuzz(
    port: int, key: str, maker: FrameMaker, count: int, strays: int = 0
) -> tuple[FuzzReport, float]:
    """`count` hostile frames, then `strays` big stray CALLRESULTs, from the fuzzing charger."""
    started = time.monotonic()
    cases = itertools.chain(maker.cases(count), maker.stray_flood(strays))
    report = asyncio.run(FuzzCharger(port, FUZZER, key).run(cases))
    return report, time.monotonic() - started


def ambiguous(report: FuzzReport) -> dict[str, dict[str, int]]:
    """The code the CSMS chose for each kind of break that accepts more than one."""
    chosen: dict[str, dict[str, int]] = {}
    for (how, got), count in sorted(report.outcomes.items()):
        if how in AMBIGUOUS:
            chosen.setdefault(how, {})[got] = count
    return chosen


def explain(report: FuzzReport, seed: int) -> str:
    return (
        f"seed {seed} (EDGEPOINT_CSMS_FUZZ_SEED): {report.wrong_count} wrong of"
        f" {report.sent} sent, {report.answered} answered; first ones:\n  "
        + "\n  ".join(report.wrong)
        + f"\nunexpected: {report.unexpected}"
    )


def assert_all_answers_right(report: FuzzReport, seed: int) -> None:
    assert report.wrong_count == 0, explain(report, seed)
    assert not report.unexpected, explain(report, seed)
    assert report.answered > report.sent // 2, explain(report, seed)


def assert_good_charger_unbothered(seen: Observations) -> None:
    assert not seen.errors, seen.errors
    assert len(seen.heartbeat_ms) >= 10, seen.heartbeat_ms
    p50 = percentile(seen.heartbeat_ms, 0.5)
    assert p50 < HEARTBEAT_P50_MS, f"heartbeat p50 {p50:.0f} ms: {sorted(seen.heartbeat_ms)}"
    slowest = max(seen.heartbeat_ms)
    assert slowest < HEARTBEAT_MAX_MS, f"slowest heartbeat {slowest:.0f} ms"


def garbage_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if FUZZER in line and GARBAGE.search(line)]


def assert_log_bounded(log: str, report: FuzzReport, tags: list[str]) -> None:
    """No traceback, no line a peer forged, no card id in full; bad input logged once per
    kind a minute (ThrottledLog, per charger, across its connections), whatever its count."""
    assert "Traceback" not in log
    forged = [line for line in log.splitlines() if not LOG_LINE.match(line)]
    assert not forged, forged[:5]
    leaked = [tag for tag in tags if tag in log]
    assert not leaked, leaked[:5]
    about_garbage = garbage_lines(log)
    assert len(about_garbage) <= GARBAGE_LINES, "\n".join(about_garbage)
    # The rest is a line per BootNotification, Authorize, StartTransaction... it accepted.
    per_frame = len(log) / max(1, report.sent)
    assert per_frame < LOG_BYTES_PER_FRAME, f"{per_frame:.1f} bytes per frame:\n{log[-3000:]}"


def test_a_fuzzing_charger_gets_the_right_callerrors_and_disturbs_no_one(tmp_path: Path) -> None:
    # One connection for the whole fuzz: the bad-frame limit is out of the way (the other
    # test keeps it), and answers are not slowed to 25 a second.
    config = write_config(
        tmp_path,
        csms__max_bad_frames=100_000,
        csms__max_calls_per_s=10_000.0,
        # As config.toml ships: the kiosk decides a tap from its local list, which the
        # CSMS keeps in step, so a busy CSMS cannot delay it.
        ocpp__LocalPreAuthorize=True,
        # The reader polls every 20 ms (not 100): a tap's latency then shows milliseconds
        # lost elsewhere instead of the polling.
        rfid__poll_interval_s=0.02,
        rfid__removal_s=0.35,
    )
    keys = register(config, FUZZER, GOOD)
    cli(config, "cards", "add", CARD)
    settings = load_config(config)
    daemon = Daemon(config).start()
    observer: Observer | None = None
    try:
        ready = daemon.wait_ready()
        csms_pid = ready["links"]["embedded_csms"]["pid"]
        db = settings.storage.chargepoint_db
        daemon.wait_for(
            "the card in the kiosk's local list",
            lambda _: (CARD, "Accepted") in query(db, "SELECT id_tag, status FROM local_list"),
        )
        observer = Observer(daemon.socket, settings.csms.port, (GOOD, keys[GOOD]), card=CARD)
        observer.start()
        context = Context(
            max_frame_bytes=settings.csms.max_frame_bytes,
            max_sampled_values=settings.csms.max_sampled_values,
            foreign_transaction=observer.foreign_transaction,
        )
        maker = FrameMaker(random.Random(SEED), context)
        warm, _ = fuzz(settings.csms.port, keys[FUZZER], maker, WARM_UP)
        assert_all_answers_right(warm, SEED)

        rss_before = rss_kib(csms_pid)
        log_before = daemon.log.stat().st_size
        report, took = fuzz(settings.csms.port, keys[FUZZER], maker, FRAMES, STRAYS)
        rss_after = rss_kib(csms_pid)
        observer.observe_at_least(heartbeats=10, taps=4)
        seen = observer.stop()
        observer = None
        after = daemon.status()
        log = daemon.log.read_bytes()[log_before:].decode(errors="replace")
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
    finally:
        if observer is not None:
            observer.stop()
        daemon.kill()
    print(
        f"\nfuzz: {report.sent} frames in {took:.1f} s, {report.answered} answered,"
        f" {report.bad_frames} bad, {report.connections} connection(s),"
        f" closes {[(c.code, c.reason) for c in report.closes]}"
        f"\ncodes: {dict(report.codes)}"
        f"\nwhere several codes are accepted: {ambiguous(report)}"
        f"\nslowest answer {report.slowest_answer_s * 1000:.0f} ms;"
        f" CSMS RSS {rss_before} -> {rss_after} KiB; log +{len(log)} bytes,"
        f" {len(garbage_lines(log))} lines about bad input"
        f"\ntaps {len(seen.tap_ms)}: p50 {percentile(seen.tap_ms, 0.5):.0f} ms,"
        f" p99 {percentile(seen.tap_ms, 0.99):.0f} ms, max {max(seen.tap_ms):.0f} ms"
        f"\nheartbeats {len(seen.heartbeat_ms)}: p50 {percentile(seen.heartbeat_ms, 0.5):.0f} ms,"
        f" p99 {percentile(seen.heartbeat_ms, 0.99):.0f} ms, max {max(seen.heartbeat_ms):.0f} ms"
        f"\nstatus {len(seen.status_ms)}: max {max(seen.status_ms):.0f} ms"
    )

    # Every frame got what OCPP-J owes it: the right CALLERROR, a valid CALLRESULT, nothing.
    assert_all_answers_right(report, SEED)
    # Only the closes the frames asked for (over max_frame_bytes: 1009, bad UTF-8: 1007).
    assert all(c.owed for c in report.closes), report.closes

    # Up all along, in the same processes, our own charge point still online with its CSMS.
    assert after["links"]["csms"]["state"] == "online"
    assert after["links"]["embedded_csms"]["pid"] == csms_pid
    assert after["links"]["embedded_csms"]["restarts"] == 0
    assert after["links"]["embedded_csms"]["listening"] is True
    assert seen.csms_pids == {csms_pid} and seen.csms_not_listening == 0
    assert {s["name"]: s["restarts"] for s in after["services"]}.get("embedded csms") == 0

    # Bounded: the CSMS keeps no per-frame state, the log no per-frame line.
    assert rss_after - rss_before < RSS_GROWTH_KIB, (rss_before, rss_after)
    assert_log_bounded(log, report, [*maker.tags, CARD])

    # Nobody else felt it.
    assert len(seen.tap_ms) >= 4, seen.tap_ms
    tap_p50 = percentile(seen.tap_ms, 0.5)
    assert tap_p50 < TAP_P50_MS, f"tap p50 {tap_p50:.0f} ms: {sorted(seen.tap_ms)}"
    assert max(seen.tap_ms) < TAP_MAX_MS, f"slowest tap: {sorted(seen.tap_ms)}"
    assert_good_charger_unbothered(seen)


def test_with_the_default_limits_a_fuzzing_charger_is_disconnected_and_comes_back(
    tmp_path: Path,
) -> None:
    """[csms] max_bad_frames as shipped (20 a minute): the fuzzer is closed with 1008 once
    it is over, reconnects and goes on; every answer it did get is still the right one."""
    config = write_config(tmp_path)
    keys = register(config, FUZZER, GOOD)
    settings = load_config(config)
    limit = settings.csms.max_bad_frames
    daemon = Daemon(config).start()
    observer: Observer | None = None
    try:
        ready = daemon.wait_ready()
        csms_pid = ready["links"]["embedded_csms"]["pid"]
        observer = Observer(daemon.socket, settings.csms.port, (GOOD, keys[GOOD]), card=None)
        observer.start()
        context = Context(
            max_frame_bytes=settings.csms.max_frame_bytes,
            max_sampled_values=settings.csms.max_sampled_values,
            foreign_transaction=observer.foreign_transaction,
        )
        maker = FrameMaker(random.Random(SEED + 1), context)
        log_before = daemon.log.stat().st_size
        report, took = fuzz(settings.csms.port, keys[FUZZER], maker, max(200, FRAMES // 5))
        log = daemon.log.read_bytes()[log_before:].decode(errors="replace")
        observer.observe_at_least(heartbeats=10)
        seen = observer.stop()
        observer = None
        after = daemon.status()
        anomalies = query(
            settings.storage.csms_db,
            "SELECT reason, SUM(count) FROM anomalies"
            " WHERE charge_point_id = ? AND kind = 'disconnected' GROUP BY reason",
            FUZZER,
        )
        [(rows,)] = query(
            settings.storage.csms_db,
            "SELECT COUNT(*) FROM anomalies WHERE charge_point_id = ?",
            FUZZER,
        )
    finally:
        if observer is not None:
            observer.stop()
        daemon.kill()
    limited = [c for c in report.closes if (c.code, c.reason) == TOO_MANY_BAD_FRAMES]
    print(
        f"\nfuzz: {report.sent} frames in {took:.1f} s, {report.connections} connections,"
        f" {len(limited)} closed for bad frames after"
        f" {sorted({c.bad_frames for c in limited})} bad frames; anomalies {anomalies}"
        f"; log +{len(log)} bytes, {len(garbage_lines(log))} lines about bad input"
        f"\nheartbeats {len(seen.heartbeat_ms)}: p99 {percentile(seen.heartbeat_ms, 0.99):.0f} ms"
    )
    assert_all_answers_right(report, SEED + 1)
    assert_log_bounded(log, report, maker.tags)
    # Closed for the right reason: over the limit, never before it.
    assert limited, report.closes
    assert all(c.bad_frames > limit for c in limited), limited
    assert all(c.owed or c in limited for c in report.closes), report.closes
    # Recorded with the reason (every one, unless the table's bound dropped the oldest).
    recorded = dict(anomalies).get("too_many_bad_frames", 0)
    if rows < MAX_ANOMALIES_PER_CHARGE_POINT:
        assert recorded == len(limited), anomalies
    assert 1 <= recorded <= len(limited), anomalies
    assert after["links"]["embedded_csms"]["pid"] == csms_pid
    assert seen.csms_pids == {csms_pid}
    assert_good_charger_unbothered(seen)
