"""Tool calling, JSON output, stop sequences and max_tokens end to end, through the official SDK.

The emulator plays the model: `<<<EMU_REPLY ... EMU_REPLY>>>` in the conversation scripts its answer
(the last such block wins), so a test makes the "model" call tools in any format it likes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import TRANSPORTS, Emulator, Gateway, gateway_settings

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}

CALL_FORMATS = {
    "canonical": '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>',
    "fenced": 'Let me check.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    "sloppy": "<tool_calls>\n[{'name': 'get_weather', 'arguments': {'city': 'Paris',},}]\n</tool_calls>",
    "unclosed": '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"',
    "chinese": (
        "好的，我来查一下。\n"
        '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>'
    ),
}


def script(reply: str, **options: Any) -> str:
    directive = f"[[emu {' '.join(f'{k}={v}' for k, v in options.items())}]]\n" if options else ""
    return f"{directive}<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    settings = gateway_settings(
        emulator, ["session=tools-cookie-0123456789"], UPSTREAM_TRANSPORT=request.param
    )
    gw = Gateway(workdir, settings, name=f"tools-{request.param}")
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    c: openai.OpenAI = gateway.openai()
    return c


@pytest.mark.parametrize("fmt", list(CALL_FORMATS))
def test_streamed_tool_call_reassembles_to_the_non_streamed_one(client: openai.OpenAI, fmt: str) -> None:
    messages: Any = [{"role": "user", "content": script(CALL_FORMATS[fmt], chunk_size=7)}]
    whole = client.chat.completions.create(model="gptomni", messages=messages, tools=[WEATHER_TOOL])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    if fmt in ("canonical", "sloppy", "unclosed"):
        assert choice.message.content is None  # only a tool was called

    with client.chat.completions.stream(model="gptomni", messages=messages, tools=[WEATHER_TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.tool_calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed.message.tool_calls] == [
        (call.function.name, json.loads(call.function.arguments))
    ]
    assert (streamed.message.content or None) == (choice.message.content or None)


def test_tool_call_deltas_are_exact_on_the_wire(client: openai.OpenAI) -> None:
    reply = (
        '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "get_time", "arguments": {}}]\n</tool_calls>'
    )
    chunks = list(
        client.chat.completions.create(
            model="gptomni",
            messages=[{"role": "user", "content": script(reply, chunk_size=5)}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    firsts = [d for d in deltas if d.id is not None]
    assert [d.index for d in firsts] == [0, 1]
    assert all(d.type == "function" and d.function and d.function.name for d in firsts)
    assert all(
        d.id is None and d.type is None for d in deltas if d not in firsts
    )  # later deltas: index + args
    for index, expected in ((0, {"city": "Oslo"}), (1, {})):
        arguments = "".join(d.function.arguments or "" for d in deltas if d.index == index and d.function)
        assert json.loads(arguments) == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_full_agent_loop(client: openai.OpenAI, emulator: Emulator) -> None:
    call_block = '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>'
    messages: list[Any] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris? " + script(call_block)},
    ]
    first = client.chat.completions.create(model="gptomni", messages=messages, tools=[WEATHER_TOOL])
    prompt = emulator.stats()["last_requests"][-1]["prompt"]
    assert "get_weather" in prompt and "Current weather for a city." in prompt and '"city"' in prompt
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]

    # run the tool; its result scripts the model's next answer
    result = json.dumps({"city": arguments["city"], "temp_c": 21}) + "\n" + script("It is 21 °C in Paris.")
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    final = client.chat.completions.create(model="gptomni", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "It is 21 °C in Paris."
    assert final.choices[0].message.tool_calls is None
    prompt = emulator.stats()["last_requests"][-1]["prompt"]
    assert f'<tool_result id="{call.id}" name="get_weather">' in prompt  # the result, tied to its call
    assert prompt.index(f'"id": "{call.id}"') < prompt.index(
        f'<tool_result id="{call.id}"'
    )  # call, then result


def test_tool_choice_none_renders_no_tools_and_returns_text(
    client: openai.OpenAI, emulator: Emulator
) -> None:
    reply = CALL_FORMATS["canonical"]
    completion = client.chat.completions.create(
        model="gptomni",
        messages=[{"role": "user", "content": script(reply)}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].finish_reason == "stop"
    assert "Current weather for a city." not in emulator.stats()["last_requests"][-1]["prompt"]


def test_required_tool_choice_is_asked_for_but_never_invented(
    client: openai.OpenAI, emulator: Emulator
) -> None:
    completion = client.chat.completions.create(
        model="gptomni",
        messages=[{"role": "user", "content": script("I would rather just talk about get_weather.")}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert 'You must call the tool "get_weather"' in emulator.stats()["last_requests"][-1]["prompt"]
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == "I would rather just talk about get_weather."


def test_unknown_tool_choice_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gptomni",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "launch_rockets"}},
        )
    assert caught.value.param == "tool_choice"  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [False, True])
def test_json_mode_returns_parseable_json(client: openai.OpenAI, emulator: Emulator, stream: bool) -> None:
    reply = 'Sure! Here it is:\n```json\n{"name": "Ada", "langs": ["en", "中文"]}\n```'
    kwargs: Any = {"response_format": {"type": "json_object"}}
    messages: Any = [{"role": "user", "content": "Give me JSON. " + script(reply, chunk_size=6)}]
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="gptomni", messages=messages, stream=True, **kwargs)
            if c.choices
        )
    else:
        text = (
            client.chat.completions.create(model="gptomni", messages=messages, **kwargs)
            .choices[0]
            .message.content
        )
    assert json.loads(text or "") == {"name": "Ada", "langs": ["en", "中文"]}
    assert "JSON" in emulator.stats()["last_requests"][-1]["prompt"]  # the instruction reached the model


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_split_across_chunks_cuts_and_closes_the_upstream(
    client: openai.OpenAI, emulator: Emulator, stream: bool
) -> None:
    reply = "Hello ST" + "OP and a long tail " * 30  # chunk_size=8 splits the stop between two reads
    messages: Any = [{"role": "user", "content": script(reply, chunk_size=8, duration=8)}]
    before = emulator.stats()["disconnects"]
    started = time.monotonic()
    if stream:
        chunks = list(
            client.chat.completions.create(model="gptomni", messages=messages, stop=["STOP"], stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(model="gptomni", messages=messages, stop="STOP")
        text, finish = completion.choices[0].message.content, completion.choices[0].finish_reason
    assert text == "Hello "
    assert finish == "stop"
    assert time.monotonic() - started < 4  # not the 8 s the whole answer takes
    deadline = time.monotonic() + 2
    while emulator.stats()["disconnects"] == before:
        assert time.monotonic() < deadline, "the upstream was not closed after the stop sequence"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_cuts_with_finish_reason_length(client: openai.OpenAI, stream: bool) -> None:
    reply = "word " * 200
    messages: Any = [{"role": "user", "content": script(reply, chunk_size=40, delay=0)}]
    if stream:
        chunks = list(
            client.chat.completions.create(model="gptomni", messages=messages, max_tokens=10, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(
            model="gptomni", messages=messages, max_completion_tokens=10
        )
        text, finish = completion.choices[0].message.content or "", completion.choices[0].finish_reason
    assert finish == "length"
    assert 30 <= len(text) <= 40  # about 10 tokens of four characters
    assert reply.startswith(text)
