"""The Anthropic Messages surface end to end: uvicorn serving the app, the emulator as upstream, and the
official `anthropic` SDK (or raw httpx where the wire itself is under test) as the client.

The transport is not varied here: test_gateway.py covers both, and this surface never sees it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

GOOD = "session=anthropic-good-aaaaaaaaaaaaaaaaaaaa"
GOOD2 = "session=anthropic-good-bbbbbbbbbbbbbbbbbbbb"
MODEL = "claude-sonnet-4-5-20250929"
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL_PARIS = '<tool_calls>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n</tool_calls>'


def scripted(reply: str, **options: Any) -> str:
    """A user message that makes the emulator answer `reply` with the given options."""
    directive = " ".join(f"{k}={v}" for k, v in options.items())
    block = f"<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"
    return f"[[emu {directive}]]\n{block}" if directive else block


def user(text: str) -> Any:  # the SDK's TypedDicts would want a cast at every call
    return [{"role": "user", "content": text}]


def settings_for(emulator: Emulator, cookies: list[str], **extra: str) -> dict[str, str]:
    return gateway_settings(emulator, cookies, MODEL_ALIASES="claude-*=gptomni", **extra)


def client_for(gateway: Gateway, **options: Any) -> anthropic.Anthropic:
    settings: dict[str, Any] = {"api_key": MASTER_KEY, "max_retries": 0, "timeout": 30.0}
    return anthropic.Anthropic(base_url=gateway.url, **(settings | options))


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    gw = Gateway(workdir, settings_for(emulator, [GOOD, GOOD2], KEEPALIVE_INTERVAL="0.3"), name="anthropic")
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: Gateway) -> anthropic.Anthropic:
    return client_for(gateway)


def post(gateway: Gateway, body: Any, *, path: str = "/v1/messages", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(
        f"{gateway.url}{path}",
        content=content,
        headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def sse_frames(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every frame; each frame must be exactly an `event:` and a `data:` line."""
    frames = []
    for frame in raw.split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), frame
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        frames.append((data["type"], data))
    assert raw.endswith("\n\n")
    return frames


def stream_raw(
    gateway: Gateway, body: dict[str, Any], path: str = "/v1/messages"
) -> tuple[httpx.Response, str]:
    with httpx.stream(
        "POST",
        f"{gateway.url}{path}",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {MASTER_KEY}", "anthropic-version": "2023-06-01"},
        timeout=30,
    ) as response:
        raw = b"".join(response.iter_bytes()).decode()
    return response, raw


def assert_envelope(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"type", "error"} and payload["type"] == "error"
    assert set(payload["error"]) == {"type", "message"}
    assert payload["error"]["type"] == kind and payload["error"]["message"]
    return str(payload["error"]["message"])


# --- answers ------------------------------------------------------------------------------------


def test_create_returns_a_message(client: anthropic.Anthropic) -> None:
    reply = "A whole answer, 一个完整的回答."
    message = client.messages.create(model=MODEL, max_tokens=256, messages=user(scripted(reply)))
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL  # as the client sent it, not the served name
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == reply  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_stream_relays_text_as_it_comes(client: anthropic.Anthropic) -> None:
    reply = "The quick brown fox jumps over the lazy dog. " * 3
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=user(scripted(reply, chunk_size=10))
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 5  # relayed as it came, not one lump
    assert "".join(pieces) == reply
    assert final.content[0].text == reply  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.id.startswith("msg_") and final.model == MODEL
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_system_and_history_reach_the_upstream(client: anthropic.Anthropic, emulator: Emulator) -> None:
    history: Any = [
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "secret reasoning", "signature": "c2ln"},
                {"type": "text", "text": "first answer"},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}],
        },
    ]
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=[
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer in English."},
        ],
        messages=history,
        metadata={"user_id": "user-1"},
        extra_body={"temperature": 0.5, "top_k": 40},  # this SDK no longer sends them itself
    )
    prompt = emulator.stats()["last_requests"][-1]["prompt"]
    assert prompt == (
        "System: You are terse.\n\nAnswer in English.\n\nUser: first question\n\nAssistant: first answer"
        "\n\nUser: second\nquestion"
    )
    assert "secret reasoning" not in prompt


