"""The access middleware on a small FastAPI app: request id in and out, one line per request with
the route template, and what the handler (or its streaming body, in another task) noted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse, StreamingResponse

from app.observability.access import (
    AccessLogMiddleware,
    carries_content,
    format_access_line,
    with_request_id,
)
from app.observability.context import note_credential, note_model, note_upstream_outcome
from app.observability.metrics import Metrics

ACCESS = "gptomni2api.access"


def test_format_access_line_is_logfmt() -> None:
    line = format_access_line({"a": 1, "b": None, "c": "two words", "d": 'say "hi"', "e": "", "f": "k=v"})
    assert line == 'a=1 b=- c="two words" d="say \\"hi\\"" e="" f="k=v"'


def test_a_control_character_cannot_forge_a_line() -> None:
    assert format_access_line({"a": "x\ny=1"}) == 'a="x\\ny=1"'


def test_with_request_id_replaces_any_earlier_one() -> None:
    headers = [(b"content-type", b"application/json"), (b"X-Request-ID", b"old")]
    assert with_request_id(headers, "new") == [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"new"),
    ]


@pytest.mark.parametrize(
    ("body", "expected"), [(b"", False), (b": keep-alive\n\n", False), (b"data: {}\n\n", True)]
)
def test_keepalive_comments_are_not_content(body: bytes, expected: bool) -> None:
    assert carries_content(body) is expected


def build(metrics: Metrics) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    seen_in_flight: list[float] = []
    app.state.seen_in_flight = seen_in_flight

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> JSONResponse:
        note_model("m1")
        note_credential("cred01")
        note_upstream_outcome("timeout")
        note_upstream_outcome("ok")
        return JSONResponse({"id": item_id})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b": keep-alive\n\n"
            await asyncio.sleep(0.2)
            note_model("m2")  # from the body's own task
            seen_in_flight.append(metrics.registry.get_sample_value("gptomni2api_streams_in_flight"))
            yield b'data: {"x": 1}\n\n'

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(metrics: Metrics) -> Iterator[TestClient]:
    with TestClient(build(metrics), raise_server_exceptions=False) as test_client:
        yield test_client


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS]


def fields(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in line.split(" "))


def test_one_line_with_the_route_template_and_the_noted_facts(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = client.get("/items/42", headers={"X-Request-ID": "given-id-1"})
    assert response.headers["x-request-id"] == "given-id-1"
    (line,) = access_lines(caplog)
    got = fields(line)
    assert got["request_id"] == "given-id-1"
    assert got["route"] == "/items/{item_id}"
    assert (got["method"], got["status"], got["model"], got["credential"]) == ("GET", "200", "m1", "cred01")
    assert got["upstream"] == "ok"
    assert got["bytes"] == str(len(response.content))
    assert int(got["duration_ms"]) >= 0 and int(got["ttfb_ms"]) >= 0


def test_a_made_up_request_id_is_returned(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = client.get("/items/1", headers={"X-Request-ID": "not acceptable!"})
    made = response.headers["x-request-id"]
    assert made != "not acceptable!"
    assert fields(access_lines(caplog)[0])["request_id"] == made


def test_stream_notes_from_its_body_task_and_counts_in_flight(
    client: TestClient, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    response = client.get("/stream")
    assert response.status_code == 200
    got = fields(access_lines(caplog)[0])
    assert (got["model"], got["stream"]) == ("m2", "True")
    # The keep-alive comment went out at once; the first byte that counts came after the pause.
    assert int(got["ttfb_ms"]) >= 150
    assert client.app.state.seen_in_flight == [1.0]  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value("gptomni2api_streams_in_flight") == 0


def test_unmatched_path_and_unhandled_error(
    client: TestClient, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    assert client.get("/no/such/path/123").status_code == 404
    assert client.get("/boom").status_code == 500
    first, second = (fields(line) for line in access_lines(caplog))
    assert (first["route"], first["status"]) == ("unmatched", "404")
    assert (second["route"], second["status"]) == ("/boom", "500")
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    labels = [s.labels for s in families["gptomni2api_requests"].samples if s.name.endswith("_total")]
    assert {"route": "unmatched", "status": "404", "model": "none"} in labels
    assert all("/no/such" not in label["route"] for label in labels)


def test_health_checks_are_logged_at_debug(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    client.get("/health")
    (record,) = [r for r in caplog.records if r.name == ACCESS]
    assert record.levelno == logging.DEBUG
