"""A short tap in the first moments of a real daemon is read (the reader arms the chip at once)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from daemon_harness import Daemon, write_config

from edgepoint.control.client import request

pytestmark = pytest.mark.timeout(60)


def tap_as_soon_as_it_answers(daemon: Daemon) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        try:
            asyncio.run(request(daemon.socket, "status"))
            break
        except Exception:  # not listening yet
            assert time.monotonic() < deadline, daemon.tail()
            time.sleep(0.005)
    # The emulated card dwells for its default 0.3 s, as `edgepoint sim tap` does.
    asyncio.run(request(daemon.socket, "tap", uid="04A1B2C3"))


@pytest.mark.parametrize("run", [1, 2])
def test_a_tap_right_after_start_is_read(tmp_path: Path, run: int) -> None:
    daemon = Daemon(write_config(tmp_path)).start()
    try:
        tap_as_soon_as_it_answers(daemon)
        status = daemon.wait_for("the tap read", lambda s: s["rfid"]["published"] >= 1)
        assert status["rfid"]["errors"] == 0
    finally:
        daemon.kill()
    assert "card ****B2C3 presented" in daemon.log.read_text()
