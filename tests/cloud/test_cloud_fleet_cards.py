"""Fleet cards from a real Realtime Database server into the local list and the embedded CSMS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloud_support import TestClock, open_store
from support.firebase_server import NAMESPACE, FirebaseServer, firebase_server

from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.cloud.cards import FleetCardSync, parse_fleet_cards
from edgepoint.cloud.health import Health
from edgepoint.cloud.rtdb import EMULATOR_ENV, Rtdb
from edgepoint.csms.db import CsmsStore
from edgepoint.csms.records import CardStatus
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.fleet_cards import CardRow, FleetCardStore

__all__ = ["firebase_server"]


class Rig:
    def __init__(
        self, sync: FleetCardSync, fleet: FleetCardStore, lists: AuthListStore, csms: CsmsStore
    ) -> None:
        self.sync, self.fleet, self.lists, self.csms = sync, fleet, lists, csms

    async def local(self) -> dict[str, str]:
        return {tag: e.status.value for tag, e in (await self.lists.local_list()).items()}

    async def cards(self) -> dict[str, str]:
        return {c.id_tag: c.status.value for c in await self.csms.cards.list()}


@pytest.fixture
async def rig(
    firebase_server: FirebaseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv(EMULATOR_ENV, firebase_server.host)
    store = await open_store(tmp_path / "edgepoint.db")
    csms = await CsmsStore.open(tmp_path / "csms.db", TestClock())
    executor = ThreadPoolExecutor(2)
    rtdb = Rtdb(f"https://{NAMESPACE}.firebaseio.com", None, "EP-1", 5.0, executor)
    clock = TestClock()
    fleet = FleetCardStore(store.db)
    sync = FleetCardSync(rtdb, "EP-1", fleet, lambda: csms.cards, 60, clock, Health(clock))
    try:
        yield Rig(sync, fleet, AuthListStore(store.db), csms)
    finally:
        rtdb.close()
        executor.shutdown(wait=False)
        await csms.close()
        await store.close()


async def test_fleet_cards_reach_the_local_list_and_the_csms(
    rig: Rig, firebase_server: FirebaseServer
) -> None:
    firebase_server.put(
        "fleet/cards",
        {
            "04A1B2C3": "Accepted",
            "DEADBEEF": {"status": "Blocked", "name": "lost card"},
            "CAFE0001": {"status": "Accepted", "expiry": "2027-01-31T23:59:59Z", "name": "Bo"},
            "bad card id that is far too long": "Accepted",
        },
    )
    firebase_server.put("fleet/stations/EP-1/cards", {"11110000": "Accepted"})
    firebase_server.put("fleet/stations/EP-2/cards", {"22220000": "Accepted"})
    await rig.sync.sync_once()
    assert await rig.local() == {
        "04A1B2C3": "Accepted",
        "11110000": "Accepted",
        "CAFE0001": "Accepted",
        "DEADBEEF": "Blocked",
    }
    entry = await rig.lists.list_entry(IdTag("cafe0001"))
    assert entry is not None and entry.expiry == datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC)
    assert await rig.cards() == await rig.local()
    card = await rig.csms.cards.get("CAFE0001")
    assert card is not None and card.name == "Bo"
    assert (await rig.csms.cards.authorize("DEADBEEF", datetime.now(UTC))).value == "Blocked"
    stats = rig.sync.stats()
    assert stats.fleet_cards == 4 and len(stats.skipped) == 1
    assert rig.sync.health.state == "ok"

    # The operator blocks a card for the whole fleet, and removes another.
    firebase_server.put("fleet/cards/04A1B2C3", "Blocked")
    firebase_server.delete("fleet/cards/CAFE0001")
    await rig.sync.sync_once()
    local = await rig.local()
    assert local["04A1B2C3"] == "Blocked" and "CAFE0001" not in local
    assert (await rig.cards())["04A1B2C3"] == "Blocked"
    assert await rig.csms.cards.get("CAFE0001") is None


async def test_send_local_list_wins_except_for_a_fleet_block(
    rig: Rig, firebase_server: FirebaseServer
) -> None:
    # The CSMS's SendLocalList (version 7) holds two cards.
    await rig.lists.replace_local_list(
        7,
        {
            IdTag("AAAA0001"): TagEntry(AuthorizationStatus.EXPIRED),
            IdTag("AAAA0002"): TagEntry(AuthorizationStatus.ACCEPTED),
        },
    )
    firebase_server.put("fleet/cards", {"AAAA0001": "Accepted", "AAAA0002": "Blocked"})
    await rig.sync.sync_once()
    # Its Expired stays (the CSMS's entry wins); the fleet's block wins over its Accepted.
    assert await rig.local() == {"AAAA0001": "Expired", "AAAA0002": "Blocked"}
    assert await rig.lists.local_list_version() == 7  # never the fleet's to change
    firebase_server.put("fleet/cards", {"AAAA0001": "Accepted"})  # block lifted
    await rig.sync.sync_once()
    assert await rig.local() == {"AAAA0001": "Expired", "AAAA0002": "Accepted"}
    firebase_server.delete("fleet/cards")
    await rig.sync.sync_once()
    assert await rig.local() == {"AAAA0001": "Expired", "AAAA0002": "Accepted"}


async def test_a_technicians_block_on_a_fleet_card_stays(
    rig: Rig, firebase_server: FirebaseServer
) -> None:
    firebase_server.put("fleet/cards", {"04A1B2C3": "Accepted"})
    await rig.sync.sync_once()
    await rig.csms.cards.block("04A1B2C3")  # `edgepoint cards block` on the kiosk
    await rig.sync.sync_once()
    assert (await rig.cards())["04A1B2C3"] == "Blocked"
    firebase_server.delete("fleet/cards")
    await rig.sync.sync_once()
    assert (await rig.cards())["04A1B2C3"] == "Blocked"  # adopted locally: not removed


async def test_a_crash_between_the_two_databases_is_repaired(
    rig: Rig, firebase_server: FirebaseServer
) -> None:
    store = rig.fleet
    # The previous run noted its intent to add a card, then died before csms.db had it.
    await store.note_csms_intent({"04A1B2C3": CardRow("Accepted")})
    firebase_server.put("fleet/cards", {"04A1B2C3": "Accepted", "0000FFFF": "Blocked"})
    await rig.sync.sync_once()
    assert await rig.cards() == {"04A1B2C3": "Accepted", "0000FFFF": "Blocked"}
    # ...and one that died after writing csms.db, before recording it: still ours.
    await store.note_csms_intent({"0000FFFF": CardRow("Accepted")})
    await rig.csms.cards.put("0000FFFF", status=CardStatus.ACCEPTED)
    firebase_server.delete("fleet/cards/0000FFFF")
    await rig.sync.sync_once()
    assert await rig.cards() == {"04A1B2C3": "Accepted"}


def test_card_trees_are_parsed_strictly() -> None:
    cards, skipped = parse_fleet_cards(
        {
            "04a1b2c3": "Accepted",
            "X1": {"status": "Sideways"},
            "X2": {"status": "Accepted", "expiry": "2027-01-01"},  # no offset
            "X3": {"status": "Accepted", "parent_id_tag": "X3"},
            "k": {"id_tag": "AB.CD", "status": "Expired"},
        },
        # Keys that look like small integers come back from RTDB as a list.
        [None, "Blocked", {"status": "Accepted"}],
    )
    assert {t: c.status for t, c in cards.items()} == {
        "04A1B2C3": "Accepted",
        "AB.CD": "Expired",
        "1": "Blocked",
        "2": "Accepted",
    }
    assert len(skipped) == 3
    wide, _ = parse_fleet_cards({"AA": "Blocked"}, {"AA": "Accepted"})
    assert wide["AA"].status == "Blocked"  # a station entry cannot lift a fleet block
    mine, _ = parse_fleet_cards({"AA": "Accepted"}, {"AA": "Expired"})
    assert mine["AA"].status == "Expired"
