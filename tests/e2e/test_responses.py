"""The Responses surface end to end: uvicorn serving the app, the emulator as upstream, and the official
`openai` SDK's `responses` resource (or raw httpx where the wire itself is under test) as the client.

The emulator answers with the last `<<<EMU_REPLY ... EMU_REPLY>>>` block in the prompt, so a user
message scripts the answer, tool calls included, and a tool output scripts the next one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

GOOD = "session=good-cookie-aaaaaaaaaaaaaaaaaaaaaaaa"
GOOD2 = "session=good-cookie-bbbbbbbbbbbbbbbbbbbbbbbb"
FLAKY = "session=responses-flaky-cccccccccccccccccc"
GOLDEN = Path(__file__).parent.parent / "surfaces" / "openai_responses" / "golden"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" LF body'},
}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch"


def scripted(reply: str, **options: Any) -> str:
    """A message that makes the emulator answer `reply` with the given options."""
    directive = " ".join(f"{k}={v}" for k, v in options.items())
    block = f"<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"
    return f"[[emu {directive}]]\n{block}" if directive else block


def calls(*entries: dict[str, Any]) -> str:
    return "<tool_calls>\n" + json.dumps(list(entries)) + "\n</tool_calls>"


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    settings = gateway_settings(
        emulator, [GOOD, GOOD2], MODEL_ALIASES="gpt-4o=gptomni", KEEPALIVE_INTERVAL="0.3"
    )
    gw = Gateway(workdir, settings, name="responses")
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    client: openai.OpenAI = gateway.openai()
    return client


def post(gateway: Gateway, body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/responses",
        content=body if isinstance(body, bytes) else json.dumps(body),
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )


def sse_events(raw: str) -> list[dict[str, Any]]:
    events = []
    for frame in raw.split("\n\n"):
        if frame.startswith("event: "):
            name, data = frame.split("\n", 1)
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}"
            events.append(payload)
    return events


def last_prompt(emulator: Emulator) -> str:
    prompt: str = emulator.stats()["last_requests"][-1]["prompt"]
    return prompt


# --- answers ------------------------------------------------------------------------------------


def test_create_returns_a_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-4o", instructions="Be brief.", input=scripted("Hello there, 世界."), metadata={"k": "v"}
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == "gpt-4o"
    assert response.output_text == "Hello there, 世界."
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}


def test_stream_arrives_in_pieces_and_the_helper_finishes(client: openai.OpenAI) -> None:
    reply = "The quick brown fox jumps over the lazy dog. " * 3
    with client.responses.stream(model="gptomni", input=scripted(reply, chunk_size=10)) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 5
    assert "".join(d.delta for d in deltas) == reply
    assert final.output_text == reply and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.id}


def test_create_with_stream_true_gives_the_spec_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gptomni", input=scripted("streamed"), stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1].response.output_text == "streamed"


def test_a_function_call_round_trip(client: openai.OpenAI, emulator: Emulator) -> None:
    asking = [
        {"role": "user", "content": scripted(calls({"name": "get_weather", "arguments": {"city": "Paris"}}))}
    ]
    first = client.responses.create(model="gptomni", input=asking, tools=[WEATHER], store=False)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id is not None and call.id.startswith("fc_")
    result = {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": scripted("18C and sunny in Paris."),
    }
    second = client.responses.create(
        model="gptomni",
        input=[*asking, *(item.model_dump(exclude_none=True) for item in first.output), result],
        tools=[WEATHER],
        store=False,
    )
    assert second.output_text == "18C and sunny in Paris."
    prompt = last_prompt(emulator)
    assert f'<tool_result id="{call.call_id}" name="get_weather">' in prompt


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    script = scripted(calls({"name": "get_weather", "arguments": {"city": "Oslo"}}))
    with client.responses.stream(model="gptomni", input=script, tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert (
        "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    )
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, emulator: Emulator) -> None:
    first = client.responses.create(
        model="gptomni", instructions="Old rules.", input=scripted("first answer")
    )
    second = client.responses.create(
        model="gptomni", previous_response_id=first.id, input=scripted("second answer")
    )
    assert second.output_text == "second answer" and second.previous_response_id == first.id
    prompt = last_prompt(emulator)
    assert "first answer" in prompt and "second answer" in prompt
    assert "Old rules." not in prompt  # instructions are not carried over, as OpenAI does


def test_a_tool_result_by_previous_response_id(client: openai.OpenAI) -> None:
    script = scripted(calls({"name": "get_weather", "arguments": {"city": "Rome"}}))
    with client.responses.stream(model="gptomni", input=script, tools=[WEATHER]) as stream:
        first = stream.get_final_response()  # a streamed response is stored too, before its last event
    [call] = first.output
    assert call.type == "function_call"
    second = client.responses.create(
        model="gptomni",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": scripted("Rome: 25C.")}],
        tools=[WEATHER],
    )
    assert second.output_text == "Rome: 25C."


class Person(pydantic.BaseModel):
    name: str
    born: int


def test_structured_output_with_the_sdk_parse_helper(client: openai.OpenAI, emulator: Emulator) -> None:
    reply = 'Here you go:\n```json\n{"name": "Ada Lovelace", "born": 1815}\n```'
    parsed = client.responses.parse(model="gptomni", input=scripted(reply), text_format=Person)
    assert parsed.output_parsed == Person(name="Ada Lovelace", born=1815)
    assert parsed.text is not None and parsed.text.format.type == "json_schema"
    assert '"born"' in last_prompt(emulator)  # the schema reached the prompt
    plain = client.responses.create(
        model="gptomni", input=scripted(reply), text={"format": {"type": "json_object"}}
    )
    assert json.loads(plain.output_text) == {"name": "Ada Lovelace", "born": 1815}


def test_the_token_limit_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    script = scripted("word " * 100)
    response = client.responses.create(model="gptomni", input=script, max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert 0 < len(response.output_text) < len("word " * 100)
    events = list(client.responses.create(model="gptomni", input=script, max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == response.output_text


def test_retrieve_then_delete_then_404(client: openai.OpenAI, gateway: Gateway) -> None:
    created = client.responses.create(model="gptomni", input=scripted("keep me"))
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == "keep me"
    assert retrieved.model_dump() == created.model_dump()
    deleted = httpx.delete(
        f"{gateway.url}/v1/responses/{created.id}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert created.id in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError) as continued:
        client.responses.create(model="gptomni", previous_response_id=created.id, input="more")
    assert continued.value.code == "previous_response_not_found"
    error = httpx.get(
        f"{gateway.url}/v1/responses/resp_nope", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    assert error.status_code == 404
    assert set(error.json()["error"]) == {"message", "type", "param", "code"}


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gptomni", input=scripted("forget me"), store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_a_custom_tool_call(client: openai.OpenAI) -> None:
    script = scripted(calls({"name": "apply_patch", "arguments": {"input": PATCH}}))
    response = client.responses.create(model="gptomni", input=script, tools=[APPLY_PATCH])
    [call] = response.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == PATCH
    with client.responses.stream(model="gptomni", input=script, tools=[APPLY_PATCH]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    assert [e.input for e in done] == [PATCH]
    assert final.output[0].type == "custom_tool_call" and final.output[0].input == PATCH
    follow_up = client.responses.create(
        model="gptomni",
        previous_response_id=final.id,
        input=[
            {
                "type": "custom_tool_call_output",
                "call_id": final.output[0].call_id,
                "output": scripted("Done."),
            }
        ],
        tools=[APPLY_PATCH],
    )
    assert follow_up.output_text == "Done."


def test_a_codex_shaped_request_streams_to_completion(gateway: Gateway) -> None:
    body = json.loads((GOLDEN / "codex.request.json").read_text())
    body["input"].append(
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": scripted("All done.")}],
        }
    )
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [events[-1]["response"]["output"][0]]
    assert done[0]["content"][0]["text"] == "All done."
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["input_tokens"] > 0


def test_the_store_keeps_responses_max_for_responses_ttl(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [GOOD], RESPONSES_TTL="1", RESPONSES_MAX="2"), name="store")
    client = gw.openai()
    first, second, third = (client.responses.create(model="gptomni", input=scripted(t)) for t in "abc")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)  # the oldest went when the third came
    assert client.responses.retrieve(second.id).output_text == "b"
    time.sleep(1.1)
    for gone in (second, third):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(gone.id)


# --- errors -------------------------------------------------------------------------------------


def test_a_built_in_tool_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gptomni", input="search the web", tools=[{"type": "web_search"}])
    assert caught.value.code == "unsupported_tool"
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "tools[0].type"


def test_bad_requests_are_400s_in_the_openai_envelope(gateway: Gateway) -> None:
    for body, param in (
        (b"{nope", None),
        ({"input": "hi"}, "model"),
        ({"model": "gptomni", "input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
        (
            {"model": "gptomni", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
    ):
        response = post(gateway, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-17", input="hi")
    assert caught.value.code == "model_not_found"


def test_a_key_is_needed(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        gateway.openai(api_key="sk-wrong").responses.create(model="gptomni", input="hi")
    assert httpx.get(f"{gateway.url}/v1/responses/resp_x", timeout=5).status_code == 401


# --- the upstream misbehaving -------------------------------------------------------------------


def test_a_failing_credential_fails_over(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [FLAKY, GOOD]))
    emulator.fault("responses-flaky", status=500)
    try:
        before = emulator.stats()["by_cookie"]
        client = gw.openai()
        for _ in range(2):
            assert (
                client.responses.create(model="gptomni", input=scripted("still fine")).output_text
                == "still fine"
            )
        with client.responses.stream(model="gptomni", input=scripted("streamed fine")) as stream:
            assert stream.get_final_response().output_text == "streamed fine"
        after = emulator.stats()["by_cookie"]
        assert after.get(FLAKY, 0) > before.get(FLAKY, 0)  # it was tried, failed, and the next one answered
    finally:
        emulator.fault("responses-flaky")


def test_keep_alive_comments_while_the_upstream_is_silent(gateway: Gateway, client: openai.OpenAI) -> None:
    body = {"model": "gptomni", "input": scripted("late but here", body_delay=1.2), "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    assert ": keep-alive\n\n" in raw
    assert sse_events(raw)[-1]["type"] == "response.completed"
    with client.responses.stream(model="gptomni", input=scripted("late but here", body_delay=1.2)) as stream:
        assert stream.get_final_response().output_text == "late but here"


def test_client_disconnect_cancels_the_upstream(gateway: Gateway, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    stream = gateway.openai().responses.create(
        model="gptomni", input=scripted("slow " * 50, duration=10, chunk_size=5), stream=True
    )
    events = iter(stream)
    while next(events).type != "response.output_text.delta":
        pass
    stream.close()
    closed_at = time.monotonic()
    while emulator.stats()["disconnects"] <= before:
        assert time.monotonic() - closed_at < 1.0, "the upstream request was not cancelled within 1 s"
        time.sleep(0.02)


def test_a_failure_mid_answer_is_response_failed(client: openai.OpenAI) -> None:
    script = scripted("a" * 400, cut=40, chunk_size=10)
    events = list(client.responses.create(model="gptomni", input=script, stream=True))
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    assert "cut off" in failed.response.error.message
    received = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert 0 < len(received) <= 40
    with client.responses.stream(model="gptomni", input=script) as stream:
        kinds = [event.type for event in stream]
        assert kinds[-1] == "response.failed"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


def test_a_failure_before_the_first_byte_after_keep_alives_raises_in_the_sdk(
    start_gateway: Any, emulator: Emulator
) -> None:
    gw = start_gateway(
        gateway_settings(emulator, [GOOD], KEEPALIVE_INTERVAL="0.3", UPSTREAM_MAX_ATTEMPTS="1"),
        name="slow-fail",
    )
    script = scripted("never", first_byte_delay=1, status=500)
    with pytest.raises(openai.APIError) as caught:
        list(gw.openai().responses.create(model="gptomni", input=script, stream=True))
    assert not isinstance(caught.value, openai.APIStatusError)  # a 200 stream went out: an error event
    assert "5xx" in caught.value.message
    with (
        pytest.raises(openai.APIError),
        gw.openai().responses.stream(model="gptomni", input=script) as stream,
    ):
        stream.get_final_response()
