"""Local authorization rules of OCPP 1.6 §3.5: local list, cache, unknown ids, SendLocalList."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from edgepoint.charging.events import AuthorizationStatus, IdTag

# §3.5.2: list entries are "valid, expired, (temporarily) blocked, or blacklisted,
# corresponding to IdTagInfo status values Accepted/ConcurrentTx, Expired, Blocked, and
# Invalid". ConcurrentTx describes a transaction, not the card, so a stored one is valid.
VALID_STATUSES = frozenset({AuthorizationStatus.ACCEPTED, AuthorizationStatus.CONCURRENT_TX})


class Source(StrEnum):
    """Where a verdict came from."""

    LOCAL_LIST = "LocalList"
    CACHE = "Cache"
    CSMS = "Csms"
    OFFLINE_UNKNOWN = "OfflineUnknown"  # §3.5.4: accepted as an unknown id while offline
    NONE = "None"  # nobody could vouch for the card


class Link(StrEnum):
    """Whether the CSMS can be asked; an Authorize that timed out counts as offline."""

    ONLINE = "online"
    OFFLINE = "offline"


class Knowledge(StrEnum):
    """What the local list and the cache together say about a card."""

    UNKNOWN = "unknown"
    VALID = "valid"
    NOT_VALID = "not valid"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The OCPP configuration keys that steer local authorization (§9.1, §9.2)."""

    local_auth_list_enabled: bool
    authorization_cache_enabled: bool
    local_authorize_offline: bool
    local_pre_authorize: bool
    allow_offline_tx_for_unknown_id: bool


@dataclass(frozen=True, slots=True)
class TagEntry:
    """One idTagInfo as kept in the local list or the cache."""

    status: AuthorizationStatus
    expiry: datetime | None = None
    parent_id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class KnownTag:
    """The entry that speaks for a card, with its status as of now (expiry applied)."""

    source: Source
    status: AuthorizationStatus
    parent_id_tag: str | None = None

    @property
    def knowledge(self) -> Knowledge:
        return Knowledge.VALID if self.status in VALID_STATUSES else Knowledge.NOT_VALID


def status_at(entry: TagEntry, now: datetime) -> AuthorizationStatus:
    """The entry's status at `now`: a valid entry past its expiryDate is Expired (§3.5.1)."""
    if entry.status in VALID_STATUSES and entry.expiry is not None and entry.expiry <= now:
        return AuthorizationStatus.EXPIRED
    return entry.status


def known_tag(
    list_entry: TagEntry | None,
    cache_entry: TagEntry | None,
    settings: AuthSettings,
    now: datetime,
) -> KnownTag | None:
    """What the enabled stores know about a card; the list has priority over the cache (§3.5.3).

    None when neither enabled store has an entry: the card is unknown.
    """
    if settings.local_auth_list_enabled and list_entry is not None:
        return KnownTag(Source.LOCAL_LIST, status_at(list_entry, now), list_entry.parent_id_tag)
    if settings.authorization_cache_enabled and cache_entry is not None:
        return KnownTag(Source.CACHE, status_at(cache_entry, now), cache_entry.parent_id_tag)
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a presented card: a verdict now, or ask the CSMS (verdict None)."""

    verdict: AuthorizationStatus | None
    source: Source

    @property
    def ask_csms(self) -> bool:
        return self.verdict is None


class Outcome(StrEnum):
    """The kinds of decision the table can make."""

    ASK_CSMS = "ask CSMS"
    ACCEPT_KNOWN = "accept, vouched for by list/cache"
    REJECT_KNOWN = "reject with the stored status"
    ACCEPT_UNKNOWN = "accept as unknown offline"
    REFUSE = "refuse: no answer"


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the decision table; None in a flag column matches either value."""

    link: Link
    knowledge: Knowledge
    local_pre_authorize: bool | None
    local_authorize_offline: bool | None
    allow_offline_tx_for_unknown_id: bool | None
    outcome: Outcome

    def matches(self, link: Link, knowledge: Knowledge, settings: AuthSettings) -> bool:
        return (
            self.link is link
            and self.knowledge is knowledge
            and _flag_matches(self.local_pre_authorize, settings.local_pre_authorize)
            and _flag_matches(self.local_authorize_offline, settings.local_authorize_offline)
            and _flag_matches(
                self.allow_offline_tx_for_unknown_id, settings.allow_offline_tx_for_unknown_id
            )
        )


