"""The installer and its chroot test parse, pass shellcheck, and explain themselves; with
EDGEPOINT_TEST_INSTALL=amd64|arm64 the install itself runs in a Debian bookworm chroot.

That run (scripts/test-install: debootstrap, pip from PyPI, the daemon as its service user
on a read-only root, an upgrade and a rolled-back one) takes minutes and needs root and the
network, so the suite runs it only when asked; `EDGEPOINT_TEST_INSTALL=amd64
scripts/bootstrap --test` installs debootstrap (and qemu-user-static for arm64).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
INSTALL_TEST_ARCH = os.environ.get("EDGEPOINT_TEST_INSTALL", "")
SHELL_SCRIPTS = [SCRIPTS / "install-pi.sh", SCRIPTS / "test-install"]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_the_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is missing (Debian package shellcheck; scripts/bootstrap --test)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_installer_explains_itself_without_root() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "install-pi.sh"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "Install or upgrade edgepoint on Raspberry Pi OS bookworm" in result.stdout
    wrong = subprocess.run(
        ["bash", str(SCRIPTS / "install-pi.sh"), "--frobnicate"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "unknown option --frobnicate" in wrong.stderr


def test_the_installer_never_overwrites_the_config_and_rolls_back() -> None:
    """What the chroot test proves, kept visible here: the rules are in the script."""
    text = (SCRIPTS / "install-pi.sh").read_text()
    assert 'if [ ! -f "$ETC/config.toml" ]; then' in text  # first install only
    assert "config.toml.dist" in text
    assert 'edgepoint" migrate --config' in text
    assert "rollback" in text and "restore" in text
    assert "piwheels" in text  # armhf wheels


def _why_no_chroot(arch: str) -> str | None:
    if not arch:
        return (
            "the chroot install test takes minutes: set EDGEPOINT_TEST_INSTALL=amd64 (or arm64)"
            " to run scripts/test-install"
        )
    if arch not in ("amd64", "arm64"):
        return f"EDGEPOINT_TEST_INSTALL={arch}: amd64 or arm64"
    if os.geteuid() != 0:
        return "the chroot install test needs root (chroot, mounts, useradd in the chroot)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is missing: EDGEPOINT_TEST_INSTALL=... scripts/bootstrap --test"
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    if arch != host.stdout.strip():
        if shutil.which("qemu-aarch64-static") is None:
            return f"{arch} on {host.stdout.strip()} needs qemu-user-static (scripts/bootstrap)"
        if not any(Path("/proc/sys/fs/binfmt_misc").glob("qemu-aarch64*")):
            return (
                f"{arch} on {host.stdout.strip()}: qemu-user-static is there but no binfmt_misc"
                " handler is registered (a container: the host must register it)"
            )
    return None


@pytest.mark.timeout(3600)
def test_the_installer_in_a_bookworm_chroot() -> None:
    """Install, reinstall (nothing changes), run as the unit would, upgrade, failed upgrade."""
    reason = _why_no_chroot(INSTALL_TEST_ARCH)
    if reason is not None:
        pytest.skip(reason)
    result = subprocess.run(
        [str(SCRIPTS / "test-install"), "--arch", INSTALL_TEST_ARCH],
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "all checks passed" in output and f"({INSTALL_TEST_ARCH})" in output, output[-3000:]
