"""Helpers for the TUI tests: the screen as text, waiting on it, and a daemon with fixed data."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from edgepoint.control.api import Access, Code, ControlApi
from edgepoint.control.server import ControlServer
from edgepoint.errors import ControlError
from edgepoint.tui.app import TechnicianApp

SIZE = (80, 24)
_TEXT = re.compile(
    r'<text class="[^"]*" x="([0-9.]+)" y="[0-9.]+" textLength="[0-9.]+"'
    r' clip-path="url\(#[^)]*-line-(\d+)\)">([^<]*)</text>'
)
_CHAR_WIDTH = 12.2  # Rich's SVG export: 0.61 x its 20 px font


def screen_text(app: TechnicianApp) -> str:
    """The screen as plain text, one line per row, from Textual's own SVG screenshot."""
    width, height = app.size
    rows = [[" "] * width for _ in range(height)]
    for x, line, content in _TEXT.findall(app.export_screenshot()):
        column = round(float(x) / _CHAR_WIDTH)
        for offset, char in enumerate(html.unescape(content).replace("\xa0", " ")):
            if 0 <= column + offset < width and 0 <= int(line) < height:
                rows[int(line)][column + offset] = char
    return "\n".join("".join(row).rstrip() for row in rows)


async def wait_screen(
    pilot: Pilot[None],
    check: str | Callable[[str], bool],
    within_s: float = 10.0,
    what: str = "",
) -> str:
    """Wait until the screen shows `check` (a text, or a predicate on the screen text)."""
    app = pilot.app
    assert isinstance(app, TechnicianApp)
    test = (lambda screen: check in screen) if isinstance(check, str) else check
    deadline = time.monotonic() + within_s
    screen = ""
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        screen = screen_text(app)
        if test(screen):
            return screen
    raise AssertionError(f"not on screen within {within_s} s: {what or check!r}\n{screen}")


def message(app: TechnicianApp) -> str:
    """The message bar's text (the screen shows it above the footer, cut at three lines)."""
    return app.last_message


# -- a daemon with fixed data, for the snapshots --------------------------------------

FIXED_NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
FIXED_MONOTONIC = 5000.0

FIXED_SAMPLE = {
    "seq": 4242,
    "energy_wh": 101250,
    "power_w": 7200.0,
    "current_a": 31.3,
    "voltage_v": 230.1,
    "temperature_c": 31.5,
    "extra": [],
    "channel": 1,
}

FIXED_STATUS: dict[str, Any] = {
    "station": "EP-SNAP-1",
    "version": "0.1.0",
    "simulated": True,
    "uptime_s": 3723.0,
    "clock_synced": True,
    "connectors": [
        {
            "id": 1,
            "status": "Charging",
            "phase": "Charging",
            "operative": True,
            "relay_closed": True,
            "telemetry_lost": False,
            "faults": [],
            "error_code": "NoError",
            "session": {
                "session_id": "s-live",
                "id_tag": "****B2C3",
                "transaction_id": 17,
                "meter_start_wh": 100000,
                "energy_wh": 1250,
            },
            "last_sample": FIXED_SAMPLE,
        },
        {
            "id": 2,
            "status": "Faulted",
            "phase": "Faulted",
            "operative": True,
            "relay_closed": False,
            "telemetry_lost": False,
            "faults": ["overtemperature"],
            "error_code": "HighTemperature",
            "session": None,
            "last_sample": {**FIXED_SAMPLE, "channel": 2, "power_w": 0.0, "current_a": 0.0},
        },
    ],
    "telemetry": {
        "last": FIXED_SAMPLE,
        "reader": {
            "frames": {"frames_ok": 4242, "bad_checksum": 1},
            "connected": True,
            "last_error": None,
        },
        "unrouted_samples": 0,
    },
    "rfid": {"interface": "i2c", "connected": True, "fault": None, "firmware": "1.6"},
    "links": {
        "csms": {"state": "online", "url": "wss://csms.example/ocpp/EP-SNAP-1", "last_error": ""},
        "embedded_csms": {"listening": True, "port": 9000, "connected": ["EP-SNAP-1", "AC-2"]},
    },
    "services": [{"name": "csms link", "state": "running", "restarts": 0, "last_error": ""}],
    "outbox": {
        "depth": 3,
        "parked": 0,
        "oldest_created_at": "2026-01-15T11:58:00.000Z",
        "dead_letters": 0,
        "quarantined": 0,
    },
    "alarms": ["1 StopTransaction parked after repeated refusals"],
    "faults": [],
    "cloud": {
        "firebase": {"state": "ok", "detail": "", "last_ok_at": "2026-01-15T11:59:50.000Z"},
        "ledger": {
            "entries": 12,
            "sinks": {
                "gcs": {"state": "ok", "last_ok_at": "2026-01-15T11:55:00.000Z", "backlog": 2}
            },
        },
        "faults": [],
    },
}

