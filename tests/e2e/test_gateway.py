"""The gateway end to end: uvicorn serving the app, the emulator as upstream, and the official
`openai` SDK (or raw httpx where the wire itself is under test) as the client — on both transports."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, TRANSPORTS, Emulator, Gateway, gateway_settings

GOOD = "session=good-cookie-aaaaaaaaaaaaaaaaaaaaaaaa"
GOOD2 = "session=good-cookie-bbbbbbbbbbbbbbbbbbbbbbbb"
EXPIRED = "session=expired-cookie-cccccccccccccccccc; emu_status=401"


def scripted(reply: str, **options: Any) -> str:
    """A user message that makes the emulator answer `reply` with the given options."""
    directive = " ".join(f"{k}={v}" for k, v in options.items())
    return (
        f"[[emu {directive}]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"
        if directive
        else f"<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module", params=TRANSPORTS)
def gateway(request: pytest.FixtureRequest, emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    settings = gateway_settings(
        emulator,
        [GOOD, GOOD2],
        UPSTREAM_TRANSPORT=request.param,
        MODEL_ALIASES="gpt-4o=gptomni",
        KEEPALIVE_INTERVAL="0.3",
    )
    gw = Gateway(workdir, settings, name=f"main-{request.param}")
    yield gw
    gw.stop()


@pytest.fixture(params=TRANSPORTS)
def fresh(request: pytest.FixtureRequest, start_gateway: Any, emulator: Emulator) -> Gateway:
    """A gateway of its own, for tests whose upstream failures change the credentials' state."""
    gw: Gateway = start_gateway(gateway_settings(emulator, [GOOD, GOOD2], UPSTREAM_TRANSPORT=request.param))
    return gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    client: openai.OpenAI = gateway.openai()
    return client


def post(gateway: Gateway, body: Any, *, key: str | None = MASTER_KEY, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    content = body if isinstance(body, (bytes, str, Iterator)) else json.dumps(body)
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
        **kwargs,
    )


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


# --- answers ------------------------------------------------------------------------------------


def test_stream_arrives_in_pieces_with_one_id_and_a_stop(client: openai.OpenAI) -> None:
    reply = "The quick brown fox jumps over the lazy dog. " * 3
    chunks = list(
        client.chat.completions.create(
            model="gptomni", messages=user(scripted(reply, chunk_size=10)), stream=True
        )
    )
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 5  # relayed as it came, not one lump
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.created for c in chunks} == {chunks[0].created}
    assert {c.model for c in chunks} == {"gptomni"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_non_streaming_answer(client: openai.OpenAI) -> None:
    reply = "一个完整的回答 with some English."
    completion = client.chat.completions.create(model="gptomni", messages=user(scripted(reply)))
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_alias_is_echoed_back(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user(scripted("ok")))
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == "ok"


def test_include_usage_adds_a_last_chunk_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gptomni",
            messages=user(scripted("counting tokens here")),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_history_reaches_the_upstream_in_one_prompt(gateway: Gateway, emulator: Emulator) -> None:
    client = gateway.openai()
    client.chat.completions.create(
        model="gptomni",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}],
            },
        ],
    )
    request = emulator.stats()["last_requests"][-1]
    assert request["prompt"] == (
        "System: You are terse.\n\nUser: first question\n\nAssistant: first answer\n\nUser: second\nquestion"
    )
    assert json.loads(request["raw_body"]) == {"prompt": request["prompt"]}
    headers = request["headers"]
    assert headers["content-type"] == "text/plain;charset=UTF-8"
    assert headers["origin"] == emulator.url and headers["referer"] == f"{emulator.url}/zh"
    assert headers["accept"] == "*/*"
    assert headers["cookie"] in (GOOD, GOOD2)
    assert "mozilla" in headers.get("user-agent", "").lower()  # a browser's, from the transport


