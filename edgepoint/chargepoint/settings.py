"""OCPP 1.6 configuration keys (spec chapter 9): registry, value rules, the values in effect."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, NamedTuple

from edgepoint.errors import ProtocolError

log = logging.getLogger(__name__)

# ChangeConfiguration.req and KeyValue carry CiString50 keys and CiString500 values.
MAX_KEY_LEN = 50
MAX_VALUE_LEN = 500


class KeyType(StrEnum):
    """How a key's value string is read (spec chapter 9's "Type" row)."""

    BOOL = "boolean"
    INT = "integer"
    CSL = "CSL"  # comma separated list
    STR = "string"


class ConfigurationStatus(StrEnum):
    """ChangeConfiguration.conf status; the values are OCPP's, so they go on the wire as is."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


class Profile(StrEnum):
    """The feature profiles this charge point implements (SupportedFeatureProfiles)."""

    CORE = "Core"
    LOCAL_AUTH_LIST = "LocalAuthListManagement"
    REMOTE_TRIGGER = "RemoteTrigger"  # has no configuration keys of its own
    FIRMWARE_MANAGEMENT = "FirmwareManagement"
    SMART_CHARGING = "SmartCharging"
    RESERVATION = "Reservation"


@dataclass(frozen=True, slots=True)
class KeyDef:
    """One configuration key: its type, who may write it, its default and what it accepts."""

    name: str
    type: KeyType
    readonly: bool
    default: str  # the OCPP string form
    profile: Profile = Profile.CORE
    # Accepted, but the running code only picks the new value up at the next start.
    reboot_required: bool = False
    low: int | None = None  # INT: inclusive bounds
    high: int | None = None
    members: frozenset[str] = frozenset()  # CSL: the allowed items (empty: see parse_value)
    max_items: int | None = None  # CSL: reported as the read-only <name>MaxLength key
    # Write-only (the security whitepaper's AuthorizationKey): GetConfiguration names the
    # key but never shows its value.
    writeonly: bool = False


class InvalidValue(ValueError):
    """A value a key does not accept; the message says why, for the log or the config error."""


class TooManyKeysError(ProtocolError):
    """A GetConfiguration.req named more keys than GetConfigurationMaxKeys allows."""

    def __init__(self, requested: int, limit: int) -> None:
        self.requested = requested
        self.limit = limit
        super().__init__(f"GetConfiguration asked for {requested} keys; at most {limit} allowed")


# What the ESP32 meter measures (hardware/PROTOCOL.md: energy, power, current, voltage,
# temperature), so the only measurands we can put in a MeterValues. One meter per connector
# on one phase: phase-qualified forms (Voltage.L1) would promise readings we do not have.
MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "Temperature",
)
PHASE_ROTATIONS = frozenset({"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"})

_R, _RW = True, False
_DAY_S = 86_400


def _seconds(name: str, default: int, low: int = 0, high: int = _DAY_S) -> KeyDef:
    return KeyDef(name, KeyType.INT, _RW, str(default), low=low, high=high)


def _flag(name: str, default: bool, profile: Profile = Profile.CORE) -> KeyDef:
    return KeyDef(name, KeyType.BOOL, _RW, "true" if default else "false", profile=profile)


def _measurands(name: str, default: tuple[str, ...]) -> KeyDef:
    return KeyDef(
        name,
        KeyType.CSL,
        _RW,
        ",".join(default),
        members=frozenset(MEASURANDS),
        max_items=len(MEASURANDS),
    )


def _fixed(name: str, value: int, profile: Profile = Profile.CORE) -> KeyDef:
    return KeyDef(name, KeyType.INT, _R, str(value), profile=profile)