FIXED_SESSIONS = [
    {
        "session_id": "s-live",
        "connector_id": 1,
        "id_tag": "****B2C3",
        "transaction_id": 17,
        "state": "active",
        "started_at": "2026-01-15T11:40:00.000Z",
        "stopped_at": None,
        "stop_reason": None,
        "meter_start_wh": 100000,
        "meter_stop_wh": None,
        "energy_wh": 1200,
    },
    {
        "session_id": "s-old",
        "connector_id": 2,
        "id_tag": "****9F00",
        "transaction_id": 16,
        "state": "stopped",
        "started_at": "2026-01-14T08:00:00.000Z",
        "stopped_at": "2026-01-14T09:30:00.000Z",
        "stop_reason": "Local",
        "meter_start_wh": 90000,
        "meter_stop_wh": 98500,
        "energy_wh": 8500,
    },
]

FIXED_CARDS = [
    {
        "id_tag": "****B2C3",
        "name": "Alice",
        "status": "Accepted",
        "expires": None,
        "parent_id_tag": None,
        "created_at": "2026-01-01T00:00:00.000Z",
        "max_concurrent_tx": 1,
    },
    {
        "id_tag": "****9F00",
        "name": "Bob",
        "status": "Blocked",
        "expires": "2027-01-31T23:59:59.000Z",
        "parent_id_tag": "****B2C3",
        "created_at": "2026-01-02T00:00:00.000Z",
        "max_concurrent_tx": 1,
    },
]

FIXED_CHARGERS = [
    {
        "id": "EP-SNAP-1",
        "online": True,
        "last_seen": "2026-01-15T11:59:58.000Z",
        "vendor": "edgepoint",
        "model": "edgepoint-kiosk",
        "firmware": "0.1.0",
        "connectors": [
            {
                "connector_id": 0,
                "status": "Available",
                "error_code": "NoError",
                "since": "2026-01-15T10:00:00.000Z",
            },
            {
                "connector_id": 1,
                "status": "Charging",
                "error_code": "NoError",
                "since": "2026-01-15T11:40:00.000Z",
            },
        ],
        "health": {
            "window_s": 86400,
            "in_service_share": 1.0,
            "error_share": 0.0,
            "sessions": 4,
            "score": 100,
        },
    },
    {
        "id": "AC-2",
        "online": False,
        "last_seen": "2026-01-15T09:00:00.000Z",
        "vendor": "Acme",
        "model": "AC22",
        "firmware": "2.1",
        "connectors": [
            {
                "connector_id": 1,
                "status": "Faulted",
                "error_code": "GroundFailure",
                "since": "2026-01-15T08:00:00.000Z",
            },
        ],
        "health": {
            "window_s": 86400,
            "in_service_share": 0.5,
            "error_share": 0.5,
            "sessions": 1,
            "score": 40,
        },
    },
]

FIXED_LOG = [
    {
        "seq": 1,
        "time": "2026-01-15T11:40:00.100Z",
        "level": "INFO",
        "logger": "edgepoint.drivers.rfid.reader",
        "message": "card ****B2C3 presented",
    },
    {
        "seq": 2,
        "time": "2026-01-15T11:40:00.120Z",
        "level": "DEBUG",
        "logger": "edgepoint.kiosk",
        "message": "connector 1: Preparing -> Charging",
    },
    {
        "seq": 3,
        "time": "2026-01-15T11:45:00.000Z",
        "level": "WARNING",
        "logger": "edgepoint.chargepoint.link",
        "message": "CSMS connection lost; retrying in 1 s",
    },
    {
        "seq": 4,
        "time": "2026-01-15T11:50:00.000Z",
        "level": "ERROR",
        "logger": "edgepoint.chargepoint.outbox",
        "message": "StopTransaction parked",
    },
]


