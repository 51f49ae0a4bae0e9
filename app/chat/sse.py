"""OpenAI `chat.completion.chunk` events as server-sent-event bytes, and the `chat.completion` body.

A stream's id, created time and model are fixed once; every content chunk is then a precomputed
prefix + one JSON-encoded string + a precomputed suffix, since this runs once per upstream piece.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


def sse_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


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
