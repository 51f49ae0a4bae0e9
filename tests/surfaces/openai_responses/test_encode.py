"""The stream encoder from golden files: `<case>.events.json` (and `<case>.request.json`, else a plain
text request) in, `<case>.sse` exact bytes out, and `<case>.result.json` what the official openai SDK
makes of those bytes (its `responses.stream()` accumulator). Ids and clocks are injected.

`UPDATE_GOLDEN=1 pytest tests/surfaces/openai_responses` rewrites the outputs; read the diff first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai._models import construct_type
from openai._streaming import SSEDecoder, Stream
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from app.core.errors import GatewayError
from app.core.events import (
    Event,
    Failed,
    Finished,
    FinishReason,
    KeepAlive,
    Started,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from app.surfaces.openai_responses.encode import ResponseEncoder, encode_stream
from app.surfaces.openai_responses.wire import ResponsesRequest, parse_request

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".events.json") for p in GOLDEN.glob("*.events.json"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
RESPONSE_ID = "resp_0123456789abcdef0123456789abcdef0123456789abcdef"
CREATED_AT = 1_767_225_600
COMPLETED_AT = 1_767_225_607
PLAIN = {"model": "gptomni", "input": "Hi", "stream": True}


def event_of(spec: dict[str, Any]) -> Event:
    kind = spec["event"]
    if kind == "Started":
        return Started()
    if kind == "KeepAlive":
        return KeepAlive()
    if kind == "TextDelta":
        return TextDelta(spec["text"])
    if kind == "ToolCallDelta":
        return ToolCallDelta(spec["index"], spec["id"], spec["name"], spec["arguments"])
    if kind == "Finished":
        prompt, completion = spec["usage"]
        return Finished(FinishReason(spec["reason"]), Usage(prompt, completion))
    if kind == "Failed":
        error = GatewayError(spec["status"], spec["message"], type=spec["type"], code=spec.get("code"))
        return Failed(error)
    raise AssertionError(f"unknown event {kind}")


def request_of(case: str) -> ResponsesRequest:
    path = GOLDEN / f"{case}.request.json"
    body = path.read_bytes() if path.exists() else json.dumps(PLAIN).encode()
    return parse_request(body)


def new_encoder(request: ResponsesRequest) -> ResponseEncoder:
    counter = itertools.count()
    return ResponseEncoder(
        request,
        response_id=RESPONSE_ID,
        created_at=CREATED_AT,
        new_id=lambda prefix: f"{prefix}{next(counter):048x}",
        clock=lambda: COMPLETED_AT,
    )


def encode(case: str) -> bytes:
    events = [event_of(spec) for spec in json.loads((GOLDEN / f"{case}.events.json").read_text())]

    async def source() -> AsyncIterator[Event]:
        for event in events:
            yield event

    async def collect() -> bytes:
        chunks = [chunk async for chunk in encode_stream(source(), new_encoder(request_of(case)))]
        assert all(chunks), "no empty chunk is yielded"
        return b"".join(chunks)

    return asyncio.run(collect())


def check_golden(path: Path, actual: bytes) -> None:
    if UPDATE:
        path.write_bytes(actual)
    assert path.exists(), f"missing golden file {path.name}: run with UPDATE_GOLDEN=1"
    assert actual == path.read_bytes()


def frames(raw: bytes) -> list[dict[str, Any]]:
    """The events' data, checking the framing: `event: <type>` then `data: <json>`, type named twice."""
    out = []
    for frame in raw.decode().split("\n\n")[:-1]:
        if frame == ": keep-alive":
            continue
        event_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        out.append(data)
    return out


def sdk_result(raw: bytes) -> dict[str, Any]:
    """What `responses.stream()` gives for these bytes: the final response, or the terminal event."""
    state: ResponseStreamState[None] = ResponseStreamState(input_tools=omit, text_format=omit)
    last: Any = None
    for sse in SSEDecoder().iter_bytes(iter([raw])):
        if sse.event == "error":
            return {"error_event": sse.json()}
        event = construct_type(type_=ResponseStreamEvent, value=sse.json())
        for fired in state.handle_event(event):  # type: ignore[arg-type]
            last = fired
    completed = state._completed_response
    if completed is not None:
        return {"completed": completed.to_dict(), "output_text": completed.output_text}
    return {last.type: last.response.to_dict()}


@pytest.mark.parametrize("case", CASES)
def test_golden_stream(case: str) -> None:
    check_golden(GOLDEN / f"{case}.sse", encode(case))


@pytest.mark.parametrize("case", CASES)
def test_the_sdk_accumulates_the_golden_stream(case: str) -> None:
    result = sdk_result((GOLDEN / f"{case}.sse").read_bytes())
    actual = (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode()
    check_golden(GOLDEN / f"{case}.result.json", actual)


@pytest.mark.parametrize("case", CASES)
def test_sequence_numbers_rise_from_zero_and_items_nest(case: str) -> None:
    events = frames((GOLDEN / f"{case}.sse").read_bytes())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    if kinds == ["error"]:
        return
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete", "response.failed")
    open_items: dict[int, str] = {}
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert not open_items, "one item at a time"
            assert event["output_index"] == sum(
                1
                for e in events
                if e["type"] == "response.output_item.done"
                and e["sequence_number"] < event["sequence_number"]
            )
            open_items[event["output_index"]] = event["item"]["id"]
        elif kind == "response.output_item.done":
            assert open_items.pop(event["output_index"]) == event["item"]["id"]
        else:
            assert open_items.get(event["output_index"]) == event["item_id"], kind
    if kinds[-1] != "response.failed":
        assert not open_items


def test_text_deltas_carry_what_recent_sdks_require() -> None:
    delta = next(e for e in frames(encode("text")) if e["type"] == "response.output_text.delta")
    assert delta == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_" + "0" * 48,
        "output_index": 0,
        "content_index": 0,
        "delta": "Hello",
        "logprobs": [],
    }


