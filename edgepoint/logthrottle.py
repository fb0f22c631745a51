"""Rate-limited logging: a hostile peer repeating one mistake must not fill the SD card."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    """Logs the first message of each kind, then at most one per `interval_s`, with a count.

    Kinds are the caller's short keys (e.g. "bad frame"); how many kinds are tracked is
    bounded too, so varied garbage cannot grow the table.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        max_kinds: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(
        self, level: int, kind: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        if last is None and len(self._last) >= self._max_kinds:
            # Forget the oldest kind rather than grow without bound.
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
            self._suppressed.pop(oldest, None)
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        if skipped:
            message += " (%d more like it not logged)"
            args = (*args, skipped)
        self._logger.log(level, message, *args, exc_info=exc_info)