_DEFINITIONS = (
    # -- Core (9.1) -------------------------------------------------------------------
    # A card nobody can check while offline does not charge: the kiosk sells energy.
    _flag("AllowOfflineTxForUnknownId", False),
    # Cards the CSMS accepted keep working through an outage.
    _flag("AuthorizationCacheEnabled", True),
    # R or RW is ours to choose; RW, and off by default: the CSMS that sends a
    # RemoteStartTransaction has just decided about the id tag itself.
    _flag("AuthorizeRemoteTxRequests", False),
    KeyDef("BlinkRepeat", KeyType.INT, _RW, "3", low=0, high=20),
    # 0 = no clock-aligned data (the spec's convention).
    _seconds("ClockAlignedDataInterval", 0),
    # From Preparing (card tapped) until the attempt is dropped if no car draws power.
    _seconds("ConnectionTimeOut", 60, low=1, high=3600),
    # Its default ("<id>.NotApplicable" per connector: one single-phase meter each) and
    # the MaxLength (connectors + the grid's index 0) follow the connector count; see Settings.
    KeyDef("ConnectorPhaseRotation", KeyType.CSL, _RW, "1.NotApplicable"),
    _fixed("ConnectorPhaseRotationMaxLength", 2),
    # At least the number of keys below, so a CSMS can name every key in one request.
    _fixed("GetConfigurationMaxKeys", 50),
    _seconds("HeartbeatInterval", 300, low=1),
    # The status LEDs are plain on/off GPIOs: any value above 0 means on.
    KeyDef("LightIntensity", KeyType.INT, _RW, "100", low=0, high=100),
    # The local list and the cache decide while offline: a kiosk must charge without internet.
    _flag("LocalAuthorizeOffline", True),
    # Online, the CSMS decides (it may have blocked a card since the list was sent).
    _flag("LocalPreAuthorize", False),
    # In Wh; only matters with StopTransactionOnInvalidId = false.
    KeyDef("MaxEnergyOnInvalidId", KeyType.INT, _RW, "0", low=0, high=1_000_000),
    _measurands("MeterValuesAlignedData", ("Energy.Active.Import.Register",)),
    _fixed("MeterValuesAlignedDataMaxLength", len(MEASURANDS)),
    _measurands("MeterValuesSampledData", MEASURANDS),
    _fixed("MeterValuesSampledDataMaxLength", len(MEASURANDS)),
    # 0 = no sampled MeterValues (the spec's convention).
    _seconds("MeterValueSampleInterval", 60),
    _seconds("MinimumStatusDuration", 0, high=3600),
    _fixed("NumberOfConnectors", 1),  # the number of [[connector]] tables; see Settings
    KeyDef("ResetRetries", KeyType.INT, _RW, "3", low=0, high=10),
    _flag("StopTransactionOnEVSideDisconnect", True),
    # Stop charging a card the CSMS rejects after the start: whoever pays must be known.
    _flag("StopTransactionOnInvalidId", True),
    # Empty: StopTransaction carries no transactionData. It is billing and is never given
    # up, so it stays small; the same readings went out durably as MeterValues already.
    _measurands("StopTxnAlignedData", ()),
    _fixed("StopTxnAlignedDataMaxLength", len(MEASURANDS)),
    _measurands("StopTxnSampledData", ()),
    _fixed("StopTxnSampledDataMaxLength", len(MEASURANDS)),
    KeyDef("SupportedFeatureProfiles", KeyType.CSL, _R, ",".join(Profile)),
    # Tries the CSMS refuses (CallError) before a transaction message is dead-lettered.
    # StartTransaction/StopTransaction are billing and never given up (DESIGN invariant 2):
    # past the attempts they keep waiting and raise an alarm.
    KeyDef("TransactionMessageAttempts", KeyType.INT, _RW, "3", low=1, high=100),
    _seconds("TransactionMessageRetryInterval", 60, low=1, high=3600),
    _flag("UnlockConnectorOnEVSideDisconnect", True),
    # 0 = we send no pings (the spec's convention); a dead link shows within 2 intervals.
    _seconds("WebSocketPingInterval", 60, high=3600),
    # -- Local Auth List Management (9.2) ---------------------------------------------
    _flag("LocalAuthListEnabled", True, Profile.LOCAL_AUTH_LIST),
    # SQLite holds far more; 10 000 cards covers a large site and keeps a Full update quick.
    _fixed("LocalAuthListMaxLength", 10_000, Profile.LOCAL_AUTH_LIST),
    # About 100 kB of JSON per SendLocalList with 20-character ids: far below the
    # WebSocket frame limit, and quick to schema-validate on a Pi.
    _fixed("SendLocalListMaxLength", 1_000, Profile.LOCAL_AUTH_LIST),
    # -- Firmware Management ----------------------------------------------------------
    # chargepoint/transfer.py: urllib and ftplib.
    KeyDef(
        "SupportedFileTransferProtocols",
        KeyType.CSL,
        _R,
        "FTP,FTPS,HTTP,HTTPS",
        profile=Profile.FIRMWARE_MANAGEMENT,
    ),
    # -- Security Whitepaper edition 3 (no feature profile of its own) ---------------------
    # Several CSMS roots may be installed side by side (a new one before the old expires).
    KeyDef("AdditionalRootCertificateCheck", KeyType.BOOL, _R, "false"),
    # The Basic auth password (profiles 1 and 2); empty: chargepoint.auth_key_file's.
    # Never readable; its rules (16-40 characters) are chargepoint/security.py's guard.
    KeyDef("AuthorizationKey", KeyType.STR, _RW, "", writeonly=True),
    _fixed("CertificateSignedMaxChainSize", 10_000),  # CertificateSigned.req's schema limit
    _fixed("CertificateStoreMaxLength", 20),  # root certificates, both kinds together
    KeyDef("CpoName", KeyType.STR, _RW, ""),  # O of the charge point certificate's CSR
    # 0-3, only ever raised (security.py's guard); the default follows the configuration
    # (app.py): wss:// with a client certificate is 3, wss:// 2, a key file 1.
    KeyDef("SecurityProfile", KeyType.INT, _RW, "0", low=0, high=3),
    # -- Smart Charging (9.4; charging/schedule.py) ---------------------------------------
    # Enough levels to stack a site plan, a tariff and a per-session limit, with room.
    _fixed("ChargeProfileMaxStackLevel", 10, Profile.SMART_CHARGING),
    # Limits are applied in A (the ESP32's pilot); W converts with each connector's
    # supply ([[connector]] voltage_v and phases).
    KeyDef(
        "ChargingScheduleAllowedChargingRateUnit",
        KeyType.CSL,
        _R,
        "Current,Power",
        profile=Profile.SMART_CHARGING,
    ),
    # A day in half-hour slots (tariff periods).
    _fixed("ChargingScheduleMaxPeriods", 48, Profile.SMART_CHARGING),
    # The connectors' phases are wired; nothing switches them during a session.
    KeyDef(
        "ConnectorSwitch3to1PhaseSupported",
        KeyType.BOOL,
        _R,
        "false",
        profile=Profile.SMART_CHARGING,
    ),
    # Every purpose and connector together (TxProfiles included).
    _fixed("MaxChargingProfilesInstalled", 20, Profile.SMART_CHARGING),
    # -- Reservation (9.5) -------------------------------------------------------------
    # A reservation for any connector keeps one free for the card (kiosk.py).
    KeyDef("ReserveConnectorZeroSupported", KeyType.BOOL, _R, "true", profile=Profile.RESERVATION),
)