def test_tool_call_ids_get_their_prefixes() -> None:
    done = [e for e in frames(encode("tool_call")) if e["type"] == "response.output_item.done"]
    assert done[1]["item"] == {
        "id": "fc_AbCdEfGhIjKlMnOpQrStUvWx",
        "type": "function_call",
        "status": "completed",
        "arguments": '{"city":"Paris"}',
        "call_id": "call_AbCdEfGhIjKlMnOpQrStUvWx",
        "name": "get_weather",
    }


def test_a_custom_tool_call_streams_its_unwrapped_input() -> None:
    events = frames(encode("custom_tool"))
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch"
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" not in kinds
    delta = next(e for e in events if e["type"] == "response.custom_tool_call_input.delta")
    assert delta["delta"] == patch
    done = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done["input"] == patch and done["item_id"] == "ctc_CcCcCcCcCcCcCcCcCcCcCcCc"
    item = events[-2]["item"]
    assert item["type"] == "custom_tool_call" and item["input"] == patch
    assert item["call_id"] == "call_CcCcCcCcCcCcCcCcCcCcCcCc" and item["name"] == "apply_patch"


def test_the_token_limit_is_an_incomplete_response() -> None:
    final = frames(encode("length"))[-1]
    assert final["type"] == "response.incomplete"
    response = final["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["completed_at"] is None and response["max_output_tokens"] == 16


def test_a_failure_before_the_upstream_answered_is_one_error_event() -> None:
    raw = encode("failed_before_start")
    assert raw.startswith(b": keep-alive\n\n")
    [event] = frames(raw)
    assert event == {
        "type": "error",
        "sequence_number": 0,
        "code": "no_usable_credential",
        "message": "No usable gptomni credential: 2 invalid (need a new cookie), 0 cooling down.",
        "param": None,
        "error": {
            "type": "server_error",
            "code": "no_usable_credential",
            "message": "No usable gptomni credential: 2 invalid (need a new cookie), 0 cooling down.",
            "param": None,
        },
    }


def sdk_stream(raw: bytes) -> list[Any]:
    """The bytes through the SDK's own `Stream`, as `responses.create(stream=True)` reads them."""
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/responses")
    response = httpx2.Response(200, content=raw, request=request)
    return list(Stream(cast_to=ResponseStreamEvent, response=response, client=client))


def test_the_sdk_raises_the_error_event_as_an_api_error() -> None:
    with pytest.raises(openai.APIError) as raised:
        sdk_stream((GOLDEN / "failed_before_start.sse").read_bytes())
    assert raised.value.message.startswith("No usable gptomni credential")
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "no_usable_credential"


def test_a_failure_mid_answer_is_response_failed_with_the_partial_output() -> None:
    events = sdk_stream((GOLDEN / "failed_mid_stream.sse").read_bytes())
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error.code == "server_error"
    assert failed.response.error.message == "The upstream cut the answer off."
    assert failed.response.output[0].content[0].text == "Half an ans"
    assert failed.response.output[0].status == "incomplete"
    rate_limited = frames((GOLDEN / "failed_in_tool_call.sse").read_bytes())[-1]
    assert rate_limited["response"]["error"]["code"] == "rate_limit_exceeded"
    assert rate_limited["response"]["output"][0]["status"] == "incomplete"


def test_an_empty_answer_is_one_empty_message() -> None:
    response = frames(encode("empty"))[-1]["response"]
    assert response["status"] == "completed"
    assert [item["content"] for item in response["output"]] == [
        [{"type": "output_text", "annotations": [], "logprobs": [], "text": ""}]
    ]


def test_the_response_echoes_the_request() -> None:
    created = frames(encode("json_schema"))[0]["response"]
    assert created["model"] == "gpt-4o" and created["instructions"] == "Extract the person."
    assert created["metadata"] == {"trace": "abc"} and created["temperature"] == 0.2
    assert created["previous_response_id"] == "resp_0123" and created["user"] == "user-1"
    assert (
        created["text"]["format"]["type"] == "json_schema" and created["text"]["format"]["name"] == "person"
    )
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None


def test_nothing_after_the_end() -> None:
    encoder = new_encoder(request_of("text"))
    assert encoder.feed(Started())
    assert encoder.feed(Finished(FinishReason.END, Usage(1, 0)))
    assert encoder.final is not None and encoder.final["status"] == "completed"
    assert encoder.feed(TextDelta("late")) == b""
    assert encoder.feed(KeepAlive()) == b""
    assert encoder.feed(Failed(GatewayError(502, "x"))) == b""


def test_the_final_response_is_handed_over_before_its_event_is_sent() -> None:
    seen: list[tuple[str, int]] = []

    async def source() -> AsyncIterator[Event]:
        yield Started()
        yield TextDelta("hi")
        yield Finished(FinishReason.END, Usage(1, 1))

    async def on_final(response: dict[str, Any]) -> None:
        seen.append((response["status"], len(sent)))

    sent: list[bytes] = []

    async def run() -> None:
        async for chunk in encode_stream(source(), new_encoder(request_of("text")), on_final=on_final):
            sent.append(chunk)

    asyncio.run(run())
    assert seen == [("completed", 2)]  # created+in_progress, then the text: the end not yet sent
    assert b"response.completed" in sent[-1]
