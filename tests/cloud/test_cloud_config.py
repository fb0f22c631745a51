"""The [firebase] and [ledger] tables: defaults, secrets kept private, errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_harness import write_config

from edgepoint.config import load_config
from edgepoint.errors import ConfigError

URL = "https://edgepoint-test.firebaseio.com"


def secret(folder: Path, name: str, mode: int) -> Path:
    path = folder / name
    path.write_text("{}\n")
    os.chmod(path, mode)
    return path


def test_defaults_firebase_off_ledger_on(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.firebase.enabled is False
    assert config.ledger.enabled is True
    assert config.ledger.key_file == tmp_path / "var" / "secrets" / "ledger.key"
    assert config.ledger.endpoint_url is None


def test_a_full_firebase_table(tmp_path: Path) -> None:
    creds = secret(tmp_path, "sa.json", 0o600)
    config = load_config(
        write_config(
            tmp_path,
            firebase__enabled=True,
            firebase__database_url=URL,
            firebase__credentials_file=str(creds),
            firebase__publish_interval_s=2,
            firebase__cards_poll_interval_s=30,
            firebase__uid_salt="pepper",
        )
    )
    fb = config.firebase
    assert (fb.database_url, fb.credentials_file, fb.publish_interval_s) == (URL, creds, 2.0)
    assert (fb.cards_poll_interval_s, fb.uid_salt) == (30.0, "pepper")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_credentials_others_can_read_refuse_to_start_naming_the_file(
    tmp_path: Path, mode: int
) -> None:
    creds = secret(tmp_path, "sa.json", mode)
    with pytest.raises(ConfigError) as err:
        load_config(
            write_config(
                tmp_path,
                firebase__enabled=True,
                firebase__database_url=URL,
                firebase__credentials_file=str(creds),
            )
        )
    assert err.value.key == "firebase.credentials_file"
    assert str(creds) in str(err.value) and "chmod 600" in str(err.value)


def test_credentials_are_required_unless_an_emulator_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIREBASE_DATABASE_EMULATOR_HOST", raising=False)
    path = write_config(tmp_path, firebase__enabled=True, firebase__database_url=URL)
    with pytest.raises(ConfigError, match="credentials_file: is required"):
        load_config(path)
    monkeypatch.setenv("FIREBASE_DATABASE_EMULATOR_HOST", "127.0.0.1:9000")
    assert load_config(path).firebase.credentials_file is None
    monkeypatch.delenv("FIREBASE_DATABASE_EMULATOR_HOST")
    emulator_url = "http://127.0.0.1:9000/?ns=fleet"
    assert (
        load_config(
            write_config(tmp_path, firebase__enabled=True, firebase__database_url=emulator_url)
        ).firebase.database_url
        == emulator_url
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("firebase__database_url", "ftp://x", "must be an https:// URL"),
        ("firebase__publish_interval_s", 0, "must be between"),
        ("firebase__nonsense", 1, "unknown key"),
        ("ledger__endpoint_url", "http://ledger.example.com", "must be an https:// URL"),
        ("ledger__upload_batch", 0, "must be between"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(
            write_config(
                tmp_path,
                **{
                    "firebase__database_url": URL,
                    "firebase__credentials_file": str(secret(tmp_path, "sa.json", 0o600)),
                    key: value,
                },
            )
        )
    assert err.value.key == key.replace("__", ".")


def test_the_endpoint_needs_a_private_token_file(tmp_path: Path) -> None:
    url = "https://ledger.example.com/v1/ledger"
    with pytest.raises(ConfigError, match="endpoint_token_file: is required"):
        load_config(write_config(tmp_path, ledger__endpoint_url=url))
    loose = secret(tmp_path, "token", 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        load_config(
            write_config(tmp_path, ledger__endpoint_url=url, ledger__endpoint_token_file=str(loose))
        )
    assert str(loose) in str(err.value)
    os.chmod(loose, 0o600)
    ledger = load_config(
        write_config(tmp_path, ledger__endpoint_url=url, ledger__endpoint_token_file=str(loose))
    ).ledger
    assert (ledger.endpoint_url, ledger.endpoint_token_file) == (url, loose)


def test_a_ledger_key_others_can_read_refuses_to_start(tmp_path: Path) -> None:
    key = tmp_path / "ledger.key"
    key.write_text("x")
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        load_config(write_config(tmp_path, ledger__key_file=str(key)))
    assert err.value.key == "ledger.key_file" and str(key) in str(err.value)
