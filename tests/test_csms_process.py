"""The embedded CSMS runs as a supervised child process: it can die without the kiosk."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from daemon_harness import Daemon, cli, query

from edgepoint.csms.service import CSMS_NICENESS

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until its parent reaps it; read its state.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_killed_csms_process_is_restarted_while_the_kiosk_keeps_charging(
    daemon: Daemon,
) -> None:
    cli(daemon.config, "cards", "add", CARD)
    daemon.start()
    daemon.wait_ready()
    # The CSMS process's part of `status` is its last answer (at most 0.5 s old).
    ready = daemon.wait_for(
        "the CSMS serving our charge point",
        lambda s: s["links"]["embedded_csms"]["connected"] == ["EP-TEST-1"],
    )
    first = ready["links"]["embedded_csms"]
    assert first["listening"] is True and first["answering"] is True
    assert daemon.proc is not None and first["pid"] != daemon.proc.pid

    cli(daemon.config, "sim", "tap", CARD)
    daemon.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")

    os.kill(first["pid"], signal.SIGKILL)  # the CSMS dies hard
    again = daemon.wait_for(
        "a new CSMS process, serving our charge point again",
        lambda s: (
            s["links"]["embedded_csms"]["pid"] != first["pid"]
            and s["links"]["embedded_csms"]["listening"] is True
            and s["links"]["embedded_csms"]["connected"] == ["EP-TEST-1"]
            and s["links"]["csms"]["state"] == "online"
        ),
        timeout=30,
    )
    # The kiosk never stopped: same session, relay still closed.
    assert again["connector"]["status"] == "Charging" and again["connector"]["relay_closed"]
    assert again["links"]["embedded_csms"]["restarts"] >= 1
    services = {s["name"]: s for s in again["services"]}
    assert services["embedded csms"]["restarts"] >= 1
    assert "exited with -9" in services["embedded csms"]["last_error"]

    second = again["links"]["embedded_csms"]["pid"]
    code, _ = daemon.stop(signal.SIGTERM, timeout=15)
    assert code == 0
    # Stopping the daemon stops its CSMS process too: no orphan keeps the port.
    deadline = time.monotonic() + 5
    while alive(second) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(second)


def test_the_csms_process_does_not_outlive_a_killed_daemon(daemon: Daemon) -> None:
    daemon.start()
    child = daemon.wait_ready()["links"]["embedded_csms"]["pid"]
    daemon.stop(signal.SIGKILL)  # no chance to stop its child
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_the_csms_process_yields_the_cpu_to_the_kiosk(daemon: Daemon) -> None:
    daemon.start()
    child = daemon.wait_ready()["links"]["embedded_csms"]["pid"]
    assert daemon.proc is not None
    kiosk_nice = os.getpriority(os.PRIO_PROCESS, daemon.proc.pid)
    # Under load the scheduler favours the kiosk's taps over the site's chargers.
    assert os.getpriority(os.PRIO_PROCESS, child) >= kiosk_nice + CSMS_NICENESS or (
        os.getpriority(os.PRIO_PROCESS, child) == 19  # the ceiling
    )


def test_the_kiosk_local_list_follows_the_csms_cards(daemon: Daemon) -> None:
    """Cards added or blocked with the CLI reach the kiosk's local list by themselves."""
    daemon.start()
    daemon.wait_ready()
    db = daemon.config.parent / "var" / "edgepoint.db"

    def listed() -> dict[str, str]:
        return dict(query(db, "SELECT id_tag, status FROM local_list"))

    cli(daemon.config, "cards", "add", CARD)
    eventually(lambda: listed().get(CARD) == "Accepted", "the new card in the local list")
    cli(daemon.config, "cards", "block", CARD)
    eventually(lambda: listed().get(CARD) == "Blocked", "the card blocked in the local list")
    cli(daemon.config, "cards", "remove", CARD)
    eventually(lambda: CARD not in listed(), "the card gone from the local list")


def eventually(check: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
