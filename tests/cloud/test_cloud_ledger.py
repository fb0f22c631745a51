"""The ledger recorder and verifier on a real edgepoint.db: chain, signatures, clock, meters."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cloud_support import T0, TestClock, open_store, start_session, stop_session

from edgepoint.cloud.entries import GENESIS_HASH, hash_id_tag
from edgepoint.cloud.ledger import LedgerRecorder
from edgepoint.cloud.signing import LedgerKey, load_or_create_key, public_key_from_b64
from edgepoint.cloud.verify import verify_entries
from edgepoint.errors import ConfigError
from edgepoint.storage.chargepoint import ChargePointStore
from edgepoint.storage.ledger import LedgerStore


async def entries(store: ChargePointStore) -> list[dict[str, Any]]:
    return await LedgerStore(store.db).entries_after(0, 10_000)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = await open_store(tmp_path / "edgepoint.db")
    yield s
    await s.close()


async def test_each_start_and_stop_becomes_one_chained_signed_entry(
    store: ChargePointStore, tmp_path: Path
) -> None:
    clock = TestClock()
    key = load_or_create_key(tmp_path / "ledger.key")
    recorder = LedgerRecorder(LedgerStore(store.db), key, "EP-1", clock)
    await start_session(store, "s-1", 1000, T0)
    await stop_session(store, "s-1", 1500, T0, reason="Local")
    await start_session(store, "s-2", 1500, T0, connector_id=2, id_tag="DEADBEEF")
    await stop_session(store, "s-2", 1600, T0, reason="Other")  # telemetry lost: forced
    assert await recorder.record_pending() == 4
    assert await recorder.record_pending() == 0  # nothing twice

    got = await entries(store)
    assert [(e["seq"], e["kind"], e["session_id"]) for e in got] == [
        (1, "start", "s-1"),
        (2, "stop", "s-1"),
        (3, "start", "s-2"),
        (4, "forced_stop", "s-2"),
    ]
    assert got[0]["prev_hash"] == GENESIS_HASH
    assert [e["prev_hash"] for e in got[1:]] == [e["hash"] for e in got[:-1]]
    stop = got[1]
    assert stop["meter_start_wh"] == 1000 and stop["meter_stop_wh"] == 1500
    assert stop["energy_wh"] == 500 and stop["reason"] == "Local"
    assert stop["id_tag_hash"] == hash_id_tag("04a1b2c3") and "04A1B2C3" not in str(got)
    assert stop["timestamp"] == "2026-03-01T12:00:00.000Z" and stop["time_basis"] == "recorded"
    # A start has no stop fields at all: absent, not null (RTDB drops nulls).
    assert {"reason", "meter_stop_wh", "energy_wh", "transaction_id"}.isdisjoint(got[0])
    assert verify_entries(got, public_key_from_b64(key.public_b64)) == []


async def test_the_transaction_id_is_the_one_known_when_signed(
    store: ChargePointStore, tmp_path: Path
) -> None:
    recorder = LedgerRecorder(LedgerStore(store.db), LedgerKey.generate(), "EP-1", TestClock())
    await start_session(store, "s-1", 10, T0)
    await recorder.record_pending()
    async with store.db.write() as db:  # the CSMS's StartTransaction.conf arrives
        await db.execute("UPDATE sessions SET transaction_id = 77 WHERE session_id = 's-1'")
    await stop_session(store, "s-1", 20, T0)
    await recorder.record_pending()
    assert [e.get("transaction_id") for e in await entries(store)] == [None, 77]


async def test_nothing_is_signed_until_the_clock_is_trusted(
    store: ChargePointStore, tmp_path: Path
) -> None:
    clock = TestClock(synced=False)
    ledger = LedgerStore(store.db)
    recorder = LedgerRecorder(ledger, LedgerKey.generate(), "EP-1", clock)
    # A Pi that booted at 1970: the kiosk stamps what its clock says.
    await start_session(store, "s-1", 10, clock.utc_now())
    assert await recorder.record_pending() == 0
    assert recorder.waiting_for_clock
    assert (await ledger.summary()).pending_events == 1
    clock.advance(30)  # 30 s later NTP answers
    clock.sync(T0)
    assert await recorder.record_pending() == 1
    (entry,) = await entries(store)
    # Seen 30 s before the first trusted time: that is when it happened (within a poll).
    assert entry["timestamp"] == "2026-03-01T11:59:30.000Z"
    assert entry["time_basis"] == "monotonic"
    assert entry["recorded_at"].startswith("1970-01-01")


async def test_an_event_from_an_unsynced_earlier_run_gets_the_signing_time(
    store: ChargePointStore,
) -> None:
    clock = TestClock(synced=False)
    await start_session(store, "s-1", 10, clock.utc_now())
    clock.sync(T0)  # a new process, and the clock is already set: nobody saw the event
    recorder = LedgerRecorder(LedgerStore(store.db), LedgerKey.generate(), "EP-1", clock)
    await recorder.record_pending()
    (entry,) = await entries(store)
    assert (entry["timestamp"], entry["time_basis"]) == ("2026-03-01T12:00:00.000Z", "signed")


async def test_a_meter_that_goes_backwards_is_refused_and_raised(store: ChargePointStore) -> None:
    ledger = LedgerStore(store.db)
    key = LedgerKey.generate()
    recorder = LedgerRecorder(ledger, key, "EP-1", TestClock())
    await start_session(store, "s-1", 5000, T0)
    await stop_session(store, "s-1", 6000, T0)
    await start_session(store, "s-2", 100, T0)  # the ESP32 was swapped: register reset
    await stop_session(store, "s-2", 200, T0)
    await start_session(store, "s-3", 7000, T0, connector_id=2)  # another meter: fine
    await recorder.record_pending()
    got = await entries(store)
    assert [(e["session_id"], e["kind"]) for e in got] == [
        ("s-1", "start"),
        ("s-1", "stop"),
        ("s-3", "start"),
    ]
    summary = await ledger.summary()
    assert (summary.refused, summary.pending_events) == (2, 0)
    refusals = await ledger.refusals()
    assert refusals[0][:2] == ("s-2", "start")
    assert "below 6000 Wh already in the ledger for connector 1" in refusals[0][2]
    assert verify_entries(got, public_key_from_b64(key.public_b64)) == []


async def test_a_restarted_recorder_continues_the_chain_without_doubles(
    store: ChargePointStore,
) -> None:
    key = LedgerKey.generate()
    await start_session(store, "s-1", 10, T0)
    await LedgerRecorder(LedgerStore(store.db), key, "EP-1", TestClock()).record_pending()
    await stop_session(store, "s-1", 20, T0)
    again = LedgerRecorder(LedgerStore(store.db), key, "EP-1", TestClock())
    await again.record_pending()
    await again.record_pending()
    got = await entries(store)
    assert [e["seq"] for e in got] == [1, 2]
    assert verify_entries(got, public_key_from_b64(key.public_b64)) == []


# -- verify: every kind of damage is named --------------------------------------------


@pytest.fixture
async def sound(store: ChargePointStore) -> tuple[list[dict[str, Any]], LedgerKey]:
    key = LedgerKey.generate()
    recorder = LedgerRecorder(LedgerStore(store.db), key, "EP-1", TestClock())
    for n in range(3):
        await start_session(store, f"s-{n}", 1000 * n, T0)
        await stop_session(store, f"s-{n}", 1000 * n + 500, T0)
    await recorder.record_pending()
    return await entries(store), key


def problems(ledger: list[dict[str, Any]], key: LedgerKey) -> list[str]:
    return [str(p) for p in verify_entries(ledger, public_key_from_b64(key.public_b64))]


def test_verify_accepts_the_sound_ledger(sound: tuple[list[dict[str, Any]], LedgerKey]) -> None:
    ledger, key = sound
    assert len(ledger) == 6 and problems(ledger, key) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("energy_wh", 499),
        ("meter_stop_wh", 9999),
        ("timestamp", "2026-03-02T00:00:00.000Z"),
        ("id_tag_hash", "0" * 64),
        ("session_id", "s-x"),
        ("reason", "Remote"),
        ("transaction_id", 5),
    ],
)
def test_verify_names_a_changed_field(
    sound: tuple[list[dict[str, Any]], LedgerKey], field: str, value: Any
) -> None:
    ledger, key = copy.deepcopy(sound[0]), sound[1]
    ledger[3][field] = value
    found = problems(ledger, key)
    # First the hash; a changed reading may also break the arithmetic, said after it.
    assert found[0] == (
        "entry 4 (seq 4): hash does not match the entry's content: a field was changed after"
        " signing"
    )
    assert not any(p.startswith(("entry 1 ", "entry 2 ", "entry 3 ")) for p in found)


def test_verify_names_a_change_that_was_rehashed(
    sound: tuple[list[dict[str, Any]], LedgerKey],
) -> None:
    from edgepoint.cloud.canonical import canonical_json, sha256_hex
    from edgepoint.cloud.entries import split_entry

    ledger, key = copy.deepcopy(sound[0]), sound[1]
    ledger[3]["energy_wh"] = 10
    ledger[3]["meter_stop_wh"] = ledger[3]["meter_start_wh"] + 10
    ledger[3]["hash"] = sha256_hex(canonical_json(split_entry(ledger[3])[0]))
    found = problems(ledger, key)
    assert found[0] == (
        "entry 4 (seq 4): signature does not verify with the station's public key"
        " (wrong key or forged)"
    )
    # ...and the next entry no longer links to it.
    assert found[1].startswith("entry 5 (seq 5): prev_hash does not match")


def test_verify_names_reordered_entries(sound: tuple[list[dict[str, Any]], LedgerKey]) -> None:
    ledger, key = copy.deepcopy(sound[0]), sound[1]
    ledger[2], ledger[3] = ledger[3], ledger[2]
    found = problems(ledger, key)
    assert found[0] == "entry 3 (seq 4): expected seq 3: entries 3..3 are missing"
    assert found[1].startswith("entry 3 (seq 4): prev_hash does not match")
    assert "entry 4 (seq 3): expected seq 5: an entry was inserted, repeated or reordered" in found


def test_verify_names_a_deleted_entry(sound: tuple[list[dict[str, Any]], LedgerKey]) -> None:
    ledger, key = copy.deepcopy(sound[0]), sound[1]
    del ledger[2]
    assert problems(ledger, key) == [
        "entry 3 (seq 4): expected seq 3: entries 3..3 are missing",
        "entry 3 (seq 4): prev_hash does not match the hash of the entry before it: the chain"
        " is broken (an entry was removed, inserted or reordered)",
    ]


def test_verify_names_an_inserted_entry(sound: tuple[list[dict[str, Any]], LedgerKey]) -> None:
    ledger, key = copy.deepcopy(sound[0]), sound[1]
    forged = copy.deepcopy(ledger[2])
    forged["session_id"] = "free-energy"
    ledger.insert(3, forged)
    found = problems(ledger, key)
    assert found[0].startswith("entry 4 (seq 3): hash does not match")
    assert "entry 4 (seq 3): expected seq 4: an entry was inserted, repeated or reordered" in found


def test_verify_names_a_wrong_key(sound: tuple[list[dict[str, Any]], LedgerKey]) -> None:
    ledger = sound[0]
    found = problems(ledger, LedgerKey.generate())
    assert len(found) == 6
    assert all("signature does not verify" in p for p in found)


def test_verify_names_readings_that_go_backwards() -> None:
    from edgepoint.cloud.entries import Stamp, entry_body, seal
    from edgepoint.storage.ledger import LedgerEvent

    key = LedgerKey.generate()
    ledger, prev = [], GENESIS_HASH
    for seq, (event, start, stop) in enumerate(
        [("start", 100, None), ("stop", 100, 200), ("start", 150, None)], start=1
    ):
        body = entry_body(
            LedgerEvent(seq, event, f"s{seq}", 1, "AA", start, stop, "Local", "x"),
            station="EP-1",
            seq=seq,
            prev_hash=prev,
            stamp=Stamp("2026-03-01T12:00:00.000Z", "recorded", "x"),
            transaction_id=None,
        )
        new = seal(body, key)
        ledger.append({**body, "hash": new.hash, "sig": new.sig})
        prev = new.hash
    assert problems(ledger, key) == [
        "entry 3 (seq 3): meter_start_wh 150 is below 200 Wh earlier in the ledger for"
        " connector 1: meter readings went backwards"
    ]


# -- the key file ---------------------------------------------------------------------


def test_the_key_is_made_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "ledger.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).public_b64 == first.public_b64


def test_a_key_others_can_read_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as err:
        load_or_create_key(path)
    assert str(path) in str(err.value) and "chmod 600" in str(err.value)
