"""The Responses request decoded into a Job (every field, each 400 with its `param`), the response
object of a whole answer, and output items back into turns for `previous_response_id`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import GatewayError
from app.core.events import CalledTool, Completion, Finished, FinishReason, Usage
from app.core.job import Job, OutputFormat, ToolCall, ToolChoice, ToolSpec, Turn
from app.surfaces.openai_responses.wire import (
    ResponsesRequest,
    conversation_of,
    custom_input,
    output_turns,
    parse_request,
    response_body,
    to_job,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: patch"},
}


def parse(**body: Any) -> ResponsesRequest:
    return parse_request(json.dumps({"model": "gptomni", "input": "Hi", **body}).encode())


def job(**body: Any) -> Job:
    return to_job(parse(**body))


# --- decode -------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_turn_after_the_instructions() -> None:
    assert job(instructions="Be terse.", input="Hello") == Job(
        model="gptomni", turns=[Turn("system", "Be terse."), Turn("user", "Hello")]
    )


def test_the_defaults() -> None:
    request = parse()
    assert request.store is True and request.stream is False and request.previous_response_id is None
    assert request.tool_choice == ToolChoice() and request.output == OutputFormat()
    assert request.echo["metadata"] == {} and request.echo["parallel_tool_calls"] is True
    assert request.echo["tool_choice"] == "auto" and request.echo["temperature"] == 1.0


def test_message_items_in_every_shape() -> None:
    turns = job(
        input=[
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]
    ).turns
    assert turns == [
        Turn("system", "sys"),
        Turn("system", "dev"),
        Turn("user", "a\nb"),
        Turn("assistant", "ok"),
        Turn("assistant", "no"),
    ]


def test_calls_join_the_assistant_turn_before_them_and_results_name_their_tool() -> None:
    turns = job(
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "message", "role": "assistant", "content": "Checking."},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": '{"city":"Rome"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "21C"}],
            },
            {"type": "function_call", "call_id": "call_3", "name": "get_weather", "arguments": "{}"},
        ],
        tools=[WEATHER],
    ).turns
    assert turns == [
        Turn("user", "weather?"),
        Turn(
            "assistant",
            "Checking.",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                ToolCall("call_2", "get_weather", '{"city":"Rome"}'),
            ),
        ),
        Turn("tool", "18C", "get_weather", call_id="call_1"),
        Turn("tool", "21C", "get_weather", call_id="call_2"),
        Turn("assistant", "", tool_calls=(ToolCall("call_3", "get_weather", "{}"),)),
    ]


def test_custom_tool_calls_and_outputs_become_calls_with_one_input() -> None:
    turns = job(
        input=[
            {
                "type": "custom_tool_call",
                "call_id": "call_p",
                "name": "apply_patch",
                "input": "*** Begin Patch",
            },
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done"},
        ],
        tools=[PATCH],
    ).turns
    assert turns == [
        Turn("assistant", "", tool_calls=(ToolCall("call_p", "apply_patch", {"input": "*** Begin Patch"}),)),
        Turn("tool", "Done", "apply_patch", call_id="call_p"),
    ]


def test_function_and_custom_tools() -> None:
    request = parse(tools=[WEATHER, PATCH, {"type": "custom", "name": "note"}])
    weather, patch, note = request.tools
    assert weather == ToolSpec("get_weather", "Weather of a city", WEATHER["parameters"])
    assert request.custom_tools == {"apply_patch", "note"}
    assert patch.name == "apply_patch"
    assert (
        patch.description
        == "Edit files.\n\nIts input is one string that must follow this lark grammar:\nstart: patch"
    )
    assert patch.parameters == {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The whole input, as raw text."}},
        "required": ["input"],
        "additionalProperties": False,
    }
    assert note.description == "Its input is free-form text: one string."
    assert request.echo["tools"][1] == PATCH
    assert request.echo["tools"][2]["format"] == {"type": "text"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, ToolChoice("auto")),
        ("none", None, ToolChoice("none")),
        ("required", False, ToolChoice("required", parallel=False)),
        ({"type": "function", "name": "get_weather"}, True, ToolChoice("required", "get_weather", True)),
        ({"type": "custom", "name": "apply_patch"}, None, ToolChoice("required", "apply_patch")),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: ToolChoice) -> None:
    body: dict[str, Any] = {"tools": [WEATHER, PATCH], "tool_choice": choice}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    request = parse(**body)
    assert request.tool_choice == expected
    assert request.echo["tool_choice"] == choice


def test_allowed_tools_narrow_the_tools_on_offer() -> None:
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    request = parse(tools=[WEATHER, PATCH], tool_choice=choice)
    assert request.tool_choice == ToolChoice("required")
    assert [tool.name for tool in request.tools] == ["get_weather"]


def test_text_formats() -> None:
    assert parse(text={"format": {"type": "text"}}).output == OutputFormat()
    assert parse(text={"format": {"type": "json_object"}}).output == OutputFormat("json_object")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "description": "A thing", "strict": True}
    request = parse(text={"format": fmt, "verbosity": "low"})
    assert request.output == OutputFormat("json_schema", schema, "thing", "A thing", True)
    assert request.echo["text"] == {"format": fmt, "verbosity": "low"}


def test_scalars_reach_the_job_and_the_echo() -> None:
    request = parse(
        max_output_tokens=500,
        stream=True,
        store=False,
        previous_response_id="resp_1",
        metadata={"k": "v"},
        temperature=0.5,
        top_p=0.9,
        user="u",
        reasoning={"effort": "high", "summary": "auto"},
        truncation="auto",
    )
    assert (request.max_output_tokens, request.stream, request.store) == (500, True, False)
    assert request.previous_response_id == "resp_1"
    decoded = to_job(request)
    assert decoded.max_tokens == 500 and decoded.stream is True
    echo = request.echo
    assert echo["metadata"] == {"k": "v"} and echo["temperature"] == 0.5 and echo["top_p"] == 0.9
    assert echo["reasoning"] == {"effort": "high", "summary": "auto"} and echo["truncation"] == "auto"
    assert echo["store"] is False and echo["user"] == "u" and echo["max_output_tokens"] == 500


def test_unknown_fields_are_ignored() -> None:
    assert job(client_metadata={"a": "b"}, some_future_field=[1, 2], prompt_cache_key="k") == job()


def test_the_stored_conversation_goes_between_the_instructions_and_the_input() -> None:
    history = [
        Turn("user", "first"),
        Turn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", "{}"),)),
    ]
    request = parse(
        instructions="New rules.",
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        previous_response_id="resp_1",
    )
    assert to_job(request, history).turns == [
        Turn("system", "New rules."),
        *history,
        Turn("tool", "sunny", "get_weather", call_id="call_1"),
    ]


def test_the_conversation_to_store_leaves_the_instructions_out() -> None:
    history = [
        Turn("user", "q"),
        Turn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", "{}"),)),
    ]
    request = parse(
        instructions="Rules.", input=[{"type": "function_call_output", "call_id": "call_1", "output": "ok"}]
    )
    assert conversation_of(to_job(request, history), request) == (
        *history,
        Turn("tool", "ok", "get_weather", call_id="call_1"),
    )
    plain = parse(input="hi")
    assert conversation_of(to_job(plain), plain) == (Turn("user", "hi"),)


def test_a_tool_output_must_answer_an_earlier_call() -> None:
    request = parse(input=[{"type": "function_call_output", "call_id": "call_x", "output": "?"}])
    with pytest.raises(GatewayError) as raised:
        to_job(request, [Turn("user", "hi")])
    assert raised.value.status == 400 and raised.value.param == "input[0].call_id"
    assert "call_x" in raised.value.message


def test_a_codex_request() -> None:
    """What the Codex CLI sends (its shape, shortened), decoded: the golden `codex.job.json`."""
    request = parse_request((GOLDEN / "codex.request.json").read_bytes())
    assert request.custom_tools == {"apply_patch"} and request.store is False and request.stream is True
    actual = (json.dumps(dataclasses.asdict(to_job(request)), indent=2, ensure_ascii=False) + "\n").encode()
    path = GOLDEN / "codex.job.json"
    if UPDATE:
        path.write_bytes(actual)
    assert actual == path.read_bytes()


# --- the 400s -----------------------------------------------------------------------------------

BAD: list[tuple[str, Any, str | None, str | None]] = [
    # (what, body (merged into a valid one; a bytes/str body is sent as is), param, code)
    ("not json", b"{", None, "invalid_json"),
    ("not an object", b"[1]", None, "invalid_json"),
    ("model missing", {"model": None}, "model", "missing_required_parameter"),
    ("model not a string", {"model": 4}, "model", "invalid_type"),
    ("model empty", {"model": ""}, "model", "invalid_value"),
    ("input missing", {"input": None}, "input", "missing_required_parameter"),
    ("input a number", {"input": 3}, "input", "invalid_type"),
    ("input empty", {"input": []}, "input", "empty_array"),
    ("item not an object", {"input": ["hi"]}, "input[0]", "invalid_type"),
    (
        "item without type or role",
        {"input": [{"content": "x"}]},
        "input[0].type",
        "missing_required_parameter",
    ),
    ("message without role", {"input": [{"type": "message", "content": "x"}]}, "input[0].role", None),
    ("bad role", {"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ("content missing", {"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ("content a number", {"input": [{"role": "user", "content": 1}]}, "input[0].content", "invalid_type"),
    (
        "part without type",
        {"input": [{"role": "user", "content": [{"text": "x"}]}]},
        "input[0].content[0].type",
        None,
    ),
    (
        "part text not a string",
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
        "input[0].content[0].text",
        "invalid_type",
    ),
    (
        "image part",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input[0].content[0]",
        "unsupported_content",
    ),
    (
        "file part",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0]",
        "unsupported_content",
    ),
    (
        "call without call_id",
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        "input[0].call_id",
        "missing_required_parameter",
    ),
    (
        "arguments not a string",
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
        "input[0].arguments",
        "invalid_type",
    ),
    (
        "output missing",
        {"input": [{"type": "function_call_output", "call_id": "c"}]},
        "input[0].output",
        None,
    ),
    (
        "image in a tool output",
        {
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": "x"}],
                }
            ]
        },
        "input[0].output[0]",
        "unsupported_content",
    ),
    (
        "unknown item",
        {"input": [{"type": "item_reference", "id": "msg_1"}]},
        "input[0].type",
        "unsupported_input_item",
    ),
    ("tools not an array", {"tools": {}}, "tools", "invalid_type"),
    ("tool not an object", {"tools": ["x"]}, "tools[0]", "invalid_type"),
    ("tool without type", {"tools": [{"name": "f"}]}, "tools[0].type", "missing_required_parameter"),
    *[
        (f"built-in {kind}", {"tools": [WEATHER, {"type": kind}]}, "tools[1].type", "unsupported_tool")
        for kind in (
            "web_search",
            "web_search_preview",
            "file_search",
            "computer_use_preview",
            "code_interpreter",
            "mcp",
            "image_generation",
            "local_shell",
            "shell",
            "apply_patch",
        )
    ],
    ("unknown tool type", {"tools": [{"type": "magic", "name": "m"}]}, "tools[0].type", "unsupported_tool"),
    (
        "function without name",
        {"tools": [{"type": "function"}]},
        "tools[0].name",
        "missing_required_parameter",
    ),
    (
        "bad tool name",
        {"tools": [{"type": "function", "name": "has space"}]},
        "tools[0].name",
        "invalid_value",
    ),
    ("duplicate tool", {"tools": [WEATHER, WEATHER]}, "tools[1].name", "invalid_value"),
    (
        "parameters not an object",
        {"tools": [{**WEATHER, "parameters": "x"}]},
        "tools[0].parameters",
        "invalid_type",
    ),
    ("strict not a boolean", {"tools": [{**WEATHER, "strict": "yes"}]}, "tools[0].strict", "invalid_type"),
    (
        "custom format type",
        {"tools": [{**PATCH, "format": {"type": "yaml"}}]},
        "tools[0].format.type",
        "invalid_value",
    ),
    (
        "grammar without syntax",
        {"tools": [{**PATCH, "format": {"type": "grammar", "definition": "x"}}]},
        "tools[0].format.syntax",
        "missing_required_parameter",
    ),
    (
        "grammar without definition",
        {"tools": [{**PATCH, "format": {"type": "grammar", "syntax": "lark"}}]},
        "tools[0].format.definition",
        "missing_required_parameter",
    ),
    ("tool_choice unknown", {"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ("required without tools", {"tool_choice": "required"}, "tool_choice", None),
    (
        "choice of a missing function",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
        "tool_choice.name",
        None,
    ),
    (
        "choice of a function as custom",
        {"tools": [WEATHER], "tool_choice": {"type": "custom", "name": "get_weather"}},
        "tool_choice.name",
        None,
    ),
    (
        "choice of a built-in",
        {"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}},
        "tool_choice.type",
        "unsupported_tool",
    ),
    ("choice of an unknown type", {"tool_choice": {"type": "magic"}}, "tool_choice.type", "invalid_value"),
    (
        "allowed tools missing",
        {"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto"}},
        "tool_choice.tools",
        "missing_required_parameter",
    ),
    (
        "allowed tool unknown",
        {
            "tools": [WEATHER],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "x"}],
            },
        },
        "tool_choice.tools[0].name",
        None,
    ),
    ("parallel_tool_calls a string", {"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
    ("text not an object", {"text": "json"}, "text", "invalid_type"),
    ("format type unknown", {"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    ("format without type", {"text": {"format": {}}}, "text.format.type", "missing_required_parameter"),
    (
        "schema without name",
        {"text": {"format": {"type": "json_schema", "schema": {}}}},
        "text.format.name",
        None,
    ),
    (
        "schema missing",
        {"text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format.schema",
        None,
    ),
    (
        "schema not an object",
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": []}}},
        "text.format.schema",
        "invalid_type",
    ),
    ("verbosity unknown", {"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
    ("max_output_tokens a string", {"max_output_tokens": "10"}, "max_output_tokens", "invalid_type"),
    ("max_output_tokens a decimal", {"max_output_tokens": 20.5}, "max_output_tokens", "invalid_type"),
    ("max_output_tokens a boolean", {"max_output_tokens": True}, "max_output_tokens", "invalid_type"),
    (
        "max_output_tokens too small",
        {"max_output_tokens": 15},
        "max_output_tokens",
        "integer_below_min_value",
    ),
    ("temperature too high", {"temperature": 3}, "temperature", "decimal_above_maximum_value"),
    ("temperature a string", {"temperature": "1"}, "temperature", "invalid_type"),
    ("top_p too high", {"top_p": 1.5}, "top_p", "decimal_above_maximum_value"),
    ("store a string", {"store": "true"}, "store", "invalid_type"),
    ("stream a number", {"stream": 1}, "stream", "invalid_type"),
    ("metadata not an object", {"metadata": []}, "metadata", "invalid_type"),
    ("metadata value not a string", {"metadata": {"a": 1}}, "metadata.a", "invalid_type"),
    ("too much metadata", {"metadata": {str(i): "v" for i in range(17)}}, "metadata", None),
    ("metadata key too long", {"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65, None),
    ("previous_response_id a number", {"previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ("include not an array", {"include": "x"}, "include", "invalid_type"),
    ("include of a number", {"include": [1]}, "include[0]", "invalid_type"),
    ("instructions a number", {"instructions": 5}, "instructions", "invalid_type"),
    ("reasoning a string", {"reasoning": "high"}, "reasoning", "invalid_type"),
    ("background", {"background": True}, "background", "unsupported_parameter"),
    ("conversation", {"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ("prompt template", {"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
]


@pytest.mark.parametrize(("body", "param", "code"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_are_400s_naming_the_parameter(body: Any, param: str | None, code: str | None) -> None:
    raw = (
        body if isinstance(body, bytes) else json.dumps({"model": "gptomni", "input": "Hi", **body}).encode()
    )
    with pytest.raises(GatewayError) as raised:
        parse_request(raw)
    error = raised.value
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    if code is not None:
        assert error.code == code
    if param is not None:
        assert param in error.message  # the message names the field too: clients often show only it


def test_the_built_in_tool_message_says_what_to_do() -> None:
    with pytest.raises(GatewayError) as raised:
        parse(tools=[{"type": "web_search"}])
    assert "web_search" in raised.value.message and "function" in raised.value.message
    assert 'web_search = "disabled"' in raised.value.message


def test_type_errors_read_like_openai() -> None:
    with pytest.raises(GatewayError) as raised:
        parse(max_output_tokens="10")
    assert raised.value.message == (
        "Invalid type for 'max_output_tokens': expected an integer, but got a string instead."
    )
    with pytest.raises(GatewayError) as raised:
        parse(input=[{"type": "function_call", "name": "f", "arguments": "{}"}])
    assert raised.value.message == "Missing required parameter: 'input[0].call_id'."
    with pytest.raises(GatewayError) as raised:
        parse(tool_choice="sometimes")
    assert raised.value.message == (
        "Invalid value for 'tool_choice': 'sometimes'. Supported values are: 'auto', 'none', and 'required'."
    )


# --- the response object ----------------------------------------------------------------------


def ids() -> Any:
    counter = itertools.count()
    return lambda prefix: f"{prefix}{next(counter)}"


def body_of(completion: Completion, **request: Any) -> dict[str, Any]:
    return response_body(
        parse(**request), completion, response_id="resp_1", created_at=100, completed_at=103, new_id=ids()
    )


def test_a_text_answer() -> None:
    body = body_of(Completion("Hello!", finish=Finished(FinishReason.END, Usage(10, 3))), metadata={"a": "b"})
    assert body["id"] == "resp_1" and body["object"] == "response" and body["status"] == "completed"
    assert body["created_at"] == 100 and body["completed_at"] == 103
    assert body["output"] == [
        {
            "id": "msg_0",
            "type": "message",
            "status": "completed",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hello!"}],
            "role": "assistant",
        }
    ]
    assert body["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }
    assert body["metadata"] == {"a": "b"} and body["error"] is None and body["incomplete_details"] is None


def test_tool_calls_only() -> None:
    completion = Completion(
        "",
        [
            CalledTool("AbC", "get_weather", '{"city":"Paris"}'),
            CalledTool("DeF", "apply_patch", '{"input":"P"}'),
        ],
        Finished(FinishReason.TOOL_CALLS, Usage(10, 8)),
    )
    assert body_of(completion, tools=[WEATHER, PATCH])["output"] == [
        {
            "id": "fc_AbC",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"city":"Paris"}',
            "call_id": "call_AbC",
            "name": "get_weather",
        },
        {
            "id": "ctc_DeF",
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": "call_DeF",
            "input": "P",
            "name": "apply_patch",
        },
    ]


def test_text_and_a_call() -> None:
    completion = Completion(
        "Checking.", [CalledTool("AbC", "get_weather", "{}")], Finished(FinishReason.TOOL_CALLS, Usage(1, 1))
    )
    assert [item["type"] for item in body_of(completion, tools=[WEATHER])["output"]] == [
        "message",
        "function_call",
    ]


def test_the_token_limit_makes_an_incomplete_response() -> None:
    body = body_of(
        Completion("cut", finish=Finished(FinishReason.LENGTH, Usage(5, 16))), max_output_tokens=16
    )
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["completed_at"] is None


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"input": "*** Begin Patch"}', "*** Begin Patch"),
        ('{"patch": "only one string"}', "only one string"),
        ('"a JSON string"', "a JSON string"),
        ('{"a": "x", "b": "y"}', '{"a": "x", "b": "y"}'),
        ("not json", "not json"),
        ('{"input": 5}', '{"input": 5}'),
    ],
)
def test_custom_input(arguments: str, expected: str) -> None:
    assert custom_input(arguments) == expected


def test_output_items_become_turns_to_continue_from() -> None:
    completion = Completion(
        "Checking.",
        [
            CalledTool("AbC", "get_weather", '{"city":"Paris"}'),
            CalledTool("DeF", "apply_patch", '{"input":"P"}'),
        ],
        Finished(FinishReason.TOOL_CALLS, Usage(1, 1)),
    )
    output = body_of(completion, tools=[WEATHER, PATCH])["output"]
    assert output_turns(output) == [
        Turn(
            "assistant",
            "Checking.",
            tool_calls=(
                ToolCall("call_AbC", "get_weather", '{"city":"Paris"}'),
                ToolCall("call_DeF", "apply_patch", {"input": "P"}),
            ),
        )
    ]


def test_codexs_client_run_tool_search_is_not_offered_but_hosted_tools_are_refused() -> None:
    search = {"type": "tool_search", "execution": "client", "description": "Find tools.", "parameters": {}}
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    job = to_job(parse(input="hi", tools=[search, weather]))
    assert [tool.name for tool in job.tools] == ["get_weather"]
    with pytest.raises(GatewayError) as info:
        parse(input="hi", tools=[{"type": "tool_search"}])  # run by OpenAI: a hosted tool
    assert (info.value.status, info.value.param) == (400, "tools[0].type")
    with pytest.raises(GatewayError) as info:
        parse(input="hi", tools=[weather, {"type": "web_search", "external_web_access": False}])
    assert 'web_search = "disabled"' in info.value.message


def test_a_body_nested_deeper_than_the_limit_is_a_400() -> None:
    deep: Any = {"type": "object"}
    for _ in range(120):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(GatewayError) as info:
        parse(tools=[{"type": "function", "name": "t", "parameters": deep}])
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    assert "nests deeper than 100 levels" in info.value.message
