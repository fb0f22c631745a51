"""The live document at `/chargers/<station key>`: the driver page's fields and the fleet's.

The driver page reads `status` (STANDBY, CHARGING, FINISHED and STANDBY again
`firebase.finished_hold_s` after a session ends), `uid` (masked `****C3D4`, or a salted
hash `h:<16 hex>`), `username` (`User C3D4`), `power` (`22.1 kW`), `energy` (`0.5 kWh`),
`duration` (`00:12:05`) and `last_updated` (ISO-8601 UTC). They describe the connector
that matters most: the first one charging, else the first that just finished, else
connector 1. Beside them, for machines: `station_id`, `power_w`, `energy_wh`,
`duration_s`, `session_id`, `connector_id`, `state` (its OCPP status), `connectors`
(`connector_1`, ... — never bare integers, which Realtime Database would turn into an
array), `faults`, `links`, `software`, `outbox` and `clock_synced`. docs/cloud.md has
the full table.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgepoint.clock import iso_utc
from edgepoint.redact import mask_id_tag

STANDBY, CHARGING, FINISHED = "STANDBY", "CHARGING", "FINISHED"


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the status snapshot does not carry about a session, read once from the database."""

    session_id: str
    id_tag: str  # in full: only used to make the masked or hashed display
    started_at: datetime | None
    stopped_at: datetime | None = None
    meter_start_wh: int | None = None
    meter_stop_wh: int | None = None


@dataclass(frozen=True, slots=True)
class ChargerDocument:
    """The fields to write, and the part of them whose change is published at once."""

    fields: dict[str, Any]
    significant: tuple[Any, ...]

    @property
    def content(self) -> dict[str, Any]:
        """The fields without the write time, to tell whether anything changed."""
        return {k: v for k, v in self.fields.items() if k != "last_updated"}


def format_power(watts: float) -> str:
    return f"{watts / 1000:.1f} kW"


def format_energy(wh: float) -> str:
    return f"{wh / 1000:.1f} kWh"


