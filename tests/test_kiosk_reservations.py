"""Reservations in the kiosk loop, with two connectors: where a reservation for any connector
goes, what the database holds with the statuses, expiry, and a reservation lost to a fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import query
from gpiozero.pins.mock import MockFactory

from edgepoint.chargepoint.authorizer import Authorizer
from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.connector import Connector, Phase
from edgepoint.charging.events import (
    AuthorizationStatus,
    IdTag,
    SessionId,
    TelemetrySample,
    TokenPresented,
)
from edgepoint.charging.faults import Limits
from edgepoint.clock import SystemClock
from edgepoint.config import ConnectorConfig, HardwareConfig
from edgepoint.drivers.panel import Panel
from edgepoint.kiosk import (
    CancelReservation,
    ConnectorSetup,
    Kiosk,
    RemoteStart,
    ReserveNow,
    new_session_id,
)
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.reservations import Reservation, ReservationStore

pytestmark = pytest.mark.timeout(20)

ALICE, BOB, CAROL = IdTag("04A1B2C3"), IdTag("04B0B0B0"), IdTag("04CAC0C0")
HARDWARE = HardwareConfig(
    simulate=True,
    serial_port="unused",
    serial_baudrate=115200,
    relay_pin=17,
    green_led_pin=27,
    red_led_pin=22,
    buzzer_pin=23,
    telemetry_timeout_s=60,
)
CONNECTORS = (ConnectorConfig(1, 5, 1), ConnectorConfig(2, 6, 2))


class Offline:
    """No CSMS: the local list decides (ALICE, BOB and CAROL are on it)."""

    online = False

    async def authorize(self, id_tag: str, deadline_s: float) -> dict[str, Any] | None:
        return None


class Sessions:
    """A SessionListener that records what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int, str]] = []
        self.profiles: list[Any] = []

    def session_began(
        self, cid: int, session_id: SessionId, id_tag: IdTag, at: datetime, profile: Any
    ) -> None:
        self.heard.append(("began", cid, id_tag))
        self.profiles.append(profile)

    def session_ended(self, cid: int, session_id: SessionId) -> None:
        self.heard.append(("ended", cid, ""))

    def transaction_known(self, session_id: SessionId, transaction_id: int) -> None:
        self.heard.append(("known", transaction_id, ""))


@dataclass
class Rig:
    kiosk: Kiosk
    store: ChargePointStore
    path: Path
    sessions: Sessions

    def sample(self, channel: int, energy_wh: int, temperature_c: float = 20.0) -> None:
        self.kiosk.publish(
            TelemetrySample(1, energy_wh, 0.0, 0.0, 230.0, temperature_c, channel=channel)
        )

    def phases(self) -> list[Phase]:
        return [c.phase for c in self.kiosk.snapshot().connectors]

    def statuses(self, cid: int) -> list[str]:
        """The StatusNotifications of connector `cid` in the outbox, oldest first."""
        rows = query(self.path, "SELECT payload FROM outbox WHERE action = 'StatusNotification'")
        payloads = [json.loads(row[0]) for row in rows]
        return [p["status"] for p in payloads if p["connectorId"] == cid]

    def stored(self) -> list[tuple[int, int]]:
        return query(self.path, "SELECT reservation_id, connector_id FROM reservations")


async def eventually(what: str, check: Callable[[], bool], within: float = 5) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def reservation(rid: int, cid: int, tag: IdTag = ALICE, seconds: float = 600) -> Reservation:
    return Reservation(rid, cid, tag, datetime.now(UTC) + timedelta(seconds=seconds))


