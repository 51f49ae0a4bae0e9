"""OpenAI Responses on the wire: the request decoded into a `Job`, the `response` object, output items.

Validation is by hand and strict about the fields it knows (a string is not a number, "yes" is not a
boolean), each problem one 400 in OpenAI's words naming the parameter (`input[2].call_id`). Unknown
fields, at the top and inside items, are accepted and ignored: Codex and the SDKs send many
(`include`, `prompt_cache_key`, `client_metadata`, ...). Built-in tools the text-only upstream cannot
run are refused by name, never silently dropped.

A custom (freeform) tool reaches the core as a function with one string parameter `input`; a call to
it comes back as a `custom_tool_call` item whose `input` is that string.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import orjson

from app.core.errors import GatewayError, invalid_request
from app.core.events import CalledTool, Completion, FinishReason, Usage
from app.core.job import Job, OutputFormat, Role, ToolCall, ToolChoice, ToolSpec, Turn
from app.http.body import MAX_JSON_DEPTH, too_deep
from app.surfaces.openai_chat.wire import load_object

RESPONSE_PREFIX = "resp_"
MESSAGE_PREFIX = "msg_"
FUNCTION_CALL_PREFIX = "fc_"  # item id of a function call
CUSTOM_CALL_PREFIX = "ctc_"  # item id of a custom tool call
CALL_PREFIX = "call_"  # call_id, what a function_call_output refers to

MIN_OUTPUT_TOKENS = 16  # OpenAI's floor for max_output_tokens
MAX_METADATA_PAIRS = 16

# OpenAI's hosted tools: they run on OpenAI's side (or need a model trained for them), which a
# text-only web chat cannot do.
BUILTIN_TOOLS = frozenset(
    {
        "web_search",
        "web_search_2025_08_26",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "mcp",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "programmatic_tool_calling",
    }
)

ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
LEFT_OUT_ITEMS = frozenset({"reasoning"})  # accepted and not shown to the model
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_CHOICE_MODES: dict[str, Literal["auto", "none", "required"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
}


def new_item_id(prefix: str) -> str:
    """An OpenAI-looking id: the prefix and 48 hex digits."""
    return prefix + secrets.token_hex(24)


# --- reading JSON strictly ----------------------------------------------------------------------


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(param: str, expected: str, value: Any) -> NoReturn:
    raise invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_kind_of(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> NoReturn:
    raise invalid_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _bad_value(param: str, value: Any, choices: Sequence[str]) -> NoReturn:
    listed = ", ".join(f"'{c}'" for c in choices[:-1]) + f", and '{choices[-1]}'" if len(choices) > 1 else ""
    supported = f" Supported values are: {listed}." if listed else ""
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    raise invalid_request(
        f"Invalid value for '{param}': '{shown}'.{supported}", param=param, code="invalid_value"
    )


def _sub(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Fields:
    """The fields of one JSON object at `path`, read with their expected types."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            _wrong_type(path, "an object", data)
        self.data: Mapping[str, Any] = data
        self.path = path

    def param(self, key: str) -> str:
        return _sub(self.path, key)

    def raw(self, key: str, *, required: bool = False) -> Any:
        if required and self.data.get(key) is None:
            _missing(self.param(key))
        return self.data.get(key)

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.raw(key, required=required)
        if value is not None and not isinstance(value, str):
            _wrong_type(self.param(key), "a string", value)
        return value

    def text(self, key: str) -> str:
        """A required string (may be empty)."""
        value = self.string(key, required=True)
        assert value is not None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is not None and not isinstance(value, bool):
            _wrong_type(self.param(key), "a boolean", value)
        return value

    def integer(self, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            _wrong_type(self.param(key), "an integer", value)
        param = self.param(key)
        if minimum is not None and value < minimum:
            raise invalid_request(
                f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, "
                f"but got {value} instead.",
                param=param,
                code="integer_below_min_value",
            )
        if maximum is not None and value > maximum:
            raise invalid_request(
                f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, "
                f"but got {value} instead.",
                param=param,
                code="integer_above_max_value",
            )
        return value

    def number(self, key: str, low: float, high: float) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            _wrong_type(self.param(key), "a number", value)
        if not low <= value <= high:
            param = self.param(key)
            side, bound, sign = ("below minimum", low, ">=") if value < low else ("above maximum", high, "<=")
            raise invalid_request(
                f"Invalid '{param}': decimal {side} value. Expected a value {sign} {bound:g}, "
                f"but got {value:g} instead.",
                param=param,
                code=f"decimal_{side.replace(' ', '_')}_value",
            )
        return float(value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.raw(key)
        if value is not None and not isinstance(value, Mapping):
            _wrong_type(self.param(key), "an object", value)
        return value

    def array(self, key: str) -> list[Any] | None:
        value = self.raw(key)
        if value is not None and not isinstance(value, list):
            _wrong_type(self.param(key), "an array", value)
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str | None:
        value = self.raw(key)
        if value is None:
            return None
        if value not in choices:
            _bad_value(self.param(key), value, choices)
        return str(value)

    def name(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        if not _NAME.fullmatch(value):
            param = self.param(key)
            raise invalid_request(
                f"Invalid '{param}': '{value}' must be 1 to 64 letters, digits, underscores or dashes.",
                param=param,
                code="invalid_value",
            )
        return value


# --- the request ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultRef:
    """A tool result in the decoded input: which turn, which call it answers, and its item's path."""

    turn: int
    call_id: str
    param: str


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated `POST /v1/responses` body: the decoded parts and what the response echoes."""

    model: str
    turns: tuple[Turn, ...]  # the decoded `input`, without `instructions`
    instructions: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    custom_tools: frozenset[str] = frozenset()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    output: OutputFormat = field(default_factory=OutputFormat)
    max_output_tokens: int | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    results: tuple[ResultRef, ...] = ()
    echo: Mapping[str, Any] = field(default_factory=dict)  # request fields the response object repeats


def _text_of_parts(parts: list[Any], path: str) -> str:
    texts: list[str] = []
    for index, part in enumerate(parts):
        fields = _Fields(part, _sub(path, index))
        kind = fields.string("type", required=True)
        if kind in TEXT_PARTS:
            texts.append(fields.text("text"))
        elif kind == "refusal":
            texts.append(fields.text("refusal"))
        else:
            what = {"input_image": "Image", "input_file": "File", "input_audio": "Audio"}.get(str(kind))
            raise invalid_request(
                f"Invalid '{fields.path}': {what or repr(kind)} content parts are not supported: the "
                "upstream takes text only.",
                param=fields.path,
                code="unsupported_content",
            )
    return "\n".join(texts)


def _content_text(fields: _Fields, key: str) -> str:
    value = fields.raw(key, required=True)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _text_of_parts(value, fields.param(key))
    _wrong_type(fields.param(key), "a string or an array of content parts", value)


def _append_call(turns: list[Turn], call: ToolCall) -> None:
    """A call joins the assistant turn just before it (its text, or the calls made beside it)."""
    if turns and turns[-1].role == "assistant":
        last = turns[-1]
        turns[-1] = Turn("assistant", last.text, last.name, (*last.tool_calls, call))
    else:
        turns.append(Turn("assistant", "", tool_calls=(call,)))


def _decode_input(value: Any) -> tuple[list[Turn], list[ResultRef]]:
    if isinstance(value, str):
        return [Turn("user", value)], []
    if not isinstance(value, list):
        _wrong_type("input", "a string or an array of input items", value)
    if not value:
        raise invalid_request("'input' must not be an empty array.", param="input", code="empty_array")
    turns: list[Turn] = []
    results: list[ResultRef] = []
    for index, raw in enumerate(value):
        item = _Fields(raw, f"input[{index}]")
        kind = item.string("type")
        if kind is None and "role" not in item.data:
            _missing(item.param("type"))
        if kind in (None, "message"):
            role = item.choice("role", tuple(ROLES))
            if role is None:
                _missing(item.param("role"))
            turns.append(Turn(ROLES[role], _content_text(item, "content")))
        elif kind == "function_call":
            _append_call(turns, ToolCall(item.text("call_id"), item.text("name"), item.text("arguments")))
        elif kind == "custom_tool_call":
            call = ToolCall(item.text("call_id"), item.text("name"), {"input": item.text("input")})
            _append_call(turns, call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.text("call_id")
            results.append(ResultRef(len(turns), call_id, item.param("call_id")))
            turns.append(Turn("tool", _content_text(item, "output"), call_id=call_id))
        elif kind in LEFT_OUT_ITEMS:
            continue
        else:
            raise invalid_request(
                f"Invalid '{item.param('type')}': input items of type '{kind}' are not supported. "
                "Supported: 'message', 'function_call', 'function_call_output', 'custom_tool_call', "
                "'custom_tool_call_output' and 'reasoning' (left out).",
                param=item.param("type"),
                code="unsupported_input_item",
            )
    return turns, results


def _builtin_tool(kind: str, param: str) -> GatewayError:
    return invalid_request(
        f"Invalid '{param}': the built-in tool '{kind}' is not supported: it runs on OpenAI's side, and "
        "this gateway's upstream is a text-only chat. Declare your own 'function' or 'custom' tools "
        'instead (for the Codex CLI, set web_search = "disabled" in config.toml).',
        param=param,
        code="unsupported_tool",
    )


def custom_tool_spec(name: str, description: str | None, fmt: Mapping[str, Any] | None) -> ToolSpec:
    """A custom tool as the core sees it: a function of one string, `input`, described in full."""
    lines = [description.strip()] if description and description.strip() else []
    if fmt is not None and fmt.get("type") == "grammar":
        syntax, definition = fmt.get("syntax"), fmt.get("definition")
        lines.append(f"Its input is one string that must follow this {syntax} grammar:\n{definition}")
    else:
        lines.append("Its input is free-form text: one string.")
    parameters = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The whole input, as raw text."}},
        "required": ["input"],
        "additionalProperties": False,
    }
    return ToolSpec(name, "\n\n".join(lines), parameters)


def _decode_tools(value: list[Any]) -> tuple[list[ToolSpec], set[str], list[dict[str, Any]]]:
    specs: list[ToolSpec] = []
    custom: set[str] = set()
    echoed: list[dict[str, Any]] = []
    for index, raw in enumerate(value):
        tool = _Fields(raw, f"tools[{index}]")
        kind = tool.string("type", required=True)
        assert kind is not None
        if kind == "tool_search" and isinstance(raw, Mapping) and raw.get("execution") == "client":
            # Codex offers it by default to find its deferred tools; the client runs it, so nothing
            # is lost by not offering it: the model calls the tools it was shown.
            continue
        if kind in BUILTIN_TOOLS:
            raise _builtin_tool(kind, tool.param("type"))
        if kind not in ("function", "custom"):
            raise invalid_request(
                f"Invalid '{tool.param('type')}': tools of type '{kind}' are not supported. Supported: "
                "'function' and 'custom'.",
                param=tool.param("type"),
                code="unsupported_tool",
            )
        name = tool.name("name")
        if any(spec.name == name for spec in specs):
            raise invalid_request(
                f"Invalid '{tool.param('name')}': the tool name '{name}' is used twice.",
                param=tool.param("name"),
                code="invalid_value",
            )
        description = tool.string("description")
        if kind == "function":
            parameters = tool.mapping("parameters")
            strict = tool.boolean("strict")
            specs.append(ToolSpec(name, description, dict(parameters) if parameters is not None else None))
            echoed.append(
                {
                    "type": "function",
                    "name": name,
                    "description": description,
                    "parameters": parameters,
                    "strict": strict,
                }
            )
            continue
        fmt = _custom_format(tool)
        specs.append(custom_tool_spec(name, description, fmt))
        custom.add(name)
        entry: dict[str, Any] = {"type": "custom", "name": name, "description": description}
        entry["format"] = dict(fmt) if fmt is not None else {"type": "text"}
        echoed.append(entry)
    return specs, custom, echoed


def _custom_format(tool: _Fields) -> Mapping[str, Any] | None:
    raw = tool.mapping("format")
    if raw is None:
        return None
    fmt = _Fields(raw, tool.param("format"))
    kind = fmt.choice("type", ("text", "grammar"))
    if kind is None:
        _missing(fmt.param("type"))
    if kind == "grammar":
        if fmt.choice("syntax", ("lark", "regex")) is None:
            _missing(fmt.param("syntax"))
        fmt.text("definition")
    return raw


def _decode_tool_choice(
    value: Any, tools: list[ToolSpec], custom: set[str]
) -> tuple[ToolChoice, list[ToolSpec]]:
    """The choice, and the tools it leaves on offer (`allowed_tools` narrows them)."""
    if value is None:
        return ToolChoice(), tools
    if isinstance(value, str):
        mode = _TOOL_CHOICE_MODES.get(value)
        if mode is None:
            _bad_value("tool_choice", value, tuple(_TOOL_CHOICE_MODES))
        if mode == "required" and not tools:
            raise invalid_request(
                "'tool_choice' is 'required' but no 'tools' are given.", param="tool_choice"
            )
        return ToolChoice(mode=mode), tools
    choice = _Fields(value, "tool_choice")
    kind = choice.string("type", required=True)
    assert kind is not None
    if kind in ("function", "custom"):
        name = choice.text("name")
        wanted = [spec for spec in tools if spec.name == name and (spec.name in custom) == (kind == "custom")]
        if not wanted:
            raise invalid_request(
                f"Invalid 'tool_choice.name': no {kind} tool named '{name}' in 'tools'.",
                param="tool_choice.name",
            )
        return ToolChoice(mode="required", name=name), tools
    if kind == "allowed_tools":
        required = choice.choice("mode", ("auto", "required")) == "required"
        allowed = choice.array("tools")
        if allowed is None:
            _missing(choice.param("tools"))
        names: set[str] = set()
        for index, raw in enumerate(allowed):
            entry = _Fields(raw, _sub(choice.param("tools"), index))
            entry_kind = entry.string("type", required=True)
            if entry_kind in BUILTIN_TOOLS:
                raise _builtin_tool(str(entry_kind), entry.param("type"))
            name = entry.text("name")
            if all(spec.name != name for spec in tools):
                param = entry.param("name")
                raise invalid_request(f"Invalid '{param}': no tool named '{name}' in 'tools'.", param=param)
            names.add(name)
        offered = [spec for spec in tools if spec.name in names]
        return ToolChoice(mode="required" if required else "auto"), offered
    if kind in BUILTIN_TOOLS:
        raise _builtin_tool(kind, "tool_choice.type")
    _bad_value("tool_choice.type", kind, ("function", "custom", "allowed_tools"))


def _decode_text(value: Mapping[str, Any] | None) -> tuple[OutputFormat, dict[str, Any]]:
    if value is None:
        return OutputFormat(), {"format": {"type": "text"}, "verbosity": "medium"}
    text = _Fields(value, "text")
    verbosity = text.choice("verbosity", ("low", "medium", "high")) or "medium"
    raw = text.mapping("format")
    if raw is None:
        return OutputFormat(), {"format": {"type": "text"}, "verbosity": verbosity}
    fmt = _Fields(raw, "text.format")
    kind = fmt.choice("type", ("text", "json_object", "json_schema"))
    if kind is None:
        _missing(fmt.param("type"))
    echo: dict[str, Any] = {"format": {"type": kind}, "verbosity": verbosity}
    if kind == "text":
        return OutputFormat(), echo
    if kind == "json_object":
        return OutputFormat(kind="json_object"), echo
    name = fmt.name("name")
    schema = fmt.mapping("schema")
    if schema is None:
        _missing(fmt.param("schema"))
    description = fmt.string("description")
    strict = bool(fmt.boolean("strict"))
    echo["format"] = {
        "type": "json_schema",
        "description": description,
        "name": name,
        "schema": schema,
        "strict": strict,
    }
    return OutputFormat("json_schema", dict(schema), name, description, strict), echo


def _decode_metadata(value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if len(value) > MAX_METADATA_PAIRS:
        raise invalid_request(
            f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} key-value pairs.", param="metadata"
        )
    for key, item in value.items():
        param = f"metadata.{key}"
        if len(key) > 64:
            raise invalid_request(f"Invalid '{param}': keys are at most 64 characters.", param=param)
        if not isinstance(item, str):
            _wrong_type(param, "a string", item)
        if len(item) > 512:
            raise invalid_request(f"Invalid '{param}': values are at most 512 characters.", param=param)
    return dict(value)


def _refuse(fields: _Fields, key: str, why: str) -> None:
    value = fields.raw(key)
    if value is not None and value is not False:
        raise invalid_request(f"'{key}' is not supported: {why}", param=key, code="unsupported_parameter")


def parse_request(body: bytes) -> ResponsesRequest:
    """The request from raw JSON bytes, or a GatewayError(400) saying what is wrong and where."""
    data = load_object(body)
    if too_deep(data):
        raise invalid_request(
            f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json"
        )
    top = _Fields(data, "")
    model = top.string("model", required=True)
    assert model is not None
    if not model:
        raise invalid_request("Invalid 'model': must not be empty.", param="model", code="invalid_value")
    _refuse(top, "background", "background responses need a server that keeps running them.")
    _refuse(top, "conversation", "conversations are kept by OpenAI; use 'previous_response_id'.")
    _refuse(top, "prompt", "prompt templates are stored on OpenAI's platform.")
    instructions = top.string("instructions")
    turns, results = _decode_input(top.raw("input", required=True))
    raw_tools = top.array("tools") or []
    tools, custom, echoed_tools = _decode_tools(raw_tools)
    parallel = top.boolean("parallel_tool_calls")
    choice, offered = _decode_tool_choice(top.raw("tool_choice"), tools, custom)
    choice = ToolChoice(choice.mode, choice.name, parallel)
    output, text_echo = _decode_text(top.mapping("text"))
    max_output_tokens = top.integer("max_output_tokens", minimum=MIN_OUTPUT_TOKENS)
    reasoning = top.mapping("reasoning")
    reasoning_fields = _Fields(reasoning or {}, "reasoning")
    effort, summary = reasoning_fields.string("effort"), reasoning_fields.string("summary")
    include = top.array("include") or []
    for index, entry in enumerate(include):
        if not isinstance(entry, str):
            _wrong_type(f"include[{index}]", "a string", entry)
    for key in ("previous_response_id", "user", "safety_identifier", "prompt_cache_key", "service_tier"):
        top.string(key)
    top.mapping("stream_options")
    echo: dict[str, Any] = {
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "max_tool_calls": top.integer("max_tool_calls", minimum=1),
        "metadata": _decode_metadata(top.mapping("metadata")),
        "model": model,
        "parallel_tool_calls": parallel if parallel is not None else True,
        "previous_response_id": top.raw("previous_response_id"),
        "prompt_cache_key": top.raw("prompt_cache_key"),
        "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": top.raw("safety_identifier"),
        "service_tier": top.raw("service_tier") or "default",
        "store": top.boolean("store") is not False,
        "temperature": top.number("temperature", 0, 2),
        "text": text_echo,
        "tool_choice": top.raw("tool_choice") if top.raw("tool_choice") is not None else "auto",
        "tools": echoed_tools,
        "top_logprobs": top.integer("top_logprobs", minimum=0, maximum=20) or 0,
        "top_p": top.number("top_p", 0, 1),
        "truncation": top.choice("truncation", ("auto", "disabled")) or "disabled",
        "user": top.raw("user"),
    }
    for key, default in (("temperature", 1.0), ("top_p", 1.0)):
        echo[key] = default if echo[key] is None else echo[key]
    return ResponsesRequest(
        model=model,
        turns=tuple(turns),
        instructions=instructions,
        tools=tuple(offered),
        custom_tools=frozenset(custom),
        tool_choice=choice,
        output=output,
        max_output_tokens=max_output_tokens,
        stream=bool(top.boolean("stream")),
        store=echo["store"],
        previous_response_id=echo["previous_response_id"],
        results=tuple(results),
        echo=echo,
    )


def to_job(request: ResponsesRequest, history: Sequence[Turn] = ()) -> Job:
    """The neutral job: `instructions` first, then the stored conversation, then this input.

    Every tool result must answer a call made before it (in the history or earlier in the input),
    as OpenAI checks; the result turn then carries the call's tool name.
    """
    names = {call.id: call.name for turn in history for call in turn.tool_calls}
    turns = list(request.turns)
    results = {ref.turn: ref for ref in request.results}
    for index, turn in enumerate(turns):
        for call in turn.tool_calls:
            names[call.id] = call.name
        ref = results.get(index)
        if ref is None:
            continue
        if ref.call_id not in names:
            raise invalid_request(
                f"No tool call found for the tool output with call_id '{ref.call_id}'.",
                param=ref.param,
            )
        turns[index] = Turn("tool", turn.text, names[ref.call_id], call_id=ref.call_id)
    system = [Turn("system", request.instructions)] if request.instructions else []
    return Job(
        model=request.model,
        turns=[*system, *history, *turns],
        tools=list(request.tools),
        tool_choice=request.tool_choice,
        output=request.output,
        max_tokens=request.max_output_tokens,
        stream=request.stream,
    )


def conversation_of(job: Job, request: ResponsesRequest) -> tuple[Turn, ...]:
    """The job's turns without `instructions`: what a stored response is continued from."""
    return tuple(job.turns[1:] if request.instructions else job.turns)


def previous_response_not_found(response_id: str) -> GatewayError:
    return invalid_request(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def response_not_found(response_id: str) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.", type="invalid_request_error")


# --- the response -------------------------------------------------------------------------------


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message; `text` None: just added, no content part yet."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}


def custom_input(arguments: str) -> str:
    """The `input` string of a custom tool call from the arguments object the model wrote.

    Normally `{"input": "..."}`; an object with one string member, or a JSON string, is taken as
    that string; anything else is passed on as the text the model wrote.
    """
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("input"), str):
            return str(value["input"])
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(value) == 1 and len(strings) == 1:
            return strings[0]
    return arguments


def call_item(call_id: str, name: str, arguments: str, *, custom: bool, status: str) -> dict[str, Any]:
    """A `function_call` or `custom_tool_call` item for the core's neutral call id."""
    if custom:
        return {
            "id": CUSTOM_CALL_PREFIX + call_id,
            "type": "custom_tool_call",
            "status": status,
            "call_id": CALL_PREFIX + call_id,
            "input": custom_input(arguments) if arguments else "",
            "name": name,
        }
    return {
        "id": FUNCTION_CALL_PREFIX + call_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": CALL_PREFIX + call_id,
        "name": name,
    }


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The `response` object, in OpenAI's field order."""
    echo = request.echo
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": echo["instructions"],
        "max_output_tokens": echo["max_output_tokens"],
        "max_tool_calls": echo["max_tool_calls"],
        "model": echo["model"],
        "output": output,
        "parallel_tool_calls": echo["parallel_tool_calls"],
        "previous_response_id": echo["previous_response_id"],
        "prompt_cache_key": echo["prompt_cache_key"],
        "reasoning": echo["reasoning"],
        "safety_identifier": echo["safety_identifier"],
        "service_tier": echo["service_tier"],
        "store": echo["store"],
        "temperature": echo["temperature"],
        "text": echo["text"],
        "tool_choice": echo["tool_choice"],
        "tools": echo["tools"],
        "top_logprobs": echo["top_logprobs"],
        "top_p": echo["top_p"],
        "truncation": echo["truncation"],
        "usage": usage,
        "user": echo["user"],
        "metadata": echo["metadata"],
    }


def finish_status(reason: FinishReason) -> tuple[str, dict[str, Any] | None]:
    """The response's status and `incomplete_details` for how the answer ended."""
    if reason is FinishReason.LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def response_body(
    request: ResponsesRequest,
    completion: Completion,
    *,
    response_id: str,
    created_at: int,
    completed_at: int,
    new_id: Callable[[str], str] = new_item_id,
) -> dict[str, Any]:
    """The `response` object of a whole answer: its message (if any text), then its calls."""
    status, incomplete = finish_status(completion.finish.reason)
    output: list[dict[str, Any]] = []
    if completion.content is not None:
        output.append(message_item(new_id(MESSAGE_PREFIX), completion.text, status))
    output += [_called(call, request) for call in completion.tool_calls]
    return response_object(
        request,
        response_id=response_id,
        created_at=created_at,
        status=status,
        output=output,
        usage=usage_dict(completion.finish.usage),
        incomplete_details=incomplete,
        completed_at=completed_at if status == "completed" else None,
    )


def _called(call: CalledTool, request: ResponsesRequest) -> dict[str, Any]:
    custom = call.name in request.custom_tools
    return call_item(call.id, call.name, call.arguments, custom=custom, status="completed")


def output_turns(output: Sequence[Mapping[str, Any]]) -> list[Turn]:
    """A response's output items as conversation turns, to continue it by `previous_response_id`."""
    turns: list[Turn] = []
    for item in output:
        kind = item.get("type")
        if kind == "message":
            parts = item.get("content") or []
            text = "".join(str(p.get("text", "")) for p in parts if p.get("type") == "output_text")
            turns.append(Turn("assistant", text))
        elif kind == "function_call":
            _append_call(turns, ToolCall(item["call_id"], item["name"], item["arguments"]))
        elif kind == "custom_tool_call":
            _append_call(turns, ToolCall(item["call_id"], item["name"], {"input": item["input"]}))
    return turns
