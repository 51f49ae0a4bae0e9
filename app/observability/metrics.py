"""Prometheus metrics, right also with several uvicorn workers (prometheus-client's multiprocess mode).

With WORKERS > 1, `python main.py` calls `prepare_multiprocess()` before the workers start: they
inherit PROMETHEUS_MULTIPROC_DIR, each writes its samples to files there, and the worker that is
scraped merges them all. In one process the samples live in this object's own registry, so tests
can build as many apps as they like in one interpreter.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.observability.context import RequestInfo

CONTENT_TYPE = CONTENT_TYPE_LATEST
# prometheus-client's own variable, read by the library itself at import; not a gateway setting.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Answers of a language model: the first piece comes in under a second or after many; the whole
# answer can take minutes.
TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess() -> Path | None:
    """Give the workers about to start an empty samples directory (stale files would add up).

    Returns the directory it created, for the caller to delete at exit; None when the operator
    named one in PROMETHEUS_MULTIPROC_DIR (emptied, and left in place).
    """
    existing = multiproc_dir()
    if existing is not None:
        existing.mkdir(parents=True, exist_ok=True)
        for stale in existing.glob("*.db"):
            stale.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="gptomni2api-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)  # inherited by the workers, which is the point
    return path


def forget_dead_workers(path: Path, alive: Callable[[int], bool] | None = None) -> list[int]:
    """Drop the live gauges (streams in flight, credentials) of workers that are gone.

    uvicorn restarts a dead worker without telling prometheus-client, so without this a crashed
    worker's streams would stay "in flight" forever. Counters and histograms are kept: they count
    what happened.
    """
    is_alive = alive or _pid_alive
    dead = sorted(
        {
            int(match.group(1))
            for file in path.glob("gauge_live*_*.db")
            if (match := _LIVE_GAUGE_FILE.fullmatch(file.name)) and not is_alive(int(match.group(1)))
        }
    )
    for pid in dead:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]  # untyped upstream
    return dead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    def __init__(self, samples_dir: Path | None = None) -> None:
        self.samples_dir = samples_dir
        if samples_dir is not None:
            # prometheus-client opens its sample files there as soon as a metric is made.
            samples_dir.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gptomni2api_requests",
            "HTTP requests answered, by route template, status and served model.",
            ["route", "status", "model"],
            registry=self.registry,
        )
        self.time_to_first_byte = Histogram(
            "gptomni2api_time_to_first_byte_seconds",
            "Seconds from the request to the upstream's first piece of answer (or the first content byte).",
            ["route", "model"],
            buckets=TTFB_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "gptomni2api_request_duration_seconds",
            "Seconds from the request to the last byte of the response.",
            ["route", "model"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.upstream_outcomes = Counter(
            "gptomni2api_upstream_outcomes",
            "Upstream calls by outcome: ok, or the failure class (auth, rate_limited, timeout, ...).",
            ["outcome"],
            registry=self.registry,
        )
        # Each worker has its own view of the pool; the most recent one written is the freshest.
        self.credentials = Gauge(
            "gptomni2api_credentials",
            "Credentials in the pool by state.",
            ["state"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        # Per named client key (its name, never the key): requests by status, tokens by kind.
        self.key_requests = Counter(
            "gptomni2api_key_requests",
            "Requests made with each named client key, by status.",
            ["key", "status"],
            registry=self.registry,
        )
        self.key_tokens = Counter(
            "gptomni2api_key_tokens",
            "Estimated tokens used by each named client key, by kind (prompt, completion).",
            ["key", "kind"],
            registry=self.registry,
        )
        self.pool_panics = Counter(
            "gptomni2api_pool_panics",
            "Requests served by a credential resting for failures because none was active (panic mode).",
            registry=self.registry,
        )
        self.streams_in_flight = Gauge(
            "gptomni2api_streams_in_flight",
            "SSE responses being sent right now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        # 1 while the shared state (Redis) is unreachable and this process serves on its own view.
        self.state_degraded = Gauge(
            "gptomni2api_state_degraded",
            "1 while Redis (REDIS_URL) is unreachable: the last known pool, per-replica limits.",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self._credential_counts: Callable[[], Mapping[str, int]] | None = None

    def watch_credentials(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._credential_counts = counts
        self.refresh_credentials()

    def refresh_credentials(self) -> None:
        if self._credential_counts is None:
            return
        for state, count in self._credential_counts().items():
            self.credentials.labels(state).set(count)

    def stream_started(self) -> None:
        self.streams_in_flight.inc()

    def stream_ended(self) -> None:
        self.streams_in_flight.dec()

    def observe(self, info: RequestInfo, finished_at: float) -> None:
        route = info.route or "unmatched"
        model = info.model or "none"
        self.requests.labels(route, str(info.status or 500), model).inc()
        self.duration.labels(route, model).observe(max(0.0, finished_at - info.started_at))
        if info.first_byte_at is not None:
            ttfb = max(0.0, info.first_byte_at - info.started_at)
            self.time_to_first_byte.labels(route, model).observe(ttfb)
        for outcome in info.upstream_outcomes:
            self.upstream_outcomes.labels(outcome).inc()
        if info.key_name is not None:
            self.key_requests.labels(info.key_name, str(info.status or 500)).inc()
            if info.prompt_tokens:
                self.key_tokens.labels(info.key_name, "prompt").inc(info.prompt_tokens)
            if info.completion_tokens:
                self.key_tokens.labels(info.key_name, "completion").inc(info.completion_tokens)
        self.refresh_credentials()

    def exposition(self) -> bytes:
        """The text format, merged over every worker in multiprocess mode."""
        self.refresh_credentials()
        if self.samples_dir is None:
            return generate_latest(self.registry)
        forget_dead_workers(self.samples_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.samples_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)
