"""Tests for app.core.tools: prompt rendering, tool-call parsing (whole and streamed), stops, JSON mode."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from app.core import tools as core
from app.core.events import TextDelta, ToolCallDelta, new_call_id
from app.core.tools import (
    ParsedAnswer,
    ParsedCall,
    StopSequenceCutter,
    StreamEvent,
    ToolCallStreamParser,
    clean_json_answer,
    parse_tool_calls,
    render_tool_result,
)
from app.surfaces.openai_chat.decode import (
    output_format,
    tool_call_of,
    tool_choice_of,
    tool_names_of,
    tool_specs,
)

# The rendering tests are written with Chat Completions tools and choices, decoded by that surface.


def render_tools_instructions(tools: Any, tool_choice: Any, parallel: bool | None) -> str:
    return core.render_tools_instructions(tool_specs(tools), tool_choice_of(tool_choice, parallel))


def render_assistant_tool_calls(tool_calls: list[dict[str, Any]], content: str | None) -> str:
    return core.render_assistant_tool_calls([tool_call_of(call) for call in tool_calls], content)


def render_response_format(response_format: dict[str, Any] | None) -> str:
    return core.render_response_format(output_format(response_format))


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone.\nUse IANA names.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TIME]
NAMES = {"get_weather", "get_time"}
CALL_ID_RE = re.compile(r"^[A-Za-z0-9]{24}$")  # neutral: each surface adds its own prefix

PARIS = ("get_weather", {"city": "Paris"})
BLOCK = '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>'

# (id, model output, expected content, expected calls as (name, arguments object))
PARSE_CASES: list[tuple[str, str, str | None, list[tuple[str, dict[str, Any]]]]] = [
    ("clean-block", BLOCK, None, [PARIS]),
    (
        "prose-before",
        "I'll check the weather in Paris.\n" + BLOCK,
        "I'll check the weather in Paris.",
        [PARIS],
    ),
    ("prose-after", "Checking.\n" + BLOCK + "\n\nOne moment!", "Checking.\nOne moment!", [PARIS]),
    (
        "no-newlines",
        'Sure <tool_calls>[{"name":"get_weather","arguments":{"city":"Paris"}}]</tool_calls>',
        "Sure",
        [PARIS],
    ),
    ("fenced-block", "```xml\n" + BLOCK + "\n```", None, [PARIS]),
    (
        "fenced-bare-object",
        'Here is the call:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nDone.',
        "Here is the call:\nDone.",
        [PARIS],
    ),
    (
        "fence-no-lang-array",
        '```\n[{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]\n```',
        None,
        [("get_time", {"timezone": "Europe/Paris"})],
    ),
    (
        "fence-inside-block",
        '<tool_calls>\n```json\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        "\n```\n</tool_calls>",
        None,
        [PARIS],
    ),
    ("bare-object", '{"name": "get_weather", "arguments": {"city": "Paris"}}', None, [PARIS]),
    (
        "bare-array-parallel",
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]',
        None,
        [PARIS, ("get_time", {"timezone": "Europe/Paris"})],
    ),
    (
        "pretty-printed-array",
        '[\n  {\n    "name": "get_weather",\n    "arguments": {\n      "city": "Paris"\n    }\n  }\n]\n',
        None,
        [PARIS],
    ),
    (
        "two-blocks",
        BLOCK + "\nand\n" + BLOCK.replace("get_weather", "get_time").replace('"city": "Paris"', ""),
        "and",
        [PARIS, ("get_time", {})],
    ),
    (
        "hermes-style-tags",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "UTC"}}\n</tool_call>',
        None,
        [PARIS, ("get_time", {"timezone": "UTC"})],
    ),
    (
        "inner-tags-in-block",
        '<tool_calls>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n</tool_calls>',
        None,
        [PARIS, ("get_time", {})],
    ),
    (
        "json-lines-in-block",
        '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_calls>',
        None,
        [PARIS, ("get_weather", {"city": "Rome"})],
    ),
    (
        "single-quotes",
        "<tool_calls>\n[{'name': 'get_weather', 'arguments': {'city': 'Paris'}}]\n</tool_calls>",
        None,
        [PARIS],
    ),
    (
        "trailing-commas",
        '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris",},},]\n</tool_calls>',
        None,
        [PARIS],
    ),
    (
        "missing-brackets-and-close-tag",
        '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}',
        None,
        [PARIS],
    ),
    (
        "bare-missing-brace",
        'Let me look.\n{"name": "get_weather", "arguments": {"city": "Paris"}',
        "Let me look.",
        [PARIS],
    ),
    (
        "unterminated-fence",
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        None,
        [PARIS],
    ),
    (
        "unknown-tool",
        '<tool_calls>\n[{"name": "search_web", "arguments": {"query": "news"}}]\n</tool_calls>',
        '<tool_calls>\n[{"name": "search_web", "arguments": {"query": "news"}}]\n</tool_calls>',
        [],
    ),
    (
        "unknown-bare",
        '{"name": "search_web", "arguments": {"query": "news"}}',
        '{"name": "search_web", "arguments": {"query": "news"}}',
        [],
    ),
    (
        "mixed-known-unknown",
        '<tool_calls>\n[{"name": "search_web", "arguments": {"query": "x"}}, '
        '{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>',
        None,
        [PARIS],
    ),
    (
        "openai-shape-string-arguments",
        '{"tool_calls": [{"id": "call_1", "type": "function", "function": '
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}',
        None,
        [PARIS],
    ),
    (
        "openai-single-function",
        '{"type": "function", "function": {"name": "get_time", "arguments": {"timezone": "UTC"}}}',
        None,
        [("get_time", {"timezone": "UTC"})],
    ),
    ("arguments-missing", '<tool_calls>\n[{"name": "get_time"}]\n</tool_calls>', None, [("get_time", {})]),
    (
        "arguments-empty-string",
        '<tool_calls>[{"name": "get_time", "arguments": ""}]</tool_calls>',
        None,
        [("get_time", {})],
    ),
    (
        "arguments-flattened",
        '{"name": "get_weather", "city": "Paris"}',
        None,
        [PARIS],
    ),
    (
        "parameters-alias-and-prefix",
        '<tool_calls>[{"name": "functions.get_weather", "parameters": {"city": "Paris"}}]</tool_calls>',
        None,
        [PARIS],
    ),
    (
        "schema-mismatch-passed-through",
        '<tool_calls>[{"name": "get_weather", "arguments": {"town": "Paris", "days": 3}}]</tool_calls>',
        None,
        [("get_weather", {"town": "Paris", "days": 3})],
    ),
    (
        "chinese-around",
        "好的，我来查询一下巴黎的天气。\n<tool_calls>\n"
        '[{"name": "get_weather", "arguments": {"city": "巴黎"}}]\n</tool_calls>\n请稍等。',
        "好的，我来查询一下巴黎的天气。\n请稍等。",
        [("get_weather", {"city": "巴黎"})],
    ),
    (
        "prose-mentions-tool",
        "I could use get_weather with the city Paris, but it is not needed: it's sunny.",
        "I could use get_weather with the city Paris, but it is not needed: it's sunny.",
        [],
    ),
    (
        "prose-mentions-json-inline",
        'Call get_weather like {"name": "get_weather", "arguments": {"city": "Paris"}} when needed.',
        'Call get_weather like {"name": "get_weather", "arguments": {"city": "Paris"}} when needed.',
        [],
    ),
    ("json-answer-not-call", '{"answer": 42}', '{"answer": 42}', []),
    ("json-array-answer", "[1, 2, 3]", "[1, 2, 3]", []),
    (
        "data-with-name-key",
        '[{"name": "Alice", "age": 30}, {"name": "Bob", "age": 25}]',
        '[{"name": "Alice", "age": 30}, {"name": "Bob", "age": 25}]',
        [],
    ),
    (
        "markdown-python-not-call",
        'Use it like this:\n```python\nprint(get_weather("Paris"))\n```\nThat is all.',
        'Use it like this:\n```python\nprint(get_weather("Paris"))\n```\nThat is all.',
        [],
    ),
    (
        "json-fence-not-call",
        'Result:\n```json\n{"temperature": 21, "name": "get_weather"}\n```',
        'Result:\n```json\n{"temperature": 21, "name": "get_weather"}\n```',
        [],
    ),
    (
        "fence-call-shape-unknown",
        '```json\n{"name": "my_function", "arguments": {}}\n```',
        '```json\n{"name": "my_function", "arguments": {}}\n```',
        [],
    ),
    (
        "tag-mentioned-in-prose",
        "Wrap calls in a <tool_calls> block when you need them.",
        "Wrap calls in a <tool_calls> block when you need them.",
        [],
    ),
    (
        "tool-definition-echo",
        '[{"name": "get_weather", "description": "Get the weather.", "parameters": {"type": "object"}}]',
        '[{"name": "get_weather", "description": "Get the weather.", "parameters": {"type": "object"}}]',
        [],
    ),
    (
        "non-object-arguments",
        '<tool_calls>[{"name": "get_weather", "arguments": "Paris"}]</tool_calls>',
        '<tool_calls>[{"name": "get_weather", "arguments": "Paris"}]</tool_calls>',
        [],
    ),
    (
        "hallucinated-result-dropped",
        BLOCK + '\n<tool_result id="call_1">{"temp": 21}</tool_result>\nIt is 21 degrees.',
        None,
        [PARIS],
    ),
    (
        "markdown-lists-and-links",
        "[1] Source: [docs](https://example.com)\n{{template}} and <b>bold</b> a < b",
        "[1] Source: [docs](https://example.com)\n{{template}} and <b>bold</b> a < b",
        [],
    ),
    ("empty", "", None, []),
    ("whitespace", "  \n ", None, []),
    (
        "calls-back-to-back",
        '{"name": "get_time", "arguments": {}} {"name": "get_weather", "arguments": {"city": "Paris"}}',
        None,
        [("get_time", {}), PARIS],
    ),
]


def _calls_of(answer: ParsedAnswer) -> list[tuple[str, dict[str, Any]]]:
    return [(call.name, json.loads(call.arguments)) for call in answer.calls]


@pytest.mark.parametrize(
    ("text", "content", "calls"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_tool_calls(text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]) -> None:
    answer = parse_tool_calls(text, NAMES)
    assert answer.content == content
    assert _calls_of(answer) == calls
    for call in answer.calls:
        assert CALL_ID_RE.match(call.id)
        assert isinstance(json.loads(call.arguments), dict)
    assert len({call.id for call in answer.calls}) == len(answer.calls)


def test_parse_without_tools_is_plain_text() -> None:
    assert parse_tool_calls(BLOCK, set()) == ParsedAnswer(BLOCK, [])


def test_parsed_call_equality_ignores_id() -> None:
    assert ParsedCall("a", "{}", "call_x") == ParsedCall("a", "{}", "call_y")


# --- streaming -------------------------------------------------------------------------------------------


def _stream(chunks: list[str], names: set[str] = NAMES) -> tuple[list[StreamEvent], ToolCallStreamParser]:
    parser = ToolCallStreamParser(names)
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events, parser


def _assemble(events: list[StreamEvent]) -> tuple[str, list[tuple[str, str]]]:
    """Text and calls from events, checking the OpenAI delta shape along the way."""
    text = ""
    calls: list[list[str]] = []
    for event in events:
        if isinstance(event, TextDelta):
            assert event.text
            text += event.text
            continue
        if event.id is not None:
            assert event.index == len(calls)
            assert CALL_ID_RE.match(event.id)
            assert event.name
            calls.append([event.name, event.arguments])
        else:
            assert event.name is None
            assert 0 <= event.index < len(calls)
            calls[event.index][1] += event.arguments
    for _, arguments in calls:
        assert isinstance(json.loads(arguments), dict)
    return text, [(name, arguments) for name, arguments in calls]


def _splits(text: str, seed: int) -> list[list[str]]:
    """Every two-way split, character by character, and seeded random multi-way splits."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(seed)
    for _ in range(25):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return out


