"""What the TUI knows about the daemon, updated from the event stream (no Textual here)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgepoint.tui.connection import Grant
from edgepoint.tui.formats import parse_time
from edgepoint.tui.plot import History

MEASURES = ("voltage_v", "current_a", "power_w", "temperature_c")
LOG_KEPT = 2000


@dataclass
class Telemetry:
    """One connector's measurements over the last minutes."""

    last_seq: int | None = None
    series: dict[str, History] = field(default_factory=lambda: {m: History() for m in MEASURES})


class Model:
    """The daemon as last seen: status, access, sessions, link times, telemetry, log."""

    def __init__(self, now: Callable[[], datetime], monotonic: Callable[[], float]) -> None:
        self.now = now
        self.monotonic = monotonic
        self.grant: Grant | None = None
        self.status: dict[str, Any] | None = None
        self.connected = False
        self.offline_reason: tuple[str, str] | None = None  # (code, message)
        # When this TUI last saw each link working (wall clock).
        self.seen: dict[str, datetime] = {}
        self.telemetry: dict[int, Telemetry] = {}
        self.sessions: list[dict[str, Any]] = []  # sessions.list, newest first
        self.session_keys: frozenset[tuple[int, str]] = frozenset()
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_KEPT)
        self.log_lost = 0
        self.log_epoch = 0  # changes when the log changed other than by appending
        self.status_count = 0
        self.connections = 0  # times the stream was (re)established

    # -- the stream --------------------------------------------------------------------

    def connect(self, grant: Grant) -> None:
        self.grant = grant
        self.connected = True
        self.connections += 1
        self.log.clear()  # a restarted daemon numbers its records afresh
        self.log_lost = 0
        self.log_epoch += 1
        self.offline_reason = None

    def disconnect(self, code: str, message: str) -> None:
        self.connected = False
        self.offline_reason = (code, message)

    def apply_status(self, status: dict[str, Any]) -> bool:
        """Take a new status; True if the set of running sessions changed."""
        self.status = status
        self.status_count += 1
        now, mono = self.now(), self.monotonic()
        for name, up in link_states(status).items():
            if up and name != "esp32":  # the ESP32 is seen when a new sample comes
                self.seen[name] = now
        for connector in status.get("connectors", []):
            sample = connector.get("last_sample")
            if not sample:
                continue
            track = self.telemetry.setdefault(int(connector["id"]), Telemetry())
            if sample.get("seq") == track.last_seq:
                continue
            track.last_seq = sample.get("seq")
            self.seen["esp32"] = now
            for measure in MEASURES:
                value = sample.get(measure)
                if isinstance(value, int | float):
                    track.series[measure].add(mono, float(value))
        keys = frozenset(
            (int(c["id"]), str(c["session"]["session_id"]))
            for c in status.get("connectors", [])
            if c.get("session")
        )
        changed = keys != self.session_keys
        self.session_keys = keys
        return changed

    def add_log(self, records: list[dict[str, Any]], lost: int = 0) -> None:
        """Add records, kept in the daemon's order; ones seen already (by seq) are skipped."""
        self.log_lost += lost
        newest = self.log[-1]["seq"] if self.log else 0
        if all(int(r.get("seq", 0)) > newest for r in records):  # the stream: in order
            self.log.extend(sorted(records, key=lambda r: int(r.get("seq", 0))))
            return
        # `log.recent` answered after the stream had started: merge the two.
        merged = {int(r.get("seq", 0)): r for r in [*self.log, *records]}
        self.log.clear()
        self.log.extend(merged[seq] for seq in sorted(merged))
        self.log_epoch += 1

    def session_started(self, session_id: str) -> datetime | None:
        for row in self.sessions:
            if row.get("session_id") == session_id:
                return parse_time(row.get("started_at"))
        return None


def link_states(status: dict[str, Any]) -> dict[str, bool]:
    """Which links work in this status (CSMS, site CSMS, Firebase, ledger, ESP32, PN532)."""
    links = status.get("links") or {}
    cloud = status.get("cloud") or {}
    csms = links.get("csms") or {}
    embedded = links.get("embedded_csms")
    reader = (status.get("telemetry") or {}).get("reader") or {}
    rfid = status.get("rfid") or {}
    states = {
        "csms": csms.get("state") == "online",
        "esp32": bool(reader.get("connected")),
        "pn532": bool(rfid.get("connected")) and not rfid.get("fault"),
    }
    if embedded is not None:
        states["site"] = bool(embedded.get("listening"))
    if firebase := cloud.get("firebase"):
        states["firebase"] = firebase.get("state") == "ok"
    return states
