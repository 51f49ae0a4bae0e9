"""Legacy Completions: the request decoded into a one-turn job, and text_completion objects out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from app.core.errors import GatewayError
from app.core.events import (
    Completion,
    Event,
    Failed,
    Finished,
    FinishReason,
    KeepAlive,
    Started,
    TextDelta,
    Usage,
)
from app.core.job import Turn
from app.surfaces.completions.encode import body_of, encode_stream
from app.surfaces.completions.wire import decode, parse_completion_request


def parse(body: dict[str, Any]) -> Any:
    return parse_completion_request(json.dumps(body).encode())


def error_of(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        decode(parse(body))
    return info.value


def test_prompt_string_becomes_one_user_turn() -> None:
    job = decode(parse({"model": "m", "prompt": "Say hi", "max_tokens": 5, "stop": "\n", "stream": True}))
    assert job.turns == [Turn("user", "Say hi")]
    assert (job.model, job.max_tokens, job.stops, job.stream) == ("m", 5, ["\n"], True)
    assert job.tools == []


def test_prompt_list_of_one() -> None:
    assert decode(parse({"model": "m", "prompt": ["only"]})).turns == [Turn("user", "only")]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "prompt": ["a", "b"]}, "prompt", "batches"),
        ({"model": "m", "prompt": []}, "prompt", "batches"),
        ({"model": "m", "prompt": [[1, 2, 3]]}, "prompt", "token arrays"),
        ({"model": "m", "prompt": "x", "suffix": "tail"}, "suffix", "suffix"),
    ],
)
def test_what_a_text_upstream_cannot_do_is_a_400(body: dict[str, Any], param: str, words: str) -> None:
    error = error_of(body)
    assert (error.status, error.param) == (400, param)
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": "x", "n": 2}, "n"),
        ({"model": "m", "prompt": "x", "logprobs": 3}, "logprobs"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_fields_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_whole_body() -> None:
    completion = Completion("Hello", finish=Finished(FinishReason.LENGTH, Usage(4, 2)))
    assert body_of(completion, "gpt-3.5-turbo-instruct", id_="cmpl-1", created=7) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 7,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    echoed = body_of(Completion(" there"), "m", echo="Hi")
    assert echoed["choices"][0]["text"] == "Hi there"


def run(events: list[Event], **options: Any) -> bytes:
    async def source() -> AsyncIterator[Event]:
        for event in events:
            yield event

    async def collect() -> bytes:
        return b"".join(
            [piece async for piece in encode_stream(source(), "m", id_="cmpl-1", created=7, **options)]
        )

    return anyio.run(collect)


HEAD = '"id":"cmpl-1","object":"text_completion","created":7,"model":"m"'
USAGE = '{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}'


def test_stream_bytes_exactly() -> None:
    events: list[Event] = [
        KeepAlive(),
        Started(),
        TextDelta("Hel"),
        TextDelta("lo"),
        Finished(FinishReason.STOP_SEQUENCE, Usage(3, 1), "\n"),
    ]
    assert run(events, include_usage=True).decode() == (
        ": keep-alive\n\n"
        f'data: {{{HEAD},"choices":[{{"text":"Hel","index":0,"logprobs":null,"finish_reason":null}}]}}\n\n'
        f'data: {{{HEAD},"choices":[{{"text":"lo","index":0,"logprobs":null,"finish_reason":null}}]}}\n\n'
        f'data: {{{HEAD},"choices":[{{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}}]}}\n\n'
        f'data: {{{HEAD},"choices":[],"usage":{USAGE}}}\n\n'
        "data: [DONE]\n\n"
    )


def test_stream_echo_leads_and_failure_is_an_error_event() -> None:
    failure = GatewayError(502, "upstream cut off", type="upstream_error", code="upstream_cut_off")
    out = run([Started(), TextDelta("x"), Failed(failure)], echo="Q: ")
    lines = [line for line in out.decode().split("\n\n") if line]
    assert json.loads(lines[0].removeprefix("data: "))["choices"][0]["text"] == "Q: "
    assert json.loads(lines[1].removeprefix("data: "))["choices"][0]["text"] == "x"
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "error": {
            "message": "upstream cut off",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_cut_off",
        }
    }
    assert b"[DONE]" not in out
