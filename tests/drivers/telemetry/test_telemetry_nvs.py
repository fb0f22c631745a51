"""The simulated ESP32 keeps its energy register across restarts, like the firmware's NVS."""

from __future__ import annotations

from pathlib import Path

from edgepoint.drivers.telemetry import Esp32Emulator


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
