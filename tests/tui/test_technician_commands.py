"""The control commands the TUI added (sessions, cards, local list, log) on real databases.

A real ControlServer serves `register_technician` over real SQLite files (edgepoint.db and
csms.db in tmp_path); requests go through the real client. Card ids must never leave the
daemon in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.events import AuthorizationStatus, IdTag, SessionId
from edgepoint.control.api import Access, ControlApi
from edgepoint.control.client import request, subscribe
from edgepoint.control.logfeed import LogFeed, redact_line
from edgepoint.control.server import ControlServer
from edgepoint.control.station import register_technician
from edgepoint.csms.db import CsmsStore, open_csms_database
from edgepoint.errors import ControlError
from edgepoint.storage.auth_lists import AuthListStore
from edgepoint.storage.chargepoint import ChargePointStore

T0 = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def technician(
    tmp_path: Path, *, with_csms: bool = True
) -> AsyncIterator[tuple[Path, ChargePointStore, CsmsStore | None, LogFeed]]:
    store = await ChargePointStore.open(tmp_path / "edgepoint.db")
    csms = await open_csms_database(tmp_path / "csms.db") if with_csms else None
    logger = logging.getLogger(f"test.technician.{tmp_path.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    feed = LogFeed.attach(logger, capacity=50)
    api = ControlApi()
    register_technician(
        api,
        sessions=store,
        local_list=AuthListStore(store.db),
        cards=None if csms is None else csms.cards,
        log_feed=feed,
    )
    path = tmp_path / "ctl.sock"
    server = ControlServer(path, api, Access(os.geteuid(), os.getegid(), "technicians"))
    task = asyncio.create_task(server.run())
    try:
        for _ in range(500):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        yield path, store, csms, feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        feed.detach()
        await store.close()
        if csms is not None:
            await csms.close()


async def test_sessions_list_live_and_past_with_energy_and_masked_cards(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, store, _, _):
        async with store.change() as change:
            await change.begin_session(SessionId("s1"), 1, IdTag("04A1B2C3"), 1000, T0)
            await change.end_session(SessionId("s1"), IdTag("04A1B2C3"), 1800, "Local", T0)
        async with store.change() as change:
            await change.begin_session(SessionId("s2"), 2, IdTag("AABBCCDD"), 5000, T0)
            await change.record_reading(SessionId("s2"), 5250)
        rows = await request(path, "sessions.list", limit=10)
        assert {r["session_id"]: (r["state"], r["energy_wh"], r["id_tag"]) for r in rows} == {
            "s1": ("stopped", 800, "****B2C3"),
            "s2": ("active", 250, "****CCDD"),
        }
        assert "04A1B2C3" not in json.dumps(rows)
        with pytest.raises(ControlError) as refused:
            await request(path, "sessions.list", limit=0)
        assert refused.value.code == "bad_request"


async def test_cards_add_block_unblock_remove_by_full_or_masked_id(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, _, csms, _):
        assert csms is not None
        added = await request(
            path, "cards.add", id_tag="04A1B2C3", name="Alice", expires="2027-01-31T23:59:59Z"
        )
        assert added["id_tag"] == "****B2C3" and added["status"] == "Accepted"
        assert added["expires"] == "2027-01-31T23:59:59.000Z"
        await request(path, "cards.add", id_tag="0AA11BB2", parent_id_tag="04A1B2C3")
        listed = await request(path, "cards.list")
        assert [(c["id_tag"], c["parent_id_tag"]) for c in listed] == [
            ("****B2C3", None),
            ("****1BB2", "****B2C3"),
        ]
        assert "04A1B2C3" not in json.dumps(listed)
        # The masked form the list shows names the card, as does the full id.
        assert (await request(path, "cards.block", id_tag="****B2C3"))["done"] == "block"
        assert (await csms.cards.get("04A1B2C3")).status == "Blocked"  # type: ignore[union-attr]
        await request(path, "cards.unblock", id_tag="04A1B2C3")
        assert (await csms.cards.get("04A1B2C3")).status == "Accepted"  # type: ignore[union-attr]
        await request(path, "cards.remove", id_tag="****1bb2")  # case does not matter
        assert await csms.cards.get("0AA11BB2") is None
        for cmd, args, code in [
            ("cards.add", {"id_tag": "04A1B2C3"}, "bad_request"),  # registered already
            ("cards.add", {"id_tag": "x" * 21}, "bad_request"),
            ("cards.add", {"id_tag": "0102", "expires": "tomorrow"}, "bad_request"),
            ("cards.block", {"id_tag": "****FFFF"}, "not_found"),
            ("cards.remove", {"id_tag": "DEADBEEF"}, "not_found"),
        ]:
            with pytest.raises(ControlError) as refused:
                await request(path, cmd, **args)
            assert refused.value.code == code, (cmd, args, refused.value)
            assert "04A1B2C3" not in str(refused.value)  # nor in the daemon's log


async def test_a_masked_id_naming_two_cards_is_refused(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, _, _, _):
        await request(path, "cards.add", id_tag="11AAB2C3")
        await request(path, "cards.add", id_tag="22AAB2C3")
        with pytest.raises(ControlError) as refused:
            await request(path, "cards.block", id_tag="****B2C3")
        assert refused.value.code == "bad_request" and "names 2 cards" in str(refused.value)


async def test_without_the_embedded_csms_cards_are_unavailable(tmp_path: Path) -> None:
    async with technician(tmp_path, with_csms=False) as (path, _, _, _):
        with pytest.raises(ControlError) as refused:
            await request(path, "cards.list")
        assert refused.value.code == "unavailable"


async def test_the_local_list_is_shown_masked(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, store, _, _):
        lists = AuthListStore(store.db)
        await lists.replace_local_list(
            7,
            {
                IdTag("04A1B2C3"): TagEntry(AuthorizationStatus.ACCEPTED),
                IdTag("0AA11BB2"): TagEntry(AuthorizationStatus.BLOCKED, T0, "04A1B2C3"),
            },
        )
        shown = await request(path, "local_list.show")
        assert shown == {
            "version": 7,
            "entries": [
                {"id_tag": "****B2C3", "status": "Accepted", "expiry": None, "parent_id_tag": None},
                {
                    "id_tag": "****1BB2",
                    "status": "Blocked",
                    "expiry": "2026-01-15T10:00:00.000Z",
                    "parent_id_tag": "****B2C3",
                },
            ],
        }


async def test_the_local_list_is_edited_on_site_until_the_csms_sends_it(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, store, _, _):
        lists = AuthListStore(store.db)
        await lists.replace_local_list(
            7, {IdTag("04A1B2C3"): TagEntry(AuthorizationStatus.ACCEPTED, T0, "0AA11BB2")}
        )
        await lists.store_cache(IdTag("04A1B2C3"), TagEntry(AuthorizationStatus.ACCEPTED), T0)
        # Blocked by its masked form: expiry and parent stay, the version is the CSMS's.
        blocked = await request(path, "local_list.put", id_tag="****b2c3", status="Blocked")
        assert blocked["id_tag"] == "****B2C3" and blocked["new"] is False
        assert await lists.list_entry(IdTag("04A1B2C3")) == TagEntry(
            AuthorizationStatus.BLOCKED, T0, "0AA11BB2"
        )
        assert await lists.cache_entry(IdTag("04A1B2C3")) is None  # §3.5.3: list wins
        assert await lists.local_list_version() == 7
        # A new card by its full id; it comes back masked.
        added = await request(path, "local_list.put", id_tag="DEADBEEF", expiry=None)
        assert added == {
            "id_tag": "****BEEF",
            "status": "Accepted",
            "expiry": None,
            "parent_id_tag": None,
            "new": True,
        }
        assert "DEADBEEF" not in json.dumps(await request(path, "local_list.show"))
        assert (await request(path, "local_list.remove", id_tag="deadbeef"))["done"] == "remove"
        assert await lists.list_entry(IdTag("DEADBEEF")) is None
        for cmd, args, code in [
            ("local_list.put", {"id_tag": "****FFFF"}, "not_found"),  # a mask names no new card
            ("local_list.put", {"id_tag": "04A1B2C3", "status": "Maybe"}, "bad_request"),
            ("local_list.put", {"id_tag": "04A1B2C3", "expiry": "soon"}, "bad_request"),
            ("local_list.put", {"id_tag": "X" * 21}, "bad_request"),
            ("local_list.remove", {"id_tag": "DEADBEEF"}, "not_found"),
        ]:
            with pytest.raises(ControlError) as refused:
                await request(path, cmd, **args)
            assert refused.value.code == code, (cmd, args, refused.value)
        # The CSMS's next full list replaces what was edited here.
        await lists.replace_local_list(
            8, {IdTag("04A1B2C3"): TagEntry(AuthorizationStatus.ACCEPTED)}
        )
        shown = await request(path, "local_list.show")
        assert shown["version"] == 8 and shown["entries"][0]["status"] == "Accepted"


async def test_log_recent_and_the_log_stream_in_order_from_any_thread(tmp_path: Path) -> None:
    async with technician(tmp_path) as (path, _, _, feed):
        logger = logging.getLogger(f"test.technician.{tmp_path.name}")
        logger.debug("before the watch")
        logger.warning("a warning")
        recent = await request(path, "log.recent", level="INFO")
        assert [r["message"] for r in recent] == ["a warning"]
        assert recent[0]["level"] == "WARNING" and recent[0]["time"].endswith("Z")
        got: list[dict[str, Any]] = []

        async def follow() -> None:
            async with contextlib.aclosing(subscribe(path, ["log"])) as events:
                async for event in events:
                    got.append(event.data)
                    if len(got) == 3:
                        return

        follower = asyncio.create_task(follow())
        for _ in range(200):  # the watch is registered when the server subscribed us
            if feed.watchers:
                break
            await asyncio.sleep(0.01)
        logger.info("on the loop")
        worker = threading.Thread(target=logger.error, args=("from a thread",))
        worker.start()
        worker.join()
        logger.info('payload {"idTag": "04A1B2C3"} and a\nforged line')
        await asyncio.wait_for(follower, 5)
        assert [g["message"] for g in got] == [
            "on the loop",
            "from a thread",
            'payload {"idTag": "****B2C3"} and a\nforged line',
        ]
        assert [g["seq"] for g in got] == sorted(g["seq"] for g in got)
        with pytest.raises(ControlError) as refused:
            await request(path, "log.recent", level="LOUD")
        assert refused.value.code == "bad_request"


def test_log_lines_never_carry_a_card_id_or_a_control_character() -> None:
    assert redact_line("Authorize idTag='04A1B2C3'") == "Authorize idTag='****B2C3'"
    assert redact_line('{"idTag": "DEADBEEF", "parentIdTag": "CAFEF00D"}') == (
        '{"idTag": "****BEEF", "parentIdTag": "****F00D"}'
    )
    assert redact_line('id_tag="****B2C3"') == 'id_tag="****B2C3"'  # masked stays masked
    assert redact_line("bell\x07 escape\x1b[31m") == "bell? escape?[31m"
    capped = LogFeed(capacity=3)
    for n in range(5):
        capped.emit(logging.LogRecord("t", logging.INFO, __file__, 1, f"line {n}", None, None))
    assert [r["message"] for r in capped.recent()] == ["line 2", "line 3", "line 4"]
    assert [r["message"] for r in capped.recent(limit=1)] == ["line 4"]
