"""The station id -> Realtime Database key mapping: forbidden characters escaped, reversible."""

from __future__ import annotations

import pytest

from edgepoint.cloud.stationkey import FORBIDDEN, station_id_from_key, station_key


@pytest.mark.parametrize(
    ("station_id", "key"),
    [
        ("EP-1", "EP-1"),
        ("KIOSK_07", "KIOSK_07"),
        ("EP.TEST-1", "EP,2ETEST-1"),
        ("a#b$c[d]e/f", "a,23b,24c,5Bd,5De,2Ff"),
        ("100%", "100,25"),
        ("%2E", ",252E"),  # never a URL escape that an HTTP library would decode
        (",2E", ",2C2E"),  # an id that looks escaped stays distinct from "."
        ("tab\there", "tab,09here"),
        ("del\x7f", "del,7F"),
        ("Zürich-1", "Zürich-1"),
    ],
)
def test_key_escapes_exactly_the_forbidden_characters(station_id: str, key: str) -> None:
    assert station_key(station_id) == key
    assert station_id_from_key(key) == station_id


def test_no_key_holds_a_character_rtdb_forbids() -> None:
    everything = "".join(chr(c) for c in range(0x80))
    key = station_key(everything)
    assert not set(key) & (FORBIDDEN | {"%"})
    assert station_id_from_key(key) == everything


def test_distinct_ids_get_distinct_keys() -> None:
    ids = ["a.b", "a,2Eb", "a,b", "a%b", "a/b", "a,2Fb", "a_b", "a-b"]
    assert len({station_key(i) for i in ids}) == len(ids)


def test_a_key_station_key_cannot_make_is_refused() -> None:
    with pytest.raises(ValueError):
        station_id_from_key("a,2eb")  # lower-case hex is never produced
    with pytest.raises(ValueError):
        station_id_from_key("a.b")
    with pytest.raises(ValueError):
        station_key("")
    with pytest.raises(ValueError):
        station_key("x" * 769)