@contextlib.asynccontextmanager
async def running(path: Path, restored: list[Reservation] | None = None) -> AsyncIterator[Rig]:
    store = await ChargePointStore.open(path)
    panel = Panel(HARDWARE, CONNECTORS, pin_factory=MockFactory())
    lists = AuthListStore(store.db)
    accepted = TagEntry(AuthorizationStatus.ACCEPTED)
    await lists.replace_local_list(1, {ALICE: accepted, BOB: accepted, CAROL: accepted})
    clock = SystemClock()
    authorizer = Authorizer(lists, Offline(), Settings(), clock, deadline_s=1)
    setups = [
        ConnectorSetup(c.id, Connector(new_session_id, 3600), c.meter_channel) for c in CONNECTORS
    ]
    sessions = Sessions()
    kiosk = Kiosk(
        setups,
        store,
        panel,
        authorizer,
        clock,
        60,
        limits=Limits(clear_after_s=0.2),
        sessions=sessions,
    )
    kiosk.restore_reservations(restored or [])
    task = asyncio.create_task(kiosk.run())
    rig = Rig(kiosk, store, path, sessions)
    rig.sample(1, 1000)
    rig.sample(2, 5000)
    try:
        await eventually(
            "telemetry on both", lambda: all(c.last_sample for c in kiosk.snapshot().connectors)
        )
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        panel.close()
        await store.close()


