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

from edgepoint import __version__, systemd, timesync
from edgepoint.chargepoint.authorizer import Authorizer
from edgepoint.chargepoint.commands import CommandHandler
from edgepoint.chargepoint.delivery import RetryPolicy
from edgepoint.chargepoint.diagnostics import LogFile
from edgepoint.chargepoint.link import CsmsLink, LinkState
from edgepoint.chargepoint.maintenance import LOG_FOLDER, Maintenance, file_values
from edgepoint.chargepoint.outbox import OutboxSender
from edgepoint.chargepoint.settings import SettingChange, Settings
from edgepoint.chargepoint.smart_charging import Outlet, SmartCharging
from edgepoint.charging.connector import Connector
from edgepoint.charging.events import StopReason
from edgepoint.charging.schedule import Supply
from edgepoint.clock import Clock, SystemClock, clock_status, is_synced, iso_utc
from edgepoint.cloud.service import Cloud, build_cloud
from edgepoint.config import Config
from edgepoint.control.api import Access, Code, ControlApi
from edgepoint.control.csms_proxy import register_csms_proxy
from edgepoint.control.logfeed import LogFeed
from edgepoint.control.server import ControlServer, Limits
from edgepoint.control.station import register_station, register_technician
from edgepoint.csms.api import COMMAND_FLAGS as CSMS_COMMAND_FLAGS
from edgepoint.csms.db import CsmsStore, open_csms_database
from edgepoint.csms.process import CsmsProcess
from edgepoint.drivers.panel import Panel
from edgepoint.drivers.rfid import (
    DeferredLink,
    Interface,
    IrqLine,
    Pn532Emulator,
    Pn532Link,
    Pn532Reader,
    emulated_link,
    hardware_link,
)
from edgepoint.drivers.telemetry import (
    Esp32Emulator,
    MeterChannel,
    SerialTelemetryReader,
    open_pty,
)
from edgepoint.drivers.telemetry.commands import LIMIT_MAX_A
from edgepoint.errors import ControlError, DeviceError
from edgepoint.keys import load_or_create_key
from edgepoint.kiosk import (
    KIOSK_TICK_S,
    ConnectorSetup,
    Kiosk,
    KioskOptions,
    new_session_id,
    sessions_to_resume,
)
from edgepoint.redact import mask_id_tag
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.care import StorageCare, care_status, check_databases, check_writable
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.charging_profiles import ChargingProfileStore
from edgepoint.storage.reservations import ReservationStore
from edgepoint.storage.settings import SettingsRepository
from edgepoint.supervisor import Supervisor

log = logging.getLogger(__name__)

# How old the CSMS process's state in `status` may be before it is asked again (beside
# the caller, never in its way), and how long that question may take.
CSMS_STATUS_FRESH_S = 0.5
CSMS_STATUS_STALE_S = 5.0
CSMS_STATUS_WAIT_S = 1.0
# Give what shutdown queued (StopTransaction) this long to reach an online CSMS.
SHUTDOWN_FLUSH_S = 1.5
# At start, how long the CSMS link may take to boot before READY=1 says "offline".
READY_BOOT_WAIT_S = 10.0
# Where the simulated ESP32 keeps its energy registers between runs of the daemon.
SIMULATED_NVS = "simulated-esp32.nvs"
# Signals that stop the daemon cleanly (relays opened, sessions ended).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    esp32: Esp32Emulator | None = None  # the simulated firmware, for fault injection
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def build_devices(config: Config, panel: Panel) -> Devices:
    """Real devices, or their twins at the lowest boundary (emulated buses, pty)."""
    hw, rfid = config.hardware, config.rfid
    interface = Interface(rfid.interface)
    if not hw.simulate:
        link: Pn532Link = DeferredLink(
            interface,
            functools.partial(
                hardware_link,
                interface,
                spi_cs_pin=rfid.spi_cs_pin,
                uart_port=rfid.uart_port,
                uart_baudrate=rfid.uart_baudrate,
                reset_pin=rfid.reset_pin,
                req_pin=rfid.req_pin,
            ),
        )
        irq = None
        if rfid.irq_pin is not None:
            try:
                irq = IrqLine(rfid.irq_pin)
            except DeviceError as err:
                # Slower, but every card is still read: the status is polled instead.
                log.error("%s; polling the PN532 instead", err)
        return Devices(
            rfid=_reader(link, irq, config),
            telemetry=SerialTelemetryReader(
                hw.serial_port, hw.serial_baudrate, watchdog_timeout_s=hw.esp32_watchdog_s
            ),
            cleanup=[irq.close] if irq is not None else [],
        )
    sim = config.simulation
    chip = Pn532Emulator()
    irq = IrqLine.emulated(chip, rfid.irq_pin) if rfid.irq_pin is not None else None
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
        # As the firmware: its relays stay open until the kiosk's first ping.
        watchdog=True,
    )
    return Devices(
        rfid=_reader(emulated_link(chip, interface), irq, config),
        telemetry=SerialTelemetryReader(
            slave_path, hw.serial_baudrate, watchdog_timeout_s=hw.esp32_watchdog_s
        ),
        background=[esp32.run()],
        card_field=chip,
        esp32=esp32,
        cleanup=[lambda: os.close(master_fd), *([irq.close] if irq is not None else [])],
    )


