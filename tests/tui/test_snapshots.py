"""The main screens at 80x24 from fixed data, compared with text snapshots under snapshots/.

The daemon is a real control server answering fixed data, the clock is fixed, and the
telemetry history is injected, so a screen depends on nothing but the code. After an
intended change of a screen, write the snapshots anew and review the diff:

    EDGEPOINT_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/tui/test_snapshots.py

A failing comparison leaves the screen it saw (text and SVG) beside the test's tmp_path.
"""

from __future__ import annotations

import difflib
import math
import os
import pwd
import re
from pathlib import Path

import pytest
from tui_support import (
    FIXED_MONOTONIC,
    SIZE,
    FixedDaemon,
    fixed_app,
    screen_text,
    wait_screen,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("EDGEPOINT_UPDATE_SNAPSHOTS") == "1"


def compare(name: str, screen: str, svg: str, tmp_path: Path) -> None:
    # The daemon names the peer from the kernel's uid: whoever runs the tests.
    screen = re.sub(rf"\b{re.escape(pwd.getpwuid(os.geteuid()).pw_name)}\b", "tech", screen)
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(screen + "\n")
        if not UPDATE:
            pytest.fail(f"no snapshot {path.name} yet: written, review and commit it")
        return
    expected = path.read_text().removesuffix("\n")
    if screen != expected:
        (tmp_path / f"{name}.txt").write_text(screen + "\n")
        (tmp_path / f"{name}.svg").write_text(svg)
        diff = "\n".join(
            difflib.unified_diff(
                expected.splitlines(), screen.splitlines(), "snapshot", "screen", lineterm=""
            )
        )
        pytest.fail(f"{name} differs from {path} (saw: {tmp_path}):\n{diff}")


def _inject_history(app: object) -> None:
    """Five minutes of smooth, known telemetry for connector 1."""
    from edgepoint.tui.app import TechnicianApp

    assert isinstance(app, TechnicianApp)
    track = app.model.telemetry[1]
    for i in range(150):
        at = FIXED_MONOTONIC - 300 + 2 * i
        wave = math.sin(i / 12)
        track.series["voltage_v"].add(at, 230 + 2 * wave)
        track.series["current_a"].add(at, 0 if i < 40 else 31 + wave)
        track.series["power_w"].add(at, 0 if i < 40 else 7200 + 200 * wave)
        track.series["temperature_c"].add(at, 25 + i / 25)


SCREENS = [
    ("overview", "1", "Connectors"),
    ("telemetry", "2", "Temperature"),
    ("sessions", "3", "****9F00"),
    ("cards", "4", "Bob"),
    ("chargers", "5", "AC-2"),
    ("log", "6", "StopTransaction parked"),
]


async def test_the_main_screens_at_80x24(tmp_path: Path) -> None:
    daemon = FixedDaemon(tmp_path / "ctl.sock")
    async with daemon.serving():
        app = fixed_app(daemon.path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_screen(pilot, "EP-SNAP-1")
            _inject_history(app)
            for name, key, marker in SCREENS:
                await pilot.press(key)
                await wait_screen(pilot, marker, what=f"{name} screen")
                await pilot.pause(0.3)  # a redraw tick after the data arrived
                compare(name, screen_text(app), app.export_screenshot(), tmp_path)


async def test_the_screen_without_a_daemon(tmp_path: Path) -> None:
    app = fixed_app(Path("/nonexistent/edgepoint/edgepoint.sock"))  # fixed: it is on screen
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, "edgepoint is not running")
        compare("offline", screen_text(app), app.export_screenshot(), tmp_path)
