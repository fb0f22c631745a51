"""Shared fixtures: a real `edgepoint run` subprocess on a temp config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, write_config

# The `tls_files` fixture (test PKI for security profiles 2 and 3).
pytest_plugins = ["support.tls"]


@pytest.fixture
def daemon_config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def daemon(daemon_config: Path) -> Iterator[Daemon]:
    d = Daemon(daemon_config)
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture(autouse=True)
def _no_inherited_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test run under systemd must not make the daemons it starts talk to systemd.
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    os.environ.pop("EDGEPOINT_CONFIG", None)