class FixedDaemon:
    """A real ControlServer whose commands answer fixed data (and record what they got)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status = copy.deepcopy(FIXED_STATUS)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.watchers: list[Callable[[], None]] = []
        self.log_subscribers: list[Callable[[Any], None]] = []
        self.api = ControlApi()
        self.refuse: dict[str, ControlError] = {}  # cmd -> error to raise
        self._register()

    def _command(self, name: str, answer: Any, *, hardware: bool = False) -> None:
        async def handler(**args: Any) -> Any:
            self.calls.append((name, args))
            if name in self.refuse:
                raise self.refuse[name]
            return copy.deepcopy(answer(args) if callable(answer) else answer)

        self.api.add_command(name, handler, hardware=hardware, mutates=hardware, forwarded=True)

    def _register(self) -> None:
        async def status() -> dict[str, Any]:
            return copy.deepcopy(self.status)

        self.api.add_command("status", status)
        self.api.add_state_event("status", status, self._watch)
        self.api.add_stream_event("log", self._subscribe)
        self._command("sessions.list", FIXED_SESSIONS)
        self._command("transactions.list", [])
        self._command("cards.list", FIXED_CARDS)
        self._command("local_list.show", {"version": 3, "entries": FIXED_CARDS[:1]})
        self._command("chargers.list", FIXED_CHARGERS)
        self._command("log.recent", FIXED_LOG)
        self._command("tap", None, hardware=True)
        for name in ("remote_start", "remote_stop", "unlock", "reset", "availability"):
            self._command(f"chargers.{name}", {"status": "Accepted"}, hardware=True)

    def _watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        self.watchers.append(notify)
        return lambda: self.watchers.remove(notify)

    def _subscribe(self, push: Callable[[Any], None]) -> Callable[[], None]:
        self.log_subscribers.append(push)
        return lambda: self.log_subscribers.remove(push)

    def changed(self) -> None:
        for notify in list(self.watchers):
            notify()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FixedDaemon]:
        # This process's user may act (a refusal is staged with `refuse`); who may not is
        # tested with a real user in test_permissions.py.
        access = Access(os.geteuid(), os.getegid(), "technicians")
        server = ControlServer(self.path, self.api, access)
        task = asyncio.create_task(server.run())
        try:
            for _ in range(500):
                if self.path.exists():
                    break
                await asyncio.sleep(0.01)
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def refusal(message: str, code: str = Code.FORBIDDEN) -> ControlError:
    return ControlError(message, code)


def fixed_app(socket: Path) -> TechnicianApp:
    """The app on a fixed clock, as the snapshots were taken."""
    return TechnicianApp(
        socket, now=lambda: FIXED_NOW, monotonic=lambda: FIXED_MONOTONIC, user="tech"
    )


# -- tapping a card on a running daemon ------------------------------------------------

# Empty polls in a row that make a card away for longer than removal_s (0.2 s / 0.05 s).
EMPTY_PROBES = 6


async def present(socket: Path, card: str, within_s: float = 10.0) -> None:
    """Tap `card` and return once it is away long enough to tap again (as a driver would)."""
    from edgepoint.control.client import request

    before = (await _rfid(socket))["published"]
    await request(socket, "tap", uid=card)
    await wait_away(socket, before, within_s)


async def _rfid(socket: Path) -> dict[str, Any]:
    from edgepoint.control.client import request

    status: dict[str, Any] = await request(socket, "status")
    return dict(status["rfid"])


async def wait_away(socket: Path, published_before: int, within_s: float = 10.0) -> None:
    """Wait until the reader published a card after `published_before` and it has left."""
    deadline = time.monotonic() + within_s
    last: dict[str, int] = {}
    while time.monotonic() < deadline:
        now = await _rfid(socket)
        if now["published"] > published_before:
            if now["reads"] != last.get("reads"):
                last.update(reads=now["reads"], probes=now["probes"])  # still in the field
            elif now["probes"] - last["probes"] >= EMPTY_PROBES:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no card was seen and taken away within {within_s} s")
