"""Cheap guards in front of PBKDF2: a cache of verified keys and a per-address lockout."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def source_of(remote_address: Any) -> str:
    """The key failures are counted under: the IPv4 address, or the IPv6 /64 network.

    One IPv6 host usually owns a whole /64, so counting single IPv6 addresses would
    let an attacker pick a fresh one per attempt.
    """
    host = remote_address[0] if isinstance(remote_address, tuple) and remote_address else None
    if not isinstance(host, str):
        return "unknown"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class VerifiedKeyCache:
    """Remembers, per charge point, a keyed digest of the last password that verified.

    The digest is HMAC-SHA256 under a random key made for this process, so the cache
    holds nothing an attacker could test guesses against offline, and it dies with the
    process. A hit costs one HMAC instead of a PBKDF2; a miss proves nothing (the key
    may have been changed) and the caller verifies against the database. Entries
    expire after `ttl_s`, which bounds how long a key changed by another process (the
    CLI writing csms.db directly) keeps working without `forget`.
    """

    def __init__(
        self,
        *,
        max_entries: int = 4096,
        ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_s > 0")
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._secret = os.urandom(32)
        # Least recently verified first, so eviction drops the stalest entry.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, charge_point_id: str, password: str) -> bytes:
        message = charge_point_id.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    @property
    def epoch(self) -> int:
        """Changes on every `forget` or `clear`; read it before a verification starts."""
        return self._epoch

    def remember(self, charge_point_id: str, password: str, *, epoch: int | None = None) -> None:
        """Record that `password` verified for the charge point.

        With `epoch` (read before the verification began), nothing is recorded if a
        `forget` happened meanwhile: the verification may have read the old key.
        """
        if epoch is not None and epoch != self._epoch:
            return
        self._entries[charge_point_id] = (
            self._digest(charge_point_id, password),
            self._clock() + self._ttl_s,
        )
        self._entries.move_to_end(charge_point_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def matches(self, charge_point_id: str, password: str) -> bool:
        """True if `password` is the one that verified last, within the time to live."""
        entry = self._entries.get(charge_point_id)
        if entry is None:
            return False
        digest, expires = entry
        if self._clock() >= expires:
            del self._entries[charge_point_id]
            return False
        return hmac.compare_digest(digest, self._digest(charge_point_id, password))

    def forget(self, charge_point_id: str) -> None:
        """Drop the charge point's entry (after a re-key or a removal)."""
        self._epoch += 1
        self._entries.pop(charge_point_id, None)

    def clear(self) -> None:
        """Drop every entry."""
        self._epoch += 1
        self._entries.clear()


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """How many failed authentications a source may make, and how long it is locked."""

    max_failures: int = 5  # within window_s; the next one locks the source
    window_s: float = 60.0
    lockout_s: float = 60.0  # the first lockout; each further one doubles it
    max_lockout_s: float = 900.0
    max_sources: int = 4096  # sources tracked at once (the limiter's memory bound)

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.max_sources < 1:
            raise ValueError("max_failures and max_sources must be >= 1")
        if not (self.window_s > 0 and 0 < self.lockout_s <= self.max_lockout_s):
            raise ValueError("window_s > 0 and 0 < lockout_s <= max_lockout_s are required")


@dataclass(slots=True)
class _Source:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    strikes: int = 0  # lockouts so far; reset after a quiet max_lockout_s
    in_flight: int = 0  # expensive verifications running now
    last_failure: float = -math.inf


class FailureLimiter:
    """Counts failed authentications per source and locks out sources that fail too often.

    A locked source is answered without any database read or hashing. Expensive
    verifications in flight count against the budget too, so a burst of concurrent
    attempts cannot all pass the check before the first failure is recorded. Tracking
    is bounded by `LockoutPolicy.max_sources`: when full, idle sources are dropped
    first, then the least recently seen.
    """

    def __init__(
        self, policy: LockoutPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or LockoutPolicy()
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.lockouts = 0  # how many times a source was locked, since start

    def __len__(self) -> int:
        return len(self._sources)

    def retry_after(self, source: str) -> float:
        """Seconds the source must wait before its next attempt (0.0: it may try now)."""
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        now = self._clock()
        self._expire(entry, now)
        if entry.locked_until > now:
            return entry.locked_until - now
        if len(entry.failures) + entry.in_flight >= self.policy.max_failures:
            # Its own verifications use up what is left of its budget: a short wait,
            # not a lockout (failures alone never reach the budget unlocked).
            return 1.0
        return 0.0

    def begin(self, source: str) -> None:
        """An expensive verification for the source starts; pair with `end`."""
        self._entry(source).in_flight += 1

    def end(self, source: str, *, failed: bool) -> None:
        """The verification started with `begin` is over; count it if it failed."""
        entry = self._sources.get(source)
        if entry is not None and entry.in_flight > 0:
            entry.in_flight -= 1
        if failed:
            self.fail(source)

    def fail(self, source: str) -> None:
        """Count one failed authentication; lock the source once it has too many."""
        entry = self._entry(source)
        now = self._clock()
        self._expire(entry, now)
        if entry.locked_until > now:
            return  # a straggler of the burst that caused the lockout
        entry.failures.append(now)
        entry.last_failure = now
        policy = self.policy
        if len(entry.failures) >= policy.max_failures:
            duration = min(policy.lockout_s * 2**entry.strikes, policy.max_lockout_s)
            entry.locked_until = now + duration
            entry.strikes += 1
            entry.failures.clear()
            self.lockouts += 1

    def is_locked(self, source: str) -> bool:
        """True while the source serves a lockout."""
        entry = self._sources.get(source)
        return entry is not None and entry.locked_until > self._clock()

    def release(self, source: str) -> None:
        """Forget the source's failures and lockout (an operator vouches for it)."""
        self._sources.pop(source, None)

    def _expire(self, entry: _Source, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.policy.window_s:
            entry.failures.popleft()
        if entry.strikes and now - entry.last_failure >= self.policy.max_lockout_s:
            entry.strikes = 0

    def _idle(self, entry: _Source, now: float) -> bool:
        self._expire(entry, now)
        return (
            entry.in_flight == 0
            and entry.locked_until <= now
            and not entry.failures
            and entry.strikes == 0
        )

    def _entry(self, source: str) -> _Source:
        entry = self._sources.get(source)
        if entry is not None:
            self._sources.move_to_end(source)
            return entry
        if len(self._sources) >= self.policy.max_sources:
            self._make_room()
        entry = self._sources[source] = _Source()
        return entry

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._sources.items() if self._idle(e, now)]:
            del self._sources[key]
        if len(self._sources) < self.policy.max_sources:
            return
        # Every tracked source is active: drop the least recently seen that is not
        # mid-verification (its in_flight count must survive to be decremented).
        for key, entry in self._sources.items():
            if entry.in_flight == 0:
                del self._sources[key]
                return
        self._sources.popitem(last=False)
