"""The TUI as a technician outside the hardware group: refused the socket, then read-only.

A child process becomes `nobody` (fork + setuid, as tests/control/test_control_api.py
does; an exec would not do: the interpreter lives under /root) and runs the real TUI
headless against a real daemon running as root. First the socket's folder is closed to
it (the daemon's group only): the TUI shows the no-access screen. Then the folder and
socket are given to nobody's group, as an installation gives them to technicians: the
TUI connects by itself, shows the status, says it is read-only, refuses a tap itself and
shows the daemon's own `forbidden` when it sends one anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  (loaded lazily; the child cannot read /root)
import dataclasses
import json
import os
import select
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, cli, write_config
from tui_support import SIZE, message, screen_text, wait_screen

from edgepoint.tui.app import TechnicianApp

NOBODY = 65534  # nobody:nogroup on Debian
CARD = "04A1B2C3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@pytest.fixture
def station() -> Iterator[Daemon]:
    # A folder `nobody` can traverse (pytest's tmp_path sits in a 0700 folder).
    folder = Path(tempfile.mkdtemp(prefix="ep-tui-", dir="/tmp"))
    folder.chmod(0o711)
    config = write_config(folder)
    cli(config, "cards", "add", CARD, "--name", "Alice")
    config.chmod(0o644)
    daemon = Daemon(config).start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()
        shutil.rmtree(folder, ignore_errors=True)


async def _as_root(socket: Path) -> str:
    """The daemon's own user: may act (and Textual is fully imported before the fork)."""
    app = TechnicianApp(socket, user="root")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_screen(pilot, "PN532")
        await pilot.press("t")
        await wait_screen(pilot, "Present a card")
        await pilot.press("escape")
        await pilot.press("4")
        await wait_screen(pilot, "Alice")
        return screen


async def _as_nobody(socket: Path, report: int, go: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    app = TechnicianApp(socket, user="nobody")
    async with app.run_test(size=SIZE) as pilot:
        seen["refused"] = await wait_screen(pilot, "No access to the control socket")
        os.write(report, b"A")
        await asyncio.to_thread(os.read, go, 1)  # the parent opened the socket to our group
        seen["connected"] = await wait_screen(
            pilot, lambda s: "PN532" in s and "read-only" in s.splitlines()[0], 15
        )
        seen["message"] = message(app)
        await pilot.press("t")  # hello said: no hardware commands for nobody
        await wait_screen(pilot, lambda s: "forbidden" in message(app))
        seen["tap_refused_here"] = message(app)
        # Were the grant out of date, the daemon refuses all the same, and that shows.
        grant = app.model.grant
        assert grant is not None
        app.model.grant = dataclasses.replace(grant, allowed=grant.allowed | {"tap"})
        await pilot.press("t")
        await wait_screen(pilot, "Present a card")
        await pilot.press(*CARD, "enter")
        await wait_screen(pilot, lambda s: "tap: forbidden" in message(app))
        seen["tap_refused_by_daemon"] = message(app)
        await pilot.press("4")  # reading is for everyone who may open the socket
        seen["cards"] = await wait_screen(pilot, "Alice")
        seen["final"] = screen_text(app)
    return seen


def test_a_technician_outside_the_group_reads_but_may_not_act(station: Daemon) -> None:
    var = station.socket.parent
    assert asyncio.run(_as_root(station.socket))  # warm-up, as the daemon's user
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, run the TUI, write what it saw, _exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            seen = asyncio.run(_as_nobody(station.socket, report_w, go_r))
            os.write(report_w, b"R" + json.dumps(seen).encode())
            code = 0
        except BaseException as err:
            os.write(report_w, b"E" + json.dumps(repr(err)).encode())
        finally:
            os._exit(code)
    os.close(report_w)
    try:
        ready, _, _ = select.select([report_r], [], [], 20)
        first = os.read(report_r, 1) if ready else b""
        assert first == b"A", first + os.read(report_r, 100_000)
        # What an installation does: the socket's folder and file belong to the group
        # technicians are in (here nobody's own group); acting still takes control.group.
        os.chown(var, -1, NOBODY)
        os.chown(station.socket, -1, NOBODY)
        os.write(go_w, b"g")
        chunks = []
        while chunk := os.read(report_r, 100_000):
            chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(report_r)
        os.close(go_w)
        os.close(go_r)
    output = b"".join(chunks)
    assert os.waitstatus_to_exitcode(status) == 0 and output[:1] == b"R", output
    seen = json.loads(output[1:])
    assert "edgepoint is not running" not in seen["refused"]
    assert "nobody read-only" in seen["connected"] and "Available" in seen["connected"]
    assert "read-only: nobody is not in group 'root'" in seen["message"]
    assert "forbidden: tap acts on hardware" in seen["tap_refused_here"]
    assert "tap: forbidden" in seen["tap_refused_by_daemon"]
    assert "nobody" in seen["tap_refused_by_daemon"]
    assert "****B2C3" in seen["cards"]
    # Nothing reached the hardware, and the daemon logged the refusal with the user.
    assert station.status()["connector"]["status"] == "Available"
    assert "refused tap to nobody" in station.log.read_text()