def _reader(link: Pn532Link, irq: IrqLine | None, config: Config) -> Pn532Reader:
    return Pn532Reader(
        link,
        irq=irq,
        poll_interval_s=config.rfid.poll_interval_s,
        removal_s=config.rfid.removal_s,
        health_check_s=config.rfid.health_check_s,
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
        csms: CsmsProcess | None,
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
        # The CSMS process's state as it last answered, when, and the refresh under way.
        self._csms_state: dict[str, Any] | None = None
        self._csms_state_at = 0.0
        self._csms_refresh: asyncio.Task[None] | None = None
        self.cloud: Cloud | None = None  # Firebase state, fleet cards, ledger (cloud/)
        self.care: StorageCare | None = None  # retention, backups, free space (storage/care)
        self.smart_charging: SmartCharging | None = None  # profiles and current limits

    async def _embedded_csms(self) -> dict[str, Any] | None:
        """The CSMS process as `status` shows it, without waiting for a busy one.

        `status` is read on every change the watchers see (a tap's relay among them), so
        it must not wait on another process: it shows the CSMS's last answer and asks
        afresh beside it when that answer is older than CSMS_STATUS_FRESH_S. Only a call
        after a quiet spell (no answer younger than CSMS_STATUS_STALE_S: the first, a
        lone `edgepoint status`) waits for a fresh one, at most CSMS_STATUS_WAIT_S.
        """
        if self._csms is None:
            return None
        age = self._clock.monotonic() - self._csms_state_at
        if self._csms_state is None or age >= CSMS_STATUS_STALE_S:
            await self._refresh_csms_state()  # nobody asked for a while: a fresh answer
        elif age >= CSMS_STATUS_FRESH_S and (
            self._csms_refresh is None or self._csms_refresh.done()
        ):
            self._csms_refresh = asyncio.create_task(self._refresh_csms_state())
        assert self._csms_state is not None
        return self._csms_state

    async def _refresh_csms_state(self) -> None:
        assert self._csms is not None
        state: dict[str, Any] = {"pid": self._csms.pid, "restarts": self._csms.exits}
        try:
            async with asyncio.timeout(CSMS_STATUS_WAIT_S):
                answer: dict[str, Any] = await self._csms.request("csms.status")
        except TimeoutError:
            # Busy (it yields the CPU to the kiosk), not down: what it said last still
            # holds, and `answering` says this is not fresh.
            last = self._csms_state if (self._csms_state or {}).get("pid") == state["pid"] else {}
            self._csms_state = (
                {"listening": False, "connected": []}
                | (last or {})
                | state
                | {"answering": False, "error": f"no answer within {CSMS_STATUS_WAIT_S:g} s"}
            )
        except ControlError as err:
            self._csms_state = state | {
                "listening": False,
                "connected": [],
                "answering": False,
                "error": str(err) or "no answer",
            }
        else:
            self._csms_state = state | answer | {"answering": True}
        self._csms_state_at = self._clock.monotonic()

    async def status(self) -> dict[str, Any]:
        k = self._kiosk.snapshot()
        smart = self.smart_charging
        limits = {} if smart is None else {v.connector_id: _plain(v) for v in smart.snapshot()}
        connectors = [
            {
                "id": c.id,
                "status": c.status,
                "phase": c.phase,
                "operative": c.operative,
                "relay_closed": c.relay_closed,
                "telemetry_lost": c.telemetry_lost,
                # Active interlocks, most severe first, and the errorCode they report.
                "faults": list(c.faults),
                "error_code": c.error_code,
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
                # Smart charging: the profiles' limit, what the ESP32 was told and acked.
                "charging_limit": limits.get(c.id),
                "reservation": None
                if c.reservation is None
                else {
                    "reservation_id": c.reservation.reservation_id,
                    "connector_id": c.reservation.connector_id,  # as reserved (0: any)
                    "id_tag": mask_id_tag(c.reservation.id_tag),
                    "expiry": iso_utc(c.reservation.expiry),
                },
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
            # Where the time comes from: system (NTP), rtc, csms, or provisional.
            "clock": clock_status(self._clock),
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
                "embedded_csms": await self._embedded_csms(),
            },
            "services": [_plain(s) for s in self._supervisor.snapshot()],
            "outbox": {
                **_plain(outbox),
                "delivered": sender.delivered,
                "commit_window_ms_p50": sender.commit_window_ms_p50,
                "commit_window_ms_max": sender.commit_window_ms_max,
            },
            "alarms": _alarms(sender.alarms, outbox.parked)
            + ([] if self.care is None else list(self.care.faults)),
            # Free space, retention, backups; a damaged database found at start.
            "storage": care_status(self.care),
            "events_rejected": k.events_rejected,
            # Charge-point-wide interlocks (reader, storage, stalled loop); LEDs; writes
            # kept in memory while the database refuses them.
            "faults": list(k.faults),
            "indication": k.indication,
            "unsaved_writes": k.unsaved_writes,
            "cloud": None if self.cloud is None else await self.cloud.status(),
        }

    async def tap(self, uid: str) -> None:
        chip = self._devices.card_field
        if chip is None:
            raise ControlError(
                "tap needs simulated hardware (hardware.simulate = true)", Code.UNAVAILABLE
            )
        try:
            raw = bytes.fromhex(uid)
        except ValueError as err:
            raise ControlError(f"card UID must be hex, got {uid!r}", Code.BAD_REQUEST) from err
        if len(raw) not in (4, 7, 10):
            raise ControlError(
                f"card UID must be 4, 7 or 10 bytes, got {len(raw)}", Code.BAD_REQUEST
            )
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
    """Run the daemon until SIGINT/SIGTERM/SIGHUP or an OCPP Reset, then stop cleanly."""
    # The relays are set up (open) before anything else is read: a GPIO line keeps its
    # level through a crash, and nothing below (key file, database) may run with a
    # relay closed. From here on every way out of this function opens them (finally).
    panel = (
        Panel.simulated(config.hardware, config.connectors)
        if config.hardware.simulate
        else Panel(config.hardware, config.connectors)
    )
    # Provisional time until NTP or the CSMS says what time it is (clock.py, timesync.py).
    system_clock, clock_state = timesync.start_clock(
        config.storage.dir / timesync.STATE_FILE, trust_rtc=config.clock.trust_rtc
    )
    clock = clock or system_clock
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ending: list[Exit] = []

    def request_exit(kind: Exit) -> None:
        ending.append(kind)
        stop.set()

    # SIGHUP too: its default (a closed ssh session) would end the process without
    # opening the relays.
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, request_exit, Exit.STOPPED)
    # Recent log lines for the technician's TUI (`log.recent`, the `log` stream).
    log_feed = LogFeed.attach(logging.getLogger())
    log_file: LogFile | None = None  # the daemon's own log, for GetDiagnostics and GetLog
    store: ChargePointStore | None = None
    devices: Devices | None = None
    try:
        # A path the daemon cannot write is a configuration error naming its key (not a
        # traceback); a damaged database is set aside before anything opens it.
        check_writable(config)
        log_file = LogFile.attach(
            config.storage.dir / LOG_FOLDER, logging.getLevelName(config.log_level)
        )
        integrity = await asyncio.to_thread(check_databases, config)
        auth_key = load_or_create_key(config.chargepoint.auth_key_file, create=config.csms.enabled)
        store = await ChargePointStore.open(config.storage.chargepoint_db)
        care = StorageCare(
            config, store.db, clock, tuple(f for check in integrity if (f := check.fault()))
        )
        keeper = (
            await timesync.TimeKeeper.open(
                system_clock, store, config.storage.dir / timesync.STATE_FILE, clock_state
            )
            if clock is system_clock
            else None
        )
        settings = await SettingsRepository(store.db).load_settings(
            file_values(config, auth_key), number_of_connectors=len(config.connectors)
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
            log_feed,
            care,
            keeper,
        )
        return ending[0] if ending else exit_kind
    finally:
        log_feed.detach()
        if log_file is not None:
            log_file.detach()
        panel.close()
        if store is not None:
            await store.close()
        if devices is not None:
            for cleanup in devices.cleanup:
                cleanup()
        for signum in _STOP_SIGNALS:
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
    log_feed: LogFeed,
    care: StorageCare,
    keeper: timesync.TimeKeeper | None,
) -> Exit:
    supervisor = Supervisor(clock)
    # Firmware Management and the security extension; the link connects by its policy.
    maintenance = await Maintenance.open(config, store, settings, auth_key, clock)
    link = CsmsLink(
        config.station,
        config.chargepoint,
        auth_key,
        settings,
        clock,
        # Never the embedded CSMS's time: that is this Pi's own unsynchronised clock.
        adopt_time=maintenance.noting_time(
            keeper.adopt if keeper is not None and not timesync.is_own_csms(config) else None
        ),
        policy=maintenance.policy,
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
    # Smart charging: the CSMS's profiles make each connector's current limit (the ESP32's).
    smart = SmartCharging(
        [Outlet(c.id, c.meter_channel, Supply(c.voltage_v, c.phases)) for c in config.connectors],
        ChargingProfileStore(store.db),
        settings,
        clock,
        devices.telemetry,
        lambda event, cid: kiosk.publish(event, cid),
        rated_a=min(config.safety.limits.max_current_a, LIMIT_MAX_A),
    )
    await smart.load()
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
        limits=config.safety.limits,
        loop_stall_s=config.safety.loop_stall_s,
        # The ESP32 link: watchdog pings from the loop, relay states and their echo.
        esp32=devices.telemetry,
        reader=devices.rfid,  # a lost reader faults every connector
        sessions=smart,  # smart charging follows the sessions
    )
    kiosk.restore_availability(availability)
    kiosk.restore_reservations(await ReservationStore(store.db).reservations())
    # The idle LEDs tell a driver whether unknown cards can be checked.
    kiosk.csms_online(link.online)
    link.watch(lambda: kiosk.csms_online(link.online))
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
        maintenance.note_reset(hard)
        request_exit(Exit.HARD_RESET if hard else Exit.SOFT_RESET)

    commands = CommandHandler(
        kiosk, link, settings, SettingsRepository(store.db), lists, clock, restart, sender.wake.set
    )
    commands.extend(smart.handlers())
    commands.remote_profile_problem = smart.remote_profile_problem
    maintenance.attach(link, commands, kiosk, sender.wake.set, restart)
    await maintenance.started()
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
        csms: CsmsProcess | None = None
        csms_task = None
        csms_cards: CsmsStore | None = None
        if config.csms.enabled:
            # Our own charge point is registered before the CSMS process starts serving.
            csms_cards = await open_csms_database(config.storage.csms_db, clock)
            if auth_key is not None:
                await csms_cards.charge_points.set_auth_key(config.station.id, auth_key)
            csms = CsmsProcess(config.path, config.csms.control_socket)
            csms_task = tg.create_task(supervisor.keep("embedded csms", csms.run))
            if not await csms.wait_ready():
                log.error("the embedded CSMS did not start in time; the kiosk goes on")

        station = Station(config, kiosk, link, sender, store, devices, csms, supervisor, clock)
        station.care = care
        station.smart_charging = smart
        # Fleet sync: supervised services fed from SQLite; none of them can hold up a tap.
        cloud = station.cloud = build_cloud(
            config,
            clock,
            store,
            station.status,
            station.watch,
            lambda: None if csms_cards is None else csms_cards.cards,
        )
        api = ControlApi()
        register_station(api, station)
        register_technician(
            api,
            sessions=store,
            local_list=lists,
            cards=None if csms_cards is None else csms_cards.cards,
            log_feed=log_feed,
        )
        if csms is not None:
            register_csms_proxy(api, csms, CSMS_COMMAND_FLAGS)
        control = ControlServer(
            config.control.socket,
            api,
            Access.for_group(config.control.group),
            Limits(max_clients=config.control.max_clients),
        )
        front = [tg.create_task(coro) for coro in devices.background]
        front += [
            # The kiosk loop is the one task whose failure stops the daemon.
            tg.create_task(kiosk.run()),
            tg.create_task(supervisor.keep("rfid reader", lambda: devices.rfid.run(kiosk.publish))),
            tg.create_task(
                supervisor.keep("telemetry", lambda: devices.telemetry.run(kiosk.publish))
            ),
        ]
        services = [
            # Stops after the kiosk: an answer on its way (a reset's Accepted) still goes out.
            tg.create_task(supervisor.keep("control api", control.run)),
            tg.create_task(supervisor.keep("storage care", care.run)),
            *([tg.create_task(supervisor.keep("clock", keeper.run))] if keeper else []),
            tg.create_task(supervisor.keep("csms link", link.run)),
            tg.create_task(supervisor.keep("outbox sender", sender.run)),
            tg.create_task(supervisor.keep("smart charging", smart.run)),
            *(tg.create_task(supervisor.keep(name, run)) for name, run in cloud.services),
            *(tg.create_task(supervisor.keep(name, run)) for name, run in maintenance.services),
        ]
        watchdog = tg.create_task(_keep_systemd_happy(kiosk, clock))
        if not is_synced(clock):
            log.warning("the wall clock is not set (%s): timestamps will be wrong", clock.utc_now())
        # READY only once it serves: CSMS process listening (above), control socket
        # answering, the CSMS link booted or offline mode decided.
        mode = await _until_serving(config, link, stop)
        systemd.notify(f"READY=1\nSTATUS={config.station.id}: serving ({mode})")
        reporter = systemd.StatusReporter(lambda: _status_line(station))
        link.watch(reporter.poke)
        services.append(tg.create_task(supervisor.keep("systemd status", reporter.run)))
        log.info("edgepoint %s running as %s", __version__, config.station.id)

        stopping = asyncio.create_task(stop.wait())
        await stopping
        log.info("stopping")
        systemd.notify("STOPPING=1")
        await _cancel(front)
        await kiosk.shutdown(StopReason.REBOOT)
        await maintenance.stopping()
        await _flush(store, link)
        await link.close()
        await _cancel([*services, watchdog])
        cloud.close()
        if csms_task is not None:
            await _cancel([csms_task])
        if csms_cards is not None:
            await csms_cards.close()
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


async def _until_serving(config: Config, link: CsmsLink, stop: asyncio.Event) -> str:
    """Wait until the daemon serves; say how: online, or offline after READY_BOOT_WAIT_S."""
    if not await systemd.wait_for_socket(config.control.socket, READY_BOOT_WAIT_S):
        log.error("the control socket %s does not answer", config.control.socket)
    deadline = time.monotonic() + READY_BOOT_WAIT_S
    while not stop.is_set() and time.monotonic() < deadline:
        if link.state in (LinkState.ONLINE, LinkState.PENDING, LinkState.REJECTED):
            return f"csms {link.state}"
        await asyncio.sleep(0.05)
    return f"offline: csms {link.state}, charging on local rules"


async def _status_line(station: Station) -> str:
    return systemd.status_line(await station.status())


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
