"""Metrics in one process (own registry) and across processes (prometheus-client's multiprocess
mode, as `python main.py` uses it with several workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observability.context import RequestInfo
from app.observability.metrics import (
    MULTIPROC_ENV,
    Metrics,
    forget_dead_workers,
    prepare_multiprocess,
)
from tests.conftest import ROOT, base_env


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def finished_request(**fields: object) -> tuple[RequestInfo, float]:
    started = time.monotonic()
    info = RequestInfo(request_id="r", method="POST", started_at=started)
    for key, item in fields.items():
        setattr(info, key, item)
    return info, started + 2.0


def test_a_request_is_counted_timed_and_its_outcomes_classed() -> None:
    metrics = Metrics()
    info, finished = finished_request(
        route="/v1/chat/completions",
        status=200,
        model="gptomni",
        upstream_outcomes=["rate_limited", "ok"],
    )
    info.first_byte_at = info.started_at + 0.3
    metrics.observe(info, finished)
    found = samples(metrics.exposition().decode())
    chat = {"route": "/v1/chat/completions", "model": "gptomni"}
    assert value(found, "gptomni2api_requests_total", status="200", **chat) == 1
    assert value(found, "gptomni2api_time_to_first_byte_seconds_count", **chat) == 1
    assert value(found, "gptomni2api_time_to_first_byte_seconds_bucket", le="0.5", **chat) == 1
    assert value(found, "gptomni2api_time_to_first_byte_seconds_bucket", le="0.25", **chat) == 0
    assert value(found, "gptomni2api_request_duration_seconds_count", **chat) == 1
    assert value(found, "gptomni2api_request_duration_seconds_sum", **chat) == pytest.approx(2.0)
    assert value(found, "gptomni2api_upstream_outcomes_total", outcome="rate_limited") == 1
    assert value(found, "gptomni2api_upstream_outcomes_total", outcome="ok") == 1


def test_unknown_route_and_model_have_bounded_labels() -> None:
    metrics = Metrics()
    info, finished = finished_request(route=None, status=None)
    metrics.observe(info, finished)
    found = samples(metrics.exposition().decode())
    assert value(found, "gptomni2api_requests_total", route="unmatched", status="500", model="none") == 1
    assert not any(name.startswith("gptomni2api_time_to_first_byte_seconds_count") for name, _ in found)


def test_credentials_by_state_and_streams_in_flight() -> None:
    metrics = Metrics()
    counts = {"active": 2, "cooling": 1, "invalid": 0}
    metrics.watch_credentials(lambda: counts)
    metrics.stream_started()
    metrics.stream_started()
    metrics.stream_ended()
    found = samples(metrics.exposition().decode())
    assert value(found, "gptomni2api_credentials", state="active") == 2
    assert value(found, "gptomni2api_credentials", state="cooling") == 1
    assert value(found, "gptomni2api_streams_in_flight") == 1
    counts["active"], counts["invalid"] = 1, 1  # read again at every scrape
    found = samples(metrics.exposition().decode())
    assert value(found, "gptomni2api_credentials", state="invalid") == 1


def test_two_apps_in_one_process_do_not_share_samples() -> None:
    first, second = Metrics(), Metrics()
    info, finished = finished_request(route="/health", status=200)
    first.observe(info, finished)
    assert (
        "gptomni2api_requests_total",
        frozenset({("route", "/health"), ("status", "200"), ("model", "none")}),
    ) in (samples(first.exposition().decode()))
    assert not any(name == "gptomni2api_requests_total" for name, _ in samples(second.exposition().decode()))


def test_dead_workers_live_gauges_are_forgotten(tmp_path: Path) -> None:
    for name in (
        "gauge_livesum_111.db",
        "gauge_livemostrecent_111.db",
        "gauge_livesum_222.db",
        "counter_111.db",
    ):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(tmp_path, alive=lambda pid: pid == 222) == [111]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_111.db", "gauge_livesum_222.db"]


def test_prepare_multiprocess_makes_a_fresh_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(MULTIPROC_ENV)
    made = prepare_multiprocess()
    try:
        assert made is not None and made.is_dir() and not any(made.iterdir())
        assert os.environ[MULTIPROC_ENV] == str(made)
    finally:
        if made is not None:
            made.rmdir()


def test_prepare_multiprocess_empties_a_given_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    assert prepare_multiprocess() is None  # not ours to delete at exit
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


WORKER = """
import sys
from pathlib import Path
from app.observability.context import RequestInfo
from app.observability.metrics import Metrics
metrics = Metrics(Path(sys.argv[1]))
info = RequestInfo(request_id="r", method="GET", route="/v1/models", status=200)
metrics.observe(info, info.started_at + 0.1)
metrics.stream_started()  # and exits without ending it, as a crashed worker would
if sys.argv[2] == "scrape":
    sys.stdout.write(metrics.exposition().decode())
"""


def test_samples_of_several_processes_are_merged(tmp_path: Path) -> None:
    env = base_env() | {MULTIPROC_ENV: str(tmp_path)}

    def run(mode: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", WORKER, str(tmp_path), mode],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    run("observe")
    run("observe")
    found = samples(run("scrape"))
    assert value(found, "gptomni2api_requests_total", route="/v1/models", status="200", model="none") == 3
    assert value(found, "gptomni2api_request_duration_seconds_count", route="/v1/models", model="none") == 3
    # Only the scraping process is alive: the streams the others left "in flight" are dropped.
    assert value(found, "gptomni2api_streams_in_flight") == 1
