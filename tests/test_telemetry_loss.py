"""The ESP32 goes silent while charging: relay open, session ended (Other), Faulted
(PowerMeterFailure); then back once frames have flowed for the clear time (hysteresis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import query

from edgepoint.chargepoint.authorizer import Authorizer
from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.actions import ConnectorStatus
from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.connector import Connector, Phase
from edgepoint.charging.events import AuthorizationStatus, IdTag, TokenPresented
from edgepoint.charging.faults import Limits
from edgepoint.clock import SystemClock
from edgepoint.config import HardwareConfig
from edgepoint.drivers.panel import Panel
from edgepoint.drivers.telemetry import Esp32Emulator, SerialTelemetryReader, open_pty
from edgepoint.kiosk import ConnectorSetup, Kiosk, new_session_id
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.chargepoint import ChargePointStore

pytestmark = pytest.mark.timeout(20)

CARD = IdTag("04A1B2C3")
TIMEOUT_S = 0.5
CLEAR_AFTER_S = 0.5
# 36 kW on the single-phase simulated meter is 157 A: allowed here, this is about silence.
LIMITS = Limits(max_current_a=1000, clear_after_s=CLEAR_AFTER_S)
HARDWARE = HardwareConfig(
    simulate=True,
    serial_port="unused",
    serial_baudrate=115200,
    relay_pin=17,
    green_led_pin=27,
    red_led_pin=22,
    buzzer_pin=23,
    telemetry_timeout_s=TIMEOUT_S,
)


class OfflineCsms:
    """The CSMS is out of reach: taps are decided by the local list (LocalAuthorizeOffline).

    The OCPP link is not what this test is about (the outbox tests cover it); everything
    else here is real: the ESP32 emulator on a pty, the serial reader, the kiosk, the
    connector, the authorizer with its SQLite lists, the panel on MockFactory pins."""

    online = False

    async def authorize(self, id_tag: str, deadline_s: float) -> dict[str, Any] | None:
        return None


@dataclass
class Rig:
    kiosk: Kiosk
    panel: Panel
    esp32: Esp32Emulator
    store: ChargePointStore

    async def statuses(self) -> list[tuple[str, str]]:
        """The StatusNotifications of connector 1 queued for the CSMS, in order."""
        rows = query(
            self.store_path,
            "SELECT payload FROM outbox WHERE action = 'StatusNotification' ORDER BY seq",
        )
        found = [json.loads(payload) for (payload,) in rows]
        return [(p["status"], p["errorCode"]) for p in found if p["connectorId"] == 1]

    store_path: Path = Path()

    def last_status(self) -> str:
        """The status of connector 1 last queued (committed) for the CSMS."""
        rows = query(
            self.store_path,
            "SELECT payload FROM outbox WHERE action = 'StatusNotification' ORDER BY seq",
        )
        found = [json.loads(payload) for (payload,) in rows]
        return [p["status"] for p in found if p["connectorId"] == 1][-1]


async def eventually(what: str, check: Callable[[], bool], within: float = 5) -> float:
    """Wait until `check()`; return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > within:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time() - started