@pytest.mark.parametrize("text", [c[1] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_stream_matches_whole_parse_for_any_split(text: str) -> None:
    whole = parse_tool_calls(text, NAMES)
    expected_calls = [(c.name, c.arguments) for c in whole.calls]
    for chunks in _splits(text, seed=len(text)):
        events, parser = _stream(chunks)
        streamed_text, calls = _assemble(events)
        # The contract: content is the concatenated text deltas, stripped (None when empty).
        assert (streamed_text.strip() or None) == whole.content, chunks
        assert calls == expected_calls, chunks
        assert parser.called_tools is bool(expected_calls)


def test_stream_drops_leading_whitespace_and_whitespace_after_calls() -> None:
    text, calls = _assemble(_stream(["\n\n  Hi.\n", BLOCK, "\n\n", "Bye."])[0])
    assert text == "Hi.\nBye."
    assert [name for name, _ in calls] == ["get_weather"]


@pytest.mark.parametrize(
    ("chunk", "released"),
    [
        ("Hello wor", "Hello wor"),
        ("Compare a < b and a<b", "Compare a < b and a<b"),
        ("Use <b>bold</b>", "Use <b>bold</b>"),
        ("Look at <to", "Look at "),
        ("Answer:\n{", "Answer:\n"),
        ('{"answer": 4', '{"answer": 4'),
        ("[1] first source", "[1] first source"),
        ("```python\nprint(1)", "```python\nprint(1)"),
        ('```json\n{"result": 1', '```json\n{"result": 1'),
        ("see ```json inline", "see ```json inline"),
        ("Then\n``", "Then\n"),
        ("Chinese 中文 text", "Chinese 中文 text"),
    ],
)
def test_stream_releases_text_promptly(chunk: str, released: str) -> None:
    parser = ToolCallStreamParser(NAMES)
    events = parser.feed(chunk)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == released


def test_stream_held_text_released_when_it_cannot_be_a_call() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed("Look at <to") == [TextDelta("Look at ")]
    assert parser.feed("day> now") == [TextDelta("<today> now")]
    assert parser.feed("\n{") == [TextDelta("\n")]
    assert parser.feed('"x": 1}') == [TextDelta('{"x": 1}')]
    assert parser.finish() == []
    assert not parser.called_tools


def test_stream_emits_call_as_soon_as_block_closes() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed("<tool_calls>\n[") == []
    assert parser.feed('{"name": "get_weather", "arguments": {"city": "Paris"}}]\n') == []
    events = parser.feed("</tool_calls>")
    assert parser.called_tools
    assert len(events) == 2
    head, body = events
    assert isinstance(head, ToolCallDelta)
    assert isinstance(body, ToolCallDelta)
    assert (head.index, head.name, head.arguments) == (0, "get_weather", "")
    assert head.id is not None
    assert CALL_ID_RE.match(head.id)
    assert (body.index, body.id, body.name, body.arguments) == (0, None, None, '{"city":"Paris"}')
    assert parser.finish() == []


def test_stream_unterminated_block_is_repaired_at_finish() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed('<tool_calls>[{"name": "get_time", "arguments": {"timezone": "UTC"') == []
    _, calls = _assemble(parser.finish())
    assert calls == [("get_time", '{"timezone":"UTC"}')]


def test_stream_garbage_block_released_as_text_at_finish() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed('<tool_calls>[{"oops": ') == []
    assert parser.finish() == [TextDelta('<tool_calls>[{"oops": ')]


def test_feed_after_finish_is_an_error() -> None:
    parser = ToolCallStreamParser(NAMES)
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
    assert parser.finish() == []


FUZZ_PIECES = [
    "Hello ",
    "好的。",
    "\n",
    "  ",
    "<",
    "<tool_calls>",
    "</tool_calls>",
    "<tool_call>",
    "</tool_call>",
    '<tool_result id="c">',
    "```",
    "```json\n",
    "```python\n",
    "{",
    "}",
    "[",
    "]",
    '"name": ',
    '"get_weather"',
    '"search_web"',
    '"arguments": ',
    '{"city": "Paris"}',
    '{"name": "get_time", "arguments": {}}',
    "'",
    ", ",
    "`",
]


@pytest.mark.parametrize("seed", range(40))
def test_stream_fuzz_chunking_never_changes_the_result(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(5, 40)))
    whole = parse_tool_calls(text, NAMES)
    expected = ((whole.content or ""), [(c.name, c.arguments) for c in whole.calls])
    for chunks in _splits(text, seed)[:: max(1, len(text) // 20)]:
        streamed_text, calls = _assemble(_stream(chunks)[0])
        assert (streamed_text.strip(), calls) == expected, (text, chunks)


def test_stream_large_inputs_stay_linear() -> None:
    prose = "Lorem ipsum dolor sit amet, <b>consectetur</b> [adipiscing] elit.\n" * 3000
    events, _ = _stream([prose[i : i + 4] for i in range(0, len(prose), 4)])
    assert _assemble(events)[0].strip() == prose.strip()
    big = json.dumps({"text": "x" * 50_000, "items": list(range(2000))})
    block = f'<tool_calls>[{{"name": "get_time", "arguments": {big}}}]</tool_calls>'
    events, parser = _stream([block[i : i + 3] for i in range(0, len(block), 3)])
    assert parser.called_tools
    assert json.loads(_assemble(events)[1][0][1]) == json.loads(big)


# --- rendering -------------------------------------------------------------------------------------------


def test_instructions_list_every_tool_and_the_format() -> None:
    text = render_tools_instructions(TOOLS, "auto", None)
    for tool in TOOLS:
        fn = tool["function"]
        assert f"- {fn['name']}: " in text
        assert json.dumps(fn["parameters"], separators=(",", ":")) in text
    assert "Get the current weather for a city." in text
    assert "Current time in a timezone.\n  Use IANA names." in text
    assert "<tool_calls>\n[" in text
    assert "</tool_calls>" in text
    assert "Call a tool only when it helps" in text
    assert "several objects in the array" in text


def test_instructions_example_parses_as_a_call() -> None:
    text = render_tools_instructions(TOOLS, None, None)
    example = re.search(r"<tool_calls>\n.*?\n</tool_calls>", text, re.S)
    assert example is not None
    answer = parse_tool_calls(example.group(0), NAMES)
    assert _calls_of(answer) == [("get_weather", {"city": "..."})]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "present", "absent"),
    [
        ("required", None, "You must call at least one tool in this reply.", "only when it helps"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            None,
            'You must call the tool "get_time" in this reply, and no other tool.',
            "only when it helps",
        ),
        ({"type": "function", "name": "get_time"}, None, 'You must call the tool "get_time"', "at least one"),
        ("auto", False, "Call at most one tool per reply", "several objects"),
        (None, True, "several objects in the array", "at most one"),
    ],
)
def test_instructions_follow_tool_choice(
    tool_choice: Any, parallel: bool | None, present: str, absent: str
) -> None:
    text = render_tools_instructions(TOOLS, tool_choice, parallel)
    assert present in text
    assert absent not in text


def test_named_tool_choice_uses_that_tool_in_the_example() -> None:
    text = render_tools_instructions(TOOLS, {"type": "function", "function": {"name": "get_time"}}, None)
    assert '[{"name": "get_time", "arguments": {"timezone": "..."}}]' in text


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [(TOOLS, "none"), ([], "auto"), ([{"type": "web_search"}], None)],
)
def test_instructions_empty_when_no_tools_offered(tools: list[dict[str, Any]], tool_choice: Any) -> None:
    assert render_tools_instructions(tools, tool_choice, None) == ""