@pytest.fixture(name="rig")
async def rig_fixture(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running(tmp_path / "edgepoint.db") as rig:
        yield rig


async def test_any_connector_keeps_the_last_free_one_for_the_reserved_card(rig: Rig) -> None:
    kiosk = rig.kiosk
    assert await kiosk.submit(ReserveNow(reservation(1, 0))) == "Accepted"
    # Two free connectors for one reservation: both stay Available.
    assert rig.phases() == [Phase.AVAILABLE, Phase.AVAILABLE]
    assert rig.stored() == [(1, 0)]
    kiosk.publish(TokenPresented(BOB))
    await eventually("bob charging on 1", lambda: rig.phases()[0] is Phase.CHARGING)
    # Only one free connector left: it is the reservation's now.
    await eventually("2 reserved", lambda: rig.phases()[1] is Phase.RESERVED)
    held = kiosk.snapshot().connectors[1].reservation
    assert held is not None and (held.reservation_id, held.connector_id) == (1, 0)
    kiosk.publish(TokenPresented(CAROL))
    await asyncio.sleep(0.1)
    assert rig.phases() == [Phase.CHARGING, Phase.RESERVED]
    # A second reservation for any connector finds none left.
    assert await kiosk.submit(ReserveNow(reservation(2, 0, CAROL))) == "Occupied"
    assert await kiosk.submit(ReserveNow(reservation(3, 2, CAROL))) == "Occupied"
    kiosk.publish(TokenPresented(ALICE))
    await eventually("alice charging on 2", lambda: rig.phases()[1] is Phase.CHARGING)
    await eventually("the reservation gone", lambda: rig.stored() == [])
    starts = query(rig.path, "SELECT payload FROM outbox WHERE action = 'StartTransaction'")
    assert [json.loads(p).get("reservationId") for (p,) in starts] == [None, 1]
    await eventually(
        "its statuses stored",
        lambda: rig.statuses(2) == ["Available", "Reserved", "Preparing", "Charging"],
    )


async def test_the_reserved_card_takes_a_free_connector_with_its_reservation(rig: Rig) -> None:
    assert await rig.kiosk.submit(ReserveNow(reservation(4, 0))) == "Accepted"
    rig.kiosk.publish(TokenPresented(ALICE))
    await eventually("alice charging", lambda: rig.phases()[0] is Phase.CHARGING)
    await eventually("the reservation gone", lambda: rig.stored() == [])
    # Used, not left to hold connector 2 for nobody.
    assert rig.phases()[1] is Phase.AVAILABLE
    (start,) = query(rig.path, "SELECT payload FROM outbox WHERE action = 'StartTransaction'")
    assert json.loads(start[0])["reservationId"] == 4
    await eventually("heard", lambda: rig.sessions.heard == [("began", 1, ALICE)])


async def test_a_remote_start_without_connector_goes_to_the_cards_reservation(rig: Rig) -> None:
    assert await rig.kiosk.submit(ReserveNow(reservation(5, 2))) == "Accepted"
    profile = {"chargingProfileId": 1}
    assert await rig.kiosk.submit(RemoteStart(ALICE, None, False, profile)) is True
    assert rig.phases() == [Phase.AVAILABLE, Phase.CHARGING]
    assert rig.sessions.heard == [("began", 2, ALICE)] and rig.sessions.profiles == [profile]


async def test_an_expired_reservation_frees_its_connector(rig: Rig) -> None:
    assert await rig.kiosk.submit(ReserveNow(reservation(6, 1, seconds=0.5))) == "Accepted"
    assert rig.phases()[0] is Phase.RESERVED and rig.stored() == [(6, 1)]
    await eventually("expired", lambda: rig.phases()[0] is Phase.AVAILABLE, within=4)
    await eventually("forgotten", lambda: rig.stored() == [])
    assert rig.statuses(1) == ["Available", "Reserved", "Available"]
    assert await rig.kiosk.submit(CancelReservation(6)) is False


async def test_a_fault_ends_a_connectors_reservation_and_moves_an_any_connector_one(
    rig: Rig,
) -> None:
    kiosk = rig.kiosk
    assert await kiosk.submit(ReserveNow(reservation(7, 1))) == "Accepted"
    assert await kiosk.submit(ReserveNow(reservation(8, 0, BOB))) == "Accepted"
    # One free connector for one reservation of any: it holds connector 2.
    await eventually("8 on 2", lambda: rig.phases() == [Phase.RESERVED, Phase.RESERVED])
    rig.sample(1, 1000, temperature_c=95)
    await eventually("1 faulted", lambda: rig.phases()[0] is Phase.FAULTED)
    await eventually("7 ended", lambda: rig.stored() == [(8, 0)])
    rig.sample(2, 5000, temperature_c=95)
    await eventually("2 faulted", lambda: rig.phases() == [Phase.FAULTED, Phase.FAULTED])
    # Reservation 8 is for any connector: it waits, and takes the first to come back.
    assert rig.stored() == [(8, 0)]
    rig.sample(1, 1000)
    await eventually("8 on 1", lambda: rig.phases()[0] is Phase.RESERVED, within=3)
    held = kiosk.snapshot().connectors[0].reservation
    assert held is not None and held.reservation_id == 8


async def test_reserve_now_says_faulted_while_the_connectors_are_faulted(rig: Rig) -> None:
    kiosk = rig.kiosk
    rig.sample(1, 1000, temperature_c=95)
    await eventually("1 faulted", lambda: rig.phases()[0] is Phase.FAULTED)
    assert await kiosk.submit(ReserveNow(reservation(12, 1))) == "Faulted"
    rig.sample(2, 5000, temperature_c=95)
    await eventually("both faulted", lambda: rig.phases() == [Phase.FAULTED] * 2)
    # For any connector: none can take it, and each says why.
    assert await kiosk.submit(ReserveNow(reservation(13, 0))) == "Faulted"
    assert rig.stored() == []
    rig.sample(1, 1000)
    await eventually("1 back", lambda: rig.phases()[0] is Phase.AVAILABLE, within=3)
    assert await kiosk.submit(ReserveNow(reservation(14, 1))) == "Accepted"
    assert rig.stored() == [(14, 1)]


async def test_reservations_come_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "edgepoint.db"

    async def stored() -> list[Reservation]:
        store = await ChargePointStore.open(path)
        try:
            return await ReservationStore(store.db).reservations()
        finally:
            await store.close()

    async with running(path) as rig:
        assert await rig.kiosk.submit(ReserveNow(reservation(9, 2))) == "Accepted"
        assert await rig.kiosk.submit(ReserveNow(reservation(11, 1, CAROL, 0.5))) == "Accepted"
    kept = await stored()
    assert [r.reservation_id for r in kept] == [9, 11]
    await asyncio.sleep(0.6)  # reservation 11 expires while the kiosk is down
    async with running(path, kept) as rig:
        assert [r for r, _ in rig.stored()] == [9]
        assert rig.phases() == [Phase.AVAILABLE, Phase.RESERVED]
        assert await rig.kiosk.submit(ReserveNow(reservation(10, 0, BOB))) == "Accepted"
        await eventually("10 on 1", lambda: rig.phases()[0] is Phase.RESERVED)
    # Both back, a reservation for any connector too.
    async with running(path, await stored()) as rig:
        await eventually("both reserved", lambda: rig.phases() == [Phase.RESERVED] * 2)
        held = [c.reservation for c in rig.kiosk.snapshot().connectors]
        assert [r.reservation_id for r in held if r] == [10, 9]