# Every key this charge point knows, by its exact OCPP name; read-only at run time.
REGISTRY: Mapping[str, KeyDef] = MappingProxyType({d.name: d for d in _DEFINITIONS})

# The keys a typed accessor may read; mypy rejects a misspelt or mistyped name.
# A test checks that these lists and the registry agree.
BoolKey = Literal[
    "AllowOfflineTxForUnknownId",
    "AuthorizationCacheEnabled",
    "AuthorizeRemoteTxRequests",
    "LocalAuthorizeOffline",
    "LocalPreAuthorize",
    "StopTransactionOnEVSideDisconnect",
    "StopTransactionOnInvalidId",
    "UnlockConnectorOnEVSideDisconnect",
    "LocalAuthListEnabled",
    "AdditionalRootCertificateCheck",
    "ConnectorSwitch3to1PhaseSupported",
    "ReserveConnectorZeroSupported",
]
IntKey = Literal[
    "BlinkRepeat",
    "ClockAlignedDataInterval",
    "ConnectionTimeOut",
    "ConnectorPhaseRotationMaxLength",
    "GetConfigurationMaxKeys",
    "HeartbeatInterval",
    "LightIntensity",
    "MaxEnergyOnInvalidId",
    "MeterValuesAlignedDataMaxLength",
    "MeterValuesSampledDataMaxLength",
    "MeterValueSampleInterval",
    "MinimumStatusDuration",
    "NumberOfConnectors",
    "ResetRetries",
    "StopTxnAlignedDataMaxLength",
    "StopTxnSampledDataMaxLength",
    "TransactionMessageAttempts",
    "TransactionMessageRetryInterval",
    "WebSocketPingInterval",
    "LocalAuthListMaxLength",
    "SendLocalListMaxLength",
    "CertificateSignedMaxChainSize",
    "CertificateStoreMaxLength",
    "SecurityProfile",
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
]
CslKey = Literal[
    "ConnectorPhaseRotation",
    "MeterValuesAlignedData",
    "MeterValuesSampledData",
    "StopTxnAlignedData",
    "StopTxnSampledData",
    "SupportedFeatureProfiles",
    "SupportedFileTransferProtocols",
    "ChargingScheduleAllowedChargingRateUnit",
]

