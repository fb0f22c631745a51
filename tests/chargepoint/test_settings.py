"""OCPP configuration keys: registry, Get/ChangeConfiguration rules, who wins after a restart."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest
from daemon_harness import query

from edgepoint.chargepoint.settings import (
    MAX_KEY_LEN,
    MAX_VALUE_LEN,
    MEASURANDS,
    REGISTRY,
    BoolKey,
    ConfigurationStatus,
    CslKey,
    IntKey,
    InvalidValue,
    KeyType,
    Profile,
    SettingChange,
    Settings,
    TooManyKeysError,
    parse_value,
)
from edgepoint.clock import iso_utc
from edgepoint.config import load_config
from edgepoint.errors import StorageError
from edgepoint.storage.settings import (
    SETTINGS_SCHEMA,
    SettingsRepository,
    StoredOverride,
    resolve_overrides,
)
from edgepoint.storage.sqlite import Database

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ACCEPTED = ConfigurationStatus.ACCEPTED
REJECTED = ConfigurationStatus.REJECTED

# OCPP 1.6 chapter 9.1 (Core) and 9.2 (Local Auth List Management): key -> (type, read-only).
SPEC_KEYS: dict[str, tuple[KeyType, bool]] = {
    "AllowOfflineTxForUnknownId": (KeyType.BOOL, False),
    "AuthorizationCacheEnabled": (KeyType.BOOL, False),
    "AuthorizeRemoteTxRequests": (KeyType.BOOL, False),  # R or RW: our choice
    "BlinkRepeat": (KeyType.INT, False),
    "ClockAlignedDataInterval": (KeyType.INT, False),
    "ConnectionTimeOut": (KeyType.INT, False),
    "ConnectorPhaseRotation": (KeyType.CSL, False),
    "ConnectorPhaseRotationMaxLength": (KeyType.INT, True),
    "GetConfigurationMaxKeys": (KeyType.INT, True),
    "HeartbeatInterval": (KeyType.INT, False),
    "LightIntensity": (KeyType.INT, False),
    "LocalAuthorizeOffline": (KeyType.BOOL, False),
    "LocalPreAuthorize": (KeyType.BOOL, False),
    "MaxEnergyOnInvalidId": (KeyType.INT, False),
    "MeterValuesAlignedData": (KeyType.CSL, False),
    "MeterValuesAlignedDataMaxLength": (KeyType.INT, True),
    "MeterValuesSampledData": (KeyType.CSL, False),
    "MeterValuesSampledDataMaxLength": (KeyType.INT, True),
    "MeterValueSampleInterval": (KeyType.INT, False),
    "MinimumStatusDuration": (KeyType.INT, False),
    "NumberOfConnectors": (KeyType.INT, True),
    "ResetRetries": (KeyType.INT, False),
    "StopTransactionOnEVSideDisconnect": (KeyType.BOOL, False),
    "StopTransactionOnInvalidId": (KeyType.BOOL, False),
    "StopTxnAlignedData": (KeyType.CSL, False),
    "StopTxnAlignedDataMaxLength": (KeyType.INT, True),
    "StopTxnSampledData": (KeyType.CSL, False),
    "StopTxnSampledDataMaxLength": (KeyType.INT, True),
    "SupportedFeatureProfiles": (KeyType.CSL, True),
    "TransactionMessageAttempts": (KeyType.INT, False),
    "TransactionMessageRetryInterval": (KeyType.INT, False),
    "UnlockConnectorOnEVSideDisconnect": (KeyType.BOOL, False),
    "WebSocketPingInterval": (KeyType.INT, False),
    "LocalAuthListEnabled": (KeyType.BOOL, False),
    "LocalAuthListMaxLength": (KeyType.INT, True),
    "SendLocalListMaxLength": (KeyType.INT, True),
    # 9.4 Smart Charging, 9.5 Reservation: all read-only (the spec's R).
    "ChargeProfileMaxStackLevel": (KeyType.INT, True),
    "ChargingScheduleAllowedChargingRateUnit": (KeyType.CSL, True),
    "ChargingScheduleMaxPeriods": (KeyType.INT, True),
    "ConnectorSwitch3to1PhaseSupported": (KeyType.BOOL, True),
    "MaxChargingProfilesInstalled": (KeyType.INT, True),
    "ReserveConnectorZeroSupported": (KeyType.BOOL, True),
    # Firmware Management (9.1's optional key) and the Security Whitepaper's keys.
    "SupportedFileTransferProtocols": (KeyType.CSL, True),
    "AdditionalRootCertificateCheck": (KeyType.BOOL, True),
    "AuthorizationKey": (KeyType.STR, False),  # write-only
    "CertificateSignedMaxChainSize": (KeyType.INT, True),
    "CertificateStoreMaxLength": (KeyType.INT, True),
    "CpoName": (KeyType.STR, False),
    "SecurityProfile": (KeyType.INT, False),
}


# -- the registry ----------------------------------------------------------------------


def test_registry_holds_exactly_the_core_and_local_list_keys_with_the_spec_types() -> None:
    assert {name: (k.type, k.readonly) for name, k in REGISTRY.items()} == SPEC_KEYS
    assert all(name == key.name for name, key in REGISTRY.items())
    local_list = {n for n, k in REGISTRY.items() if k.profile is Profile.LOCAL_AUTH_LIST}
    assert local_list == {
        "LocalAuthListEnabled",
        "LocalAuthListMaxLength",
        "SendLocalListMaxLength",
    }


def test_typed_key_lists_agree_with_the_registry() -> None:
    by_type = {
        KeyType.BOOL: set(get_args(BoolKey)),
        KeyType.INT: set(get_args(IntKey)),
        KeyType.CSL: set(get_args(CslKey)),
    }
    for kind, names in by_type.items():
        assert names == {n for n, k in REGISTRY.items() if k.type is kind}, kind


def test_every_default_is_valid_and_canonical_and_fits_the_wire() -> None:
    for n in (1, 2, 4):
        settings = Settings(number_of_connectors=n)
        for entry in settings.get().known:
            key = REGISTRY[entry.key]
            value = settings.value(entry.key)
            assert entry.value == (None if key.writeonly else value), entry
            assert parse_value(key, value, n) == value, entry
            assert len(entry.key) <= MAX_KEY_LEN and len(value) <= MAX_VALUE_LEN


def test_a_write_only_key_is_named_without_its_value_and_guards_judge_changes() -> None:
    settings = Settings({"AuthorizationKey": "from-the-file-0123456789"})
    (entry,) = settings.get(["AuthorizationKey"]).known
    assert entry.to_ocpp() == {"key": "AuthorizationKey", "readonly": False}
    assert settings.value("AuthorizationKey") == "from-the-file-0123456789"
    seen: list[tuple[str, str]] = []

    def never_lower(old: str, new: str) -> str | None:
        seen.append((old, new))
        return "is only ever raised" if int(new) < int(old) else None

    settings.guard("SecurityProfile", never_lower)
    assert settings.change("SecurityProfile", "2").status is ACCEPTED
    lower = settings.change("SecurityProfile", " 1")
    assert lower.status is REJECTED and lower.reason == "is only ever raised"
    assert settings.integer("SecurityProfile") == 2
    assert seen == [("0", "2"), ("2", "1")]  # canonical values, the type checked first
    assert settings.change("SecurityProfile", "4").status is REJECTED  # out of 0-3
    with pytest.raises(KeyError):
        settings.guard("NoSuchKey", never_lower)
    assert "FirmwareManagement" in settings.csl("SupportedFeatureProfiles")
    assert settings.csl("SupportedFileTransferProtocols") == ("FTP", "FTPS", "HTTP", "HTTPS")


def test_every_csl_reports_its_max_length() -> None:
    settings = Settings(number_of_connectors=3)
    for name, key in REGISTRY.items():
        if key.type is KeyType.CSL and not key.readonly:
            limit = REGISTRY[f"{name}MaxLength"]
            assert limit.readonly and limit.type is KeyType.INT
            if key.max_items is not None:
                assert settings.value(limit.name) == str(key.max_items)
    # Phase rotation: one item per connector, plus index 0 for the grid connection.
    assert settings.integer("ConnectorPhaseRotationMaxLength") == 4


def test_a_csms_may_ask_for_every_key_by_name_in_one_request() -> None:
    settings = Settings()
    assert settings.integer("GetConfigurationMaxKeys") >= len(REGISTRY)
    known, unknown = settings.get(list(REGISTRY))
    assert [e.key for e in known] == list(REGISTRY) and unknown == []


def test_kiosk_defaults() -> None:
    s = Settings()
    profiles = s.csl("SupportedFeatureProfiles")
    assert profiles[:3] == ("Core", "LocalAuthListManagement", "RemoteTrigger")
    assert {"SmartCharging", "Reservation"} <= set(profiles)
    assert s.flag("LocalAuthorizeOffline") and s.flag("AuthorizationCacheEnabled")
    assert s.flag("StopTransactionOnInvalidId") and s.flag("LocalAuthListEnabled")
    assert not s.flag("LocalPreAuthorize") and not s.flag("AllowOfflineTxForUnknownId")
    assert s.integer("MaxEnergyOnInvalidId") == 0
    assert s.integer("TransactionMessageAttempts") == 3
    assert s.integer("TransactionMessageRetryInterval") == 60
    assert s.integer("HeartbeatInterval") == 300
    assert s.integer("WebSocketPingInterval") == 60
    assert s.integer("MeterValueSampleInterval") == 60
    assert s.csl("MeterValuesSampledData") == MEASURANDS
    assert s.csl("StopTxnSampledData") == ()  # StopTransaction stays small
    assert s.integer("NumberOfConnectors") == 1
    assert s.csl("ConnectorPhaseRotation") == ("1.NotApplicable",)


def test_smart_charging_and_reservation_defaults() -> None:
    s = Settings()
    assert s.integer("ChargeProfileMaxStackLevel") == 10
    assert s.csl("ChargingScheduleAllowedChargingRateUnit") == ("Current", "Power")
    assert s.integer("ChargingScheduleMaxPeriods") == 48
    assert s.integer("MaxChargingProfilesInstalled") == 20
    assert not s.flag("ConnectorSwitch3to1PhaseSupported")
    assert s.flag("ReserveConnectorZeroSupported")
    smart = {n for n, k in REGISTRY.items() if k.profile is Profile.SMART_CHARGING}
    assert smart == {
        "ChargeProfileMaxStackLevel",
        "ChargingScheduleAllowedChargingRateUnit",
        "ChargingScheduleMaxPeriods",
        "ConnectorSwitch3to1PhaseSupported",
        "MaxChargingProfilesInstalled",
    }
    assert {n for n, k in REGISTRY.items() if k.profile is Profile.RESERVATION} == {
        "ReserveConnectorZeroSupported"
    }


def test_connector_count_shapes_the_derived_keys() -> None:
    s = Settings(number_of_connectors=2)
    assert s.integer("NumberOfConnectors") == 2
    assert s.csl("ConnectorPhaseRotation") == ("1.NotApplicable", "2.NotApplicable")
    with pytest.raises(ValueError, match="at least one connector"):
        Settings(number_of_connectors=0)


# -- values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "canonical"),
    [
        ("LocalAuthorizeOffline", "true", "true"),
        ("LocalAuthorizeOffline", "FALSE", "false"),
        ("LocalAuthorizeOffline", " True ", "true"),
        ("HeartbeatInterval", "600", "600"),
        ("HeartbeatInterval", "+0600", "600"),
        ("HeartbeatInterval", " 86400 ", "86400"),
        ("MeterValueSampleInterval", "0", "0"),  # the spec's "none"
        ("WebSocketPingInterval", "0", "0"),
        ("MeterValuesSampledData", "Voltage, Current.Import", "Voltage,Current.Import"),
        ("MeterValuesSampledData", "", ""),
        ("StopTxnSampledData", " Energy.Active.Import.Register ", "Energy.Active.Import.Register"),
        ("ConnectorPhaseRotation", "0.RST, 1.NotApplicable", "0.RST,1.NotApplicable"),
    ],
)
def test_values_are_read_leniently_and_kept_canonical(key: str, raw: str, canonical: str) -> None:
    assert parse_value(REGISTRY[key], raw) == canonical


@pytest.mark.parametrize(
    ("key", "raw", "reason"),
    [
        ("LocalAuthorizeOffline", "yes", "must be true or false, got 'yes'"),
        ("LocalAuthorizeOffline", "1", "must be true or false"),
        ("HeartbeatInterval", "ten", "must be an integer, got 'ten'"),
        ("HeartbeatInterval", "1.5", "must be an integer"),
        ("HeartbeatInterval", "", "must be an integer"),
        ("HeartbeatInterval", "0", "must be between 1 and 86400, got 0"),
        ("WebSocketPingInterval", "-1", "must be between 0 and 3600, got -1"),
        ("MeterValueSampleInterval", "86401", "must be between 0 and 86400"),
        ("LightIntensity", "101", "must be between 0 and 100"),
        ("MeterValuesSampledData", "Voltage,SoC", "'SoC' is not supported; choose from"),
        ("MeterValuesSampledData", "Voltage.L1", "'Voltage.L1' is not supported"),
        ("MeterValuesSampledData", "Voltage,,Current.Import", "empty item"),
        ("MeterValuesSampledData", "Voltage,Voltage", "lists 'Voltage' twice"),
        ("ConnectorPhaseRotation", "1.XYZ", "is not <connector>.<rotation>"),
        ("ConnectorPhaseRotation", "RST", "is not <connector>.<rotation>"),
        ("ConnectorPhaseRotation", "2.RST", "there is no connector 2 (0..1)"),
        ("ConnectorPhaseRotation", "1.RST,1.RTS", "gives connector 1 twice"),
        ("HeartbeatInterval", "1" * (MAX_VALUE_LEN + 1), "longer than 500"),
    ],
)
def test_bad_values_say_why(key: str, raw: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_value(REGISTRY[key], raw)


def test_a_list_longer_than_its_max_length_is_refused() -> None:
    key = dataclasses.replace(REGISTRY["MeterValuesSampledData"], max_items=2)
    with pytest.raises(InvalidValue, match="has 3 items; at most 2 allowed"):
        parse_value(key, "Voltage,Current.Import,Temperature")


# -- GetConfiguration --------------------------------------------------------------------


def test_get_without_keys_reports_every_key_with_its_access() -> None:
    no_keys: tuple[list[str] | None, ...] = (None, [])
    for keys in no_keys:
        known, unknown = Settings().get(keys)
        assert unknown == []
        assert {e.key: e.readonly for e in known} == {n: ro for n, (_, ro) in SPEC_KEYS.items()}
    entry = next(e for e in Settings().get().known if e.key == "NumberOfConnectors")
    assert entry.to_ocpp() == {"key": "NumberOfConnectors", "readonly": True, "value": "1"}


def test_get_named_keys_puts_the_unknown_ones_aside_as_asked() -> None:
    known, unknown = Settings().get(
        ["HeartbeatInterval", "Nonsense", "heartbeatinterval", "localauthorizeoffline", "Nonsense"]
    )
    # Names match in any case (CiString) and come back spelt as OCPP spells them, once.
    assert [(e.key, e.readonly, e.value) for e in known] == [
        ("HeartbeatInterval", False, "300"),
        ("LocalAuthorizeOffline", False, "true"),
    ]
    assert unknown == ["Nonsense"]


def test_get_refuses_more_keys_than_it_advertises() -> None:
    settings = Settings()
    limit = settings.integer("GetConfigurationMaxKeys")
    names = [f"Key{i}" for i in range(limit + 1)]
    with pytest.raises(TooManyKeysError) as caught:
        settings.get(names)
    assert (caught.value.requested, caught.value.limit) == (limit + 1, limit)
    assert len(settings.get(names[:limit]).unknown) == limit


# -- ChangeConfiguration ------------------------------------------------------------------


def test_change_of_an_unknown_key_is_not_supported() -> None:
    outcome = Settings().change("Testing", "true")
    assert (outcome.status, outcome.key, outcome.value) == (
        ConfigurationStatus.NOT_SUPPORTED,
        "Testing",
        None,
    )
    assert not outcome.accepted


@pytest.mark.parametrize("key", [n for n, (_, ro) in SPEC_KEYS.items() if ro])
def test_change_of_a_read_only_key_is_rejected(key: str) -> None:
    settings = Settings()
    before = settings.value(key)
    outcome = settings.change(key, before)
    assert (outcome.status, outcome.reason) == (REJECTED, "is read-only")
    assert settings.value(key) == before


def test_change_with_a_bad_value_is_rejected_with_a_reason_and_changes_nothing() -> None:
    settings = Settings()
    outcome = settings.change("HeartbeatInterval", "-5")
    assert outcome.status is REJECTED
    assert outcome.reason == "must be between 1 and 86400, got -5"
    assert settings.integer("HeartbeatInterval") == 300


def test_accepted_change_takes_effect_canonically_and_notifies_once() -> None:
    settings = Settings()
    seen: list[SettingChange] = []
    settings.subscribe(seen.append, ["MeterValuesSampledData", "HeartbeatInterval"])
    outcome = settings.change("metervaluessampleddata", "Voltage , Energy.Active.Import.Register")
    assert (outcome.status, outcome.key, outcome.value) == (
        ACCEPTED,
        "MeterValuesSampledData",
        "Voltage,Energy.Active.Import.Register",
    )
    assert settings.csl("MeterValuesSampledData") == ("Voltage", "Energy.Active.Import.Register")
    assert settings.get(["MeterValuesSampledData"]).known[0].value == outcome.value
    assert seen == [
        SettingChange("MeterValuesSampledData", ",".join(MEASURANDS), outcome.value or "")
    ]
    # The same value again is accepted but is no change.
    assert settings.change("MeterValuesSampledData", outcome.value or "").status is ACCEPTED
    assert len(seen) == 1


def test_a_reboot_required_key_is_reported_at_once_but_runs_after_the_restart() -> None:
    registry = dict(REGISTRY)
    registry["WebSocketPingInterval"] = dataclasses.replace(
        REGISTRY["WebSocketPingInterval"], reboot_required=True
    )
    settings = Settings(registry=registry)
    seen: list[SettingChange] = []
    settings.subscribe(seen.append)
    outcome = settings.change("WebSocketPingInterval", "15")
    assert outcome.status is ConfigurationStatus.REBOOT_REQUIRED and outcome.accepted
    assert settings.get(["WebSocketPingInterval"]).known[0].value == "15"
    assert settings.reported("WebSocketPingInterval") == "15"
    assert settings.integer("WebSocketPingInterval") == 60
    assert seen == []
    # After the restart the stored value is simply the value.
    assert (
        Settings(overrides={"WebSocketPingInterval": "15"}, registry=registry).integer(
            "WebSocketPingInterval"
        )
        == 15
    )


def test_subscribers_filter_unsubscribe_and_survive_each_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    every: list[str] = []
    heartbeat: list[str] = []

    def broken(change: SettingChange) -> None:
        raise RuntimeError("subscriber bug")

    settings.subscribe(broken)
    settings.subscribe(lambda c: every.append(c.key))
    stop = settings.subscribe(lambda c: heartbeat.append(c.new), ["HeartbeatInterval"])
    with caplog.at_level(logging.ERROR):
        assert settings.change("HeartbeatInterval", "120").status is ACCEPTED
        assert settings.change("LocalPreAuthorize", "true").status is ACCEPTED
    assert every == ["HeartbeatInterval", "LocalPreAuthorize"]
    assert heartbeat == ["120"]
    assert "subscriber failed to follow HeartbeatInterval" in caplog.text
    stop()
    stop()  # twice is harmless
    settings.change("HeartbeatInterval", "180")
    assert heartbeat == ["120"]
    with pytest.raises(KeyError, match="Heartbeat"):
        settings.subscribe(lambda c: None, ["Heartbeat"])


def test_typed_accessors_refuse_a_key_of_another_type() -> None:
    settings = Settings()
    with pytest.raises(TypeError, match="HeartbeatInterval is a integer"):
        settings.flag("HeartbeatInterval")  # type: ignore[arg-type]


def test_apply_refuses_an_outcome_that_was_not_accepted() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="Rejected"):
        settings.apply(settings.check("NumberOfConnectors", "3"))


def test_file_values_layer_over_defaults_and_overrides_over_both() -> None:
    settings = Settings(
        {"HeartbeatInterval": "60", "LocalPreAuthorize": "true"},
        {"HeartbeatInterval": "90"},
    )
    assert settings.integer("HeartbeatInterval") == 90
    assert settings.flag("LocalPreAuthorize")
    assert settings.file_value("HeartbeatInterval") == "60"
    assert settings.file_value("BlinkRepeat") is None
    with pytest.raises(ValueError, match="NumberOfConnectors is not a writable"):
        Settings({"NumberOfConnectors": "2"})
    with pytest.raises(ValueError, match="HeartbeatInterval must be an integer"):
        Settings(overrides={"HeartbeatInterval": "soon"})


# -- persistence: the CSMS's changes against the operator's config.toml --------------------


class Station:
    """One daemon life: a real edgepoint.db and the config.toml it started with."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.repo = SettingsRepository(db)
        self.settings = settings

    async def csms_changes(self, key: str, value: str) -> ConfigurationStatus:
        outcome = await self.repo.change_setting(self.settings, key, value, T0)
        return outcome.status


