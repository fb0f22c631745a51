"""`edgepoint cards …` as separate processes on csms.db, with the daemon stopped and running."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, cli, write_config

pytestmark = pytest.mark.timeout(90)

CARD = "04C0FFEE"


def cards(config: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(cli(config, "cards", "list", "--json").stdout)
    assert isinstance(rows, list)
    return {row["id_tag"]: row for row in rows}


def test_cards_lifecycle_without_a_daemon(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert cli(config, "cards", "list").stdout.strip() == "no cards"
    assert cards(config) == {}

    added = cli(config, "cards", "add", "04A1B2C3", "--name", "Alice Smith")
    assert "04A1B2C3" in added.stdout
    cli(config, "cards", "add", "DEADBEEF", "--expires", "2031-01-31")
    cli(config, "cards", "add", "0BADCAFE", "--expires", "2031-06-01T12:30:00+02:00")
    cli(config, "cards", "add", "11223344", "--expires", "2031-06-01T12:30:00")  # naive = UTC

    listed = cards(config)
    assert set(listed) == {"04A1B2C3", "DEADBEEF", "0BADCAFE", "11223344"}
    alice = listed["04A1B2C3"]
    assert alice["name"] == "Alice Smith"
    assert alice["status"] == "Accepted"
    assert alice["expires"] is None
    assert abs(datetime.fromisoformat(alice["created_at"]) - datetime.now(UTC)).total_seconds() < 60
    # A plain date means "valid through that whole day, UTC".
    day_end = datetime.fromisoformat(listed["DEADBEEF"]["expires"])
    assert datetime(2031, 1, 31, 23, 59, 59, tzinfo=UTC) <= day_end
    assert day_end <= datetime(2031, 2, 1, tzinfo=UTC)
    assert datetime.fromisoformat(listed["0BADCAFE"]["expires"]) == datetime(
        2031, 6, 1, 10, 30, tzinfo=UTC
    )
    assert datetime.fromisoformat(listed["11223344"]["expires"]) == datetime(
        2031, 6, 1, 12, 30, tzinfo=UTC
    )

    human = cli(config, "cards", "list").stdout
    alice_line = next(line for line in human.splitlines() if line.startswith("04A1B2C3"))
    assert "Accepted" in alice_line and "never" in alice_line and "Alice Smith" in alice_line
    assert "2031-01-31" in next(line for line in human.splitlines() if "DEADBEEF" in line)

    blocked = cli(config, "cards", "block", "04A1B2C3")
    assert "blocked" in blocked.stdout
    assert cards(config)["04A1B2C3"]["status"] == "Blocked"
    assert "Blocked" in cli(config, "cards", "list").stdout
    cli(config, "cards", "unblock", "04A1B2C3")
    assert cards(config)["04A1B2C3"]["status"] == "Accepted"

    cli(config, "cards", "remove", "DEADBEEF")
    assert set(cards(config)) == {"04A1B2C3", "0BADCAFE", "11223344"}
    assert "DEADBEEF" not in cli(config, "cards", "list").stdout

    # Mistakes: a clear message on stderr, non-zero exit, no traceback, nothing changed.
    for argv in (
        ("cards", "remove", "DEADBEEF"),
        ("cards", "block", "CAFEBABE"),
        ("cards", "unblock", "CAFEBABE"),
    ):
        result = cli(config, *argv, check=False)
        assert result.returncode == 1, argv
        assert f"no card {argv[-1]}" in result.stderr
        assert "Traceback" not in result.stderr

    duplicate = cli(config, "cards", "add", "04A1B2C3", "--name", "Mallory", check=False)
    assert duplicate.returncode == 1
    assert "04A1B2C3" in duplicate.stderr and "already registered" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    assert cards(config)["04A1B2C3"]["name"] == "Alice Smith"  # not overwritten

    too_long = cli(config, "cards", "add", "X" * 21, check=False)
    assert too_long.returncode == 1
    assert "id tag must be 1-20" in too_long.stderr and "Traceback" not in too_long.stderr

    for bad in ("2031-02-30", "tomorrow", "31.01.2031"):
        result = cli(config, "cards", "add", "55667788", "--expires", bad, check=False)
        assert result.returncode == 2, bad  # argparse usage error
        assert "usage:" in result.stderr and "not a date" in result.stderr
        assert "Traceback" not in result.stderr
    assert "55667788" not in cards(config)


def tap(config: Path) -> None:
    # The emulated PN532 holds a tapped card in the field for 0.3 s, and a card that
    # never left the field is not read twice: let the previous tap end first.
    time.sleep(0.35)
    cli(config, "sim", "tap", CARD)


def test_cards_changed_while_the_daemon_runs_take_effect(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        cli(config, "cards", "add", CARD, "--name", "Dora")  # daemon holds csms.db open
        assert cards(config)[CARD]["name"] == "Dora"
        # Through the control API while the daemon runs: logged there with the user.
        assert "control: cards.add" in daemon.log.read_text()

        tap(config)
        charging = daemon.wait_for(
            "charging", lambda s: s["connector"]["status"] == "Charging", timeout=10
        )
        assert charging["connector"]["relay_closed"] is True
        assert charging["connector"]["session"]["id_tag"] == "****" + CARD[-4:]  # masked

        # Blocking a card does not cut a running session short: the same card still stops it.
        cli(config, "cards", "block", CARD)
        assert cards(config)[CARD]["status"] == "Blocked"
        tap(config)
        idle = daemon.wait_for(
            "available",
            lambda s: s["connector"]["status"] == "Available" and s["connector"]["session"] is None,
            timeout=10,
        )
        assert idle["connector"]["relay_closed"] is False

        # A blocked card cannot start a new session.
        published = idle["rfid"]["published"]
        tap(config)
        daemon.wait_for(
            "blocked card read and refused",
            lambda s: s["rfid"]["published"] > published and s["connector"]["phase"] == "Available",
            timeout=10,
        )
        time.sleep(0.5)  # a wrongly accepted card would be Charging by now
        refused = daemon.status()
        assert refused["connector"]["status"] == "Available"
        assert refused["connector"]["relay_closed"] is False
        assert refused["connector"]["session"] is None

        # Unblocked through the CLI, it charges again.
        cli(config, "cards", "unblock", CARD)
        tap(config)
        again = daemon.wait_for(
            "charging again", lambda s: s["connector"]["status"] == "Charging", timeout=10
        )
        assert again["connector"]["relay_closed"] is True
        code, _ = daemon.stop()
        assert code == 0, daemon.tail()
    finally:
        daemon.kill()
