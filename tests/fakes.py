"""Small fakes shared by unit tests."""

from __future__ import annotations


class Clock:
    """A clock a test sets by hand: `clock.now += 5` instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
