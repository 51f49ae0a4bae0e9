"""Legacy `POST /v1/completions` end to end, with the official `openai` SDK as the client."""

from __future__ import annotations

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
