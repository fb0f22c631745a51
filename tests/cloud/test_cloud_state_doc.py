"""The /chargers/<key> document: the driver page's fields and formats, and FINISHED -> STANDBY."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cloud_support import T0

from edgepoint.cloud.state import (
    ChargerView,
    SessionFacts,
    display_uid,
    format_duration,
    format_energy,
    format_power,
)


def connector(cid: int = 1, session: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    phase = kw.pop("phase", "Charging" if session else "Available")
    return {
        "id": cid,
        "status": kw.pop("status", "Charging" if session else "Available"),
        "phase": phase,
        "operative": True,
        "relay_closed": session is not None,
        "telemetry_lost": False,
        "session": session,
        "last_sample": {"power_w": kw.pop("power_w", 22_100.0), "energy_wh": 100_500},
        **kw,
    }


def status(*connectors: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "clock_synced": True,
        "connectors": list(connectors),
        "links": {"csms": {"state": "online"}},
        "outbox": {"depth": 2, "oldest_created_at": "2026-03-01T11:59:00.000Z", "parked": 0},
        "alarms": [],
        **kw,
    }


SESSION = {"session_id": "s-1", "id_tag": "****C3D4", "energy_wh": 500, "meter_start_wh": 100_000}
FACTS = {"s-1": SessionFacts("s-1", "04A1C3D4", T0 - timedelta(minutes=12, seconds=5))}


def test_formats_are_the_driver_pages() -> None:
    assert format_power(22_100) == "22.1 kW"
    assert format_energy(500) == "0.5 kWh"
    assert format_duration(725) == "00:12:05"
    assert format_duration(27 * 3600 + 1) == "27:00:01"
    assert display_uid("04A1C3D4", None) == ("****C3D4", "User C3D4")
    uid, name = display_uid("04a1c3d4", "fleet-salt")
    assert uid.startswith("h:") and len(uid) == 18 and name == f"User {uid[2:6].upper()}"
    assert display_uid("04A1C3D4", "fleet-salt") == (uid, name)  # case-insensitive tag
    assert "C3D4" not in uid


def test_a_session_in_progress() -> None:
    view = ChargerView("EP.1", hold_s=5)
    doc = view.document(status(connector(session=SESSION)), FACTS, T0, 0.0).fields
    assert {k: doc[k] for k in ("uid", "username", "power", "energy", "duration", "status")} == {
        "uid": "****C3D4",
        "username": "User C3D4",
        "power": "22.1 kW",
        "energy": "0.5 kWh",
        "duration": "00:12:05",
        "status": "CHARGING",
    }
    assert doc["last_updated"] == "2026-03-01T12:00:00.000Z"
    assert (doc["power_w"], doc["energy_wh"], doc["duration_s"]) == (22_100.0, 500, 725)
    assert doc["session_id"] == "s-1" and doc["station_id"] == "EP.1"
    assert doc["connectors"]["connector_1"]["status"] == "Charging"
    assert doc["outbox"] == {
        "depth": 2,
        "oldest_unsent_age_s": 60.0,
        "parked": 0,
        "dead_letters": 0,
    }
    assert doc["software"] == {"name": "edgepoint", "version": "0.1.0"}
    assert "04A1C3D4" not in str(doc)


def test_finished_then_standby_after_the_hold() -> None:
    view = ChargerView("EP-1", hold_s=5)
    view.document(status(connector(session=SESSION)), FACTS, T0, 0.0)
    ended = {
        "s-1": SessionFacts("s-1", "04A1C3D4", T0 - timedelta(minutes=12), T0, 100_000, 100_700)
    }
    doc = view.document(status(connector()), ended, T0, 1.0)
    assert doc.fields["status"] == "FINISHED"
    assert (doc.fields["energy"], doc.fields["duration"]) == ("0.7 kWh", "00:12:00")
    assert doc.fields["power"] == "0.0 kW" and doc.fields["uid"] == "****C3D4"
    assert view.next_change_at() == 6.0
    still = view.document(status(connector()), ended, T0, 5.9)
    assert still.fields["status"] == "FINISHED"
    after = view.document(status(connector()), ended, T0, 6.0)
    assert after.fields["status"] == "STANDBY"
    assert (after.fields["uid"], after.fields["energy"]) == ("", "0.0 kWh")
    assert after.significant != still.significant
    assert view.next_change_at() is None


def test_finishing_phase_shows_finished() -> None:
    view = ChargerView("EP-1", hold_s=5)
    doc = view.document(
        status(connector(session=SESSION, phase="Finishing", status="Finishing")), FACTS, T0, 0
    )
    assert doc.fields["status"] == "FINISHED" and doc.fields["power"] == "0.0 kW"


def test_the_busiest_connector_speaks_for_the_charger() -> None:
    view = ChargerView("EP-1", hold_s=5)
    doc = view.document(status(connector(1), connector(2, session=SESSION)), FACTS, T0, 0)
    assert doc.fields["status"] == "CHARGING" and doc.fields["connector_id"] == 2
    assert set(doc.fields["connectors"]) == {"connector_1", "connector_2"}


def test_telemetry_alone_is_not_a_state_change_but_a_fault_is() -> None:
    view = ChargerView("EP-1", hold_s=5)
    one = view.document(status(connector(session=SESSION)), FACTS, T0, 0)
    two = view.document(status(connector(session=SESSION, power_w=7_000.0)), FACTS, T0, 1)
    assert one.content != two.content and one.significant == two.significant
    three = view.document(
        status(connector(session=SESSION), alarms=["1 StopTransaction parked"]), FACTS, T0, 2
    )
    assert three.significant != two.significant
    assert three.fields["faults"] == ["1 StopTransaction parked"]
