"""OpenAI `chat.completion.chunk` SSE encoding and the `chat.completion` body."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.sse import KEEPALIVE, sse_event
from app.surfaces.openai_chat.encode import (
    DONE,
    ChunkEncoder,
    completion_body,
    completion_id,
    error_event,
)

TRICKY = 'He said "hi"\n\ttab \\ back\r\n你好 😀 </script> \u2028 \x00 end'
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
TOOL_DELTA = {
    "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
}


def parse(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    body = event[len(b"data: ") : -2]
    assert b"\n" not in body  # one line: nothing could end the event early
    assert b"\r" not in body
    payload = json.loads(body)
    assert isinstance(payload, dict)
    return payload


def all_chunks(encoder: ChunkEncoder) -> list[bytes]:
    return [
        encoder.role(),
        encoder.content("Hello"),
        encoder.content(TRICKY),
        encoder.content(""),
        encoder.delta(TOOL_DELTA),
        encoder.finish("stop"),
    ]


@pytest.mark.parametrize("include_usage", [False, True])
def test_every_chunk_shares_id_created_model_and_object(include_usage: bool) -> None:
    before = int(time.time())
    encoder = ChunkEncoder("gptomni", include_usage=include_usage)
    chunks = [parse(chunk) for chunk in all_chunks(encoder)]
    chunks.append(parse(encoder.usage(USAGE)))
    assert encoder.id.startswith("chatcmpl-")
    assert before <= encoder.created <= int(time.time())
    for chunk in chunks:
        assert chunk["id"] == encoder.id
        assert chunk["created"] == encoder.created
        assert chunk["model"] == "gptomni"
        assert chunk["object"] == "chat.completion.chunk"


def test_given_id_is_used() -> None:
    encoder = ChunkEncoder("m", id_="chatcmpl-fixed")
    assert parse(encoder.content("x"))["id"] == "chatcmpl-fixed"
    assert parse(encoder.role())["id"] == "chatcmpl-fixed"


def test_role_chunk() -> None:
    chunk = parse(ChunkEncoder("gptomni").role())
    (choice,) = chunk["choices"]
    assert choice["index"] == 0
    assert choice["delta"]["role"] == "assistant"
    assert choice["finish_reason"] is None


@pytest.mark.parametrize("text", ["Hello", "", TRICKY, '"content":""', "a" * 10_000])
def test_content_round_trips(text: str) -> None:
    chunk = parse(ChunkEncoder("gptomni").content(text))
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in chunk


def test_model_with_quotes_and_unicode() -> None:
    model = 'we"ird "content":"" 模型'
    encoder = ChunkEncoder(model)
    chunk = parse(encoder.content("x"))
    assert chunk["model"] == model
    assert chunk["choices"][0]["delta"] == {"content": "x"}


def test_delta_chunk() -> None:
    chunk = parse(ChunkEncoder("gptomni").delta(TOOL_DELTA))
    assert chunk["choices"] == [{"index": 0, "delta": TOOL_DELTA, "logprobs": None, "finish_reason": None}]


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls"])
def test_finish_chunk(reason: str) -> None:
    chunk = parse(ChunkEncoder("gptomni").finish(reason))
    (choice,) = chunk["choices"]
    assert choice["finish_reason"] == reason
    assert choice["delta"] == {}
    assert choice["index"] == 0


def test_without_include_usage_no_chunk_carries_usage() -> None:
    for event in all_chunks(ChunkEncoder("gptomni")):
        assert "usage" not in parse(event)


def test_with_include_usage_every_chunk_has_null_usage() -> None:
    for event in all_chunks(ChunkEncoder("gptomni", include_usage=True)):
        chunk = parse(event)
        assert "usage" in chunk
        assert chunk["usage"] is None


def test_usage_chunk() -> None:
    chunk = parse(ChunkEncoder("gptomni", include_usage=True).usage(USAGE))
    assert chunk["choices"] == []
    assert chunk["usage"] == USAGE


def test_done_and_keepalive_bytes() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert KEEPALIVE == b": keep-alive\n\n"


def test_completion_ids_are_unique_and_plain() -> None:
    ids = {completion_id() for _ in range(200)}
    assert len(ids) == 200
    for id_ in ids:
        assert id_.startswith("chatcmpl-")
        assert id_.removeprefix("chatcmpl-").isalnum()


def test_sse_event_and_error_event() -> None:
    envelope = {"error": {"message": 'bad "x"\n', "type": "upstream_error", "param": None, "code": "cut_off"}}
    assert parse(error_event(envelope)) == envelope
    assert sse_event([1, "a"]) == b'data: [1,"a"]\n\n'


def test_completion_body_shape() -> None:
    body = completion_body(
        id_="chatcmpl-1", created=1700000000, model="gptomni", content="hi", finish_reason="stop", usage=USAGE
    )
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gptomni",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    json.dumps(body)  # serialisable as it stands


def test_completion_body_with_tool_calls() -> None:
    calls = TOOL_DELTA["tool_calls"]
    body = completion_body(
        id_="c", created=1, model="m", content=None, finish_reason="tool_calls", usage=USAGE, tool_calls=calls
    )
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == calls
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_completion_body_without_tool_calls_has_no_key() -> None:
    body = completion_body(id_="c", created=1, model="m", content="x", finish_reason="stop", usage=USAGE)
    assert "tool_calls" not in body["choices"][0]["message"]
    body = completion_body(
        id_="c", created=1, model="m", content="x", finish_reason="stop", usage=USAGE, tool_calls=[]
    )
    assert "tool_calls" not in body["choices"][0]["message"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(), model=st.text(min_size=1), include_usage=st.booleans())
def test_content_round_trips_for_any_text(text: str, model: str, include_usage: bool) -> None:
    encoder = ChunkEncoder(model, include_usage=include_usage)
    chunk = parse(encoder.content(text))
    assert chunk["choices"][0]["delta"] == {"content": text}
    assert chunk["model"] == model
    assert ("usage" in chunk) is include_usage
