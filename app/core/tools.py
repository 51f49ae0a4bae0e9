"""Tool calling emulated over a text-only upstream model, in no client's dialect.

Owns the prompt text that describes tools, the transcript rendering of earlier tool calls and results, the
parsing of the model's text back into tool calls (whole answer and streaming), stop sequences and
JSON-mode clean-up. Pure: the core's job types and strings in, events and strings out, no I/O.

Call format the model is asked to use (earlier calls are rendered the same way, with an ``"id"`` per call)::

    <tool_calls>
    [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    </tool_calls>

Tool results are rendered as ``<tool_result id="<call id>" name="get_weather">\\n...\\n</tool_result>``.

What the parser accepts as a call, because models slip (everything else is text, and so is a candidate that
does not parse into at least one call to a known tool):

* a ``<tool_calls>`` or ``<tool_call>`` block anywhere; the closing tag may be missing at the end of the
  answer; the body may be fenced, JSON lines, or several inner ``<tool_call>`` blocks;
* a code fence opened at a line start with no info string or ``json``/``json5``/``jsonc``/``xml``/
  ``tool_call(s)``, whose body is such a block or call JSON (other fences are code: never calls);
* call JSON that starts a line (``{`` or ``[`` first on its line), e.g. the whole answer.

Call JSON is ``{"name", "arguments"}`` (also ``tool_name``/``tool``, ``parameters``/``args``/``input``, or
the arguments flattened beside ``name``), the ``{"type": "function", "function": {...}}`` shape models
learnt from OpenAI,
``{"tool_calls": [...]}``, or an array of these; its first key must be one of those keys. ``arguments`` may
be an object or a JSON string and is re-serialised compactly; missing means ``{}``; a non-object drops the
entry. Broken JSON (single quotes, trailing commas, missing brackets) is repaired with ``json_repair``.
Unknown names (after stripping a ``functions.`` prefix and a unique case-insensitive match) drop the entry;
an entry with a ``description`` is a tool definition being echoed, not a call. Once a call was made, a
``<tool_result`` the model writes itself is hallucinated and ends the answer.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, TypeAlias

import json_repair

from app.core.events import TextDelta, ToolCallDelta, new_call_id
from app.core.job import OutputFormat, ToolCall, ToolChoice, ToolSpec

__all__ = [
    "ParsedAnswer",
    "ParsedCall",
    "StopSequenceCutter",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStreamParser",
    "clean_json_answer",
    "parse_tool_calls",
    "render_assistant_tool_calls",
    "render_response_format",
    "render_tool_result",
    "render_tools_instructions",
]

_OPEN_TAGS = ("<tool_calls>", "<tool_call>")
_CLOSE_TAGS = {"<tool_calls>": "</tool_calls>", "<tool_call>": "</tool_call>"}
_RESULT_TAG = "<tool_result"
_FENCE = "```"
_FENCE_INFOS = ("", "json", "json5", "jsonc", "xml", "tool_calls", "tool_call")
_CLOSE_FENCE_RE = re.compile(r"\n[ \t]*```")
_INNER_TAG_RE = re.compile(r"<tool_calls?>(.*?)(?:</tool_calls?>|\Z)", re.S | re.I)

_NAME_KEYS = ("name", "tool_name", "tool")
_ARG_KEYS = ("arguments", "parameters", "args", "input")
_ENVELOPE_KEYS = frozenset({"id", "type", "index", "call_id", "function", *_NAME_KEYS})
# A candidate JSON value whose first key is not one of these is released as text at once, so JSON answers
# that are not calls stream without waiting for the value to close.
_CALL_KEYS = frozenset({*_ENVELOPE_KEYS, *_ARG_KEYS, "tool_calls", "tool_call"})
_NAME_PREFIXES = ("functions.", "function.", "tools.", "tool.")


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = field(default_factory=new_call_id, compare=False)


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


StreamEvent: TypeAlias = TextDelta | ToolCallDelta


# ---------------------------------------------------------------------------------------------------------
# Rendering


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _example_value(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return "..."
    for key in ("enum", "examples"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return options[0]
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return {"integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}.get(str(kind), "...")


def _example_arguments(parameters: Any) -> dict[str, Any]:
    if not isinstance(parameters, Mapping):
        return {}
    props = parameters.get("properties")
    if not isinstance(props, Mapping) or not props:
        return {}
    required = parameters.get("required")
    keys = [k for k in required if isinstance(k, str) and k in props] if isinstance(required, list) else []
    return {k: _example_value(props[k]) for k in keys or [next(iter(props))]}


# Keys of a JSON Schema that tell a validator about the schema itself, not the model about the value.
_SCHEMA_META_KEYS = frozenset({"$schema", "$id", "$comment"})


# Keywords whose value maps names (of properties or definitions) to schemas: the names are data.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _schema_for_prompt(schema: Any) -> Any:
    """The schema without its meta keys: agents send `$schema` on every tool, tokens the model never needs."""
    if isinstance(schema, list):
        return [_schema_for_prompt(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_META_KEYS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: _schema_for_prompt(item) for name, item in value.items()}
        else:
            out[key] = _schema_for_prompt(value)
    return out


def _render_tool_entry(tool: ToolSpec) -> list[str]:
    head = f"- {tool.name}"
    description = tool.description
    if isinstance(description, str) and description.strip():
        lines = [line.rstrip() for line in description.strip().splitlines()]
        head += ": " + "\n".join([lines[0], *(f"  {line}" if line else "" for line in lines[1:])])
    parameters = _schema_for_prompt(tool.parameters) if tool.parameters is not None else {}
    return [head, f"  parameters: {_compact(parameters)}"]


def render_tools_instructions(tools: Sequence[ToolSpec], choice: ToolChoice | None = None) -> str:
    """The tools section of the prompt; "" when there is nothing to offer or the choice is ``none``."""
    choice = choice or ToolChoice()
    if choice.mode == "none" or not tools:
        return ""
    forced = choice.name
    shown = next((tool for tool in tools if tool.name == forced), tools[0])
    example = _dumps([{"name": shown.name, "arguments": _example_arguments(shown.parameters)}])

    lines = ["# Tools", "", "You can call these tools. Their parameters are given as JSON Schema.", ""]
    for tool in tools:
        lines += _render_tool_entry(tool)
    lines += [
        "",
        "## Calling tools",
        "",
        "To call tools, reply with this block (a JSON array, one object per call):",
        "<tool_calls>",
        example,
        "</tool_calls>",
        "",
        '- "name" is one of the tool names above; "arguments" is a JSON object matching its parameters.',
        "- Write strict JSON (double quotes, no comments) and no code fences around the block.",
        "- You may write one short sentence before the block. Stop right after </tool_calls>.",
        '- Results come back in a later message as <tool_result id="..."> blocks. Never write them yourself.',
    ]
    if choice.parallel is False:
        lines.append("- Call at most one tool per reply: exactly one object in the array.")
    else:
        lines.append("- To call several tools at once, put several objects in the array.")
    if forced is not None:
        lines.append(f'- You must call the tool "{forced}" in this reply, and no other tool.')
    elif choice.mode == "required":
        lines.append("- You must call at least one tool in this reply.")
    else:
        lines.append("- Call a tool only when it helps; otherwise just answer, with no <tool_calls> block.")
    return "\n".join(lines)


def _arguments_for_transcript(raw: Any) -> Any:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        return raw
    value = _load_json(raw)
    # Unparseable arguments stay visible as written rather than being silently replaced.
    return value if isinstance(value, dict) else raw


def render_assistant_tool_calls(tool_calls: Sequence[ToolCall], content: str | None) -> str:
    """An earlier assistant turn with tool calls, in the very format the model is asked to answer in."""
    entries: list[dict[str, Any]] = []
    for call in tool_calls:
        entry: dict[str, Any] = {}
        if call.id:
            entry["id"] = call.id
        entry["name"] = call.name or ""
        entry["arguments"] = _arguments_for_transcript(call.arguments)
        entries.append(entry)
    parts = [content.strip()] if content and content.strip() else []
    if entries:
        parts.append(f"<tool_calls>\n{_dumps(entries)}\n</tool_calls>")
    return "\n".join(parts)


def render_tool_result(tool_call_id: str, name: str | None, content: str) -> str:
    """A tool message, tied to the call it answers by id."""
    attrs = f' id="{html.escape(tool_call_id)}"'
    if name:
        attrs += f' name="{html.escape(name)}"'
    return f"<tool_result{attrs}>\n{content}\n</tool_result>"


def render_response_format(output: OutputFormat | None) -> str:
    """Instructions for the ``json_object`` / ``json_schema`` output formats; "" for text or none."""
    if output is None or output.kind == "text":
        return ""
    if output.kind == "json_object":
        return "Reply with one valid JSON object and nothing else: no prose, no code fences."
    name = output.name
    lines = [
        "Reply with one valid JSON value and nothing else: no prose, no code fences.",
        f"It must conform to this JSON Schema{f' ({name})' if isinstance(name, str) and name else ''}:",
        _compact(output.schema if output.schema is not None else {}),
    ]
    description = output.description
    if isinstance(description, str) and description.strip():
        lines.insert(1, f"It is: {description.strip()}")
    if output.strict:
        lines.append("Follow the schema exactly: every required property, no other properties.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# JSON helpers


def _load_one(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json_repair.loads(text)
    except Exception:  # why: a repair attempt on arbitrary model text must never break a response
        return None


def _json_segments(text: str) -> list[str]:
    """Consecutive bracketed values at the start of ``text`` (JSON lines), up to the first other text."""
    segments: list[str] = []
    i = 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= len(text) or text[i] not in "{[":
            return segments
        end = _BalanceScanner().scan(text[i:])
        if end < 0:
            segments.append(text[i:])
            return segments
        segments.append(text[i : i + end])
        i += end


def _load_json(text: str) -> dict[str, Any] | list[Any] | None:
    """An object or array from possibly broken JSON text (several values become a list), else None."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        # json_repair merges JSON lines whose keys repeat, so values are cut apart before repairing.
        segments = _json_segments(text)
        if len(segments) > 1:
            values = [_load_one(segment) for segment in segments]
            return [v for v in values if isinstance(v, (dict, list))]
        value = _load_one(text)
    return value if isinstance(value, (dict, list)) else None


