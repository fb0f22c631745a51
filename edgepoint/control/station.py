"""The adapter between the control API and the running charge point: its commands and events."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from edgepoint.charging.authorization import TagEntry
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.clock import iso_utc
from edgepoint.control.api import Code, ControlApi
from edgepoint.control.logfeed import LogFeed
from edgepoint.csms.db import CardRepository
from edgepoint.csms.ids import parse_id_tag
from edgepoint.csms.records import Card, CardExistsError
from edgepoint.errors import ControlError
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag
from edgepoint.storage.chargepoint import SessionRow


class StationApi(Protocol):
    """What the charge point (app.Station) offers the control socket."""

    async def status(self) -> dict[str, Any]: ...

    async def tap(self, uid: str) -> None: ...

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]: ...


def register_station(api: ControlApi, station: StationApi) -> None:
    """`status`, `tap` and the `status` event."""
    api.add_command("status", station.status, summary="connectors, sessions, links, outbox, alarms")
    api.add_command(
        "tap",
        station.tap,
        summary="present a card to the emulated PN532 (simulated hardware only)",
        required={"uid": str},
        hardware=True,
        private=("uid",),
    )
    api.add_state_event("status", station.status, station.watch)


# -- what the technician's TUI reads and manages ----------------------------------------

MAX_SESSIONS = 500


class SessionSource(Protocol):
    """The charge point's session history (storage.chargepoint.ChargePointStore)."""

    async def recent_sessions(self, limit: int = 20) -> list[SessionRow]: ...


class LocalListSource(Protocol):
    """The charge point's local authorization list (storage.auth_lists.AuthListStore)."""

    async def local_list_version(self) -> int: ...

    async def local_list(self) -> Mapping[IdTag, TagEntry]: ...

    async def change_list_entry(self, tag: IdTag, entry: TagEntry | None) -> bool: ...


def register_technician(
    api: ControlApi,
    *,
    sessions: SessionSource,
    local_list: LocalListSource,
    cards: CardRepository | None,
    log_feed: LogFeed | None = None,
) -> None:
    """`sessions.list`, `local_list.show`, `cards.*`, `log.recent` and the `log` stream.

    Card ids leave the daemon masked (****B2C3), as in `status` and the log. `cards.block`,
    `unblock` and `remove` take a full id tag or the masked form `cards.list` shows, when it
    names exactly one card. `cards` is the embedded CSMS's card table (None when it is off).
    """
    registry = _Technician(sessions, local_list, cards, log_feed)
    api.add_command(
        "sessions.list",
        registry.list_sessions,
        summary="this charge point's sessions, newest first (live ones included)",
        optional={"limit": int},
    )
    api.add_command(
        "local_list.show",
        registry.show_local_list,
        summary="the charge point's local authorization list (the CSMS sends it)",
    )
    api.add_command(
        "local_list.put",
        registry.put_list_entry,
        summary="add or change a card in the local list on site (until the CSMS sends it anew)",
        required={"id_tag": str},
        optional={"status": str, "expiry": (str, type(None)), "parent_id_tag": (str, type(None))},
        mutates=True,
        private=("id_tag", "parent_id_tag"),
    )
    api.add_command(
        "local_list.remove",
        registry.remove_list_entry,
        summary="take a card out of the local list on site",
        required={"id_tag": str},
        mutates=True,
        private=("id_tag",),
    )
    api.add_command("cards.list", registry.list_cards, summary="the embedded CSMS's cards")
    api.add_command(
        "cards.add",
        registry.add_card,
        summary="register a card with the embedded CSMS (Accepted)",
        required={"id_tag": str},
        optional={
            "name": str,
            "expires": (str, type(None)),
            "parent_id_tag": (str, type(None)),
            "max_concurrent_tx": int,
        },
        mutates=True,
        private=("id_tag", "parent_id_tag"),
    )
    for verb, summary in (
        ("block", "block a card (the CSMS answers Blocked)"),
        ("unblock", "accept a blocked card again"),
        ("remove", "forget a card (it becomes Invalid)"),
    ):
        api.add_command(
            f"cards.{verb}",
            functools.partial(registry.change_card, verb),
            summary=summary,
            required={"id_tag": str},
            mutates=True,
            private=("id_tag",),
        )
    if log_feed is not None:
        api.add_command(
            "log.recent",
            registry.recent_log,
            summary="the daemon's newest log records (card ids masked)",
            optional={"level": str, "limit": int},
        )
        api.add_stream_event("log", log_feed.subscribe, backlog=500)


