"""Legacy `POST /v1/completions` end to end, with the official `openai` SDK as the client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

GOOD = "session=completions-good-aaaaaaaaaaaaaaaa"


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    gw = Gateway(workdir, gateway_settings(emulator, [GOOD], MODEL_ALIASES="gpt-3.5*=gptomni"), name="legacy")
    yield gw
    gw.stop()


def test_create(gateway: Gateway) -> None:
    client = gateway.openai()
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="<<<EMU_REPLY\nOnce upon a time\nEMU_REPLY>>>"
    )
    assert completion.object == "text_completion"
    assert completion.model == "gpt-3.5-turbo-instruct"
    assert completion.choices[0].text == "Once upon a time"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_stream_with_stop_and_usage(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = client.completions.create(
        model="gptomni",
        prompt=["<<<EMU_REPLY\none two three four five six\nEMU_REPLY>>>"],
        stop=["four"],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "one two three "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_max_tokens_is_length(gateway: Gateway) -> None:
    completion = gateway.openai().completions.create(
        model="gptomni", prompt="<<<EMU_REPLY\n" + "word " * 50 + "\nEMU_REPLY>>>", max_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"


def test_errors_are_openai_envelopes(gateway: Gateway) -> None:
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="gptomni", prompt=["a", "b"])
    assert info.value.body["param"] == "prompt"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    response = httpx.post(
        f"{gateway.url}/v1/completions",
        json={"model": "gptomni", "prompt": "x"},
        headers={"x-api-key": "bad"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert MASTER_KEY not in response.text


BAD = "session=completions-bad-bbbbbbbbbbbbbbbbbbbb"


def scripted(reply: str, **options: Any) -> str:
    directive = " ".join(f"{k}={v}" for k, v in options.items())
    return f"[[emu {directive}]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"


def sse_data(raw: str) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


def test_a_failing_credential_fails_over(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [BAD, GOOD]))
    emulator.fault("completions-bad-bbbb", status=500)
    try:
        before = emulator.stats()["by_cookie"]
        for stream in (False, True):
            for _ in range(2):  # round-robin starts each request on the next credential
                reply = gw.openai().completions.create(
                    model="gptomni", prompt="<<<EMU_REPLY\nsaved\nEMU_REPLY>>>", stream=stream
                )
                chunks = list(reply) if stream else [reply]
                assert "".join(c.choices[0].text for c in chunks if c.choices) == "saved"
    finally:
        emulator.fault("completions-bad-bbbb")
    after = emulator.stats()["by_cookie"]
    assert after.get(BAD, 0) > before.get(BAD, 0)  # the bad one was tried, and failed over from


def test_keep_alive_comments_while_the_upstream_is_silent(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [GOOD], KEEPALIVE_INTERVAL="0.3"))
    body = {"model": "gptomni", "prompt": scripted("late", body_delay=1.2), "stream": True}
    response = httpx.post(
        f"{gw.url}/v1/completions", json=body, headers={"x-api-key": MASTER_KEY}, timeout=30
    )
    assert response.status_code == 200
    assert ": keep-alive\n\n" in response.text
    assert "".join(d["choices"][0]["text"] for d in sse_data(response.text) if d["choices"]) == "late"
    assert response.text.endswith("data: [DONE]\n\n")


def test_client_disconnect_cancels_the_upstream(gateway: Gateway, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    stream = gateway.openai().completions.create(
        model="gptomni", prompt=scripted("slow " * 50, duration=10, chunk_size=5), stream=True
    )
    pieces = iter(stream)
    next(pieces)
    next(pieces)
    stream.close()
    closed_at = time.monotonic()
    while emulator.stats()["disconnects"] == before:
        assert time.monotonic() - closed_at < 1.0, "the upstream request was not cancelled within 1 s"
        time.sleep(0.02)


def test_failure_mid_stream_is_an_error_event(gateway: Gateway) -> None:
    body = {"model": "gptomni", "prompt": scripted("a" * 400, cut=40, chunk_size=20), "stream": True}
    response = httpx.post(
        f"{gateway.url}/v1/completions", json=body, headers={"x-api-key": MASTER_KEY}, timeout=30
    )
    assert response.status_code == 200
    events = sse_data(response.text)
    assert events[0]["object"] == "text_completion"
    assert events[-1]["error"]["code"] == "upstream_cut_off"
    assert "[DONE]" not in response.text
    with pytest.raises(openai.APIError):
        list(gateway.openai().completions.create(**body))