def _unfence(text: str) -> str:
    newline = text.find("\n")
    if newline < 0:
        return ""
    body = text[newline + 1 :].rstrip()
    return body[:-3] if body.endswith(_FENCE) else body


def _resolve_name(raw: str, names: frozenset[str]) -> str | None:
    candidate = raw.strip()
    if candidate in names:
        return candidate
    for prefix in _NAME_PREFIXES:
        if candidate.startswith(prefix) and candidate[len(prefix) :] in names:
            return candidate[len(prefix) :]
    folded = [n for n in names if n.casefold() == candidate.casefold()]
    return folded[0] if len(folded) == 1 else None


def _arguments_json(raw: Any) -> str | None:
    obj: Any
    if raw is None:
        obj = {}
    elif isinstance(raw, dict):
        obj = raw
    elif isinstance(raw, str):
        obj = _load_json(raw) if raw.strip() else {}
        if not isinstance(obj, dict):
            return None
    else:
        return None
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return None
    if _has_lone_surrogate(text):
        # The model wrote an escape for half a UTF-16 pair ("\ud800"), which no UTF-8 encoder (nor
        # a strict JSON parser) takes: it becomes U+FFFD, as an invalid byte would.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _call_from_entry(entry: Any, names: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(entry, dict) or "description" in entry:
        return None
    fn = entry.get("function")
    src: dict[str, Any] = fn if isinstance(fn, dict) else entry
    if "description" in src:
        return None
    raw_name = next((src[k] for k in _NAME_KEYS if isinstance(src.get(k), str)), None)
    if raw_name is None and isinstance(fn, str):
        raw_name = fn
    name = _resolve_name(raw_name, names) if raw_name is not None else None
    if name is None:
        return None
    raw_args: Any
    holder = next((d for d in (src, entry) if any(k in d for k in _ARG_KEYS)), None)
    if holder is not None:
        raw_args = holder[next(k for k in _ARG_KEYS if k in holder)]
    else:
        raw_args = {k: v for k, v in src.items() if k not in _ENVELOPE_KEYS}
    arguments = _arguments_json(raw_args)
    return None if arguments is None else (name, arguments)


