"""Strict parsing of the Chat Completions request into one OpenAI-style ApiError naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.core.errors import GatewayError as ApiError
from app.core.errors import invalid_request
from app.http.errors import openai_envelope
from app.surfaces.openai_chat.wire import ChatCompletionRequest, parse_chat_request

MINIMAL: dict[str, Any] = {"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes: Any) -> bytes:
    data = {**MINIMAL, **changes}
    for key in [k for k, v in changes.items() if v is ...]:
        del data[key]
    return json.dumps(data).encode()


def parse_error(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(raw)
    return info.value


def test_minimal_request() -> None:
    request = parse_chat_request(body())
    assert isinstance(request, ChatCompletionRequest)
    assert request.model == "gptomni"
    assert [(m.role, m.content) for m in request.messages] == [("user", "hi")]
    assert request.stream is False
    assert request.include_usage is False
    assert request.temperature is None
    assert request.n is None


def test_full_request() -> None:
    request = parse_chat_request(
        body(
            messages=[
                {"role": "system", "content": "s"},
                {"role": "developer", "content": "d"},
                {"role": "user", "content": [{"type": "text", "text": "t"}], "name": "alice"},
                {"role": "assistant", "content": "a"},
                {"role": "tool", "content": "r", "tool_call_id": "call_1"},
            ],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=1,
            max_tokens=5,
            stop=["a", "b", "c", "d"],
            n=1,
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice="auto",
        )
    )
    assert request.stream is True
    assert request.include_usage is True
    assert request.stop == ["a", "b", "c", "d"]
    assert request.messages[2].name == "alice"
    assert request.messages[4].tool_call_id == "call_1"


def test_unknown_top_level_fields_are_accepted() -> None:
    request = parse_chat_request(body(logit_bias={"50256": -100}, metadata={"x": 1}, store=False, foo="bar"))
    assert request.model == "gptomni"


def test_assistant_with_tool_calls_and_null_content_is_valid() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = parse_chat_request(
        body(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "r"},
            ]
        )
    )
    assert request.messages[1].content is None
    assert request.messages[1].tool_calls == [call]


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"model": "x",}', b"\xff\xfe"],
)
def test_non_json_is_invalid_json(raw: bytes) -> None:
    error = parse_error(raw)
    assert error.status == 400
    assert error.code == "invalid_json"
    assert error.type == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"42", b"null"])
def test_non_object_json_is_refused(raw: bytes) -> None:
    error = parse_error(raw)
    assert error.status == 400
    assert error.code == "invalid_json"
    assert error.param is None


INVALID = [
    # (id, changes, param)
    ("missing model", {"model": ...}, "model"),
    ("empty model", {"model": ""}, "model"),
    ("model number", {"model": 4}, "model"),
    ("missing messages", {"messages": ...}, "messages"),
    ("empty messages", {"messages": []}, "messages"),
    ("messages object", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("message not object", {"messages": ["hi"]}, "messages[0]"),
    ("wrong role", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ("missing role", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("content number", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("content object", {"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
    (
        "part without type",
        {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
        "messages[0].content",
    ),
    ("part not object", {"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content"),
    ("user null content", {"messages": [{"role": "user", "content": None}]}, "messages[0]"),
    ("user no content", {"messages": [{"role": "user"}]}, "messages[0]"),
    (
        "assistant no content",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
        "messages[1]",
    ),
    (
        "second message role",
        {"messages": [{"role": "user", "content": "q"}, {"role": "x", "content": "y"}]},
        "messages[1].role",
    ),
    ("stream string", {"stream": "yes"}, "stream"),
    ("stream int", {"stream": 1}, "stream"),
    ("include_usage string", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("temperature 3", {"temperature": 3}, "temperature"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("temperature string", {"temperature": "1"}, "temperature"),
    ("top_p 1.5", {"top_p": 1.5}, "top_p"),
    ("n 2", {"n": 2}, "n"),
    ("n 0", {"n": 0}, "n"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens float", {"max_tokens": 1.5}, "max_tokens"),
    ("presence_penalty 3", {"presence_penalty": 3}, "presence_penalty"),
    ("stop list of 5", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop number", {"stop": 5}, "stop"),
]


@pytest.mark.parametrize(("changes", "param"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_requests_name_the_param(changes: dict[str, Any], param: str) -> None:
    error = parse_error(body(**changes))
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert error.message
    assert not error.message.startswith("Value error")


def test_missing_field_message() -> None:
    assert parse_error(body(model=...)).message == "Missing required parameter: 'model'."


def test_invalid_value_message_names_the_param() -> None:
    error = parse_error(body(temperature=3))
    assert error.message.startswith("Invalid value for 'temperature':")


def test_envelope_has_exactly_the_openai_keys() -> None:
    error = parse_error(body(n=2))
    envelope = openai_envelope(error)
    assert list(envelope) == ["error"]
    assert set(envelope["error"]) == {"message", "type", "param", "code"}
    assert envelope["error"]["param"] == "n"
    assert envelope["error"]["type"] == "invalid_request_error"
    assert envelope["error"]["message"] == error.message
    json.dumps(envelope)


def test_api_error_defaults_and_invalid_request() -> None:
    error = ApiError(503, "no credential", type="service_unavailable", code="no_credentials")
    assert openai_envelope(error) == {
        "error": {
            "message": "no credential",
            "type": "service_unavailable",
            "param": None,
            "code": "no_credentials",
        }
    }
    assert error.headers == {}
    assert str(error) == "no credential"
    bad = invalid_request("bad", param="messages[0]", code="x")
    assert (bad.status, bad.type, bad.param, bad.code) == (400, "invalid_request_error", "messages[0]", "x")
