"""Every screen and every command of the TUI, driven by Textual's Pilot against a real daemon.

The daemon is `edgepoint run` on simulated hardware with the embedded CSMS (its own charge
point connects to it, so the Chargers screen's commands reach a real charger).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli, query, write_config
from textual.pilot import Pilot
from tui_support import SIZE, message, present, screen_text, wait_screen

from edgepoint.control.client import request
from edgepoint.tui.app import TechnicianApp

CARD = "04A1B2C3"
MASKED = "****B2C3"


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Daemon]:
    config = write_config(tmp_path)
    cli(config, "cards", "add", CARD, "--name", "Alice")
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


@contextlib.asynccontextmanager
async def tui(daemon: Daemon) -> AsyncIterator[Pilot[None]]:
    app = TechnicianApp(daemon.socket, user="tech")
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, "Overview", what="connected")
        await wait_screen(pilot, "PN532", what="the overview")
        yield pilot


def energy_kwh(screen: str) -> float:
    match = re.search(r"energy (\d+\.\d+) kWh", screen)
    assert match, screen
    return float(match.group(1))


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press(*text)


async def wait_status(daemon: Daemon, what: str, check: object) -> None:
    await asyncio.to_thread(daemon.wait_for, what, check)  # type: ignore[arg-type]


async def test_overview_taps_a_card_and_shows_charging_with_rising_energy(station: Daemon) -> None:
    async with tui(station) as pilot:
        app = pilot.app
        assert isinstance(app, TechnicianApp)
        screen = await wait_screen(pilot, "Available")
        assert "may act" in screen and "online" in screen
        await pilot.press("t")  # a simulated daemon offers a tap
        await wait_screen(pilot, "Present a card")
        await type_text(pilot, CARD)
        await pilot.press("enter")
        first = await wait_screen(pilot, lambda s: "Charging" in s and MASKED in s)
        later = await wait_screen(pilot, lambda s: energy_kwh(s) > energy_kwh(first), 5)
        assert "relay closed" in later and "duration" in later
        assert CARD not in later  # the card never in full
        # The same card again ends the session.
        await pilot.press("t")
        await wait_screen(pilot, "Present a card")
        await type_text(pilot, CARD)
        await pilot.press("enter")
        await wait_screen(pilot, lambda s: "Available" in s and "no session" in s)


async def test_telemetry_plots_the_four_measurements(station: Daemon) -> None:
    await present(station.socket, CARD)
    await wait_status(station, "charging", lambda s: s["connector"]["status"] == "Charging")
    async with tui(station) as pilot:
        await pilot.press("2")
        screen = await wait_screen(pilot, "Temperature")
        for label in ("Voltage", "Current", "Power", "Temperature"):
            assert re.search(rf"{label}\s+\d", screen), label
        # A few samples later the plot has bars (the rightmost columns: the last seconds).
        screen = await wait_screen(pilot, lambda s: sum(s.count(c) for c in "▁▂▃▄▅▆▇█") >= 8)
        assert re.search(r"Power\s+36000 W", screen)


async def test_sessions_live_and_past_filtered_and_site_transactions(station: Daemon) -> None:
    for _ in range(3):  # one past session, then a live one
        await present(station.socket, CARD)
    await wait_status(station, "charging", lambda s: s["connector"]["status"] == "Charging")
    async with tui(station) as pilot:
        await pilot.press("3")
        screen = await wait_screen(pilot, "2 shown")
        rows = [line for line in screen.splitlines() if MASKED in line]
        assert len(rows) == 2
        assert "live" in rows[0] and "Local" in rows[1]  # newest first; a tap stops as Local
        await pilot.press("slash")
        await type_text(pilot, "local")
        await wait_screen(pilot, "1 shown")
        await pilot.press("ctrl+u")  # clear the filter
        await wait_screen(pilot, "2 shown")
        await pilot.press("enter")  # back to the table
        await pilot.press("l")
        await wait_screen(pilot, "live only · 1 shown")
        await pilot.press("l", "s")  # all, from the site CSMS
        screen = await wait_screen(pilot, "EP-TEST-1/1")
        assert "site CSMS transactions" in screen and CARD not in screen


async def test_cards_add_block_unblock_remove_and_the_local_list(station: Daemon) -> None:
    csms_db = station.config.parent / "var" / "csms.db"
    async with tui(station) as pilot:
        app = pilot.app
        assert isinstance(app, TechnicianApp)
        await pilot.press("4")
        screen = await wait_screen(pilot, "Local list")
        assert MASKED in screen and "Alice" in screen
        await pilot.press("a")
        await wait_screen(pilot, "Add a card")
        await type_text(pilot, "0AA11BB2")
        await pilot.press("enter")
        await type_text(pilot, "Bob")
        await pilot.press("enter", "enter")  # no expiry: submit
        await wait_screen(pilot, "card ****1BB2 added")
        assert query(csms_db, "SELECT status, name FROM id_tags WHERE id_tag = '0AA11BB2'") == [
            ("Accepted", "Bob")
        ]
        await pilot.press("down")  # the new card (cards are listed by id)
        await pilot.press("b")
        await wait_screen(pilot, "Block card ****1BB2 at the site CSMS?")
        await pilot.press("y")
        await wait_screen(pilot, lambda s: re.search(r"\*\*\*\*1BB2\s+Blocked", s) is not None)
        assert query(csms_db, "SELECT status FROM id_tags WHERE id_tag = '0AA11BB2'") == [
            ("Blocked",)
        ]
        await pilot.press("b")  # unblocking needs no confirmation
        await wait_screen(pilot, lambda s: re.search(r"\*\*\*\*1BB2\s+Accepted", s) is not None)
        await pilot.press("d")
        await wait_screen(pilot, "Remove card ****1BB2?")
        await pilot.press("n")  # changed my mind
        await wait_screen(pilot, lambda s: "Remove card" not in s)
        assert query(csms_db, "SELECT count(*) FROM id_tags WHERE id_tag = '0AA11BB2'") == [(1,)]
        await pilot.press("d")
        await wait_screen(pilot, "Remove card ****1BB2?")
        await pilot.press("y")
        await wait_screen(pilot, "card ****1BB2 removed")
        assert query(csms_db, "SELECT count(*) FROM id_tags WHERE id_tag = '0AA11BB2'") == [(0,)]
        assert "0AA11BB2" not in screen_text(app)
        # The local list the CSMS sent the charge point, shown masked and read-only.
        screen = await wait_screen(pilot, "version")
        local = screen.split("Local list")[1]
        assert MASKED in local


async def test_the_local_list_is_edited_on_site(station: Daemon) -> None:
    db = station.config.parent / "var" / "edgepoint.db"

    def listed() -> dict[str, str]:
        return dict(query(db, "SELECT id_tag, status FROM local_list"))

    # The embedded CSMS sends its cards as the local list when the charge point connects.
    await wait_status(station, "the local list", lambda s: listed().get(CARD) == "Accepted")
    async with tui(station) as pilot:
        app = pilot.app
        assert isinstance(app, TechnicianApp)
        await pilot.press("4")
        await wait_screen(pilot, "CSMS version")
        await pilot.press("tab")  # to the local list: the keys act on it now
        await pilot.press("a")
        await wait_screen(pilot, "Add a card to the local list")
        await type_text(pilot, "0CC22DD3")
        await pilot.press("enter", "enter")
        await wait_screen(pilot, "card ****2DD3 in the local list")
        assert listed().get("0CC22DD3") == "Accepted"
        await pilot.press("down")  # the new card (listed by id)
        await pilot.press("b")
        await wait_screen(pilot, "Block card ****2DD3 in the local list?")
        await pilot.press("y")
        await wait_screen(pilot, lambda s: re.search(r"\*\*\*\*2DD3\s+Blocked", s) is not None)
        assert listed().get("0CC22DD3") == "Blocked"
        await pilot.press("d")
        await wait_screen(pilot, "Remove card ****2DD3 from the local list?")
        await pilot.press("y")
        await wait_screen(pilot, "card ****2DD3 removed from the local list")
        assert "0CC22DD3" not in listed() and listed().get(CARD) == "Accepted"
        assert "0CC22DD3" not in screen_text(app)
    assert "control: local_list.put" in station.log.read_text()


async def test_chargers_operator_commands(station: Daemon) -> None:
    async with tui(station) as pilot:
        app = pilot.app
        assert isinstance(app, TechnicianApp)
        await pilot.press("5")
        screen = await wait_screen(pilot, "firmware 0.1.0")
        assert re.search(r"EP-TEST-1\s+yes", screen)
        # Remote start: a form, no confirmation (nothing is interrupted).
        await pilot.press("s")
        await wait_screen(pilot, "Remote start on EP-TEST-1")
        await type_text(pilot, CARD)
        await pilot.press("enter", "enter")
        await wait_screen(pilot, "remote start EP-TEST-1: Accepted", 15)
        await wait_status(station, "charging", lambda s: s["connector"]["status"] == "Charging")
        # Remote stop: the live transaction is proposed; a confirmation comes first.
        await pilot.press("x")
        await wait_screen(pilot, "Remote stop on EP-TEST-1")
        await pilot.press("enter")
        await wait_screen(pilot, "Charging stops and the relay opens.")
        await pilot.press("y")
        await wait_screen(pilot, "remote stop EP-TEST-1: Accepted", 15)
        await wait_status(station, "stopped", lambda s: s["connector"]["session"] is None)
        # Unlock: asks first.
        await pilot.press("u")
        await wait_screen(pilot, "Unlock a connector")
        await pilot.press("enter")
        await wait_screen(pilot, "Unlock connector 1 of EP-TEST-1?")
        await pilot.press("y")
        await wait_screen(pilot, "unlock EP-TEST-1:", 15)
        # Availability: out of service (asks first), then back (does not).
        await pilot.press("v")
        await wait_screen(pilot, "Availability of a connector")
        await pilot.press("enter", "enter")
        await wait_screen(pilot, "out of service?")
        await pilot.press("y")
        await wait_screen(pilot, "make inoperative EP-TEST-1: Accepted", 15)
        await wait_status(
            station, "unavailable", lambda s: s["connector"]["status"] == "Unavailable"
        )
        await pilot.press("v")
        await wait_screen(pilot, "Availability of a connector")
        await pilot.press("enter", "ctrl+u")
        await type_text(pilot, "operative")
        await pilot.press("enter")
        await wait_screen(pilot, "make operative EP-TEST-1: Accepted", 15)
        await wait_status(station, "available", lambda s: s["connector"]["status"] == "Available")
        # Reset: answering No sends nothing.
        before = (await request(station.socket, "status"))["uptime_s"]
        await pilot.press("r")
        await wait_screen(pilot, "Reset EP-TEST-1")
        await pilot.press("enter")
        await wait_screen(pilot, "Soft reset of EP-TEST-1?")
        await pilot.press("n")
        await wait_screen(pilot, lambda s: "reset of" not in s)
        assert (await request(station.socket, "status"))["uptime_s"] > before
        assert "reset" not in message(app)


async def test_a_reset_restarts_the_daemon_and_the_tui_reconnects(station: Daemon) -> None:
    assert station.proc is not None
    pid = station.proc.pid
    async with tui(station) as pilot:
        app = pilot.app
        assert isinstance(app, TechnicianApp)
        await pilot.press("5")
        await wait_screen(pilot, "firmware 0.1.0")
        await pilot.press("r", "enter")
        await wait_screen(pilot, "Soft reset of EP-TEST-1?")
        asked = time.monotonic()
        await pilot.press("y")
        # (The message bar may say "connected" again by the time the screen is read.)
        await wait_screen(pilot, lambda s: "reset EP-TEST-1: Accepted" in app.said, 30)
        # The daemon re-executes itself (same pid) and the TUI finds it again by itself.
        await wait_screen(pilot, lambda s: app.model.connections >= 2, 30, "a reconnection")
        assert app.model.status is not None
        assert app.model.status["uptime_s"] < time.monotonic() - asked  # a new daemon
        assert station.proc.pid == pid and station.proc.poll() is None
        await pilot.press("1")
        await wait_screen(pilot, "Available")


async def test_the_log_screen_filters_by_level_and_masks_cards(station: Daemon) -> None:
    async with tui(station) as pilot:
        await request(station.socket, "tap", uid=CARD)  # logged while the TUI watches
        await pilot.press("6")
        screen = await wait_screen(pilot, f"card {MASKED} presented")
        assert "level ≥ INFO" in screen and "INFO" in screen
        assert CARD not in screen
        await pilot.press("l")  # WARNING and up
        screen = await wait_screen(pilot, "level ≥ WARNING")
        assert "presented" not in screen
        await pilot.press("l", "l", "l")  # ERROR, DEBUG, INFO again
        await wait_screen(pilot, lambda s: "level ≥ INFO" in s and "presented" in s)


async def test_the_tui_waits_for_the_daemon_and_says_when_it_is_gone(tmp_path: Path) -> None:
    # (That it finds a restarted daemon again: the reset test above.)
    config = write_config(tmp_path)
    daemon = Daemon(config)
    app = TechnicianApp(daemon.socket, user="tech")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_screen(pilot, "edgepoint is not running")
            daemon.start()
            await wait_screen(pilot, "PN532", 20)
            await asyncio.to_thread(daemon.stop)
            await wait_screen(pilot, "edgepoint is not running", 10)
    finally:
        daemon.kill()


async def test_several_tuis_at_once_and_one_closing(station: Daemon) -> None:
    async with tui(station) as second:
        async with tui(station) as first:
            await present(station.socket, CARD)
            for pilot in (first, second):
                await wait_screen(pilot, lambda s: "Charging" in s and MASKED in s)
        # The first one is closed: the other goes on, and so does charging.
        await present(station.socket, CARD)
        await wait_screen(second, lambda s: "Available" in s and "no session" in s)
