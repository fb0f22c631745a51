"""`edgepoint doctor`: checks reader, ESP32 link, GPIO, groups, clock, storage, and says how to fix.

On a Pi it talks to the real devices; with `hardware.simulate` it runs the same
checks against the emulators (the real drivers on emulated buses and a pty), so
the checks themselves are tested. While the daemon runs it owns the devices: the
device checks then read its live status instead of opening them a second time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import importlib.util
import os
import pwd
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from edgepoint.clock import EARLIEST_PLAUSIBLE, kernel_clock_synced
from edgepoint.config import Config
from edgepoint.errors import ControlError, DeviceError

T = TypeVar("T")

# How long the serial check listens for frames and acks, and the chip check waits.
DEVICE_TIMEOUT_S = 3.0
LOW_SPACE_MB = 200
NO_SPACE_MB = 50

_UDEV_RULES = "hardware/udev/99-edgepoint.rules"


class Level(StrEnum):
    """How a check came out."""

    OK = "ok"
    WARN = "warn"  # works, but worth a look
    FAIL = "FAIL"  # broken: the kiosk cannot work like this
    SKIP = "skip"  # does not apply here


@dataclass(frozen=True, slots=True)
class Finding:
    """One result: which check, how it came out, what was seen, how to fix it."""

    check: str
    level: Level
    message: str
    fix: str | None = None


def run_doctor(config: Config, *, timeout_s: float = DEVICE_TIMEOUT_S) -> list[Finding]:
    """Run every check for this configuration and return the findings in order."""
    status = _daemon_status(config)
    findings: list[Finding] = []
    if status is not None:
        findings.append(
            Finding("daemon", Level.OK, "running: the device checks read its live status")
        )
        findings += _from_status(status)
    else:
        findings += check_pn532(config, timeout_s=timeout_s)
        findings += check_serial(config, timeout_s=timeout_s)
    findings += check_gpio(config)
    findings += check_groups(config)
    findings.append(check_clock(trust_rtc=config.clock.trust_rtc))
    findings += check_storage(config.storage.dir)
    return findings


def format_report(config: Config, findings: Sequence[Finding]) -> str:
    """The findings as a technician reads them, with a closing verdict."""
    kind = "simulated hardware" if config.hardware.simulate else "real hardware"
    lines = [f"edgepoint doctor: {config.path} ({kind})"]
    for finding in findings:
        lines.append(f"  {finding.level.value:<5} {finding.check:<8} {finding.message}")
        if finding.fix and finding.level in (Level.FAIL, Level.WARN):
            lines.append(f"  {'':<5} {'':<8} fix: {finding.fix}")
    failures = sum(finding.level is Level.FAIL for finding in findings)
    lines.append(
        f"{failures} problem(s) found." if failures else "No problem found: ready to serve."
    )
    return "\n".join(lines)


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when anything failed, else 0."""
    return 1 if any(finding.level is Level.FAIL for finding in findings) else 0


# -- the daemon -------------------------------------------------------------------------


def _daemon_status(config: Config) -> dict[str, Any] | None:
    if not config.control.socket.exists():
        return None
    from edgepoint.control.client import request

    try:
        status: dict[str, Any] = asyncio.run(
            request(config.control.socket, "status", answer_within_s=3.0)
        )
    except (ControlError, OSError):
        return None  # a stale socket file: nobody listens
    return status


