"""Load config.toml into frozen dataclasses; every error names the file, the key and the reason."""

from __future__ import annotations

import difflib
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edgepoint.chargepoint.settings import REGISTRY, InvalidValue, KeyDef, KeyType, parse_value
from edgepoint.errors import ConfigError


@dataclass(frozen=True, slots=True)
class StationConfig:
    """Who this charge point is."""

    id: str
    vendor: str
    model: str


@dataclass(frozen=True, slots=True)
class ChargePointConfig:
    """The OCPP 1.6J client side."""

    csms_url: str
    auth_key_file: Path
    response_timeout: float
    reconnect_max_s: float
    # Deadline of an online Authorize; past it the offline rules decide about the card.
    authorize_timeout_s: float = 3.0
    ca_file: Path | None = None  # CA bundle that signs the CSMS's certificate (wss:// only)
    client_cert_file: Path | None = None  # TLS client certificate (security profile 3)
    client_key_file: Path | None = None  # its private key; mode 0600 or stricter
    outbox_max_messages: int = 50_000  # storage budget of the outbox, in messages


@dataclass(frozen=True, slots=True)
class CsmsConfig:
    """The embedded mini-CSMS."""

    enabled: bool
    host: str
    port: int
    heartbeat_interval: int


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where the SQLite files live."""

    dir: Path

    @property
    def chargepoint_db(self) -> Path:
        return self.dir / "edgepoint.db"

    @property
    def csms_db(self) -> Path:
        return self.dir / "csms.db"


@dataclass(frozen=True, slots=True)
class HardwareConfig:
    """Real or simulated devices, and where the real ones are wired."""

    simulate: bool
    serial_port: str
    serial_baudrate: int
    relay_pin: int
    green_led_pin: int
    red_led_pin: int
    buzzer_pin: int
    telemetry_timeout_s: float


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One connector of the kiosk: its OCPP id, the relay that powers it, its meter."""

    id: int  # OCPP connectorId, 1..N without gaps
    relay_pin: int  # BCM GPIO number of its relay
    meter_channel: int  # ESP32 meter channel (the `ch` field of telemetry frames; 1 if absent)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """How the simulated ESP32 behaves."""

    charge_power_w: float
    telemetry_interval_s: float
    start_energy_wh: int


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The local control socket used by the TUI and the CLI."""

    socket: Path


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    station: StationConfig
    chargepoint: ChargePointConfig
    csms: CsmsConfig
    storage: StorageConfig
    hardware: HardwareConfig
    simulation: SimulationConfig
    control: ControlConfig
    log_level: str
    # Never empty; without [[connector]] tables: one connector on hardware.relay_pin, channel 1.
    connectors: tuple[ConnectorConfig, ...] = ()
    # The [ocpp] table: (OCPP key name, value in canonical OCPP string form), file order.
    ocpp: tuple[tuple[str, str], ...] = ()


DEFAULT_PATH = Path("config.toml")
T = TypeVar("T")

# Each key: (type check + conversion, default or _REQUIRED). A default of _REQUIRED
# makes the key mandatory; paths resolve relative to the config file's folder so a
# checkout works from anywhere.
_REQUIRED: Any = object()


class _Reader:
    """Walks one table of the parsed TOML and converts its keys, naming each failure."""

    def __init__(self, path: Path, data: Mapping[str, Any], table: str) -> None:
        self.path = path
        self.table = table
        raw = data.get(table, {})
        if not isinstance(raw, dict):
            raise ConfigError(str(path), table, "must be a table")
        self.raw: dict[str, Any] = raw
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.table}.{name}"

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(str(self.path), self.key(name), reason)

    def get(self, name: str, kind: type[T], default: Any = _REQUIRED) -> T:
        self.used.add(name)
        if name not in self.raw:
            if default is _REQUIRED:
                raise self.fail(name, "is required")
            return default  # type: ignore[no-any-return]
        value = self.raw[name]
        # TOML ints are acceptable where floats are asked; bools are not numbers here.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(name, f"must be {kind.__name__}, got {type(value).__name__}")
        return value

    def text(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.get(name, str, default)
        if not value.strip():
            raise self.fail(name, "must not be empty")
        return value

    def number(self, name: str, kind: type[T], lo: float, hi: float, default: Any) -> T:
        value = self.get(name, kind, default)
        if not lo <= value <= hi:  # type: ignore[operator]
            raise self.fail(name, f"must be between {lo} and {hi}, got {value}")
        return value

    def path_(self, name: str, default: Any = _REQUIRED) -> Path:
        value = Path(self.text(name, default)).expanduser()
        return value if value.is_absolute() else (self.path.parent / value).resolve()

    def optional_path(self, name: str) -> Path | None:
        return self.path_(name) if name in self.raw else None

    def existing_file(self, name: str, path: Path) -> None:
        """Fail on `name` unless `path` is a file: found now, not at the first TLS handshake."""
        if not path.is_file():
            raise self.fail(name, f"{path} does not exist or is not a file")

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key (misspelt?)")


def _station(r: _Reader) -> StationConfig:
    ident = r.text("id")
    # The id becomes the last segment of the WebSocket URL and a Firebase key.
    # ASCII only: str.isalnum() also accepts "Ü" or "٣", which the URL, the Basic-auth
    # user name and the embedded CSMS (csms/ids.py) all refuse.
    if len(ident) > 48 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in ident):
        raise r.fail("id", "must be 1-48 letters, digits, '-', '_' or '.'")
    return StationConfig(
        id=ident,
        vendor=r.text("vendor", "edgepoint"),
        model=r.text("model", "edgepoint-kiosk"),
    )


def _chargepoint(r: _Reader) -> ChargePointConfig:
    url = r.text("csms_url")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise r.fail("csms_url", f"must be a ws:// or wss:// URL, got {url!r}")
    if parts.password:
        raise r.fail("csms_url", "must not carry a password; use auth_key_file")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as err:
        raise r.fail("csms_url", f"has a bad port: {err}") from err
    if "meter_value_sample_interval" in r.raw:
        raise r.fail(
            "meter_value_sample_interval", "has moved: set MeterValueSampleInterval in [ocpp]"
        )
    ca_file, cert, key = (
        r.optional_path(name) for name in ("ca_file", "client_cert_file", "client_key_file")
    )
    _check_tls_files(r, parts.scheme, ca_file, cert, key)
    return ChargePointConfig(
        csms_url=url.rstrip("/"),
        auth_key_file=r.path_("auth_key_file", "var/secrets/chargepoint.key"),
        response_timeout=r.number("response_timeout", float, 0.5, 300, 30.0),
        reconnect_max_s=r.number("reconnect_max_s", float, 0.1, 3600, 60.0),
        authorize_timeout_s=r.number("authorize_timeout_s", float, 0.1, 60, 3.0),
        ca_file=ca_file,
        client_cert_file=cert,
        client_key_file=key,
        outbox_max_messages=r.number("outbox_max_messages", int, 100, 10_000_000, 50_000),
    )


def _check_tls_files(
    r: _Reader, scheme: str, ca_file: Path | None, cert: Path | None, key: Path | None
) -> None:
    """TLS files only with wss://, a client certificate only with its key, a key kept private."""
    given = {"ca_file": ca_file, "client_cert_file": cert, "client_key_file": key}
    for name, path in given.items():
        if path is not None and scheme != "wss":
            raise r.fail(name, "only applies to a wss:// csms_url (TLS); csms_url is ws://")
    if (cert is None) != (key is None):
        missing, present = (
            ("client_key_file", "client_cert_file")
            if key is None
            else ("client_cert_file", "client_key_file")
        )
        raise r.fail(missing, f"is required with {present}: a client certificate needs its key")
    for name, path in given.items():
        if path is not None:
            r.existing_file(name, path)
    if key is not None:
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077:
            raise r.fail(
                "client_key_file",
                f"{key} is open to group or others (mode {mode:03o}); chmod 600 it",
            )


