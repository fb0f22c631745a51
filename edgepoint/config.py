"""Load config.toml into frozen dataclasses; every error names the file, the key and the reason."""

from __future__ import annotations

import difflib
import grp
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edgepoint.chargepoint.settings import REGISTRY, InvalidValue, KeyDef, KeyType, parse_value
from edgepoint.charging.faults import Limits
from edgepoint.csms.route import parse_path_prefix
from edgepoint.csms.tls import ListenPolicyError, check_listen_policy, private_key_problem
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
    # Where SecurityProfile 2 and 3 connect when csms_url is ws:// (default: csms_url over
    # wss://), and how many failed attempts with new security settings (a raised
    # SecurityProfile, a new AuthorizationKey) bring the previous ones back.
    csms_tls_url: str | None = None
    fallback_attempts: int = 5


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    """Firmware updates and diagnostics uploads ([firmware]; chargepoint/firmware.py)."""

    # Run as `install_hook <firmware file>`: exit 0 = installed, 10 = installed and
    # edgepoint must restart to run it, anything else = failed. None: updates are refused.
    install_hook: Path | None = None
    hook_timeout_s: float = 900.0
    # Install only once no connector has a session (else at once: the hook decides).
    wait_for_sessions: bool = True
    max_download_mb: int = 512
    transfer_timeout_s: float = 60.0  # per network operation of a download or an upload


