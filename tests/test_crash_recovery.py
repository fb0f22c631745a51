"""kill -9 mid-session: the next start closes the session once, with the meter's reading."""

from __future__ import annotations

import signal
import stat
import time

import pytest
from daemon_harness import Daemon, cli, query, register

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"
CP = "EP-TEST-1"


def test_kill_9_mid_session_is_closed_as_power_loss_at_the_next_start(daemon: Daemon) -> None:
    var = daemon.config.parent / "var"
    cp_db, csms_db, key_file = (
        var / "edgepoint.db",
        var / "csms.db",
        var / "secrets/chargepoint.key",
    )
    cli(daemon.config, "cards", "add", CARD)
    daemon.start()
    daemon.wait_ready()
    key = key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    cli(daemon.config, "sim", "tap", CARD)
    charging = daemon.wait_for("charging", lambda s: s["connector"]["status"] == "Charging")
    meter_start = charging["connector"]["session"]["meter_start_wh"]
    # Energy flows (1 Wh per 0.1 s) and MeterValues reach the CSMS (every second).
    daemon.wait_for("energy flowing", lambda s: register(s) >= meter_start + 15)
    seen = register(daemon.status())

    assert daemon.proc is not None
    daemon.proc.kill()  # SIGKILL: no shutdown code runs, the relay state dies with us
    daemon.proc.wait(timeout=5)
    ((session_id, state),) = query(cp_db, "SELECT session_id, state FROM sessions")
    assert state == "active"
    (tx_before,) = query(csms_db, "SELECT transaction_id, meter_stop FROM transactions")
    assert tx_before[1] is None  # the CSMS still thinks the car is charging

    again = Daemon(daemon.config).start()
    try:
        ready = again.wait_for(
            "recovered: online, Available, outbox drained",
            lambda s: (
                s["links"]["csms"]["state"] == "online"
                and s["connector"]["status"] == "Available"
                and s["outbox"]["depth"] == 0
            ),
        )
        assert ready["connector"]["relay_closed"] is False
        assert ready["connector"]["session"] is None
        assert ready["outbox"]["dead_letters"] == 0
        # The relay has been open since the restart, so the register has not moved:
        # this is the meter's first reading after the crash.
        first_reading = register(ready)
        time.sleep(0.3)
        assert register(again.status()) == first_reading
        assert again.status()["connector"]["relay_closed"] is False
        code, _ = again.stop(signal.SIGTERM)
        assert code == 0, again.tail()
    finally:
        again.kill()

    # The meter kept its register across our crash (it lives in the ESP32's NVS),
    # so the reading after the restart is at least what was seen before it.
    assert first_reading >= seen > meter_start

    rows = query(
        csms_db,
        "SELECT transaction_id, charge_point_id, id_tag, meter_start, meter_stop, stop_reason,"
        " stop_id_tag FROM transactions",
    )
    assert rows == [(tx_before[0], CP, CARD, meter_start, first_reading, "PowerLoss", None)]
    energy = [
        int(v)
        for (v,) in query(
            csms_db,
            "SELECT value FROM meter_values WHERE transaction_id = ?"
            " AND measurand = 'Energy.Active.Import.Register' ORDER BY timestamp",
            tx_before[0],
        )
    ]
    assert energy, "MeterValues reached the CSMS before the crash"
    assert meter_start <= min(energy) and max(energy) <= first_reading

    assert query(
        cp_db,
        "SELECT session_id, transaction_id, state, stop_reason, meter_stop_wh FROM sessions",
    ) == [(session_id, tx_before[0], "stopped", "PowerLoss", first_reading)]
    assert query(cp_db, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert query(cp_db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]

    # The same key opened the embedded CSMS's door both times: one charger row, rebooted.
    assert key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    ((cp_id, boots_after),) = query(csms_db, "SELECT id, last_boot_at FROM charge_points")
    assert cp_id == CP and boots_after is not None
    (status,) = query(
        csms_db, "SELECT status FROM connectors WHERE charge_point_id = ? AND connector_id = 1", CP
    )
    assert status == ("Available",)