@pytest.fixture(name="rig")
async def rig_fixture(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await ChargePointStore.open(tmp_path / "edgepoint.db")
    panel = Panel.simulated(HARDWARE)
    lists = AuthListStore(store.db)
    await lists.replace_local_list(1, {CARD: TagEntry(AuthorizationStatus.ACCEPTED)})
    clock = SystemClock()
    authorizer = Authorizer(lists, OfflineCsms(), Settings(), clock, deadline_s=1)
    kiosk = Kiosk(
        [ConnectorSetup(1, Connector(new_session_id, meter_value_interval_s=0.2))],
        store,
        panel,
        authorizer,
        clock,
        telemetry_timeout_s=TIMEOUT_S,
        limits=LIMITS,
    )
    master_fd, slave_path = open_pty()
    # 36 kW and a frame every 50 ms: the register rises about half a Wh per frame.
    esp32 = Esp32Emulator(
        master_fd,
        relay_closed=lambda: panel.is_relay_closed(1),
        charge_power_w=36_000,
        interval_s=0.05,
        energy_wh=50_000,
    )
    reader = SerialTelemetryReader(slave_path, HARDWARE.serial_baudrate)
    tasks = [
        asyncio.create_task(esp32.run()),
        asyncio.create_task(reader.run(kiosk.publish)),
        asyncio.create_task(kiosk.run()),
    ]
    try:
        yield Rig(kiosk, panel, esp32, store, tmp_path / "edgepoint.db")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        esp32.detach()
        os.close(master_fd)
        panel.close()
        await store.close()


async def test_silent_esp32_opens_the_relay_ends_the_session_and_faults(rig: Rig) -> None:
    kiosk = rig.kiosk
    await eventually(
        "first telemetry", lambda: kiosk.snapshot().connectors[0].last_sample is not None
    )
    kiosk.publish(TokenPresented(CARD))
    # The relay closes after the session is stored, a moment after the phase changes.
    await eventually(
        "charging", lambda: kiosk.snapshot().connectors[0].status is ConnectorStatus.CHARGING
    )
    assert kiosk.connector(1).phase is Phase.CHARGING and rig.panel.is_relay_closed(1)
    session = kiosk.connector(1).session
    assert session is not None

    def energy() -> int:
        sample = kiosk.snapshot().connectors[0].last_sample
        assert sample is not None
        return sample.energy_wh

    await eventually("energy flowing", lambda: energy() >= session.meter_start_wh + 5)

    loop = asyncio.get_running_loop()
    rig.esp32.pause()  # unplugged: no more frames reach the Pi
    silent_since = loop.time()
    await asyncio.sleep(0.1)  # a frame already on the wire may still arrive
    last_trusted = energy()
    assert kiosk.connector(1).phase is Phase.CHARGING and rig.panel.is_relay_closed(1)
    # The phase flips when the connector decides; the status once its actions are done.
    await eventually(
        "faulted", lambda: kiosk.snapshot().connectors[0].status is ConnectorStatus.FAULTED
    )
    took = loop.time() - silent_since
    # Its writes commit right after: the session's end and the Faulted status, together.
    await eventually("Faulted stored", lambda: rig.last_status() == "Faulted")
    # The watchdog polls every timeout/4 (capped at 0.5 s), so it fires within that of it.
    assert TIMEOUT_S * 0.8 <= took <= TIMEOUT_S + 0.5
    assert rig.panel.is_relay_closed(1) is False
    snapshot = kiosk.snapshot().connectors[0]
    assert snapshot.telemetry_lost and snapshot.status is ConnectorStatus.FAULTED
    assert (await rig.statuses())[-1] == ("Faulted", "PowerMeterFailure")
    assert snapshot.faults == ("telemetry-lost",)

    row = await rig.store.session(session.session_id)
    assert row is not None
    assert (row.state, row.stop_reason) == ("stopped", "Other")
    # Closed with the last reading it could trust, not what flowed while it was blind.
    assert row.meter_stop_wh == last_trusted
    assert await rig.store.open_sessions() == []
    queued = query(rig.store_path, "SELECT action, payload FROM outbox ORDER BY seq")
    billing = [(action, json.loads(p)) for action, p in queued if action != "StatusNotification"]
    assert billing[0][0] == "StartTransaction" and billing[-1][0] == "StopTransaction"
    stop = billing[-1][1]
    assert stop["reason"] == "Other" and stop["meterStop"] == last_trusted
    assert "idTag" not in stop

    # Faulted refuses a new session: the relay stays open.
    kiosk.publish(TokenPresented(CARD))
    await asyncio.sleep(0.2)
    assert kiosk.connector(1).phase is Phase.FAULTED and rig.panel.is_relay_closed(1) is False

    rig.esp32.resume()  # plugged back in
    back = loop.time()
    await eventually("available again", lambda: kiosk.connector(1).phase is Phase.AVAILABLE)
    await eventually("Available stored", lambda: rig.last_status() == "Available")
    # Not at the first frame: only once frames have flowed for the clear time.
    assert loop.time() - back >= CLEAR_AFTER_S
    assert (await rig.statuses())[-1] == ("Available", "NoError")
    assert kiosk.snapshot().connectors[0].telemetry_lost is False
    assert rig.panel.is_relay_closed(1) is False
    assert kiosk.connector(1).session is None
    # And it stays Available while telemetry keeps coming.
    await asyncio.sleep(TIMEOUT_S * 1.5)
    assert kiosk.connector(1).phase is Phase.AVAILABLE
    assert [s for s, _ in await rig.statuses()] == [
        "Available",
        "Preparing",
        "Charging",
        "Faulted",
        "Available",
    ]


async def test_silent_esp32_while_idle_faults_without_a_session(rig: Rig) -> None:
    kiosk = rig.kiosk
    await eventually(
        "first telemetry", lambda: kiosk.snapshot().connectors[0].last_sample is not None
    )
    rig.esp32.pause()
    # The phase flips when the connector decides; the status once its actions are done.
    await eventually(
        "faulted", lambda: kiosk.snapshot().connectors[0].status is ConnectorStatus.FAULTED
    )
    await eventually("Faulted stored", lambda: rig.last_status() == "Faulted")
    assert rig.panel.is_relay_closed(1) is False
    assert (await rig.statuses())[-1] == ("Faulted", "PowerMeterFailure")
    assert query(rig.store_path, "SELECT COUNT(*) FROM sessions") == [(0,)]
    rig.esp32.resume()
    await eventually("available again", lambda: kiosk.connector(1).phase is Phase.AVAILABLE)
    await eventually("Available stored", lambda: rig.last_status() == "Available")
    kiosk.publish(TokenPresented(CARD))
    await eventually("charging after recovery", lambda: rig.panel.is_relay_closed(1))