def _from_status(status: dict[str, Any]) -> list[Finding]:
    findings = []
    rfid = status.get("rfid") or {}
    if rfid.get("fault"):
        findings.append(
            Finding(
                "pn532",
                Level.FAIL,
                f"the daemon reports the reader out of order: {rfid['fault']}",
                "stop the daemon (sudo systemctl stop edgepoint) and run the doctor again"
                " for the details",
            )
        )
    elif rfid.get("connected"):
        findings.append(
            Finding(
                "pn532",
                Level.OK,
                f"PN532 firmware {rfid.get('firmware')} over {rfid.get('interface')},"
                f" {rfid.get('published', 0)} tap(s) read",
            )
        )
    else:
        findings.append(Finding("pn532", Level.WARN, "the daemon is still connecting the reader"))
    reader = (status.get("telemetry") or {}).get("reader") or {}
    frames = reader.get("frames") or {}
    if reader.get("connected") and frames.get("frames_ok"):
        findings.append(
            Finding(
                "serial",
                Level.OK,
                f"ESP32 link up: {frames['frames_ok']} frames, {frames.get('bad_checksum', 0)}"
                f" bad checksum(s), {frames.get('seq_gaps', 0)} gap(s),"
                f" {frames.get('seq_resets', 0)} ESP32 reboot(s)",
            )
        )
    else:
        findings.append(
            Finding(
                "serial",
                Level.FAIL,
                f"the daemon hears no ESP32 ({reader.get('last_error') or 'no frames yet'})",
                "stop the daemon (sudo systemctl stop edgepoint) and run the doctor again"
                " for the details",
            )
        )
    return findings


# -- PN532 -------------------------------------------------------------------------------


def check_pn532(config: Config, *, timeout_s: float = DEVICE_TIMEOUT_S) -> list[Finding]:
    """Build the configured link (real or emulated) and ask the chip for its firmware."""
    from edgepoint.drivers.rfid import (
        Interface,
        IrqLine,
        Pn532Emulator,
        emulated_link,
        hardware_link,
    )

    rfid = config.rfid
    interface = Interface(rfid.interface)
    fix = _PN532_FIXES[interface.value]
    if config.hardware.simulate:
        chip = Pn532Emulator()
        link = emulated_link(chip, interface)
        irq = IrqLine.emulated(chip, rfid.irq_pin) if rfid.irq_pin is not None else None
        where = f"{link.describe()} (emulated)"
    else:
        node = {"i2c": "/dev/i2c-1", "spi": "/dev/spidev0.0", "uart": rfid.uart_port}
        device = node[interface.value]
        if not os.path.exists(device):
            return [Finding("pn532", Level.FAIL, f"{device} does not exist", fix)]
        try:
            link = hardware_link(
                interface,
                spi_cs_pin=rfid.spi_cs_pin,
                uart_port=rfid.uart_port,
                uart_baudrate=rfid.uart_baudrate,
                reset_pin=rfid.reset_pin,
                req_pin=rfid.req_pin,
            )
            irq = IrqLine(rfid.irq_pin) if rfid.irq_pin is not None else None
        except DeviceError as err:
            return [Finding("pn532", Level.FAIL, str(err), fix)]
        where = link.describe()
    try:
        return probe_pn532(link, irq, where=where, fix=fix, timeout_s=timeout_s)
    finally:
        if irq is not None:
            irq.close()


def probe_pn532(
    link: Any, irq: Any, *, where: str, fix: str, timeout_s: float = DEVICE_TIMEOUT_S
) -> list[Finding]:
    """Ask the chip on `link` for its firmware version (in a thread, bounded by `timeout_s`)."""
    from edgepoint.drivers.rfid.reader import PN532_IC

    def ask() -> tuple[int, ...]:
        return tuple(link.open_driver().firmware_version)

    try:
        version = _bounded(ask, timeout_s)
    except TimeoutError:
        return [Finding("pn532", Level.FAIL, f"no answer over {where} in {timeout_s:g} s", fix)]
    except Exception as err:  # whatever the driver raises, the verdict is the same
        return [Finding("pn532", Level.FAIL, f"no PN532 over {where}: {err}", fix)]
    if len(version) != 4 or version[0] != PN532_IC:
        return [
            Finding(
                "pn532",
                Level.FAIL,
                f"the chip over {where} is not a PN532 (firmware answer {bytes(version).hex(' ')})",
                "fit a genuine PN532 breakout; PN531 and clones answer differently",
            )
        ]
    findings = [
        Finding("pn532", Level.OK, f"PN532 firmware {version[1]}.{version[2]} over {where}")
    ]
    if irq is None:
        findings.append(
            Finding(
                "pn532",
                Level.OK,
                "IRQ not wired: the reader polls the chip's status (rfid.irq_pin to use it)",
            )
        )
    elif irq.asserted():
        findings.append(
            Finding(
                "pn532",
                Level.FAIL,
                f"IRQ on GPIO{irq.pin} reads active with nothing pending",
                "check the IRQ wire (PN532 IRQ -> the GPIO in rfid.irq_pin) or unset irq_pin",
            )
        )
    else:
        findings.append(Finding("pn532", Level.OK, f"IRQ on GPIO{irq.pin} idle, as it should"))
    return findings


