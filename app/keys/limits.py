"""Per-key limit arithmetic, as pure functions over a monotonic clock, and the refusal they produce.

`rpm` is a sliding window: a key may have at most `rpm` admitted requests in any `WINDOW` seconds.
The window holds the (monotonic) times of admitted requests, oldest first; a request admitted at `t`
stops counting at `t + WINDOW`.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 60.0  # seconds: the span `rpm` counts over


class KeyRefusal(Exception):
    """A client key may not make this request: the status, a stable `kind` for the caller's dialect
    (`key_revoked`, `key_expired`, `model_not_allowed`, `key_rate_limited`, `key_streams_exhausted`),
    a message that names the key but never holds its secret, and whole seconds to wait (429 only)."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"KeyRefusal({self.status}, {self.kind}: {self.message!r})"


def prune(window: deque[float], now: float, period: float = WINDOW) -> None:
    """Drop the requests that no longer count: those admitted `period` or more seconds ago."""
    while window and window[0] + period <= now:
        window.popleft()


def window_retry_after(window: deque[float], limit: int, now: float, period: float = WINDOW) -> int | None:
    """None when one more request fits (after `prune`); else whole seconds until one does (>= 1).

    With `n >= limit` requests counting, the request at index `n - limit` must leave the window for
    the count to drop below `limit` (more than `limit` count after a limit was lowered)."""
    prune(window, now, period)
    if len(window) < limit:
        return None
    frees_at = window[len(window) - limit] + period
    return max(1, math.ceil(frees_at - now))
