"""load_config on real files: the shipped config.toml, and every error an operator can make."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from edgepoint.config import (
    ChargePointConfig,
    Config,
    ControlConfig,
    CsmsConfig,
    HardwareConfig,
    SimulationConfig,
    StationConfig,
    StorageConfig,
    load_config,
)
from edgepoint.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"

# Table name in config.toml -> the dataclass its keys fill.
TABLES: dict[str, type] = {
    "station": StationConfig,
    "chargepoint": ChargePointConfig,
    "csms": CsmsConfig,
    "storage": StorageConfig,
    "hardware": HardwareConfig,
    "simulation": SimulationConfig,
    "control": ControlConfig,
}

MINIMAL = '[station]\nid = "EP-1"\n[chargepoint]\ncsms_url = "ws://127.0.0.1:9000/ocpp"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgepoint.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path.resolve())
    return caught.value


# -- the shipped file -----------------------------------------------------------------


def test_repository_config_loads() -> None:
    config = load_config(REPO_CONFIG)
    assert config.path == REPO_CONFIG
    assert config.station.id == "EP-SIM-0001"
    assert config.hardware.simulate is True
    assert config.storage.dir == REPO_CONFIG.parent / "var"
    assert config.log_level == "INFO"


def documented_keys() -> dict[str, dict[str, int]]:
    """{table: {key: line index}} of every `key = value` line in config.toml."""
    tables: dict[str, dict[str, int]] = {}
    current = ""
    for number, line in enumerate(REPO_CONFIG.read_text().splitlines()):
        if m := re.fullmatch(r"\[(\w+)\]\s*", line):
            current = m.group(1)
            tables[current] = {}
        elif m := re.match(r"(\w+)\s*=", line):
            assert current, f"key outside a table at line {number + 1}"
            tables[current][m.group(1)] = number
    return tables


def test_every_config_key_is_in_config_toml() -> None:
    keys = documented_keys()
    for table, cls in TABLES.items():
        assert set(keys.get(table, {})) == {f.name for f in fields(cls)}, table
    assert set(keys["log"]) == {"level"}
    # Config's own fields are the tables plus the [log] level and the file path.
    assert {f.name for f in fields(Config)} == {*TABLES, "log_level", "path"}


def test_every_config_toml_key_has_its_own_comment_line() -> None:
    lines = REPO_CONFIG.read_text().splitlines()
    undocumented = [
        f"[{table}] {key}"
        for table, entries in documented_keys().items()
        for key, number in entries.items()
        if number == 0 or not lines[number - 1].startswith("#")
    ]
    assert undocumented == []


# -- errors name the file, the key and the reason ---------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    assert "does not exist" in caught.value.reason


def test_relative_missing_file_is_named_absolutely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(Path("gone.toml"))
    assert caught.value.path == str(tmp_path / "gone.toml")


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "[csms\nport = 1\n")
    assert err.key == "(syntax)"
    assert "line 5" in err.reason


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("[chargpoint]\nx = 1\n", "chargpoint", "unknown table"),
        ("[csms]\nprot = 9000\n", "csms.prot", "unknown key"),
        ("[log]\nlevle = 'INFO'\n", "log.levle", "unknown key"),
        ("[csms]\nport = '9000'\n", "csms.port", "must be int, got str"),
        ("[csms]\nenabled = 1\n", "csms.enabled", "must be bool, got int"),
        ("[csms]\nport = true\n", "csms.port", "must be int, got bool"),
        ("[csms]\nport = 9000.5\n", "csms.port", "must be int, got float"),
        ("[csms]\nport = 70000\n", "csms.port", "must be between 0 and 65535, got 70000"),
        ("[csms]\nport = -1\n", "csms.port", "must be between 0 and 65535"),
        ("[hardware]\nrelay_pin = 40\n", "hardware.relay_pin", "must be between 0 and 27"),
        ("[hardware]\ntelemetry_timeout_s = nan\n", "hardware.telemetry_timeout_s", "between"),
        ("[csms]\nhost = ' '\n", "csms.host", "must not be empty"),
        ("[storage]\ndir = ''\n", "storage.dir", "must not be empty"),
        ("[log]\nlevel = 'verbose'\n", "log.level", "must be DEBUG, INFO, WARNING or ERROR"),
        ("[control]\nsocket = 5\n", "control.socket", "must be str, got int"),
    ],
)
def test_bad_value_names_key_and_reason(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, MINIMAL + extra)
    assert err.key == key
    assert reason in err.reason
    assert str(err) == f"{err.path}: {key}: {err.reason}"


@pytest.mark.parametrize(
    ("station", "url", "key", "reason"),
    [
        ("", "ws://h/ocpp", "station.id", "must not be empty"),
        ("EP 1", "ws://h/ocpp", "station.id", "letters, digits"),
        ("EP/1", "ws://h/ocpp", "station.id", "letters, digits"),
        ("EP:1", "ws://h/ocpp", "station.id", "letters, digits"),
        ("EP-Ü1", "ws://h/ocpp", "station.id", "letters, digits"),  # not URL-safe ASCII
        ("E" * 49, "ws://h/ocpp", "station.id", "1-48"),
        ("EP-1", "", "chargepoint.csms_url", "must not be empty"),
        ("EP-1", "http://h/ocpp", "chargepoint.csms_url", "ws:// or wss://"),
        ("EP-1", "ws:///ocpp", "chargepoint.csms_url", "ws:// or wss://"),
        ("EP-1", "ws://cp:secret@h/ocpp", "chargepoint.csms_url", "must not carry a password"),
        ("EP-1", "ws://h:99999/ocpp", "chargepoint.csms_url", "bad port"),
        ("EP-1", "ws://h:abc/ocpp", "chargepoint.csms_url", "bad port"),
    ],
)
def test_bad_identity_or_url(tmp_path: Path, station: str, url: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, f'[station]\nid = "{station}"\n[chargepoint]\ncsms_url = "{url}"\n')
    assert err.key == key
    assert reason in err.reason


def test_a_table_that_is_not_a_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, "control = 5\n" + MINIMAL)
    assert (err.key, err.reason) == ("control", "must be a table")


def test_password_is_not_echoed(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL.replace("127.0.0.1", "cp:hunter2@127.0.0.1"))
    assert "hunter2" not in str(err)


def test_required_keys(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[chargepoint]\ncsms_url = "ws://h/ocpp"\n')
    assert (err.key, err.reason) == ("station.id", "is required")
    err = error_for(tmp_path, '[station]\nid = "EP-1"\n')
    assert (err.key, err.reason) == ("chargepoint.csms_url", "is required")


def test_minimal_file_gets_defaults_and_accepts_good_values(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[station]\nid = "EP_a.1-Z"\n[chargepoint]\ncsms_url = "wss://cp@csms.example/ocpp/"\n'
            "response_timeout = 2\n[log]\nlevel = 'debug'\n",
        )
    )
    assert config.station.id == "EP_a.1-Z"
    assert config.chargepoint.csms_url == "wss://cp@csms.example/ocpp"  # trailing / dropped
    assert config.chargepoint.response_timeout == 2.0
    assert isinstance(config.chargepoint.response_timeout, float)
    assert config.log_level == "DEBUG"
    assert config.csms.port == 9000 and config.csms.enabled is True
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.csms.port = 1  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = folder / "config.toml"
    path.write_text(
        '[station]\nid = "EP-1"\n'
        '[chargepoint]\ncsms_url = "ws://h/ocpp"\nauth_key_file = "secrets/cp.key"\n'
        '[storage]\ndir = "data"\n'
        '[control]\nsocket = "../run/ep.sock"\n'
    )
    config = load_config(Path("../etc/config.toml"))
    assert config.path == path
    assert config.storage.dir == folder / "data"
    assert config.storage.csms_db == folder / "data" / "csms.db"
    assert config.control.socket == tmp_path / "run" / "ep.sock"
    assert config.chargepoint.auth_key_file == folder / "secrets" / "cp.key"


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + f'[storage]\ndir = "{tmp_path / "db"}"\n'))
    assert config.storage.dir == tmp_path / "db"


# -- the CLI: exit 2, file + key + reason on stderr, for every command ---------------------


@pytest.mark.parametrize(
    "argv",
    [["run"], ["status"], ["status", "--json"], ["cards", "list"], ["sim", "tap", "04A1B2C3"]],
)
def test_cli_rejects_a_bad_config_with_exit_2(tmp_path: Path, argv: list[str]) -> None:
    path = write(tmp_path, MINIMAL + "[csms]\nport = 70000\n")
    result = subprocess.run(
        [sys.executable, "-m", "edgepoint.cli", *argv, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "csms.port" in result.stderr
    assert "must be between 0 and 65535, got 70000" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or created


def test_cli_names_a_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "edgepoint.cli", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{path}: (file): does not exist" in result.stderr