def test_tool_without_parameters_or_description() -> None:
    text = render_tools_instructions([{"type": "function", "function": {"name": "ping"}}], "auto", None)
    assert "- ping\n  parameters: {}" in text
    assert '[{"name": "ping", "arguments": {}}]' in text


def test_tool_names_of() -> None:
    assert tool_names_of([*TOOLS, {"type": "web_search"}, {"type": "function", "function": {}}]) == NAMES
    assert tool_names_of(None) == set()


def test_assistant_tool_calls_round_trip_through_the_parser() -> None:
    tool_calls = [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"巴黎"}'},
        },
        {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    text = render_assistant_tool_calls(tool_calls, "Checking both.")
    assert text == (
        "Checking both.\n<tool_calls>\n"
        '[{"id": "call_abc", "name": "get_weather", "arguments": {"city": "巴黎"}}, '
        '{"id": "call_def", "name": "get_time", "arguments": {}}]\n</tool_calls>'
    )
    answer = parse_tool_calls(text, NAMES)
    assert answer.content == "Checking both."
    assert _calls_of(answer) == [("get_weather", {"city": "巴黎"}), ("get_time", {})]


def test_assistant_tool_calls_keep_unparseable_arguments_visible() -> None:
    text = render_assistant_tool_calls([{"function": {"name": "get_time", "arguments": "tz=UTC"}}], None)
    assert text == '<tool_calls>\n[{"name": "get_time", "arguments": "tz=UTC"}]\n</tool_calls>'


def test_tool_result() -> None:
    assert render_tool_result("call_abc", "get_weather", '{"temp": 21}') == (
        '<tool_result id="call_abc" name="get_weather">\n{"temp": 21}\n</tool_result>'
    )
    assert render_tool_result('x"y', None, "ok") == '<tool_result id="x&quot;y">\nok\n</tool_result>'


def test_new_call_id() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(CALL_ID_RE.match(i) for i in ids)


# --- response format and JSON clean-up -------------------------------------------------------------------


def test_response_format_text_or_none_is_empty() -> None:
    assert render_response_format(None) == ""
    assert render_response_format({"type": "text"}) == ""


def test_response_format_json_object() -> None:
    assert "one valid JSON object" in render_response_format({"type": "json_object"})


def test_response_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    text = render_response_format(
        {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}}
    )
    assert "(count)" in text
    assert json.dumps(schema, separators=(",", ":")) in text
    assert "Follow the schema exactly" in text
    loose = render_response_format({"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert "Follow the schema exactly" not in loose


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  {"a": 1}\n', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ("Here you go:\n```\n[1, 2]\n```\nHope it helps!", "[1, 2]"),
        ('Sure! {"a": {"b": [1, 2]}} Let me know.', '{"a": {"b": [1, 2]}}'),
        ('See [1]: {"a": 1, "b": 2}', '{"a": 1, "b": 2}'),
        ("{'a': 1,}", '{"a": 1}'),
        ('```json\n{"a": [1, 2\n```', '{"a": [1, 2]}'),
        ('{"a": [1, 2', '{"a": [1, 2]}'),
        ('```json\n{"城市": "巴黎"}\n```', '{"城市": "巴黎"}'),
        ("42", "42"),
        ("no json here", "no json here"),
        ("Use {name} as a placeholder", "Use {name} as a placeholder"),
        ("See [the docs] for more", "See [the docs] for more"),
        ("Result: {'a': 1,} as asked", '{"a": 1}'),
        ("[1, 2", "[1, 2]"),
        ("", ""),
    ],
)
def test_clean_json_answer(text: str, expected: str) -> None:
    assert clean_json_answer(text) == expected


