"""The Anthropic Messages stream: neutral events in, `event: <type>` + `data: <json>` frames out.

A small state machine over one message: `message_start` on `Started`; content blocks opened as text or
tool calls arrive (a text block stays open across text deltas, any other arrival closes it); at
`Finished` the open block is closed and `message_delta` + `message_stop` end the message. `KeepAlive`
is a `ping`. `Failed` is an `error` event, without closing what is open, as Anthropic does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.core.events import (
    Event,
    Failed,
    Finished,
    FinishReason,
    KeepAlive,
    Started,
    TextDelta,
    ToolCallDelta,
)
from app.http.sse import named_event
from app.surfaces.anthropic.wire import STOP_REASONS, TOOL_USE_PREFIX, error_payload, message_id

PING = named_event("ping", {"type": "ping"})
MESSAGE_STOP = named_event("message_stop", {"type": "message_stop"})


class MessageStream:
    """The frames of one streamed message; `feed` each event in order."""

    def __init__(self, model: str, input_tokens: int, *, id_: str | None = None) -> None:
        self.id = id_ or message_id()
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self.done = False
        self._open: int | None = None  # the index of the open block
        self._text_open = False
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # a call's index -> its block's index
        self._text_prefix = b""

    def feed(self, event: Event) -> bytes:
        if self.done:
            return b""
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        if isinstance(event, KeepAlive):
            return PING
        if isinstance(event, Started):
            return self._start()
        if isinstance(event, Finished):
            self.done = True
            return self._start() + self._close() + self._finish(event)
        if isinstance(event, Failed):
            self.done = True
            return named_event("error", error_payload(event.error))
        return b""

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
        }
        return named_event("message_start", {"type": "message_start", "message": message})

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = self._blocks
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._open, "content_block": block}
        return out + named_event("content_block_start", start)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._text_open = self._open, None, False
        return named_event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = self._start()
        if not self._text_open:
            out += self._open_block({"type": "text", "text": ""})
            self._text_open = True
            # Runs once per upstream piece: the frame around the text is encoded once per block.
            head = orjson.dumps({"type": "content_block_delta", "index": self._open})[:-1]
            self._text_prefix = (
                b"event: content_block_delta\ndata: " + head + b',"delta":{"type":"text_delta","text":'
            )
        return out + self._text_prefix + orjson.dumps(text) + b"}}\n\n"

    def _tool(self, delta: ToolCallDelta) -> bytes:
        out = self._start()
        if delta.id is not None:
            block = {
                "type": "tool_use",
                "id": TOOL_USE_PREFIX + delta.id,
                "name": delta.name or "",
                "input": {},
            }
            out += self._open_block(block)
            assert self._open is not None
            self._tool_blocks[delta.index] = self._open
        index = self._tool_blocks.get(delta.index)
        if delta.arguments and index is not None:
            out += named_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": delta.arguments},
                },
            )
        return out

    def _finish(self, finished: Finished) -> bytes:
        stop_sequence = finished.stop_sequence if finished.reason is FinishReason.STOP_SEQUENCE else None
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS[finished.reason], "stop_sequence": stop_sequence},
            "usage": {"output_tokens": finished.usage.completion_tokens},
        }
        return named_event("message_delta", delta) + MESSAGE_STOP


async def encode_stream(
    events: AsyncIterator[Event], *, model: str, input_tokens: int, id_: str | None = None
) -> AsyncIterator[bytes]:
    """The SSE body of one streamed message."""
    stream = MessageStream(model, input_tokens, id_=id_)
    async for event in events:
        frame = stream.feed(event)
        if frame:
            yield frame
