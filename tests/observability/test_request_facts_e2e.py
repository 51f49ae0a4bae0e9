"""A real gateway (uvicorn, the emulator upstream): chat requests show up in `/metrics` and in the
access log, with what only the chat service knows (model, credential, upstream outcome)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.credentials.pool import credential_id
from tests.conftest import Emulator, Gateway, gateway_settings

COOKIE = "session=request-facts-cookie-0123456789"
ADMIN_KEY = "admin-key-request-facts-0123456789"
PROMPT = "[[emu duration=0.5 chunk_size=8]]\n<<<EMU_REPLY\nCounted and timed.\nEMU_REPLY>>>"


def chat_twice(gateway: Gateway) -> None:
    client = gateway.openai()
    messages = [{"role": "user", "content": PROMPT}]
    assert client.chat.completions.create(model="gptomni", messages=messages).choices[0].message.content
    assert "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gptomni", messages=messages, stream=True)
        if c.choices
    )


def scrape(gateway: Gateway) -> list[Any]:
    response = httpx.get(
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    assert response.status_code == 200
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def chat_access_lines(gateway: Gateway, expect: int) -> list[str]:
    deadline = time.monotonic() + 5
    while True:  # the line is written just after the last byte left
        lines = [ln for ln in gateway.log().splitlines() if "route=/v1/chat/completions" in ln]
        if len(lines) >= expect or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.fixture
def gateway(start_gateway: Any, emulator: Emulator) -> Gateway:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN_KEY), name="facts")
    return gw


def test_chat_requests_are_counted_timed_and_logged(gateway: Gateway) -> None:
    chat_twice(gateway)
    samples = scrape(gateway)

    def total(name: str) -> float:
        return sum(
            s.value for s in samples if s.name == name and s.labels.get("route") == "/v1/chat/completions"
        )

    assert total("gptomni2api_requests_total") == 2
    assert total("gptomni2api_time_to_first_byte_seconds_count") == 2
    assert total("gptomni2api_request_duration_seconds_count") == 2
    in_flight = [s.value for s in samples if s.name == "gptomni2api_streams_in_flight"]
    assert in_flight == [0]
    active = [
        s.value for s in samples if s.name == "gptomni2api_credentials" and s.labels["state"] == "active"
    ]
    assert active == [1]

    lines = chat_access_lines(gateway, expect=2)
    assert len(lines) == 2
    assert all(re.search(r"status=200 .*ttfb_ms=\d+ duration_ms=\d+ bytes=\d+", ln) for ln in lines)
    assert sorted(re.search(r" stream=(\w+)", ln).group(1) for ln in lines) == ["False", "True"]  # type: ignore[union-attr]
    assert COOKIE not in gateway.log()


def test_the_chat_service_notes_model_credential_and_outcome(gateway: Gateway) -> None:
    chat_twice(gateway)
    samples = scrape(gateway)
    by_model = {
        s.labels["model"]: s.value
        for s in samples
        if s.name == "gptomni2api_requests_total" and s.labels["route"] == "/v1/chat/completions"
    }
    assert by_model == {"gptomni": 2}
    ok = [
        s.value
        for s in samples
        if s.name == "gptomni2api_upstream_outcomes_total" and s.labels["outcome"] == "ok"
    ]
    assert ok == [2]
    for line in chat_access_lines(gateway, expect=2):
        assert f"model=gptomni credential={credential_id(COOKIE)} upstream=ok " in line