# --- stop sequences --------------------------------------------------------------------------------------


def _cut(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    cutter = StopSequenceCutter(stops)
    out = ""
    hit = False
    for chunk in chunks:
        text, hit = cutter.feed(chunk)
        out += text
    return out + cutter.finish(), hit


@pytest.mark.parametrize(
    ("stops", "chunks", "expected", "hit"),
    [
        (["END"], ["Hello E", "ND more"], "Hello ", True),
        (["END"], ["Hello ", "E", "N", "D"], "Hello ", True),
        (["\n\n"], ["a\n", "\nb"], "a", True),
        (["b", "c"], ["acb"], "a", True),
        (["abcd", "bce"], ["xab", "ce"], "xa", True),
        (["aab"], ["a", "a", "a", "b"], "a", True),
        (["STOP"], ["ST", "ART"], "START", False),
        (["STOP"], ["abc ST"], "abc ST", False),
        (["", "X"], ["aXb"], "a", True),
        ([""], ["abc"], "abc", False),
        ([], ["abc"], "abc", False),
        (["。"], ["你好", "。再见"], "你好", True),
        (["User:"], ["Answer.\nUs", "er: next"], "Answer.\n", True),
    ],
)
def test_stop_sequence_cutter(stops: list[str], chunks: list[str], expected: str, hit: bool) -> None:
    assert _cut(stops, chunks) == (expected, hit)


def test_stop_cutter_holds_only_a_possible_stop_prefix() -> None:
    cutter = StopSequenceCutter(["</end>", "STOP"])
    assert cutter.feed("abc </e") == ("abc ", False)
    assert cutter.feed("x S") == ("</ex ", False)
    assert cutter.feed("TOP and more") == ("", True)
    assert cutter.feed("again") == ("", True)
    assert cutter.stopped
    assert cutter.finish() == ""


@pytest.mark.parametrize("seed", range(30))
def test_stop_cutter_matches_reference_for_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice("abc\n") for _ in range(rng.randint(0, 40)))
    stops = ["".join(rng.choice("abc\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = (text[: min(hits)], True) if hits else (text, False)
    for chunks in _splits(text, seed)[::3]:
        assert _cut(stops, chunks) == expected, (stops, chunks)


def test_schema_meta_keys_are_left_out_of_the_prompt_but_property_names_stay() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "$schema": {"type": "string", "$comment": "a parameter that happens to be called $schema"},
            "items": {"type": "array", "items": {"$id": "x", "type": "string"}},
        },
        "additionalProperties": False,
    }
    text = core.render_tools_instructions([core.ToolSpec("t", "d", schema)])
    assert (
        '  parameters: {"type":"object","properties":{"$schema":{"type":"string"},'
        '"items":{"type":"array","items":{"type":"string"}}},"additionalProperties":false}'
    ) in text


def test_a_schema_with_odd_required_entries_still_renders() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": [["x"], {"a": 1}, 5]}
    text = core.render_tools_instructions([core.ToolSpec("t", None, schema)])
    assert '[{"name": "t", "arguments": {"x": "..."}}]' in text


def test_a_lone_surrogate_in_call_arguments_becomes_a_replacement_character() -> None:
    answer = parse_tool_calls(
        '<tool_calls>[{"name": "get_time", "arguments": {"tz": "\\ud800x"}}]</tool_calls>', NAMES
    )
    (call,) = answer.calls
    assert json.loads(call.arguments) == {"tz": "\ufffdx"}
    call.arguments.encode("utf-8")  # what every surface must be able to do with it
