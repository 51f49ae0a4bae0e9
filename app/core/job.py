"""The neutral request: what a client asked for, in no dialect.

A surface decodes its wire request into a `Job` (with its own validation errors); the core renders it
into the one prompt the upstream takes and shapes the answer by its tools, output format, stops and
token limit. Tool-call ids here are whatever the client sent: they only tie a result to its call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An earlier call the assistant made; `arguments` is JSON text or an already-parsed object."""

    id: str
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation.

    `system`: instructions in place; `user` / `assistant`: text (an assistant turn may also carry tool
    calls); `tool`: the result of the call `call_id` (its `name` when the client gave it).
    """

    role: Role
    text: str = ""
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; `parameters` is a JSON Schema (None: no parameters given)."""

    name: str
    description: str | None = None
    parameters: Any = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`auto`: the model decides; `none`: no calls; `required`: at least one; `name`: that one."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None
    parallel: bool | None = None  # False: at most one call per reply


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """`json_object` / `json_schema` ask for one JSON value and strip fences and prose around it."""

    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: Any = None
    name: str | None = None
    description: str | None = None
    strict: bool = False


@dataclass(slots=True)
class Job:
    model: str  # as the client named it; echoed back
    turns: list[Turn]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    output: OutputFormat = field(default_factory=OutputFormat)
    stops: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = False
