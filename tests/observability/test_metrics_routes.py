"""`/metrics` on the real app: off without ADMIN_KEY, behind it otherwise, and parseable by
prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.server import create_app

ADMIN_KEY = "admin-key-0123456789-abcdef"


def client_for(**settings: object) -> Iterator[TestClient]:
    settings.setdefault("auth_disabled", True)
    app = create_app(Settings(_env_file=None, **settings))  # type: ignore[call-arg]
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    yield from client_for(admin_key=ADMIN_KEY)


def test_off_without_admin_key() -> None:
    for client in client_for():
        response = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_KEY}])
def test_needs_the_admin_key(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_key"


def test_the_api_key_is_not_the_admin_key() -> None:
    for client in client_for(admin_key=ADMIN_KEY, auth_disabled=False, api_master_key="sk-client-key-123456"):
        response = client.get("/metrics", headers={"Authorization": "Bearer sk-client-key-123456"})
        assert response.status_code == 401


def test_parses_and_shows_a_request_after_it_is_made(client: TestClient) -> None:
    def requests_total() -> dict[tuple[str, str, str], float]:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        assert {
            "gptomni2api_requests",
            "gptomni2api_time_to_first_byte_seconds",
            "gptomni2api_request_duration_seconds",
            "gptomni2api_upstream_outcomes",
            "gptomni2api_credentials",
            "gptomni2api_streams_in_flight",
        } <= set(families)
        return {
            (s.labels["route"], s.labels["status"], s.labels["model"]): s.value
            for s in families["gptomni2api_requests"].samples
            if s.name == "gptomni2api_requests_total"
        }

    assert ("/v1/models", "200", "none") not in requests_total()
    assert client.get("/v1/models").status_code == 200
    assert requests_total()[("/v1/models", "200", "none")] == 1
    assert client.get("/v1/models/nope").status_code == 404
    assert requests_total()[("/v1/models/{model_id:path}", "404", "none")] == 1
