"""OCPP keys the CSMS changed, kept in edgepoint.db until the operator edits them in config.toml.

Three sources set a key, later ones winning: the registry's default, config.toml's
[ocpp] table, and a ChangeConfiguration the CSMS sent. The CSMS's value must survive a
restart (it is the CSMS's view of this charge point), yet an operator who edits
config.toml must not find the edit silently ignored. So with each CSMS change we store
the value config.toml had for that key at that moment (NULL when the file did not set
it), and at each start:

  * config.toml's value is still the stored one  -> the CSMS's value wins;
  * config.toml's value differs (set, changed or removed since) -> the operator edited
    the key after the CSMS did: the file wins and the stored change is dropped.

"config.toml's value" is the one this process loaded at its start: an edit made while the
daemon runs counts from the next start. Values are compared in canonical OCPP form, so
respelling a value (`["A", "B"]` or `"A, B"` for `"A,B"`) changes nothing. A stored
change that is no longer a writable key or no longer valid (after an upgrade) is
dropped too. Every drop is logged with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from edgepoint.chargepoint.settings import (
    REGISTRY,
    ChangeOutcome,
    InvalidValue,
    KeyDef,
    Settings,
    parse_value,
)
from edgepoint.clock import iso_utc
from edgepoint.storage.sqlite import Database

log = logging.getLogger(__name__)

# One numbered migration of edgepoint.db (storage/chargepoint.py's MIGRATIONS).
# file_value: config.toml's value for the key when the CSMS changed it; NULL when the
# file did not set the key. changed_at: our wall clock then, for the technician only.
SETTINGS_SCHEMA = """
CREATE TABLE ocpp_settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    file_value  TEXT,
    changed_at  TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class StoredOverride:
    """A key the CSMS changed, and what config.toml said about that key at the time."""

    key: str
    value: str
    file_value: str | None
    changed_at: str = ""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which stored changes still apply, and which are dropped and why."""

    kept: dict[str, str]  # key -> the CSMS's value
    dropped: tuple[tuple[str, str], ...]  # (key, reason)


def resolve_overrides(
    stored: Iterable[StoredOverride],
    file_values: Mapping[str, str],
    number_of_connectors: int = 1,
    registry: Mapping[str, KeyDef] = REGISTRY,
) -> Resolution:
    """Apply the module's rule: a stored change survives while config.toml is unchanged."""
    kept: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for override in stored:
        key = registry.get(override.key)
        now = file_values.get(override.key)
        if key is None or key.readonly:
            dropped.append((override.key, "is no longer a writable configuration key"))
        elif now != override.file_value:
            dropped.append(
                (
                    override.key,
                    f"config.toml changed since the CSMS set it ({_shown(override.file_value)}"
                    f" -> {_shown(now)}): the file wins",
                )
            )
        else:
            try:
                kept[override.key] = parse_value(key, override.value, number_of_connectors)
            except InvalidValue as err:
                dropped.append((override.key, f"stored value {override.value!r} {err}"))
    return Resolution(kept, tuple(dropped))


def _shown(value: str | None) -> str:
    return "not set" if value is None else repr(value)


def build_settings(
    file_values: Mapping[str, str],
    stored: Iterable[StoredOverride],
    number_of_connectors: int = 1,
    registry: Mapping[str, KeyDef] = REGISTRY,
) -> tuple[Settings, Resolution]:
    """The effective Settings from the defaults, config.toml's [ocpp] and the CSMS's changes."""
    resolution = resolve_overrides(stored, file_values, number_of_connectors, registry)
    settings = Settings(
        file_values,
        resolution.kept,
        number_of_connectors=number_of_connectors,
        registry=registry,
    )
    return settings, resolution


class SettingsRepository:
    """The SQL of the ocpp_settings table (edgepoint.db)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def overrides(self) -> list[StoredOverride]:
        async with (
            self._db.read() as db,
            db.execute(
                "SELECT key, value, file_value, changed_at FROM ocpp_settings ORDER BY key"
            ) as cur,
        ):
            return [StoredOverride(*row) for row in await cur.fetchall()]

    async def save_override(
        self, key: str, value: str, file_value: str | None, at: datetime
    ) -> None:
        """Remember a CSMS change, replacing an earlier one of the same key."""
        async with self._db.write() as db:
            await db.execute(
                "INSERT INTO ocpp_settings (key, value, file_value, changed_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, file_value = excluded.file_value,"
                " changed_at = excluded.changed_at",
                (key, value, file_value, iso_utc(at)),
            )

    async def drop_overrides(self, keys: Iterable[str]) -> None:
        async with self._db.write() as db:
            await db.executemany("DELETE FROM ocpp_settings WHERE key = ?", [(k,) for k in keys])

    async def load_settings(
        self,
        file_values: Mapping[str, str],
        number_of_connectors: int = 1,
        registry: Mapping[str, KeyDef] = REGISTRY,
    ) -> Settings:
        """Build the effective Settings at start, and forget the stored changes that lost."""
        settings, resolution = build_settings(
            file_values, await self.overrides(), number_of_connectors, registry
        )
        for key, reason in resolution.dropped:
            log.warning("dropping the CSMS's change of %s: %s", key, reason)
        if resolution.dropped:
            # Dropped for good: were the file later set back to its old value, a change
            # the operator overrode must not come back.
            await self.drop_overrides(key for key, _ in resolution.dropped)
        for key, value in resolution.kept.items():
            log.info("%s = %s, as the CSMS set it (config.toml unchanged since)", key, value)
        return settings

    async def change_setting(
        self, settings: Settings, key: str, value: str, at: datetime
    ) -> ChangeOutcome:
        """Answer a ChangeConfiguration.req: check, store durably, then put into effect.

        Stored before applied and answered, so an Accepted change survives a crash right
        after the answer; a failed write raises (StorageError) and nothing changes.
        """
        outcome = settings.check(key, value)
        if outcome.accepted and outcome.value is not None:
            await self.save_override(
                outcome.key, outcome.value, settings.file_value(outcome.key), at
            )
            settings.apply(outcome)
        return outcome
