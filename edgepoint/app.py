"""Composition root: build every collaborator from Config and run them in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgepoint import __version__, systemd
from edgepoint.chargepoint.authorizer import Authorizer
from edgepoint.chargepoint.commands import CommandHandler
from edgepoint.chargepoint.delivery import RetryPolicy
from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.chargepoint.outbox import OutboxSender
from edgepoint.chargepoint.settings import SettingChange, Settings
from edgepoint.charging.connector import Connector
from edgepoint.charging.events import StopReason
from edgepoint.clock import Clock, SystemClock, is_synced
from edgepoint.config import Config
from edgepoint.control.server import ControlServer
from edgepoint.csms.server import SiteCsms
from edgepoint.drivers.panel import Panel
from edgepoint.drivers.rfid import EmulatedI2CBus, Pn532Emulator, Pn532Reader, open_pn532_bus
from edgepoint.drivers.telemetry import (
    Esp32Emulator,
    MeterChannel,
    SerialTelemetryReader,
    open_pty,
)
from edgepoint.errors import ControlError
from edgepoint.keys import load_or_create_key
from edgepoint.kiosk import (
    KIOSK_TICK_S,
    ConnectorSetup,
    Kiosk,
    KioskOptions,
    new_session_id,
    sessions_to_resume,
)
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.settings import SettingsRepository
from edgepoint.supervisor import Supervisor

log = logging.getLogger(__name__)

# Give what shutdown queued (StopTransaction) this long to reach an online CSMS.
SHUTDOWN_FLUSH_S = 1.5
# Where the simulated ESP32 keeps its energy registers between runs of the daemon.
SIMULATED_NVS = "simulated-esp32.nvs"


class Exit(StrEnum):
    """How `run` ended: stopped by a signal, or asked to start again (OCPP Reset)."""

    STOPPED = "stopped"
    SOFT_RESET = "soft reset"
    HARD_RESET = "hard reset"


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
        # partial, not a lambda in the loop: each channel meters its own relay.
        channels=[
            MeterChannel(c.meter_channel, functools.partial(panel.is_relay_closed, c.id))
            for c in config.connectors
        ],
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
        sender: OutboxSender,
        store: ChargePointStore,
        devices: Devices,
        csms: SiteCsms | None,
        supervisor: Supervisor,
        clock: Clock,
    ) -> None:
        self._config = config
        self._kiosk = kiosk
        self._link = link
        self._sender = sender
        self._store = store
        self._devices = devices
        self._csms = csms
        self._supervisor = supervisor
        self._clock = clock
        self._started = clock.monotonic()

    async def status(self) -> dict[str, Any]:
        k = self._kiosk.snapshot()
        connectors = [
            {
                "id": c.id,
                "status": c.status,
                "phase": c.phase,
                "operative": c.operative,
                "relay_closed": c.relay_closed,
                "telemetry_lost": c.telemetry_lost,
                "session": None
                if c.session_id is None
                else {
                    "session_id": c.session_id,
                    "id_tag": c.id_tag,
                    "transaction_id": c.transaction_id,
                    "meter_start_wh": c.meter_start_wh,
                    "energy_wh": (c.last_sample.energy_wh - (c.meter_start_wh or 0))
                    if c.last_sample
                    else 0,
                },
                "last_sample": dataclasses.asdict(c.last_sample) if c.last_sample else None,
            }
            for c in k.connectors
        ]
        outbox = await self._store.outbox_summary()
        sender = self._sender.snapshot()
        return {
            "station": self._config.station.id,
            "version": __version__,
            "simulated": self._config.hardware.simulate,
            "uptime_s": round(self._clock.monotonic() - self._started, 3),
            # False on a Pi that booted without NTP/RTC and no CSMS time yet.
            "clock_synced": is_synced(self._clock),
            "connector": connectors[0],
            "connectors": connectors,
            "telemetry": {
                "last": connectors[0]["last_sample"],
                "reader": _plain(self._devices.telemetry.stats),
                "unrouted_samples": k.unrouted_samples,
            },
            "rfid": _plain(self._devices.rfid.stats),
            "links": {
                "csms": _plain(self._link.snapshot()),
                "embedded_csms": None
                if self._csms is None
                else {"connected": sorted(self._csms.connected_ids())},
            },
            "services": [_plain(s) for s in self._supervisor.snapshot()],
            "outbox": {
                **_plain(outbox),
                "delivered": sender.delivered,
                "commit_window_ms_p50": sender.commit_window_ms_p50,
                "commit_window_ms_max": sender.commit_window_ms_max,
            },
            "alarms": _alarms(sender.alarms, outbox.parked),
            "events_rejected": k.events_rejected,
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


def _alarms(sender_alarms: tuple[str, ...], parked: int) -> list[str]:
    """What needs a human: the sender's alarms, and parked billing it has not seen this run."""
    alarms = list(sender_alarms)
    noted = sum("parked" in alarm for alarm in alarms)
    if parked > noted:
        alarms.append(
            f"{parked - noted} StartTransaction/StopTransaction parked after repeated refusals"
            " (kept; retried at every connection and every 15 min)"
        )
    return alarms


