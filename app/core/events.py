"""The neutral answer: the events the service produces, streamed or collected.

A stream is `Started`, then `TextDelta` / `ToolCallDelta` / `KeepAlive` in any order, then exactly one
of `Finished` or `Failed`. Before `Started` only `KeepAlive` (the upstream is slow to answer) and
`Failed` can come. A tool call arrives as a first delta with `id` and `name` (and empty arguments),
then its arguments; ids are neutral random strings that each surface dresses in its own prefix.
"""

from __future__ import annotations

import enum
import secrets
import string
from dataclasses import dataclass, field

from app.core.errors import GatewayError

_ALNUM = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A neutral tool-call id: 24 random alphanumerics (a surface adds `call_`, `toolu_`, ...).

    One read of random bytes, not 24 `secrets.choice` calls (19 µs, most of a surface's time to first
    token). Bytes of 248 and above are skipped so that each of the 62 characters stays equally likely."""
    while True:
        out = [_ALNUM[b % 62] for b in secrets.token_bytes(32) if b < 248]
        if len(out) >= 24:
            return "".join(out[:24])


class FinishReason(enum.Enum):
    END = "end"  # the model finished its answer
    TOOL_CALLS = "tool_calls"  # the answer called at least one tool
    LENGTH = "length"  # the token limit cut it
    STOP_SEQUENCE = "stop_sequence"  # one of the stop sequences cut it (`Finished.stop_sequence`)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Started:
    """The upstream answered: the first piece follows."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """The first delta of a call has `id` and `name` and empty arguments; the next, its arguments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing new for a keep-alive interval."""


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    error: GatewayError


Event = Started | TextDelta | ToolCallDelta | KeepAlive | Finished | Failed
AnswerEvent = TextDelta | ToolCallDelta  # what the answer shaper produces


@dataclass(frozen=True, slots=True)
class CalledTool:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass
class Completion:
    """A whole answer: its text, the tools it called, and how it ended."""

    text: str
    tool_calls: list[CalledTool] = field(default_factory=list)
    finish: Finished = field(default_factory=lambda: Finished(FinishReason.END, Usage(0, 0)))

    @property
    def content(self) -> str | None:
        """The text, or None when the answer only called tools."""
        if self.tool_calls and not self.text.strip():
            return None
        return self.text