@dataclass(frozen=True, slots=True)
class CsmsConfig:
    """The embedded mini-CSMS."""

    enabled: bool
    host: str
    port: int
    heartbeat_interval: int
    path_prefix: str = "/ocpp"  # chargers connect to <path_prefix>/<id>
    tls_cert_file: Path | None = None  # server certificate (security profile 2)
    tls_key_file: Path | None = None  # its private key; mode 0600 or stricter
    tls_client_ca_file: Path | None = None  # CA of client certificates (profile 3)
    require_auth: bool = True  # false only on a loopback host
    allow_plaintext_on_network: bool = False  # ws:// beyond loopback, knowingly
    # Per-connection limits (csms/limiter.py): largest frame, sampled values per
    # MeterValues, answered calls per second per charger, bad frames a minute before
    # the charger is disconnected.
    max_frame_bytes: int = 64 * 1024
    max_sampled_values: int = 500
    max_calls_per_s: float = 25.0
    max_bad_frames: int = 20
    # The CSMS runs as a child process of the daemon; this is its own control socket
    # (mode 0600: only the daemon talks to it, and forwards what clients may ask).
    control_socket: Path = Path("var/csms.sock")
    # Load management: the site's power limit shared by charging connectors (None: off).
    site_limit_w: int | None = None
    min_connector_w: int = 1380
    # Retention of meter values, closed transactions and status history (None: forever).
    retention_meter_values_days: int | None = 90
    retention_transactions_days: int | None = 730
    retention_status_days: int | None = 14


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where the SQLite files live, and how they are kept small and whole (storage/care.py)."""

    dir: Path
    # Days edgepoint.db keeps dead letters (incl. quarantined rows) and closed sessions
    # no message still needs; None: forever.
    dead_letters_days: int | None = 90
    sessions_days: int | None = 90
    # Below this much free space (MiB) on the storage file system, data is thinned.
    min_free_mb: int = 64
    # Hours between online backups of both databases into storage.dir/backups; None: off.
    backup_interval_h: int | None = 24

    @property
    def chargepoint_db(self) -> Path:
        return self.dir / "edgepoint.db"

    @property
    def csms_db(self) -> Path:
        return self.dir / "csms.db"


@dataclass(frozen=True, slots=True)
class ClockConfig:
    """How far the system clock is trusted ([clock]; clock.py)."""

    # True: the system clock is right without NTP (a battery-backed RTC); otherwise it
    # counts as set only once NTP synchronised it or the CSMS's currentTime was applied.
    trust_rtc: bool = False


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
    relay_active_high: bool = True  # False: the relay board closes on a low pin
    # The ESP32 opens its own relays when the Pi's watchdog pings stop for this long.
    esp32_watchdog_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RfidConfig:
    """The PN532 card reader ([rfid]): its bus, its pins, and how taps are told apart."""

    interface: str = "i2c"  # i2c, spi or uart, as the breakout's mode jumpers are set
    spi_cs_pin: int = 5  # BCM GPIO used as the SPI chip select
    uart_port: str = "/dev/serial0"  # the serial port of a PN532 in UART (HSU) mode
    uart_baudrate: int = 115200
    irq_pin: int | None = None  # BCM GPIO wired to the PN532's IRQ; None: poll the status
    reset_pin: int | None = None  # BCM GPIO wired to RSTPDN; None: not wired
    req_pin: int | None = None  # I2C only: BCM GPIO wired to P32/H_REQ; None: not wired
    poll_interval_s: float = 0.2  # without IRQ: how often the chip's status is read
    removal_s: float = 1.0  # a card missed this long and shown again is a new tap
    health_check_s: float = 5.0  # while idle, how often the chip is asked who it is


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Interlock thresholds ([safety]; charging/faults.py, docs/interlocks.md)."""

    # telemetry_timeout_s is [hardware]'s; every other limit is [safety]'s.
    limits: Limits = field(default_factory=Limits)
    loop_stall_s: float = 5.0  # kiosk loop without progress this long: relays opened


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One connector of the kiosk: its OCPP id, the relay that powers it, its meter."""

    id: int  # OCPP connectorId, 1..N without gaps
    relay_pin: int  # BCM GPIO number of its relay
    meter_channel: int  # ESP32 meter channel (the `ch` field of telemetry frames; 1 if absent)
    # Its supply, for smart charging's W <-> A (charging/schedule.py): the nominal
    # phase-to-neutral voltage and the phases wired (the ESP32 meters one).
    voltage_v: float = 230.0
    phases: int = 1


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
    # Who may run hardware commands besides root and the daemon's user; None: the
    # group the daemon runs as. Reading the status only takes access to the socket file.
    group: str | None = None
    max_clients: int = 16


@dataclass(frozen=True, slots=True)
class FirebaseConfig:
    """Live state to the Realtime Database, fleet cards from it (docs/cloud.md)."""

    enabled: bool = False
    # https://<db>.firebaseio.com (or any https URL of the database); with an emulator,
    # FIREBASE_DATABASE_EMULATOR_HOST set, or http://host:port/?ns=<namespace>.
    database_url: str = ""
    credentials_file: Path | None = None  # service-account JSON, mode 0600; none for emulators
    publish_interval_s: float = 5.0  # at most one write per this for telemetry-only changes
    cards_poll_interval_s: float = 60.0  # how often the fleet's cards are read
    request_timeout_s: float = 10.0  # per HTTP request to Firebase
    finished_hold_s: float = 5.0  # FINISHED stays this long before STANDBY
    uid_salt: str | None = None  # publish a salted hash of the card instead of ****C3D4
    cards: bool = True  # merge fleet cards into the local list and the embedded CSMS


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """The signed ledger of sessions and where it is uploaded (docs/cloud.md)."""

    enabled: bool = False
    key_file: Path = Path("var/secrets/ledger.key")  # Ed25519 key, made 0600 at first start
    rtdb: bool = True  # upload to /ledger/<station key> when [firebase] is enabled
    endpoint_url: str | None = None  # https URL of the ledger endpoint (optional)
    endpoint_token_file: Path | None = None  # its bearer token, mode 0600
    endpoint_ca_file: Path | None = None  # CA bundle for the endpoint's certificate
    upload_batch: int = 100  # entries per upload request


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
    rfid: RfidConfig = field(default_factory=RfidConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    firebase: FirebaseConfig = field(default_factory=FirebaseConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)


DEFAULT_PATH = Path("config.toml")
T = TypeVar("T")

# Each key: (type check + conversion, default or _REQUIRED). A default of _REQUIRED
# makes the key mandatory; paths resolve relative to the config file's folder so a
# checkout works from anywhere.
_REQUIRED: Any = object()


SYSTEM_CONFIG_ROOT = Path("/etc")


def _installed_base(config_path: Path, runtime: bool) -> Path | None:
    """Where an installed system keeps state (runtime files): the directory systemd
    gave the unit (StateDirectory=, RuntimeDirectory=), or, for a config under /etc/<name>/
    read by anyone else (the CLI over SSH), /var/lib/<name> (/run/<name>), the same
    place; None for a config anywhere else (a checkout)."""
    variable = "RUNTIME_DIRECTORY" if runtime else "STATE_DIRECTORY"
    first = os.environ.get(variable, "").split(":")[0]
    if first and Path(first).is_absolute():
        return Path(first)
    folder = config_path.absolute().parent
    if folder.parent == SYSTEM_CONFIG_ROOT:
        return Path("/run" if runtime else "/var/lib") / folder.name
    return None


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

    def path_(self, name: str, default: Any = _REQUIRED, *, runtime: bool = False) -> Path:
        """A path key: relative to the config file's folder. A default under `var/` of
        an installed system goes where systemd keeps the unit's state (or, for sockets,
        its runtime files) instead: next to /etc/edgepoint/config.toml it would land in a
        folder ProtectSystem=strict keeps read-only, and the daemon would crash-loop."""
        if name not in self.raw and isinstance(default, str):
            base = _installed_base(self.path, runtime)
            if base is not None and Path(default).parts[:1] == ("var",):
                return base.joinpath(*Path(default).parts[1:])
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
    tls_url = r.text("csms_tls_url") if "csms_tls_url" in r.raw else None
    if tls_url is not None:
        tls_parts = urlsplit(tls_url)
        if tls_parts.scheme != "wss" or not tls_parts.hostname or tls_parts.password:
            raise r.fail(
                "csms_tls_url", f"must be a wss:// URL without a password, got {tls_url!r}"
            )
        tls_url = tls_url.rstrip("/")
    ca_file, cert, key = (
        r.optional_path(name) for name in ("ca_file", "client_cert_file", "client_key_file")
    )
    # TLS files also serve a ws:// csms_url that security profiles 2 and 3 leave for
    # csms_tls_url.
    _check_tls_files(r, "wss" if tls_url else parts.scheme, ca_file, cert, key)
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
        csms_tls_url=tls_url,
        fallback_attempts=r.number("fallback_attempts", int, 1, 1000, 5),
    )


def _firmware(r: _Reader) -> FirmwareConfig:
    hook = r.optional_path("install_hook")
    if hook is not None and not (hook.is_file() and os.access(hook, os.X_OK)):
        raise r.fail("install_hook", f"{hook} is not an executable file")
    return FirmwareConfig(
        install_hook=hook,
        hook_timeout_s=r.number("hook_timeout_s", float, 1, 86_400, 900.0),
        wait_for_sessions=r.get("wait_for_sessions", bool, True),
        max_download_mb=r.number("max_download_mb", int, 1, 65_536, 512),
        transfer_timeout_s=r.number("transfer_timeout_s", float, 1, 3600, 60.0),
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


def _optional_watts(r: _Reader, name: str) -> int | None:
    if name not in r.raw:
        r.used.add(name)
        return None
    value: int = r.number(name, int, 1, 100_000_000, None)
    return value


def _retention(r: _Reader, name: str, default: int) -> int | None:
    """Days to keep; 0 keeps forever."""
    days: int = r.number(name, int, 0, 36_500, default)
    return days or None


def _csms(r: _Reader) -> CsmsConfig:
    prefix = r.text("path_prefix", "/ocpp")
    try:
        parse_path_prefix(prefix)
    except ValueError as err:
        raise r.fail("path_prefix", str(err)) from err
    cert, key, client_ca = (
        r.optional_path(name) for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
    )
    if (cert is None) != (key is None):
        missing, present = (
            ("tls_key_file", "tls_cert_file") if key is None else ("tls_cert_file", "tls_key_file")
        )
        raise r.fail(missing, f"is required with {present}: a certificate needs its key")
    if client_ca is not None and cert is None:
        raise r.fail(
            "tls_client_ca_file",
            "needs tls_cert_file and tls_key_file: client certificates only work over TLS",
        )
    for name, path in (
        ("tls_cert_file", cert),
        ("tls_key_file", key),
        ("tls_client_ca_file", client_ca),
    ):
        if path is not None:
            r.existing_file(name, path)
    if key is not None and (problem := private_key_problem(key)) is not None:
        raise r.fail("tls_key_file", problem)
    config = CsmsConfig(
        enabled=r.get("enabled", bool, True),
        host=r.text("host", "127.0.0.1"),
        port=r.number("port", int, 0, 65535, 9000),
        heartbeat_interval=r.number("heartbeat_interval", int, 1, 86400, 300),
        path_prefix=prefix,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=client_ca,
        require_auth=r.get("require_auth", bool, True),
        allow_plaintext_on_network=r.get("allow_plaintext_on_network", bool, False),
        max_frame_bytes=r.number("max_frame_bytes", int, 4096, 16 * 1024 * 1024, 64 * 1024),
        max_sampled_values=r.number("max_sampled_values", int, 1, 100_000, 500),
        max_calls_per_s=r.number("max_calls_per_s", float, 0.1, 10_000, 25.0),
        max_bad_frames=r.number("max_bad_frames", int, 1, 100_000, 20),
        control_socket=r.path_("control_socket", "var/csms.sock", runtime=True),
        site_limit_w=_optional_watts(r, "site_limit_w"),
        min_connector_w=r.number("min_connector_w", int, 0, 1_000_000, 1380),
        retention_meter_values_days=_retention(r, "retention_meter_values_days", 90),
        retention_transactions_days=_retention(r, "retention_transactions_days", 730),
        retention_status_days=_retention(r, "retention_status_days", 14),
    )
    try:
        if config.enabled:  # a server that does not run listens nowhere
            check_listen_policy(
                config.host,
                tls=cert is not None,
                require_auth=config.require_auth,
                allow_plaintext_on_network=config.allow_plaintext_on_network,
            )
    except ListenPolicyError as err:
        raise ConfigError(str(r.path), err.key, err.reason) from err
    return config


def _storage(r: _Reader) -> StorageConfig:
    return StorageConfig(
        dir=r.path_("dir", "var"),
        dead_letters_days=_retention(r, "dead_letters_days", 90),
        sessions_days=_retention(r, "sessions_days", 90),
        min_free_mb=r.number("min_free_mb", int, 1, 1_000_000, 64),
        backup_interval_h=r.number("backup_interval_h", int, 0, 8760, 24) or None,
    )


def _hardware(r: _Reader) -> HardwareConfig:
    def pin(name: str, default: int) -> int:
        return r.number(name, int, 0, 27, default)  # BCM GPIO numbers on the 40-pin header

    return HardwareConfig(
        simulate=r.get("simulate", bool, True),
        serial_port=r.text("serial_port", "/dev/edgepoint-esp32"),
        serial_baudrate=r.number("serial_baudrate", int, 1200, 4_000_000, 115200),
        relay_pin=pin("relay_pin", 17),
        green_led_pin=pin("green_led_pin", 27),
        red_led_pin=pin("red_led_pin", 22),
        buzzer_pin=pin("buzzer_pin", 23),
        telemetry_timeout_s=r.number("telemetry_timeout_s", float, 0.5, 600, 10.0),
        relay_active_high=r.get("relay_active_high", bool, True),
        esp32_watchdog_s=r.number("esp32_watchdog_s", float, 1, 600, 10.0),
    )


# GPIOs a PN532 interface takes for its bus (BCM): they cannot drive a relay or LED.
_BUS_PINS = {"i2c": (2, 3), "spi": (7, 8, 9, 10, 11), "uart": (14, 15)}


def _rfid(
    r: _Reader, hardware: HardwareConfig, connectors: tuple[ConnectorConfig, ...]
) -> RfidConfig:
    interface = r.text("interface", "i2c")
    if interface not in _BUS_PINS:
        raise r.fail("interface", f"must be i2c, spi or uart, got {interface!r}")

    def optional_pin(name: str) -> int | None:
        return r.number(name, int, 0, 27, 0) if name in r.raw else None

    config = RfidConfig(
        interface=interface,
        spi_cs_pin=r.number("spi_cs_pin", int, 0, 27, 5),
        uart_port=r.text("uart_port", "/dev/serial0"),
        uart_baudrate=r.number("uart_baudrate", int, 9600, 1_000_000, 115200),
        irq_pin=optional_pin("irq_pin"),
        reset_pin=optional_pin("reset_pin"),
        req_pin=optional_pin("req_pin"),
        poll_interval_s=r.number("poll_interval_s", float, 0.01, 1.0, 0.2),
        removal_s=r.number("removal_s", float, 0.1, 30, 1.0),
        health_check_s=r.number("health_check_s", float, 1, 3600, 5.0),
    )
    if config.req_pin is not None and interface != "i2c":
        raise r.fail("req_pin", 'only applies to interface = "i2c"')
    # A held card is read again a poll or two after each look; missing it for
    # less than that must never look like a removal.
    if config.removal_s < 3 * config.poll_interval_s - 1e-9:  # 3 * 0.2 is 0.6000000000000001
        raise r.fail("removal_s", "must be at least 3 times poll_interval_s")
    taken = {
        "hardware.green_led_pin": hardware.green_led_pin,
        "hardware.red_led_pin": hardware.red_led_pin,
        "hardware.buzzer_pin": hardware.buzzer_pin,
        **{f"connector {c.id}'s relay_pin": c.relay_pin for c in connectors},
    }
    mine = {"irq_pin": config.irq_pin, "reset_pin": config.reset_pin, "req_pin": config.req_pin}
    if interface == "spi":
        mine["spi_cs_pin"] = config.spi_cs_pin
    for name, pin in mine.items():
        if pin is None:
            continue
        if pin in _BUS_PINS[interface]:
            raise r.fail(name, f"GPIO{pin} belongs to the {interface.upper()} bus")
        for other, used in [*taken.items(), *((f"rfid.{n}", p) for n, p in mine.items())]:
            if used == pin and other != f"rfid.{name}":
                raise r.fail(name, f"GPIO{pin} is {other} too")
    for other, used in taken.items():
        if used in _BUS_PINS[interface]:
            raise ConfigError(
                str(r.path), "rfid.interface", f"{interface} needs GPIO{used}, which is {other}"
            )
    return config


def _safety(r: _Reader, telemetry_timeout_s: float) -> SafetyConfig:
    d = Limits()
    limits = Limits(
        max_temperature_c=r.number("max_temperature_c", float, 20, 150, d.max_temperature_c),
        temperature_hysteresis_c=r.number(
            "temperature_hysteresis_c", float, 0, 50, d.temperature_hysteresis_c
        ),
        max_current_a=r.number("max_current_a", float, 1, 1000, d.max_current_a),
        current_hysteresis_a=r.number(
            "current_hysteresis_a", float, 0, 100, d.current_hysteresis_a
        ),
        min_voltage_v=r.number("min_voltage_v", float, 0, 1000, d.min_voltage_v),
        max_voltage_v=r.number("max_voltage_v", float, 1, 1000, d.max_voltage_v),
        voltage_hysteresis_v=r.number(
            "voltage_hysteresis_v", float, 0, 100, d.voltage_hysteresis_v
        ),
        telemetry_timeout_s=telemetry_timeout_s,
        relay_feedback_s=r.number("relay_feedback_s", float, 0.1, 60, d.relay_feedback_s),
        clear_after_s=r.number("clear_after_s", float, 0, 3600, d.clear_after_s),
    )
    # A band that a healthy reading cannot reach would never clear.
    if limits.temperature_hysteresis_c >= limits.max_temperature_c:
        raise r.fail("temperature_hysteresis_c", "must be below max_temperature_c")
    if limits.current_hysteresis_a >= limits.max_current_a:
        raise r.fail("current_hysteresis_a", "must be below max_current_a")
    if limits.min_voltage_v + 2 * limits.voltage_hysteresis_v >= limits.max_voltage_v:
        raise r.fail(
            "max_voltage_v", "must exceed min_voltage_v by more than twice voltage_hysteresis_v"
        )
    return SafetyConfig(limits, loop_stall_s=r.number("loop_stall_s", float, 1, 600, 5.0))


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
            voltage_v=r.number("voltage_v", float, 100, 300, 230.0),
            phases=r.number("phases", int, 1, 3, 1),
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
        charge_power_w=r.number("charge_power_w", float, 0, 400_000, 7_360.0),
        telemetry_interval_s=r.number("telemetry_interval_s", float, 0.01, 60, 1.0),
        start_energy_wh=r.number("start_energy_wh", int, 0, 2**40, 100_000),
    )


def _control(r: _Reader) -> ControlConfig:
    group = r.text("group") if "group" in r.raw else None
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise r.fail("group", f"there is no group {group!r} on this system") from None
    return ControlConfig(
        socket=r.path_("socket", "var/edgepoint.sock", runtime=True),
        group=group,
        max_clients=r.number("max_clients", int, 1, 1024, 16),
    )


def _private_file(r: _Reader, name: str) -> Path | None:
    """A secret's file: it must exist and be readable by its owner only."""
    path = r.optional_path(name)
    if path is not None:
        r.existing_file(name, path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise r.fail(name, f"{path} is open to group or others (mode {mode:03o}); chmod 600 it")
    return path


def _firebase(r: _Reader) -> FirebaseConfig:
    from edgepoint.cloud.rtdb import uses_emulator

    enabled = r.get("enabled", bool, False)
    url = r.text("database_url") if enabled or "database_url" in r.raw else ""
    if url:
        parts = urlsplit(url)
        emulator = parts.scheme == "http" and "ns=" in parts.query
        if not parts.hostname or not (parts.scheme == "https" or emulator):
            raise r.fail(
                "database_url",
                "must be an https:// URL (or http://host:port/?ns=NAME for an emulator),"
                f" got {url!r}",
            )
    credentials = _private_file(r, "credentials_file")
    if enabled and credentials is None and not uses_emulator(url):
        raise r.fail(
            "credentials_file",
            "is required (a service-account JSON) unless FIREBASE_DATABASE_EMULATOR_HOST is set",
        )
    salt = r.text("uid_salt") if "uid_salt" in r.raw else None
    return FirebaseConfig(
        enabled=enabled,
        database_url=url,
        credentials_file=credentials,
        publish_interval_s=r.number("publish_interval_s", float, 0.1, 3600, 5.0),
        cards_poll_interval_s=r.number("cards_poll_interval_s", float, 1, 86400, 60.0),
        request_timeout_s=r.number("request_timeout_s", float, 0.5, 120, 10.0),
        finished_hold_s=r.number("finished_hold_s", float, 0, 600, 5.0),
        uid_salt=salt,
        cards=r.get("cards", bool, True),
    )


def _ledger(r: _Reader) -> LedgerConfig:
    url = r.text("endpoint_url") if "endpoint_url" in r.raw else None
    token = _private_file(r, "endpoint_token_file")
    ca_file = r.optional_path("endpoint_ca_file")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise r.fail("endpoint_url", f"must be an https:// URL, got {url!r}")
        if token is None:
            raise r.fail("endpoint_token_file", "is required with endpoint_url (a bearer token)")
    if ca_file is not None:
        r.existing_file("endpoint_ca_file", ca_file)
    key_file = r.path_("key_file", "var/secrets/ledger.key")
    if key_file.exists() and (mode := stat.S_IMODE(key_file.stat().st_mode)) & 0o077:
        raise r.fail(
            "key_file", f"{key_file} is open to group or others (mode {mode:03o}); chmod 600 it"
        )
    return LedgerConfig(
        enabled=r.get("enabled", bool, True),
        key_file=key_file,
        rtdb=r.get("rtdb", bool, True),
        endpoint_url=url,
        endpoint_token_file=token,
        endpoint_ca_file=ca_file,
        upload_batch=r.number("upload_batch", int, 1, 500, 100),
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
        "rfid",
        "safety",
        "firebase",
        "ledger",
        "clock",
        "firmware",
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
    storage = section("storage", _storage)
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
        control=section("control", _control),
        log_level=level,
        connectors=connectors,
        ocpp=_ocpp(path, data, len(connectors)),
        rfid=section("rfid", lambda r: _rfid(r, hardware, connectors)),
        safety=section("safety", lambda r: _safety(r, hardware.telemetry_timeout_s)),
        firebase=section("firebase", _firebase),
        ledger=section("ledger", _ledger),
        firmware=section("firmware", _firmware),
        clock=section("clock", lambda r: ClockConfig(trust_rtc=r.get("trust_rtc", bool, False))),
    )