_PN532_FIXES = {
    "i2c": "enable I2C (sudo raspi-config nonint do_i2c 0), wire SDA->GPIO2 (pin 3),"
    " SCL->GPIO3 (pin 5), VCC->3V3, GND; set the breakout to I2C (SEL0 on, SEL1 off);"
    " `i2cdetect -y 1` must show 24 (hardware/WIRING.md)",
    "spi": "enable SPI (sudo raspi-config nonint do_spi 0), wire MOSI/MISO/SCK to"
    " GPIO10/9/11 and SS to rfid.spi_cs_pin; set the breakout to SPI (SEL0 off, SEL1 on)"
    " (hardware/WIRING.md)",
    "uart": "enable the UART and turn its login console off (sudo raspi-config nonint"
    " do_serial_hw 0; do_serial_cons 1), cross TX/RX, set the breakout to HSU (both"
    " switches off) (hardware/WIRING.md)",
}


def _bounded(fn: Callable[[], T], timeout_s: float) -> T:
    # A daemon thread: a chip that stretches the clock for ever must not keep the
    # doctor from exiting.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(fn).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as err:
        raise TimeoutError from err
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# -- serial ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SerialProbe:
    """What listening to the ESP32 for a while showed."""

    stats: Any  # telemetry ReaderStats
    samples: int
    firmware: str | None
    echoes: dict[int, bool | None]  # channel -> contact sensed, from the ack
    refused: dict[int, str]  # channel -> why the command failed


def check_serial(config: Config, *, timeout_s: float = DEVICE_TIMEOUT_S) -> list[Finding]:
    """Open the ESP32's port (or the emulator's pty), read frames, send a command, judge."""
    hw = config.hardware
    channels = sorted({c.meter_channel for c in config.connectors})
    if hw.simulate:
        return asyncio.run(_simulated_serial(config, channels, timeout_s))
    path = hw.serial_port
    if not os.path.exists(path):
        present = sorted(
            str(p) for pattern in ("ttyUSB*", "ttyACM*") for p in Path("/dev").glob(pattern)
        )
        seen = f"; serial devices present: {', '.join(present)}" if present else ""
        return [
            Finding(
                "serial",
                Level.FAIL,
                f"{path} does not exist{seen}",
                f"plug the ESP32 in; install the udev rule (sudo cp {_UDEV_RULES}"
                " /etc/udev/rules.d/ && sudo udevadm control --reload && sudo udevadm"
                " trigger) or set hardware.serial_port",
            )
        ]
    if not os.access(path, os.R_OK | os.W_OK):
        return [
            Finding(
                "serial",
                Level.FAIL,
                f"no permission to open {path}",
                "add the daemon's user to the dialout group (sudo usermod -aG dialout USER)",
            )
        ]
    probe = asyncio.run(probe_serial(path, hw.serial_baudrate, channels, timeout_s))
    return judge_serial(path, probe, timeout_s)


