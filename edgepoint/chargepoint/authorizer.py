"""Authorize a presented card: local list, cache, the CSMS within a deadline, offline rules.

The rules are charging/authorization.py's decision table; this module only gathers what
they need (the stored entries, whether the link is up, the CSMS's answer) and keeps the
cache up to date with every idTagInfo the CSMS sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from edgepoint.chargepoint.settings import Settings
from edgepoint.charging.authorization import (
    AuthSettings,
    Source,
    TagEntry,
    before_asking,
    cache_update,
    known_tag,
    when_unanswered,
)
from edgepoint.charging.events import AuthorizationStatus, IdTag
from edgepoint.clock import Clock
from edgepoint.ocppj.validation import parse_datetime
from edgepoint.redact import mask_id_tag
from edgepoint.storage.auth_lists import AuthListStore

log = logging.getLogger(__name__)


class AskCsms(Protocol):
    """What the authorizer needs of the link."""

    @property
    def online(self) -> bool: ...

    async def authorize(self, id_tag: str, deadline_s: float) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one tap, and who gave it."""

    status: AuthorizationStatus
    source: Source
    parent_id_tag: IdTag | None = None  # the card's group, as the deciding entry says


def auth_settings(settings: Settings) -> AuthSettings:
    return AuthSettings(
        local_auth_list_enabled=settings.flag("LocalAuthListEnabled"),
        authorization_cache_enabled=settings.flag("AuthorizationCacheEnabled"),
        local_authorize_offline=settings.flag("LocalAuthorizeOffline"),
        local_pre_authorize=settings.flag("LocalPreAuthorize"),
        allow_offline_tx_for_unknown_id=settings.flag("AllowOfflineTxForUnknownId"),
    )


def tag_entry(info: dict[str, Any]) -> TagEntry:
    """A schema-valid idTagInfo as the pure rules' TagEntry."""
    expiry: datetime | None = None
    if isinstance(info.get("expiryDate"), str):
        expiry = parse_datetime(info["expiryDate"])
    return TagEntry(AuthorizationStatus(info["status"]), expiry, info.get("parentIdTag"))


class Authorizer:
    """Decides taps; never waits for the CSMS longer than `deadline_s`."""

    def __init__(
        self,
        lists: AuthListStore,
        csms: AskCsms,
        settings: Settings,
        clock: Clock,
        deadline_s: float,
    ) -> None:
        self.lists = lists
        self._csms = csms
        self._settings = settings
        self._clock = clock
        self._deadline = deadline_s

    async def authorize(self, id_tag: IdTag) -> Verdict:
        rules = auth_settings(self._settings)
        now = self._clock.utc_now()
        listed = await self.lists.list_entry(id_tag)
        known = known_tag(listed, await self.lists.cache_entry(id_tag), rules, now)
        decision = before_asking(known, rules, self._csms.online)
        parent = known.parent_id_tag if known is not None else None
        if decision.verdict is not None:
            return self._verdict(id_tag, decision.verdict, decision.source, parent)
        info = await self._csms.authorize(id_tag, self._deadline)
        if info is None:
            decision = when_unanswered(known, rules)
            assert decision.verdict is not None  # the offline rules always decide
            return self._verdict(id_tag, decision.verdict, decision.source, parent)
        entry = tag_entry(info)
        await self.remember(id_tag, entry, listed is not None)
        return self._verdict(id_tag, entry.status, Source.CSMS, entry.parent_id_tag)

    async def remember(
        self, id_tag: IdTag, entry: TagEntry, in_local_list: bool | None = None
    ) -> None:
        """Keep an idTagInfo from the CSMS in the cache, where the rules say so (§3.5.1)."""
        if in_local_list is None:
            in_local_list = await self.lists.list_entry(id_tag) is not None
        cached = cache_update(
            entry.status,
            entry.expiry,
            entry.parent_id_tag,
            auth_settings(self._settings),
            in_local_list,
        )
        if cached is not None:
            await self.lists.store_cache(id_tag, cached, self._clock.utc_now())

    def _verdict(
        self,
        id_tag: IdTag,
        status: AuthorizationStatus,
        source: Source,
        parent_id_tag: str | None = None,
    ) -> Verdict:
        log.info("card %s: %s (%s)", mask_id_tag(id_tag), status, source)
        return Verdict(status, source, None if parent_id_tag is None else IdTag(parent_id_tag))