def test_tool_round_trip(client: anthropic.Anthropic, emulator: Emulator) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Paris?\n" + scripted(CALL_PARIS)}
    first = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER_TOOL], messages=[question])
    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == {"city": "Paris"}

    answer = "It is 18 °C and sunny in Paris."
    conversation: Any = [
        question,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": scripted(answer)}],
        },
    ]
    second = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER_TOOL], messages=conversation)
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]
    assert second.content[0].text == answer  # type: ignore[union-attr]
    prompt = emulator.stats()["last_requests"][-1]["prompt"]
    assert f'<tool_result id="{call.id}" name="get_weather">' in prompt
    assert '"city":"Paris"' in prompt.replace(" ", "")  # the earlier call, in the transcript


def test_streamed_tool_call(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=user("Weather?\n" + scripted(CALL_PARIS)),
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool_uses = [block for block in final.content if block.type == "tool_use"]
    assert len(tool_uses) == 1 and tool_uses[0].input == {"city": "Paris"}
    assert tool_uses[0].id.startswith("toolu_")
    json_deltas = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(json_deltas) == 1  # the whole arguments in one delta


def test_event_order_and_event_lines_on_the_wire(gateway: Gateway) -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": user(scripted("one two three", chunk_size=4))}
    response, raw = stream_raw(gateway, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    kinds = [kind for kind, _ in sse_frames(raw) if kind != "ping"]
    deltas = kinds[2:-3]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert len(deltas) > 1 and set(deltas) == {"content_block_delta"}
    frames = dict(sse_frames(raw))
    assert frames["message_start"]["message"]["usage"]["input_tokens"] > 0
    assert frames["message_delta"]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert frames["message_delta"]["usage"]["output_tokens"] > 0


def test_beta_query_and_headers_are_accepted(gateway: Gateway, client: anthropic.Anthropic) -> None:
    headers = {"anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27"}
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": user(scripted("beta ok")),
        "context_management": {"edits": []},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    response = post(gateway, body, path="/v1/messages?beta=true", **headers)
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": "beta ok"}]
    message = client.beta.messages.create(model=MODEL, max_tokens=64, messages=user(scripted("beta sdk")))
    assert message.content[0].text == "beta sdk"  # type: ignore[union-attr]
    _, raw = stream_raw(gateway, body, path="/v1/messages?beta=true")
    assert sse_frames(raw)[-1][0] == "message_stop"


def test_stop_sequences_end_with_stop_sequence(client: anthropic.Anthropic) -> None:
    reply = "one two STOP three four"
    message = client.messages.create(
        model=MODEL, max_tokens=64, stop_sequences=["STOP"], messages=user(scripted(reply))
    )
    assert message.content[0].text == "one two "  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    with client.messages.stream(
        model=MODEL, max_tokens=64, stop_sequences=["STOP"], messages=user(scripted(reply, chunk_size=3))
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")


def test_max_tokens_ends_with_max_tokens(client: anthropic.Anthropic) -> None:
    reply = "word " * 200
    message = client.messages.create(model=MODEL, max_tokens=5, messages=user(scripted(reply)))
    assert message.stop_reason == "max_tokens"
    assert 0 < len(message.content[0].text) < len(reply)  # type: ignore[union-attr]
    with client.messages.stream(model=MODEL, max_tokens=5, messages=user(scripted(reply))) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=user("hi"))
    longer = client.messages.count_tokens(
        model=MODEL,
        system="You are a helpful assistant with a long system prompt. " * 10,
        tools=[WEATHER_TOOL],
        messages=user("hi"),
    )
    assert 0 < short.input_tokens < longer.input_tokens
    message = client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert message.usage.input_tokens == short.input_tokens  # the same estimate


# --- errors -------------------------------------------------------------------------------------


def test_a_bad_key_is_an_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client_for(gateway, api_key="sk-wrong").messages.create(
            model=MODEL, max_tokens=16, messages=user("hi")
        )
    assert caught.value.type == "authentication_error"
    assert_envelope(post(gateway, {}, **{"x-api-key": "sk-wrong"}), 401, "authentication_error")
    response = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json={}, timeout=5)
    assert_envelope(response, 401, "authentication_error")
    bearer = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 16, "messages": user(scripted("bearer ok"))},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert bearer.status_code == 200 and bearer.json()["content"][0]["text"] == "bearer ok"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The request body is not valid JSON: send one JSON object."),
        ({"model": MODEL, "messages": user("hi")}, "max_tokens: Field required"),
        (
            {"model": MODEL, "max_tokens": 16, "messages": user("hi"), "stream": "yes"},
            "stream: Input should be a valid boolean",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "messages.0.content.0: Image content is not supported: the upstream takes text only.",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 16,
                "messages": user("hi"),
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            None,
        ),
    ],
)
def test_bad_requests_are_invalid_request_errors(gateway: Gateway, body: Any, message: str | None) -> None:
    got = assert_envelope(post(gateway, body), 400, "invalid_request_error")
    if message is not None:
        assert got == message
    else:
        assert got.startswith("tools.0.type: Tool type 'web_search_20250305' is not supported")


