"""The emulator's demo answers against the gateway's own prompt text: a tool offer becomes a call the
gateway's parser accepts, a tool result is quoted, anything else says it is canned."""

from __future__ import annotations

import json

from app.core.job import ToolChoice, ToolSpec
from app.core.tools import parse_tool_calls, render_tool_result, render_tools_instructions
from app.demo.emulator import DEMO_PREFIX, Options, demo_reply, parse_options, reply_text

WEATHER = ToolSpec(
    "get_weather",
    "Current weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", None, {"type": "object", "properties": {"zone": {"type": "string"}}})


def prompt_with(*parts: str) -> str:
    return "\n\n".join(parts)


def test_plain_prompt_gets_a_canned_answer_that_says_so() -> None:
    reply = demo_reply(prompt_with("System: be nice", "User: hello there"))
    assert reply.startswith(DEMO_PREFIX)
    assert "canned" in reply and reply.endswith("hello there")


def test_offered_tools_get_a_call_the_gateway_parses() -> None:
    tools = render_tools_instructions([WEATHER, CLOCK])
    reply = demo_reply(prompt_with(tools, "User: weather in Paris?"))
    parsed = parse_tool_calls(reply, {"get_weather", "get_time"})
    assert [call.name for call in parsed.calls] == ["get_weather"]
    assert json.loads(parsed.calls[0].arguments) == {"city": "..."}
    assert parsed.content is not None and "canned" in parsed.content


def test_a_forced_tool_is_the_one_called() -> None:
    tools = render_tools_instructions([WEATHER, CLOCK], ToolChoice(mode="required", name="get_time"))
    parsed = parse_tool_calls(demo_reply(prompt_with(tools, "User: time?")), {"get_weather", "get_time"})
    assert [call.name for call in parsed.calls] == ["get_time"]


def test_a_tool_result_is_quoted_and_not_called_again() -> None:
    tools = render_tools_instructions([WEATHER])
    result = render_tool_result("call_1", "get_weather", "Sunny, 24 C")
    reply = demo_reply(prompt_with(tools, "User: weather in Paris?", result))
    assert parse_tool_calls(reply, {"get_weather"}).calls == []
    assert "get_weather returned: Sunny, 24 C" in reply and "canned" in reply


def test_demo_is_an_emulator_option_and_scripted_replies_still_win() -> None:
    options = parse_options({"demo": "1"}, chunk_size=16, delay=0.0)
    assert options.demo is True
    assert reply_text("User: hi", options).startswith(DEMO_PREFIX)
    assert reply_text("<<<EMU_REPLY\nscripted\nEMU_REPLY>>>", options) == "scripted"
    plain = Options(chunk_size=16, delay=0.0)
    assert reply_text("User: hi", plain) == "Hello from the gptomni emulator. You said: User: hi"
