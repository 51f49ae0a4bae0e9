"""AnswerShaper and friends: stop sequences, the token limit, tool calls and JSON mode, alone and together."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.events import Completion, FinishReason, TextDelta, ToolCallDelta
from app.core.shaping import AnswerShaper, CollectedAnswer, cut_to_tokens
from app.core.usage import estimate_tokens
from app.surfaces.openai_chat.encode import FINISH_REASONS, message_tool_call, tool_call_delta

Event = TextDelta | ToolCallDelta
TOOLS = {"get_weather"}
CALL_BLOCK = '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>'


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(shaper: AnswerShaper, parts: list[str]) -> list[Event]:
    events: list[Event] = []
    for part in parts:
        events += shaper.feed(part)
    return events + shaper.finish()


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def openai_reason(shaper: AnswerShaper) -> str:
    return FINISH_REASONS[shaper.finish_reason]


def openai_calls(answer: CollectedAnswer) -> list[dict[str, Any]]:
    return [message_tool_call(call) for call in answer.tool_calls]


def content_of(answer: CollectedAnswer) -> str | None:
    return Completion(answer.text, answer.tool_calls).content


def calls_of(events: list[Event]) -> list[ToolCallDelta]:
    return [e for e in events if isinstance(e, ToolCallDelta)]


# --- plain text -------------------------------------------------------------------------------


def test_plain_text_passes_through() -> None:
    shaper = AnswerShaper()
    assert shaper.feed("Hello") == [TextDelta("Hello")]
    assert shaper.feed(", world") == [TextDelta(", world")]
    assert not shaper.done
    assert shaper.finish() == []
    assert shaper.done
    assert openai_reason(shaper) == "stop"
    assert shaper.feed("late") == []


# --- stop sequences ---------------------------------------------------------------------------


def test_stop_cuts_and_sets_done() -> None:
    shaper = AnswerShaper(stops=["END"])
    events = shaper.feed("The answer is 42.END and more")
    assert text_of(events) == "The answer is 42."
    assert shaper.done
    assert openai_reason(shaper) == "stop"
    assert shaper.feed("even more") == []
    assert shaper.finish() == []


def test_stop_split_across_feeds() -> None:
    shaper = AnswerShaper(stops=["STOP"])
    first = shaper.feed("one two ST")
    assert text_of(first) == "one two "  # the possible start of the stop is held back
    assert not shaper.done
    second = shaper.feed("OP three")
    assert text_of(second) == ""
    assert shaper.done
    assert text_of(first + second) == "one two "


def test_held_partial_stop_is_released_at_the_end() -> None:
    shaper = AnswerShaper(stops=["STOP"])
    events = shaper.feed("ends with ST")
    events += shaper.feed("x ST")
    assert not shaper.done
    events += shaper.finish()
    assert text_of(events) == "ends with STx ST"


def test_earliest_of_several_stops_wins() -> None:
    shaper = AnswerShaper(stops=["zzz", "\n\n"])
    assert text_of(shaper.feed("line\n\nzzz")) == "line"
    assert shaper.done


@given(
    st.text(alphabet="abXY \n", max_size=60),
    st.sampled_from(["XY", "\n\n", "abab", "Y"]),
    st.lists(st.integers(1, 7), min_size=1, max_size=10),
)
def test_stop_any_chunking_matches_whole(text: str, stop: str, sizes: list[int]) -> None:
    parts, i = [], 0
    while i < len(text):
        size = sizes[len(parts) % len(sizes)]
        parts.append(text[i : i + size])
        i += size
    shaper = AnswerShaper(stops=[stop])
    out = text_of(run(shaper, parts))
    expected = text[: text.find(stop)] if stop in text else text
    assert out == expected
    assert shaper.done


# --- max_tokens ---------------------------------------------------------------------------------


def test_max_tokens_cuts_at_the_estimate() -> None:
    text = "abcdefghij" * 10  # 100 characters, 25 tokens
    shaper = AnswerShaper(max_tokens=5)
    events = shaper.feed(text)
    assert text_of(events) == text[:20]
    assert shaper.done
    assert shaper.truncated
    assert openai_reason(shaper) == "length"
    assert shaper.feed("more") == []
    assert shaper.finish() == []


def test_max_tokens_not_reached_is_stop() -> None:
    shaper = AnswerShaper(max_tokens=100)
    events = run(shaper, ["short ", "answer"])
    assert text_of(events) == "short answer"
    assert not shaper.truncated
    assert openai_reason(shaper) == "stop"


def test_max_tokens_across_feeds() -> None:
    shaper = AnswerShaper(max_tokens=3)
    assert text_of(shaper.feed("abcd")) == "abcd"  # 1 token
    assert text_of(shaper.feed("efgh")) == "efgh"  # 2 tokens
    assert not shaper.done
    cut = shaper.feed("ijklmnop")
    assert text_of(cut) == "ijkl"
    assert shaper.done and openai_reason(shaper) == "length"


def test_max_tokens_counts_cjk_one_each() -> None:
    shaper = AnswerShaper(max_tokens=3)
    assert text_of(shaper.feed("你好世界朋友")) == "你好世"
    assert openai_reason(shaper) == "length"


@given(
    st.text(alphabet="ab 你\n", max_size=80),
    st.integers(0, 20),
    st.lists(st.integers(1, 9), min_size=1, max_size=10),
)
def test_max_tokens_any_chunking_stays_within_budget(text: str, budget: int, sizes: list[int]) -> None:
    parts, i = [], 0
    while i < len(text):
        size = sizes[len(parts) % len(sizes)]
        parts.append(text[i : i + size])
        i += size
    shaper = AnswerShaper(max_tokens=budget)
    out = text_of(run(shaper, parts))
    assert text.startswith(out)
    assert estimate_tokens(out) <= budget
    assert shaper.truncated == (out != text)
    assert openai_reason(shaper) == ("length" if out != text else "stop")


# --- cut_to_tokens ------------------------------------------------------------------------------


def test_cut_to_tokens_examples() -> None:
    assert cut_to_tokens("abcdefgh", 2) == "abcdefgh"
    assert cut_to_tokens("abcdefghi", 2) == "abcdefgh"
    assert cut_to_tokens("abcdefghi", 0) == ""
    assert cut_to_tokens("", 0) == ""
    assert cut_to_tokens("你好ab", 2) == "你好"
    assert cut_to_tokens("你好ab", 3) == "你好ab"


@given(st.text(alphabet="ab 你こ\n", max_size=60), st.integers(0, 30))
def test_cut_to_tokens_is_the_longest_fitting_prefix(text: str, budget: int) -> None:
    cut = cut_to_tokens(text, budget)
    assert text.startswith(cut)
    assert estimate_tokens(cut) <= budget
    if cut != text:
        assert estimate_tokens(text[: len(cut) + 1]) > budget


# --- tool calls -----------------------------------------------------------------------------------


def test_tool_call_is_parsed_and_finish_reason_is_tool_calls() -> None:
    shaper = AnswerShaper(tool_names=TOOLS)
    events = run(shaper, chunks("Let me check.\n" + CALL_BLOCK, 5))
    assert text_of(events).strip() == "Let me check."
    calls = calls_of(events)
    assert calls[0].index == 0 and calls[0].name == "get_weather" and calls[0].id
    assert json.loads("".join(c.arguments for c in calls)) == {"city": "Paris"}
    assert openai_reason(shaper) == "tool_calls"
    answer = CollectedAnswer()
    answer.add(events)
    assert openai_calls(answer)[0]["function"]["name"] == "get_weather"


def test_without_tool_names_a_call_block_is_text() -> None:
    shaper = AnswerShaper()
    events = run(shaper, [CALL_BLOCK])
    assert calls_of(events) == []
    assert text_of(events) == CALL_BLOCK
    assert openai_reason(shaper) == "stop"


def test_unknown_tool_is_text() -> None:
    shaper = AnswerShaper(tool_names={"other_tool"})
    events = run(shaper, [CALL_BLOCK])
    assert calls_of(events) == []
    assert "get_weather" in text_of(events)
    assert openai_reason(shaper) == "stop"


def test_stop_before_a_would_be_tool_call_prevents_it() -> None:
    shaper = AnswerShaper(tool_names=TOOLS, stops=["\n\n"])
    events = run(shaper, chunks("I will look it up.\n\n" + CALL_BLOCK, 4))
    assert calls_of(events) == []
    assert text_of(events) == "I will look it up."
    assert openai_reason(shaper) == "stop"


def test_stop_inside_a_would_be_tool_call_stops_it() -> None:
    shaper = AnswerShaper(tool_names=TOOLS, stops=["get_"])
    events = shaper.feed("Checking.\n" + CALL_BLOCK + "\ntrailing")
    assert shaper.done
    assert calls_of(events) == []
    assert "weather" not in text_of(events)
    assert "trailing" not in text_of(events)
    assert openai_reason(shaper) == "stop"


def test_stop_at_the_closing_tag_still_calls_the_tool() -> None:
    shaper = AnswerShaper(tool_names=TOOLS, stops=["</tool_calls>"])
    events: list[Event] = []
    for part in chunks("Checking.\n" + CALL_BLOCK + "\n<tool_result>fake</tool_result>", 7):
        events += shaper.feed(part)
    assert shaper.done  # done at the stop, before finish()
    assert [c.name for c in calls_of(events) if c.name] == ["get_weather"]
    assert "fake" not in text_of(events)
    assert openai_reason(shaper) == "tool_calls"
    assert shaper.finish() == []


def test_max_tokens_cuts_before_a_tool_call() -> None:
    shaper = AnswerShaper(tool_names=TOOLS, max_tokens=2)
    events = run(shaper, ["Hello there, " + CALL_BLOCK])
    assert calls_of(events) == []
    assert text_of(events) == "Hello th"
    assert openai_reason(shaper) == "length"


# --- JSON mode ------------------------------------------------------------------------------------


def test_json_mode_holds_text_and_emits_clean_json() -> None:
    shaper = AnswerShaper(json_mode=True)
    fenced = 'Here you go:\n```json\n{"a": 1, "b": [true, null]}\n```\nEnjoy!'
    held: list[Event] = []
    for part in chunks(fenced, 6):
        held += shaper.feed(part)
    assert held == []
    final = shaper.finish()
    assert len(final) == 1
    assert json.loads(text_of(final)) == {"a": 1, "b": [True, None]}
    assert text_of(final).startswith("{")
    assert openai_reason(shaper) == "stop"


def test_json_mode_with_stop_emits_at_the_stop() -> None:
    shaper = AnswerShaper(json_mode=True, stops=["END"])
    first = shaper.feed('```json\n{"ok": true}\n```\nE')
    assert first == []
    second = shaper.feed('ND then {"not": "this"}')
    assert shaper.done
    assert json.loads(text_of(second)) == {"ok": True}
    assert shaper.finish() == []


def test_json_mode_stop_cuts_before_cleaning() -> None:
    # the stop lies after a first JSON value: the text after it must not compete as "the" JSON
    shaper = AnswerShaper(json_mode=True, stops=["###"])
    events = run(shaper, ['{"x": 1}\n###\n{"much": "longer", "value": [1, 2, 3, 4]}'])
    assert json.loads(text_of(events)) == {"x": 1}


def test_json_mode_with_max_tokens_emits_once() -> None:
    shaper = AnswerShaper(json_mode=True, max_tokens=4)
    events = shaper.feed('{"k": "v"} and then a lot more prose')
    assert shaper.done and openai_reason(shaper) == "length"
    assert len(events) == 1
    assert json.loads(text_of(events)) == {"k": "v"}


def test_json_mode_with_tools_passes_calls_and_holds_text() -> None:
    shaper = AnswerShaper(json_mode=True, tool_names=TOOLS)
    events = shaper.feed(CALL_BLOCK)
    assert [c.name for c in calls_of(events) if c.name] == ["get_weather"]
    assert text_of(events) == ""
    assert openai_reason(shaper) == "tool_calls"


def test_json_mode_empty_answer_emits_nothing() -> None:
    shaper = AnswerShaper(json_mode=True)
    assert shaper.finish() == []


# --- CollectedAnswer and tool_call_delta ----------------------------------------------------------


def test_collected_answer_assembles_deltas_by_index() -> None:
    answer = CollectedAnswer()
    answer.add(
        [
            TextDelta("Checking "),
            ToolCallDelta(0, "a", "get_weather", ""),
            ToolCallDelta(1, "b", "get_time", ""),
            ToolCallDelta(0, None, None, '{"city":'),
            ToolCallDelta(1, None, None, '{"tz":"UTC"}'),
            ToolCallDelta(0, None, None, '"Paris"}'),
        ]
    )
    answer.add([TextDelta("both.")])
    assert answer.text == "Checking both."
    assert content_of(answer) == "Checking both."
    assert openai_calls(answer) == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}},
    ]


def test_collected_answer_content_none_when_only_tools() -> None:
    answer = CollectedAnswer()
    answer.add(
        [TextDelta("  \n"), ToolCallDelta(0, "a", "get_weather", ""), ToolCallDelta(0, None, None, "{}")]
    )
    assert content_of(answer) is None
    assert len(openai_calls(answer)) == 1


def test_collected_answer_without_tools_keeps_text() -> None:
    empty = CollectedAnswer()
    assert content_of(empty) == ""
    assert openai_calls(empty) == []
    answer = CollectedAnswer()
    answer.add([TextDelta("hi")])
    assert content_of(answer) == "hi"


def test_collected_answer_from_a_shaped_stream() -> None:
    shaper = AnswerShaper(tool_names=TOOLS)
    answer = CollectedAnswer()
    for part in chunks(CALL_BLOCK, 3):
        answer.add(shaper.feed(part))
    answer.add(shaper.finish())
    assert content_of(answer) is None
    (call,) = openai_calls(answer)
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_tool_call_delta_first_and_later() -> None:
    first = tool_call_delta(ToolCallDelta(2, "x", "get_weather", ""))
    assert first == {
        "tool_calls": [
            {
                "index": 2,
                "id": "call_x",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    later = tool_call_delta(ToolCallDelta(2, None, None, '{"city":"Paris"}'))
    assert later == {"tool_calls": [{"index": 2, "function": {"arguments": '{"city":"Paris"}'}}]}


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_tool_call_deltas_from_shaper_have_openai_shape(size: int) -> None:
    shaper = AnswerShaper(tool_names=TOOLS)
    deltas = [tool_call_delta(e) for e in calls_of(run(shaper, chunks(CALL_BLOCK, size)))]
    entries = [d["tool_calls"][0] for d in deltas]
    assert set(entries[0]) == {"index", "id", "type", "function"}
    assert set(entries[0]["function"]) == {"name", "arguments"}
    for entry in entries[1:]:
        assert set(entry) == {"index", "function"}
        assert set(entry["function"]) == {"arguments"}
    assert json.loads("".join(e["function"]["arguments"] for e in entries)) == {"city": "Paris"}


def test_stop_sequence_is_reported_with_its_reason() -> None:
    shaper = AnswerShaper(stops=["END", "STOP"])
    assert text_of(shaper.feed("one two ST") + shaper.feed("OP three END")) == "one two "
    assert shaper.finish_reason is FinishReason.STOP_SEQUENCE
    assert shaper.stop_sequence == "STOP"


def test_earliest_stop_wins_whatever_its_order() -> None:
    shaper = AnswerShaper(stops=["later", "soon"])
    shaper.feed("it ends soon, not later")
    assert (shaper.finish_reason, shaper.stop_sequence) == (FinishReason.STOP_SEQUENCE, "soon")


def test_no_stop_sequence_when_the_answer_just_ends() -> None:
    shaper = AnswerShaper(stops=["END"])
    shaper.feed("all done")
    shaper.finish()
    assert (shaper.finish_reason, shaper.stop_sequence) == (FinishReason.END, None)