async def _simulated_serial(
    config: Config, channels: Sequence[int], timeout_s: float
) -> list[Finding]:
    from edgepoint.drivers.telemetry import Esp32Emulator, MeterChannel, open_pty

    master, path = open_pty()
    emulator = Esp32Emulator(
        master,
        channels=[MeterChannel(n, lambda: False) for n in channels],
        interval_s=min(config.simulation.telemetry_interval_s, 0.5),
        watchdog=True,
    )
    task = asyncio.create_task(emulator.run())
    try:
        probe = await probe_serial(
            path, config.hardware.serial_baudrate, channels, timeout_s, emulated=True
        )
    finally:
        task.cancel()
        await asyncio.wait({task})
        emulator.detach()
        os.close(master)
    return judge_serial(f"{path} (emulated ESP32)", probe, timeout_s)


async def probe_serial(
    path: str,
    baudrate: int,
    channels: Sequence[int],
    timeout_s: float = DEVICE_TIMEOUT_S,
    *,
    emulated: bool = False,
) -> SerialProbe:
    """Listen for frames, then report every channel's relay open (as it is with the daemon
    stopped) and collect the acks: the command path works and the echo must read open."""
    from edgepoint.drivers.telemetry import CommandFailed, RelayState, SerialTelemetryReader

    samples: list[Any] = []
    enough = asyncio.Event()

    def take(sample: Any) -> None:
        samples.append(sample)
        # Two frames: the first after opening may be cut; two in a row show the link.
        if len(samples) >= 2:
            enough.set()

    reader = SerialTelemetryReader(path, baudrate, backoff=lambda attempt: 0.1)
    task = asyncio.create_task(reader.run(take))
    echoes: dict[int, bool | None] = {}
    refused: dict[int, str] = {}
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await enough.wait()
        if reader.connected and samples:
            for channel in channels:
                try:
                    ack = await reader.send_command(RelayState(channel, closed=False))
                except CommandFailed as err:
                    refused[channel] = err.reason
                    continue
                echo = ack.field("rly")
                echoes[channel] = None if echo is None else echo == "1"
    finally:
        task.cancel()
        await asyncio.wait({task})
    firmware = next((v for s in samples for k, v in s.extra if k == "fw"), None)
    return SerialProbe(reader.stats, len(samples), firmware, echoes, refused)


def judge_serial(where: str, probe: SerialProbe, timeout_s: float) -> list[Finding]:
    """Turn what the probe saw into findings with fixes."""
    stats = probe.stats
    frames = stats.frames
    if not stats.open_attempts or stats.open_failures == stats.open_attempts:
        error = stats.last_error or "cannot open"
        busy = "lock" in error or "busy" in error.lower()
        return [
            Finding(
                "serial",
                Level.FAIL,
                error,
                "another program holds the port: stop it (the daemon: sudo systemctl stop"
                " edgepoint; ModemManager: sudo systemctl disable --now ModemManager)"
                if busy
                else "check the cable and the port (hardware.serial_port)",
            )
        ]
    if not probe.samples:
        if frames.garbage or frames.bad_version or frames.malformed:
            return [
                Finding(
                    "serial",
                    Level.FAIL,
                    f"{where}: bytes but no valid frame in {timeout_s:g} s"
                    f" ({frames.garbage} garbage, {frames.bad_version} newer version,"
                    f" {frames.malformed} malformed)",
                    "hardware.serial_baudrate must match the firmware (115200), and the"
                    " firmware must be edgepoint's (flash hardware/firmware)",
                )
            ]
        return [
            Finding(
                "serial",
                Level.FAIL,
                f"{where}: no frame in {timeout_s:g} s",
                "flash the firmware (hardware/firmware: pio run -t upload) and reset the"
                " ESP32; check that it is powered",
            )
        ]
    findings = [
        Finding(
            "serial",
            Level.OK,
            f"{where}: {probe.samples} frame(s), firmware {probe.firmware or '(not reported)'},"
            f" {frames.bad_checksum} bad checksum(s), {frames.seq_gaps} gap(s)",
        )
    ]
    if frames.bad_checksum > 1:
        findings.append(
            Finding(
                "serial",
                Level.WARN,
                f"{frames.bad_checksum} frames with a bad checksum",
                "a noisy line: use a short, shielded USB cable away from the contactor",
            )
        )
    for channel, reason in sorted(probe.refused.items()):
        findings.append(
            Finding(
                "serial",
                Level.FAIL,
                f"channel {channel}: the ESP32 did not take a command ({reason})",
                "update the firmware (hardware/firmware) so that it answers commands",
            )
        )
    for channel, echo in sorted(probe.echoes.items()):
        if echo:
            findings.append(
                Finding(
                    "serial",
                    Level.FAIL,
                    f"channel {channel}: the contact reads closed while every relay should be open",
                    "check for a welded contactor and the sense wiring (hardware/WIRING.md)",
                )
            )
        else:
            state = "open" if echo is False else "not reported"
            findings.append(
                Finding("serial", Level.OK, f"channel {channel}: command acked, contact {state}")
            )
    return findings