def test_utf8_split_across_reads_survives(client: openai.OpenAI) -> None:
    reply = "中文回答，带表情 😀🎉 и кириллица"
    chunks = client.chat.completions.create(
        model="gptomni", messages=user(scripted(reply, split_utf8=1, delay=0.01)), stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply
    assert "\ufffd" not in text


@pytest.mark.parametrize("fmt", ["sse", "json"])
def test_other_upstream_formats_are_decoded(client: openai.OpenAI, fmt: str) -> None:
    reply = "line one\nline two: 二"
    stream = client.chat.completions.create(
        model="gptomni", messages=user(scripted(reply, format=fmt, eol="crlf")), stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply


def test_keepalive_comments_while_upstream_is_silent(gateway: Gateway) -> None:
    body = {"model": "gptomni", "messages": user(scripted("late but here", body_delay=1.2)), "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        raw = b"".join(response.iter_bytes()).decode()
    assert ": keep-alive\n\n" in raw
    assert raw.endswith("data: [DONE]\n\n")
    # and the SDK reads the same stream without choking on the comments
    stream = gateway.openai().chat.completions.create(
        model="gptomni", messages=user(scripted("late but here", body_delay=1.2)), stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "late but here"


# --- errors -------------------------------------------------------------------------------------


def test_wrong_or_missing_key_is_401(gateway: Gateway) -> None:
    body = {"model": "gptomni", "messages": user("hi")}
    wrong = assert_envelope(post(gateway, body, key="sk-wrong"), 401, "invalid_api_key")
    missing = assert_envelope(post(gateway, body, key=None), 401, "invalid_api_key")
    assert wrong["message"] == "Incorrect API key provided."
    assert missing["message"] == "Missing API key: send it as 'Authorization: Bearer <key>'."
    with pytest.raises(openai.AuthenticationError):
        gateway.openai(api_key="sk-wrong").chat.completions.create(model="gptomni", messages=user("hi"))
    assert_envelope(httpx.get(f"{gateway.url}/v1/models", timeout=5), 401, "invalid_api_key")


def test_x_api_key_header_is_accepted(gateway: Gateway) -> None:
    response = post(
        gateway, {"model": "gptomni", "messages": user("hi")}, key=None, headers={"x-api-key": MASTER_KEY}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gptomni"}, "messages"),
        ({"model": "gptomni", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "gptomni", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"model": "gptomni", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        (
            {"model": "gptomni", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            "temperature",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_field(gateway: Gateway, body: Any, param: str | None) -> None:
    error = assert_envelope(post(gateway, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_image_part_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gptomni",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        )
    assert caught.value.code == "unsupported_content"
    assert "messages[0].content[1]" in str(caught.value.body)


def test_unknown_model_is_404(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=user("hi"))
    assert caught.value.code == "model_not_found"
    assert_envelope(
        httpx.get(f"{gateway.url}/v1/nope", headers={"Authorization": f"Bearer {MASTER_KEY}"}), 404
    )


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gptomni", "gpt-4o"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_upstream_5xx_is_502_naming_the_status_class(fresh: Gateway) -> None:
    client = fresh.openai()
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            result = client.chat.completions.create(
                model="gptomni", messages=user(scripted("x", status=500)), stream=stream
            )
            list(result) if stream else None  # type: ignore[call-overload]
        assert caught.value.status_code == 502  # a real status, never a 200 stream with error text
        assert "5xx" in caught.value.message
        assert "good-cookie" not in caught.value.message


def test_cloudflare_page_is_reported_as_such(fresh: Gateway) -> None:
    client = fresh.openai()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gptomni", messages=user(scripted("x", cf=1)))
    assert caught.value.status_code == 502
    assert caught.value.code == "cloudflare_challenge"


def test_cut_off_stream_raises_in_the_sdk(fresh: Gateway) -> None:
    client = fresh.openai()
    stream = client.chat.completions.create(
        model="gptomni", messages=user(scripted("a" * 400, cut=100, chunk_size=20)), stream=True
    )
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].finish_reason == "stop")
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert "cut off" in caught.value.message
    assert 0 < len(received) <= 100


def test_cut_off_non_stream_is_502(fresh: Gateway) -> None:
    client = fresh.openai()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gptomni", messages=user(scripted("b" * 400, cut=50)))
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_cut_off"


def test_slow_first_byte_times_out_as_502(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(
        gateway_settings(emulator, [GOOD], UPSTREAM_FIRST_BYTE_TIMEOUT="0.5", UPSTREAM_MAX_ATTEMPTS="1")
    )
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.openai().chat.completions.create(model="gptomni", messages=user(scripted("x", first_byte_delay=5)))
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 4


def test_body_over_the_limit_is_413(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [GOOD], MAX_REQUEST_BYTES="2048"))
    big = {"model": "gptomni", "messages": user("x" * 4000)}
    assert_envelope(post(gw, big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield json.dumps(big).encode()

    assert_envelope(post(gw, chunked()), 413, "request_too_large")
    assert post(gw, {"model": "gptomni", "messages": user("small")}).status_code == 200


def test_no_credential_is_503_but_the_service_runs(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, []))
    assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200
    error = assert_envelope(post(gw, {"model": "gptomni", "messages": user("hi")}), 503, "no_credentials")
    assert "GPTOMNI_CREDENTIALS" in error["message"]
    assert "GPTOMNI_CREDENTIALS" in gw.log()  # the start-up log says how to add one


# --- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_expired_credential_fails_over_and_is_then_skipped(
    start_gateway: Any, emulator: Emulator, transport: str
) -> None:
    gw = start_gateway(gateway_settings(emulator, [EXPIRED, GOOD], UPSTREAM_TRANSPORT=transport))
    emulator.reset()
    client = gw.openai()
    for _ in range(4):
        completion = client.chat.completions.create(model="gptomni", messages=user(scripted("fine")))
        assert completion.choices[0].message.content == "fine"
    stream = client.chat.completions.create(model="gptomni", messages=user(scripted("streamed")), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed"
    by_cookie = emulator.stats()["by_cookie"]
    assert by_cookie.get(EXPIRED) == 1  # tried once, then skipped
    assert by_cookie.get(GOOD) == 5


def test_all_credentials_rejected_is_one_clean_503(start_gateway: Any, emulator: Emulator) -> None:
    other_expired = "session=expired-too-dddddddddddddddd; emu_status=403"
    gw = start_gateway(gateway_settings(emulator, [EXPIRED, other_expired]))
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            result = gw.openai().chat.completions.create(model="gptomni", messages=user("hi"), stream=stream)
            list(result) if stream else None  # type: ignore[call-overload]
        assert caught.value.status_code == 503
        assert caught.value.code == "no_usable_credential"


# --- cancellation and concurrency ---------------------------------------------------------------


def _wait_for_disconnects(emulator: Emulator, before: int, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if emulator.stats()["disconnects"] > before:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"the upstream request was not cancelled within {within} s")


def test_client_disconnect_cancels_the_upstream_stream(gateway: Gateway, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    stream = gateway.openai().chat.completions.create(
        model="gptomni", messages=user(scripted("slow " * 50, duration=10, chunk_size=5)), stream=True
    )
    next(iter(stream))
    next(iter(stream))
    stream.close()
    closed_at = time.monotonic()
    assert _wait_for_disconnects(emulator, before, 1.0) - closed_at < 1.0


def test_client_disconnect_cancels_a_silent_upstream(gateway: Gateway, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    stream = gateway.openai().chat.completions.create(
        model="gptomni", messages=user(scripted("x", body_delay=10)), stream=True
    )
    stream.close()  # the upstream has said 200 and nothing more: the read is blocked
    _wait_for_disconnects(emulator, before, 1.0)


def test_client_disconnect_cancels_a_non_streaming_request(gateway: Gateway, emulator: Emulator) -> None:
    before = emulator.stats()["disconnects"]
    with pytest.raises(openai.APITimeoutError):
        gateway.openai(timeout=0.5).chat.completions.create(
            model="gptomni", messages=user(scripted("slow " * 20, duration=6))
        )
    _wait_for_disconnects(emulator, before, 1.5)


def test_32_one_second_streams_run_concurrently(gateway: Gateway) -> None:
    results: list[str] = []
    errors: list[BaseException] = []
    reply = "0123456789" * 4

    def one() -> None:
        try:
            client = gateway.openai()
            stream = client.chat.completions.create(
                model="gptomni", messages=user(scripted(reply, duration=1.0, chunk_size=4)), stream=True
            )
            results.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(32)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert results == [reply] * 32
    assert elapsed < 4.0, f"32 one-second streams took {elapsed:.1f} s: something blocks the event loop"


def test_health_needs_no_key(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/health", timeout=5)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_logs_hold_no_secret(gateway: Gateway) -> None:
    log = gateway.log()
    assert "POST /v1/chat/completions" in log  # the log was written and read
    for secret in (MASTER_KEY, GOOD, GOOD2, "good-cookie-aaaa", "good-cookie-bbbb"):
        assert secret not in log