def _calls_from_value(value: dict[str, Any] | list[Any], names: frozenset[str]) -> list[tuple[str, str]]:
    entries: list[Any]
    if isinstance(value, list):
        entries = value
    else:
        wrapped = value.get("tool_calls", value.get("tool_call"))
        single = wrapped if isinstance(wrapped, dict) else value
        entries = wrapped if isinstance(wrapped, list) else [single]
    return [call for call in (_call_from_entry(e, names) for e in entries) if call is not None]


def _calls_from_text(text: str, names: frozenset[str]) -> list[tuple[str, str]]:
    """Calls in the body of a candidate block (tag body, fence body or bare JSON); [] if none."""
    s = text.strip()
    if s.startswith(_FENCE):
        s = _unfence(s).strip()
    if s.startswith("<"):
        calls: list[tuple[str, str]] = []
        for match in _INNER_TAG_RE.finditer(s):
            calls += _calls_from_text(match.group(1), names)
        return calls
    if not s or s[0] not in "{[":
        return []
    value = _load_json(s)
    return [] if value is None else _calls_from_value(value, names)


class _Verdict(Enum):
    MORE = auto()
    PASS = auto()
    REJECT = auto()


def _first_non_ws(s: str, start: int) -> int:
    for i in range(start, len(s)):
        if not s[i].isspace():
            return i
    return -1


