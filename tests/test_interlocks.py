"""Every interlock through the real kiosk loop: relay open, the right OCPP messages, recovery.

The rig is the kiosk as it runs on the Pi, minus the CSMS: the ESP32 emulator on a pty
(with readings forced to fault values, and its own watchdog relay), the serial link
(telemetry in; watchdog pings and relay states out, the relay echo back), the kiosk and
its connector, the authorizer on its SQLite lists, the store on a real SQLite file, the
panel on MockFactory pins. The reader's fault flag is faked behind the kiosk's Protocol.
Lost telemetry has its own test (tests/test_telemetry_loss.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, cli, query, write_config
from gpiozero.pins.mock import MockFactory

from edgepoint import app
from edgepoint import kiosk as kiosk_module
from edgepoint.chargepoint.authorizer import Authorizer
from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.actions import ConnectorStatus, Indication
from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.connector import Connector, Phase
from edgepoint.charging.events import AuthorizationStatus, IdTag, SessionId, TokenPresented
from edgepoint.charging.faults import Limits
from edgepoint.clock import SystemClock
from edgepoint.config import HardwareConfig, load_config
from edgepoint.drivers.panel import Panel
from edgepoint.drivers.telemetry import Esp32Emulator, SerialTelemetryReader, open_pty
from edgepoint.errors import ConfigError
from edgepoint.kiosk import ConnectorSetup, Kiosk, TriggerStatus, new_session_id
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.chargepoint import Change, ChargePointStore

pytestmark = pytest.mark.timeout(30)

CARD = IdTag("04A1B2C3")
CLEAR_AFTER_S = 0.5
STALL_S = 1.0
LIMITS = Limits(clear_after_s=CLEAR_AFTER_S, relay_feedback_s=0.3)
HARDWARE = HardwareConfig(
    simulate=True,
    serial_port="unused",
    serial_baudrate=115200,
    relay_pin=17,
    green_led_pin=27,
    red_led_pin=22,
    buzzer_pin=23,
    telemetry_timeout_s=2.0,
)


class OfflineCsms:
    """The CSMS is out of reach: the local list decides (LocalAuthorizeOffline)."""

    online = False

    async def authorize(self, id_tag: str, deadline_s: float) -> dict[str, Any] | None:
        return None


@dataclass
class Contact:
    """The relay contact the ESP32 meters and senses: the panel's relay, unless forced
    (welded closed, or dropped out)."""

    forced: bool | None = None


@dataclass
class FakeReader:
    faulted: bool = False

    def reader_faulted(self) -> bool:
        return self.faulted


class GatedStore(ChargePointStore):
    """The real store, whose next write can be made to hang (a dying SD card)."""

    hang = False
    gate = asyncio.Event()

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        if self.hang:
            await self.gate.wait()
        async with super().change() as change:
            yield change


@dataclass
class Rig:
    kiosk: Kiosk
    panel: Panel
    factory: MockFactory
    esp32: Esp32Emulator
    link: SerialTelemetryReader
    contact: Contact
    reader: FakeReader
    store: GatedStore
    path: Path

    def connector(self) -> Any:
        return self.kiosk.snapshot().connectors[0]

    def statuses(self, connector_id: int = 1) -> list[tuple[str, str]]:
        """StatusNotifications queued for `connector_id`, in order: (status, errorCode)."""
        return [
            (p["status"], p["errorCode"])
            for action, p in self.outbox()
            if action == "StatusNotification" and p["connectorId"] == connector_id
        ]

    def outbox(self) -> list[tuple[str, dict[str, Any]]]:
        rows = query(self.path, "SELECT action, payload FROM outbox ORDER BY seq")
        return [(action, json.loads(payload)) for action, payload in rows]

    def billing(self) -> list[tuple[str, dict[str, Any]]]:
        return [(a, p) for a, p in self.outbox() if a in ("StartTransaction", "StopTransaction")]

    def pings(self) -> int:
        """Watchdog pings the ESP32 has executed."""
        return self.esp32.commands_executed.get("PING", 0)

    def relay_ever_closed(self) -> bool:
        return any(s.state for s in self.factory.pin(HARDWARE.relay_pin).states)

    async def set_read_only(self, read_only: bool) -> None:
        """The SD card remounted read-only (ext4 errors=remount-ro), and back."""
        async with self.store.db.read() as conn:
            await conn.execute(f"PRAGMA query_only = {int(read_only)}")

    async def start_charging(self) -> SessionId:
        await eventually("telemetry", lambda: self.connector().last_sample is not None)
        self.kiosk.publish(TokenPresented(CARD))
        await eventually("charging", lambda: self.panel.is_relay_closed(1))
        session = self.kiosk.connector(1).session
        assert session is not None and self.kiosk.connector(1).phase is Phase.CHARGING
        return session.session_id

    async def wait_faulted(self, stored: bool = True) -> None:
        """Until the connector reports Faulted (and, `stored`, that is in the outbox, so
        everything decided with it is committed too)."""
        await eventually("faulted", lambda: self.connector().status is ConnectorStatus.FAULTED)
        if stored:
            await eventually("Faulted queued", lambda: self.statuses()[-1][0] == "Faulted")

    async def wait_available(self) -> float:
        took = await eventually(
            "available", lambda: self.connector().status is ConnectorStatus.AVAILABLE
        )
        await eventually("Available queued", lambda: self.statuses()[-1][0] == "Available")
        return took


async def eventually(what: str, check: Callable[[], bool], within: float = 5) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(name="rig")
async def rig_fixture(tmp_path: Path) -> AsyncIterator[Rig]:
    GatedStore.hang, GatedStore.gate = False, asyncio.Event()
    path = tmp_path / "edgepoint.db"
    store = await GatedStore.open(path)
    assert isinstance(store, GatedStore)
    factory = MockFactory()
    panel = Panel(HARDWARE, pin_factory=factory, refused_s=0.2)
    lists = AuthListStore(store.db)
    await lists.replace_local_list(1, {CARD: TagEntry(AuthorizationStatus.ACCEPTED)})
    clock = SystemClock()
    contact, reader = Contact(), FakeReader()
    authorizer = Authorizer(lists, OfflineCsms(), Settings(), clock, deadline_s=1)
    master_fd, slave_path = open_pty()
    # The ESP32 opens its relay 3 s after the last ping (the kiosk pings every second).
    link = SerialTelemetryReader(slave_path, HARDWARE.serial_baudrate, watchdog_timeout_s=3.0)
    kiosk = Kiosk(
        [ConnectorSetup(1, Connector(new_session_id, meter_value_interval_s=0.2))],
        store,
        panel,
        authorizer,
        clock,
        telemetry_timeout_s=HARDWARE.telemetry_timeout_s,
        limits=LIMITS,
        esp32=link,
        reader=reader,
        loop_stall_s=STALL_S,
    )

    def contact_closed() -> bool:
        return panel.is_relay_closed(1) if contact.forced is None else contact.forced

    # A real single-phase kiosk: 7.36 kW is 32 A at 230 V, inside the 35 A limit.
    esp32 = Esp32Emulator(
        master_fd,
        relay_closed=contact_closed,
        charge_power_w=7360,
        interval_s=0.05,
        energy_wh=50_000,
        watchdog=True,
    )
    tasks = [
        asyncio.create_task(esp32.run()),
        asyncio.create_task(link.run(kiosk.publish)),
        asyncio.create_task(kiosk.run()),
    ]
    try:
        yield Rig(kiosk, panel, factory, esp32, link, contact, reader, store, path)
    finally:
        GatedStore.gate.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        esp32.detach()
        os.close(master_fd)
        panel.close()
        await store.close()


# -- faults from the ESP32's readings ---------------------------------------------------


@pytest.mark.parametrize(
    ("forced", "fault", "code", "reason"),
    [
        ({"temperature_c": 92.0}, "over-temperature", "HighTemperature", "EmergencyStop"),
        ({"current_a": 48.0}, "over-current", "OverCurrentFailure", "EmergencyStop"),
        ({"voltage_v": 262.0}, "over-voltage", "OverVoltage", "EmergencyStop"),
        # (the car draws 32 A whatever the voltage: its charger regulates current)
        ({"voltage_v": 180.0, "current_a": 32.0}, "under-voltage", "UnderVoltage", "PowerLoss"),
    ],
    ids=["over-temperature", "over-current", "over-voltage", "under-voltage"],
)
async def test_a_reading_past_its_limit_while_charging_trips_and_clears(
    rig: Rig, forced: dict[str, float], fault: str, code: str, reason: str
) -> None:
    session_id = await rig.start_charging()
    rig.esp32.force(**forced)  # type: ignore[arg-type]
    await rig.wait_faulted()
    assert rig.panel.is_relay_closed(1) is False
    snapshot = rig.connector()
    assert snapshot.faults == (fault,) and snapshot.error_code == code
    assert snapshot.session_id is None
    assert rig.panel.indication is Indication.FAULT
    # The session is over, billed up to the reading that tripped.
    row = await rig.store.session(session_id)
    assert row is not None and (row.state, row.stop_reason) == ("stopped", reason)
    stop = rig.billing()[-1]
    assert stop[0] == "StopTransaction" and stop[1]["reason"] == reason
    assert rig.statuses()[-1] == ("Faulted", code)
    # Connector 0 (the charge point) is fine: this is the connector's fault.
    assert rig.statuses(0) == [("Available", "NoError")]

    # Still out of limits: no card can start a session.
    rig.kiosk.publish(TokenPresented(CARD))
    await asyncio.sleep(0.3)
    assert rig.connector().status is ConnectorStatus.FAULTED and not rig.panel.is_relay_closed(1)

    rig.esp32.release()
    took = await rig.wait_available()
    assert took >= CLEAR_AFTER_S * 0.8  # hysteresis: not at the first good frame
    assert rig.statuses()[-2:] == [("Faulted", code), ("Available", "NoError")]
    assert rig.connector().faults == ()
    assert rig.panel.indication is Indication.AVAILABLE
    # And it charges again.
    await rig.start_charging()


async def test_a_reading_inside_the_hysteresis_band_keeps_the_fault(rig: Rig) -> None:
    await rig.start_charging()
    rig.esp32.force(temperature_c=75.0)
    await rig.wait_faulted()
    rig.esp32.force(temperature_c=65.0)  # under the trip point, not yet 10 °C under it
    await asyncio.sleep(CLEAR_AFTER_S * 3)
    assert rig.connector().status is ConnectorStatus.FAULTED
    rig.esp32.force(temperature_c=55.0)
    await rig.wait_available()


async def test_a_register_going_backwards_ends_the_session_at_its_peak(rig: Rig) -> None:
    session_id = await rig.start_charging()
    await eventually("energy flowing", lambda: rig.esp32.energy_wh >= 50_001)
    seen = rig.connector().last_sample
    assert seen is not None
    peak = seen.energy_wh
    rig.esp32.force(energy_wh=10_000)  # meter swapped, or NVS lost
    await rig.wait_faulted()
    assert rig.panel.is_relay_closed(1) is False
    assert rig.connector().faults == ("register-backwards",)
    assert rig.statuses()[-1] == ("Faulted", "PowerMeterFailure")
    row = await rig.store.session(session_id)
    assert row is not None and row.stop_reason == "Other"
    # Never a negative session, never less than what was seen.
    assert row.meter_stop_wh is not None and row.meter_stop_wh >= peak
    # The lower register is the new baseline: it clears once it stops dropping.
    await rig.wait_available()
    await rig.start_charging()
    start = rig.billing()[-1][1]
    assert 10_000 <= start["meterStart"] < 11_000


async def test_a_relay_that_does_not_follow_its_command_faults_the_connector(rig: Rig) -> None:
    session_id = await rig.start_charging()
    rig.contact.forced = False  # the contact dropped out: commanded closed, reads open
    await rig.wait_faulted()
    assert rig.connector().faults == ("relay-mismatch",)
    assert rig.statuses()[-1] == ("Faulted", "PowerSwitchFailure")
    row = await rig.store.session(session_id)
    assert row is not None and row.stop_reason == "EmergencyStop"
    # Now commanded open, and it reads open: they agree, and it clears.
    await rig.wait_available()
    rig.contact.forced = None


async def test_a_welded_relay_keeps_the_connector_faulted(rig: Rig) -> None:
    await rig.start_charging()
    rig.contact.forced = True  # welded: closed whatever is commanded
    rig.kiosk.publish(TokenPresented(CARD))  # the driver stops: the relay is told to open
    await rig.wait_faulted()
    assert rig.panel.is_relay_closed(1) is False
    assert rig.connector().error_code == "PowerSwitchFailure"
    await asyncio.sleep(CLEAR_AFTER_S * 3)
    assert rig.connector().status is ConnectorStatus.FAULTED  # never cleared while welded
    # The driver's stop was first: it stays the session's reason.
    assert rig.billing()[-1][1]["reason"] == "Local"
    rig.contact.forced = None  # repaired
    await rig.wait_available()


# -- charge-point-wide faults --------------------------------------------------------------


async def test_a_lost_reader_faults_every_connector_and_the_charge_point(rig: Rig) -> None:
    session_id = await rig.start_charging()
    rig.reader.faulted = True
    await rig.wait_faulted()
    assert rig.panel.is_relay_closed(1) is False
    assert rig.kiosk.snapshot().faults == ("reader-failed",)
    assert rig.connector().faults == ("reader-failed",)
    row = await rig.store.session(session_id)
    # No card can stop it any more: ended rather than left to a plug pulled under load.
    assert row is not None and row.stop_reason == "Other"
    assert rig.statuses()[-1] == ("Faulted", "ReaderFailure")
    assert rig.statuses(0) == [("Available", "NoError"), ("Faulted", "ReaderFailure")]
    rig.reader.faulted = False
    await rig.wait_available()
    assert rig.statuses(0)[-1] == ("Available", "NoError")
    assert rig.kiosk.snapshot().faults == ()


async def test_a_failing_database_faults_the_charge_point_and_recovers_in_order(
    rig: Rig,
) -> None:
    session_id = await rig.start_charging()
    await rig.set_read_only(True)
    # The next MeterValues write fails: the loop carries on, the charge point faults.
    await rig.wait_faulted(stored=False)
    assert rig.panel.is_relay_closed(1) is False
    snapshot = rig.kiosk.snapshot()
    assert snapshot.faults == ("storage-failed",) and snapshot.unsaved_writes > 0
    assert rig.connector().error_code == "InternalError"
    # Nothing could be written: the session is still open in the database...
    row = await rig.store.session(session_id)
    assert row is not None and row.state != "stopped"
    # ... and the kiosk is alive: it keeps judging telemetry, refuses cards.
    rig.kiosk.publish(TokenPresented(CARD))
    await asyncio.sleep(0.3)
    assert not rig.panel.is_relay_closed(1)

    await rig.set_read_only(False)
    await rig.wait_available()
    assert rig.kiosk.snapshot().unsaved_writes == 0
    row = await rig.store.session(session_id)
    assert row is not None and (row.state, row.stop_reason) == ("stopped", "Other")
    # What was kept went out in the order it was decided: the MeterValues that failed,
    # then the session's end, then Available once the fault cleared.
    outbox = rig.outbox()
    actions = [a for a, _ in outbox]
    stop = actions.index("StopTransaction")
    last_meter = max(i for i, a in enumerate(actions) if a == "MeterValues")
    available = max(
        i
        for i, (a, p) in enumerate(outbox)
        if a == "StatusNotification" and p["connectorId"] == 1 and p["status"] == "Available"
    )
    assert actions.index("StartTransaction") < last_meter < stop < available
    assert rig.statuses()[-2:] == [("Faulted", "InternalError"), ("Available", "NoError")]
    assert ("Faulted", "InternalError") in rig.statuses(0)


async def test_a_session_that_cannot_be_stored_never_energizes(rig: Rig) -> None:
    await eventually("telemetry", lambda: rig.connector().last_sample is not None)
    await rig.set_read_only(True)
    rig.kiosk.publish(TokenPresented(CARD))
    await rig.wait_faulted(stored=False)
    # Durable before energized: not for a moment.
    assert not rig.relay_ever_closed()
    await rig.set_read_only(False)
    await rig.wait_available()
    start, stop = rig.billing()
    # Both sides of the session that never was are on record: nothing flowed.
    assert start[0] == "StartTransaction" and stop[0] == "StopTransaction"
    assert stop[1]["meterStop"] == start[1]["meterStart"] and stop[1]["reason"] == "Other"
    assert not rig.relay_ever_closed()


async def test_writes_kept_while_storage_fails_are_bounded_but_billing_never_dropped(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kiosk_module, "MAX_UNSAVED", 6)
    await eventually("telemetry", lambda: rig.connector().last_sample is not None)
    await rig.set_read_only(True)
    rig.kiosk.publish(TokenPresented(CARD))  # a session that cannot be stored
    await rig.wait_faulted(stored=False)
    for _ in range(10):  # the CSMS keeps asking for statuses: each one a kept write
        assert await rig.kiosk.submit(TriggerStatus(None)) is True  # sent once stored
    snapshot = rig.kiosk.snapshot()
    assert snapshot.unsaved_writes <= 6 and snapshot.dropped_writes > 0
    await rig.set_read_only(False)
    await rig.wait_available()
    assert [a for a, _ in rig.billing()] == ["StartTransaction", "StopTransaction"]


# -- a stuck kiosk loop ----------------------------------------------------------------------


class SystemdWatchdog:
    """systemd's end of NOTIFY_SOCKET: records when each WATCHDOG=1 arrived.

    Read continuously: a full datagram queue would block the daemon's sendto.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.fed: list[float] = []

    def read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                if self.sock.recv(64) == b"WATCHDOG=1":
                    self.fed.append(time.monotonic())

    def fed_since(self, moment: float) -> int:
        return sum(1 for at in self.fed if at > moment)