def _csms(r: _Reader) -> CsmsConfig:
    return CsmsConfig(
        enabled=r.get("enabled", bool, True),
        host=r.text("host", "127.0.0.1"),
        port=r.number("port", int, 0, 65535, 9000),
        heartbeat_interval=r.number("heartbeat_interval", int, 1, 86400, 300),
    )


def _hardware(r: _Reader) -> HardwareConfig:
    def pin(name: str, default: int) -> int:
        return r.number(name, int, 0, 27, default)  # BCM GPIO numbers on the 40-pin header

    return HardwareConfig(
        simulate=r.get("simulate", bool, True),
        serial_port=r.text("serial_port", "/dev/ttyUSB0"),
        serial_baudrate=r.number("serial_baudrate", int, 1200, 4_000_000, 115200),
        relay_pin=pin("relay_pin", 17),
        green_led_pin=pin("green_led_pin", 27),
        red_led_pin=pin("red_led_pin", 22),
        buzzer_pin=pin("buzzer_pin", 23),
        telemetry_timeout_s=r.number("telemetry_timeout_s", float, 0.5, 600, 10.0),
    )


def _connectors(
    path: Path, data: Mapping[str, Any], hardware: HardwareConfig
) -> tuple[ConnectorConfig, ...]:
    """The [[connector]] tables (named connector[1], connector[2]... in file order)."""
    tables = data.get("connector")
    others = {
        "hardware.green_led_pin": hardware.green_led_pin,
        "hardware.red_led_pin": hardware.red_led_pin,
        "hardware.buzzer_pin": hardware.buzzer_pin,
    }
    if tables is None:
        for other, pin in others.items():
            if pin == hardware.relay_pin:
                raise ConfigError(str(path), "hardware.relay_pin", f"is {other} too")
        return (ConnectorConfig(id=1, relay_pin=hardware.relay_pin, meter_channel=1),)
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(str(path), "connector", "must be [[connector]] tables")
    count = len(tables)
    connectors: list[ConnectorConfig] = []
    for position, table in enumerate(tables, start=1):
        name = f"connector[{position}]"
        r = _Reader(path, {name: table}, name)
        ident = r.get("id", int)
        # Unique ids within 1..N are exactly 1..N: OCPP numbers connectors without gaps.
        if not 1 <= ident <= count:
            raise r.fail(
                "id", f"must be between 1 and {count} (one per [[connector]]), got {ident}"
            )
        connector = ConnectorConfig(
            id=ident,
            relay_pin=r.number("relay_pin", int, 0, 27, _REQUIRED),
            meter_channel=r.number("meter_channel", int, 1, 8, ident),
        )
        r.finish()
        for number, earlier in enumerate(connectors, start=1):
            for field_ in ("id", "relay_pin", "meter_channel"):
                if getattr(earlier, field_) == getattr(connector, field_):
                    raise r.fail(field_, f"is connector[{number}]'s {field_} too")
        for other, pin in others.items():
            if pin == connector.relay_pin:
                raise r.fail("relay_pin", f"is {other} too")
        connectors.append(connector)
    return tuple(sorted(connectors, key=lambda c: c.id))


