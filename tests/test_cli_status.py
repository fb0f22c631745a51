"""`edgepoint status` and `sim tap` as separate processes, with and without a daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli, write_config

pytestmark = pytest.mark.timeout(90)

CARD = "04A1B2C3"


def test_status_and_tap_against_a_running_daemon(tmp_path: Path) -> None:
    config = write_config(tmp_path, station__id="EP-STATUS-7")
    cli(config, "cards", "add", CARD)
    # The operator's umask must not decide who can reach the daemon's files.
    old_umask = os.umask(0o002)
    try:
        daemon = Daemon(config).start()
    finally:
        os.umask(old_umask)
    try:
        daemon.wait_ready()
        daemon.wait_for(
            "the CSMS serving our charge point",
            lambda s: s["links"]["embedded_csms"]["connected"] == ["EP-STATUS-7"],
        )

        human = cli(config, "status").stdout
        assert "EP-STATUS-7" in human
        assert "connector 1: Available" in human
        assert "relay open" in human
        assert "csms link: online" in human
        assert "outbox: 0 queued, 0 dead letter(s)" in human
        assert "telemetry: " in human and " Wh " in human
        assert "no session" in human

        data = json.loads(cli(config, "status", "--json").stdout)
        assert data["station"] == "EP-STATUS-7"
        assert data["simulated"] is True
        assert data["connector"]["status"] == "Available"
        assert data["connector"]["relay_closed"] is False
        assert data["connector"]["session"] is None
        assert data["links"]["csms"]["state"] == "online"
        assert data["links"]["csms"]["url"].endswith("/ocpp/EP-STATUS-7")
        assert data["links"]["embedded_csms"]["connected"] == ["EP-STATUS-7"]
        assert (data["outbox"]["depth"], data["outbox"]["dead_letters"]) == (0, 0)
        assert isinstance(data["telemetry"]["last"]["energy_wh"], int)

        tapped = cli(config, "sim", "tap", CARD.lower())
        assert f"presented card {CARD}" in tapped.stdout
        charging = daemon.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")
        human = cli(config, "status").stdout
        assert "connector 1: Charging  relay CLOSED" in human
        assert f"card ****{CARD[-4:]}" in human and CARD not in human  # masked
        assert charging["connector"]["session"]["session_id"] in human

        for uid, reason in (
            ("ZZ11ZZ11", "must be hex"),
            ("04A1B2C", "must be hex"),  # odd number of digits
            ("04A1B2", "must be 4, 7 or 10 bytes, got 3"),
            ("04A1B2C3D4", "must be 4, 7 or 10 bytes, got 5"),
        ):
            bad = cli(config, "sim", "tap", uid, check=False)
            assert bad.returncode == 1, uid
            assert reason in bad.stderr, (uid, bad.stderr)
            assert "Traceback" not in bad.stderr
            assert "presented" not in bad.stdout
        assert daemon.status()["connector"]["session"]["id_tag"] == f"****{CARD[-4:]}"  # unaffected

        # Only the daemon's user and group can reach the socket or look in its folder.
        sock = tmp_path / "var" / "edgepoint.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert stat.S_IMODE(sock.parent.stat().st_mode) & 0o007 == 0

        # A crash leaves the socket file behind; the CLI still says "not running".
        daemon.stop(signal.SIGKILL)
        assert sock.exists()
        for argv in (("status",), ("status", "--json"), ("sim", "tap", CARD)):
            result = cli(config, *argv, check=False)
            assert result.returncode == 1, argv
            assert "not running" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
    finally:
        daemon.kill()


@pytest.mark.parametrize("argv", [("status",), ("status", "--json"), ("sim", "tap", CARD)])
def test_without_a_daemon_the_cli_says_it_is_not_running(tmp_path: Path, argv: tuple[str]) -> None:
    config = write_config(tmp_path)
    result = cli(config, *argv, check=False)
    assert result.returncode == 1
    assert "edgepoint is not running" in result.stderr
    assert str(tmp_path / "var" / "edgepoint.sock") in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
