"""The conversation, rendered into the one prompt string the upstream accepts.

Format (documented in the README): a lone user message is sent as it is. Anything longer becomes a
transcript, one block per turn in order, each headed by its role and separated by a blank line:

    System: <system turns>

    User: <text>

    Assistant: <text>

    User: <the last user message, last>

`instructions` (tool and output-format rules) go first, as a system block. With `max_chars`, the
oldest turns are dropped until the prompt fits; system turns, the instructions and the last user
turn are never dropped (a `PromptTooLong` says so when even that does not fit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from app.core.job import ToolCall, Turn

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
SEPARATOR = "\n\n"

# Renders an assistant turn's tool calls / a tool result; the tool-calling renderers plug in here.
ToolCallRenderer = Callable[[Sequence[ToolCall], str | None], str]
ToolResultRenderer = Callable[[str, str | None, str], str]


class PromptTooLong(ValueError):
    """Even the turns that are never dropped do not fit `max_chars`."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"the prompt needs {length} characters, the limit is {limit}")
        self.length = length
        self.limit = limit


def _default_tool_calls(tool_calls: Sequence[ToolCall], content: str | None) -> str:
    lines = [content] if content else []
    for call in tool_calls:
        lines.append(f"[called {call.name} with {call.arguments}]")
    return "\n".join(lines)


def _default_tool_result(tool_call_id: str, name: str | None, content: str) -> str:
    return f"[result of {name or 'tool'} call {tool_call_id}]\n{content}"


def _last_user_index(turns: Sequence[Turn]) -> int | None:
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            return index
    return None


def render_prompt(
    turns: Sequence[Turn],
    *,
    mode: Literal["full", "last_user"] = "full",
    instructions: str = "",
    render_tool_calls: ToolCallRenderer = _default_tool_calls,
    render_tool_result: ToolResultRenderer = _default_tool_result,
    max_chars: int | None = None,
) -> str:
    instructions = instructions.strip()
    last_user = _last_user_index(turns)
    if mode == "last_user" and last_user is not None:
        text = turns[last_user].text
        prompt = f"{instructions}{SEPARATOR}{text}" if instructions else text
        return _checked(prompt, max_chars)
    if len(turns) == 1 and turns[0].role == "user" and not instructions:
        return _checked(turns[0].text, max_chars)
    # A tool result may carry only its call's id; the name is on the assistant turn that called it.
    call_names = {call.id: call.name for turn in turns for call in turn.tool_calls}
    blocks: list[str] = []
    for turn in turns:
        label = ROLE_LABELS[turn.role]
        text = turn.text
        if turn.role == "assistant" and turn.tool_calls:
            text = render_tool_calls(turn.tool_calls, text or None)
        elif turn.role == "tool":
            call_id = turn.call_id or ""
            text = render_tool_result(call_id, turn.name or call_names.get(call_id), text)
        elif turn.name and turn.role == "user":
            label = f"{label} ({turn.name})"
        blocks.append(f"{label}: {text}")
    head = [f"System: {instructions}"] if instructions else []
    if max_chars is not None:
        blocks = fit_blocks(head, blocks, turns, last_user, max_chars)
    return SEPARATOR.join(head + blocks)


def fit_blocks(
    head: list[str], blocks: list[str], turns: Sequence[Turn], last_user: int | None, max_chars: int
) -> list[str]:
    """The blocks left once the oldest droppable turns are gone, so that the prompt fits `max_chars`."""
    sizes = [len(block) for block in head + blocks]
    length = sum(sizes) + len(SEPARATOR) * (len(sizes) - 1)
    if length <= max_chars:
        return blocks
    kept = [True] * len(blocks)
    for index, turn in enumerate(turns):
        if length <= max_chars:
            break
        if turn.role == "system" or index == last_user:
            continue
        kept[index] = False
        length -= len(blocks[index]) + len(SEPARATOR)
    if length > max_chars:
        raise PromptTooLong(length, max_chars)
    return [block for block, keep in zip(blocks, kept, strict=True) if keep]


def _checked(prompt: str, max_chars: int | None) -> str:
    if max_chars is not None and len(prompt) > max_chars:
        raise PromptTooLong(len(prompt), max_chars)
    return prompt
