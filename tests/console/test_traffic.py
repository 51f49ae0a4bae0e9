"""The traffic ring buffer, on a clock the test moves; and the access middleware feeding it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse, StreamingResponse

from app.observability.access import AccessLogMiddleware, counts_as_traffic
from app.observability.context import note_first_byte, note_model
from app.observability.metrics import Metrics
from app.observability.traffic import TrafficBuffer, outcome_of, percentile

START = 1_800_000_000.0  # on a minute boundary


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def test_outcome_of() -> None:
    assert [outcome_of(s) for s in (200, 201, 304, 400, 401, 429, 499, 500, 502, 503)] == [
        "ok", "ok", "ok", "client_error", "client_error", "client_error", "client_error",
        "upstream_error", "upstream_error", "upstream_error",
    ]  # fmt: skip


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, any order
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([1.0, 2.0], 50) == 1.0


def test_an_hour_of_minutes_oldest_first() -> None:
    clock = Clock()
    buffer = TrafficBuffer(clock)
    snapshot = buffer.snapshot()
    assert len(snapshot["minutes"]) == 60
    assert snapshot["minutes"][-1]["minute"] == "2027-01-15T08:00Z"
    assert snapshot["minutes"][0]["minute"] == "2027-01-15T07:01Z"
    assert all(m["ok"] == 0 and m["ttft_p50_ms"] is None for m in snapshot["minutes"])


def test_requests_land_in_their_minute_by_outcome() -> None:
    clock = Clock()
    buffer = TrafficBuffer(clock)
    buffer.record(200, 0.1)
    buffer.record(200, 0.3)
    buffer.record(429)
    clock.now += 60
    buffer.record(502)
    minutes = buffer.snapshot()["minutes"]
    assert (minutes[-2]["ok"], minutes[-2]["client_error"], minutes[-2]["upstream_error"]) == (2, 1, 0)
    assert (minutes[-2]["ttft_p50_ms"], minutes[-2]["ttft_p99_ms"]) == (100, 300)
    assert (minutes[-1]["ok"], minutes[-1]["upstream_error"], minutes[-1]["ttft_p50_ms"]) == (0, 1, None)


def test_a_minute_older_than_an_hour_is_forgotten() -> None:
    clock = Clock()
    buffer = TrafficBuffer(clock)
    buffer.record(200)
    clock.now += 59 * 60
    assert buffer.snapshot()["minutes"][0]["ok"] == 1
    clock.now += 60
    assert sum(m["ok"] for m in buffer.snapshot()["minutes"]) == 0
    buffer.record(200)  # reuses the slot of the forgotten minute
    assert [m["ok"] for m in buffer.snapshot()["minutes"]].count(1) == 1


def test_streams_in_flight_peak_and_quiet_minutes() -> None:
    clock = Clock()
    buffer = TrafficBuffer(clock)
    buffer.stream_started()
    buffer.stream_started()
    buffer.stream_ended()
    assert buffer.snapshot()["streams_in_flight"] == 1
    clock.now += 3 * 60  # nothing happens for three minutes: the stream was in flight all along
    minutes = buffer.snapshot()["minutes"]
    assert [m["streams_peak"] for m in minutes[-4:]] == [2, 1, 1, 1]
    buffer.stream_ended()
    buffer.stream_ended()  # never below zero
    clock.now += 60
    assert buffer.snapshot()["streams_in_flight"] == 0
    assert buffer.snapshot()["minutes"][-1]["streams_peak"] == 0


def test_time_to_first_token_samples_are_bounded() -> None:
    clock = Clock()
    buffer = TrafficBuffer(clock, samples=50, rng=random.Random(7))
    for index in range(5000):
        buffer.record(200, 1.0 if index % 100 else 9.0)  # 1% slow
    minute = buffer.snapshot()["minutes"][-1]
    assert minute["ok"] == 5000
    assert minute["ttft_p50_ms"] == 1000
    ring = [b for b in buffer._ring if b is not None]
    assert len(ring) == 1 and len(ring[0].ttft) == 50


def test_counts_as_traffic() -> None:
    assert counts_as_traffic("/v1/chat/completions")
    assert counts_as_traffic("/v1/messages")
    assert counts_as_traffic("/admin/try")
    assert counts_as_traffic("/v1/models/{model_id:path}")
    for route in (
        None,
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/admin",
        "/admin/",
        "/admin/credentials",
        "/admin/traffic",
        "/admin/session",
    ):
        assert not counts_as_traffic(route)


def test_the_access_middleware_feeds_the_buffer() -> None:
    clock = Clock()
    traffic = TrafficBuffer(clock)
    app = FastAPI()

    @app.post("/v1/chat")
    async def chat() -> StreamingResponse:
        note_model("gptomni")

        async def body() -> AsyncIterator[bytes]:
            note_first_byte()
            yield b"data: {}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/v1/bad")
    async def bad() -> JSONResponse:
        return JSONResponse({"error": {}}, status_code=503)

    @app.get("/admin/credentials")
    async def listing() -> JSONResponse:
        return JSONResponse({})

    app.add_middleware(AccessLogMiddleware, metrics=Metrics(), traffic=traffic)
    with TestClient(app) as client:
        assert client.post("/v1/chat").status_code == 200
        assert client.get("/v1/bad").status_code == 503
        assert client.get("/admin/credentials").status_code == 200  # the console's own polling
        assert client.get("/nowhere").status_code == 404  # no route: not the API's traffic
    minute = traffic.snapshot()["minutes"][-1]
    assert (minute["ok"], minute["client_error"], minute["upstream_error"]) == (1, 0, 1)
    assert minute["ttft_p50_ms"] is not None and minute["streams_peak"] == 1
    assert traffic.snapshot()["streams_in_flight"] == 0
