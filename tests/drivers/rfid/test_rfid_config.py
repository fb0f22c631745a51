"""The [rfid] table and the ESP32 keys of [hardware]: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepoint.config import RfidConfig, load_config
from edgepoint.errors import ConfigError

BASE = """
[station]
id = "EP-CONF-1"
[chargepoint]
csms_url = "ws://127.0.0.1:9000/ocpp"
[csms]
enabled = false
"""


def load(tmp_path: Path, extra: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(BASE + extra)
    return load_config(path)


def fails(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    assert info.value.key == key
    assert reason in info.value.reason


def test_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE))
    assert config.rfid == RfidConfig()
    assert config.rfid.interface == "i2c" and config.rfid.irq_pin is None
    assert config.hardware.serial_port == "/dev/edgepoint-esp32"
    assert config.hardware.esp32_watchdog_s == 10.0


def test_spi_with_pins(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            BASE + '[rfid]\ninterface = "spi"\nspi_cs_pin = 25\nirq_pin = 16\nreset_pin = 6\n',
        )
    )
    assert (config.rfid.interface, config.rfid.spi_cs_pin) == ("spi", 25)
    assert (config.rfid.irq_pin, config.rfid.reset_pin) == (16, 6)


def test_shipped_config_loads(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[3] / "config.toml"
    config = load_config(shipped)
    assert config.rfid.interface in ("i2c", "spi", "uart")


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('[rfid]\ninterface = "usb"\n', "rfid.interface", "i2c, spi or uart"),
        ("[rfid]\nirq_pin = 17\n", "rfid.irq_pin", "connector 1's relay_pin"),
        ("[rfid]\nirq_pin = 2\n", "rfid.irq_pin", "I2C bus"),
        ("[rfid]\nirq_pin = 16\nreset_pin = 16\n", "rfid.irq_pin", "rfid.reset_pin"),
        ('[rfid]\ninterface = "spi"\nspi_cs_pin = 8\n', "rfid.spi_cs_pin", "SPI bus"),
        ('[rfid]\ninterface = "spi"\nreq_pin = 12\n', "rfid.req_pin", "i2c"),
        ("[rfid]\npoll_interval_s = 0.5\nremoval_s = 1.0\n", "rfid.removal_s", "3 times"),
        ("[rfid]\nirq_pin = 28\n", "rfid.irq_pin", "between 0 and 27"),
        ("[rfid]\nirq = 16\n", "rfid.irq", "unknown key"),
        ("[hardware]\nesp32_watchdog_s = 0.5\n", "hardware.esp32_watchdog_s", "between"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    fails(tmp_path, extra, key, reason)


def test_a_relay_on_the_uart_pins_is_refused_when_the_reader_uses_them(tmp_path: Path) -> None:
    fails(
        tmp_path,
        '[hardware]\nrelay_pin = 14\n[rfid]\ninterface = "uart"\n',
        "rfid.interface",
        "GPIO14",
    )
    # The same relay pin is fine with the reader on I2C.
    assert load(tmp_path, "[hardware]\nrelay_pin = 14\n")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path
