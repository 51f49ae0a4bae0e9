"""The last hour of traffic in this process, minute by minute: requests by outcome, time to first
token (p50 and p99) and streams in flight. A fixed ring of buckets fed by the access middleware and
read by the console (`GET /admin/traffic`); no external service. With several workers or replicas
each process keeps its own hour: the console shows the one that answered.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "client_error", "upstream_error")
MINUTES = 60
SAMPLES_PER_MINUTE = 512  # time-to-first-token samples kept per minute (a uniform reservoir past it)


def outcome_of(status: int) -> str:
    """`ok` below 400, `client_error` for 4xx, `upstream_error` for 5xx (the gateway or its upstream)."""
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "upstream_error"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0-100) of `values` (any order); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Minute:
    minute: int  # minutes since the epoch
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    ttft: list[float] = field(default_factory=list)  # seconds
    ttft_seen: int = 0
    streams_peak: int = 0
    streams_end: int = 0  # in flight after the minute's last change: what the next quiet minutes had


class TrafficBuffer:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        minutes: int = MINUTES,
        samples: int = SAMPLES_PER_MINUTE,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.minutes = minutes
        self.samples = samples
        self.rng = rng or random.Random()
        self.streams = 0
        self._ring: list[Minute | None] = [None] * minutes

    def _bucket(self) -> Minute:
        minute = int(self.clock() // 60)
        slot = minute % self.minutes
        bucket = self._ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = Minute(minute, streams_peak=self.streams, streams_end=self.streams)
            self._ring[slot] = bucket
        return bucket

    def record(self, status: int, ttft: float | None = None) -> None:
        """One request answered with `status`; `ttft` in seconds when it was a chat answer."""
        bucket = self._bucket()
        bucket.counts[outcome_of(status)] += 1
        if ttft is None:
            return
        bucket.ttft_seen += 1
        if len(bucket.ttft) < self.samples:
            bucket.ttft.append(max(0.0, ttft))
        else:
            index = self.rng.randrange(bucket.ttft_seen)
            if index < self.samples:
                bucket.ttft[index] = max(0.0, ttft)

    def stream_started(self) -> None:
        self.streams += 1
        bucket = self._bucket()
        bucket.streams_peak = max(bucket.streams_peak, self.streams)
        bucket.streams_end = self.streams

    def stream_ended(self) -> None:
        self.streams = max(0, self.streams - 1)
        self._bucket().streams_end = self.streams

    def snapshot(self) -> dict[str, Any]:
        """The last `minutes` minutes, oldest first, the current (partial) one last."""
        now_minute = int(self.clock() // 60)
        rows: list[dict[str, Any]] = []
        carried = 0
        for minute in range(now_minute - self.minutes + 1, now_minute + 1):
            bucket = self._ring[minute % self.minutes]
            if bucket is None or bucket.minute != minute:
                bucket = Minute(minute, streams_peak=carried, streams_end=carried)
            carried = bucket.streams_end
            p50, p99 = percentile(bucket.ttft, 50), percentile(bucket.ttft, 99)
            rows.append(
                {
                    "minute": dt.datetime.fromtimestamp(minute * 60, dt.UTC)
                    .isoformat(timespec="minutes")
                    .replace("+00:00", "Z"),
                    **bucket.counts,
                    "ttft_p50_ms": None if p50 is None else round(p50 * 1000),
                    "ttft_p99_ms": None if p99 is None else round(p99 * 1000),
                    "streams_peak": bucket.streams_peak,
                }
            )
        rows[-1]["streams_peak"] = max(rows[-1]["streams_peak"], self.streams)
        return {"object": "traffic", "minutes": rows, "streams_in_flight": self.streams}
