"""load_config on real files: the shipped config.toml, and every error an operator can make."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from edgepoint import config as config_module
from edgepoint.chargepoint.settings import REGISTRY
from edgepoint.charging.faults import Limits
from edgepoint.config import (
    ChargePointConfig,
    ClockConfig,
    Config,
    ConnectorConfig,
    ControlConfig,
    CsmsConfig,
    FirebaseConfig,
    FirmwareConfig,
    HardwareConfig,
    LedgerConfig,
    RfidConfig,
    SafetyConfig,
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
    "rfid": RfidConfig,
    "simulation": SimulationConfig,
    "control": ControlConfig,
    "safety": SafetyConfig,
    "firebase": FirebaseConfig,
    "ledger": LedgerConfig,
    "clock": ClockConfig,
    "firmware": FirmwareConfig,
    "connector": ConnectorConfig,  # [[connector]], documented as a commented-out example
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
    assert config.connectors == (ConnectorConfig(id=1, relay_pin=17, meter_channel=1),)
    assert config.ocpp == (("MeterValueSampleInterval", "10"), ("LocalPreAuthorize", "true"))
    cp = config.chargepoint
    assert (cp.authorize_timeout_s, cp.outbox_max_messages) == (3.0, 50_000)
    assert (cp.ca_file, cp.client_cert_file, cp.client_key_file) == (None, None, None)


# A key set by default, or a commented-out example of an optional one ("# ca_file = ...").
KEY_LINE = re.compile(r"(\w+)\s*=")
EXAMPLE_LINE = re.compile(r"# (\w+) = \S")


def documented_keys() -> dict[str, dict[str, int]]:
    """{table: {key: line index}} of every `key = value` line in config.toml, examples too."""
    tables: dict[str, dict[str, int]] = {}
    current = ""
    for number, line in enumerate(REPO_CONFIG.read_text().splitlines()):
        if m := re.fullmatch(r"(?:# )?\[\[?(\w+)\]\]?\s*", line):
            current = m.group(1)
            tables[current] = {}
        elif m := KEY_LINE.match(line) or EXAMPLE_LINE.match(line):
            assert current, f"key outside a table at line {number + 1}"
            tables[current][m.group(1)] = number
    return tables


def test_every_config_key_is_in_config_toml() -> None:
    keys = documented_keys()
    for table, cls in TABLES.items():
        names = {f.name for f in fields(cls)}
        if cls is SafetyConfig:  # its keys are the pure core's Limits, plus loop_stall_s
            names = names - {"limits"} | {f.name for f in fields(Limits)} - {"telemetry_timeout_s"}
        assert set(keys.get(table, {})) == names, table
    assert set(keys["log"]) == {"level"}
    assert keys["ocpp"] and set(keys["ocpp"]) <= {n for n, k in REGISTRY.items() if not k.readonly}
    # Config's own fields are the tables plus the [log] level, [ocpp] and the file path.
    tables = {name for name in TABLES if name != "connector"} | {"connectors", "ocpp"}
    assert {f.name for f in fields(Config)} == {*tables, "log_level", "path"}


def test_every_config_toml_key_has_its_own_comment_line() -> None:
    lines = REPO_CONFIG.read_text().splitlines()
    undocumented = [
        f"[{table}] {key}"
        for table, entries in documented_keys().items()
        for key, number in entries.items()
        if number == 0
        or not lines[number - 1].startswith("#")
        or EXAMPLE_LINE.match(lines[number - 1])  # an example explains nothing
    ]
    assert undocumented == []


def test_the_commented_examples_in_config_toml_are_valid(tmp_path: Path) -> None:
    """Uncommenting the [[connector]] and [ocpp] examples gives a file that loads."""
    lines = REPO_CONFIG.read_text().splitlines()
    table = ""
    for i, line in enumerate(lines):
        if m := re.fullmatch(r"(?:# )?\[\[?(\w+)\]\]?\s*", line):
            table = m.group(1)
        if table in ("connector", "ocpp") and (
            line == "# [[connector]]" or EXAMPLE_LINE.match(line)
        ):
            lines[i] = line.removeprefix("# ")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path)
    assert config.connectors == (ConnectorConfig(id=1, relay_pin=17, meter_channel=1),)
    assert len(config.ocpp) == len(documented_keys()["ocpp"]) > 1


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


# -- [chargepoint]: Authorize deadline, outbox budget, TLS files -----------------------------

WSS = '[station]\nid = "EP-1"\n[chargepoint]\ncsms_url = "wss://csms.example/ocpp"\n'


def secret(folder: Path, name: str, mode: int) -> Path:
    path = folder / name
    path.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(path, mode)
    return path


def test_new_chargepoint_keys_take_values(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "cp.crt").write_text("cert")
    key = secret(tmp_path, "cp.key", 0o600)
    config = load_config(
        write(
            tmp_path,
            WSS + "authorize_timeout_s = 1\noutbox_max_messages = 1000\n"
            'ca_file = "ca.pem"\nclient_cert_file = "cp.crt"\nclient_key_file = "cp.key"\n',
        )
    )
    cp = config.chargepoint
    assert cp.authorize_timeout_s == 1.0 and isinstance(cp.authorize_timeout_s, float)
    assert cp.outbox_max_messages == 1000
    assert (cp.ca_file, cp.client_cert_file, cp.client_key_file) == (
        tmp_path / "ca.pem",
        tmp_path / "cp.crt",
        key,
    )


def test_a_key_file_readable_only_by_its_owner_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "cp.crt").write_text("cert")
    secret(tmp_path, "cp.key", 0o400)
    text = WSS + 'client_cert_file = "cp.crt"\nclient_key_file = "cp.key"\n'
    assert load_config(write(tmp_path, text)).chargepoint.client_key_file == tmp_path / "cp.key"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_a_key_file_open_to_others_is_refused_naming_the_file(tmp_path: Path, mode: int) -> None:
    (tmp_path / "cp.crt").write_text("cert")
    key = secret(tmp_path, "cp.key", mode)
    err = error_for(tmp_path, WSS + 'client_cert_file = "cp.crt"\nclient_key_file = "cp.key"\n')
    assert err.key == "chargepoint.client_key_file"
    assert err.reason == f"{key} is open to group or others (mode {mode:03o}); chmod 600 it"


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('ca_file = "ca.pem"\n', "chargepoint.ca_file", "does not exist"),
        ('client_cert_file = "cp.crt"\n', "chargepoint.client_key_file", "is required with"),
        ('client_key_file = "cp.key"\n', "chargepoint.client_cert_file", "is required with"),
        (
            'client_cert_file = "cp.crt"\nclient_key_file = "cp.key"\n',
            "chargepoint.client_cert_file",
            "does not exist",
        ),
        ('ca_file = ""\n', "chargepoint.ca_file", "must not be empty"),
        ("ca_file = 1\n", "chargepoint.ca_file", "must be str, got int"),
        ("authorize_timeout_s = 0\n", "chargepoint.authorize_timeout_s", "between 0.1 and 60"),
        ("authorize_timeout_s = '3'\n", "chargepoint.authorize_timeout_s", "must be float"),
        ("outbox_max_messages = 10\n", "chargepoint.outbox_max_messages", "between 100 and"),
        ("outbox_max_messages = 1e5\n", "chargepoint.outbox_max_messages", "must be int"),
    ],
)
def test_bad_tls_files_and_limits(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, WSS + extra)
    assert err.key == key
    assert reason in err.reason


@pytest.mark.parametrize("name", ["ca_file", "client_cert_file", "client_key_file"])
def test_tls_files_need_a_wss_url(tmp_path: Path, name: str) -> None:
    (tmp_path / "f.pem").write_text("x")
    err = error_for(tmp_path, MINIMAL + f'{name} = "f.pem"\n')
    assert err.key == f"chargepoint.{name}"
    assert err.reason == "only applies to a wss:// csms_url (TLS); csms_url is ws://"


def test_a_missing_key_file_is_reported_missing(tmp_path: Path) -> None:
    (tmp_path / "cp.crt").write_text("cert")
    err = error_for(tmp_path, WSS + 'client_cert_file = "cp.crt"\nclient_key_file = "cp.key"\n')
    assert err.key == "chargepoint.client_key_file"
    assert err.reason == f"{tmp_path / 'cp.key'} does not exist or is not a file"


def test_the_moved_sample_interval_says_where_it_went(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "meter_value_sample_interval = 10\n")
    assert err.key == "chargepoint.meter_value_sample_interval"
    assert "MeterValueSampleInterval in [ocpp]" in err.reason


# -- [csms]: path, TLS, client certificates and where it may listen -------------------------


def csms_table(body: str) -> str:
    return MINIMAL + "[csms]\n" + body


def test_csms_front_door_defaults(tmp_path: Path) -> None:
    csms = load_config(write(tmp_path, MINIMAL)).csms
    assert (csms.host, csms.path_prefix, csms.require_auth) == ("127.0.0.1", "/ocpp", True)
    assert (csms.tls_cert_file, csms.tls_key_file, csms.tls_client_ca_file) == (None, None, None)
    assert csms.allow_plaintext_on_network is False


def test_csms_tls_keys_take_values(tmp_path: Path) -> None:
    (tmp_path / "csms.crt").write_text("cert")
    (tmp_path / "chargers-ca.pem").write_text("ca")
    key = secret(tmp_path, "csms.key", 0o600)
    text = csms_table(
        'host = "0.0.0.0"\npath_prefix = "/site/ocpp16"\ntls_cert_file = "csms.crt"\n'
        'tls_key_file = "csms.key"\ntls_client_ca_file = "chargers-ca.pem"\n'
    )
    csms = load_config(write(tmp_path, text)).csms
    assert csms.path_prefix == "/site/ocpp16"
    assert (csms.tls_cert_file, csms.tls_key_file, csms.tls_client_ca_file) == (
        tmp_path / "csms.crt",
        key,
        tmp_path / "chargers-ca.pem",
    )


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('path_prefix = "ocpp"\n', "csms.path_prefix", "must look like /ocpp"),
        ('path_prefix = "/ocpp/"\n', "csms.path_prefix", "no trailing '/'"),
        ('path_prefix = ""\n', "csms.path_prefix", "must not be empty"),
        ('tls_cert_file = "c.crt"\n', "csms.tls_key_file", "is required with tls_cert_file"),
        ('tls_key_file = "c.key"\n', "csms.tls_cert_file", "is required with tls_key_file"),
        ('tls_client_ca_file = "ca.pem"\n', "csms.tls_client_ca_file", "needs tls_cert_file"),
        (
            'tls_cert_file = "none.crt"\ntls_key_file = "none.key"\n',
            "csms.tls_cert_file",
            "does not exist",
        ),
        ("require_auth = 'no'\n", "csms.require_auth", "must be bool, got str"),
        ("allow_plaintext_on_network = 1\n", "csms.allow_plaintext_on_network", "must be bool"),
    ],
)
def test_bad_csms_front_door_keys(tmp_path: Path, body: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, csms_table(body))
    assert err.key == key
    assert reason in err.reason


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_csms_tls_key_open_to_others_is_refused_naming_the_file(tmp_path: Path, mode: int) -> None:
    (tmp_path / "csms.crt").write_text("cert")
    key = secret(tmp_path, "csms.key", mode)
    err = error_for(tmp_path, csms_table('tls_cert_file = "csms.crt"\ntls_key_file = "csms.key"\n'))
    assert err.key == "csms.tls_key_file"
    assert err.reason == f"{key} is open to group or others (mode {mode:03o}); chmod 600 it"


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('host = "0.0.0.0"\n', "csms.host", "TLS is off"),
        ('host = "::"\n', "csms.host", "allow_plaintext_on_network = true"),
        ('host = "192.168.4.1"\n', "csms.host", "reachable from the network"),
        (
            'host = "0.0.0.0"\nrequire_auth = false\nallow_plaintext_on_network = true\n',
            "csms.require_auth",
            "only allowed when csms.host is loopback",
        ),
    ],
)
def test_csms_listen_policy_errors(tmp_path: Path, body: str, key: str, reason: str) -> None:
    err = error_for(tmp_path, csms_table(body))
    assert err.key == key
    assert reason in err.reason


@pytest.mark.parametrize(
    "body",
    [
        'host = "0.0.0.0"\nallow_plaintext_on_network = true\n',  # knowingly plaintext
        'host = "::1"\nrequire_auth = false\n',  # loopback: no auth is allowed
        'host = "localhost"\nrequire_auth = false\n',
        'enabled = false\nhost = "0.0.0.0"\n',  # a CSMS that does not run listens nowhere
    ],
)
def test_csms_listen_policy_allows(tmp_path: Path, body: str) -> None:
    load_config(write(tmp_path, csms_table(body)))


def test_csms_on_the_network_with_tls_loads(tmp_path: Path) -> None:
    (tmp_path / "csms.crt").write_text("cert")
    secret(tmp_path, "csms.key", 0o400)
    text = csms_table('host = "0.0.0.0"\ntls_cert_file = "csms.crt"\ntls_key_file = "csms.key"\n')
    assert load_config(write(tmp_path, text)).csms.host == "0.0.0.0"


# -- [[connector]] -------------------------------------------------------------------------


def connectors(*tables: str) -> str:
    return MINIMAL + "".join(f"[[connector]]\n{t}\n" for t in tables)


def test_without_connector_tables_there_is_one_on_the_hardware_relay(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "[hardware]\nrelay_pin = 5\n"))
    assert config.connectors == (ConnectorConfig(id=1, relay_pin=5, meter_channel=1),)


def test_connector_tables_in_any_order_come_out_by_id(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            connectors(
                "id = 2\nrelay_pin = 5\nmeter_channel = 3",
                "id = 1\nrelay_pin = 6",  # meter_channel defaults to the id
            ),
        )
    )
    assert config.connectors == (
        ConnectorConfig(id=1, relay_pin=6, meter_channel=1),
        ConnectorConfig(id=2, relay_pin=5, meter_channel=3),
    )


@pytest.mark.parametrize(
    ("tables", "key", "reason"),
    [
        (["relay_pin = 5"], "connector[1].id", "is required"),
        (["id = 1"], "connector[1].relay_pin", "is required"),
        (["id = 0\nrelay_pin = 5"], "connector[1].id", "must be between 1 and 1"),
        (
            ["id = 1\nrelay_pin = 5", "id = 3\nrelay_pin = 6"],
            "connector[2].id",
            "must be between 1 and 2 (one per [[connector]]), got 3",
        ),
        (
            ["id = 1\nrelay_pin = 5", "id = 1\nrelay_pin = 6\nmeter_channel = 2"],
            "connector[2].id",
            "is connector[1]'s id too",
        ),
        (["id = '1'\nrelay_pin = 5"], "connector[1].id", "must be int, got str"),
        (["id = 1\nrelay_pin = 28"], "connector[1].relay_pin", "must be between 0 and 27"),
        (
            ["id = 1\nrelay_pin = 5", "id = 2\nrelay_pin = 5"],
            "connector[2].relay_pin",
            "is connector[1]'s relay_pin too",
        ),
        (["id = 1\nrelay_pin = 27"], "connector[1].relay_pin", "is hardware.green_led_pin too"),
        (["id = 1\nrelay_pin = 23"], "connector[1].relay_pin", "is hardware.buzzer_pin too"),
        (
            ["id = 1\nrelay_pin = 5\nmeter_channel = 9"],
            "connector[1].meter_channel",
            "must be between 1 and 8",
        ),
        (
            ["id = 1\nrelay_pin = 5\nmeter_channel = 2", "id = 2\nrelay_pin = 6"],
            "connector[2].meter_channel",
            "is connector[1]'s meter_channel too",
        ),
        (["id = 1\nrelay_pin = 5\nrelya_pin = 6"], "connector[1].relya_pin", "unknown key"),
    ],
)
def test_bad_connector_tables_are_named_by_position(
    tmp_path: Path, tables: list[str], key: str, reason: str
) -> None:
    err = error_for(tmp_path, connectors(*tables))
    assert err.key == key
    assert reason in err.reason


@pytest.mark.parametrize("text", ["connector = 5\n", "[connector]\nid = 1\n", "connector = []\n"])
def test_connector_must_be_an_array_of_tables(tmp_path: Path, text: str) -> None:
    err = error_for(tmp_path, text + MINIMAL)
    assert (err.key, err.reason) == ("connector", "must be [[connector]] tables")


def test_the_single_relay_must_not_share_a_pin(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "[hardware]\nrelay_pin = 22\n")
    assert (err.key, err.reason) == ("hardware.relay_pin", "is hardware.red_led_pin too")


# -- [ocpp] --------------------------------------------------------------------------------


def test_ocpp_keys_are_kept_in_canonical_ocpp_form(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            connectors("id = 1\nrelay_pin = 5", "id = 2\nrelay_pin = 6")
            + "[ocpp]\nLocalPreAuthorize = true\nMeterValueSampleInterval = 0\n"
            'MeterValuesSampledData = ["Voltage", "Current.Import"]\n'
            'StopTxnSampledData = "Energy.Active.Import.Register, Voltage"\n'
            'MeterValuesAlignedData = []\nConnectorPhaseRotation = ["0.RST", "2.RTS"]\n',
        )
    )
    assert config.ocpp == (
        ("LocalPreAuthorize", "true"),
        ("MeterValueSampleInterval", "0"),
        ("MeterValuesSampledData", "Voltage,Current.Import"),
        ("StopTxnSampledData", "Energy.Active.Import.Register,Voltage"),
        ("MeterValuesAlignedData", ""),
        ("ConnectorPhaseRotation", "0.RST,2.RTS"),
    )
    hash(config)  # frozen all the way down


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ("HeartbeatIntervall = 5", "ocpp.HeartbeatIntervall", "did you mean HeartbeatInterval?"),
        ("heartbeatinterval = 5", "ocpp.heartbeatinterval", "did you mean HeartbeatInterval?"),
        ("Foo = 1", "ocpp.Foo", "is not an OCPP configuration key this charge point supports"),
        ("OfflineThreshold = 60", "ocpp.OfflineThreshold", "not an"),  # an OCPP 2.0.1 key
        (
            "ReserveConnectorZeroSupported = false",
            "ocpp.ReserveConnectorZeroSupported",
            "read-only",
        ),
        ("NumberOfConnectors = 2", "ocpp.NumberOfConnectors", "is read-only"),
        ("GetConfigurationMaxKeys = 10", "ocpp.GetConfigurationMaxKeys", "is read-only"),
        ("SupportedFeatureProfiles = ['Core']", "ocpp.SupportedFeatureProfiles", "is read-only"),
        ("LocalAuthorizeOffline = 'true'", "ocpp.LocalAuthorizeOffline", "must be bool, got str"),
        ("HeartbeatInterval = '300'", "ocpp.HeartbeatInterval", "must be int, got str"),
        ("HeartbeatInterval = true", "ocpp.HeartbeatInterval", "must be int, got bool"),
        ("HeartbeatInterval = 1.5", "ocpp.HeartbeatInterval", "must be int, got float"),
        ("HeartbeatInterval = 0", "ocpp.HeartbeatInterval", "must be between 1 and 86400, got 0"),
        ("MeterValueSampleInterval = -1", "ocpp.MeterValueSampleInterval", "between 0 and 86400"),
        ("MeterValuesSampledData = ['SoC']", "ocpp.MeterValuesSampledData", "'SoC' is not"),
        ("MeterValuesSampledData = 5", "ocpp.MeterValuesSampledData", "must be a list of strings"),
        ("MeterValuesSampledData = [1]", "ocpp.MeterValuesSampledData", "must be a list of"),
        ("MeterValuesSampledData = ['Voltage,SoC']", "ocpp.MeterValuesSampledData", "commas"),
        ("MeterValuesSampledData = 'Voltage,Voltage'", "ocpp.MeterValuesSampledData", "twice"),
        ("ConnectorPhaseRotation = '2.RST'", "ocpp.ConnectorPhaseRotation", "no connector 2"),
    ],
)
def test_bad_ocpp_keys_name_key_and_reason(
    tmp_path: Path, line: str, key: str, reason: str
) -> None:
    err = error_for(tmp_path, MINIMAL + f"[ocpp]\n{line}\n")
    assert err.key == key
    assert reason in err.reason


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


def test_removal_of_exactly_three_poll_intervals_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + "[rfid]\npoll_interval_s = 0.2\nremoval_s = 0.6\n")
    assert load_config(path).rfid.removal_s == 0.6


def test_firmware_and_security_settings(tmp_path: Path) -> None:
    hook = tmp_path / "install.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    not_executable = write(tmp_path, MINIMAL + f'[firmware]\ninstall_hook = "{hook}"\n')
    assert error_for(tmp_path, not_executable.read_text()).key == "firmware.install_hook"
    hook.chmod(0o755)
    config = load_config(write(tmp_path, MINIMAL + f'[firmware]\ninstall_hook = "{hook}"\n'))
    assert config.firmware.install_hook == hook and config.firmware.wait_for_sessions
    assert load_config(write(tmp_path, MINIMAL)).firmware.install_hook is None
    # A TLS URL for profiles 2 and 3 lets the TLS files serve a ws:// csms_url.
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = MINIMAL + f'csms_tls_url = "wss://csms.example/ocpp/"\nca_file = "{ca}"\n'
    chargepoint = load_config(write(tmp_path, text)).chargepoint
    assert chargepoint.csms_tls_url == "wss://csms.example/ocpp" and chargepoint.ca_file == ca
    bad = error_for(tmp_path, MINIMAL + 'csms_tls_url = "ws://csms.example/ocpp"\n')
    assert bad.key == "chargepoint.csms_tls_url"


# -- defaults of an installed system ----------------------------------------------------


def installed_paths(config: Config) -> dict[str, Path]:
    return {
        "storage": config.storage.dir,
        "auth_key": config.chargepoint.auth_key_file,
        "ledger_key": config.ledger.key_file,
        "control_socket": config.control.socket,
        "csms_socket": config.csms.control_socket,
    }


def test_under_systemd_the_default_paths_are_the_units_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The crash loop of a first install: key and database defaulted next to the config
    # file in /etc/edgepoint, which ProtectSystem=strict keeps read-only.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edgepoint")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/edgepoint:/run/other")
    assert installed_paths(load_config(write(tmp_path, MINIMAL))) == {
        "storage": Path("/var/lib/edgepoint"),
        "auth_key": Path("/var/lib/edgepoint/secrets/chargepoint.key"),
        "ledger_key": Path("/var/lib/edgepoint/secrets/ledger.key"),
        "control_socket": Path("/run/edgepoint/edgepoint.sock"),
        "csms_socket": Path("/run/edgepoint/csms.sock"),
    }
    # A path the operator wrote is the operator's, systemd or not.
    explicit = load_config(write(tmp_path, MINIMAL + '[storage]\ndir = "data"\n'))
    assert explicit.storage.dir == (tmp_path / "data").resolve()


def test_the_cli_over_ssh_finds_what_the_unit_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No systemd variables in a technician's shell: a config in /etc/<name>/ still
    # means /var/lib/<name> and /run/<name>, the directories the unit was given.
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_ROOT", tmp_path)
    (tmp_path / "edgepoint").mkdir()
    installed = load_config(write(tmp_path / "edgepoint", MINIMAL))
    assert installed_paths(installed)["storage"] == Path("/var/lib/edgepoint")
    assert installed_paths(installed)["control_socket"] == Path("/run/edgepoint/edgepoint.sock")
    # A checkout keeps everything beside its config file.
    checkout = load_config(write(tmp_path, MINIMAL))
    assert checkout.storage.dir == (tmp_path / "var").resolve()
