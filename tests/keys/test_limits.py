"""The rpm window arithmetic, as pure functions over plain numbers."""

from __future__ import annotations

from collections import deque

import pytest

from app.keys.limits import WINDOW, KeyRefusal, prune, window_retry_after


def test_a_request_counts_for_exactly_the_window() -> None:
    window = deque([100.0, 130.0])
    prune(window, 159.999)
    assert list(window) == [100.0, 130.0]
    prune(window, 160.0)  # admitted at 100: counts until 160, not at 160
    assert list(window) == [130.0]
    prune(window, 1000.0)
    assert not window


def test_room_below_the_limit() -> None:
    assert window_retry_after(deque(), 1, 0.0) is None
    assert window_retry_after(deque([0.0, 1.0]), 3, 2.0) is None


@pytest.mark.parametrize(
    ("window", "limit", "now", "expected"),
    [
        ([0.0, 10.0, 20.0], 3, 30.0, 30),  # the request at 0 leaves at 60
        ([0.0, 10.0, 20.0], 3, 59.5, 1),  # half a second rounds up to one
        ([0.0, 10.0, 20.0], 3, 20.0, 40),
        ([0.5, 10.0, 20.0], 3, 20.0, 41),  # 40.5 s rounds up
        ([59.99, 59.995], 2, 60.0, 60),
        ([0.0, 10.0, 20.0, 30.0], 2, 40.0, 40),  # a lowered limit: three must leave, the third at 80
    ],
)
def test_retry_after_is_the_wait_for_a_slot(
    window: list[float], limit: int, now: float, expected: int
) -> None:
    assert window_retry_after(deque(window), limit, now) == expected


def test_retry_after_is_at_least_one_second() -> None:
    window = deque([0.0])
    assert window_retry_after(window, 1, WINDOW - 1e-9) == 1


def test_refusal_carries_its_parts() -> None:
    refusal = KeyRefusal(429, "key_rate_limited", "slow down", 7)
    assert (refusal.status, refusal.kind, refusal.message, refusal.retry_after) == (
        429,
        "key_rate_limited",
        "slow down",
        7,
    )
    assert str(refusal) == "slow down"
    assert KeyRefusal(401, "key_revoked", "gone").retry_after is None
