"""Anthropic Messages on the wire: the request decoded into a `Job`, the `message` body, the error envelope.

Validation is by hand and strict about the types of the fields it knows (a string is not a number),
each problem one 400 whose message starts with the field's path as Anthropic writes it
(`messages.0.content.1.type: ...`). Unknown fields, at the top and inside objects, are accepted and
ignored: clients such as Claude Code send many (`context_management`, `cache_control`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

import orjson

from app.core.errors import GatewayError, invalid_request
from app.core.events import Completion, FinishReason, new_call_id
from app.core.job import Job, Role, ToolCall, ToolChoice, ToolSpec, Turn
from app.http.body import MAX_JSON_DEPTH, too_deep

TOOL_USE_PREFIX = "toolu_"
MESSAGE_PREFIX = "msg_"

STOP_REASONS = {
    FinishReason.END: "end_turn",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
}

# Anthropic's error types by status; 503 (no usable credential, gateway at capacity) is Anthropic's
# 529 `overloaded_error`, which its clients (Claude Code included) retry with backoff.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_OVERRIDES = {503: 529}

_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_UNSUPPORTED_BLOCKS = {
    "image": "Image content is not supported: the upstream takes text only.",
    "document": "Document content is not supported: the upstream takes text only.",
}
_LEFT_OUT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


# --- the request -------------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise invalid_request(f"{path}: {problem}", param=path)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, "Input should be a valid list")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, "Input should be a valid string")
    return value


def _integer(value: Any, path: str, *, minimum: int | None = None) -> int:
    # JSON has one number type: 1.0 is not an integer here, and true is not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, "Input should be a valid integer")
    if minimum is not None and value < minimum:
        _fail(path, f"Input should be greater than or equal to {minimum}")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        _fail(path, "Input should be a valid number")
    if value < low:
        _fail(path, f"Input should be greater than or equal to {low:g}")
    if value > high:
        _fail(path, f"Input should be less than or equal to {high:g}")
    return float(value)


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, "Input should be a valid boolean")
    return value


def _required(data: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in data:
        _fail(path, "Field required")
    return data[key]


def _one_of(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        if len(choices) == 1:
            wanted = f"'{choices[0]}'"
        else:
            wanted = ", ".join(f"'{c}'" for c in choices[:-1]) + f" or '{choices[-1]}'"
        _fail(path, f"Input should be {wanted}")
    return str(value)


def _block_type(block: Any, path: str) -> str:
    block = _object(block, path)
    return _string(_required(block, "type", f"{path}.type"), f"{path}.type")


def _unsupported_block(kind: str, path: str) -> NoReturn:
    problem = _UNSUPPORTED_BLOCKS.get(kind, f"Content blocks of type '{kind}' are not supported here.")
    raise invalid_request(f"{path}: {problem}", param=path, code="unsupported_content")


def _text_of_block(block: Mapping[str, Any], path: str) -> str:
    return _string(_required(block, "text", f"{path}.text"), f"{path}.text")


# Claude Code's first system block is request metadata for Anthropic's billing (its version changes
# with every release), not instructions: it is left out of the prompt.
_BILLING_HEADER = "x-anthropic-billing-header:"


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        _fail("system", "Input should be a valid string or a list of text blocks")
    texts = []
    for index, block in enumerate(system):
        path = f"system.{index}"
        if _block_type(block, path) != "text":
            _fail(f"{path}.type", "Input should be 'text'")
        text = _text_of_block(block, path)
        if not text.startswith(_BILLING_HEADER):
            texts.append(text)
    # Claude Code sends its system prompt as several blocks, each a section of its own.
    return "\n\n".join(texts)


def _tool_result_text(block: Mapping[str, Any], path: str) -> str:
    content = block.get("content")
    text = ""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            part_path = f"{path}.content.{index}"
            kind = _block_type(part, part_path)
            if kind in ("image", "document"):
                # Not a 400: an agent that read a picture keeps it in every later request of the
                # session, which would then all fail. The model is told what it cannot see.
                texts.append(f"[{kind} omitted: the model behind this gateway reads text only]")
                continue
            if kind != "text":
                _unsupported_block(kind, part_path)
            texts.append(_text_of_block(part, part_path))
        text = "\n".join(texts)
    elif content is not None:
        _fail(f"{path}.content", "Input should be a valid string or a list of content blocks")
    if block.get("is_error") is not None and _boolean(block["is_error"], f"{path}.is_error"):
        text = f"Error: {text}"
    return text


def _tool_call(block: Mapping[str, Any], path: str) -> ToolCall:
    call_id = _string(_required(block, "id", f"{path}.id"), f"{path}.id")
    name = _string(_required(block, "name", f"{path}.name"), f"{path}.name")
    arguments = _object(_required(block, "input", f"{path}.input"), f"{path}.input")
    return ToolCall(call_id, name, dict(arguments))


def _message_turns(message: Any, index: int, tool_names: dict[str, str]) -> list[Turn]:
    """The turns of one message, in its blocks' order; `tool_names` maps call ids to tool names."""
    path = f"messages.{index}"
    message = _object(message, path)
    # `system` is not in the public API, but Claude Code sends its environment block as a system
    # message in the conversation; it is system text in place.
    kind = _one_of(
        _required(message, "role", f"{path}.role"), f"{path}.role", ("user", "assistant", "system")
    )
    role: Role = "user" if kind == "user" else "assistant" if kind == "assistant" else "system"
    content = _required(message, "content", f"{path}.content")
    if isinstance(content, str):
        return [Turn(role, content)] if content else []
    if not isinstance(content, list):
        _fail(f"{path}.content", "Input should be a valid string or a list of content blocks")

    turns: list[Turn] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block_index, block in enumerate(content):
        block_path = f"{path}.content.{block_index}"
        kind = _block_type(block, block_path)
        if kind == "text":
            texts.append(_text_of_block(block, block_path))
        elif kind in _LEFT_OUT_BLOCKS:
            continue  # the upstream cannot use earlier reasoning; leaving it out is what it can do
        elif kind == "tool_use":
            if role != "assistant":
                _fail(f"{block_path}.type", "tool_use blocks can only be in assistant messages")
            call = _tool_call(block, block_path)
            tool_names[call.id] = call.name
            calls.append(call)
        elif kind == "tool_result":
            if role != "user":
                _fail(f"{block_path}.type", "tool_result blocks can only be in user messages")
            if texts:
                turns.append(Turn("user", "\n".join(texts)))
                texts = []
            call_id = _string(
                _required(block, "tool_use_id", f"{block_path}.tool_use_id"), f"{block_path}.tool_use_id"
            )
            text = _tool_result_text(block, block_path)
            turns.append(Turn("tool", text, name=tool_names.get(call_id), call_id=call_id))
        else:
            _unsupported_block(kind, block_path)
    text = "\n".join(texts)
    if role == "assistant" and (text or calls):
        turns.append(Turn("assistant", text, tool_calls=tuple(calls)))
    elif role != "assistant" and text:
        turns.append(Turn(role, text))
    return turns