@pytest.fixture(name="db_path")
def db_path_fixture(tmp_path: Path) -> Path:
    return tmp_path / "var" / "edgepoint.db"


async def start(db_path: Path, file_values: Mapping[str, str], connectors: int = 1) -> Station:
    db = await Database.open(db_path, [SETTINGS_SCHEMA])
    repo = SettingsRepository(db)
    return Station(db, await repo.load_settings(file_values, connectors))


@pytest.fixture(name="stations")
async def stations_fixture() -> AsyncIterator[list[Station]]:
    opened: list[Station] = []
    yield opened
    for station in opened:
        await station.db.close()


async def restart(
    stations: list[Station], db_path: Path, file_values: Mapping[str, str]
) -> Station:
    """Stop the running station (if any) and start a new one on the same database."""
    if stations:
        await stations.pop().db.close()
    station = await start(db_path, file_values)
    stations.append(station)
    return station


async def test_a_csms_change_survives_a_restart_until_the_operator_edits_config_toml(
    stations: list[Station], db_path: Path
) -> None:
    file = {"MeterValueSampleInterval": "10"}
    station = await restart(stations, db_path, file)
    assert station.settings.integer("MeterValueSampleInterval") == 10
    assert await station.csms_changes("MeterValueSampleInterval", "30") is ACCEPTED
    assert station.settings.integer("MeterValueSampleInterval") == 30
    assert query(db_path, "SELECT key, value, file_value FROM ocpp_settings") == [
        ("MeterValueSampleInterval", "30", "10")
    ]

    # Restart, config.toml untouched: the CSMS's value wins.
    station = await restart(stations, db_path, file)
    assert station.settings.integer("MeterValueSampleInterval") == 30
    assert station.settings.get(["MeterValueSampleInterval"]).known[0].value == "30"

    # The operator edits the key: the file wins and the CSMS's change is forgotten...
    station = await restart(stations, db_path, {"MeterValueSampleInterval": "20"})
    assert station.settings.integer("MeterValueSampleInterval") == 20
    assert query(db_path, "SELECT COUNT(*) FROM ocpp_settings") == [(0,)]

    # ...for good: setting the file back to its old value does not bring it back.
    station = await restart(stations, db_path, file)
    assert station.settings.integer("MeterValueSampleInterval") == 10


