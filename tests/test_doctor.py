"""`edgepoint doctor`: all OK on simulated hardware; broken setups named, with a fix and exit 1."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli, write_config

from edgepoint.config import load_config
from edgepoint.doctor import (
    Finding,
    Level,
    check_clock,
    check_serial,
    check_storage,
    exit_code,
    judge_serial,
    probe_pn532,
    probe_serial,
)
from edgepoint.drivers.rfid import (
    EmulatedI2CBus,
    I2cLink,
    Interface,
    Pn532Emulator,
    emulated_link,
)
from edgepoint.drivers.rfid.emulator import I2C_ADDRESS
from edgepoint.drivers.telemetry import Esp32Emulator, open_pty

pytestmark = pytest.mark.timeout(60)

FIX = "wire it"


def levels(findings: list[Finding]) -> set[Level]:
    return {finding.level for finding in findings}


def test_simulated_kiosk_passes_every_check(tmp_path: Path) -> None:
    result = cli(write_config(tmp_path), "doctor")
    out = result.stdout
    assert result.returncode == 0, out
    assert "FAIL" not in out
    for check in ("pn532", "serial", "gpio", "storage"):
        assert f"ok    {check}" in out, out
    # Whether this host's NTP has synchronised is not ours to decide: either is no problem.
    assert "ok    clock" in out or "warn  clock" in out, out
    assert "PN532 firmware 1.6 over I2C" in out
    assert "channel 1: command acked, contact open" in out
    assert "No problem found" in out


def test_spi_reader_with_its_irq_line_passes_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, rfid__interface="spi", rfid__irq_pin=16)
    result = cli(config, "doctor")
    assert result.returncode == 0, result.stdout
    assert "over SPI" in result.stdout
    assert "IRQ on GPIO16 idle" in result.stdout


def test_unwritable_storage_is_a_failure_with_exit_code_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "var").write_text("a file where the data folder should be")
    result = cli(config, "doctor", check=False)
    assert result.returncode == 1, result.stdout
    assert "FAIL  storage  cannot write in" in result.stdout
    assert "fix: make" in result.stdout
    assert "1 problem(s) found." in result.stdout


def test_missing_esp32_on_real_hardware_names_the_udev_rule(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, hardware__simulate=False, hardware__serial_port=str(tmp_path / "esp32")
    )
    config = load_config(path)
    findings = check_serial(config, timeout_s=0.5)
    assert [f.level for f in findings] == [Level.FAIL]
    assert "does not exist" in findings[0].message
    assert findings[0].fix is not None and "99-edgepoint.rules" in findings[0].fix


def test_storage_check_reads_the_databases(tmp_path: Path) -> None:
    (tmp_path / "edgepoint.db").write_bytes(b"not a database at all" * 100)
    findings = check_storage(tmp_path)
    assert exit_code(findings) == 1
    assert any("edgepoint.db is damaged" in f.message for f in findings)


# -- the PN532 probe against broken emulators ---------------------------------------------


def test_absent_chip_fails_with_the_wiring_fix() -> None:
    chip = Pn532Emulator()
    bus = EmulatedI2CBus.with_pn532(chip)
    bus.detach(I2C_ADDRESS)
    findings = probe_pn532(I2cLink(bus), None, where="I2C", fix=FIX, timeout_s=2)
    assert [(f.level, f.fix) for f in findings] == [(Level.FAIL, FIX)]
    assert "No I2C device" in findings[0].message


def test_chip_that_does_not_answer_fails() -> None:
    chip = Pn532Emulator()
    chip.hang()
    findings = probe_pn532(emulated_link(chip), None, where="I2C", fix=FIX, timeout_s=5)
    assert levels(findings) == {Level.FAIL}


def test_chip_that_is_no_pn532_fails() -> None:
    chip = Pn532Emulator()
    chip.set_firmware(bytes((0x31, 0x01, 0x06, 0x07)))
    findings = probe_pn532(emulated_link(chip), None, where="I2C", fix=FIX, timeout_s=2)
    assert levels(findings) == {Level.FAIL}
    assert "not a PN532" in findings[0].message


def test_irq_line_stuck_active_fails() -> None:
    # Something holds the line low with nothing pending (a short, a wrong pin).
    link = emulated_link(Pn532Emulator(), Interface.UART)
    findings = probe_pn532(link, _StuckLine(16), where="UART", fix=FIX, timeout_s=2)
    assert [f.level for f in findings] == [Level.OK, Level.FAIL]
    assert "IRQ on GPIO16 reads active" in findings[1].message


class _StuckLine:
    def __init__(self, pin: int) -> None:
        self.pin = pin

    def asserted(self) -> bool:
        return True


# -- the serial probe against broken links ------------------------------------------------


async def _probe_with(emulator_setup: object, timeout_s: float = 1.0) -> list[Finding]:
    master, path = open_pty()
    emulator = Esp32Emulator(master, relay_closed=lambda: True, interval_s=0.02)
    if callable(emulator_setup):
        emulator_setup(emulator)
    task = asyncio.create_task(emulator.run())
    try:
        probe = await probe_serial(path, 115200, [1], timeout_s)
    finally:
        task.cancel()
        await asyncio.wait({task})
        emulator.detach()
        os.close(master)
    return judge_serial(path, probe, timeout_s)


async def test_a_welded_contact_fails() -> None:
    # No firmware watchdog relay and the Pi's relay reads closed: the contact is closed
    # while the daemon is stopped, which can only be a welded contact or bad sensing.
    findings = await _probe_with(None)
    assert exit_code(findings) == 1
    assert any("contact reads closed" in f.message for f in findings)


async def test_firmware_that_ignores_commands_fails() -> None:
    findings = await _probe_with(lambda emulator: emulator.drop_commands(100))
    assert any(f.level is Level.FAIL and "did not take a command" in f.message for f in findings)


async def test_wrong_baud_rate_shows_as_bytes_without_frames() -> None:
    master, path = open_pty()
    try:

        async def noise() -> None:
            while True:
                os.write(master, b"\xf8\x80\x00\xfe\x78\r\n")
                await asyncio.sleep(0.02)

        task = asyncio.create_task(noise())
        probe = await probe_serial(path, 115200, [1], 0.5)
        task.cancel()
        await asyncio.wait({task})
    finally:
        os.close(master)
    findings = judge_serial(path, probe, 0.5)
    assert [f.level for f in findings] == [Level.FAIL]
    assert findings[0].fix is not None and "serial_baudrate" in findings[0].fix


async def test_a_silent_port_fails() -> None:
    master, path = open_pty()
    try:
        probe = await probe_serial(path, 115200, [1], 0.3)
    finally:
        os.close(master)
    findings = judge_serial(path, probe, 0.3)
    assert [f.level for f in findings] == [Level.FAIL]
    assert "no frame" in findings[0].message


# -- with the daemon running --------------------------------------------------------------


def test_with_the_daemon_running_its_live_status_is_used(tmp_path: Path) -> None:
    daemon = Daemon(write_config(tmp_path)).start()
    try:
        daemon.wait_ready()
        daemon.wait_for("reader connected", lambda s: s["rfid"]["connected"])
        result = cli(daemon.config, "doctor")
    finally:
        daemon.kill()
    assert result.returncode == 0, result.stdout
    assert "daemon   running" in result.stdout
    assert "PN532 firmware 1.6" in result.stdout
    assert "ESP32 link up" in result.stdout


def test_an_rtc_the_config_vouches_for_is_a_trusted_clock() -> None:
    finding = check_clock(trust_rtc=True)
    assert finding.level is Level.OK
    assert "trust_rtc" in finding.message