# -- GPIO and groups ----------------------------------------------------------------------


def check_gpio(config: Config) -> list[Finding]:
    """Check that this process can drive GPIO; no pin is claimed (the daemon may hold them)."""
    if config.hardware.simulate:
        from gpiozero import DigitalInputDevice, OutputDevice
        from gpiozero.pins.mock import MockFactory

        factory = MockFactory()
        pins = [c.relay_pin for c in config.connectors]
        devices = [OutputDevice(pin, pin_factory=factory) for pin in pins]
        if config.rfid.irq_pin is not None:
            devices.append(DigitalInputDevice(config.rfid.irq_pin, pin_factory=factory))
        for device in devices:
            device.close()
        return [Finding("gpio", Level.OK, f"mock pins for GPIO {', '.join(map(str, pins))}")]
    chips = sorted(Path("/dev").glob("gpiochip*"))
    if not chips:
        return [
            Finding(
                "gpio",
                Level.FAIL,
                "no /dev/gpiochip*: not a Raspberry Pi, or its GPIO driver is missing",
                "run on the Pi (or set hardware.simulate = true)",
            )
        ]
    findings = []
    if not os.access(chips[0], os.R_OK | os.W_OK):
        findings.append(
            Finding(
                "gpio",
                Level.FAIL,
                f"no permission on {chips[0]}",
                "add the daemon's user to the gpio group (sudo usermod -aG gpio USER)",
            )
        )
    libraries = [name for name in ("lgpio", "RPi.GPIO") if _importable(name)]
    if not libraries:
        findings.append(
            Finding(
                "gpio",
                Level.FAIL,
                "gpiozero has no pin library (lgpio or RPi.GPIO)",
                "sudo apt install python3-lgpio (and a venv made with --system-site-packages)",
            )
        )
    if not findings:
        findings.append(Finding("gpio", Level.OK, f"{chips[0]} usable through {libraries[0]}"))
    return findings


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_groups(config: Config) -> list[Finding]:
    """Check that this user is in the groups the devices need (i2c/spi, gpio, dialout)."""
    if config.hardware.simulate:
        return [Finding("groups", Level.SKIP, "not needed with simulated hardware")]
    if os.geteuid() == 0:
        return [Finding("groups", Level.OK, "running as root")]
    needed = {"gpio", "dialout"}
    if config.rfid.interface in ("i2c", "spi"):
        needed.add(config.rfid.interface)
    active = set()
    for gid in os.getgroups():
        with contextlib.suppress(KeyError):
            active.add(grp.getgrgid(gid).gr_name)
    user = pwd.getpwuid(os.geteuid()).pw_name
    missing = sorted(needed - active)
    if not missing:
        return [Finding("groups", Level.OK, f"{user} is in {', '.join(sorted(needed))}")]
    listed = []
    for name in missing:
        with contextlib.suppress(KeyError):
            if user in grp.getgrnam(name).gr_mem:
                listed.append(name)
    if listed == missing:
        return [
            Finding(
                "groups",
                Level.WARN,
                f"{user} was added to {', '.join(missing)} after this login",
                "log in again (or restart the service) for the groups to apply",
            )
        ]
    return [
        Finding(
            "groups",
            Level.FAIL,
            f"{user} is not in {', '.join(missing)}",
            f"sudo usermod -aG {','.join(missing)} {user}, then log in again",
        )
    ]


