"""Per-connection limits of the embedded CSMS: frame size, call rate and bad input per charger.

One charger must never cost the others more than its share. Each connection gets a
ConnectionLimiter (policy, no I/O) and a GuardedTransport around its WebSocket (the pump):

* CALLs beyond `max_calls_per_s` (after a burst of `burst_s` seconds' worth) are answered
  later, not refused: a charger that waits for each answer, as OCPP-J asks, is slowed
  down and never disconnected, so a long offline queue still drains.
* Bad input (unparseable frames, CALLs sent while too many wait, schema refusals) fills
  a leaky bucket that empties at `max_bad_frames` per `bad_window_s`; a charger that
  overflows it is disconnected (1008) with the reason recorded. A charger pipelining
  CALLs without waiting for answers overflows it within a few frames.
* A frame over `max_frame_bytes` closes the connection (1009). The WebSocket server
  enforces it before buffering (its max_size); the guard checks again and records it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import Close, CloseCode

from edgepoint.csms.records import AnomalyReason

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from edgepoint.config import CsmsConfig


@dataclass(frozen=True, slots=True)
class CsmsLimits:
    """What one charge point's connection may cost (see the module docstring)."""

    # A day of 1-minute samples of 5 measurands in one StopTransaction is ~50 KiB of
    # JSON; ordinary messages are a few hundred bytes.
    max_frame_bytes: int = 64 * 1024
    # Sampled values in one MeterValues (over all its meterValue entries); more is refused
    # with OccurenceConstraintViolation before anything reaches the database.
    max_sampled_values: int = 500
    max_calls_per_s: float = 25.0
    burst_s: float = 4.0  # calls answered at once after a quiet spell: rate x burst_s
    max_bad_frames: int = 20
    bad_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 1024 or self.max_sampled_values < 1:
            raise ValueError("max_frame_bytes must be >= 1024 and max_sampled_values >= 1")
        if self.max_calls_per_s <= 0 or self.burst_s <= 0 or self.bad_window_s <= 0:
            raise ValueError("rates and windows must be positive")
        if self.max_bad_frames < 1:
            raise ValueError("max_bad_frames must be >= 1")

    @classmethod
    def from_config(cls, config: CsmsConfig) -> CsmsLimits:
        """The limits set in config.toml's [csms] table."""
        return cls(
            max_frame_bytes=config.max_frame_bytes,
            max_sampled_values=config.max_sampled_values,
            max_calls_per_s=config.max_calls_per_s,
            max_bad_frames=config.max_bad_frames,
        )


DEFAULT_LIMITS = CsmsLimits()


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """Counters of one connection's limiter, for status views and tests."""

    calls: int
    delayed_calls: int
    delayed_s: float
    bad_level: float


class ConnectionLimiter:
    """Token bucket for CALLs (delay, never refuse) and leaky bucket for bad input."""

    def __init__(
        self,
        limits: CsmsLimits = DEFAULT_LIMITS,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limits = limits
        self._now = monotonic
        self._sleep = sleep
        self._rate = limits.max_calls_per_s
        self._burst = max(1.0, limits.max_calls_per_s * limits.burst_s)
        self._tokens = self._burst
        self._filled_at = monotonic()
        self._bad_level = 0.0
        self._bad_at = self._filled_at
        self._bad_seen = 0
        self._calls = 0
        self._delayed_calls = 0
        self._delayed_s = 0.0

    def snapshot(self) -> LimiterSnapshot:
        return LimiterSnapshot(self._calls, self._delayed_calls, self._delayed_s, self._bad_level)

    def delay_for_call(self) -> float:
        """Take a token for one CALL; return how long its answer must wait (0 if none).

        Tokens may go negative: each CALL queued behind a delayed one waits one more
        interval, so the answers come at `max_calls_per_s` however fast CALLs arrive.
        """
        now = self._now()
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        self._tokens -= 1.0
        self._calls += 1
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self._rate
        self._delayed_calls += 1
        self._delayed_s += delay
        return delay

    async def admit(self) -> None:
        """Wait as long as this connection's call rate requires."""
        delay = self.delay_for_call()
        if delay > 0:
            await self._sleep(delay)

    def note_bad_total(self, total: int) -> bool:
        """Take the connection's running count of bad frames; True once it is over the limit."""
        now = self._now()
        leak = (now - self._bad_at) * self.limits.max_bad_frames / self.limits.bad_window_s
        self._bad_at = now
        fresh = max(0, total - self._bad_seen)
        self._bad_seen = max(self._bad_seen, total)
        self._bad_level = max(0.0, self._bad_level - leak) + fresh
        return self._bad_level > self.limits.max_bad_frames


Violation = Callable[[AnomalyReason, str], Awaitable[None]]


class GuardedTransport:
    """The Endpoint's view of a connection, with this connection's limits applied on receive.

    `bad_total` returns the connection's bad frames so far (the Endpoint's counters, read
    between frames); `on_violation` records why the connection is being closed.
    """

    def __init__(
        self,
        connection: ServerConnection,
        limiter: ConnectionLimiter,
        *,
        bad_total: Callable[[], int],
        on_violation: Violation,
    ) -> None:
        self._connection = connection
        self._limiter = limiter
        self._bad_total = bad_total
        self._on_violation = on_violation

    async def send(self, message: str) -> None:
        await self._connection.send(message)

    async def recv(self) -> str | bytes:
        limits = self._limiter.limits
        if self._limiter.note_bad_total(self._bad_total()):
            await self._close(
                AnomalyReason.TOO_MANY_BAD_FRAMES,
                f"more than {limits.max_bad_frames} bad frames in {limits.bad_window_s:g} s",
                CloseCode.POLICY_VIOLATION,
            )
        try:
            raw = await self._connection.recv()
        except ConnectionClosed as closed:
            if closed.sent is not None and closed.sent.code == CloseCode.MESSAGE_TOO_BIG:
                await self._on_violation(
                    AnomalyReason.FRAME_TOO_BIG, f"a frame over {limits.max_frame_bytes} bytes"
                )
            raise
        size = len(raw) if isinstance(raw, bytes) else _utf8_length(raw, limits.max_frame_bytes)
        if size > limits.max_frame_bytes:
            await self._close(
                AnomalyReason.FRAME_TOO_BIG,
                f"a frame over {limits.max_frame_bytes} bytes",
                CloseCode.MESSAGE_TOO_BIG,
            )
        return raw

    async def _close(self, reason: AnomalyReason, detail: str, code: CloseCode) -> None:
        """Record, close, then raise the ConnectionClosed that ends the Endpoint's loop."""
        await self._on_violation(reason, detail)
        await self._connection.close(code, reason.value)
        raise ConnectionClosedError(None, Close(code, reason.value))


def _utf8_length(text: str, limit: int) -> int:
    """Bytes of `text` as UTF-8, without encoding it when its length settles the question."""
    if len(text) > limit or 4 * len(text) <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