def _tool_spec(tool: Any, index: int) -> ToolSpec:
    path = f"tools.{index}"
    tool = _object(tool, path)
    kind = tool.get("type")
    if kind is not None and kind != "custom":
        shown = kind if isinstance(kind, str) else orjson.dumps(kind).decode()
        raise invalid_request(
            f"{path}.type: Tool type '{shown}' is not supported: this gateway runs no server tools and "
            "knows no built-in tool schemas. Declare it as a custom tool with an input_schema.",
            param=f"{path}.type",
            code="unsupported_tool",
        )
    name = _string(_required(tool, "name", f"{path}.name"), f"{path}.name")
    if not _TOOL_NAME.fullmatch(name):
        _fail(f"{path}.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
    description = None
    if tool.get("description") is not None:
        description = _string(tool["description"], f"{path}.description")
    schema = _object(_required(tool, "input_schema", f"{path}.input_schema"), f"{path}.input_schema")
    _one_of(_required(schema, "type", f"{path}.input_schema.type"), f"{path}.input_schema.type", ("object",))
    return ToolSpec(name, description, dict(schema))


def _tools(data: Mapping[str, Any]) -> list[ToolSpec]:
    if data.get("tools") is None:
        return []
    specs = [_tool_spec(tool, index) for index, tool in enumerate(_list(data["tools"], "tools"))]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            _fail("tools", f"Tool names must be unique: '{spec.name}' is declared twice")
        seen.add(spec.name)
    return specs


def _tool_choice(data: Mapping[str, Any], tools: list[ToolSpec]) -> ToolChoice:
    if data.get("tool_choice") is None:
        return ToolChoice()
    choice = _object(data["tool_choice"], "tool_choice")
    kind = _one_of(_required(choice, "type", "tool_choice.type"), "tool_choice.type", _TOOL_CHOICE_TYPES)
    parallel = None
    if choice.get("disable_parallel_tool_use") is not None:
        parallel = not _boolean(choice["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use")
    if kind == "none":
        return ToolChoice("none", None, parallel)
    if kind == "auto":
        return ToolChoice("auto", None, parallel)
    if not tools:
        _fail("tool_choice", f"tool_choice of type '{kind}' needs tools")
    if kind == "any":
        return ToolChoice("required", None, parallel)
    name = _string(_required(choice, "name", "tool_choice.name"), "tool_choice.name")
    if name not in {tool.name for tool in tools}:
        _fail("tool_choice.name", f"No tool named '{name}' is declared in tools")
    return ToolChoice("required", name, parallel)


def _stops(data: Mapping[str, Any]) -> list[str]:
    if data.get("stop_sequences") is None:
        return []
    stops = _list(data["stop_sequences"], "stop_sequences")
    return [s for index, s in enumerate(stops) if _string(s, f"stop_sequences.{index}")]


def _check_ignored(data: Mapping[str, Any]) -> None:
    """Fields that change nothing upstream, but whose types a client must still get right."""
    if data.get("temperature") is not None:
        _number(data["temperature"], "temperature", 0, 1)
    if data.get("top_p") is not None:
        _number(data["top_p"], "top_p", 0, 1)
    if data.get("top_k") is not None:
        _integer(data["top_k"], "top_k", minimum=0)
    if data.get("metadata") is not None:
        metadata = _object(data["metadata"], "metadata")
        if metadata.get("user_id") is not None:
            _string(metadata["user_id"], "metadata.user_id")
    if data.get("thinking") is not None:
        thinking = _object(data["thinking"], "thinking")
        kind = _one_of(_required(thinking, "type", "thinking.type"), "thinking.type", _THINKING_TYPES)
        if kind == "enabled":
            budget = _required(thinking, "budget_tokens", "thinking.budget_tokens")
            _integer(budget, "thinking.budget_tokens", minimum=1024)


def _load(body: bytes) -> Mapping[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON: send one JSON object.") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.")
    if too_deep(data):
        raise invalid_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return data


def _turns(data: Mapping[str, Any]) -> list[Turn]:
    turns: list[Turn] = []
    if data.get("system") is not None:
        system = _system_text(data["system"])
        if system:
            turns.append(Turn("system", system))
    messages = _list(_required(data, "messages", "messages"), "messages")
    if not messages:
        _fail("messages", "At least one message is required")
    tool_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        turns += _message_turns(message, index, tool_names)
    return turns


def _job(data: Mapping[str, Any], *, max_tokens: int | None, stream: bool) -> Job:
    model = _string(_required(data, "model", "model"), "model")
    if not model:
        _fail("model", "String should have at least 1 character")
    turns = _turns(data)
    tools = _tools(data)
    choice = _tool_choice(data, tools)
    _check_ignored(data)
    return Job(
        model=model,
        turns=turns,
        tools=tools,
        tool_choice=choice,
        stops=_stops(data),
        max_tokens=max_tokens,
        stream=stream,
    )


def decode_messages(body: bytes) -> Job:
    """A `POST /v1/messages` body as a `Job`, or the 400 that names what is wrong."""
    data = _load(body)
    model = _required(data, "model", "model")  # Anthropic names model before max_tokens
    _string(model, "model")
    max_tokens = _integer(_required(data, "max_tokens", "max_tokens"), "max_tokens", minimum=1)
    stream = False
    if data.get("stream") is not None:
        stream = _boolean(data["stream"], "stream")
    return _job(data, max_tokens=max_tokens, stream=stream)


def decode_count_tokens(body: bytes) -> Job:
    """A `POST /v1/messages/count_tokens` body (no max_tokens) as a `Job` to estimate."""
    return _job(_load(body), max_tokens=None, stream=False)


# --- the answer --------------------------------------------------------------------------------


def message_id() -> str:
    return MESSAGE_PREFIX + new_call_id()


def message_body(completion: Completion, *, model: str, id_: str | None = None) -> dict[str, Any]:
    """The `message` object of a non-streamed answer."""
    content: list[dict[str, Any]] = []
    text = completion.content
    if text:
        content.append({"type": "text", "text": text})
    for call in completion.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": TOOL_USE_PREFIX + call.id,
                "name": call.name,
                "input": orjson.loads(call.arguments) if call.arguments else {},
            }
        )
    finish = completion.finish
    return {
        "id": id_ or message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS[finish.reason],
        "stop_sequence": finish.stop_sequence if finish.reason is FinishReason.STOP_SEQUENCE else None,
        "usage": {
            "input_tokens": finish.usage.prompt_tokens,
            "output_tokens": finish.usage.completion_tokens,
        },
    }


# --- errors ------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_payload(error: GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`: the body of an error response or event."""
    status = STATUS_OVERRIDES.get(error.status, error.status)
    return {"type": "error", "error": {"type": error_type(status), "message": error.message}}


def error_envelope(error: GatewayError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body Anthropic would answer with for `error`."""
    return STATUS_OVERRIDES.get(error.status, error.status), error_payload(error)