class _Technician:
    def __init__(
        self,
        sessions: SessionSource,
        local_list: LocalListSource,
        cards: CardRepository | None,
        log_feed: LogFeed | None,
    ) -> None:
        self._sessions = sessions
        self._local_list = local_list
        self._cards = cards
        self._log_feed = log_feed

    async def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_SESSIONS:
            raise ControlError(f"limit must be 1-{MAX_SESSIONS}", Code.BAD_REQUEST)
        return [_session(row) for row in await self._sessions.recent_sessions(limit)]

    async def show_local_list(self) -> dict[str, Any]:
        entries = await self._local_list.local_list()
        return {
            "version": await self._local_list.local_list_version(),
            "entries": [
                {"id_tag": mask_id_tag(tag), **_list_entry(entry)} for tag, entry in entries.items()
            ],
        }

    async def put_list_entry(self, id_tag: str, **given: Any) -> dict[str, Any]:
        """Set the fields given (status, expiry, parent_id_tag) of a card's entry; the
        others stay as they were (a new card: Accepted, no expiry, no parent)."""
        entries = await self._local_list.local_list()
        tag = _resolve_listed(entries, id_tag, new_allowed=True)
        old = entries.get(tag, TagEntry(AuthorizationStatus.ACCEPTED))
        try:
            status = AuthorizationStatus(given.get("status", old.status))
        except ValueError as err:
            names = ", ".join(s.value for s in AuthorizationStatus)
            raise ControlError(f"status must be one of {names}", Code.BAD_REQUEST) from err
        expiry = old.expiry
        if "expiry" in given:
            try:
                expiry = None if given["expiry"] is None else parse_datetime(given["expiry"])
            except ValueError as err:
                raise ControlError(
                    f"expiry: {err} (e.g. 2027-01-31T23:59:59Z)", Code.BAD_REQUEST
                ) from err
        parent = (given["parent_id_tag"] or None) if "parent_id_tag" in given else old.parent_id_tag
        entry = TagEntry(status, expiry, parent)
        await self._local_list.change_list_entry(tag, entry)
        return {"id_tag": mask_id_tag(tag), **_list_entry(entry), "new": tag not in entries}

    async def remove_list_entry(self, id_tag: str) -> dict[str, Any]:
        entries = await self._local_list.local_list()
        tag = _resolve_listed(entries, id_tag, new_allowed=False)
        if not await self._local_list.change_list_entry(tag, None):
            raise ControlError(f"no card {mask_id_tag(id_tag)} in the local list", Code.NOT_FOUND)
        return {"id_tag": mask_id_tag(tag), "done": "remove"}

    def _repository(self) -> CardRepository:
        if self._cards is None:
            raise ControlError(
                "the embedded CSMS is off (csms.enabled = false): no cards here", Code.UNAVAILABLE
            )
        return self._cards

    async def list_cards(self) -> list[dict[str, Any]]:
        return [_card(card) for card in await self._repository().list()]

    async def add_card(
        self,
        id_tag: str,
        name: str = "",
        expires: str | None = None,
        parent_id_tag: str | None = None,
        max_concurrent_tx: int = 1,
    ) -> dict[str, Any]:
        moment = None
        if expires is not None:
            try:
                moment = parse_datetime(expires)
            except ValueError as err:
                raise ControlError(
                    f"expires: {err} (e.g. 2027-01-31T23:59:59Z)", Code.BAD_REQUEST
                ) from err
        try:
            card = await self._repository().add(
                id_tag,
                name,
                moment,
                parent_id_tag=parent_id_tag or None,
                max_concurrent_tx=max_concurrent_tx,
            )
        except ValueError as err:  # a malformed id tag or limit (InvalidIdentifierError)
            raise ControlError(str(err), Code.BAD_REQUEST) from err
        except CardExistsError as err:  # its message has the id in full: not for the log
            raise ControlError(
                f"card {mask_id_tag(id_tag)} is already registered", Code.BAD_REQUEST
            ) from err
        return _card(card)

    async def change_card(self, verb: str, id_tag: str) -> dict[str, Any]:
        cards = self._repository()
        tag = await self._resolve(cards, id_tag)
        changed = await getattr(cards, verb)(tag)
        if not changed:
            raise ControlError(f"no card {mask_id_tag(id_tag)}", Code.NOT_FOUND)
        return {"id_tag": mask_id_tag(tag), "done": verb}

    async def _resolve(self, cards: CardRepository, id_tag: str) -> str:
        """The full id tag: as given, or the one card whose masked form this is."""
        if not id_tag.startswith("****"):
            return id_tag
        wanted = id_tag.casefold()
        matches = [
            c.id_tag for c in await cards.list() if mask_id_tag(c.id_tag).casefold() == wanted
        ]
        if not matches:
            raise ControlError(f"no card {id_tag}", Code.NOT_FOUND)
        if len(matches) > 1:
            raise ControlError(
                f"{id_tag} names {len(matches)} cards: give the full id tag", Code.BAD_REQUEST
            )
        return matches[0]

    async def recent_log(self, level: str = "DEBUG", limit: int = 500) -> list[dict[str, Any]]:
        assert self._log_feed is not None
        try:
            return self._log_feed.recent(level, limit)
        except ValueError as err:
            raise ControlError(str(err), Code.BAD_REQUEST) from err