_INT = re.compile(r"[+-]?[0-9]{1,12}")
_PHASE_ITEM = re.compile(r"([0-9]{1,3})\.([A-Za-z]+)")


def parse_value(key: KeyDef, raw: str, number_of_connectors: int = 1) -> str:
    """Return `raw` in its canonical OCPP form for `key`; raise InvalidValue saying why not.

    Canonical: booleans "true"/"false", integers without sign or padding, lists without
    blanks around the commas. Stored and compared in that form only.
    """
    if len(raw) > MAX_VALUE_LEN:
        raise InvalidValue(f"is longer than {MAX_VALUE_LEN} characters")
    text = raw.strip()
    if key.type is KeyType.BOOL:
        # OCPP's booleans are "true"/"false"; any case, as several CSMSs send "True".
        if text.lower() not in ("true", "false"):
            raise InvalidValue(f"must be true or false, got {raw!r}")
        return text.lower()
    if key.type is KeyType.INT:
        if not _INT.fullmatch(text):
            raise InvalidValue(f"must be an integer, got {raw!r}")
        number = int(text)
        if (key.low is not None and number < key.low) or (
            key.high is not None and number > key.high
        ):
            raise InvalidValue(f"must be between {key.low} and {key.high}, got {number}")
        return str(number)
    if key.type is KeyType.CSL:
        return ",".join(_parse_list(key, text, number_of_connectors))
    return raw


def _parse_list(key: KeyDef, text: str, number_of_connectors: int) -> list[str]:
    items = [item.strip() for item in text.split(",")] if text else []
    seen: set[str] = set()
    for item in items:
        if not item:
            raise InvalidValue("has an empty item (two commas in a row?)")
        if key.name == "ConnectorPhaseRotation":
            index = _phase_rotation_index(item, number_of_connectors)
            if index in seen:
                raise InvalidValue(f"gives connector {index} twice")
            seen.add(index)
            continue
        if key.members and item not in key.members:
            raise InvalidValue(
                f"{item!r} is not supported; choose from {', '.join(sorted(key.members))}"
            )
        if item in seen:
            raise InvalidValue(f"lists {item!r} twice")
        seen.add(item)
    if key.max_items is not None and len(items) > key.max_items:
        raise InvalidValue(f"has {len(items)} items; at most {key.max_items} allowed")
    return items


def _phase_rotation_index(item: str, number_of_connectors: int) -> str:
    """Check one "<connector>.<rotation>" item (0 is the grid connection); return the connector."""
    match = _PHASE_ITEM.fullmatch(item)
    if not match or match.group(2) not in PHASE_ROTATIONS:
        raise InvalidValue(
            f"{item!r} is not <connector>.<rotation> with a rotation among "
            f"{', '.join(sorted(PHASE_ROTATIONS))}"
        )
    index = int(match.group(1))
    if index > number_of_connectors:
        raise InvalidValue(f"{item!r}: there is no connector {index} (0..{number_of_connectors})")
    return str(index)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One entry of GetConfiguration.conf's configurationKey list."""

    key: str
    readonly: bool
    value: str | None  # None: a write-only key, named without its value

    def to_ocpp(self) -> dict[str, str | bool]:
        entry: dict[str, str | bool] = {"key": self.key, "readonly": self.readonly}
        if self.value is not None:
            entry["value"] = self.value
        return entry