def _flag_matches(wanted: bool | None, actual: bool) -> bool:
    return wanted is None or wanted == actual


_ON, _OFF = Link.ONLINE, Link.OFFLINE
_VALID, _NOT_VALID, _UNKNOWN = Knowledge.VALID, Knowledge.NOT_VALID, Knowledge.UNKNOWN

# The whole behaviour at a glance; docs/authorization.md shows the same rows and a test
# keeps the two equal. Rows never overlap and cover every combination (also tested).
#   link, knowledge,  LocalPreAuthorize, LocalAuthorizeOffline, AllowOfflineTxForUnknownId
RULES: tuple[Rule, ...] = (
    # Online the CSMS is the authority; LocalPreAuthorize only skips the wait for a card
    # the stores vouch for. A NOT-valid entry may be stale: ask (§3.5.1).
    Rule(_ON, _VALID, True, None, None, Outcome.ACCEPT_KNOWN),
    Rule(_ON, _VALID, False, None, None, Outcome.ASK_CSMS),
    Rule(_ON, _NOT_VALID, None, None, None, Outcome.ASK_CSMS),
    Rule(_ON, _UNKNOWN, None, None, None, Outcome.ASK_CSMS),
    # Offline (or no answer in time).
    Rule(_OFF, _VALID, None, True, None, Outcome.ACCEPT_KNOWN),
    # Local authorization is off, but a stranger would be let in: so is a known-good card.
    Rule(_OFF, _VALID, None, False, True, Outcome.ACCEPT_UNKNOWN),
    Rule(_OFF, _VALID, None, False, False, Outcome.REFUSE),
    # §3.5.4: non-Accepted list entries and entries expired by time MUST be rejected.
    Rule(_OFF, _NOT_VALID, None, None, None, Outcome.REJECT_KNOWN),
    Rule(_OFF, _UNKNOWN, None, None, True, Outcome.ACCEPT_UNKNOWN),
    Rule(_OFF, _UNKNOWN, None, None, False, Outcome.REFUSE),
)


def rule_for(link: Link, known: KnownTag | None, settings: AuthSettings) -> Rule:
    """The one row of RULES that applies."""
    knowledge = Knowledge.UNKNOWN if known is None else known.knowledge
    for rule in RULES:
        if rule.matches(link, knowledge, settings):
            return rule
    raise AssertionError(f"RULES has no row for {link}, {knowledge}, {settings}")


def decide(link: Link, known: KnownTag | None, settings: AuthSettings) -> Decision:
    """Apply the decision table."""
    outcome = rule_for(link, known, settings).outcome
    if outcome is Outcome.ASK_CSMS:
        return Decision(None, Source.CSMS)
    if outcome is Outcome.ACCEPT_UNKNOWN:
        return Decision(AuthorizationStatus.ACCEPTED, Source.OFFLINE_UNKNOWN)
    if outcome is Outcome.REFUSE:
        return Decision(AuthorizationStatus.UNAVAILABLE, Source.NONE)
    assert known is not None  # ACCEPT_KNOWN and REJECT_KNOWN only match known cards
    verdict = AuthorizationStatus.ACCEPTED if outcome is Outcome.ACCEPT_KNOWN else known.status
    return Decision(verdict, known.source)


def before_asking(known: KnownTag | None, settings: AuthSettings, online: bool) -> Decision:
    """Decide on a presented card before any Authorize.req; offline this is final."""
    return decide(Link.ONLINE if online else Link.OFFLINE, known, settings)


def when_unanswered(known: KnownTag | None, settings: AuthSettings) -> Decision:
    """Decide once the CSMS did not answer in time: the offline rules apply."""
    return decide(Link.OFFLINE, known, settings)


def cache_update(
    status: AuthorizationStatus,
    expiry: datetime | None,
    parent_id_tag: str | None,
    settings: AuthSettings,
    in_local_list: bool,
) -> TagEntry | None:
    """The cache entry to store for an idTagInfo received from the CSMS, or None to store none.

    §3.5.1: every idTagInfo (Authorize.conf, StartTransaction.conf, StopTransaction.conf),
    valid or not, updates the cache. §3.5.3: a card in the (enabled) local list is never
    cached. Unavailable is no idTagInfo, so it is never stored.
    """
    if not settings.authorization_cache_enabled or status is AuthorizationStatus.UNAVAILABLE:
        return None
    if in_local_list and settings.local_auth_list_enabled:
        return None
    return TagEntry(status, expiry, parent_id_tag)


