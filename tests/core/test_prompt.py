"""The conversation rendered into the one prompt string the upstream takes.

Conversations are written here as Chat Completions messages and decoded by that surface, so each test
also pins what the decoder hands the core.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from app.core.errors import GatewayError as ApiError
from app.core.job import ToolCall, Turn
from app.core.prompt import PromptTooLong
from app.core.prompt import render_prompt as render_turns
from app.surfaces.openai_chat.decode import content_text, turns_of
from app.surfaces.openai_chat.wire import Message


def msgs(*items: dict[str, Any]) -> list[Message]:
    return [Message.model_validate(item) for item in items]


def render_prompt(messages: list[Message], **options: Any) -> str:
    return render_turns(turns_of(messages), **options)


def system(text: Any) -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def assistant(text: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@pytest.mark.parametrize("text", ["Hello", "  two\n\nparagraphs, 你好 😀  ", "User: not a label"])
def test_single_user_message_is_sent_verbatim(text: str) -> None:
    assert render_prompt(msgs(user(text))) == text


def test_system_and_history_as_labelled_blocks_in_order() -> None:
    prompt = render_prompt(
        msgs(
            system("Be brief."),
            user("What is 2+2?"),
            assistant("4"),
            user("And 3+3?\nThanks."),
        )
    )
    assert prompt == "System: Be brief.\n\nUser: What is 2+2?\n\nAssistant: 4\n\nUser: And 3+3?\nThanks."


def test_last_user_message_is_last() -> None:
    prompt = render_prompt(msgs(user("first"), assistant("reply"), user("second")))
    assert prompt.endswith("User: second")
    assert prompt.index("User: first") < prompt.index("Assistant: reply") < prompt.index("User: second")


def test_developer_renders_as_system() -> None:
    prompt = render_prompt(msgs({"role": "developer", "content": "Answer in French."}, user("Hi")))
    assert prompt == "System: Answer in French.\n\nUser: Hi"


def test_lone_system_message_is_a_block() -> None:
    assert render_prompt(msgs(system("only rules"))) == "System: only rules"


def test_user_name_is_shown() -> None:
    prompt = render_prompt(msgs(user("hi", name="alice"), assistant("hello")))
    assert prompt == "User (alice): hi\n\nAssistant: hello"


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
        ([{"type": "input_text", "text": "a"}, {"type": "output_text", "text": "b c"}], "a\nb c"),
        ([{"type": "text", "text": "only"}], "only"),
        ([{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}], "a\nno"),
        ([], ""),
    ],
)
def test_content_parts_joined_with_newline(parts: list[dict[str, Any]], text: str) -> None:
    assert content_text(parts, 0) == text
    assert render_prompt(msgs(system("s"), user(parts))) == f"System: s\n\nUser: {text}"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
def test_non_text_part_is_refused_naming_the_part(part: dict[str, Any]) -> None:
    conversation = msgs(system("s"), user([{"type": "text", "text": "look"}, part]))
    with pytest.raises(ApiError) as info:
        render_prompt(conversation)
    error = info.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == "messages[1].content[1]"
    assert error.code == "unsupported_content"
    assert part["type"] in error.message or "Image" in error.message


@pytest.mark.parametrize("text", [5, None, ["a"], {"value": "a"}])
def test_text_part_with_non_string_text_is_refused(text: Any) -> None:
    conversation = msgs(user([{"type": "text", "text": text}]))
    with pytest.raises(ApiError) as info:
        render_prompt(conversation)
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[0].text"


class TestLastUserMode:
    def test_only_the_last_user_message(self) -> None:
        conversation = msgs(system("rules"), user("first"), assistant("reply"), user("second"))
        assert render_prompt(conversation, mode="last_user") == "second"

    def test_last_user_message_before_a_trailing_assistant(self) -> None:
        conversation = msgs(user("question"), assistant("partial answer"))
        assert render_prompt(conversation, mode="last_user") == "question"

    def test_falls_back_to_full_without_a_user_message(self) -> None:
        conversation = msgs(system("rules"), assistant("hello"))
        assert render_prompt(conversation, mode="last_user") == "System: rules\n\nAssistant: hello"

    def test_instructions_still_come_first(self) -> None:
        prompt = render_prompt(
            msgs(user("a"), assistant("b"), user("c")), mode="last_user", instructions="TOOLS"
        )
        assert prompt.startswith("TOOLS")
        assert prompt.endswith("c")
        assert "a" not in prompt.removeprefix("TOOLS")


class TestInstructions:
    def test_first_as_system_block(self) -> None:
        prompt = render_prompt(msgs(user("hi")), instructions="  Use the tools below.  ")
        assert prompt == "System: Use the tools below.\n\nUser: hi"

    def test_before_the_system_message(self) -> None:
        prompt = render_prompt(msgs(system("Be brief."), user("hi")), instructions="Tool rules")
        assert prompt == "System: Tool rules\n\nSystem: Be brief.\n\nUser: hi"

    def test_blank_instructions_change_nothing(self) -> None:
        assert render_prompt(msgs(user("hi")), instructions="  \n ") == "hi"


class TestTools:
    def test_tool_calls_and_results_rendered_in_place(self) -> None:
        conversation = msgs(
            user("Weather in Paris?"),
            assistant(None, tool_calls=[WEATHER_CALL]),
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            user("Thanks"),
        )
        assert render_prompt(conversation) == (
            "User: Weather in Paris?\n\n"
            'Assistant: [called get_weather with {"city": "Paris"}]\n\n'
            'Tool: [result of get_weather call call_1]\n{"temp": 21}\n\n'  # name found by call id
            "User: Thanks"
        )

    def test_assistant_text_kept_before_its_calls(self) -> None:
        second = {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        conversation = msgs(user("q"), assistant("Let me check.", tool_calls=[WEATHER_CALL, second]))
        assert render_prompt(conversation).endswith(
            'Assistant: Let me check.\n[called get_weather with {"city": "Paris"}]\n[called get_time with {}]'
        )

    def test_named_tool_and_function_results(self) -> None:
        conversation = msgs(
            user("q"),
            {"role": "tool", "tool_call_id": "call_9", "name": "lookup", "content": "found"},
            {"role": "function", "name": "legacy", "content": "old style"},
        )
        blocks = render_prompt(conversation).split("\n\n")
        assert blocks[:2] == ["User: q", "Tool: [result of lookup call call_9]\nfound"]
        assert blocks[2].startswith("Tool: [result of legacy")
        assert blocks[2].endswith("]\nold style")

    def test_custom_renderers_plug_in(self) -> None:
        seen: dict[str, Any] = {}

        def calls(tool_calls: list[ToolCall], content: str | None) -> str:
            seen["calls"] = (tool_calls, content)
            return "<CALLS>"

        def result(call_id: str, name: str | None, content: str) -> str:
            seen["result"] = (call_id, name, content)
            return "<RESULT>"

        conversation = msgs(
            user("q"),
            assistant(None, tool_calls=[WEATHER_CALL]),
            {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        )
        prompt = render_prompt(conversation, render_tool_calls=calls, render_tool_result=result)
        assert prompt == "User: q\n\nAssistant: <CALLS>\n\nTool: <RESULT>"
        assert seen["calls"] == ((ToolCall("call_1", "get_weather", '{"city": "Paris"}'),), None)
        assert seen["result"] == ("call_1", "get_weather", "21")  # the name, from the call it answers


class TestMaxChars:
    """MAX_PROMPT_CHARS: the oldest turns go first; system turns, instructions and the last user turn stay."""

    TURNS: ClassVar[list[Turn]] = [
        Turn("system", "rules"),
        Turn("user", "first question"),
        Turn("assistant", "first answer"),
        Turn("user", "second question"),
        Turn("assistant", "second answer"),
        Turn("user", "last question"),
    ]

    def test_fits_untouched(self) -> None:
        full = render_turns(self.TURNS)
        assert render_turns(self.TURNS, max_chars=len(full)) == full

    def test_oldest_turns_dropped_first(self) -> None:
        full = render_turns(self.TURNS)
        one_turn = len("User: first question\n\n")
        assert render_turns(self.TURNS, max_chars=len(full) - one_turn).startswith(
            "System: rules\n\nAssistant: first answer"
        )
        limit = len(full) - one_turn - 1
        prompt = render_turns(self.TURNS, max_chars=limit)
        assert len(prompt) <= limit
        assert "first question" not in prompt
        assert "first answer" not in prompt
        assert prompt.startswith("System: rules\n\nUser: second question")
        assert prompt.endswith("User: last question")

    def test_system_instructions_and_last_user_turn_are_never_dropped(self) -> None:
        prompt = render_turns(self.TURNS, instructions="TOOLS", max_chars=60)
        assert prompt == "System: TOOLS\n\nSystem: rules\n\nUser: last question"

    def test_too_long_even_so(self) -> None:
        with pytest.raises(PromptTooLong) as info:
            render_turns(self.TURNS, instructions="TOOLS", max_chars=20)
        assert (info.value.length, info.value.limit) == (49, 20)

    def test_a_lone_message_over_the_limit(self) -> None:
        with pytest.raises(PromptTooLong):
            render_turns([Turn("user", "x" * 50)], max_chars=49)
        assert render_turns([Turn("user", "x" * 50)], max_chars=50) == "x" * 50
