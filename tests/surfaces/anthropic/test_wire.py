"""Anthropic Messages requests -> `Job` (and every 400), the `message` body, and the error envelope."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import Message

from app.core.errors import GatewayError
from app.core.events import CalledTool, Completion, Finished, FinishReason, Usage
from app.core.job import Job, ToolCall, ToolChoice, ToolSpec, Turn
from app.surfaces.anthropic.wire import decode_count_tokens, decode_messages, error_envelope, message_body

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[3]
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def decode(data: Any) -> Job:
    return decode_messages(json.dumps(data).encode())


def rejected(data: Any) -> GatewayError:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(GatewayError) as caught:
        decode_messages(raw)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


# --- decode: what goes in -----------------------------------------------------------------------


def test_a_claude_code_request_decodes_to_the_golden_job() -> None:
    job = decode_messages((GOLDEN / "claude_code.request.json").read_bytes())
    actual = (json.dumps(dataclasses.asdict(job), indent=2, ensure_ascii=False) + "\n").encode()
    path = GOLDEN / "claude_code.job.json"
    if UPDATE:
        path.write_bytes(actual)
    assert actual == path.read_bytes()


def test_the_golden_job_in_objects() -> None:
    job = decode_messages((GOLDEN / "claude_code.request.json").read_bytes())
    assert job.model == "claude-sonnet-4-5-20250929"
    assert job.max_tokens == 32000 and job.stream is True
    assert job.turns == [
        Turn(
            "system",
            "You are Claude Code, Anthropic's official CLI for Claude.\n\n"
            "You are an interactive CLI tool that helps users with software engineering tasks.",
        ),
        Turn("user", "<system-reminder>Context.</system-reminder>\nWhat is the weather in Paris?"),
        Turn(
            "assistant",
            "I will look it up.",
            tool_calls=(
                ToolCall("toolu_01A09q90qw90lq917835lq9", "get_weather", {"city": "Paris", "units": ["c"]}),
            ),
        ),
        Turn("tool", "18 °C, sunny", name="get_weather", call_id="toolu_01A09q90qw90lq917835lq9"),
        Turn("tool", "Error: boom", name=None, call_id="toolu_unknown"),
        Turn("user", "Thanks. And tomorrow?"),
    ]
    assert [t.name for t in job.tools] == ["get_weather", "mcp__files__read"]
    assert job.tools[0].description == "Get the weather."
    assert job.tools[0].parameters["required"] == ["city"]
    assert job.tools[1] == ToolSpec("mcp__files__read", None, {"type": "object", "properties": {}})
    assert job.tool_choice == ToolChoice("auto", None, parallel=False)
    assert job.stops == ["\n\nHuman:"]  # an empty stop sequence stops nothing


def test_a_minimal_request() -> None:
    job = decode(body())
    assert job == Job(model="claude-x", turns=[Turn("user", "hi")], max_tokens=64, stream=False)


def test_system_as_a_string_comes_first() -> None:
    job = decode(body(system="Be terse."))
    assert job.turns == [Turn("system", "Be terse."), Turn("user", "hi")]


def test_empty_system_and_empty_messages_leave_no_turn() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": []},
    ]
    assert decode(body(system=[], messages=messages)).turns == [Turn("user", "hi")]


def test_a_trailing_assistant_message_is_kept_as_a_prefill() -> None:
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "The colour is"},
    ]
    assert decode(body(messages=messages)).turns[-1] == Turn("assistant", "The colour is")


def test_text_after_a_tool_result_keeps_its_place() -> None:
    messages = [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "before"},
                {"type": "tool_result", "tool_use_id": "t1"},
                {"type": "text", "text": "after"},
            ],
        },
    ]
    assert decode(body(messages=messages)).turns == [
        Turn("assistant", "", tool_calls=(ToolCall("t1", "f", {}),)),
        Turn("user", "before"),
        Turn("tool", "", name="f", call_id="t1"),
        Turn("user", "after"),
    ]


@pytest.mark.parametrize(
    ("is_error", "text"), [(True, "Error: out of range"), (False, "out of range"), (None, "out of range")]
)
def test_a_failed_tool_says_so(is_error: bool | None, text: str) -> None:
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "out of range", "is_error": is_error}
    assert decode(body(messages=user_blocks(result))).turns == [Turn("tool", text, call_id="t1")]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto")),
        ({"type": "auto"}, ToolChoice("auto")),
        ({"type": "any"}, ToolChoice("required")),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoice("required", None, False)),
        ({"type": "tool", "name": "f"}, ToolChoice("required", "f")),
        (
            {"type": "tool", "name": "f", "disable_parallel_tool_use": False},
            ToolChoice("required", "f", True),
        ),
        ({"type": "none"}, ToolChoice("none")),
    ],
)
def test_tool_choice(choice: Any, expected: ToolChoice) -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert decode(body(tools=tools, tool_choice=choice)).tool_choice == expected


def test_auto_and_none_need_no_tools() -> None:
    assert decode(body(tool_choice={"type": "auto"})).tool_choice == ToolChoice("auto")
    assert decode(body(tool_choice={"type": "none"})).tools == []


def test_ignored_fields_are_accepted_when_well_typed() -> None:
    job = decode(
        body(
            temperature=0,
            top_p=1,
            top_k=0,
            metadata={"user_id": None},
            thinking={"type": "disabled"},
            stream=None,
            tools=None,
            tool_choice=None,
            stop_sequences=None,
            system=None,
            anything_new={"nested": [1, 2]},
        )
    )
    assert job.turns == [Turn("user", "hi")] and job.stream is False
    assert decode(body(thinking={"type": "adaptive"})).model == "claude-x"


def test_query_beta_and_headers_do_not_matter_to_decode() -> None:
    assert decode(body(stream=True)).stream is True


def test_count_tokens_needs_no_max_tokens() -> None:
    job = decode_count_tokens(json.dumps(body(max_tokens=..., system="s")).encode())
    assert job.max_tokens is None and job.stream is False
    assert job.turns == [Turn("system", "s"), Turn("user", "hi")]
    with pytest.raises(GatewayError) as caught:
        decode_count_tokens(json.dumps(body(messages=...)).encode())
    assert caught.value.message == "messages: Field required"


# --- decode: every 400 --------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}
TOOL = {"name": "f", "input_schema": {"type": "object"}}


def user_blocks(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def assistant_blocks(*blocks: Any) -> list[dict[str, Any]]:
    return [USER, {"role": "assistant", "content": list(blocks)}]


BAD: list[tuple[Any, str | None, str]] = [
    (b"{not json", None, "The request body is not valid JSON: send one JSON object."),
    (b"[1, 2]", None, "The request body must be a JSON object."),
    (b'"text"', None, "The request body must be a JSON object."),
    (body(model=...), "model", "model: Field required"),
    (body(model=3), "model", "model: Input should be a valid string"),
    (body(model=""), "model", "model: String should have at least 1 character"),
    (body(max_tokens=...), "max_tokens", "max_tokens: Field required"),
    (body(max_tokens="64"), "max_tokens", "max_tokens: Input should be a valid integer"),
    (body(max_tokens=64.0), "max_tokens", "max_tokens: Input should be a valid integer"),
    (body(max_tokens=True), "max_tokens", "max_tokens: Input should be a valid integer"),
    (body(max_tokens=0), "max_tokens", "max_tokens: Input should be greater than or equal to 1"),
    (body(messages=...), "messages", "messages: Field required"),
    (body(messages={"role": "user"}), "messages", "messages: Input should be a valid list"),
    (body(messages=[]), "messages", "messages: At least one message is required"),
    (body(messages=["hi"]), "messages.0", "messages.0: Input should be a valid dictionary"),
    (body(messages=[{"content": "hi"}]), "messages.0.role", "messages.0.role: Field required"),
    (
        body(messages=[USER, {"role": "robot", "content": "x"}]),
        "messages.1.role",
        "messages.1.role: Input should be 'user', 'assistant' or 'system'",
    ),
    (body(messages=[{"role": "user"}]), "messages.0.content", "messages.0.content: Field required"),
    (
        body(messages=[{"role": "user", "content": 42}]),
        "messages.0.content",
        "messages.0.content: Input should be a valid string or a list of content blocks",
    ),
    (
        body(messages=[{"role": "user", "content": None}]),
        "messages.0.content",
        "messages.0.content: Input should be a valid string or a list of content blocks",
    ),
    (
        body(messages=user_blocks("text")),
        "messages.0.content.0",
        "messages.0.content.0: Input should be a valid dictionary",
    ),
    (
        body(messages=user_blocks({"text": "hi"})),
        "messages.0.content.0.type",
        "messages.0.content.0.type: Field required",
    ),
    (
        body(messages=user_blocks({"type": 1})),
        "messages.0.content.0.type",
        "messages.0.content.0.type: Input should be a valid string",
    ),
    (
        body(messages=user_blocks({"type": "text"})),
        "messages.0.content.0.text",
        "messages.0.content.0.text: Field required",
    ),
    (
        body(messages=user_blocks({"type": "text", "text": ["a"]})),
        "messages.0.content.0.text",
        "messages.0.content.0.text: Input should be a valid string",
    ),
    (
        body(messages=user_blocks({"type": "text", "text": "a"}, {"type": "image", "source": {}})),
        "messages.0.content.1",
        "messages.0.content.1: Image content is not supported: the upstream takes text only.",
    ),
    (
        body(messages=user_blocks({"type": "document", "source": {}})),
        "messages.0.content.0",
        "messages.0.content.0: Document content is not supported: the upstream takes text only.",
    ),
    (
        body(messages=user_blocks({"type": "search_result"})),
        "messages.0.content.0",
        "messages.0.content.0: Content blocks of type 'search_result' are not supported here.",
    ),
    (
        body(messages=user_blocks({"type": "tool_use", "id": "t", "name": "f", "input": {}})),
        "messages.0.content.0.type",
        "messages.0.content.0.type: tool_use blocks can only be in assistant messages",
    ),
    (
        body(messages=assistant_blocks({"type": "tool_result", "tool_use_id": "t"})),
        "messages.1.content.0.type",
        "messages.1.content.0.type: tool_result blocks can only be in user messages",
    ),
    (
        body(messages=assistant_blocks({"type": "tool_use", "name": "f", "input": {}})),
        "messages.1.content.0.id",
        "messages.1.content.0.id: Field required",
    ),
    (
        body(messages=assistant_blocks({"type": "tool_use", "id": "t", "name": 5, "input": {}})),
        "messages.1.content.0.name",
        "messages.1.content.0.name: Input should be a valid string",
    ),
    (
        body(messages=assistant_blocks({"type": "tool_use", "id": "t", "name": "f"})),
        "messages.1.content.0.input",
        "messages.1.content.0.input: Field required",
    ),
    (
        body(messages=assistant_blocks({"type": "tool_use", "id": "t", "name": "f", "input": "{}"})),
        "messages.1.content.0.input",
        "messages.1.content.0.input: Input should be a valid dictionary",
    ),
    (
        body(messages=user_blocks({"type": "tool_result", "content": "x"})),
        "messages.0.content.0.tool_use_id",
        "messages.0.content.0.tool_use_id: Field required",
    ),
    (
        body(messages=user_blocks({"type": "tool_result", "tool_use_id": "t", "content": 1})),
        "messages.0.content.0.content",
        "messages.0.content.0.content: Input should be a valid string or a list of content blocks",
    ),
    (
        body(
            messages=user_blocks(
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "video", "source": {}}]}
            )
        ),
        "messages.0.content.0.content.0",
        "messages.0.content.0.content.0: Content blocks of type 'video' are not supported here.",
    ),
    (
        body(
            messages=user_blocks({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]})
        ),
        "messages.0.content.0.content.0.text",
        "messages.0.content.0.content.0.text: Field required",
    ),
    (
        body(messages=user_blocks({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"})),
        "messages.0.content.0.is_error",
        "messages.0.content.0.is_error: Input should be a valid boolean",
    ),
    (body(system=5), "system", "system: Input should be a valid string or a list of text blocks"),
    (body(system=[{"type": "image"}]), "system.0.type", "system.0.type: Input should be 'text'"),
    (body(system=[{"type": "text"}]), "system.0.text", "system.0.text: Field required"),
    (body(system=["text"]), "system.0", "system.0: Input should be a valid dictionary"),
    (body(stream="yes"), "stream", "stream: Input should be a valid boolean"),
    (body(stream=1), "stream", "stream: Input should be a valid boolean"),
    (body(stop_sequences="END"), "stop_sequences", "stop_sequences: Input should be a valid list"),
    (body(stop_sequences=["a", 1]), "stop_sequences.1", "stop_sequences.1: Input should be a valid string"),
    (body(tools={"name": "f"}), "tools", "tools: Input should be a valid list"),
    (body(tools=["f"]), "tools.0", "tools.0: Input should be a valid dictionary"),
    (body(tools=[{"input_schema": {"type": "object"}}]), "tools.0.name", "tools.0.name: Field required"),
    (
        body(tools=[{"name": "a b", "input_schema": {"type": "object"}}]),
        "tools.0.name",
        "tools.0.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
    ),
    (
        body(tools=[{"name": "f", "description": 1, "input_schema": {"type": "object"}}]),
        "tools.0.description",
        "tools.0.description: Input should be a valid string",
    ),
    (body(tools=[{"name": "f"}]), "tools.0.input_schema", "tools.0.input_schema: Field required"),
    (
        body(tools=[{"name": "f", "input_schema": "{}"}]),
        "tools.0.input_schema",
        "tools.0.input_schema: Input should be a valid dictionary",
    ),
    (
        body(tools=[{"name": "f", "input_schema": {}}]),
        "tools.0.input_schema.type",
        "tools.0.input_schema.type: Field required",
    ),
    (
        body(tools=[{"name": "f", "input_schema": {"type": "array"}}]),
        "tools.0.input_schema.type",
        "tools.0.input_schema.type: Input should be 'object'",
    ),
    (
        body(tools=[TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]),
        "tools.1.type",
        "tools.1.type: Tool type 'web_search_20250305' is not supported: this gateway runs no server "
        "tools and knows no built-in tool schemas. Declare it as a custom tool with an input_schema.",
    ),
    (body(tools=[TOOL, TOOL]), "tools", "tools: Tool names must be unique: 'f' is declared twice"),
    (
        body(tools=[TOOL], tool_choice="auto"),
        "tool_choice",
        "tool_choice: Input should be a valid dictionary",
    ),
    (body(tools=[TOOL], tool_choice={}), "tool_choice.type", "tool_choice.type: Field required"),
    (
        body(tools=[TOOL], tool_choice={"type": "required"}),
        "tool_choice.type",
        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
    ),
    (body(tool_choice={"type": "any"}), "tool_choice", "tool_choice: tool_choice of type 'any' needs tools"),
    (
        body(tools=[TOOL], tool_choice={"type": "tool"}),
        "tool_choice.name",
        "tool_choice.name: Field required",
    ),
    (
        body(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}),
        "tool_choice.name",
        "tool_choice.name: No tool named 'g' is declared in tools",
    ),
    (
        body(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": "true"}),
        "tool_choice.disable_parallel_tool_use",
        "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
    ),
    (body(temperature="hot"), "temperature", "temperature: Input should be a valid number"),
    (body(temperature=1.5), "temperature", "temperature: Input should be less than or equal to 1"),
    (body(temperature=-0.1), "temperature", "temperature: Input should be greater than or equal to 0"),
    (body(top_p=True), "top_p", "top_p: Input should be a valid number"),
    (body(top_p=2), "top_p", "top_p: Input should be less than or equal to 1"),
    (body(top_k=0.5), "top_k", "top_k: Input should be a valid integer"),
    (body(top_k=-1), "top_k", "top_k: Input should be greater than or equal to 0"),
    (body(metadata="m"), "metadata", "metadata: Input should be a valid dictionary"),
    (body(metadata={"user_id": 7}), "metadata.user_id", "metadata.user_id: Input should be a valid string"),
    (body(thinking=True), "thinking", "thinking: Input should be a valid dictionary"),
    (
        body(thinking={"type": "on"}),
        "thinking.type",
        "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'",
    ),
    (
        body(thinking={"type": "enabled"}),
        "thinking.budget_tokens",
        "thinking.budget_tokens: Field required",
    ),
    (
        body(thinking={"type": "enabled", "budget_tokens": 100}),
        "thinking.budget_tokens",
        "thinking.budget_tokens: Input should be greater than or equal to 1024",
    ),
]


@pytest.mark.parametrize(("data", "param", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_are_400s_naming_the_field(data: Any, param: str | None, message: str) -> None:
    error = rejected(data)
    assert error.message == message
    assert error.param == param


def test_unsupported_content_has_its_own_code() -> None:
    error = rejected(body(messages=user_blocks({"type": "image", "source": {}})))
    assert error.code == "unsupported_content"
    error = rejected(body(tools=[{"type": "bash_20250124", "name": "bash"}]))
    assert error.code == "unsupported_tool"


# --- the message body ---------------------------------------------------------------------------


def completion(
    text: str,
    calls: list[CalledTool] | None = None,
    reason: FinishReason = FinishReason.END,
    stop: str | None = None,
) -> Completion:
    return Completion(text, calls or [], Finished(reason, Usage(30, 7), stop))


def check_with_the_sdk(payload: dict[str, Any]) -> None:
    """The official SDK's own model of a `message` takes the body as it is."""
    Message.model_validate(orjson.loads(orjson.dumps(payload)), strict=False)


