"""Provisional time and its correction on a real edgepoint.db: unsynced boot, fake-hwclock,
the CSMS's currentTime, NTP arriving mid-session, restarts and reboots before the time is known."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from chargepoint.scenario_support import running, scenario_config
from daemon_harness import Daemon, cli, query, write_config
from support.scripted_csms import ScriptedCsms
from test_clock import FAKE_HWCLOCK, REAL_TIME, Machine

from edgepoint import timesync
from edgepoint.chargepoint import messages
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.events import IdTag, SessionId, StopReason, TelemetrySample
from edgepoint.clock import (
    EARLIEST_PLAUSIBLE,
    SystemClock,
    TimeSource,
    iso_utc,
    kernel_clock_synced,
)
from edgepoint.config import load_config
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.security import SecurityStore
from edgepoint.storage.stamps import PROVISIONAL_PREFIX, Marks, StampRepository

BOOT_A, BOOT_B = "boot-a", "boot-b"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChargePointStore]:
    opened = await ChargePointStore.open(tmp_path / "edgepoint.db")
    try:
        yield opened
    finally:
        await opened.close()


def start(
    tmp_path: Path, machine: Machine, boot: str = BOOT_A, trust_rtc: bool = False
) -> tuple[SystemClock, timesync.ClockState]:
    return timesync.start_clock(
        tmp_path / timesync.STATE_FILE,
        trust_rtc=trust_rtc,
        boot_id=boot,
        system_synced=machine.system_synced,
        wall=machine.wall,
        mono=machine.mono,
    )


def sample(energy_wh: int) -> TelemetrySample:
    return TelemetrySample(
        seq=1,
        energy_wh=energy_wh,
        power_w=7000.0,
        current_a=30.0,
        voltage_v=230.0,
        temperature_c=30.0,
    )


async def charge(store: ChargePointStore, clock: SystemClock, session: str) -> None:
    """What the kiosk writes for a session: Start, one MeterValues, Stop, each stamped now."""
    sid = SessionId(session)
    async with store.change() as change:
        now = clock.utc_now()
        await change.begin_session(sid, 1, IdTag("04A1B2C3"), 1000, now)
        await change.enqueue(
            "StartTransaction",
            messages.start_transaction(1, IdTag("04A1B2C3"), 1000, now),
            now,
            f"{session}-start",
            sid,
        )
    async with store.change() as change:
        now = clock.utc_now()
        await change.enqueue(
            "MeterValues", messages.meter_values(1, sample(1500), now), now, f"{session}-mv", sid
        )
    async with store.change() as change:
        now = clock.utc_now()
        await change.end_session(sid, None, 2000, "Local", now)
        await change.enqueue(
            "StopTransaction",
            messages.stop_transaction(None, 2000, StopReason.LOCAL, now),
            now,
            f"{session}-stop",
            sid,
        )


def stamps(db: Path, session: str) -> dict[str, datetime]:
    """Every stamp of one session in edgepoint.db, by where it is."""
    found: dict[str, datetime] = {}
    for action, created, payload in query(
        db, "SELECT action, created_at, payload FROM outbox WHERE session_id = ?", session
    ):
        body = json.loads(payload)
        found[f"{action}.created_at"] = datetime.fromisoformat(created)
        if "timestamp" in body:
            found[f"{action}.timestamp"] = datetime.fromisoformat(body["timestamp"])
        for value in body.get("meterValue", []):
            found[f"{action}.meterValue"] = datetime.fromisoformat(value["timestamp"])
    [(started, stopped)] = query(
        db, "SELECT started_at, stopped_at FROM sessions WHERE session_id = ?", session
    )
    found["session.started_at"] = datetime.fromisoformat(started)
    found["session.stopped_at"] = datetime.fromisoformat(stopped)
    for event, recorded in query(
        db, "SELECT event, recorded_at FROM ledger_events WHERE session_id = ?", session
    ):
        found[f"ledger.{event}"] = datetime.fromisoformat(recorded)
    return found


async def test_an_unsynced_boot_runs_on_from_the_last_trusted_time(tmp_path: Path) -> None:
    state = tmp_path / timesync.STATE_FILE
    timesync.save_state(state, timesync.ClockState(last_trusted=REAL_TIME))
    # fake-hwclock's time is older than what we last trusted: the later one wins.
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, clock_state = start(tmp_path, machine)
    assert not clock.synced and clock_state.epoch is not None
    assert clock.utc_now() == REAL_TIME
    machine.advance(90)
    assert clock.utc_now() == REAL_TIME + timedelta(seconds=90)


async def test_a_boot_at_the_epoch_without_any_trusted_time_starts_at_the_floor(
    tmp_path: Path,
) -> None:
    machine = Machine(datetime(1970, 1, 1, tzinfo=UTC), synced=None)
    clock, _ = start(tmp_path, machine)
    assert clock.utc_now() == EARLIEST_PLAUSIBLE


async def test_ntp_arriving_mid_session_corrects_what_was_stamped(
    tmp_path: Path, store: ChargePointStore
) -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine)
    keeper = await timesync.TimeKeeper.open(clock, store, tmp_path / timesync.STATE_FILE, state)
    await charge(store, clock, "before")  # a session while the clock is provisional
    security = SecurityStore(store.db)
    await security.record_event("StartupOfTheDevice", None, True, clock.utc_now(), None)
    machine.advance(10)
    provisional_then = clock.utc_now()
    # NTP steps the system clock three months ahead, mid-session.
    machine.wall_time = REAL_TIME
    machine.ntp = True
    machine.advance(1)
    await keeper.step()
    assert clock.synced and clock.source is TimeSource.SYSTEM
    offset = REAL_TIME + timedelta(seconds=1) - (provisional_then + timedelta(seconds=1))
    db = tmp_path / "edgepoint.db"
    corrected = stamps(db, "before")
    # 3 messages' created_at, Start's and Stop's timestamp, the meter value's, the
    # session's start and stop, the ledger's two captured events.
    assert len(corrected) == 10
    for where, moment in corrected.items():
        # Each stamp now lies where the real clock stood when it was taken.
        assert REAL_TIME - timedelta(seconds=12) <= moment <= REAL_TIME, where
    assert corrected["StartTransaction.timestamp"] == FAKE_HWCLOCK + offset
    assert keeper.corrections == 6  # rows: 3 in the outbox, 1 session, 2 ledger events
    [logged] = await security.security_log()  # and the security log (GetLog)
    assert REAL_TIME - timedelta(seconds=12) <= datetime.fromisoformat(logged.at) <= REAL_TIME
    # Stamps from now on are the system's; nothing is moved twice.
    await charge(store, clock, "after")
    await keeper.step()
    assert stamps(db, "after")["StartTransaction.timestamp"] == REAL_TIME + timedelta(seconds=1)
    assert stamps(db, "before") == corrected
    saved = timesync.load_state(tmp_path / timesync.STATE_FILE)
    assert saved.epoch is None and saved.last_trusted == REAL_TIME + timedelta(seconds=1)


async def test_the_csms_time_corrects_before_the_sender_can_read_the_queue(
    tmp_path: Path, store: ChargePointStore
) -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine)
    keeper = await timesync.TimeKeeper.open(clock, store, tmp_path / timesync.STATE_FILE, state)
    await charge(store, clock, "offline")
    machine.advance(5)
    online = asyncio.Event()

    async def sender() -> dict[str, Any]:
        await online.wait()  # the outbox sender waits for the link
        async with (
            store.db.read() as db,
            db.execute("SELECT payload FROM outbox ORDER BY seq") as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return dict(json.loads(row[0]))

    reading = asyncio.create_task(sender())
    await asyncio.sleep(0)
    # The BootNotification reply: the link adopts the CSMS's time, then goes online.
    assert keeper.adopt(REAL_TIME) is True
    online.set()
    first = await reading
    assert clock.source is TimeSource.CSMS
    assert datetime.fromisoformat(first["timestamp"]) == REAL_TIME - timedelta(seconds=5)
    assert keeper.adopt(REAL_TIME) is False


async def test_a_stamp_taken_before_the_switch_and_written_after_is_corrected(
    tmp_path: Path, store: ChargePointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timesync, "SWEEP_AFTER_S", 0.0)
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine)
    keeper = await timesync.TimeKeeper.open(clock, store, tmp_path / timesync.STATE_FILE, state)
    late = clock.utc_now()  # the kiosk took its time, then waited for the database
    machine.wall_time, machine.ntp = REAL_TIME, True
    machine.advance(1)
    await keeper.step()  # the switch
    status = messages.status_notification(1, ConnectorStatus.AVAILABLE, "NoError", late)
    async with store.change() as change:
        await change.enqueue("StatusNotification", status, late, "late")
    # Corrected inside its own transaction: nobody ever reads it with the old stamp.
    [(payload,)] = query(tmp_path / "edgepoint.db", "SELECT payload FROM outbox")
    assert datetime.fromisoformat(json.loads(payload)["timestamp"]) == REAL_TIME
    # So is a write outside change(): a security event (SettingSystemTime is noticed with
    # the provisional time just before the switch and stored just after it).
    await SecurityStore(store.db).record_event("SettingSystemTime", None, True, late, "elsewhere")
    [(payload,)] = query(
        tmp_path / "edgepoint.db", "SELECT payload FROM outbox WHERE message_id = 'elsewhere'"
    )
    assert datetime.fromisoformat(json.loads(payload)["timestamp"]) == REAL_TIME
    [entry] = await SecurityStore(store.db).security_log()
    assert datetime.fromisoformat(entry.at) == REAL_TIME  # the security log (GetLog) too
    await keeper.step()  # the last sweep; the hook is gone after it
    assert store.before_commit is None
    rows = query(tmp_path / "edgepoint.db", "SELECT payload, created_at FROM outbox ORDER BY seq")
    for body, created in rows:
        assert datetime.fromisoformat(json.loads(body)["timestamp"]) == REAL_TIME
        assert datetime.fromisoformat(created) == REAL_TIME
    # Nothing is moved twice: stamps from after the switch stay as they are.
    async with store.change() as change:
        now = clock.utc_now()
        await change.enqueue("Heartbeat", {"timestamp": iso_utc(now)}, now, "after")
    assert query(
        tmp_path / "edgepoint.db", "SELECT created_at FROM outbox WHERE message_id = 'after'"
    ) == [(iso_utc(REAL_TIME + timedelta(seconds=1)),)]


async def test_a_restart_in_the_same_boot_continues_the_epoch(tmp_path: Path) -> None:
    db = tmp_path / "edgepoint.db"
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine)
    first = await ChargePointStore.open(db)
    await timesync.TimeKeeper.open(clock, first, tmp_path / timesync.STATE_FILE, state)
    await charge(first, clock, "run1")
    await first.close()  # the watchdog killed it; systemd starts it again
    machine.advance(20)
    clock2, state2 = start(tmp_path, machine)
    assert clock2.epoch == clock.epoch  # same base: the same offset fits both runs
    assert clock2.utc_now() == clock.utc_now()
    second = await ChargePointStore.open(db)
    try:
        keeper = await timesync.TimeKeeper.open(
            clock2, second, tmp_path / timesync.STATE_FILE, state2
        )
        await charge(second, clock2, "run2")
        offset = REAL_TIME - clock2.utc_now()
        machine.wall_time, machine.ntp = REAL_TIME, True
        machine.advance(1)
        await keeper.step()
        assert clock2.synced
    finally:
        await second.close()
    assert stamps(db, "run1")["StartTransaction.timestamp"] == FAKE_HWCLOCK + offset
    assert (
        stamps(db, "run2")["StartTransaction.timestamp"]
        == FAKE_HWCLOCK + timedelta(seconds=20) + offset
    )


async def test_a_reboot_before_the_time_was_known_flags_the_ledger_events(
    tmp_path: Path,
) -> None:
    db = tmp_path / "edgepoint.db"
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine, boot=BOOT_A)
    store = await ChargePointStore.open(db)
    await timesync.TimeKeeper.open(clock, store, tmp_path / timesync.STATE_FILE, state)
    await charge(store, clock, "lost-epoch")
    await store.close()
    # Power cut; the Pi boots again (monotonic from zero) with fake-hwclock's time.
    rebooted = Machine(FAKE_HWCLOCK + timedelta(minutes=1), synced=False)
    rebooted.mono_time = 5.0
    clock2, state2 = start(tmp_path, rebooted, boot=BOOT_B)
    assert clock2.epoch != clock.epoch and len(state2.stale) == 1
    store = await ChargePointStore.open(db)
    try:
        keeper = await timesync.TimeKeeper.open(
            clock2, store, tmp_path / timesync.STATE_FILE, state2
        )
    finally:
        await store.close()
    assert keeper.flagged == 2
    recorded = [r for (r,) in query(db, "SELECT recorded_at FROM ledger_events ORDER BY 1")]
    # The ledger signs these with the signing time (time_basis "signed"), keeping what was seen.
    assert all(r.startswith(PROVISIONAL_PREFIX) for r in recorded)
    assert datetime.fromisoformat(recorded[0].removeprefix(PROVISIONAL_PREFIX)) >= FAKE_HWCLOCK
    assert timesync.load_state(tmp_path / timesync.STATE_FILE).stale == ()


async def test_the_ledger_signs_a_flagged_event_with_the_signing_time(tmp_path: Path) -> None:
    from edgepoint.cloud.ledger import LedgerRecorder
    from edgepoint.cloud.signing import load_or_create_key
    from edgepoint.storage.ledger import LedgerStore

    store = await ChargePointStore.open(tmp_path / "edgepoint.db")
    try:
        machine = Machine(REAL_TIME, synced=True)
        clock = machine.clock()
        await charge(store, clock, "flagged")
        await StampRepository(store.db).mark_provisional(Marks(0, 0, 0))
        ledger = LedgerStore(store.db)
        key = load_or_create_key(tmp_path / "ledger.key")
        recorder = LedgerRecorder(ledger, key, "EP-1", clock)
        assert await recorder.record_pending() == 2
        entries = await ledger.entries_after(0, 10)
    finally:
        await store.close()
    assert [e["time_basis"] for e in entries] == ["signed", "signed"]


async def test_trust_rtc_starts_trusted_and_opens_no_epoch(tmp_path: Path) -> None:
    machine = Machine(FAKE_HWCLOCK, synced=False)
    clock, state = start(tmp_path, machine, trust_rtc=True)
    assert clock.synced and clock.source is TimeSource.RTC and state.epoch is None


def test_the_embedded_csms_is_never_a_time_source(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert timesync.is_own_csms(config)  # ws://127.0.0.1:<csms.port>/ocpp
    remote = load_config(
        write_config(tmp_path, chargepoint__csms_url="wss://csms.example.com/ocpp")
    )
    assert not timesync.is_own_csms(remote)
    off = load_config(write_config(tmp_path, csms__enabled=False))
    assert not timesync.is_own_csms(off)


def test_clock_state_survives_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / timesync.STATE_FILE
    path.write_text('{"last_trusted": "2025-06-0')
    assert timesync.load_state(path) == timesync.ClockState()
    timesync.save_state(path, timesync.ClockState(last_trusted=REAL_TIME))
    assert timesync.load_state(path).last_trusted == REAL_TIME
    assert iso_utc(REAL_TIME) in path.read_text()


# -- the daemon, unsynchronised (this machine's kernel must say so) --------------------------

needs_unsynced_kernel = pytest.mark.skipif(
    kernel_clock_synced() is True,
    reason="this machine's clock is NTP-synchronised: an unsynchronised boot cannot be staged",
)


@needs_unsynced_kernel
async def test_a_daemon_stamps_with_the_csms_time_from_its_first_message(tmp_path: Path) -> None:
    csms_offset = timedelta(days=1)  # the CSMS knows better: the Pi is a day behind

    def boot(_: Any) -> dict[str, Any]:
        return {
            "status": "Accepted",
            "currentTime": iso_utc(datetime.now(UTC) + csms_offset),
            "interval": 300,
        }

    async with ScriptedCsms() as csms:
        csms.responders["BootNotification"] = boot
        config = scenario_config(tmp_path, csms, clock__trust_rtc=False)
        async with running(config) as kiosk:
            status = await kiosk.wait_for("the CSMS's time", lambda s: s["clock"]["synced"])
            assert status["clock"]["source"] == "csms"
            await csms.wait_calls("StatusNotification")
            # A card tapped before the first meter reading is refused (no meterStart).
            await kiosk.wait_for("telemetry", lambda s: s["connector"]["last_sample"] is not None)
            await kiosk.present("04A1B2C3")
            [start] = await csms.wait_calls("StartTransaction")
        assert csms.violations == []
        # Stamped before the time was known (statuses at start-up) or after: all in the
        # CSMS's time, none in the Pi's own.
        for call in [*csms.calls("StatusNotification"), start]:
            stamp = datetime.fromisoformat(call.payload["timestamp"])
            assert abs(stamp - (datetime.now(UTC) + csms_offset)) < timedelta(minutes=1), call


@needs_unsynced_kernel
def test_an_unsynced_boot_with_the_embedded_csms_stays_provisional(tmp_path: Path) -> None:
    daemon = Daemon(write_config(tmp_path, clock__trust_rtc=False)).start()
    try:
        status = daemon.wait_ready()
        text = cli(daemon.config, "status").stdout
    finally:
        daemon.kill()
    # Its own CSMS's currentTime is this Pi's clock again: never a reason to trust it.
    assert status["clock_synced"] is False and status["clock"]["source"] == "provisional"
    assert "WARNING: wall clock not synchronised" in text and "provisional time" in text
    saved = timesync.load_state(tmp_path / "var" / timesync.STATE_FILE)
    assert saved.epoch is not None and saved.epoch.marks is not None