def list_conflict(
    list_entry: TagEntry | None,
    answer: AuthorizationStatus,
    settings: AuthSettings,
    now: datetime,
) -> bool:
    """Whether a CSMS answer contradicts the local list (§3.5.2: report LocalListConflict)."""
    if not settings.local_auth_list_enabled or list_entry is None:
        return False
    if answer is AuthorizationStatus.UNAVAILABLE:
        return False
    return (status_at(list_entry, now) in VALID_STATUSES) != (answer in VALID_STATUSES)


# -- SendLocalList (§5.15, §6.41, §7.1) ----------------------------------------------------


class UpdateType(StrEnum):
    """SendLocalList.req updateType."""

    FULL = "Full"
    DIFFERENTIAL = "Differential"


class UpdateStatus(StrEnum):
    """SendLocalList.conf status."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    NOT_SUPPORTED = "NotSupported"
    VERSION_MISMATCH = "VersionMismatch"


# GetLocalListVersion.conf: "A version number of 0 (zero) SHALL be used to indicate that
# the local authorization list is empty".
EMPTY_LIST_VERSION = 0


@dataclass(frozen=True, slots=True)
class LocalListChange:
    """The answer to a SendLocalList.req and the list to keep (unchanged unless Accepted)."""

    status: UpdateStatus
    version: int
    entries: Mapping[IdTag, TagEntry]
    reason: str = ""  # why it was not accepted, for the log


def apply_local_list(
    current_version: int,
    current_entries: Mapping[IdTag, TagEntry],
    update_type: UpdateType,
    version: int,
    entries: Sequence[tuple[IdTag, TagEntry | None]],
    max_length: int,
    send_max_length: int,
    list_enabled: bool = True,
) -> LocalListChange:
    """Apply one SendLocalList.req to the current list.

    Full replaces the list (every entry needs its idTagInfo); Differential adds or updates
    entries with an idTagInfo and removes those without, and its listVersion must be
    greater than the current one. An empty resulting list has version 0. idTags are
    CiString20: compared without regard to case.
    """

    def refuse(status: UpdateStatus, reason: str) -> LocalListChange:
        return LocalListChange(status, current_version, current_entries, reason)

    if not list_enabled:
        return refuse(UpdateStatus.NOT_SUPPORTED, "LocalAuthListEnabled is false")
    if len(entries) > send_max_length:
        return refuse(
            UpdateStatus.FAILED,
            f"{len(entries)} entries in one message, SendLocalListMaxLength is {send_max_length}",
        )
    if len({tag.casefold() for tag, _ in entries}) != len(entries):
        return refuse(UpdateStatus.FAILED, "duplicate idTag in localAuthorizationList")
    if update_type is UpdateType.FULL:
        if any(info is None for _, info in entries):
            return refuse(UpdateStatus.FAILED, "a Full update entry without idTagInfo")
        if version <= EMPTY_LIST_VERSION:
            # 0 and -1 mean "empty" and "not supported" in GetLocalListVersion.conf.
            return refuse(UpdateStatus.FAILED, f"listVersion {version} is not positive")
        merged: dict[IdTag, TagEntry] = {tag: info for tag, info in entries if info is not None}
    else:
        if version <= current_version:
            return refuse(
                UpdateStatus.VERSION_MISMATCH,
                f"differential listVersion {version} is not above the current {current_version}",
            )
        spelling = {tag.casefold(): tag for tag in current_entries}
        merged = dict(current_entries)
        for tag, info in entries:
            old = spelling.pop(tag.casefold(), None)
            if old is not None:
                del merged[old]
            if info is not None:
                merged[tag] = info
    if len(merged) > max_length:
        return refuse(
            UpdateStatus.FAILED,
            f"the list would hold {len(merged)} entries, LocalAuthListMaxLength is {max_length}",
        )
    new_version = version if merged else EMPTY_LIST_VERSION
    return LocalListChange(UpdateStatus.ACCEPTED, new_version, merged)
