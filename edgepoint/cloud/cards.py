"""Fleet cards down: `/fleet/cards` and `/fleet/stations/<key>/cards` into both local lists.

Format (docs/cloud.md): each child is keyed by the id tag and holds either a status
string (`"04A1B2C3": "Blocked"`) or an object `{"status": "Accepted", "expiry":
"2027-01-31T23:59:59Z", "parent_id_tag": "...", "name": "Alice", "id_tag": "..."}`
(`id_tag` overrides the key, for tags RTDB keys cannot spell). Statuses are OCPP's:
Accepted, Blocked, Expired, Invalid, ConcurrentTx. A station's own entry overrides
the fleet-wide one for the same card, except that a fleet-wide Blocked stays Blocked.
An entry that breaks these rules is skipped and counted, never guessed at.

The cards then go into the charge point's local authorization list and into the
embedded CSMS's cards by the rule in cardmerge.py. The embedded CSMS has no Expired or
Invalid card status: Expired becomes Accepted with the given expiry (or one in 1970),
Invalid and ConcurrentTx become Blocked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgepoint.charging.events import AuthorizationStatus
from edgepoint.clock import Clock, iso_utc
from edgepoint.cloud.cardmerge import Applied, merge
from edgepoint.cloud.errors import CloudError
from edgepoint.cloud.health import Health
from edgepoint.cloud.rtdb import Rtdb
from edgepoint.csms.db import CardRepository
from edgepoint.csms.ids import CsmsError
from edgepoint.csms.records import Card, CardStatus
from edgepoint.logthrottle import ThrottledLog
from edgepoint.storage.fleet_cards import CardRow, FleetCardStore, ListRow

log = logging.getLogger(__name__)

MAX_ID_TAG = 20  # OCPP 1.6 IdToken: CiString20
LONG_AGO = "1970-01-01T00:00:00.000Z"
STATUSES = {s.value for s in AuthorizationStatus} - {AuthorizationStatus.UNAVAILABLE.value}


@dataclass(frozen=True, slots=True)
class FleetCard:
    """One card as the fleet wants it."""

    id_tag: str  # upper case
    status: str
    expiry: str | None  # iso_utc
    parent_id_tag: str | None
    name: str

    def list_row(self) -> ListRow:
        return ListRow(self.status, self.expiry, self.parent_id_tag)

    def card_row(self) -> CardRow:
        if self.status == "Accepted":
            return CardRow("Accepted", self.expiry, self.parent_id_tag, self.name)
        if self.status == "Expired":
            return CardRow("Accepted", self.expiry or LONG_AGO, self.parent_id_tag, self.name)
        return CardRow("Blocked", self.expiry, self.parent_id_tag, self.name)


def parse_fleet_cards(fleet: Any, station: Any) -> tuple[dict[str, FleetCard], list[str]]:
    """The cards both trees ask for (station over fleet, Blocked wins), and what was skipped."""
    problems: list[str] = []
    wide = _parse_tree(fleet, "fleet/cards", problems)
    mine = _parse_tree(station, "station cards", problems)
    cards = dict(wide)
    for key, card in mine.items():
        if key in wide and wide[key].status == "Blocked":
            continue
        cards[key] = card
    return cards, problems


def _parse_tree(tree: Any, where: str, problems: list[str]) -> dict[str, FleetCard]:
    if tree is None:
        return {}
    # RTDB returns a node whose keys all look like small integers as a list.
    items = (
        [(str(i), v) for i, v in enumerate(tree) if v is not None]
        if isinstance(tree, list)
        else list(tree.items())
        if isinstance(tree, dict)
        else None
    )
    if items is None:
        problems.append(f"{where}: not an object")
        return {}
    cards: dict[str, FleetCard] = {}
    for key, value in items:
        try:
            card = _parse_card(str(key), value)
        except ValueError as err:
            problems.append(f"{where}/{key}: {err}")
            continue
        cards[card.id_tag] = card
    return cards


def _parse_card(key: str, value: Any) -> FleetCard:
    if isinstance(value, str):
        value = {"status": value}
    if not isinstance(value, dict):
        raise ValueError("must be a status or an object")
    tag = value.get("id_tag", key)
    if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_ID_TAG or not _printable(tag):
        raise ValueError(f"id tag must be 1-{MAX_ID_TAG} printable ASCII characters")
    if tag != tag.strip():
        raise ValueError("id tag must not start or end with a space")
    status = value.get("status")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(STATUSES))}")
    parent = value.get("parent_id_tag")
    if parent is not None and (
        not isinstance(parent, str) or not 1 <= len(parent) <= MAX_ID_TAG or not _printable(parent)
    ):
        raise ValueError("parent_id_tag must be an id tag")
    if parent is not None and (parent != parent.strip() or parent.upper() == tag.upper()):
        raise ValueError("parent_id_tag must be another card's id tag, without spaces")
    name = value.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        raise ValueError("name must be text of at most 100 characters")
    return FleetCard(tag.upper(), status, _expiry(value.get("expiry")), parent, name)


def _printable(text: str) -> bool:
    return all(c.isascii() and c.isprintable() for c in text)


def _expiry(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expiry must be an ISO-8601 date-time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError("expiry must be an ISO-8601 date-time") from err
    if moment.tzinfo is None:
        raise ValueError("expiry must carry a UTC offset")
    return iso_utc(moment)


def _card_row(card: Card) -> CardRow:
    return CardRow(
        card.status.value,
        None if card.expires is None else iso_utc(card.expires),
        card.parent_id_tag,
        card.name,
    )


@dataclass(frozen=True, slots=True)
class CardSyncStats:
    """What `status` shows about the fleet card sync."""

    fleet_cards: int
    skipped: list[str]
    local_list_changes: int
    csms_changes: int
    polls: int


class FleetCardSync:
    """The supervised service that polls the fleet's cards and merges them in."""

    def __init__(
        self,
        rtdb: Rtdb,
        station_key: str,
        store: FleetCardStore,
        csms_cards: Callable[[], CardRepository | None],
        interval_s: float,
        clock: Clock,
        health: Health,
    ) -> None:
        self._rtdb = rtdb
        self._station_path = f"fleet/stations/{station_key}/cards"
        self._store = store
        self._csms_cards = csms_cards
        self._interval = interval_s
        self._clock = clock
        self.health = health
        self._throttled = ThrottledLog(log)
        self._fleet_cards = 0
        self._skipped: list[str] = []
        self._local_changes = 0
        self._csms_changes = 0
        self._polls = 0

    def stats(self) -> CardSyncStats:
        return CardSyncStats(
            self._fleet_cards,
            self._skipped[:10],
            self._local_changes,
            self._csms_changes,
            self._polls,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
                delay = self._interval
            except CloudError as err:
                delay = self.health.failed(err)
                self._throttled.log(logging.WARNING, "cards", "fleet cards not synced: %s", err)
            await asyncio.sleep(delay)

    async def sync_once(self) -> None:
        """One poll: read both trees, merge into the local list and the CSMS's cards."""
        fleet = await self._rtdb.get("fleet/cards")
        station = await self._rtdb.get(self._station_path)
        cards, skipped = parse_fleet_cards(fleet, station)
        for problem in skipped:
            self._throttled.log(logging.WARNING, "card", "fleet card skipped: %s", problem)
        plan = await self._store.merge_local_list(
            {tag: card.list_row() for tag, card in cards.items()},
            lambda row: row.status == "Blocked",
        )
        self._local_changes += plan.changes
        repo = self._csms_cards()
        if repo is not None:
            self._csms_changes += await self._sync_csms(repo, cards)
        self._fleet_cards, self._skipped = len(cards), skipped
        self._polls += 1
        self.health.ok()

    async def _sync_csms(self, repo: CardRepository, cards: Mapping[str, FleetCard]) -> int:
        """Merge into csms.db: intent noted, cards written, record saved (crash-safe)."""
        current = {card.id_tag.upper(): _card_row(card) for card in await repo.list()}
        applied: dict[str, Applied[CardRow]] = {}
        for tag, shadow in (await self._store.csms_shadow()).items():
            written = shadow.written
            if shadow.has_intended and current.get(tag) == shadow.intended:
                written = shadow.intended  # the write landed before we could record it
            if written is not None:
                applied[tag] = Applied(written, shadow.displaced)
        plan = merge(
            {tag: card.card_row() for tag, card in cards.items()},
            current,
            applied,
            lambda row: row.status == "Blocked",
        )
        if plan.changes:
            await self._store.note_csms_intent(
                {**dict.fromkeys(plan.delete), **plan.put}  # None: removed
            )
            for tag in sorted(plan.delete):
                await repo.remove(tag)
            for tag, row in plan.put.items():
                try:
                    await repo.put(
                        tag,
                        status=CardStatus(row.status),
                        name=row.name,
                        expires=None if row.expires is None else _parse_time(row.expires),
                        parent_id_tag=row.parent_id_tag,
                    )
                except CsmsError as err:
                    # Left as it was; the recorded intent does not match, so not ours.
                    self._throttled.log(logging.WARNING, "csms card", "card not stored: %s", err)
        if plan.changes or plan.applied != applied:
            await self._store.save_csms_applied(plan.applied)
        return plan.changes


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)
