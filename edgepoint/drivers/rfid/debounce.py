"""Pure tap debouncing: one tap per card presentation, however much a real reader flickers."""

from __future__ import annotations


class TapDebouncer:
    """Decides whether a card read is a new tap.

    A card read while the same card was the last one seen is the same presentation,
    unless the reader saw the field empty for at least `removal_s`: then the card was
    taken away and presented again. A different card is always a new tap.

    Absence is what the reader observed, not time that passed: from the moment it armed
    the chip (`watching`) to the last look that found nothing (`empty`). The chip latches
    a card it finds, so a read that comes late (a loaded CPU, a slow bus) proves nothing
    about the field, and a card held throughout stays one tap however slowly it is read.
    Time lost to a reconnect is no evidence either (`blind`), so a card left lying on the
    reader through a chip fault never becomes a second tap (which would stop the session
    it started).
    """

    def __init__(self, removal_s: float) -> None:
        if removal_s <= 0:
            raise ValueError(f"removal_s must be positive: {removal_s}")
        self._removal_s = removal_s
        self._current: bytes | None = None
        self._watching_since: float | None = None
        self._empty_until: float | None = None

    @property
    def removal_s(self) -> float:
        """How long a card must be missed before it counts as presented anew."""
        return self._removal_s

    def watching(self, since: float) -> None:
        """The reader asked the chip to look for a card at `since` (kept if already looking)."""
        if self._watching_since is None:
            self._watching_since = since

    def empty(self, at: float) -> None:
        """A look at `at` found no card in the field (while watching)."""
        if self._watching_since is not None and at > (self._empty_until or self._watching_since):
            self._empty_until = at

    def blind(self) -> None:
        """The reader lost the chip: absence seen so far no longer counts."""
        self._watching_since = None
        self._empty_until = None

    def seen(self, uid: bytes) -> bool:
        """A card was read; True when it is a new tap."""
        absent_for = (
            0.0
            if self._watching_since is None or self._empty_until is None
            else self._empty_until - self._watching_since
        )
        new = uid != self._current or absent_for >= self._removal_s
        self._current = uid
        self._watching_since = None
        self._empty_until = None
        return new
