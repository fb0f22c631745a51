"""Pure tap debouncing: one tap per card presentation, however much a real reader flickers."""

from __future__ import annotations


class TapDebouncer:
    """Decides whether a card read is a new tap.

    A card read while the same card was the last one seen is the same
    presentation, unless the reader has been watching the field for at least
    `removal_s` without seeing it: then the card was taken away and presented
    again. A different card is always a new tap. Absence only counts while the
    reader was looking: time lost to a reconnect is no evidence that a card left,
    so a card left lying on the reader through a chip fault never becomes a second
    tap (which would stop the session it started).
    """

    def __init__(self, removal_s: float) -> None:
        if removal_s <= 0:
            raise ValueError(f"removal_s must be positive: {removal_s}")
        self._removal_s = removal_s
        self._current: bytes | None = None
        self._watching_since: float | None = None

    @property
    def removal_s(self) -> float:
        """How long a card must be missed before it counts as presented anew."""
        return self._removal_s

    def watching(self, since: float) -> None:
        """The reader asked the chip to look for a card at `since` (kept if already looking)."""
        if self._watching_since is None:
            self._watching_since = since

    def blind(self) -> None:
        """The reader lost the chip: absence seen so far no longer counts."""
        self._watching_since = None

    def seen(self, uid: bytes, at: float) -> bool:
        """A card was read at `at`; True when it is a new tap."""
        absent_for = None if self._watching_since is None else at - self._watching_since
        new = uid != self._current or (absent_for is not None and absent_for >= self._removal_s)
        self._current = uid
        self._watching_since = None
        return new
