"""The rule that merges fleet cards into a list that someone else also writes (pure).

Two lists take fleet cards: the charge point's local authorization list, which the CSMS
owns through SendLocalList, and the embedded CSMS's cards, which the technician edits
with `edgepoint cards`. For each card (id tags compare case-insensitively), with *fleet*
the entry the fleet wants, *local* the entry in the list now, and *ours* meaning the
local entry is exactly what the fleet sync last wrote there:

1. The fleet lists a card the local list lacks: it is added.
2. The local entry is ours: it follows the fleet (changed, or removed when the fleet
   drops the card).
3. The local entry is not ours (the CSMS or a technician put it there, or changed ours):
   the local entry wins and the fleet leaves it alone, with one exception:
4. **Blocked wins.** A card the fleet blocks is blocked even over a local entry that
   accepts it (a stolen card must stop working everywhere at once). The local entry is
   remembered, and put back when the fleet unblocks or drops the card.

So a SendLocalList never loses to the fleet except for a block, the fleet never loses a
block, and what the cloud removed is removed locally unless someone local adopted it.
The local list's version number is the CSMS's and is never changed by the fleet sync.
An entry the CSMS writes with exactly the value the fleet wrote cannot be told apart
from ours; it then follows the fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Applied(Generic[V]):
    """What the fleet sync wrote for one card, and the local entry that a block displaced."""

    written: V
    displaced: V | None = None


@dataclass(frozen=True, slots=True)
class Plan(Generic[V]):
    """Writes that bring the local list in line, and the new record of what is ours."""

    put: dict[str, V] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    applied: dict[str, Applied[V]] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return len(self.put) + len(self.delete)


def merge(
    fleet: Mapping[str, V],
    local: Mapping[str, V],
    applied: Mapping[str, Applied[V]],
    blocked: Callable[[V], bool],
) -> Plan[V]:
    """The plan for one sync; all keys are upper-case id tags."""
    plan: Plan[V] = Plan()

    def put(key: str, value: V) -> None:
        if local.get(key) != value:
            plan.put[key] = value

    for key in sorted(set(fleet) | set(applied)):
        want = fleet.get(key)
        have = local.get(key)
        mine = applied.get(key)
        ours = mine is not None and have is not None and have == mine.written
        if want is not None and have is None:
            put(key, want)
            plan.applied[key] = Applied(want)
        elif ours:
            assert mine is not None
            if mine.displaced is not None and (want is None or not blocked(want)):
                put(key, mine.displaced)  # the block is over: the local entry is back
            elif want is None:
                plan.delete.add(key)
            else:
                put(key, want)
                plan.applied[key] = Applied(want, mine.displaced)
        elif want is not None and have is not None and blocked(want) and not blocked(have):
            put(key, want)
            plan.applied[key] = Applied(want, have)
        # Otherwise a local entry that is not ours wins, and we stop claiming it.
    return plan