def test_the_sdk_raises_bad_request_for_an_image(client: anthropic.Anthropic) -> None:
    image: Any = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=[{"role": "user", "content": [image]}],
        )
    assert caught.value.type == "invalid_request_error"
    assert "messages.0.content.0" in caught.value.message


def test_unknown_model_and_path_are_not_found(gateway: Gateway, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="gpt-17", max_tokens=16, messages=user("hi"))
    assert caught.value.type == "not_found_error"
    assert "gpt-17" in assert_envelope(
        post(gateway, {"model": "gpt-17", "messages": user("hi")}, path="/v1/messages/count_tokens"),
        404,
        "not_found_error",
    )
    assert_envelope(post(gateway, {}, path="/v1/messages/batches"), 404, "not_found_error")
    get = httpx.get(f"{gateway.url}/v1/messages", headers={"x-api-key": MASTER_KEY}, timeout=5)
    assert_envelope(get, 405, "invalid_request_error")


def test_body_over_the_limit_is_request_too_large(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(settings_for(emulator, [GOOD], MAX_REQUEST_BYTES="2048"))
    big = {"model": MODEL, "max_tokens": 16, "messages": user("x" * 4000)}
    assert_envelope(post(gw, big), 413, "request_too_large")
    assert_envelope(post(gw, big, path="/v1/messages/count_tokens"), 413, "request_too_large")
    with pytest.raises(anthropic.APIStatusError) as caught:
        client_for(gw).messages.create(**big)
    assert caught.value.status_code == 413


def test_no_usable_credential_is_overloaded(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(settings_for(emulator, []))
    with pytest.raises(anthropic.OverloadedError) as caught:
        client_for(gw).messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert caught.value.status_code == 529
    assert caught.value.type == "overloaded_error"
    assert "GPTOMNI_CREDENTIALS" in caught.value.message


def test_upstream_5xx_is_api_error_before_any_byte(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(settings_for(emulator, [GOOD, GOOD2]))
    for stream in (False, True):
        body = {
            "model": MODEL,
            "max_tokens": 16,
            "messages": user(scripted("x", status=500)),
            "stream": stream,
        }
        response = post(gw, body)
        message = assert_envelope(response, 502, "api_error")  # a real status, never a 200 stream
        assert "anthropic-good" not in message


# --- credentials, keep-alive, cancellation, failure mid-stream ----------------------------------


def test_a_failing_credential_fails_over(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(settings_for(emulator, [GOOD, GOOD2]))
    before = emulator.stats()["by_cookie"]
    emulator.fault("anthropic-good-aaaa", status=500)
    try:
        client = client_for(gw)
        for _ in range(2):
            message = client.messages.create(model=MODEL, max_tokens=16, messages=user(scripted("fine")))
            assert message.content[0].text == "fine"  # type: ignore[union-attr]
        with client.messages.stream(model=MODEL, max_tokens=16, messages=user(scripted("streamed"))) as s:
            assert "".join(s.text_stream) == "streamed"
    finally:
        emulator.fault("anthropic-good-aaaa")
    after = emulator.stats()["by_cookie"]
    assert after.get(GOOD, 0) - before.get(GOOD, 0) >= 1  # the bad one was tried
    assert after.get(GOOD2, 0) - before.get(GOOD2, 0) == 3  # and the good one answered all three


def test_pings_while_the_upstream_is_silent(gateway: Gateway, client: anthropic.Anthropic) -> None:
    body = {"model": MODEL, "max_tokens": 64, "messages": user(scripted("late but here", body_delay=1.2))}
    response, raw = stream_raw(gateway, body)
    assert response.status_code == 200
    frames = sse_frames(raw)
    assert ("ping", {"type": "ping"}) in frames
    assert frames[-1][0] == "message_stop"
    assert "".join(d["delta"]["text"] for k, d in frames if k == "content_block_delta") == "late but here"
    # and the SDK reads the same stream without choking on the pings
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=user(scripted("late but here", body_delay=1.2))
    ) as stream:
        assert "".join(stream.text_stream) == "late but here"


def _wait_for_disconnects(emulator: Emulator, before: int, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if emulator.stats()["disconnects"] > before:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"the upstream request was not cancelled within {within} s")


def test_client_disconnect_cancels_the_upstream(client: anthropic.Anthropic, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    with client.messages.stream(
        model=MODEL, max_tokens=1024, messages=user(scripted("slow " * 50, duration=10, chunk_size=5))
    ) as stream:
        texts = iter(stream.text_stream)
        next(texts)
        next(texts)
    closed_at = time.monotonic()
    assert _wait_for_disconnects(emulator, before, 1.0) - closed_at < 1.0


def test_failure_mid_stream_is_an_error_event(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(settings_for(emulator, [GOOD]))
    body = {"model": MODEL, "max_tokens": 1024, "messages": user(scripted("a" * 400, cut=40, chunk_size=20))}
    response, raw = stream_raw(gw, body)
    assert response.status_code == 200
    kinds = [kind for kind, _ in sse_frames(raw) if kind != "ping"]
    assert kinds[0] == "message_start" and kinds[-1] == "error"
    assert "message_stop" not in kinds and "message_delta" not in kinds
    error = sse_frames(raw)[-1][1]["error"]
    assert error["type"] == "api_error" and "cut off" in error["message"]

    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, client_for(gw).messages.stream(**body) as stream:
        received.extend(stream.text_stream)
    assert "cut off" in caught.value.message
    assert caught.value.type == "api_error"
    assert 0 < len("".join(received)) <= 40


def test_logs_hold_no_secret(gateway: Gateway) -> None:
    log = gateway.log()
    assert "POST /v1/messages" in log
    for secret in (MASTER_KEY, GOOD, GOOD2, "anthropic-good-aaaa"):
        assert secret not in log


def test_max_prompt_chars_drops_history_and_count_tokens_counts_it_all(
    start_gateway: Any, emulator: Emulator
) -> None:
    gw = start_gateway(settings_for(emulator, [GOOD], MAX_PROMPT_CHARS="300"))
    old = "an old turn " * 20  # 240 characters
    history = [
        {"role": "user", "content": old},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "<<<EMU_REPLY\nfits\nEMU_REPLY>>>"},
    ]
    client = client_for(gw)
    message = client.messages.create(model=MODEL, max_tokens=64, system="Be brief.", messages=history)
    assert message.content[0].text == "fits"  # answered, with the old turn dropped
    prompt = emulator.stats()["last_requests"][-1]["prompt"]
    assert old not in prompt and "Be brief." in prompt
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=history)
    assert counted.input_tokens > 300 // 4  # the whole conversation, not what fits
    too_long = [{"role": "user", "content": "x" * 400}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=too_long)
    assert "MAX_PROMPT_CHARS=300" in caught.value.message
