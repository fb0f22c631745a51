"""The charge point's auth-key file: created private, refused when others can read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgepoint.errors import ConfigError
from edgepoint.keys import load_or_create_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_a_private_key_file_in_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secrets" / "chargepoint.key"
    old_umask = os.umask(0)  # even with a permissive umask nothing is group/world readable
    try:
        key = load_or_create_key(path, create=True)
    finally:
        os.umask(old_umask)
    assert key is not None
    assert len(key) >= 16  # the CSMS refuses shorter Basic-auth keys
    assert path.read_text().strip() == key
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_second_call_returns_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "cp.key"
    first = load_or_create_key(path, create=True)
    assert load_or_create_key(path, create=True) == first
    assert load_or_create_key(path, create=False) == first


def test_each_new_file_gets_a_new_random_key(tmp_path: Path) -> None:
    a = load_or_create_key(tmp_path / "a" / "cp.key", create=True)
    b = load_or_create_key(tmp_path / "b" / "cp.key", create=True)
    assert a != b


def test_missing_file_without_create_means_no_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "cp.key"
    assert load_or_create_key(path, create=False) is None
    assert not path.exists()
    assert not path.parent.exists()


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o644, 0o666])
def test_refuses_a_key_others_can_access(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "cp.key"
    path.write_text("0123456789abcdef0123\n")
    path.chmod(bits)
    with pytest.raises(ConfigError) as caught:
        load_or_create_key(path, create=True)
    assert caught.value.key == "chargepoint.auth_key_file"
    assert caught.value.path == str(path)
    assert f"{bits:o}" in caught.value.reason and "chmod 600" in caught.value.reason
    assert mode(path) == bits  # not silently "fixed"


@pytest.mark.parametrize("content", ["", "\n", "   \n"])
def test_refuses_an_empty_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cp.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_or_create_key(path, create=True)
    assert caught.value.key == "chargepoint.auth_key_file"
    assert "empty" in caught.value.reason
    assert path.read_text() == content  # never overwritten with a fresh key


def test_reads_an_operator_provided_key_stripped(tmp_path: Path) -> None:
    path = tmp_path / "cp.key"
    path.write_text("  operator-given-key-1234 \n")
    path.chmod(0o400)
    assert load_or_create_key(path, create=False) == "operator-given-key-1234"
