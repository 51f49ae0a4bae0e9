"""The conversation, rendered into the one prompt string the upstream accepts.

Format (documented in the README): a lone user message is sent as it is. Anything longer becomes a
transcript, one block per message in order, each headed by its role and separated by a blank line:

    System: <system and developer messages>

    User: <text>

    Assistant: <text>

    User: <the last user message, last>

`instructions` (tool and output-format rules) go first, as a system block. Content given as a list
of parts has its text parts joined by newlines; other parts (images, audio, files) are refused with a
400 until the upstream can take them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from app.protocol.openai import Message, invalid_request

ROLE_LABELS = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
    "function": "Tool",
}
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

# Renders an assistant message's tool calls / a tool result; issue-specific renderers plug in here.
ToolCallRenderer = Callable[[list[dict[str, Any]], str | None], str]
ToolResultRenderer = Callable[[str, str | None, str], str]


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


def _default_tool_calls(tool_calls: list[dict[str, Any]], content: str | None) -> str:
    lines = [content] if content else []
    for call in tool_calls:
        function = call.get("function") or {}
        lines.append(f"[called {function.get('name')} with {function.get('arguments')}]")
    return "\n".join(lines)


def _default_tool_result(tool_call_id: str, name: str | None, content: str) -> str:
    return f"[result of {name or 'tool'} call {tool_call_id}]\n{content}"


def render_prompt(
    messages: Sequence[Message],
    *,
    mode: Literal["full", "last_user"] = "full",
    instructions: str = "",
    render_tool_calls: ToolCallRenderer = _default_tool_calls,
    render_tool_result: ToolResultRenderer = _default_tool_result,
) -> str:
    texts = [content_text(message.content, index) for index, message in enumerate(messages)]
    if mode == "last_user":
        for message, text in zip(reversed(messages), reversed(texts), strict=True):
            if message.role == "user":
                return f"{instructions.strip()}\n\n{text}" if instructions.strip() else text
    if len(messages) == 1 and messages[0].role == "user" and not instructions.strip():
        return texts[0]
    # A tool message carries only its call's id; the name is on the assistant message that called it.
    call_names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for message in messages
        for call in message.tool_calls or []
        if isinstance(call, dict)
    }
    blocks: list[str] = []
    if instructions.strip():
        blocks.append(f"System: {instructions.strip()}")
    for message, text in zip(messages, texts, strict=True):
        label = ROLE_LABELS[message.role]
        if message.role == "assistant" and message.tool_calls:
            text = render_tool_calls(message.tool_calls, text or None)
        elif message.role in ("tool", "function"):
            call_id = message.tool_call_id or ""
            text = render_tool_result(call_id, message.name or call_names.get(call_id), text)
        elif message.name and message.role == "user":
            label = f"{label} ({message.name})"
        blocks.append(f"{label}: {text}")
    return "\n\n".join(blocks)