def _ocpp(
    path: Path, data: Mapping[str, Any], number_of_connectors: int
) -> tuple[tuple[str, str], ...]:
    """The [ocpp] table: OCPP configuration keys by their OCPP names, checked by the registry."""
    r = _Reader(path, data, "ocpp")
    values: list[tuple[str, str]] = []
    for name, value in r.raw.items():
        r.used.add(name)
        key = REGISTRY.get(name)
        if key is None:
            raise r.fail(name, _unknown_ocpp_key(name))
        if key.readonly:
            raise r.fail(name, "is read-only: the charge point reports it, nobody sets it")
        try:
            values.append((name, parse_value(key, _ocpp_text(r, key, value), number_of_connectors)))
        except InvalidValue as err:
            raise r.fail(name, str(err)) from err
    return tuple(values)


def _ocpp_text(r: _Reader, key: KeyDef, value: object) -> str:
    """A TOML value as the OCPP string it stands for; TOML's own types, as elsewhere."""
    got = type(value).__name__
    if key.type is KeyType.BOOL:
        if not isinstance(value, bool):
            raise r.fail(key.name, f"must be bool, got {got}")
        return "true" if value else "false"
    if key.type is KeyType.INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise r.fail(key.name, f"must be int, got {got}")
        return str(value)
    if key.type is KeyType.CSL:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            # An item holding a comma would read back as two: refuse it here.
            if any("," in item for item in value):
                raise r.fail(key.name, "items must not contain commas")
            return ",".join(value)
        if not isinstance(value, str):
            raise r.fail(
                key.name, f"must be a list of strings or a comma separated string, got {got}"
            )
        return value
    if not isinstance(value, str):
        raise r.fail(key.name, f"must be str, got {got}")
    return value


def _unknown_ocpp_key(name: str) -> str:
    close = difflib.get_close_matches(name, REGISTRY, n=1, cutoff=0.8)
    folded = [known for known in REGISTRY if known.casefold() == name.casefold()]
    hint = folded or close
    suffix = f"; did you mean {hint[0]}?" if hint else ""
    return f"is not an OCPP configuration key this charge point supports{suffix}"


def _simulation(r: _Reader) -> SimulationConfig:
    return SimulationConfig(
        charge_power_w=r.number("charge_power_w", float, 0, 400_000, 11_000.0),
        telemetry_interval_s=r.number("telemetry_interval_s", float, 0.01, 60, 1.0),
        start_energy_wh=r.number("start_energy_wh", int, 0, 2**40, 100_000),
    )


def load_config(path: Path = DEFAULT_PATH) -> Config:
    """Read and validate a config file; raise ConfigError naming file, key and reason."""
    # Absolute from the start, so every error (even "does not exist") names the same file.
    path = path.expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(str(path), "(file)", "does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), "(file)", f"cannot be read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), "(syntax)", str(err)) from err

    known = {
        "station",
        "chargepoint",
        "csms",
        "storage",
        "hardware",
        "simulation",
        "control",
        "log",
        "ocpp",
        "connector",
    }
    for table in data:
        if table not in known:
            raise ConfigError(str(path), table, "unknown table (misspelt?)")

    def section(table: str, build: Callable[[_Reader], T]) -> T:
        reader = _Reader(path, data, table)
        result = build(reader)
        reader.finish()
        return result

    log = _Reader(path, data, "log")
    level = log.text("level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise log.fail("level", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    log.finish()

    # In the shipped config.toml's order, so the error reported is usually the topmost.
    station = section("station", _station)
    chargepoint = section("chargepoint", _chargepoint)
    csms = section("csms", _csms)
    storage = section("storage", lambda r: StorageConfig(dir=r.path_("dir", "var")))
    hardware = section("hardware", _hardware)
    connectors = _connectors(path, data, hardware)
    return Config(
        path=path,
        station=station,
        chargepoint=chargepoint,
        csms=csms,
        storage=storage,
        hardware=hardware,
        simulation=section("simulation", _simulation),
        control=section(
            "control", lambda r: ControlConfig(socket=r.path_("socket", "var/edgepoint.sock"))
        ),
        log_level=level,
        connectors=connectors,
        ocpp=_ocpp(path, data, len(connectors)),
    )