def _json_call_verdict(s: str, i: int) -> _Verdict:
    """Can ``s[i:]`` (starting at ``{`` or ``[``) begin call JSON? Monotone: a REJECT never turns back."""
    n = len(s)
    if s[i] == "[":
        i = _first_non_ws(s, i + 1)
        if i < 0:
            return _Verdict.MORE
        if s[i] != "{":
            return _Verdict.REJECT
    i = _first_non_ws(s, i + 1)
    if i < 0:
        return _Verdict.MORE
    quote = s[i]
    if quote in "\"'":
        end = s.find(quote, i + 1)
        key, complete = (s[i + 1 : end], True) if end >= 0 else (s[i + 1 :], False)
    elif quote.isalpha() or quote == "_":
        end = i
        while end < n and (s[end].isalnum() or s[end] == "_"):
            end += 1
        key, complete = s[i:end], end < n
    else:
        return _Verdict.REJECT
    if complete:
        return _Verdict.PASS if key in _CALL_KEYS else _Verdict.REJECT
    return _Verdict.MORE if any(k.startswith(key) for k in _CALL_KEYS) else _Verdict.REJECT


class _BalanceScanner:
    """Finds where a JSON-ish value that starts at offset 0 closes, scanning each character once."""

    __slots__ = ("depth", "escape", "pos", "quote")

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.quote = ""
        self.escape = False

    def scan(self, s: str) -> int:
        """End offset (exclusive) of the value in ``s``, or -1 while it is still open."""
        i, depth, quote, escape = self.pos, self.depth, self.quote, self.escape
        n = len(s)
        while i < n:
            c = s[i]
            i += 1
            if quote:
                if escape:
                    escape = False
                elif c == "\\":
                    escape = True
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    self.pos = i
                    return i
        self.pos, self.depth, self.quote, self.escape = i, depth, quote, escape
        return -1


# ---------------------------------------------------------------------------------------------------------
# Parsing