async def test_a_key_absent_from_config_toml_stays_the_csms_s_until_the_file_sets_it(
    stations: list[Station], db_path: Path
) -> None:
    station = await restart(stations, db_path, {})
    assert await station.csms_changes("HeartbeatInterval", "900") is ACCEPTED
    assert query(db_path, "SELECT value, file_value FROM ocpp_settings") == [("900", None)]
    station = await restart(stations, db_path, {"LocalPreAuthorize": "true"})  # another key
    assert station.settings.integer("HeartbeatInterval") == 900
    # Even set to the default, an added key is an edit of that key.
    station = await restart(stations, db_path, {"HeartbeatInterval": "300"})
    assert station.settings.integer("HeartbeatInterval") == 300


async def test_removing_the_key_from_config_toml_is_an_edit_too(
    stations: list[Station], db_path: Path
) -> None:
    station = await restart(stations, db_path, {"LocalAuthorizeOffline": "true"})
    assert await station.csms_changes("LocalAuthorizeOffline", "false") is ACCEPTED
    station = await restart(stations, db_path, {})
    assert station.settings.flag("LocalAuthorizeOffline") is True  # back to the default


async def test_refused_changes_are_not_stored(stations: list[Station], db_path: Path) -> None:
    station = await restart(stations, db_path, {})
    assert await station.csms_changes("NumberOfConnectors", "4") is REJECTED
    assert await station.csms_changes("HeartbeatInterval", "never") is REJECTED
    assert await station.csms_changes("Testing", "1") is ConfigurationStatus.NOT_SUPPORTED
    assert query(db_path, "SELECT COUNT(*) FROM ocpp_settings") == [(0,)]