class GetResult(NamedTuple):
    """GetConfiguration.conf: the known keys with their values, and the unknown names as asked."""

    known: list[KeyValue]
    unknown: list[str]


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    """What a ChangeConfiguration.req led to; `reason` is for our log (OCPP has no field)."""

    status: ConfigurationStatus
    key: str  # the exact OCPP name when the key is known, else as the CSMS sent it
    value: str | None = None  # the canonical value to store and apply, when accepted
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status in (ConfigurationStatus.ACCEPTED, ConfigurationStatus.REBOOT_REQUIRED)


@dataclass(frozen=True, slots=True)
class SettingChange:
    """A key's value in effect changed (handed to subscribers)."""

    key: str
    old: str
    new: str


Subscriber = Callable[[SettingChange], None]
# A key's extra rule for ChangeConfiguration: (value now, canonical new value) -> why not.
Guard = Callable[[str, str], str | None]


class Settings:
    """The configuration keys' values: defaults, then config.toml's [ocpp], then the CSMS's.

    `reported` values are what GetConfiguration shows; `running` values are what the
    code acts on. They differ only for a reboot-required key changed since the start.
    Which stored CSMS change still applies is storage.settings' business: this class is
    handed the survivors as `overrides`.
    """

    def __init__(
        self,
        file_values: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        *,
        number_of_connectors: int = 1,
        registry: Mapping[str, KeyDef] = REGISTRY,
    ) -> None:
        if number_of_connectors < 1:
            raise ValueError("a charge point has at least one connector")
        self._registry = registry
        self._connectors = number_of_connectors
        # ChangeConfiguration's key is a CiString: names match in any case.
        self._by_folded = {name.casefold(): name for name in registry}
        self._file = self._checked(file_values or {}, "config.toml")
        self._reported = {name: self._default(key) for name, key in registry.items()}
        self._reported |= self._file
        self._reported |= self._checked(overrides or {}, "stored CSMS change")
        self._running = dict(self._reported)
        self._subscribers: list[tuple[frozenset[str] | None, Subscriber]] = []
        self._guards: dict[str, Guard] = {}

    def _default(self, key: KeyDef) -> str:
        n = self._connectors
        derived = {
            "NumberOfConnectors": str(n),
            "ConnectorPhaseRotation": ",".join(f"{i}.NotApplicable" for i in range(1, n + 1)),
            "ConnectorPhaseRotationMaxLength": str(n + 1),  # + index 0, the grid connection
        }
        return derived.get(key.name, key.default)

    def _checked(self, values: Mapping[str, str], source: str) -> dict[str, str]:
        checked: dict[str, str] = {}
        for name, raw in values.items():
            key = self._registry.get(name)
            if key is None or key.readonly:
                raise ValueError(f"{source}: {name} is not a writable configuration key")
            try:
                checked[name] = parse_value(key, raw, self._connectors)
            except InvalidValue as err:
                raise ValueError(f"{source}: {name} {err}") from err
        return checked

    # -- lookup -----------------------------------------------------------------------

    def canonical(self, name: str) -> str | None:
        """The exact OCPP name of the key called `name` in any case; None when unknown."""
        return self._by_folded.get(name.casefold())

    def definition(self, name: str) -> KeyDef:
        return self._registry[name]

    def file_value(self, name: str) -> str | None:
        """config.toml's value for the key (canonical form), None when the file does not set it."""
        return self._file.get(name)

    def reported(self, name: str) -> str:
        """The value GetConfiguration shows: the latest accepted, even if it awaits a restart."""
        return self._reported[name]

    def value(self, name: str) -> str:
        """The value in effect, as an OCPP string."""
        return self._running[name]

    def flag(self, name: BoolKey) -> bool:
        return self._typed(name, KeyType.BOOL) == "true"

    def integer(self, name: IntKey) -> int:
        return int(self._typed(name, KeyType.INT))

    def csl(self, name: CslKey) -> tuple[str, ...]:
        value = self._typed(name, KeyType.CSL)
        return tuple(value.split(",")) if value else ()

    def _typed(self, name: str, kind: KeyType) -> str:
        if self._registry[name].type is not kind:
            raise TypeError(f"{name} is a {self._registry[name].type}, not a {kind}")
        return self._running[name]

    # -- GetConfiguration ---------------------------------------------------------------

    def get(self, keys: Iterable[str] | None = None) -> GetResult:
        """Answer a GetConfiguration.req; no keys (or an empty list) means every key.

        More distinct keys than GetConfigurationMaxKeys raise TooManyKeysError, which the
        handler answers with a CallError (OccurenceConstraintViolation): answering part
        of the list would look like a complete answer.
        """
        wanted = list(dict.fromkeys(keys or ()))
        if not wanted:
            return GetResult([self._entry(name) for name in self._registry], [])
        limit = int(self._running["GetConfigurationMaxKeys"])
        if len(wanted) > limit:
            raise TooManyKeysError(len(wanted), limit)
        known: list[KeyValue] = []
        unknown: list[str] = []
        for asked in wanted:
            name = self.canonical(asked)
            if name is None:
                unknown.append(asked)
            elif all(entry.key != name for entry in known):  # "x" and "X" are one key
                known.append(self._entry(name))
        return GetResult(known, unknown)

    def _entry(self, name: str) -> KeyValue:
        key = self._registry[name]
        return KeyValue(name, key.readonly, None if key.writeonly else self._reported[name])

    # -- ChangeConfiguration -------------------------------------------------------------

    def check(self, key: str, value: str) -> ChangeOutcome:
        """Judge a ChangeConfiguration.req without changing anything."""
        name = self.canonical(key)
        if name is None:
            return ChangeOutcome(ConfigurationStatus.NOT_SUPPORTED, key, reason="unknown key")
        definition = self._registry[name]
        if definition.readonly:
            return ChangeOutcome(ConfigurationStatus.REJECTED, name, reason="is read-only")
        try:
            canonical = parse_value(definition, value, self._connectors)
        except InvalidValue as err:
            return ChangeOutcome(ConfigurationStatus.REJECTED, name, reason=str(err))
        guard = self._guards.get(name)
        if guard is not None and (reason := guard(self._reported[name], canonical)) is not None:
            return ChangeOutcome(ConfigurationStatus.REJECTED, name, reason=reason)
        if definition.reboot_required:
            return ChangeOutcome(ConfigurationStatus.REBOOT_REQUIRED, name, canonical)
        return ChangeOutcome(ConfigurationStatus.ACCEPTED, name, canonical)

    def apply(self, outcome: ChangeOutcome) -> None:
        """Put an accepted outcome of `check` into effect and tell the subscribers."""
        if not outcome.accepted or outcome.value is None:
            raise ValueError(f"cannot apply a {outcome.status} change of {outcome.key}")
        self._reported[outcome.key] = outcome.value
        if outcome.status is ConfigurationStatus.REBOOT_REQUIRED:
            return  # the running code keeps the old value until the next start
        old = self._running[outcome.key]
        self._running[outcome.key] = outcome.value
        if old != outcome.value:
            self._notify(SettingChange(outcome.key, old, outcome.value))

    def change(self, key: str, value: str) -> ChangeOutcome:
        """check + apply, in memory only; storage.settings also makes it survive a restart."""
        outcome = self.check(key, value)
        if outcome.accepted:
            self.apply(outcome)
        return outcome

    def guard(self, name: str, rule: Guard) -> None:
        """Add a rule a ChangeConfiguration of `name` must pass (beyond its type and bounds),
        such as SecurityProfile's "never lower"; it sees the value now and the new one."""
        if name not in self._registry:
            raise KeyError(f"not a configuration key: {name}")
        self._guards[name] = rule

    # -- following changes ------------------------------------------------------------

    def subscribe(
        self, callback: Subscriber, keys: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call `callback` after a change of one of `keys` (all when None); returns unsubscribe."""
        names = None if keys is None else frozenset(keys)
        unknown = (names or frozenset()) - set(self._registry)
        if unknown:
            raise KeyError(f"not configuration keys: {', '.join(sorted(unknown))}")
        entry = (names, callback)
        self._subscribers.append(entry)
        return lambda: self._subscribers.remove(entry) if entry in self._subscribers else None

    def _notify(self, change: SettingChange) -> None:
        for names, callback in list(self._subscribers):
            if names is None or change.key in names:
                try:
                    callback(change)
                except Exception:
                    # The change is made and will be answered Accepted; one broken
                    # follower must not stop the others from following it.
                    shown = "****" if self._registry[change.key].writeonly else change.new
                    log.exception("a subscriber failed to follow %s = %s", change.key, shown)
