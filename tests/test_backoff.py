"""The shared retry back-off: doubling, capped, jittered within the upper half."""

from __future__ import annotations

from edgepoint.backoff import exponential, local_device


def test_exponential_doubles_then_caps_within_half_range_jitter() -> None:
    low, high = (lambda: 0.0), (lambda: 1.0)
    assert [exponential(n, base_s=1, cap_s=8, jitter=high) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert [exponential(n, base_s=1, cap_s=8, jitter=low) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert exponential(10_000, base_s=1, cap_s=60, jitter=high) == 60  # no overflow


def test_local_device_backoff_grows_and_stays_low() -> None:
    assert 0.125 <= local_device(0) <= 0.25
    assert all(2.5 <= local_device(n) <= 5.0 for n in range(5, 200))