class _State(Enum):
    TEXT = auto()
    TAG = auto()  # inside <tool_calls> ... </tool_calls>
    FENCE_OPEN = auto()  # after ``` at a line start, reading the info string
    FENCE_BODY = auto()  # inside a fence that may hold calls
    CODE = auto()  # inside a fence that is code: no detection until it closes
    BARE = auto()  # inside a { or [ value that started a line
    DONE = auto()  # the model began writing tool results itself: the rest is dropped


class ToolCallStreamParser:
    """Splits a streamed answer into text and tool calls, holding text back only while it may be a call.

    Whatever the chunking, the events are the same as for the whole text at once (``parse_tool_calls`` is
    exactly that), except that text deltas may be split differently. Whitespace at the start of the answer
    and right after a call block is dropped.
    """

    def __init__(self, tool_names: AbstractSet[str]) -> None:
        self._names = frozenset(tool_names)
        self._buf = ""
        self._state = _State.TEXT
        self._line_start = True
        self._strip_lead = True
        self._events: list[StreamEvent] = []
        self._count = 0
        self._finished = False
        self._open_len = 0
        self._close_tag = ""
        self._search_from = 0
        self._body_start = 0
        self._passed = False
        self._scanner = _BalanceScanner()

    @property
    def called_tools(self) -> bool:
        return self._count > 0

    def feed(self, text: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if text:
            self._buf += text
            self._run(final=False)
        return self._take()

    def finish(self) -> list[StreamEvent]:
        if not self._finished:
            self._finished = True
            self._run(final=True)
        return self._take()

    def _take(self) -> list[StreamEvent]:
        events, self._events = self._events, []
        return events

    def _run(self, final: bool) -> None:
        steps = {
            _State.TEXT: self._step_text,
            _State.TAG: self._step_tag,
            _State.FENCE_OPEN: self._step_fence_open,
            _State.FENCE_BODY: self._step_fence_body,
            _State.CODE: self._step_code,
            _State.BARE: self._step_bare,
            _State.DONE: self._step_done,
        }
        while steps[self._state](final):
            pass

    def _emit_text(self, text: str) -> None:
        if self._strip_lead:
            text = text.lstrip()
        if not text:
            return
        self._strip_lead = False
        if self._events and isinstance(self._events[-1], TextDelta):
            self._events[-1] = TextDelta(self._events[-1].text + text)
        else:
            self._events.append(TextDelta(text))

    def _emit_calls(self, calls: list[tuple[str, str]]) -> None:
        for name, arguments in calls:
            index = self._count
            self._count += 1
            self._events.append(ToolCallDelta(index, new_call_id(), name, ""))
            self._events.append(ToolCallDelta(index, None, None, arguments))
        self._strip_lead = True

    def _enter(self, state: _State, start: int, line_start: bool) -> bool:
        """Emit the text before ``start`` and switch state there; always True (keep stepping)."""
        self._emit_text(self._buf[:start])
        self._buf = self._buf[start:]
        self._state = state
        self._line_start = line_start
        self._passed = False
        return True

    def _resolved(self, calls: list[tuple[str, str]], end: int, line_start: bool) -> bool:
        self._emit_calls(calls)
        self._buf = self._buf[end:]
        self._state = _State.TEXT
        self._line_start = line_start
        return True

    def _hold(self, start: int, line_start: bool) -> bool:
        self._emit_text(self._buf[:start])
        self._buf = self._buf[start:]
        self._line_start = line_start
        return False

    def _step_text(self, final: bool) -> bool:
        buf = self._buf
        if not self._names:
            return self._hold(len(buf), self._line_start)
        markers = (*_OPEN_TAGS, _RESULT_TAG) if self._count else _OPEN_TAGS
        line_start = self._line_start
        for i, c in enumerate(buf):
            if c == "<":
                head = buf[i : i + 16].lower()
                for tag in _OPEN_TAGS:
                    if head.startswith(tag):
                        self._open_len, self._close_tag = len(tag), _CLOSE_TAGS[tag]
                        self._search_from = len(tag)
                        return self._enter(_State.TAG, i, False)
                if self._count and head.startswith(_RESULT_TAG):
                    return self._enter(_State.DONE, i, False)
                if not final and any(len(head) < len(m) and m.startswith(head) for m in markers):
                    return self._hold(i, line_start)
            elif line_start and c in "{[":
                self._scanner = _BalanceScanner()
                return self._enter(_State.BARE, i, False)
            elif line_start and c == "`":
                if buf.startswith(_FENCE, i):
                    return self._enter(_State.FENCE_OPEN, i, False)
                if not final and _FENCE.startswith(buf[i:]):
                    return self._hold(i, line_start)
            if c == "\n":
                line_start = True
            elif c not in " \t\r":
                line_start = False
        return self._hold(len(buf), line_start)

    def _step_bare(self, final: bool) -> bool:
        buf = self._buf
        end = self._scanner.scan(buf)
        if not self._passed:
            verdict = _json_call_verdict(buf[:end] if end >= 0 else buf, 0)
            if verdict is _Verdict.REJECT or (verdict is _Verdict.MORE and end >= 0):
                return self._reject_bare()
            self._passed = verdict is _Verdict.PASS
        if end < 0 and not final:
            return False
        calls = _calls_from_text(buf[:end] if end >= 0 else buf, self._names)
        if calls:
            # Back at a line start, so calls written back to back on one line are all found.
            return self._resolved(calls, end if end >= 0 else len(buf), True)
        return self._reject_bare()

    def _reject_bare(self) -> bool:
        # Only the opening bracket becomes text: the rest is scanned again, so whichever chunk revealed
        # the rejection, the same text follows.
        return self._enter(_State.TEXT, 1, False)

    def _step_tag(self, final: bool) -> bool:
        buf = self._buf
        first = _first_non_ws(buf, self._open_len)
        if first >= 0 and buf[first] not in "{[<`":
            return self._enter(_State.TEXT, self._open_len, False)
        found = buf[self._search_from :].lower().find(self._close_tag)
        if found >= 0:
            close = self._search_from + found
            calls = _calls_from_text(buf[self._open_len : close], self._names)
            if calls:
                return self._resolved(calls, close + len(self._close_tag), True)
            return self._enter(_State.TEXT, self._open_len, False)
        self._search_from = max(self._open_len, len(buf) - len(self._close_tag) + 1)
        if not final:
            return False
        calls = _calls_from_text(buf[self._open_len :], self._names)
        if calls:
            return self._resolved(calls, len(buf), True)
        return self._enter(_State.TEXT, self._open_len, False)

    def _step_fence_open(self, final: bool) -> bool:
        buf = self._buf
        newline = buf.find("\n", len(_FENCE))
        info = buf[len(_FENCE) : newline if newline >= 0 else len(buf)].strip().lower()
        if newline >= 0 and info in _FENCE_INFOS:
            self._body_start = newline + 1
            self._search_from = newline
            self._state = _State.FENCE_BODY
            self._passed = False
            return True
        if newline >= 0 or final or not any(known.startswith(info) for known in _FENCE_INFOS):
            return self._enter(_State.CODE, len(_FENCE), False)
        return False

    def _step_fence_body(self, final: bool) -> bool:
        buf = self._buf
        start = self._body_start
        match = _CLOSE_FENCE_RE.search(buf, self._search_from)
        region = buf[: match.start()] if match else buf
        if not self._passed:
            verdict = self._fence_body_verdict(region, start)
            if verdict is _Verdict.REJECT:
                return self._enter(_State.CODE, start, True)
            self._passed = verdict is _Verdict.PASS
        if match is None:
            self._search_from = max(self._search_from, buf.rfind("\n"))
            if not final:
                return False
        calls = _calls_from_text(region[start:], self._names)
        if calls:
            return self._resolved(calls, match.end() if match else len(buf), False)
        return self._enter(_State.CODE, start, True)

    @staticmethod
    def _fence_body_verdict(region: str, start: int) -> _Verdict:
        first = _first_non_ws(region, start)
        if first < 0:
            return _Verdict.MORE
        if region[first] in "{[":
            return _json_call_verdict(region, first)
        head = region[first : first + len("<tool_call")].lower()
        if not "<tool_call".startswith(head):
            return _Verdict.REJECT
        return _Verdict.PASS if len(head) == len("<tool_call") else _Verdict.MORE

    def _step_code(self, final: bool) -> bool:
        buf = self._buf
        line_start = self._line_start
        for i, c in enumerate(buf):
            if line_start and c == "`":
                if buf.startswith(_FENCE, i):
                    return self._enter(_State.TEXT, i + len(_FENCE), False)
                if not final and _FENCE.startswith(buf[i:]):
                    return self._hold(i, line_start)
            if c == "\n":
                line_start = True
            elif c not in " \t\r":
                line_start = False
        return self._hold(len(buf), line_start)

    def _step_done(self, final: bool) -> bool:
        self._buf = ""
        return False


def parse_tool_calls(text: str, tool_names: AbstractSet[str]) -> ParsedAnswer:
    """Split a whole answer into content (stripped, None if empty) and calls to known tools."""
    parser = ToolCallStreamParser(tool_names)
    events = parser.feed(text) + parser.finish()
    texts: list[str] = []
    calls: list[ParsedCall] = []
    for event in events:
        if isinstance(event, TextDelta):
            texts.append(event.text)
        elif event.id is not None and event.name is not None:
            calls.append(ParsedCall(event.name, event.arguments, event.id))
        else:
            last = calls[event.index]
            calls[event.index] = ParsedCall(last.name, last.arguments + event.arguments, last.id)
    return ParsedAnswer("".join(texts).strip() or None, calls)


# ---------------------------------------------------------------------------------------------------------
# Stop sequences and JSON mode


class StopSequenceCutter:
    """Cuts a stream at the first stop sequence, holding back only a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._buf = ""
        self._stopped = False
        self.matched: str | None = None  # the stop sequence that cut the text (the earliest, then the first)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def feed(self, text: str) -> tuple[str, bool]:
        if self._stopped:
            return "", True
        buf = self._buf + text
        hits = [(i, stop) for stop in self._stops if (i := buf.find(stop)) >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self._stopped = True
            self._buf = ""
            return buf[:at], True
        keep = self._partial_stop_len(buf)
        self._buf = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def _partial_stop_len(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:size]):
                    best = size
                    break
        return best

    def finish(self) -> str:
        tail, self._buf = self._buf, ""
        return "" if self._stopped else tail


_ANY_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def _strict_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _repaired_container(text: str) -> str | None:
    value = _load_json(text)
    return None if value is None else _dumps(value)


def _longest_embedded_json(text: str) -> str | None:
    decoder = json.JSONDecoder()
    best: str | None = None
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                _, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            if best is None or end - i > len(best):
                best = text[i:end]
            i = end
        else:
            i += 1
    return best


def clean_json_answer(text: str) -> str:
    """Bare JSON text from an answer that wraps one JSON value in a fence or prose; else ``text``."""
    s = text.strip()
    if not s:
        return text
    if _strict_json(s):
        return s
    fence = _ANY_FENCE_RE.search(s)
    if fence and fence.group(1).strip():
        inner = fence.group(1).strip()
        if _strict_json(inner):
            return inner
        repaired = _repaired_container(inner) if inner[0] in "{[" else None
        if repaired is not None:
            return repaired
    embedded = _longest_embedded_json(s)
    if embedded is not None:
        return embedded
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if starts:
        segment = _json_segments(s[min(starts) :])[0]
        value = _load_one(segment)
        # Repair turns any bracket in prose into "JSON" ("{name}" -> {"name": ""}): trust it only for an
        # answer that starts as JSON or a value with quoted strings.
        if value and isinstance(value, (dict, list)) and (min(starts) == 0 or re.search("[\"']", segment)):
            return _dumps(value)
    return text
