"""Every cell of the local-authorization truth tables, and the SendLocalList rules."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgepoint.charging.authorization import (
    RULES,
    AuthSettings,
    Decision,
    Knowledge,
    KnownTag,
    Link,
    LocalListChange,
    Source,
    TagEntry,
    UpdateStatus,
    UpdateType,
    apply_local_list,
    before_asking,
    cache_update,
    decide,
    known_tag,
    list_conflict,
    rule_for,
    when_unanswered,
)
from edgepoint.charging.events import AuthorizationStatus, IdTag

A = AuthorizationStatus
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
EARLIER = NOW - timedelta(seconds=1)
DOC = Path(__file__).resolve().parents[2] / "docs" / "authorization.md"

ALICE = IdTag("04A1B2C3")
BOB = IdTag("04FFEE11")
CAROL = IdTag("04C0FFEE")

ACCEPTED = TagEntry(A.ACCEPTED)
ACCEPTED_UNTIL_LATER = TagEntry(A.ACCEPTED, LATER, "FLEET-1")
ACCEPTED_UNTIL_EARLIER = TagEntry(A.ACCEPTED, EARLIER)
BLOCKED = TagEntry(A.BLOCKED)
INVALID = TagEntry(A.INVALID)


def settings(
    *,
    list_on: bool = True,
    cache_on: bool = True,
    offline: bool = True,
    pre: bool = False,
    unknown: bool = False,
) -> AuthSettings:
    return AuthSettings(
        local_auth_list_enabled=list_on,
        authorization_cache_enabled=cache_on,
        local_authorize_offline=offline,
        local_pre_authorize=pre,
        allow_offline_tx_for_unknown_id=unknown,
    )


def decision_for(
    online: bool, list_entry: TagEntry | None, cache_entry: TagEntry | None, s: AuthSettings
) -> Decision:
    return before_asking(known_tag(list_entry, cache_entry, s, NOW), s, online)


ASK = Decision(None, Source.CSMS)


# -- Table 2, cell by cell, written out by hand (independent of RULES and of the doc) ------

CELLS = [
    # (id, online, list entry, cache entry, settings, expected)
    (
        "online/list-accepted/pre-authorize -> accept now",
        True, ACCEPTED, None, settings(pre=True), Decision(A.ACCEPTED, Source.LOCAL_LIST),
    ),
    (
        "online/cache-accepted/pre-authorize -> accept now",
        True, None, ACCEPTED_UNTIL_LATER, settings(pre=True), Decision(A.ACCEPTED, Source.CACHE),
    ),
    (
        "online/cache-concurrenttx/pre-authorize -> valid, accept now",
        True, None, TagEntry(A.CONCURRENT_TX), settings(pre=True),
        Decision(A.ACCEPTED, Source.CACHE),
    ),
    (
        "online/list-accepted/no pre-authorize -> ask",
        True, ACCEPTED, None, settings(pre=False), ASK,
    ),
    (
        "online/list-blocked/pre-authorize -> ask (may be stale)",
        True, BLOCKED, None, settings(pre=True), ASK,
    ),
    (
        "online/cache-expired-by-time/pre-authorize -> ask",
        True, None, ACCEPTED_UNTIL_EARLIER, settings(pre=True), ASK,
    ),
    (
        "online/unknown/everything on -> ask",
        True, None, None, settings(pre=True, unknown=True), ASK,
    ),
    (
        "offline/list-accepted/local-authorize-offline -> accept",
        False, ACCEPTED, None, settings(offline=True), Decision(A.ACCEPTED, Source.LOCAL_LIST),
    ),
    (
        "offline/cache-accepted/local-authorize-offline -> accept",
        False, None, ACCEPTED_UNTIL_LATER, settings(offline=True),
        Decision(A.ACCEPTED, Source.CACHE),
    ),
    (
        "offline/list-accepted/no local-authorize-offline/unknown allowed -> accept as unknown",
        False, ACCEPTED, None, settings(offline=False, unknown=True),
        Decision(A.ACCEPTED, Source.OFFLINE_UNKNOWN),
    ),
    (
        "offline/cache-accepted/no local-authorize-offline/no unknown -> refuse",
        False, None, ACCEPTED, settings(offline=False, unknown=False),
        Decision(A.UNAVAILABLE, Source.NONE),
    ),
    (
        "offline/list-blocked/unknown allowed -> reject Blocked",
        False, BLOCKED, None, settings(unknown=True), Decision(A.BLOCKED, Source.LOCAL_LIST),
    ),
    (
        "offline/list-expired-by-time/unknown allowed -> reject Expired",
        False, ACCEPTED_UNTIL_EARLIER, None, settings(unknown=True),
        Decision(A.EXPIRED, Source.LOCAL_LIST),
    ),
    (
        "offline/cache-invalid/unknown allowed -> reject Invalid",
        False, None, INVALID, settings(unknown=True), Decision(A.INVALID, Source.CACHE),
    ),
    (
        "offline/cache-blocked/everything off -> reject Blocked",
        False, None, BLOCKED, settings(offline=False, unknown=False),
        Decision(A.BLOCKED, Source.CACHE),
    ),
    (
        "offline/unknown/unknown allowed -> accept as unknown",
        False, None, None, settings(unknown=True), Decision(A.ACCEPTED, Source.OFFLINE_UNKNOWN),
    ),
    (
        "offline/unknown/no unknown -> refuse",
        False, None, None, settings(unknown=False), Decision(A.UNAVAILABLE, Source.NONE),
    ),
    (
        "offline/list disabled, list-accepted/unknown not allowed -> refuse",
        False, ACCEPTED, None, settings(list_on=False), Decision(A.UNAVAILABLE, Source.NONE),
    ),
    (
        "offline/cache disabled, cache-blocked/unknown allowed -> accept as unknown",
        False, None, BLOCKED, settings(cache_on=False, unknown=True),
        Decision(A.ACCEPTED, Source.OFFLINE_UNKNOWN),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("online", "list_entry", "cache_entry", "s", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CELLS],
)
def test_cell(
    online: bool,
    list_entry: TagEntry | None,
    cache_entry: TagEntry | None,
    s: AuthSettings,
    expected: Decision,
) -> None:
    assert decision_for(online, list_entry, cache_entry, s) == expected


@pytest.mark.parametrize(
    ("list_entry", "cache_entry", "s"),
    [
        pytest.param(ACCEPTED, None, settings(), id="list-accepted"),
        pytest.param(None, BLOCKED, settings(unknown=True), id="cache-blocked"),
        pytest.param(None, None, settings(unknown=True), id="unknown-allowed"),
        pytest.param(None, None, settings(), id="unknown-refused"),
    ],
)
def test_no_answer_in_time_uses_the_offline_rules(
    list_entry: TagEntry | None, cache_entry: TagEntry | None, s: AuthSettings
) -> None:
    known = known_tag(list_entry, cache_entry, s, NOW)
    assert when_unanswered(known, s) == before_asking(known, s, online=False)
    assert when_unanswered(known, s).verdict is not None


# -- the decision table itself -------------------------------------------------------------

ALL_SETTINGS = [
    settings(pre=pre, offline=offline, unknown=unknown)
    for pre, offline, unknown in itertools.product([False, True], repeat=3)
]


def known_examples(knowledge: Knowledge) -> list[KnownTag | None]:
    """Concrete answers from Table 1 that have this knowledge."""
    if knowledge is Knowledge.UNKNOWN:
        return [None]
    statuses = (
        [A.ACCEPTED, A.CONCURRENT_TX]
        if knowledge is Knowledge.VALID
        else [A.BLOCKED, A.EXPIRED, A.INVALID]
    )
    return [
        KnownTag(source, status, "FLEET-1")
        for source in (Source.LOCAL_LIST, Source.CACHE)
        for status in statuses
    ]


def test_every_combination_matches_exactly_one_rule() -> None:
    for link, knowledge, s in itertools.product(Link, Knowledge, ALL_SETTINGS):
        matching = [r for r in RULES if r.matches(link, knowledge, s)]
        assert len(matching) == 1, (link, knowledge, s, matching)


def test_a_card_decided_locally_never_has_source_csms() -> None:
    for link, knowledge, s in itertools.product(Link, Knowledge, ALL_SETTINGS):
        for known in known_examples(knowledge):
            d = decide(link, known, s)
            assert d.ask_csms == (d.source is Source.CSMS)
            if link is Link.OFFLINE:
                assert not d.ask_csms, "offline there is nobody to ask"
            if known is not None and known.knowledge is Knowledge.NOT_VALID:
                assert d.verdict is not A.ACCEPTED, "a not-valid card is never accepted"


def test_rule_for_returns_the_matching_row() -> None:
    s = settings(pre=True)
    assert rule_for(Link.ONLINE, KnownTag(Source.CACHE, A.ACCEPTED), s) is RULES[0]


# -- Table 1: what the stores know ---------------------------------------------------------


def test_list_beats_cache() -> None:
    s = settings()
    assert known_tag(BLOCKED, ACCEPTED, s, NOW) == KnownTag(Source.LOCAL_LIST, A.BLOCKED)
    assert known_tag(ACCEPTED_UNTIL_LATER, BLOCKED, s, NOW) == KnownTag(
        Source.LOCAL_LIST, A.ACCEPTED, "FLEET-1"
    )


def test_an_expired_list_entry_does_not_fall_back_to_the_cache() -> None:
    known = known_tag(ACCEPTED_UNTIL_EARLIER, ACCEPTED, settings(), NOW)
    assert known == KnownTag(Source.LOCAL_LIST, A.EXPIRED)


def test_disabled_stores_are_ignored() -> None:
    assert known_tag(BLOCKED, ACCEPTED, settings(list_on=False), NOW) == KnownTag(
        Source.CACHE, A.ACCEPTED
    )
    assert known_tag(None, ACCEPTED, settings(cache_on=False), NOW) is None
    assert known_tag(ACCEPTED, ACCEPTED, settings(list_on=False, cache_on=False), NOW) is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(TagEntry(A.ACCEPTED, LATER), A.ACCEPTED, id="accepted-expiry-ahead"),
        pytest.param(TagEntry(A.ACCEPTED, NOW), A.EXPIRED, id="accepted-expiry-is-now"),
        pytest.param(TagEntry(A.ACCEPTED, EARLIER), A.EXPIRED, id="accepted-expiry-passed"),
        pytest.param(TagEntry(A.CONCURRENT_TX, EARLIER), A.EXPIRED, id="concurrent-passed"),
        pytest.param(TagEntry(A.BLOCKED, EARLIER), A.BLOCKED, id="blocked-keeps-status"),
        pytest.param(TagEntry(A.ACCEPTED), A.ACCEPTED, id="accepted-no-expiry"),
    ],
)
def test_expiry(entry: TagEntry, expected: AuthorizationStatus) -> None:
    for list_entry, cache_entry in ((entry, None), (None, entry)):
        known = known_tag(list_entry, cache_entry, settings(), NOW)
        assert known is not None and known.status is expected


def test_expiry_compares_instants_not_clock_faces() -> None:
    # 13:00 at UTC+02:00 is 11:00 UTC, an hour before NOW (12:00 UTC).
    plus_two = datetime.fromisoformat("2025-06-01T13:00:00+02:00")
    known = known_tag(TagEntry(A.ACCEPTED, plus_two), None, settings(), NOW)
    assert known is not None and known.status is A.EXPIRED


# -- the documented tables equal the code ---------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_table(first_column_after_number: str) -> list[dict[str, str]]:
    """The rows of the markdown table in docs/authorization.md with this second column."""
    blocks: list[list[str]] = [[]]
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    for block in blocks:
        if block and _cells(block[0])[:2] == ["#", first_column_after_number]:
            header = _cells(block[0])
            return [dict(zip(header, _cells(row), strict=True)) for row in block[2:]]
    raise AssertionError(f"no table starting with '# | {first_column_after_number}' in {DOC}")


def _flag(value: str) -> list[bool]:
    return {"true": [True], "false": [False], "any": [False, True]}[value]


DECISION_ROWS = doc_table("link")
KNOWLEDGE_ROWS = doc_table("LocalAuthListEnabled")


def _decision_combinations(row: dict[str, str]) -> list[tuple[Link, Knowledge, AuthSettings]]:
    return [
        (Link(row["link"]), Knowledge(row["knowledge"]), settings(pre=p, offline=o, unknown=u))
        for p in _flag(row["LocalPreAuthorize"])
        for o in _flag(row["LocalAuthorizeOffline"])
        for u in _flag(row["AllowOfflineTxForUnknownId"])
    ]


def test_decision_doc_covers_every_combination_once() -> None:
    seen = Counter(c for row in DECISION_ROWS for c in _decision_combinations(row))
    everything = set(itertools.product(Link, Knowledge, ALL_SETTINGS))
    assert set(seen) == everything
    assert all(n == 1 for n in seen.values()), [c for c, n in seen.items() if n > 1]
    assert len(DECISION_ROWS) == len(RULES)


@pytest.mark.parametrize("row", DECISION_ROWS, ids=lambda r: f"table2-row{r['#']}")
def test_decision_doc_row_equals_the_code(row: dict[str, str]) -> None:
    for link, knowledge, s in _decision_combinations(row):
        for known in known_examples(knowledge):
            expected_verdict = {
                "ask CSMS": None,
                "Accepted": A.ACCEPTED,
                "Unavailable": A.UNAVAILABLE,
                "as stored": known.status if known else "n/a",
            }[row["verdict"]]
            expected_source = (
                (known.source if known else "n/a")
                if row["source"] == "where found"
                else Source(row["source"])
            )
            got = before_asking(known, s, online=link is Link.ONLINE)
            assert (got.verdict, got.source) == (expected_verdict, expected_source), (row, known, s)
            if link is Link.OFFLINE:
                assert when_unanswered(known, s) == got


ENTRY_EXAMPLES: dict[str, list[TagEntry | None]] = {
    "none": [None],
    "valid": [ACCEPTED, ACCEPTED_UNTIL_LATER, TagEntry(A.CONCURRENT_TX)],
    "expired": [
        ACCEPTED_UNTIL_EARLIER, TagEntry(A.ACCEPTED, NOW), TagEntry(A.CONCURRENT_TX, EARLIER)
    ],
    "not valid": [BLOCKED, INVALID, TagEntry(A.EXPIRED), TagEntry(A.BLOCKED, EARLIER)],
}  # fmt: skip


def _entry_kinds(value: str) -> list[str]:
    return list(ENTRY_EXAMPLES) if value == "any" else [value]


def _knowledge_combinations(row: dict[str, str]) -> list[tuple[bool, str, bool, str]]:
    return list(
        itertools.product(
            _flag(row["LocalAuthListEnabled"]),
            _entry_kinds(row["list entry"]),
            _flag(row["AuthorizationCacheEnabled"]),
            _entry_kinds(row["cache entry"]),
        )
    )


def test_knowledge_doc_covers_every_combination_once() -> None:
    seen = Counter(c for row in KNOWLEDGE_ROWS for c in _knowledge_combinations(row))
    kinds = list(ENTRY_EXAMPLES)
    assert set(seen) == set(itertools.product([False, True], kinds, [False, True], kinds))
    assert all(n == 1 for n in seen.values()), [c for c, n in seen.items() if n > 1]


@pytest.mark.parametrize("row", KNOWLEDGE_ROWS, ids=lambda r: f"table1-row{r['#']}")
def test_knowledge_doc_row_equals_the_code(row: dict[str, str]) -> None:
    for list_on, list_kind, cache_on, cache_kind in _knowledge_combinations(row):
        s = settings(list_on=list_on, cache_on=cache_on)
        for list_entry, cache_entry in itertools.product(
            ENTRY_EXAMPLES[list_kind], ENTRY_EXAMPLES[cache_kind]
        ):
            got = known_tag(list_entry, cache_entry, s, NOW)
            if row["knowledge"] == "unknown":
                assert got is None, (row, list_entry, cache_entry)
                continue
            assert got is not None, (row, list_entry, cache_entry)
            found = list_entry if row["source"] == "LocalList" else cache_entry
            assert found is not None
            expected_status = A.EXPIRED if row["status"] == "Expired" else found.status
            assert row["status"] in ("Expired", "as stored")
            assert (got.knowledge, got.status, got.source, got.parent_id_tag) == (
                Knowledge(row["knowledge"]),
                expected_status,
                Source(row["source"]),
                found.parent_id_tag,
            ), (row, list_entry, cache_entry)


# -- the cache update rule ----------------------------------------------------------------


@pytest.mark.parametrize("status", [A.ACCEPTED, A.BLOCKED, A.EXPIRED, A.INVALID, A.CONCURRENT_TX])
def test_every_idtaginfo_updates_the_cache(status: AuthorizationStatus) -> None:
    entry = cache_update(status, LATER, "FLEET-1", settings(), in_local_list=False)
    assert entry == TagEntry(status, LATER, "FLEET-1")


def test_no_answer_is_not_cached() -> None:
    assert cache_update(A.UNAVAILABLE, None, None, settings(), in_local_list=False) is None


def test_nothing_is_cached_when_the_cache_is_disabled() -> None:
    assert cache_update(A.ACCEPTED, None, None, settings(cache_on=False), False) is None


def test_a_card_in_the_local_list_is_not_cached() -> None:
    assert cache_update(A.ACCEPTED, None, None, settings(), in_local_list=True) is None
    # A disabled list does not speak for the card, so the cache may.
    entry = cache_update(A.ACCEPTED, None, None, settings(list_on=False), in_local_list=True)
    assert entry == TagEntry(A.ACCEPTED)


@pytest.mark.parametrize(
    ("list_entry", "answer", "s", "conflict"),
    [
        pytest.param(ACCEPTED, A.BLOCKED, settings(), True, id="list-valid-csms-blocked"),
        pytest.param(BLOCKED, A.ACCEPTED, settings(), True, id="list-blocked-csms-accepted"),
        pytest.param(ACCEPTED, A.CONCURRENT_TX, settings(), False, id="both-valid"),
        pytest.param(INVALID, A.BLOCKED, settings(), False, id="both-not-valid"),
        pytest.param(ACCEPTED_UNTIL_EARLIER, A.ACCEPTED, settings(), True, id="list-expired"),
        pytest.param(ACCEPTED, A.UNAVAILABLE, settings(), False, id="no-answer"),
        pytest.param(None, A.BLOCKED, settings(), False, id="not-in-list"),
        pytest.param(ACCEPTED, A.BLOCKED, settings(list_on=False), False, id="list-disabled"),
    ],
)
def test_list_conflict(
    list_entry: TagEntry | None, answer: AuthorizationStatus, s: AuthSettings, conflict: bool
) -> None:
    assert list_conflict(list_entry, answer, s, NOW) is conflict


# -- SendLocalList ------------------------------------------------------------------------

FULL, DIFF = UpdateType.FULL, UpdateType.DIFFERENTIAL
CURRENT = {ALICE: ACCEPTED, BOB: BLOCKED}


def send(
    update_type: UpdateType,
    version: int,
    entries: list[tuple[IdTag, TagEntry | None]],
    *,
    current_version: int = 3,
    current: dict[IdTag, TagEntry] | None = None,
    max_length: int = 10,
    send_max_length: int = 5,
    list_enabled: bool = True,
) -> LocalListChange:
    return apply_local_list(
        current_version,
        CURRENT if current is None else current,
        update_type,
        version,
        entries,
        max_length,
        send_max_length,
        list_enabled=list_enabled,
    )


def test_full_replaces_the_list_and_sets_the_version() -> None:
    change = send(FULL, 7, [(CAROL, ACCEPTED_UNTIL_LATER)])
    assert change.status is UpdateStatus.ACCEPTED
    assert (change.version, dict(change.entries)) == (7, {CAROL: ACCEPTED_UNTIL_LATER})


def test_full_may_lower_the_version() -> None:
    change = send(FULL, 1, [(CAROL, ACCEPTED)], current_version=9)
    assert (change.status, change.version) == (UpdateStatus.ACCEPTED, 1)


def test_full_without_entries_empties_the_list_to_version_0() -> None:
    # OCTT TC_042_2: Full, listVersion 1, no list -> Accepted, GetLocalListVersion says 0.
    change = send(FULL, 1, [])
    assert (change.status, change.version, dict(change.entries)) == (UpdateStatus.ACCEPTED, 0, {})


def test_full_entry_without_idtaginfo_fails() -> None:
    change = send(FULL, 7, [(CAROL, ACCEPTED), (ALICE, None)])
    assert change.status is UpdateStatus.FAILED
    assert (change.version, change.entries) == (3, CURRENT)


@pytest.mark.parametrize("version", [0, -1])
def test_full_with_a_version_that_has_a_special_meaning_fails(version: int) -> None:
    assert send(FULL, version, [(CAROL, ACCEPTED)]).status is UpdateStatus.FAILED


def test_differential_adds_updates_and_removes() -> None:
    change = send(DIFF, 4, [(CAROL, ACCEPTED), (BOB, ACCEPTED_UNTIL_LATER), (ALICE, None)])
    assert change.status is UpdateStatus.ACCEPTED
    assert (change.version, dict(change.entries)) == (
        4,
        {BOB: ACCEPTED_UNTIL_LATER, CAROL: ACCEPTED},
    )
    assert CURRENT == {ALICE: ACCEPTED, BOB: BLOCKED}, "the input is not modified"


def test_differential_removing_an_absent_tag_changes_nothing() -> None:
    change = send(DIFF, 4, [(CAROL, None)])
    assert (change.status, change.version, dict(change.entries)) == (
        UpdateStatus.ACCEPTED,
        4,
        CURRENT,
    )


def test_differential_without_entries_keeps_the_list_and_takes_the_version() -> None:
    change = send(DIFF, 4, [])
    assert (change.status, change.version, dict(change.entries)) == (
        UpdateStatus.ACCEPTED,
        4,
        CURRENT,
    )


def test_differential_that_removes_everything_leaves_version_0() -> None:
    change = send(DIFF, 4, [(ALICE, None), (BOB, None)])
    assert (change.status, change.version, dict(change.entries)) == (UpdateStatus.ACCEPTED, 0, {})


def test_differential_matches_idtags_without_regard_to_case() -> None:
    change = send(DIFF, 4, [(IdTag("04a1b2c3"), BLOCKED)])
    assert dict(change.entries) == {IdTag("04a1b2c3"): BLOCKED, BOB: BLOCKED}
    change = send(DIFF, 4, [(IdTag("04ffee11"), None)])
    assert dict(change.entries) == {ALICE: ACCEPTED}


@pytest.mark.parametrize("version", [3, 2, 0, -1])
def test_differential_not_above_the_current_version_is_a_mismatch(version: int) -> None:
    change = send(DIFF, version, [(CAROL, ACCEPTED)])
    assert change.status is UpdateStatus.VERSION_MISMATCH
    assert (change.version, change.entries) == (3, CURRENT)
    assert change.reason


def test_octt_version_mismatch_sequence() -> None:
    # TC_043_2_CS: Full 2, Differential 5, then a Differential not above 5.
    first = send(FULL, 2, [(ALICE, ACCEPTED)], current_version=0, current={})
    assert (first.status, first.version) == (UpdateStatus.ACCEPTED, 2)
    second = send(DIFF, 5, [(BOB, ACCEPTED)], current_version=2, current=dict(first.entries))
    assert (second.status, second.version) == (UpdateStatus.ACCEPTED, 5)
    third = send(DIFF, 5, [(CAROL, ACCEPTED)], current_version=5, current=dict(second.entries))
    assert third.status is UpdateStatus.VERSION_MISMATCH


@pytest.mark.parametrize("update_type", [FULL, DIFF])
def test_a_list_longer_than_local_auth_list_max_length_fails(update_type: UpdateType) -> None:
    entries: list[tuple[IdTag, TagEntry | None]] = [(IdTag(f"T{n}"), ACCEPTED) for n in range(2)]
    fits = send(update_type, 4, entries, max_length=4 if update_type is DIFF else 2)
    assert fits.status is UpdateStatus.ACCEPTED
    too_long = send(update_type, 4, entries, max_length=3 if update_type is DIFF else 1)
    assert too_long.status is UpdateStatus.FAILED
    assert (too_long.version, too_long.entries) == (3, CURRENT)


def test_a_differential_that_removes_may_fit_a_full_list() -> None:
    change = send(DIFF, 4, [(ALICE, None), (CAROL, ACCEPTED)], max_length=2)
    assert change.status is UpdateStatus.ACCEPTED


@pytest.mark.parametrize("update_type", [FULL, DIFF])
def test_more_entries_than_send_local_list_max_length_fails(update_type: UpdateType) -> None:
    entries: list[tuple[IdTag, TagEntry | None]] = [(IdTag(f"T{n}"), ACCEPTED) for n in range(3)]
    assert send(update_type, 4, entries, send_max_length=3).status is UpdateStatus.ACCEPTED
    change = send(update_type, 4, entries, send_max_length=2)
    assert change.status is UpdateStatus.FAILED
    assert "SendLocalListMaxLength" in change.reason


@pytest.mark.parametrize("update_type", [FULL, DIFF])
def test_duplicate_idtags_fail(update_type: UpdateType) -> None:
    change = send(update_type, 4, [(CAROL, ACCEPTED), (IdTag("04c0ffee"), BLOCKED)])
    assert change.status is UpdateStatus.FAILED


@pytest.mark.parametrize("update_type", [FULL, DIFF])
def test_a_disabled_list_is_not_supported(update_type: UpdateType) -> None:
    change = send(update_type, 4, [(CAROL, ACCEPTED)], list_enabled=False)
    assert (change.status, change.version, change.entries) == (
        UpdateStatus.NOT_SUPPORTED,
        3,
        CURRENT,
    )