@pytest.fixture
async def watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SystemdWatchdog]:
    path = tmp_path / "notify"
    receiver = SystemdWatchdog(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    loop = asyncio.get_running_loop()
    loop.add_reader(receiver.sock.fileno(), receiver.read)
    try:
        yield receiver
    finally:
        loop.remove_reader(receiver.sock.fileno())
        receiver.sock.close()


async def test_a_stuck_loop_stops_both_watchdogs_and_opens_the_relay(
    rig: Rig, watchdog: SystemdWatchdog
) -> None:
    systemd = asyncio.create_task(app._keep_systemd_happy(rig.kiosk, SystemClock()))
    try:
        session_id = await rig.start_charging()
        await eventually("systemd fed", lambda: len(watchdog.fed) >= 2)
        await eventually("ESP32 pinged", lambda: rig.pings() >= 2)
        assert rig.esp32.esp32_relay_closed()  # its own relay, in series: closed while pinged

        GatedStore.hang = True  # the next write (a MeterValues) never returns
        stuck_at = await eventually_stuck(rig)
        # Beside the loop, the watchdog task opens the relay within the stall limit.
        await eventually("relay opened", lambda: not rig.panel.is_relay_closed(1))
        assert time.monotonic() - stuck_at < STALL_S + 1.0
        pings = rig.pings()
        # systemd is fed no more once the loop is 2 s behind (at least 2 ticks): it
        # will kill the daemon, and the unit's ExecStopPost opens the relay again.
        await asyncio.sleep(3.0)
        assert watchdog.fed_since(stuck_at + 2.2) == 0
        assert watchdog.fed_since(stuck_at) > 0  # it was fed until then
        # The loop pings the ESP32 no more, so its firmware opens its own relay too (and
        # keeps it open until the Pi says its relay is open).
        assert rig.pings() == pings
        await eventually("the ESP32 tripped", lambda: rig.esp32.watchdog_tripped(), within=4)
        assert not rig.esp32.esp32_relay_closed()

        GatedStore.hang = False
        GatedStore.gate.set()  # the card answers at last
        await rig.wait_faulted()
        assert rig.kiosk.snapshot().faults == ("loop-stalled",)
        assert rig.connector().error_code == "InternalError"
        row = await rig.store.session(session_id)
        assert row is not None and row.stop_reason == "Other"
        assert not rig.panel.is_relay_closed(1)
        await rig.wait_available()
        back = time.monotonic()
        await eventually("systemd fed again", lambda: watchdog.fed_since(back) > 0)
        await eventually("ESP32 pinged again", lambda: rig.pings() > pings)
        # The kiosk released the ESP32's latch (its own relay is open): charging works.
        await eventually("ESP32 released", lambda: not rig.esp32.watchdog_tripped())
        await rig.start_charging()
        assert rig.esp32.contact_closed()
    finally:
        systemd.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await systemd


async def eventually_stuck(rig: Rig) -> float:
    """Wait until the loop stopped turning; return when it last did."""
    await eventually(
        "a stuck loop", lambda: time.monotonic() - rig.kiosk.last_progress > 0.5, within=3
    )
    return rig.kiosk.last_progress


async def test_a_loop_stuck_storing_a_new_session_never_closes_the_relay(rig: Rig) -> None:
    await eventually("telemetry", lambda: rig.connector().last_sample is not None)
    GatedStore.hang = True
    rig.kiosk.publish(TokenPresented(CARD))  # its StartTransaction write will hang
    await eventually_stuck(rig)
    await asyncio.sleep(STALL_S + 0.6)  # the watchdog has seen the stall
    GatedStore.hang = False
    GatedStore.gate.set()
    await rig.wait_faulted()
    assert not rig.relay_ever_closed()
    await rig.wait_available()
    assert [a for a, _ in rig.billing()] == ["StartTransaction", "StopTransaction"]


# -- the relay outside the process ----------------------------------------------------------


def test_the_unit_opens_the_relays_after_any_exit_with_the_same_config() -> None:
    unit = (Path(__file__).parents[1] / "systemd" / "edgepoint.service").read_text()
    lines = [line for line in unit.splitlines() if not line.startswith("#")]
    start = next(line for line in lines if line.startswith("ExecStart="))
    post = next(line for line in lines if line.startswith("ExecStopPost="))
    assert post.split()[1:] == ["relay-off", *start.split()[2:]]
    assert post.split("=", 1)[1].split()[0] == start.split("=", 1)[1].split()[0]


def test_relay_off_drives_the_configured_pins_open(tmp_path: Path) -> None:
    config = write_config(tmp_path, hardware__simulate=False, hardware__relay_active_high=False)
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "SERVICE_RESULT": "signal"}
    result = subprocess.run(
        [sys.executable, "-m", "edgepoint.cli", "relay-off", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GPIO17 driven high (relay open) (daemon ended: signal)" in result.stdout
    assert load_config(config).hardware.relay_active_high is False


async def test_the_relays_are_set_up_before_the_key_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write_config(tmp_path))
    order: list[str] = []
    factory = MockFactory()

    def simulated(*args: Any) -> Panel:
        order.append("panel")
        return Panel(HARDWARE, pin_factory=factory)

    def unreadable_key(*args: Any, **kwargs: Any) -> str:
        order.append("key")
        raise PermissionError("key file unreadable")

    monkeypatch.setattr(Panel, "simulated", simulated)
    monkeypatch.setattr(app, "load_or_create_key", unreadable_key)
    with pytest.raises(PermissionError):
        await app.run(config)
    assert order == ["panel", "key"]
    # And a start that fails still leaves the relay open and its pin released.
    relay = factory.pin(HARDWARE.relay_pin)
    assert relay.state is False and relay.function == "input"
    assert not any(s.state for s in relay.states)


def test_a_hangup_stops_the_daemon_cleanly_mid_session(daemon: Daemon) -> None:
    """SIGHUP (an ssh session closed under a hand-started daemon) would otherwise end the
    process where it stands, relay closed: it ends the session and exits like SIGTERM."""
    cli(daemon.config, "cards", "add", CARD)
    daemon.start()
    daemon.wait_ready()
    cli(daemon.config, "sim", "tap", CARD)
    daemon.wait_for("charging", lambda s: s["connector"]["relay_closed"] is True, timeout=10)
    code, _ = daemon.stop(signal.SIGHUP)
    assert code == 0, daemon.tail()
    rows = query(
        daemon.config.parent / "var" / "edgepoint.db", "SELECT state, stop_reason FROM sessions"
    )
    assert rows == [("stopped", "Reboot")]


# -- the [safety] table -----------------------------------------------------------------------


def test_safety_defaults_and_the_telemetry_timeout_from_hardware(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, hardware__telemetry_timeout_s=4))
    limits = config.safety.limits
    assert limits.max_temperature_c == 70 and limits.clear_after_s == 30
    assert limits.telemetry_timeout_s == 4  # [hardware]'s key, one place only
    assert config.safety.loop_stall_s == 5
    assert config.hardware.relay_active_high is True


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"safety__max_temperature_c": 500}, "safety.max_temperature_c", "between"),
        ({"safety__temperature_hysteresis_c": 40, "safety__max_temperature_c": 30},
         "safety.temperature_hysteresis_c", "below"),
        ({"safety__min_voltage_v": 250}, "safety.max_voltage_v", "exceed"),
        ({"safety__max_current": 20}, "safety.max_current", "unknown"),
        ({"hardware__relay_active_high": "low"}, "hardware.relay_active_high", "bool"),
    ],
)  # fmt: skip
def test_bad_safety_settings_name_the_key(
    tmp_path: Path, overrides: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, **overrides))
    assert caught.value.key == key and reason in caught.value.reason
