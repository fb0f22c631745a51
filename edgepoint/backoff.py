"""Pure retry back-off shared by every service that reconnects (CSMS link, serial, cloud)."""

from __future__ import annotations

import random
from collections.abc import Callable


def exponential(
    attempt: int,
    base_s: float = 0.5,
    cap_s: float = 60.0,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0-based): doubling, capped, jittered.

    Full-range jitter would let a fleet of Pis that lost the same CSMS reconnect in a
    stampede; half-range jitter keeps them spread yet bounded below.
    """
    ceiling: float = min(cap_s, base_s * 2.0 ** min(attempt, 30))
    return ceiling / 2 + (ceiling / 2) * jitter()


def local_device(attempt: int) -> float:
    """Back-off for a device on a local bus or cable (PN532, ESP32).

    Retrying costs nothing there, and a technician who reseats a cable expects the
    device to work again within seconds: a short base and a low cap.
    """
    return exponential(attempt, base_s=0.25, cap_s=5.0)
