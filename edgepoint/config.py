"""Load config.toml into frozen dataclasses; every error names the file, the key and the reason."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
    meter_value_sample_interval: int
    response_timeout: float
    reconnect_max_s: float


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
    return ChargePointConfig(
        csms_url=url.rstrip("/"),
        auth_key_file=r.path_("auth_key_file", "var/secrets/chargepoint.key"),
        meter_value_sample_interval=r.number("meter_value_sample_interval", int, 1, 86400, 60),
        response_timeout=r.number("response_timeout", float, 0.5, 300, 30.0),
        reconnect_max_s=r.number("reconnect_max_s", float, 0.1, 3600, 60.0),
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

    return Config(
        path=path,
        station=section("station", _station),
        chargepoint=section("chargepoint", _chargepoint),
        csms=section("csms", _csms),
        storage=section("storage", lambda r: StorageConfig(dir=r.path_("dir", "var"))),
        hardware=section("hardware", _hardware),
        simulation=section("simulation", _simulation),
        control=section(
            "control", lambda r: ControlConfig(socket=r.path_("socket", "var/edgepoint.sock"))
        ),
        log_level=level,
    )
