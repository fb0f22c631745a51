"""The fleet card merge rule, case by case (cloud/cardmerge.py)."""

from __future__ import annotations

from typing import Any

from edgepoint.cloud.cardmerge import Applied, merge

A, B, X = "Accepted", "Blocked", "Expired"


def blocked(value: str) -> bool:
    return value == B


def run(fleet: dict[str, str], local: dict[str, str], applied: dict[str, Applied[str]]) -> Any:
    return merge(fleet, local, applied, blocked)


def test_a_new_fleet_card_is_added_and_becomes_ours() -> None:
    plan = run({"C1": A}, {}, {})
    assert plan.put == {"C1": A} and plan.applied == {"C1": Applied(A)}


def test_our_entry_follows_the_fleet() -> None:
    plan = run({"C1": B}, {"C1": A}, {"C1": Applied(A)})
    assert plan.put == {"C1": B} and plan.applied == {"C1": Applied(B)}


def test_what_the_fleet_removed_is_removed_if_it_is_still_ours() -> None:
    plan = run({}, {"C1": A}, {"C1": Applied(A)})
    assert plan.delete == {"C1"} and plan.applied == {}


def test_a_local_entry_that_is_not_ours_wins() -> None:
    # The CSMS's SendLocalList put C1 there as Expired; the fleet says Accepted.
    plan = run({"C1": A}, {"C1": X}, {})
    assert plan.changes == 0 and plan.applied == {}


def test_a_local_change_to_our_entry_is_adopted_by_the_local_side() -> None:
    plan = run({"C1": A}, {"C1": X}, {"C1": Applied(A)})
    assert plan.changes == 0 and plan.applied == {}
    # ...and the fleet dropping the card then does not remove the local entry.
    assert run({}, {"C1": X}, plan.applied).changes == 0


def test_blocked_wins_over_a_local_accept_and_the_local_entry_comes_back() -> None:
    plan = run({"C1": B}, {"C1": A}, {})
    assert plan.put == {"C1": B} and plan.applied == {"C1": Applied(B, A)}
    # Still blocked: nothing to do, the displaced entry is kept.
    same = run({"C1": B}, {"C1": B}, plan.applied)
    assert same.changes == 0 and same.applied == {"C1": Applied(B, A)}
    # Unblocked by the fleet: the local entry is restored and the fleet lets go.
    back = run({"C1": A}, {"C1": B}, plan.applied)
    assert back.put == {"C1": A} and back.applied == {}
    # Dropped by the fleet: the same.
    gone = run({}, {"C1": B}, plan.applied)
    assert gone.put == {"C1": A} and gone.delete == set() and gone.applied == {}


def test_a_local_block_is_never_lifted_by_the_fleet() -> None:
    assert run({"C1": A}, {"C1": B}, {}).changes == 0


def test_an_entry_the_csms_removed_is_added_again() -> None:
    # A full SendLocalList dropped our card; the fleet still lists it.
    plan = run({"C1": A}, {}, {"C1": Applied(A)})
    assert plan.put == {"C1": A} and plan.applied == {"C1": Applied(A)}


def test_cards_nobody_mentions_are_untouched() -> None:
    plan = run({"C1": A}, {"L1": A, "L2": B}, {})
    assert plan.put == {"C1": A} and plan.delete == set()
