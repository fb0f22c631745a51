"""The whole path in one real daemon: tap, charge, tap, and a transaction in the CSMS's books."""

from __future__ import annotations

import signal
import time

import pytest
from daemon_harness import Daemon, cli, query, register

pytestmark = pytest.mark.timeout(90)

CARD = "04A1B2C3"


def test_tap_charge_tap_records_exactly_one_transaction(daemon: Daemon) -> None:
    cli(daemon.config, "cards", "add", CARD, "--name", "Alice")  # daemon stopped
    daemon.start()
    before = daemon.wait_ready()
    assert before["connector"]["relay_closed"] is False

    cli(daemon.config, "sim", "tap", CARD)
    charging = daemon.wait_for(
        "charging", lambda s: s["connector"]["status"] == "Charging", timeout=10
    )
    assert charging["connector"]["relay_closed"] is True
    # The relay was open until now, so the register has not moved since `before`.
    assert charging["connector"]["session"]["meter_start_wh"] == register(before)

    time.sleep(2.5)  # energy flows; MeterValues every second
    mid = daemon.status()
    assert register(mid) > register(before)

    cli(daemon.config, "sim", "tap", CARD)
    done = daemon.wait_for(
        "available, outbox drained",
        lambda s: s["connector"]["status"] == "Available" and s["outbox"]["depth"] == 0,
    )
    assert done["connector"]["relay_closed"] is False
    time.sleep(0.3)  # a few more frames: the register must stay where it stopped
    final = register(daemon.status())

    code, took = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.tail()
    assert took < 5.0

    csms_db = daemon.config.parent / "var" / "csms.db"
    rows = query(
        csms_db,
        "SELECT transaction_id, charge_point_id, connector_id, id_tag, meter_start, meter_stop,"
        " stop_reason, start_timestamp, stop_timestamp FROM transactions",
    )
    assert len(rows) == 1, rows
    tx, cp, connector, id_tag, meter_start, meter_stop, reason, started, stopped = rows[0]
    assert (cp, connector, id_tag) == ("EP-TEST-1", 1, CARD)
    assert meter_start == register(before)
    assert meter_stop == final
    assert meter_stop > meter_start
    assert reason == "Local"
    for stamp in (started, stopped):
        assert stamp.endswith(("Z", "+00:00")), stamp

    energy = query(
        csms_db,
        "SELECT CAST(value AS INTEGER) FROM meter_values WHERE transaction_id = ?"
        " AND measurand = 'Energy.Active.Import.Register' ORDER BY timestamp",
        tx,
    )
    assert len(energy) >= 2, energy
    readings = [e[0] for e in energy]
    assert readings == sorted(readings)
    assert meter_start <= readings[0] and readings[-1] <= meter_stop

    (status,) = query(
        csms_db,
        "SELECT status FROM connectors WHERE charge_point_id = 'EP-TEST-1' AND connector_id = 1",
    )
    assert status == ("Available",)

    cp_db = daemon.config.parent / "var" / "edgepoint.db"
    assert query(cp_db, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert query(cp_db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert query(cp_db, "SELECT transaction_id, state FROM sessions") == [(tx, "stopped")]


def test_unknown_and_blocked_cards_get_no_relay_and_no_transaction(daemon: Daemon) -> None:
    cli(daemon.config, "cards", "add", "DEADBEEF")
    cli(daemon.config, "cards", "block", "DEADBEEF")
    daemon.start()
    daemon.wait_ready()
    for card in ("DEADBEEF", "0BADCAFE"):
        cli(daemon.config, "sim", "tap", card)
        daemon.wait_for("card refused", lambda s: s["connector"]["phase"] == "Available")
        time.sleep(0.5)
        s = daemon.status()
        assert s["connector"]["relay_closed"] is False
        assert s["connector"]["session"] is None
    assert daemon.stop()[0] == 0
    assert query(daemon.config.parent / "var" / "csms.db", "SELECT * FROM transactions") == []


def test_another_card_cannot_stop_the_session_and_sigterm_ends_it(daemon: Daemon) -> None:
    cli(daemon.config, "cards", "add", CARD)
    cli(daemon.config, "cards", "add", "04FFEE11")
    daemon.start()
    daemon.wait_ready()
    cli(daemon.config, "sim", "tap", CARD)
    daemon.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")
    cli(daemon.config, "sim", "tap", "04FFEE11")
    time.sleep(1.0)
    s = daemon.status()
    assert s["connector"]["status"] == "Charging" and s["connector"]["relay_closed"]
    assert s["connector"]["session"]["id_tag"] == "****" + CARD[-4:]  # masked

    code, took = daemon.stop(signal.SIGINT)
    assert code == 0 and took < 5.0, daemon.tail()
    rows = query(
        daemon.config.parent / "var" / "csms.db",
        "SELECT stop_reason, meter_stop >= meter_start FROM transactions",
    )
    # The StopTransaction queued at shutdown reached the CSMS before the link closed.
    assert rows == [("Reboot", 1)]