def test_a_text_answer() -> None:
    payload = message_body(completion("Hello!"), model="claude-x", id_="msg_1")
    assert payload == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 7},
    }
    check_with_the_sdk(payload)


def test_tool_calls_are_tool_use_blocks_with_object_input() -> None:
    calls = [
        CalledTool("AbCdEfGhIjKlMnOpQrStUvWx", "get_weather", '{"city": "Paris"}'),
        CalledTool("0123456789abcdefghijklmn", "get_time", ""),
    ]
    payload = message_body(completion("Checking.", calls, FinishReason.TOOL_CALLS), model="m", id_="msg_1")
    assert payload["content"] == [
        {"type": "text", "text": "Checking."},
        {
            "type": "tool_use",
            "id": "toolu_AbCdEfGhIjKlMnOpQrStUvWx",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool_use", "id": "toolu_0123456789abcdefghijklmn", "name": "get_time", "input": {}},
    ]
    assert payload["stop_reason"] == "tool_use"
    check_with_the_sdk(payload)


def test_only_tools_means_no_text_block() -> None:
    calls = [CalledTool("AbCdEfGhIjKlMnOpQrStUvWx", "f", "{}")]
    payload = message_body(completion("  \n", calls, FinishReason.TOOL_CALLS), model="m")
    assert [block["type"] for block in payload["content"]] == ["tool_use"]


def test_an_empty_answer_has_no_block() -> None:
    payload = message_body(completion(""), model="m")
    assert payload["content"] == []
    check_with_the_sdk(payload)


@pytest.mark.parametrize(
    ("reason", "stop", "stop_reason", "stop_sequence"),
    [
        (FinishReason.END, None, "end_turn", None),
        (FinishReason.LENGTH, None, "max_tokens", None),
        (FinishReason.STOP_SEQUENCE, "###", "stop_sequence", "###"),
        (FinishReason.END, "###", "end_turn", None),
    ],
)
def test_stop_reasons(
    reason: FinishReason, stop: str | None, stop_reason: str, stop_sequence: str | None
) -> None:
    payload = message_body(completion("x", reason=reason, stop=stop), model="m")
    assert (payload["stop_reason"], payload["stop_sequence"]) == (stop_reason, stop_sequence)


def test_ids_are_fresh_and_prefixed() -> None:
    first = message_body(completion("x"), model="m")["id"]
    second = message_body(completion("x"), model="m")["id"]
    assert first.startswith("msg_") and len(first) == 28 and first[4:].isalnum()
    assert first != second


# --- the error envelope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "core_type", "out_status", "out_type"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error"),
        (401, "invalid_request_error", 401, "authentication_error"),
        (403, "permission_error", 403, "permission_error"),
        (404, "invalid_request_error", 404, "not_found_error"),
        (405, "invalid_request_error", 405, "invalid_request_error"),
        (413, "invalid_request_error", 413, "request_too_large"),
        (422, "invalid_request_error", 422, "invalid_request_error"),
        (429, "rate_limit_error", 429, "rate_limit_error"),
        (500, "server_error", 500, "api_error"),
        (502, "upstream_error", 502, "api_error"),
        (503, "server_error", 529, "overloaded_error"),
        (504, "server_error", 504, "timeout_error"),
    ],
)
def test_error_envelope(status: int, core_type: str, out_status: int, out_type: str) -> None:
    error = GatewayError(status, "What went wrong.", type=core_type, code="some_code", param="p")
    assert error_envelope(error) == (
        out_status,
        {"type": "error", "error": {"type": out_type, "message": "What went wrong."}},
    )