def format_duration(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def display_uid(id_tag: str, salt: str | None) -> tuple[str, str]:
    """(uid, username) as published: never the full card id."""
    if salt:
        digest = hmac.new(salt.encode(), id_tag.upper().encode(), hashlib.sha256).hexdigest()
        return f"h:{digest[:16]}", f"User {digest[:4].upper()}"
    masked = mask_id_tag(id_tag).upper()  # ****C3D4, as in logs and `status`
    return masked, f"User {masked.removeprefix('****')}"


@dataclass(slots=True)
class _Finished:
    session_id: str
    until: float  # monotonic
    energy_wh: int
    duration_s: float


@dataclass(slots=True)
class ChargerView:
    """Turns successive status snapshots into documents, keeping FINISHED for a while."""

    station_id: str
    hold_s: float
    uid_salt: str | None = None
    _running: dict[int, tuple[str, int, float]] = field(default_factory=dict)
    _finished: dict[int, _Finished] = field(default_factory=dict)

    def next_change_at(self) -> float | None:
        """Monotonic time at which a FINISHED connector turns to STANDBY, if any."""
        return min((f.until for f in self._finished.values()), default=None)

    def document(
        self,
        status: Mapping[str, Any],
        facts: Mapping[str, SessionFacts],
        now: datetime,
        mono: float,
    ) -> ChargerDocument:
        connectors = list(status.get("connectors") or [])
        rows = [self._connector(c, facts, now, mono) for c in connectors]
        primary = next((r for r in rows if r["legacy"] == CHARGING), None)
        primary = primary or next((r for r in rows if r["legacy"] == FINISHED), None)
        primary = primary or (rows[0] if rows else _idle_row())
        faults = _faults(status, connectors)
        links = {"csms": (status.get("links") or {}).get("csms", {}).get("state")}
        outbox = status.get("outbox") or {}
        fields: dict[str, Any] = {
            "uid": primary["uid"],
            "username": primary["username"],
            "power": format_power(primary["power_w"]),
            "energy": format_energy(primary["energy_wh"]),
            "duration": format_duration(primary["duration_s"]),
            "status": primary["legacy"],
            "last_updated": iso_utc(now),
            "station_id": self.station_id,
            "power_w": primary["power_w"],
            "energy_wh": primary["energy_wh"],
            "duration_s": int(primary["duration_s"]),
            "session_id": primary["session_id"],
            "connector_id": primary["id"],
            "state": primary["state"],
            "connectors": {f"connector_{r['id']}": _machine(r) for r in rows},
            "faults": faults,
            "links": links,
            "software": {"name": "edgepoint", "version": status.get("version")},
            "outbox": {
                "depth": outbox.get("depth", 0),
                "oldest_unsent_age_s": _age_s(outbox.get("oldest_created_at"), now),
                "parked": outbox.get("parked", 0),
                "dead_letters": outbox.get("dead_letters", 0),
            },
            "clock_synced": bool(status.get("clock_synced", False)),
        }
        significant = (
            primary["legacy"],
            primary["session_id"],
            tuple(
                (r["id"], r["state"], r["phase"], r["operative"], r["session_id"], r["legacy"])
                for r in rows
            ),
            tuple(faults),
            links["csms"],
            fields["clock_synced"],
        )
        return ChargerDocument(fields, significant)

    def _connector(
        self, c: Mapping[str, Any], facts: Mapping[str, SessionFacts], now: datetime, mono: float
    ) -> dict[str, Any]:
        cid = int(c.get("id", 1))
        session = c.get("session") or None
        sample = c.get("last_sample") or {}
        row: dict[str, Any] = {
            "id": cid,
            "state": c.get("status"),
            "phase": c.get("phase"),
            "operative": c.get("operative", True),
            "relay_closed": c.get("relay_closed", False),
            "telemetry_lost": c.get("telemetry_lost", False),
            "faults": [str(f) for f in c.get("faults", []) or []],
            "session_id": None,
            "uid": "",
            "username": "",
            "power_w": 0.0,
            "energy_wh": 0,
            "duration_s": 0.0,
            "legacy": STANDBY,
        }
        running = self._running.get(cid)
        sid = session.get("session_id") if session else None
        if running is not None and running[0] != sid:
            # The session we were showing has ended: FINISHED, for hold_s.
            ended_sid, energy, duration = running
            fact = facts.get(ended_sid)
            if (
                fact is not None
                and fact.meter_stop_wh is not None
                and fact.meter_start_wh is not None
            ):
                energy = fact.meter_stop_wh - fact.meter_start_wh
            if fact is not None and fact.stopped_at and fact.started_at:
                duration = (fact.stopped_at - fact.started_at).total_seconds()
            self._finished[cid] = _Finished(ended_sid, mono + self.hold_s, energy, duration)
            del self._running[cid]
        if sid is not None:
            self._finished.pop(cid, None)
            fact = facts.get(sid)
            energy = int((session or {}).get("energy_wh") or 0)
            duration = (now - fact.started_at).total_seconds() if fact and fact.started_at else 0.0
            uid, username = self._uid(fact, session)
            finishing = c.get("phase") == "Finishing"
            row.update(
                session_id=sid,
                uid=uid,
                username=username,
                power_w=0.0 if finishing else float(sample.get("power_w") or 0.0),
                energy_wh=energy,
                duration_s=duration,
                legacy=FINISHED if finishing else CHARGING,
            )
            self._running[cid] = (sid, energy, duration)
            return row
        done = self._finished.get(cid)
        if done is not None and mono < done.until:
            uid, username = self._uid(facts.get(done.session_id), None)
            row.update(
                session_id=done.session_id,
                uid=uid,
                username=username,
                energy_wh=done.energy_wh,
                duration_s=done.duration_s,
                legacy=FINISHED,
            )
        elif done is not None:
            del self._finished[cid]
        return row

    def _uid(self, fact: SessionFacts | None, session: Mapping[str, Any] | None) -> tuple[str, str]:
        if fact is not None:
            return display_uid(fact.id_tag, self.uid_salt)
        if session is not None and not self.uid_salt:
            # The status already carries the masked tag (****C3D4).
            masked = str(session.get("id_tag") or "").lstrip("*")
            return (f"****{masked}", f"User {masked}") if masked else ("", "")
        return "", ""


def _idle_row() -> dict[str, Any]:
    return {
        "id": 1,
        "state": None,
        "phase": None,
        "session_id": None,
        "uid": "",
        "username": "",
        "power_w": 0.0,
        "energy_wh": 0,
        "duration_s": 0.0,
        "legacy": STANDBY,
    }


def _machine(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": row["state"],
        "phase": row["phase"],
        "operative": row["operative"],
        "relay_closed": row["relay_closed"],
        "telemetry_lost": row["telemetry_lost"],
        "faults": row["faults"],
        "session_id": row["session_id"],
        "power_w": row["power_w"],
        "energy_wh": row["energy_wh"],
    }


def _faults(status: Mapping[str, Any], connectors: list[Mapping[str, Any]]) -> list[str]:
    faults = [str(a) for a in status.get("alarms") or []]
    faults += [str(f) for f in status.get("faults") or []]
    for c in connectors:
        if c.get("telemetry_lost"):
            faults.append(f"connector {c.get('id')}: telemetry lost")
        faults += [f"connector {c.get('id')}: {f}" for f in c.get("faults", []) or []]
    cloud = status.get("cloud") or {}
    faults += [str(f) for f in cloud.get("faults") or []]
    return faults


def _age_s(created_at: str | None, now: datetime) -> float | None:
    if not created_at:
        return None
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    return round(max(0.0, (now - moment).total_seconds()), 1)
