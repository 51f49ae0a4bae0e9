"""A Chat Completions request, decoded into the core's neutral `Job`, with OpenAI's 400s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.core.errors import invalid_request
from app.core.job import Job, OutputFormat, Role, ToolCall, ToolChoice, ToolSpec, Turn
from app.surfaces.openai_chat.wire import ChatCompletionRequest, Message

TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def content_text(content: Any, index: int) -> str:
    """The text of one message's content; a 400 naming the part for anything that is not text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part_index, part in enumerate(content):
        kind = part.get("type")
        if kind in TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_request(
                    "A text content part needs a string 'text'.",
                    param=f"messages[{index}].content[{part_index}].text",
                )
            texts.append(text)
        elif kind == "refusal":
            refusal = part.get("refusal")
            texts.append(refusal if isinstance(refusal, str) else "")
        else:
            what = "Image" if kind in ("image_url", "input_image") else f"'{kind}'"
            raise invalid_request(
                f"{what} content parts are not supported: the upstream takes text only.",
                param=f"messages[{index}].content[{part_index}]",
                code="unsupported_content",
            )
    return "\n".join(texts)


def _function_of(tool: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if tool.get("type", "function") != "function":
        return None
    fn = tool.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return None
    return fn


def tool_names_of(tools: Sequence[Mapping[str, Any]] | None) -> set[str]:
    """The function names declared in an OpenAI ``tools`` list."""
    return {fn["name"] for fn in (_function_of(tool) for tool in tools or ()) if fn is not None}


def tool_specs(tools: Sequence[Mapping[str, Any]] | None) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for tool in tools or ():
        fn = _function_of(tool)
        if fn is not None:
            specs.append(ToolSpec(fn["name"], fn.get("description"), fn.get("parameters")))
    return specs


def tool_choice_of(choice: str | Mapping[str, Any] | None, parallel: bool | None) -> ToolChoice:
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        if isinstance(name, str) and name:
            return ToolChoice("required", name, parallel)
        return ToolChoice("auto", None, parallel)
    if choice == "none":
        return ToolChoice("none", None, parallel)
    if choice == "required":
        return ToolChoice("required", None, parallel)
    return ToolChoice("auto", None, parallel)


def check_tools(request: ChatCompletionRequest) -> None:
    """The tools and tool choice a request offers, validated."""
    for index, tool in enumerate(request.tools or []):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise invalid_request("Only function tools are supported.", param=f"tools[{index}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid_request("A function tool needs a name.", param=f"tools[{index}].function.name")
    names = tool_names_of(request.tools)
    choice = request.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        raise invalid_request("tool_choice must be auto, none, required or a function.", param="tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise invalid_request(f"tool_choice names an unknown function {name!r}.", param="tool_choice")
    if choice is not None and choice != "none" and not names:
        raise invalid_request("tool_choice needs tools.", param="tool_choice")


def output_format(response_format: Mapping[str, Any] | None) -> OutputFormat:
    response_format = response_format or {}
    kind = response_format.get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid_request(f"Unknown response_format type {kind!r}.", param="response_format.type")
    if kind != "json_schema":
        return OutputFormat(kind)
    spec = response_format.get("json_schema")
    spec = spec if isinstance(spec, Mapping) else {}
    name, description = spec.get("name"), spec.get("description")
    return OutputFormat(
        "json_schema",
        schema=spec.get("schema", {}),
        name=name if isinstance(name, str) else None,
        description=description if isinstance(description, str) else None,
        strict=bool(spec.get("strict")),
    )


def tool_call_of(call: Mapping[str, Any]) -> ToolCall:
    fn = call.get("function")
    fn = fn if isinstance(fn, Mapping) else call
    call_id = call.get("id")
    return ToolCall(call_id if isinstance(call_id, str) else "", fn.get("name") or "", fn.get("arguments"))


def turns_of(messages: Sequence[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        text = content_text(message.content, index)
        if message.role in ("tool", "function"):
            turns.append(Turn("tool", text, name=message.name, call_id=message.tool_call_id or ""))
        elif message.role == "assistant" and message.tool_calls:
            calls = tuple(tool_call_of(c) for c in message.tool_calls if isinstance(c, Mapping))
            turns.append(Turn("assistant", text, tool_calls=calls))
        else:
            role = ROLES[message.role]
            turns.append(Turn(role, text, name=message.name if role == "user" else None))
    return turns


def decode(request: ChatCompletionRequest) -> Job:
    check_tools(request)
    stops = [request.stop] if isinstance(request.stop, str) else request.stop
    return Job(
        model=request.model,
        turns=turns_of(request.messages),
        tools=tool_specs(request.tools),
        tool_choice=tool_choice_of(request.tool_choice, request.parallel_tool_calls),
        output=output_format(request.response_format),
        stops=[s for s in stops or [] if s],
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stream=bool(request.stream),
    )