def test_system_messages_in_the_conversation_are_system_text_in_place() -> None:
    # Claude Code 2.1 sends its environment block this way (tests/agents/data/claude_code_request.json).
    job = decode_messages(
        json.dumps(
            body(
                messages=[
                    USER,
                    {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},
                    {"role": "system", "content": "cwd: /tmp"},
                ]
            )
        ).encode()
    )
    assert [(t.role, t.text) for t in job.turns[-2:]] == [
        ("system", "# Environment"),
        ("system", "cwd: /tmp"),
    ]


def test_an_image_in_a_tool_result_becomes_a_note_not_a_400() -> None:
    # An agent that once read a picture sends it with every later request of the session.
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "read cat.png"}, {"type": "image", "source": {}}],
    }
    job = decode_messages(json.dumps(body(messages=user_blocks(result))).encode())
    assert (
        job.turns[-1].text == "read cat.png\n[image omitted: the model behind this gateway reads text only]"
    )


def test_the_recorded_claude_code_request_decodes() -> None:
    recorded = (ROOT / "tests" / "agents" / "data" / "claude_code_request.json").read_bytes()
    job = decode_messages(recorded)
    assert [t.role for t in job.turns] == ["system", "user", "system", "assistant", "tool"]
    assert len(job.tools) == 12
    assert job.turns[-1].name == "Bash"  # looked up from the tool_use it answers


def test_claude_codes_billing_header_block_is_not_prompt_text() -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
    ]
    job = decode_messages(json.dumps(body(system=system)).encode())
    assert job.turns[0] == Turn("system", "You are a Claude agent.")


def test_a_body_nested_deeper_than_the_limit_is_a_400() -> None:
    deep: Any = {"type": "object"}
    for _ in range(120):
        deep = {"type": "object", "properties": {"a": deep}}
    tool = {"name": "t", "input_schema": deep}
    with pytest.raises(GatewayError) as info:
        decode_messages(json.dumps(body(tools=[tool])).encode())
    assert info.value.status == 400
    assert "nests deeper than 100 levels" in info.value.message