async def test_a_later_csms_change_replaces_the_stored_one(
    stations: list[Station], db_path: Path
) -> None:
    station = await restart(stations, db_path, {})
    await station.csms_changes("HeartbeatInterval", "900")
    await station.csms_changes("heartbeatinterval", "1200")
    assert query(db_path, "SELECT key, value FROM ocpp_settings") == [("HeartbeatInterval", "1200")]
    station = await restart(stations, db_path, {})
    assert station.settings.integer("HeartbeatInterval") == 1200


async def test_a_change_that_cannot_be_stored_is_not_applied(
    stations: list[Station], db_path: Path
) -> None:
    station = await restart(stations, db_path, {})
    seen: list[SettingChange] = []
    station.settings.subscribe(seen.append)
    with sqlite3.connect(db_path) as other:
        other.execute("DROP TABLE ocpp_settings")
    with pytest.raises(StorageError):
        await station.csms_changes("HeartbeatInterval", "900")
    assert station.settings.integer("HeartbeatInterval") == 300
    assert seen == []


async def test_stale_stored_changes_are_dropped_with_a_reason(
    stations: list[Station], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await restart(stations, db_path, {})
    await stations.pop().db.close()
    with sqlite3.connect(db_path) as other:
        other.executemany(
            "INSERT INTO ocpp_settings (key, value, file_value, changed_at) VALUES (?, ?, ?, ?)",
            [
                ("RetiredKey", "1", None, "x"),  # gone from a newer edgepoint
                ("NumberOfConnectors", "3", None, "x"),  # read-only
                ("LightIntensity", "250", None, "x"),  # out of today's range
                ("BlinkRepeat", "7", None, "x"),  # still good
            ],
        )
    with caplog.at_level(logging.WARNING):
        station = await restart(stations, db_path, {})
    assert station.settings.integer("BlinkRepeat") == 7
    assert station.settings.integer("NumberOfConnectors") == 1
    assert station.settings.integer("LightIntensity") == 100
    assert query(db_path, "SELECT key FROM ocpp_settings") == [("BlinkRepeat",)]
    assert "RetiredKey: is no longer a writable configuration key" in caplog.text
    assert "NumberOfConnectors: is no longer a writable" in caplog.text
    assert "LightIntensity: stored value '250' must be between 0 and 100" in caplog.text


def test_resolution_compares_canonical_forms() -> None:
    stored = [StoredOverride("MeterValuesSampledData", "Voltage", "Voltage,Current.Import")]
    kept = resolve_overrides(stored, {"MeterValuesSampledData": "Voltage,Current.Import"})
    assert kept.kept == {"MeterValuesSampledData": "Voltage"} and kept.dropped == ()
    changed = resolve_overrides(stored, {"MeterValuesSampledData": "Current.Import"})
    assert changed.kept == {}
    ((key, reason),) = changed.dropped
    assert key == "MeterValuesSampledData"
    assert reason == (
        "config.toml changed since the CSMS set it ('Voltage,Current.Import' -> "
        "'Current.Import'): the file wins"
    )


async def test_the_rule_end_to_end_through_config_toml_files(
    tmp_path: Path, stations: list[Station], db_path: Path
) -> None:
    """The file's spelling is not an edit; its value is. Real config.toml files throughout."""
    path = tmp_path / "config.toml"
    head = '[station]\nid = "EP-1"\n[chargepoint]\ncsms_url = "ws://127.0.0.1:9000/ocpp"\n'

    def boot(ocpp: str) -> dict[str, str]:
        path.write_text(head + "[ocpp]\n" + ocpp)
        return dict(load_config(path).ocpp)

    station = await restart(
        stations, db_path, boot('MeterValuesSampledData = "Voltage, Current.Import"\n')
    )
    assert (
        await station.csms_changes("MeterValuesSampledData", "Energy.Active.Import.Register")
        is ACCEPTED
    )
    station = await restart(
        stations, db_path, boot('MeterValuesSampledData = ["Voltage", "Current.Import"]\n')
    )
    assert station.settings.csl("MeterValuesSampledData") == ("Energy.Active.Import.Register",)
    station = await restart(stations, db_path, boot('MeterValuesSampledData = ["Voltage"]\n'))
    assert station.settings.csl("MeterValuesSampledData") == ("Voltage",)


async def test_the_schema_is_a_migration_of_edgepoint_db(db_path: Path) -> None:
    from edgepoint.storage.chargepoint import MIGRATIONS

    assert SETTINGS_SCHEMA in MIGRATIONS
    db = await Database.open(db_path, MIGRATIONS)
    try:
        repo = SettingsRepository(db)
        await repo.save_override("HeartbeatInterval", "900", None, T0)
        assert await repo.overrides() == [
            StoredOverride("HeartbeatInterval", "900", None, iso_utc(T0))
        ]
    finally:
        await db.close()
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
