"""The core's events as Chat Completions: `chat.completion.chunk` SSE bytes and the `chat.completion` body.

A stream's id, created time and model are fixed once; every content chunk is then a precomputed
prefix + one JSON-encoded string + a precomputed suffix, since this runs once per upstream piece.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.core.events import (
    CalledTool,
    Completion,
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
from app.http.errors import openai_envelope
from app.http.sse import KEEPALIVE, sse_event

DONE = b"data: [DONE]\n\n"
CALL_PREFIX = "call_"
FINISH_REASONS = {
    FinishReason.END: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.LENGTH: "length",
}


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


class ChunkEncoder:
    """The chunks of one streamed completion."""

    def __init__(self, model: str, *, include_usage: bool = False, id_: str | None = None) -> None:
        self.id = id_ or completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        head = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        # With include_usage, OpenAI puts "usage": null on every chunk but the last.
        self._tail: dict[str, Any] = {"usage": None} if include_usage else {}
        self._head = head
        prefix = orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": ""}}]})
        # Split the encoded template around the empty content string to splice text in later.
        marker = prefix.index(b'"content":""') + len(b'"content":')
        self._content_prefix = b"data: " + prefix[:marker]
        suffix = b',"logprobs":null,"finish_reason":null}]'
        if include_usage:
            suffix += b',"usage":null'
        self._content_suffix = b"}" + suffix + b"}\n\n"

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_event({**self._head, "choices": choices, **self._tail, **extra})

    def role(self) -> bytes:
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def content(self, text: str) -> bytes:
        return self._content_prefix + orjson.dumps(text) + self._content_suffix

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])

    def usage(self, usage: dict[str, int]) -> bytes:
        return sse_event({**self._head, "choices": [], "usage": usage})


def error_event(envelope: dict[str, Any]) -> bytes:
    return sse_event(envelope)


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def tool_call_delta(event: ToolCallDelta) -> dict[str, Any]:
    """A ToolCallDelta as OpenAI's `delta.tool_calls[0]`: id, type and name on a call's first delta."""
    entry: dict[str, Any] = {"index": event.index}
    if event.id is not None:
        entry["id"] = CALL_PREFIX + event.id
        entry["type"] = "function"
    function: dict[str, Any] = {}
    if event.name is not None:
        function["name"] = event.name
    function["arguments"] = event.arguments
    entry["function"] = function
    return {"tool_calls": [entry]}


def message_tool_call(call: CalledTool) -> dict[str, Any]:
    """A called tool in `message.tool_calls`."""
    return {
        "id": CALL_PREFIX + call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


async def encode_stream(
    events: AsyncIterator[Event], model: str, *, include_usage: bool = False
) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk once the upstream answered, content and tool-call chunks, the
    finish chunk, the usage chunk when asked for, and `[DONE]`; a failure is an error event.

    The stream's id and `created` time are fixed when the upstream answers (`Started`); only
    keep-alives and a failure can come before that."""
    async for event in events:
        if isinstance(event, Started):
            break
        if isinstance(event, KeepAlive):
            yield KEEPALIVE
        elif isinstance(event, Failed):
            yield error_event(openai_envelope(event.error))
            return
    else:
        return
    encoder = ChunkEncoder(model, include_usage=include_usage)
    yield encoder.role()
    async for event in events:
        if isinstance(event, TextDelta):
            yield encoder.content(event.text)
        elif isinstance(event, ToolCallDelta):
            yield encoder.delta(tool_call_delta(event))
        elif isinstance(event, KeepAlive):
            yield KEEPALIVE
        elif isinstance(event, Finished):
            yield encoder.finish(FINISH_REASONS[event.reason])
            if include_usage:
                yield encoder.usage(usage_dict(event.usage))
            yield DONE
        elif isinstance(event, Failed):
            yield error_event(openai_envelope(event.error))


def body_of(completion: Completion, model: str) -> dict[str, Any]:
    """The `chat.completion` body of a whole answer."""
    return completion_body(
        id_=completion_id(),
        created=int(time.time()),
        model=model,
        content=completion.content,
        finish_reason=FINISH_REASONS[completion.finish.reason],
        usage=usage_dict(completion.finish.usage),
        tool_calls=[message_tool_call(call) for call in completion.tool_calls] or None,
    )


def completion_body(
    *,
    id_: str,
    created: int,
    model: str,
    content: str | None,
    finish_reason: str,
    usage: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }
