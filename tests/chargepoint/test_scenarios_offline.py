"""OCPP 1.6 scenarios for boot, authorization, offline operation and retries (real daemon)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import free_port, query
from scenario_support import Kiosk, running, scenario_config
from support.scripted_csms import SILENCE, Answer, Error, Raw, Received, ScriptedCsms, now_iso

pytestmark = pytest.mark.timeout(60)

CARD = "04A1B2C3"
OTHER = "04D4E5F6"
STRANGER = "0499AABB"
# A card stays in the reader's field this long (Pn532Emulator.present_card's dwell); the
# same card tapped again within it is the same presentation, not a second tap.
TRANSACTION_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
# Fast retries so that each scenario takes seconds (OCPP keys go in config.toml [ocpp]).
FAST_RETRIES = {
    "ocpp__TransactionMessageAttempts": 2,
    "ocpp__TransactionMessageRetryInterval": 1,
}


# -- helpers -----------------------------------------------------------------------


def online(status: dict[str, Any]) -> bool:
    return bool(status["links"]["csms"]["state"] == "online")


def has_telemetry(status: dict[str, Any]) -> bool:
    return status["connector"]["last_sample"] is not None


def phase(name: str) -> Any:
    """The connector reached `name` and carried out what entering it takes.

    The phase flips when the connector decides; the reported status (and the relay) once
    the kiosk has carried out the actions, a moment later.
    """
    if name == "Charging":
        return lambda s: s["connector"]["status"] == "Charging" and s["connector"]["relay_closed"]
    return lambda s: s["connector"]["phase"] == name


def outbox_empty(status: dict[str, Any]) -> bool:
    return bool(status["outbox"]["depth"] == 0)


async def ready(kiosk: Kiosk) -> dict[str, Any]:
    return await kiosk.wait_for("online with telemetry", lambda s: online(s) and has_telemetry(s))


def local_list(version: int, **cards: str) -> dict[str, Any]:
    return {
        "listVersion": version,
        "updateType": "Full",
        "localAuthorizationList": [
            {"idTag": tag, "idTagInfo": {"status": status}} for tag, status in cards.items()
        ],
    }


class Starts:
    """A StartTransaction responder that numbers transactions from `first` and remembers them."""

    def __init__(self, first: int, status: str = "Accepted") -> None:
        self._ids = itertools.count(first)
        self.status = status
        self.given: list[tuple[Received, int]] = []

    def __call__(self, call: Received) -> Answer:
        # Never de-duplicated: every StartTransaction, even a resend, gets a new id.
        transaction_id = next(self._ids)
        self.given.append((call, transaction_id))
        return {"transactionId": transaction_id, "idTagInfo": {"status": self.status}}


class Boots:
    """A BootNotification responder whose answer the test switches; records when boots came."""

    def __init__(self, status: str, retry_s: int = 1) -> None:
        self.status = status
        self.retry_s = retry_s
        self.at: list[float] = []

    def __call__(self, call: Received) -> Answer:
        self.at.append(time.monotonic())
        interval = 300 if self.status == "Accepted" else self.retry_s
        return {"status": self.status, "currentTime": now_iso(), "interval": interval}


class SlowAuthorize:
    """An Authorize responder that answers after `delay_s`, or when released (test end).

    ScriptedCsms handles a connection's frames one after the other, so while it sits
    here it reads nothing else from the charge point: a CSMS that hangs.
    """

    def __init__(self, delay_s: float = 10.0) -> None:
        self.delay_s = delay_s
        self.released = asyncio.Event()

    async def __call__(self, call: Received) -> Answer:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), self.delay_s)
        return {"idTagInfo": {"status": "Accepted"}}


def transaction_tokens(calls: list[Received], connector: int = 1) -> list[str]:
    """The connector's transaction messages and statuses in arrival order, as short tokens."""
    tokens = []
    for call in calls:
        p = call.payload
        if call.action == "StatusNotification" and p["connectorId"] == connector:
            tokens.append(p["status"])
        elif call.action in ("StartTransaction", "StopTransaction"):
            tokens.append(call.action[:-11])  # Start / Stop
        elif call.action == "MeterValues" and p["connectorId"] == connector:
            tokens.append("MeterValues")
    return tokens


def one_session_shape(tokens: list[str]) -> list[str]:
    """Tokens with runs of MeterValues squeezed to one."""
    return [t for i, t in enumerate(tokens) if t != "MeterValues" or tokens[i - 1] != t]


def check_transaction_ids(calls: list[Received], starts: Starts) -> None:
    """Each MeterValues and Stop carries the id the CSMS gave its session's Start, one per
    session (a resent Start may have got several ids from a CSMS that does not de-duplicate)."""
    given: dict[str, set[int]] = {}
    for start, transaction_id in starts.given:
        given.setdefault(start.unique_id, set()).add(transaction_id)
    used: dict[str, set[int]] = {}
    start_id: str | None = None
    for call in calls:
        if call.action == "StartTransaction":
            start_id = call.unique_id
        elif call.action in ("MeterValues", "StopTransaction"):
            assert start_id is not None, call
            transaction_id = call.payload["transactionId"]
            assert transaction_id in given[start_id], (call, given[start_id])
            used.setdefault(start_id, set()).add(transaction_id)
    assert all(len(ids) == 1 for ids in used.values()), used


def check_sent_once(calls: list[Received]) -> None:
    """A unique id seen twice is a resend of the same message; no queued message (they all
    carry a timestamp) went out again under a new id."""
    by_id: dict[str, Received] = {}
    for call in calls:
        first = by_id.setdefault(call.unique_id, call)
        assert (first.action, first.payload) == (call.action, call.payload), call
    queued = [
        json.dumps([c.action, c.payload], sort_keys=True)
        for c in by_id.values()
        if c.action in ("StatusNotification", *TRANSACTION_ACTIONS)
    ]
    assert len(set(queued)) == len(queued), sorted(queued)


def timestamps(call: Received) -> list[str]:
    p = call.payload
    if call.action == "MeterValues":
        return [value["timestamp"] for value in p["meterValue"]]
    return [p["timestamp"]] if "timestamp" in p else []


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "edgepoint.db"


def log_text(kiosk: Kiosk) -> str:
    return kiosk.daemon.log.read_text(errors="replace")


# -- boot ----------------------------------------------------------------------------


async def test_boot_accepted_reports_status_and_follows_the_heartbeat_interval(
    tmp_path: Path,
) -> None:
    async with (
        ScriptedCsms(heartbeat_interval=1) as csms,
        running(scenario_config(tmp_path, csms)) as kiosk,
    ):
        status = await ready(kiosk)
        assert status["links"]["csms"]["heartbeat_interval"] == 1
        await csms.wait_calls("Heartbeat", 2)
        reply = await csms.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert reply["configurationKey"][0]["value"] == "1"

    assert csms.violations == []
    boot = csms.calls()[0]
    assert boot.action == "BootNotification"
    assert boot.payload["chargePointModel"] and boot.payload["chargePointVendor"]
    assert len(csms.calls("BootNotification")) == 1
    statuses = {(p["connectorId"], p["status"]) for p in csms.payloads("StatusNotification")}
    assert statuses == {(0, "Available"), (1, "Available")}


@pytest.mark.parametrize("registration", ["Pending", "Rejected"])
async def test_not_accepted_boot_holds_everything_back_until_accepted(
    tmp_path: Path, registration: str
) -> None:
    boots = Boots(registration, retry_s=1)
    async with ScriptedCsms() as csms:
        csms.responders["BootNotification"] = boots
        config = scenario_config(tmp_path, csms, ocpp__AllowOfflineTxForUnknownId=True)
        async with running(config) as kiosk:
            state = registration.lower()
            await kiosk.wait_for(state, lambda s: s["links"]["csms"]["state"] == state)
            if registration == "Pending":
                # §4.2: while pending, the CSMS may configure the charge point.
                reply = await csms.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
                assert reply["configurationKey"][0]["key"] == "HeartbeatInterval"
            # A driver does not care whether the CSMS accepted us: offline rules apply.
            await kiosk.wait_for("telemetry", has_telemetry)
            await kiosk.present(STRANGER)
            await kiosk.wait_for("charging", phase("Charging"))
            await csms.wait_calls("BootNotification", 3)
            gaps = [b - a for a, b in itertools.pairwise(boots.at)]
            assert all(0.9 <= gap < 3 for gap in gaps), gaps  # the interval the CSMS asked for
            assert {r.action for r in csms.received} == {"BootNotification"}

            boots.status = "Accepted"
            await kiosk.wait_for("online", online)
            await kiosk.wait_for(
                "the session's transaction id",
                lambda s: s["connector"]["session"]["transaction_id"] is not None,
            )
            await csms.wait_calls("MeterValues")
            await kiosk.present(STRANGER)
            await csms.wait_calls("StopTransaction")
            await kiosk.wait_for("outbox delivered", outbox_empty)

    assert csms.violations == []
    after_boot = [r.action for r in csms.received if r.action != "Heartbeat"]
    accepted_at = len(boots.at)
    assert after_boot[:accepted_at] == ["BootNotification"] * accepted_at
    tokens = transaction_tokens(csms.received[accepted_at:])
    assert one_session_shape(tokens) == [
        "Available",
        "Preparing",
        "Start",
        "Charging",
        "MeterValues",
        "Finishing",
        "Stop",
        "Available",
    ]
    (start,) = csms.payloads("StartTransaction")
    assert start["idTag"] == STRANGER
    tx = 1001  # ScriptedCsms numbers transactions from 1001
    assert all(p["transactionId"] == tx for p in csms.payloads("MeterValues"))
    assert csms.payloads("StopTransaction")[0]["transactionId"] == tx


# -- authorization with the CSMS online ------------------------------------------------


async def test_cards_the_csms_refuses_start_nothing_and_an_accepted_card_charges(
    tmp_path: Path,
) -> None:
    refused = {"04B10C4D": "Blocked", "04E4B1ED": "Expired", "0419BA1D": "Invalid"}
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        csms.id_tags.update(refused)
        await ready(kiosk)
        for card, verdict in refused.items():
            await kiosk.present(card)
            await csms.wait_calls("Authorize", list(refused).index(card) + 1)
            # The verdict is back once the connector leaves Authorizing; its OCPP status
            # never moved from Available and no session exists.
            status = await kiosk.wait_for("verdict", phase("Available"))
            assert status["connector"]["status"] == "Available"
            assert status["connector"]["session"] is None
            assert status["connector"]["relay_closed"] is False
            assert f"card ****{card[-4:]}: {verdict} (Csms)" in log_text(kiosk)
        assert csms.calls("StartTransaction") == []
        assert [p["status"] for p in csms.payloads("StatusNotification")] == ["Available"] * 2

        await kiosk.present(CARD)
        status = await kiosk.wait_for("charging", phase("Charging"))
        assert status["connector"]["relay_closed"] is True
        (start,) = await csms.wait_calls("StartTransaction")
        assert start.payload["idTag"] == CARD

    assert csms.violations == []
    assert [p["idTag"] for p in csms.payloads("Authorize")] == [*refused, CARD]


async def test_the_csms_answers_are_cached_and_clear_cache_empties_the_cache(
    tmp_path: Path,
) -> None:
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        csms.id_tags[OTHER] = "Blocked"
        await ready(kiosk)
        assert await csms.call("SendLocalList", local_list(1, **{STRANGER: "Accepted"})) == {
            "status": "Accepted"
        }
        await kiosk.present(CARD)
        await kiosk.wait_for("charging", phase("Charging"))
        await kiosk.present(CARD)
        await kiosk.wait_for("available", phase("Available"))
        await kiosk.present(OTHER)
        await csms.wait_calls("Authorize", 2)
        await kiosk.wait_for("outbox delivered", outbox_empty)
        cached = dict(query(db_path(tmp_path), "SELECT id_tag, status FROM auth_cache"))
        assert cached == {CARD: "Accepted", OTHER: "Blocked"}

        assert await csms.call("ClearCache", {}) == {"status": "Accepted"}
        assert query(db_path(tmp_path), "SELECT id_tag FROM auth_cache") == []
        # The local list is the CSMS's, not a cache: ClearCache leaves it alone.
        assert query(db_path(tmp_path), "SELECT id_tag FROM local_list") == [(STRANGER,)]

    assert csms.violations == []


async def test_local_pre_authorize_starts_a_listed_card_without_asking(tmp_path: Path) -> None:
    config_overrides = {"ocpp__LocalPreAuthorize": True}
    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, **config_overrides)) as kiosk,
    ):
        await ready(kiosk)
        reply = await csms.call("SendLocalList", local_list(1, **{CARD: "Accepted"}))
        assert reply == {"status": "Accepted"}
        await kiosk.present(CARD)
        await kiosk.wait_for("charging", phase("Charging"))
        await csms.wait_calls("StartTransaction")
        await kiosk.present(CARD)
        await csms.wait_calls("StopTransaction")

    assert csms.violations == []
    assert csms.calls("Authorize") == []


@pytest.mark.parametrize("allow_unknown", [False, True])
async def test_a_hanging_csms_costs_the_driver_at_most_the_authorize_timeout(
    tmp_path: Path, allow_unknown: bool
) -> None:
    slow = SlowAuthorize(delay_s=10)
    timeout_s = 1.0
    config = dict(
        chargepoint__authorize_timeout_s=timeout_s,
        chargepoint__response_timeout=1,
        ocpp__AllowOfflineTxForUnknownId=allow_unknown,
    )
    starts = Starts(first=1001)
    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms, **config)) as kiosk:
        csms.responders["StartTransaction"] = starts
        try:
            await ready(kiosk)
            assert await csms.call("SendLocalList", local_list(1, **{OTHER: "Accepted"})) == {
                "status": "Accepted"
            }
            # CARD gets into the cache the ordinary way: the CSMS accepts it once.
            await kiosk.present(CARD)
            await kiosk.wait_for("charging", phase("Charging"))
            await kiosk.present(CARD)
            await kiosk.wait_for("available", phase("Available"))
            await kiosk.wait_for("outbox delivered", outbox_empty)

            csms.responders["Authorize"] = slow
            tapped = await kiosk.present(STRANGER)
            await csms.wait_calls("Authorize", 2)
            if allow_unknown:
                status = await kiosk.wait_for("charging", phase("Charging"))
            else:
                status = await kiosk.wait_for("refused", phase("Available"))
                assert status["connector"]["session"] is None
            decided = time.monotonic() - tapped
            assert decided < timeout_s + 1.0, decided
            verdict = "Accepted (OfflineUnknown)" if allow_unknown else "Unavailable (None)"
            assert f"card ****AABB: {verdict}" in log_text(kiosk)
            if allow_unknown:
                await kiosk.present(STRANGER)
                await kiosk.wait_for("available", phase("Available"))

            for card, source in ((CARD, "Cache"), (OTHER, "LocalList")):
                tapped = await kiosk.present(card)
                await kiosk.wait_for(f"{card} charging", phase("Charging"))
                assert time.monotonic() - tapped < timeout_s + 1.0
                assert f"card ****{card[-4:]}: Accepted ({source})" in log_text(kiosk)
                await kiosk.present(card)
                await kiosk.wait_for("available", phase("Available"))
        finally:
            slow.released.set()
        # The CSMS wakes up: what the sessions queued meanwhile gets through, consistently.
        await kiosk.wait_for("outbox delivered", outbox_empty, within_s=20)
        assert (await kiosk.status())["alarms"] == []

    assert csms.violations == []
    sessions = 4 if allow_unknown else 3
    assert len({start.unique_id for start, _ in starts.given}) == sessions
    check_transaction_ids(csms.received, starts)
    check_sent_once(csms.received)


# -- offline sessions, delivered later ------------------------------------------------------


async def test_offline_sessions_reach_the_csms_in_order_with_its_transaction_ids(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = scenario_config(
        tmp_path, ScriptedCsms(port=port), ocpp__AllowOfflineTxForUnknownId=True
    )
    cards = [CARD, STRANGER, CARD]  # listed, unknown (allowed offline), listed again
    async with running(config) as kiosk:
        async with ScriptedCsms(port=port) as before:
            await ready(kiosk)
            assert await before.call("SendLocalList", local_list(1, **{CARD: "Accepted"})) == {
                "status": "Accepted"
            }
            await kiosk.wait_for("outbox delivered", outbox_empty)
        await kiosk.wait_for("offline", lambda s: not online(s))

        for card in cards:
            await kiosk.present(card)
            status = await kiosk.wait_for(f"{card} charging offline", phase("Charging"))
            assert status["connector"]["relay_closed"] is True
            assert status["connector"]["session"]["transaction_id"] is None
            # Long enough for at least one sampled MeterValues (interval 1 s).
            await kiosk.wait_for(
                "a MeterValues' worth of energy",
                lambda s: (s["connector"]["session"] or {}).get("energy_wh", 0) >= 13,
            )
            await kiosk.present(card)
            await kiosk.wait_for("available", phase("Available"))
        queued = (await kiosk.status())["outbox"]["depth"]
        assert queued >= 3 * 7  # per session: 4 statuses, Start, MeterValues, Stop

        starts = Starts(first=7001)
        async with ScriptedCsms(port=port) as after:
            after.responders["StartTransaction"] = starts
            await kiosk.wait_for("online again", online)
            await kiosk.wait_for("outbox delivered", outbox_empty, within_s=20)
            await after.wait_calls("StopTransaction", len(cards))

    assert before.violations == [] and after.violations == []
    calls = after.received
    assert after.calls("BootNotification") == []  # booted once per process, before
    # Each session: its statuses, Start, MeterValues, Stop, in the order they happened.
    tokens = transaction_tokens(calls)
    session_shape = ["Preparing", "Start", "Charging", "MeterValues", "Finishing", "Stop"]
    assert one_session_shape(tokens) == [*session_shape, "Available"] * len(cards), tokens
    stamps = [stamp for call in calls for stamp in timestamps(call)]
    assert stamps == sorted(stamps)
    # Every message exactly once: no unique id twice (no reply was lost), no message twice.
    assert len({c.unique_id for c in calls}) == len(calls)
    check_sent_once(calls)
    # MeterValues and Stop carry the id the CSMS gave that session's Start.
    given = [tx for _, tx in starts.given]
    assert [call.payload["idTag"] for call, _ in starts.given] == cards
    current: int | None = None
    for call in calls:
        if call.action == "StartTransaction":
            current = given.pop(0)
        elif call.action in ("MeterValues", "StopTransaction"):
            assert call.payload["transactionId"] == current, call
            if call.action == "StopTransaction":
                current = None
    assert given == []


async def test_an_unknown_card_charging_offline_is_deauthorized_once_the_csms_refuses_it(
    tmp_path: Path,
) -> None:
    # No CSMS at all when the daemon starts: it never booted.
    port = free_port()
    config = scenario_config(
        tmp_path, ScriptedCsms(port=port), ocpp__AllowOfflineTxForUnknownId=True
    )
    async with running(config) as kiosk:
        await kiosk.wait_for("telemetry", has_telemetry)
        await kiosk.present(STRANGER)
        status = await kiosk.wait_for("charging offline", phase("Charging"))
        assert status["links"]["csms"]["state"] != "online"
        async with ScriptedCsms(port=port) as csms:
            csms.id_tags[STRANGER] = "Invalid"
            (stop,) = await csms.wait_calls("StopTransaction")
            status = await kiosk.wait_for("available", phase("Available"))
            assert status["connector"]["relay_closed"] is False
            await kiosk.wait_for("outbox delivered", outbox_empty)
            cached = query(
                db_path(tmp_path), "SELECT status FROM auth_cache WHERE id_tag = ?", STRANGER
            )
            assert cached == [("Invalid",)]  # §3.5.1: StartTransaction.conf updates the cache

    assert csms.violations == []
    assert csms.calls()[0].action == "BootNotification"
    assert stop.payload["reason"] == "DeAuthorized" and stop.payload["transactionId"] == 1001
    tokens = [t for t in transaction_tokens(csms.received) if t != "MeterValues"]
    assert tokens == [
        "Available",
        "Preparing",
        "Start",
        "Charging",
        "Finishing",
        "Stop",
        "Available",
    ]


async def test_a_card_refused_in_the_start_reply_of_an_ended_offline_session_is_cached(
    tmp_path: Path,
) -> None:
    # §3.5.1: every idTagInfo, StartTransaction.conf's included, updates the cache; the
    # session ended long before its Start reached the CSMS, and the Stop.conf has none.
    port = free_port()
    config = scenario_config(
        tmp_path, ScriptedCsms(port=port), ocpp__AllowOfflineTxForUnknownId=True
    )
    async with running(config) as kiosk:
        await kiosk.wait_for("telemetry", has_telemetry)
        await kiosk.present(STRANGER)
        await kiosk.wait_for("charging offline", phase("Charging"))
        await kiosk.present(STRANGER)
        await kiosk.wait_for("available", phase("Available"))
        async with ScriptedCsms(port=port) as csms:
            csms.id_tags[STRANGER] = "Blocked"
            csms.responders["StopTransaction"] = lambda call: {}  # idTagInfo is optional
            await kiosk.wait_for("outbox delivered", outbox_empty)
        await kiosk.wait_for("offline", lambda s: not online(s))

        # Offline again: the card is no longer unknown, it is known to be blocked.
        await kiosk.present(STRANGER)
        await kiosk.wait_for("verdict", lambda s: "card ****AABB: Blocked" in log_text(kiosk))
        status = await kiosk.wait_for("refused", phase("Available"))
        assert status["connector"]["session"] is None

    assert csms.violations == []
    assert "card ****AABB: Blocked (Cache)" in log_text(kiosk)


async def test_a_start_whose_reply_was_lost_is_resent_with_its_id_on_the_next_connection(
    tmp_path: Path,
) -> None:
    starts = Starts(first=1001)
    lost: list[str] = []

    async def lose_the_first_reply(call: Received) -> Answer:
        if not lost:
            lost.append(call.unique_id)
            await csms.disconnect()  # the connection breaks before the answer goes out
            return SILENCE
        return starts(call)

    async with ScriptedCsms() as csms, running(scenario_config(tmp_path, csms)) as kiosk:
        csms.responders["StartTransaction"] = lose_the_first_reply
        await ready(kiosk)
        await kiosk.present(CARD)
        await csms.wait_calls("StartTransaction", 2)
        await csms.wait_calls("MeterValues")
        await kiosk.present(CARD)
        await csms.wait_calls("StopTransaction")
        await kiosk.wait_for("outbox delivered", outbox_empty)

    assert csms.violations == []
    first, resent = csms.calls("StartTransaction")
    assert (first.unique_id, first.payload) == (resent.unique_id, resent.payload)
    assert (first.connection, resent.connection) == (1, 2)
    check_transaction_ids(csms.received, starts)
    check_sent_once(csms.received)
    assert [c.unique_id for c in csms.received].count(first.unique_id) == 2
    assert len({c.unique_id for c in csms.received}) == len(csms.received) - 1


# -- a StartTransaction.conf that refuses the card ----------------------------------------


def accept_every_authorize(call: Received) -> Answer:
    # The card passes Authorize; only the StartTransaction.conf says Blocked.
    return {"idTagInfo": {"status": "Accepted"}}


async def test_blocked_at_start_ends_the_session_deauthorized(tmp_path: Path) -> None:
    async with ScriptedCsms() as csms:
        config = scenario_config(tmp_path, csms, ocpp__StopTransactionOnInvalidId=True)
        async with running(config) as kiosk:
            csms.id_tags[CARD] = "Blocked"
            csms.responders["Authorize"] = accept_every_authorize
            await ready(kiosk)
            await kiosk.present(CARD)
            (stop,) = await csms.wait_calls("StopTransaction")
            status = await kiosk.wait_for("available", phase("Available"))
            assert status["connector"]["relay_closed"] is False
            await kiosk.wait_for("outbox delivered", outbox_empty)

    assert csms.violations == []
    assert stop.payload["reason"] == "DeAuthorized"
    assert stop.payload["transactionId"] == 1001
    assert "idTag" not in stop.payload  # nobody presented a card to stop it
    tokens = [t for t in transaction_tokens(csms.received) if t != "MeterValues"]
    assert tokens == [
        "Available",
        "Preparing",
        "Start",
        "Charging",
        "Finishing",
        "Stop",
        "Available",
    ]


@pytest.mark.parametrize("allowance_wh", [0, 15])
async def test_blocked_at_start_without_stopping_withholds_energy_until_the_card_stops_it(
    tmp_path: Path, allowance_wh: int
) -> None:
    overrides = {
        "ocpp__StopTransactionOnInvalidId": False,
        "ocpp__MaxEnergyOnInvalidId": allowance_wh,
    }
    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, **overrides)) as kiosk,
    ):
        csms.id_tags[CARD] = "Blocked"
        csms.responders["Authorize"] = accept_every_authorize
        await ready(kiosk)
        await kiosk.present(CARD)
        await csms.wait_calls("StartTransaction")
        suspended = await kiosk.wait_for("SuspendedEVSE", phase("Suspended"))
        connector = suspended["connector"]
        assert connector["status"] == "SuspendedEVSE"
        assert connector["relay_closed"] is False
        energy = connector["session"]["energy_wh"]
        if allowance_wh:
            assert allowance_wh <= energy <= allowance_wh + 15, energy
        else:
            assert energy < 10, energy  # stopped as soon as the answer came
        await csms.wait_for(
            "SuspendedEVSE reported",
            lambda: "SuspendedEVSE" in [p["status"] for p in csms.payloads("StatusNotification")],
        )
        # The relay stays open: no more energy flows while suspended.
        later = await kiosk.wait_for(
            "a few more samples",
            lambda s: s["connector"]["last_sample"]["seq"] >= connector["last_sample"]["seq"] + 5,
        )
        assert later["connector"]["session"]["energy_wh"] == energy
        await kiosk.present(CARD)
        (stop,) = await csms.wait_calls("StopTransaction")
        await kiosk.wait_for("available", phase("Available"))
        await kiosk.wait_for("outbox delivered", outbox_empty)

    assert csms.violations == []
    assert stop.payload["reason"] == "Local" and stop.payload["idTag"] == CARD
    (start,) = csms.payloads("StartTransaction")
    assert stop.payload["meterStop"] - start["meterStart"] == energy
    statuses = [p["status"] for p in csms.payloads("StatusNotification") if p["connectorId"] == 1]
    assert statuses[-4:] == ["Charging", "SuspendedEVSE", "Finishing", "Available"]


# -- retries, parking, dead letters, timeouts ----------------------------------------------


def refuse_start(call: Received) -> Answer:
    return Error("InternalError", "the test refuses StartTransaction")


def bad_start_reply(call: Received) -> Answer:
    # A CALLRESULT that breaks the schema: transactionId must be an integer.
    reply = {"transactionId": "abc", "idTagInfo": {"status": "Accepted"}}
    return Raw(json.dumps([3, call.unique_id, reply]))


class Timed:
    """Wraps a responder and notes when each call came."""

    def __init__(self, responder: Any) -> None:
        self._responder = responder
        self.at: list[float] = []

    def __call__(self, call: Received) -> Answer:
        self.at.append(time.monotonic())
        answer: Answer = self._responder(call)
        return answer


@pytest.mark.parametrize("refusal", [refuse_start, bad_start_reply], ids=["callerror", "bad"])
async def test_a_start_refused_attempts_times_is_parked_with_an_alarm_then_delivered(
    tmp_path: Path, refusal: Any
) -> None:
    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, **FAST_RETRIES)) as kiosk,
    ):
        refused = Timed(refusal)
        csms.responders["StartTransaction"] = refused
        await ready(kiosk)
        await kiosk.present(CARD)
        parked = await kiosk.wait_for("parked", lambda s: s["outbox"]["parked"] == 1)
        assert len(csms.calls("StartTransaction")) == 2  # TransactionMessageAttempts
        # §4.10: the retry waits TransactionMessageRetryInterval x tries so far.
        assert refused.at[1] - refused.at[0] >= 0.9
        (alarm,) = parked["alarms"]
        assert "StartTransaction" in alarm and "parked" in alarm
        # The session runs as usual meanwhile; its statuses are not held back.
        assert parked["connector"]["phase"] == "Charging"
        assert parked["connector"]["relay_closed"] is True
        await csms.wait_for(
            "Charging reported",
            lambda: "Charging" in [p["status"] for p in csms.payloads("StatusNotification")],
        )
        await kiosk.wait_for("a MeterValues queued", lambda s: s["outbox"]["depth"] >= 2)
        await kiosk.present(CARD)
        stopped = await kiosk.wait_for("available", phase("Available"))
        assert stopped["connector"]["relay_closed"] is False
        assert csms.calls("MeterValues") == [] and csms.calls("StopTransaction") == []

        # The CSMS is fixed; the next connection gives parked messages a new round.
        del csms.responders["StartTransaction"]
        await csms.disconnect()
        delivered = await kiosk.wait_for("outbox delivered", outbox_empty)
        assert delivered["alarms"] == []
        assert delivered["outbox"]["dead_letters"] == 0

    assert csms.violations == []
    tries = csms.calls("StartTransaction")
    assert len(tries) == 3 and len({t.unique_id for t in tries}) == 1  # one message, resent
    (stop,) = csms.payloads("StopTransaction")
    assert stop["transactionId"] == 1001  # the id the accepted try got
    assert csms.payloads("MeterValues")
    assert all(p["transactionId"] == 1001 for p in csms.payloads("MeterValues"))
    assert query(db_path(tmp_path), "SELECT COUNT(*) FROM dead_letters") == [(0,)]


async def test_a_meter_values_refused_attempts_times_is_dead_lettered_and_delivery_goes_on(
    tmp_path: Path,
) -> None:
    refused: list[str] = []

    def refuse_first_meter_values(call: Received) -> Answer:
        if not refused:
            refused.append(call.unique_id)
        if call.unique_id == refused[0]:
            return Error("InternalError", "the test refuses this MeterValues")
        return {}

    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, **FAST_RETRIES)) as kiosk,
    ):
        csms.responders["MeterValues"] = refuse_first_meter_values
        await ready(kiosk)
        await kiosk.present(CARD)
        await kiosk.wait_for("dead letter", lambda s: s["outbox"]["dead_letters"] == 1)
        # Later messages flow again: more MeterValues, then the stop.
        await csms.wait_calls("MeterValues", 3)
        await kiosk.present(CARD)
        await csms.wait_calls("StopTransaction")
        done = await kiosk.wait_for("outbox delivered", outbox_empty)
        assert done["alarms"] == [] and done["outbox"]["parked"] == 0

    assert csms.violations == []
    assert [c.unique_id for c in csms.calls("MeterValues")].count(refused[0]) == 2
    ((action, reason),) = query(db_path(tmp_path), "SELECT action, reason FROM dead_letters")
    assert action == "MeterValues" and "refused 2" in reason


