"""The stream encoder from golden files: `<case>.events.json` in, `<case>.sse` exact bytes out, and
`<case>.message.json` the message the official SDK accumulates from those bytes.

`UPDATE_GOLDEN=1 pytest tests/surfaces/anthropic` rewrites the outputs; read the diff before keeping it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from anthropic._streaming import SSEDecoder
from anthropic.lib.streaming._messages import accumulate_event

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
from app.surfaces.anthropic.encode import MessageStream, encode_stream

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".events.json") for p in GOLDEN.glob("*.events.json"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
MESSAGE_ID = "msg_0123456789ABCDEFGHIJKLmn"
MODEL = "claude-sonnet-4-5-20250929"


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
        return Finished(FinishReason(spec["reason"]), Usage(prompt, completion), spec.get("stop_sequence"))
    if kind == "Failed":
        return Failed(GatewayError(spec["status"], spec["message"], type=spec["type"]))
    raise AssertionError(f"unknown event {kind}")


def events_of(case: str) -> list[Event]:
    return [event_of(spec) for spec in json.loads((GOLDEN / f"{case}.events.json").read_text())]


def encode(events: list[Event], input_tokens: int = 25) -> bytes:
    async def source() -> AsyncIterator[Event]:
        for event in events:
            yield event

    async def collect() -> bytes:
        frames = [
            f async for f in encode_stream(source(), model=MODEL, input_tokens=input_tokens, id_=MESSAGE_ID)
        ]
        assert all(frames), "no empty frame is yielded"
        return b"".join(frames)

    return asyncio.run(collect())


def check_golden(path: Path, actual: bytes) -> None:
    if UPDATE:
        path.write_bytes(actual)
    assert path.exists(), f"missing golden file {path.name}: run with UPDATE_GOLDEN=1"
    assert actual == path.read_bytes()


def sdk_message(raw: bytes) -> dict[str, Any] | None:
    """What the anthropic SDK builds from these bytes, as `messages.stream()` does (None: no message)."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for sse in SSEDecoder().iter_bytes(iter([raw])):
        if sse.event in ("ping", "error"):
            continue
        snapshot = accumulate_event(event=sse.json(), current_snapshot=snapshot, json_bufs=json_bufs)
    return None if snapshot is None else snapshot.to_dict()


@pytest.mark.parametrize("case", CASES)
def test_golden_stream(case: str) -> None:
    raw = encode(events_of(case))
    check_golden(GOLDEN / f"{case}.sse", raw)


@pytest.mark.parametrize("case", CASES)
def test_the_sdk_accumulates_the_golden_stream(case: str) -> None:
    message = sdk_message((GOLDEN / f"{case}.sse").read_bytes())
    actual = (json.dumps(message, indent=2, ensure_ascii=False) + "\n").encode()
    check_golden(GOLDEN / f"{case}.message.json", actual)


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line.removeprefix("data: "))
        assert payload["type"] == event_line.removeprefix("event: ")  # every frame names its type twice
        out.append((payload["type"], payload))
    return out


@pytest.mark.parametrize("case", CASES)
def test_every_golden_stream_keeps_anthropic_order(case: str) -> None:
    kinds = [kind for kind, _ in frames((GOLDEN / f"{case}.sse").read_bytes()) if kind != "ping"]
    if "error" in kinds:
        assert kinds[-1] == "error" and kinds.count("error") == 1
        kinds = kinds[:-1]
        if not kinds:
            return  # failed before the upstream answered: the error alone
    assert kinds[0] == "message_start"
    assert kinds.count("message_start") == 1
    if kinds[-1] == "message_stop":
        assert kinds[-2] == "message_delta"
        kinds = kinds[:-2]
    open_block = False
    for kind in kinds[1:]:
        if kind == "content_block_start":
            assert not open_block
            open_block = True
        elif kind == "content_block_delta":
            assert open_block
        else:
            assert kind == "content_block_stop" and open_block
            open_block = False


def test_block_indexes_count_up_and_tool_ids_get_the_prefix() -> None:
    parsed = frames((GOLDEN / "tool_use.sse").read_bytes())
    starts = [p for kind, p in parsed if kind == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert starts[1]["content_block"]["id"] == "toolu_AbCdEfGhIjKlMnOpQrStUvWx"
    assert starts[1]["content_block"]["input"] == {}
    deltas = [p for kind, p in parsed if kind == "content_block_delta"]
    assert deltas[1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
    }


def test_message_start_echoes_the_model_and_counts_the_prompt() -> None:
    parsed = frames(encode([Started()], input_tokens=321))
    assert parsed == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": MESSAGE_ID,
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 321, "output_tokens": 1},
                },
            },
        )
    ]


def test_error_types_follow_the_status() -> None:
    overloaded = frames(encode([Failed(GatewayError(503, "none usable", type="server_error"))]))
    assert overloaded == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "none usable"}})
    ]
    limited = frames(encode([Started(), Failed(GatewayError(429, "slow down", type="rate_limit_error"))]))
    assert limited[-1][1]["error"] == {"type": "rate_limit_error", "message": "slow down"}


def test_nothing_after_the_end() -> None:
    stream = MessageStream(MODEL, 1, id_=MESSAGE_ID)
    assert stream.feed(Started())
    assert stream.feed(Finished(FinishReason.END, Usage(1, 0)))
    assert stream.feed(TextDelta("late")) == b""
    assert stream.feed(KeepAlive()) == b""
    assert stream.feed(Failed(GatewayError(502, "x"))) == b""


def test_a_fresh_id_per_stream() -> None:
    first, second = MessageStream(MODEL, 1), MessageStream(MODEL, 1)
    assert first.id.startswith("msg_") and len(first.id) == 28
    assert first.id != second.id


def test_text_frames_are_plain_json_for_any_text() -> None:
    tricky = 'quote " backslash \\ newline \n tab \t nul \x00 line-sep \u2028 emoji 😀'
    parsed = frames(encode([Started(), TextDelta(tricky), TextDelta("x")]))
    assert parsed[2][1] == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": tricky},
    }