# -- clock and storage ----------------------------------------------------------------------


def check_clock(*, trust_rtc: bool = False) -> Finding:
    """Check whether the wall clock is trusted (NTP, or an RTC the config vouches for).

    fake-hwclock restores a plausible but stale time, so plausibility proves nothing: only
    the kernel's word that NTP has synchronised it counts. The daemon still works without
    it (provisional stamps, corrected once the CSMS or NTP gives the time), so a clock
    that is not yet trusted is a warning, and one before the earliest plausible date a
    failure: that host has neither RTC nor network time.
    """
    if trust_rtc:
        return Finding("clock", Level.OK, "wall clock trusted: clock.trust_rtc (a fitted RTC)")
    synced = kernel_clock_synced()
    if synced:
        return Finding("clock", Level.OK, "wall clock set, NTP synchronised")
    if datetime.now(UTC) < EARLIEST_PLAUSIBLE:
        return Finding(
            "clock",
            Level.FAIL,
            "the wall clock is not set: stamps stay provisional until the CSMS gives the time",
            "enable NTP (sudo timedatectl set-ntp true) and give it network, or fit an RTC",
        )
    ntp = _ntp_synchronized()
    if ntp:
        return Finding("clock", Level.OK, "wall clock set, NTP synchronised (timedatectl)")
    return Finding(
        "clock",
        Level.WARN,
        "NTP has not synchronised the clock (fake-hwclock's time?): the daemon stamps "
        "provisionally until NTP or the CSMS gives the time",
        "check network time: timedatectl timesync-status",
    )


def _ntp_synchronized() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        result = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    answer = result.stdout.strip()
    return None if result.returncode or answer not in ("yes", "no") else answer == "yes"


def check_storage(folder: Path) -> list[Finding]:
    """Check the daemon can keep its databases: folder writable, space left, files sound."""
    fix = f"make {folder} a writable folder on a read-write file system (storage.dir)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".doctor-{os.getpid()}"
        with probe.open("wb") as handle:
            handle.write(b"edgepoint doctor\n")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as err:
        return [Finding("storage", Level.FAIL, f"cannot write in {folder}: {err}", fix)]
    findings = []
    free_mb = shutil.disk_usage(folder).free // (1024 * 1024)
    if free_mb < NO_SPACE_MB:
        level = Level.FAIL
    elif free_mb < LOW_SPACE_MB:
        level = Level.WARN
    else:
        level = Level.OK
    findings.append(
        Finding(
            "storage",
            level,
            f"{folder} writable, {free_mb} MB free",
            "free space on the SD card (journal: sudo journalctl --vacuum-size=50M)",
        )
    )
    for name in ("edgepoint.db", "csms.db"):
        path = folder / name
        if path.exists():
            findings.append(_check_database(path))
    return findings


def _check_database(path: Path) -> Finding:
    try:
        # Read-only, so a running daemon (WAL) is not disturbed.
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        ) as conn:
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as err:
        verdict = str(err)
    if verdict == "ok":
        return Finding("storage", Level.OK, f"{path.name} passes its integrity check")
    return Finding(
        "storage",
        Level.FAIL,
        f"{path.name} is damaged: {verdict}",
        "stop the daemon, keep a copy of the file, and restore it from the latest backup",
    )