def _plain(snapshot: Any) -> Any:
    """A frozen dataclass snapshot as JSON-ready data."""
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        return dataclasses.asdict(snapshot)
    return snapshot


async def run(config: Config, clock: Clock | None = None) -> Exit:
    """Run the daemon until SIGINT/SIGTERM or an OCPP Reset, then stop cleanly."""
    system_clock = SystemClock()
    clock = clock or system_clock
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ending: list[Exit] = []

    def request_exit(kind: Exit) -> None:
        ending.append(kind)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_exit, Exit.STOPPED)

    # The relays are set up (open) before anything else is read.
    panel = (
        Panel.simulated(config.hardware, config.connectors)
        if config.hardware.simulate
        else Panel(config.hardware, config.connectors)
    )
    auth_key = load_or_create_key(config.chargepoint.auth_key_file, create=config.csms.enabled)
    store = await ChargePointStore.open(config.storage.chargepoint_db)
    devices: Devices | None = None
    try:
        settings = await SettingsRepository(store.db).load_settings(
            dict(config.ocpp), number_of_connectors=len(config.connectors)
        )
        lists = AuthListStore(store.db)
        devices = build_devices(config, panel)
        exit_kind = await _serve(
            config,
            clock,
            system_clock,
            panel,
            store,
            settings,
            lists,
            auth_key,
            devices,
            stop,
            request_exit,
        )
        return ending[0] if ending else exit_kind
    finally:
        panel.close()
        await store.close()
        if devices is not None:
            for cleanup in devices.cleanup:
                cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _serve(
    config: Config,
    clock: Clock,
    system_clock: SystemClock,
    panel: Panel,
    store: ChargePointStore,
    settings: Settings,
    lists: AuthListStore,
    auth_key: str | None,
    devices: Devices,
    stop: asyncio.Event,
    request_exit: Callable[[Exit], None],
) -> Exit:
    supervisor = Supervisor(clock)
    link = CsmsLink(
        config.station,
        config.chargepoint,
        auth_key,
        settings,
        clock,
        adopt_time=system_clock.adopt if clock is system_clock else None,
    )
    authorizer = Authorizer(lists, link, settings, clock, config.chargepoint.authorize_timeout_s)
    resumed = await sessions_to_resume(store)
    availability = await store.availability()
    interval = _sample_interval(settings.integer("MeterValueSampleInterval"))
    setups = [
        ConnectorSetup(
            c.id,
            Connector(
                new_session_id,
                interval,
                resume=resumed.get(c.id),
                operative=availability.get(c.id, True),
            ),
            c.meter_channel,
        )
        for c in config.connectors
    ]
    wake: list[Callable[[], None]] = []
    kiosk = Kiosk(
        setups,
        store,
        panel,
        authorizer,
        clock,
        config.hardware.telemetry_timeout_s,
        KioskOptions(
            meter_measurands=lambda: settings.csl("MeterValuesSampledData"),
            stop_on_invalid_id=lambda: settings.flag("StopTransactionOnInvalidId"),
            max_energy_on_invalid_id=lambda: settings.integer("MaxEnergyOnInvalidId"),
            outbox_budget=config.chargepoint.outbox_max_messages,
            on_outbox=lambda: wake[0]() if wake else None,
        ),
    )
    kiosk.restore_availability(availability)
    sender = OutboxSender(
        store,
        link,
        clock,
        lambda: RetryPolicy(
            settings.integer("TransactionMessageAttempts"),
            settings.integer("TransactionMessageRetryInterval"),
        ),
        kiosk.transaction_started,
        kiosk.transaction_stopped,
    )
    wake.append(sender.wake.set)

    def restart(hard: bool) -> None:
        request_exit(Exit.HARD_RESET if hard else Exit.SOFT_RESET)

    commands = CommandHandler(
        kiosk, link, settings, SettingsRepository(store.db), lists, clock, restart, sender.wake.set
    )
    link.handler = commands.handle
    link.on_online = lambda first: sender.reconnected()

    def follow(change: SettingChange) -> None:
        if change.key == "MeterValueSampleInterval":
            for cid in kiosk.connector_ids:
                kiosk.connector(cid).meter_value_interval_s = _sample_interval(int(change.new))
        elif change.key == "HeartbeatInterval":
            link.heartbeat_interval_changed()

    settings.subscribe(follow, ["MeterValueSampleInterval", "HeartbeatInterval"])

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
            csms_task = tg.create_task(supervisor.keep("embedded csms", csms.run))
            await csms.wait_started()
            if auth_key is not None:
                await csms.register_charge_point(config.station.id, auth_key)

        station = Station(config, kiosk, link, sender, store, devices, csms, supervisor, clock)
        control = ControlServer(config.control.socket, station)
        front = [tg.create_task(coro) for coro in devices.background]
        front += [
            # The kiosk loop is the one task whose failure stops the daemon.
            tg.create_task(kiosk.run()),
            tg.create_task(supervisor.keep("rfid reader", lambda: devices.rfid.run(kiosk.publish))),
            tg.create_task(
                supervisor.keep("telemetry", lambda: devices.telemetry.run(kiosk.publish))
            ),
            tg.create_task(supervisor.keep("control api", control.run)),
        ]
        services = [
            tg.create_task(supervisor.keep("csms link", link.run)),
            tg.create_task(supervisor.keep("outbox sender", sender.run)),
        ]
        watchdog = tg.create_task(_keep_systemd_happy(kiosk, clock))
        if not is_synced(clock):
            log.warning("the wall clock is not set (%s): timestamps will be wrong", clock.utc_now())
        systemd.notify(f"READY=1\nSTATUS=serving as {config.station.id}")
        log.info("edgepoint %s running as %s", __version__, config.station.id)

        stopping = asyncio.create_task(stop.wait())
        await stopping
        log.info("stopping")
        systemd.notify("STOPPING=1")
        await _cancel(front)
        await kiosk.shutdown(StopReason.REBOOT)
        await _flush(store, link)
        await link.close()
        await _cancel([*services, watchdog])
        if csms_task is not None:
            await _cancel([csms_task])
    return Exit.STOPPED


def _sample_interval(seconds: int) -> float:
    """MeterValueSampleInterval 0 means no sampled MeterValues at all (OCPP 1.6 §9.1)."""
    return float(seconds) if seconds > 0 else math.inf


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
        if (await store.outbox_summary()).depth == 0:
            return
        await asyncio.sleep(0.05)


async def _keep_systemd_happy(kiosk: Kiosk, clock: Clock) -> None:
    """Ping systemd's watchdog only while the kiosk loop makes progress (invariant 4):
    a loop stuck on a dying SD card gets the daemon restarted, relay opened by the unit."""
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return
    while True:
        if clock.monotonic() - kiosk.last_progress < max(2 * interval, 2 * KIOSK_TICK_S):
            systemd.notify("WATCHDOG=1")
        else:
            log.error("the kiosk loop has made no progress: not feeding the watchdog")
        await asyncio.sleep(interval)
