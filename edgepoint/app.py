"""Composition root: build every collaborator from Config and run them in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from edgepoint import __version__, systemd
from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.charging.connector import Connector
from edgepoint.clock import Clock, SystemClock, is_synced
from edgepoint.config import Config
from edgepoint.control.server import ControlServer
from edgepoint.csms.server import SiteCsms
from edgepoint.drivers.panel import Panel
from edgepoint.drivers.rfid import EmulatedI2CBus, Pn532Emulator, Pn532Reader, open_pn532_bus
from edgepoint.drivers.telemetry import Esp32Emulator, SerialTelemetryReader, open_pty
from edgepoint.errors import ControlError
from edgepoint.keys import load_or_create_key
from edgepoint.kiosk import Kiosk, new_session_id, session_to_resume
from edgepoint.storage.chargepoint import ChargePointStore

log = logging.getLogger(__name__)

# Give a StopTransaction queued at shutdown this long to reach an online CSMS.
SHUTDOWN_FLUSH_S = 1.5


# Where the simulated ESP32 keeps its energy register between runs of the daemon.
SIMULATED_NVS = "simulated-esp32.nvs"


@dataclass
class Devices:
    """The card reader, the telemetry link and, when simulating, their emulators."""

    rfid: Pn532Reader
    telemetry: SerialTelemetryReader
    background: list[Coroutine[Any, Any, None]] = field(default_factory=list)
    card_field: Pn532Emulator | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def build_devices(config: Config, panel: Panel) -> Devices:
    """Real devices, or their twins at the lowest boundary (emulated I2C bus, pty)."""
    hw = config.hardware
    if not hw.simulate:
        return Devices(
            rfid=Pn532Reader(open_pn532_bus(simulate=False)),
            telemetry=SerialTelemetryReader(hw.serial_port, hw.serial_baudrate),
        )
    sim = config.simulation
    chip = Pn532Emulator()
    master_fd, slave_path = open_pty()
    esp32 = Esp32Emulator(
        master_fd,
        nvs=config.storage.dir / SIMULATED_NVS,
        relay_closed=lambda: panel.relay_closed,
        charge_power_w=sim.charge_power_w,
        interval_s=sim.telemetry_interval_s,
        energy_wh=sim.start_energy_wh,
    )
    return Devices(
        rfid=Pn532Reader(EmulatedI2CBus.with_pn532(chip)),
        telemetry=SerialTelemetryReader(slave_path, hw.serial_baudrate),
        background=[esp32.run()],
        card_field=chip,
        cleanup=[lambda: os.close(master_fd)],
    )


class Station:
    """The running daemon as the control socket sees it: status, simulated taps, changes."""

    def __init__(
        self,
        config: Config,
        kiosk: Kiosk,
        link: CsmsLink,
        store: ChargePointStore,
        devices: Devices,
        csms: SiteCsms | None,
        clock: Clock,
    ) -> None:
        self._config = config
        self._kiosk = kiosk
        self._link = link
        self._store = store
        self._devices = devices
        self._csms = csms
        self._clock = clock
        self._started = clock.monotonic()

    async def status(self) -> dict[str, Any]:
        k = self._kiosk.snapshot()
        return {
            "station": self._config.station.id,
            "version": __version__,
            "simulated": self._config.hardware.simulate,
            "uptime_s": round(self._clock.monotonic() - self._started, 3),
            # False on a Pi that booted without NTP/RTC: timestamps sent out are wrong.
            "clock_synced": is_synced(self._clock),
            "connector": {
                "id": 1,
                "status": k.status,
                "phase": k.phase,
                "relay_closed": k.relay_closed,
                "telemetry_lost": k.telemetry_lost,
                "session": None
                if k.session_id is None
                else {
                    "session_id": k.session_id,
                    "id_tag": k.id_tag,
                    "meter_start_wh": k.meter_start_wh,
                    "energy_wh": (k.last_sample.energy_wh - (k.meter_start_wh or 0))
                    if k.last_sample
                    else 0,
                },
            },
            "telemetry": {
                "last": dataclasses.asdict(k.last_sample) if k.last_sample else None,
                "reader": _plain(self._devices.telemetry.stats),
            },
            "rfid": _plain(self._devices.rfid.stats),
            "links": {
                "csms": _plain(self._link.snapshot()),
                "embedded_csms": None
                if self._csms is None
                else {"connected": sorted(self._csms.connected_ids())},
            },
            "outbox": {
                "depth": await self._store.outbox_depth(),
                "dead_letters": await self._store.dead_letter_count(),
            },
        }

    async def tap(self, uid: str) -> None:
        chip = self._devices.card_field
        if chip is None:
            raise ControlError("tap needs simulated hardware (hardware.simulate = true)")
        try:
            raw = bytes.fromhex(uid)
        except ValueError as err:
            raise ControlError(f"card UID must be hex, got {uid!r}") from err
        if len(raw) not in (4, 7, 10):
            raise ControlError(f"card UID must be 4, 7 or 10 bytes, got {len(raw)}")
        chip.present_card(raw)

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        undo = (self._kiosk.watch(notify), self._link.watch(notify))

        def unwatch() -> None:
            for step in undo:
                step()

        return unwatch


def _plain(snapshot: Any) -> Any:
    """A frozen dataclass snapshot as JSON-ready data."""
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        return dataclasses.asdict(snapshot)
    return snapshot


async def run(config: Config, clock: Clock | None = None) -> None:
    """Run the daemon until SIGINT/SIGTERM, then stop cleanly: relay open, links closed."""
    clock = clock or SystemClock()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    auth_key = load_or_create_key(config.chargepoint.auth_key_file, create=config.csms.enabled)
    # The relay is set up (open) before anything else can ask for it.
    panel = Panel.simulated(config.hardware) if config.hardware.simulate else Panel(config.hardware)
    store = await ChargePointStore.open(config.storage.chargepoint_db)
    devices = build_devices(config, panel)
    try:
        async with asyncio.TaskGroup() as tg:
            csms: SiteCsms | None = None
            csms_task = None
            if config.csms.enabled:
                csms = SiteCsms(
                    config.storage.csms_db,
                    config.csms.host,
                    config.csms.port,
                    clock,
                    heartbeat_interval=config.csms.heartbeat_interval,
                )
                csms_task = tg.create_task(csms.run())
                await csms.wait_started()
                if auth_key is not None:
                    await csms.register_charge_point(config.station.id, auth_key)

            link = CsmsLink(config.station, config.chargepoint, auth_key, store, clock)
            connector = Connector(
                new_session_id,
                config.chargepoint.meter_value_sample_interval,
                resume=await session_to_resume(store),
            )
            kiosk = Kiosk(connector, store, panel, link, clock, config.hardware.telemetry_timeout_s)
            link.on_transaction_started = kiosk.transaction_started
            station = Station(config, kiosk, link, store, devices, csms, clock)

            front = [tg.create_task(coro) for coro in devices.background]
            front += [
                tg.create_task(kiosk.run()),
                tg.create_task(devices.rfid.run(kiosk.publish)),
                tg.create_task(devices.telemetry.run(kiosk.publish)),
                tg.create_task(ControlServer(config.control.socket, station).run()),
            ]
            link_task = tg.create_task(link.run())
            watchdog = tg.create_task(_keep_systemd_happy())
            if not is_synced(clock):
                log.warning(
                    "the wall clock is not set (%s): timestamps will be wrong", clock.utc_now()
                )
            systemd.notify(f"READY=1\nSTATUS=serving as {config.station.id}")
            log.info("edgepoint %s running as %s", __version__, config.station.id)

            await stop.wait()
            log.info("stopping")
            systemd.notify("STOPPING=1")
            await _cancel(front)
            await kiosk.shutdown()
            await _flush(store, link)
            await link.close()
            await _cancel([link_task, watchdog])
            if csms_task is not None:
                await _cancel([csms_task])
    finally:
        panel.close()
        await store.close()
        for cleanup in devices.cleanup:
            cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _flush(store: ChargePointStore, link: CsmsLink) -> None:
    """Let an online link deliver what shutdown queued; what is left waits for next start."""
    deadline = time.monotonic() + SHUTDOWN_FLUSH_S
    while link.state is LinkState.ONLINE and time.monotonic() < deadline:
        if await store.outbox_depth() == 0:
            return
        await asyncio.sleep(0.05)


async def _keep_systemd_happy() -> None:
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
