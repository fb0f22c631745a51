"""The daemon's recent log lines for the control socket: a ring buffer and the `log` stream."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edgepoint.redact import mask_id_tag, printable

# Lines kept for a client that opens its log view (`log.recent`); about 150 kB.
DEFAULT_CAPACITY = 1000
# A log line longer than this is cut: one record must not fill a client's backlog.
MAX_MESSAGE = 2000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Records should mask card ids already (the code logs mask_id_tag(tag)); a library that
# logs a whole OCPP payload at DEBUG does not. Mask what looks like an idTag value again.
_TAG_VALUE = re.compile(
    r"""(?P<key>["']?(?:idTag|parentIdTag|id_tag|parent_id_tag|stop_id_tag)["']?\s*[:=]\s*["'])"""
    r"""(?P<tag>[^"'*][^"']*)(?P<end>["'])"""
)


def redact_line(text: str) -> str:
    """`text` with card id values masked and control characters shown as `?`."""
    masked = _TAG_VALUE.sub(
        lambda m: m.group("key") + mask_id_tag(m.group("tag")) + m.group("end"), text
    )
    return "\n".join(printable(line, MAX_MESSAGE) for line in masked.splitlines()[:20])


class LogFeed(logging.Handler):
    """Keeps the last `capacity` records and hands each new one to the stream's subscribers.

    Records may come from any thread (work sent to `asyncio.to_thread` logs too); the
    subscribers (the control server's per-client backlogs) are called on the loop.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(logging.NOTSET)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._subscribers: list[Callable[[Any], None]] = []
        self._seq = 0
        self._guard = threading.RLock()  # a subscriber that logs must not deadlock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._logger: logging.Logger | None = None

    @classmethod
    def attach(cls, logger: logging.Logger, capacity: int = DEFAULT_CAPACITY) -> LogFeed:
        """A feed receiving everything `logger` (the root logger) passes on; detach() ends it."""
        feed = cls(capacity)
        try:
            feed._loop = asyncio.get_running_loop()
            feed._loop_thread = threading.get_ident()
        except RuntimeError:
            pass
        logger.addHandler(feed)
        feed._logger = logger
        return feed

    def detach(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger = None
        self._subscribers.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                # The exception's own words, not the traceback: that stays in the journal.
                error = record.exc_info[1]
                message += f" ({type(error).__name__}: {error})"
            item = {
                "time": datetime.fromtimestamp(record.created, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": record.levelname,
                "logger": record.name,
                "message": redact_line(message),
            }
        except Exception:  # a broken record must not break the code that logged it
            self.handleError(record)
            return
        with self._guard:
            self._seq += 1
            record_item: dict[str, Any] = {"seq": self._seq, **item}
            self._records.append(record_item)
            # Through the loop's queue from every thread (the loop's own included), queued
            # under the lock: records reach the stream in the order they were numbered.
            if self._loop is None:
                self._publish(record_item)
                return
            schedule = (
                self._loop.call_soon
                if threading.get_ident() == self._loop_thread
                else self._loop.call_soon_threadsafe
            )
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is watching
                schedule(self._publish, record_item)

    def _publish(self, item: dict[str, Any]) -> None:
        for push in list(self._subscribers):
            push(item)

    def subscribe(self, push: Callable[[Any], None]) -> Callable[[], None]:
        """The control server's stream hook: `push` gets every record from now on."""
        self._subscribers.append(push)

        def unsubscribe() -> None:
            if push in self._subscribers:
                self._subscribers.remove(push)

        return unsubscribe

    @property
    def watchers(self) -> int:
        """How many clients follow the stream now."""
        return len(self._subscribers)

    def recent(self, level: str = "DEBUG", limit: int = DEFAULT_CAPACITY) -> list[dict[str, Any]]:
        """The newest `limit` records at `level` or above, oldest first."""
        floor = logging.getLevelName(level.upper())
        if not isinstance(floor, int):
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        with self._guard:
            records = list(self._records)
        chosen = [r for r in records if logging.getLevelName(r["level"]) >= floor]
        return chosen[-limit:] if limit > 0 else []