async def test_an_unanswered_stop_is_resent_with_the_same_id_and_accepted_once(
    tmp_path: Path,
) -> None:
    answered: list[str] = []

    def silent_once(call: Received) -> Answer:
        if not answered:
            answered.append(call.unique_id)
            return SILENCE
        return {"idTagInfo": {"status": "Accepted"}}

    overrides = {"chargepoint__response_timeout": 1, **FAST_RETRIES}
    async with (
        ScriptedCsms() as csms,
        running(scenario_config(tmp_path, csms, **overrides)) as kiosk,
    ):
        csms.responders["StopTransaction"] = silent_once
        await ready(kiosk)
        await kiosk.present(CARD)
        await kiosk.wait_for("charging", phase("Charging"))
        await kiosk.present(CARD)
        first, again = await csms.wait_calls("StopTransaction", 2)
        await kiosk.wait_for("outbox delivered", outbox_empty)
        status = await kiosk.wait_for("available", phase("Available"))

    assert csms.violations == []
    assert first.unique_id == again.unique_id and first.payload == again.payload
    assert len(csms.calls("StopTransaction")) == 2  # accepted on the resend, never sent again
    assert status["alarms"] == [] and status["outbox"]["dead_letters"] == 0
    # Received compares by value and the resend equals the first try: find it by identity.
    resent_at = next(i for i, c in enumerate(csms.received) if c is again)
    after_stop = csms.received[resent_at + 1 :]
    assert [(c.action, c.payload.get("status")) for c in after_stop] == [
        ("StatusNotification", "Available")
    ]
