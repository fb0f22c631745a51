"""The simulated ESP32 keeps its energy register across restarts, like the firmware's NVS."""

from __future__ import annotations

from pathlib import Path

from edgepoint.drivers.telemetry import Esp32Emulator, MeterChannel


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_register_survives_a_restart(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    clock = FakeClock()
    first = Esp32Emulator(
        None, relay_closed=lambda: True, charge_power_w=3600, energy_wh=500, clock=clock, nvs=nvs
    )
    first.tick()
    clock.now = 10.0  # 3600 W for 10 s = 10 Wh
    first.tick()
    assert first.energy_wh == 510
    assert nvs.read_text().strip() == "510"

    again = Esp32Emulator(None, relay_closed=lambda: False, energy_wh=500, nvs=nvs)
    assert again.energy_wh == 510


def test_first_start_or_torn_file_uses_the_configured_value(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    assert Esp32Emulator(None, relay_closed=lambda: False, energy_wh=42, nvs=nvs).energy_wh == 42
    nvs.write_text("garbage")
    assert Esp32Emulator(None, relay_closed=lambda: False, energy_wh=42, nvs=nvs).energy_wh == 42


def test_open_relay_writes_nothing(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    clock = FakeClock()
    emu = Esp32Emulator(None, relay_closed=lambda: False, energy_wh=7, clock=clock, nvs=nvs)
    emu.tick()
    clock.now = 100.0
    emu.tick()
    assert not nvs.exists()


def closed() -> bool:
    return True


def opened() -> bool:
    return False


def test_a_single_register_file_loads_as_channel_one(tmp_path: Path) -> None:
    # Written by the single-meter emulator (or by the one-channel form today).
    nvs = tmp_path / "esp32.nvs"
    nvs.write_text("510\n")
    emu = Esp32Emulator(
        None,
        channels=[MeterChannel(1, opened), MeterChannel(2, opened)],
        energy_wh=42,
        nvs=nvs,
    )
    assert (emu.energy_wh_of(1), emu.energy_wh_of(2)) == (510, 42)


def test_every_channel_keeps_its_register_across_a_restart(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    nvs.write_text("510\n")
    clock = FakeClock()
    channels = [MeterChannel(1, opened), MeterChannel(2, closed, energy_wh=7)]
    first = Esp32Emulator(None, channels=channels, charge_power_w=3600, clock=clock, nvs=nvs)
    first.tick()
    clock.now = 5.0
    first.tick()
    assert nvs.read_text() == "1=510\n2=12\n"

    again = Esp32Emulator(
        None, channels=[MeterChannel(2, opened), MeterChannel(1, opened)], energy_wh=0, nvs=nvs
    )
    assert (again.energy_wh_of(1), again.energy_wh_of(2)) == (510, 12)


def test_registers_of_channels_not_configured_are_kept(tmp_path: Path) -> None:
    # The kiosk went back to one connector: channel 2's register is still in flash.
    nvs = tmp_path / "esp32.nvs"
    nvs.write_text("1=100\n2=200\n")
    clock = FakeClock()
    emu = Esp32Emulator(None, relay_closed=closed, charge_power_w=3600, clock=clock, nvs=nvs)
    emu.tick()
    clock.now = 3.0
    emu.tick()
    assert nvs.read_text() == "1=103\n2=200\n"


def test_one_channel_writes_the_old_single_register_format(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    nvs.write_text("1=100\n")
    clock = FakeClock()
    emu = Esp32Emulator(None, relay_closed=closed, charge_power_w=3600, clock=clock, nvs=nvs)
    emu.tick()
    clock.now = 2.0
    emu.tick()
    assert nvs.read_text() == "102\n"


def test_a_file_with_a_bad_line_is_not_trusted_at_all(tmp_path: Path) -> None:
    nvs = tmp_path / "esp32.nvs"
    for text in ("1=100\n2=x\n", "1=100\n9=5\n", "1=100\n1=200\n", "100\n1=200\n"):
        nvs.write_text(text)
        emu = Esp32Emulator(
            None, channels=[MeterChannel(1, opened), MeterChannel(2, opened)], energy_wh=5, nvs=nvs
        )
        assert (emu.energy_wh_of(1), emu.energy_wh_of(2)) == (5, 5), text
