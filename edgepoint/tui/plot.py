"""Text plots of the last minutes of a measurement: block characters, any 16-colour terminal."""

from __future__ import annotations

import collections
from dataclasses import dataclass

BLOCKS = " ▁▂▃▄▅▆▇█"
WINDOW_S = 300.0  # "the last minutes": five of them
# At 10 samples a second (the simulator) five minutes are 3,000 points; keep them bounded.
MAX_POINTS = 4000


@dataclass(frozen=True, slots=True)
class Range:
    """The smallest and largest value plotted, and the newest."""

    low: float
    high: float
    last: float


class History:
    """(monotonic time, value) points of one measurement, the last WINDOW_S seconds."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._points: collections.deque[tuple[float, float]] = collections.deque(maxlen=MAX_POINTS)

    def add(self, at: float, value: float) -> None:
        self._points.append((at, value))
        while self._points and self._points[0][0] < at - self.window_s:
            self._points.popleft()

    def clear(self) -> None:
        self._points.clear()

    def columns(self, now: float, width: int) -> list[float | None]:
        """The mean value per column, oldest left; None where no sample fell."""
        sums = [0.0] * width
        counts = [0] * width
        step = self.window_s / width
        start = now - self.window_s
        for at, value in self._points:
            index = int((at - start) / step)
            if 0 <= index < width:
                sums[index] += value
                counts[index] += 1
            elif index == width:  # a sample stamped exactly now
                sums[-1] += value
                counts[-1] += 1
        return [s / c if c else None for s, c in zip(sums, counts, strict=True)]

    def range(self) -> Range | None:
        if not self._points:
            return None
        values = [v for _, v in self._points]
        return Range(min(values), max(values), values[-1])


def render(columns: list[float | None], rows: int = 2) -> list[str]:
    """`rows` lines of block characters, top line first, scaled between min and max."""
    known = [c for c in columns if c is not None]
    if not known:
        return [" " * len(columns) for _ in range(rows)]
    low, high = min(known), max(known)
    levels = rows * 8
    lines = [[" "] * len(columns) for _ in range(rows)]
    for x, value in enumerate(columns):
        if value is None:
            continue
        # A flat series sits in the middle; otherwise the lowest value still shows a sliver.
        level = (
            levels // 2 if high == low else 1 + round((value - low) / (high - low) * (levels - 1))
        )
        for row in range(rows):
            fill = min(max(level - row * 8, 0), 8)
            lines[rows - 1 - row][x] = BLOCKS[fill]
    return ["".join(line) for line in lines]