def _resolve_listed(entries: Mapping[IdTag, TagEntry], id_tag: str, *, new_allowed: bool) -> IdTag:
    """The full id tag of a local list entry: as given, or the one entry whose masked form
    this is; a full id not in the list is a new card when `new_allowed`."""
    if id_tag.startswith("****"):
        wanted = id_tag.casefold()
        matches = [t for t in entries if mask_id_tag(t).casefold() == wanted]
        if len(matches) > 1:
            raise ControlError(
                f"{id_tag} names {len(matches)} cards: give the full id tag", Code.BAD_REQUEST
            )
        if matches:
            return matches[0]
        raise ControlError(f"no card {id_tag} in the local list", Code.NOT_FOUND)
    try:
        tag = parse_id_tag(id_tag)
    except ValueError as err:
        raise ControlError(str(err), Code.BAD_REQUEST) from err
    for listed in entries:  # idTags compare case-insensitively (CiString20)
        if listed.casefold() == tag.casefold():
            return listed
    if not new_allowed:
        raise ControlError(f"no card {mask_id_tag(tag)} in the local list", Code.NOT_FOUND)
    return tag


def _list_entry(entry: TagEntry) -> dict[str, Any]:
    return {
        "status": str(entry.status),
        "expiry": _time(entry.expiry),
        "parent_id_tag": _masked(entry.parent_id_tag),
    }


def _masked(tag: str | None) -> str | None:
    return None if tag is None else mask_id_tag(tag)


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def _session(row: SessionRow) -> dict[str, Any]:
    end = row.meter_stop_wh if row.meter_stop_wh is not None else row.last_reading_wh
    return {
        "session_id": row.session_id,
        "connector_id": row.connector_id,
        "id_tag": mask_id_tag(row.id_tag),
        "transaction_id": row.transaction_id,
        "state": row.state,
        "started_at": row.started_at,
        "stopped_at": row.stopped_at,
        "stop_reason": row.stop_reason,
        "meter_start_wh": row.meter_start_wh,
        "meter_stop_wh": row.meter_stop_wh,
        # Live sessions: up to the last reading queued in MeterValues (`status` is fresher).
        "energy_wh": None if end is None else end - row.meter_start_wh,
    }


def _card(card: Card) -> dict[str, Any]:
    return {
        "id_tag": mask_id_tag(card.id_tag),
        "name": card.name,
        "status": str(card.status),
        "expires": _time(card.expires),
        "parent_id_tag": _masked(card.parent_id_tag),
        "created_at": _time(card.created_at),
        "max_concurrent_tx": card.max_concurrent_tx,
    }
