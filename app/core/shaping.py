"""The upstream's text, shaped into what the client asked for: stop sequences, a token limit, tool
calls, and JSON output. Pure and incremental, used by the streaming and the whole-answer paths alike.

Order: stop sequences cut the raw text first (a stop inside a would-be tool call still stops), then
the token limit, then the tool-call parser, then JSON cleaning. JSON mode holds the text to the end,
since a code fence can only be stripped once the whole answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.events import AnswerEvent, CalledTool, FinishReason, TextDelta
from app.core.tools import StopSequenceCutter, ToolCallStreamParser, clean_json_answer
from app.core.usage import estimate_tokens

Event = AnswerEvent


def cut_to_tokens(text: str, budget: int) -> str:
    """The longest prefix of `text` whose estimate fits `budget` tokens."""
    if estimate_tokens(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_tokens(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


class AnswerShaper:
    def __init__(
        self,
        *,
        tool_names: set[str] | None = None,
        stops: list[str] | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> None:
        self._stops = StopSequenceCutter(stops) if stops else None
        self._tools = ToolCallStreamParser(tool_names) if tool_names else None
        self._max_tokens = max_tokens
        self._json_mode = json_mode
        self._json_parts: list[str] = []
        self._raw = ""  # what passed the stop cutter, for the token count
        self.done = False  # no more upstream text is wanted (a stop or the limit was reached)
        self.truncated = False

    def feed(self, text: str) -> list[Event]:
        if self.done:
            return []
        if self._stops is not None:
            text, stopped = self._stops.feed(text)
            if stopped:
                self.done = True
        text = self._limit(text)
        events = self._shape(text)
        if self.done:
            events += self._flush()
        return events

    def finish(self) -> list[Event]:
        """The end of the upstream text: release what was held back."""
        if self.done:
            return []
        self.done = True
        tail = self._stops.finish() if self._stops is not None else ""
        return self._shape(self._limit(tail)) + self._flush()

    @property
    def finish_reason(self) -> FinishReason:
        if self._tools is not None and self._tools.called_tools:
            return FinishReason.TOOL_CALLS
        if self.truncated:
            return FinishReason.LENGTH
        return FinishReason.STOP_SEQUENCE if self.stop_sequence is not None else FinishReason.END

    @property
    def stop_sequence(self) -> str | None:
        """The stop sequence that ended the answer, if one did."""
        return self._stops.matched if self._stops is not None else None

    def _limit(self, text: str) -> str:
        if self._max_tokens is None or not text:
            return text
        budget = self._max_tokens - estimate_tokens(self._raw)
        kept = cut_to_tokens(text, budget)
        if kept != text:
            self.truncated = self.done = True
        self._raw += kept
        return kept

    def _shape(self, text: str) -> list[Event]:
        if not text:
            return []
        events: list[Event] = self._tools.feed(text) if self._tools is not None else [TextDelta(text)]
        return self._json(events)

    def _flush(self) -> list[Event]:
        events: list[Event] = self._tools.finish() if self._tools is not None else []
        events = self._json(events)
        if self._json_mode:
            text = "".join(self._json_parts)
            self._json_parts = []
            if text:
                events.append(TextDelta(clean_json_answer(text)))
        return events

    def _json(self, events: list[Event]) -> list[Event]:
        if not self._json_mode:
            return events
        kept: list[Event] = []
        for event in events:
            if isinstance(event, TextDelta):
                self._json_parts.append(event.text)
            else:
                kept.append(event)
        return kept


@dataclass
class CollectedAnswer:
    """A whole answer, gathered from its events: its text and its tool calls."""

    text: str = ""
    _calls: list[list[str]] = field(default_factory=list)  # [id, name, arguments] per call index

    def add(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, TextDelta):
                self.text += event.text
                continue
            while len(self._calls) <= event.index:
                self._calls.append(["", "", ""])
            call = self._calls[event.index]
            if event.id:
                call[0] = event.id
            if event.name:
                call[1] = event.name
            call[2] += event.arguments

    @property
    def tool_calls(self) -> list[CalledTool]:
        return [CalledTool(id_, name, arguments) for id_, name, arguments in self._calls]

    @property
    def counted_text(self) -> str:
        """What the completion token count is taken over: the text and every call's arguments."""
        return self.text + "".join(call[2] for call in self._calls)
