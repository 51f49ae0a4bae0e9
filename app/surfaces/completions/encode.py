"""The core's events as legacy Completions: `text_completion` objects, whole or as SSE chunks.

A stream is one chunk per piece of text (`finish_reason` null), a last chunk with empty text and the
finish reason, a usage chunk when `stream_options.include_usage` asked for it, then `[DONE]`. With
`echo`, the prompt comes first, as the first piece of text.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from app.core.events import (
    Completion,
    Event,
    Failed,
    Finished,
    FinishReason,
    KeepAlive,
    Started,
    TextDelta,
    Usage,
)
from app.http.errors import openai_envelope
from app.http.sse import KEEPALIVE, sse_event
from app.surfaces.openai_chat.encode import DONE, usage_dict

FINISH_REASONS = {
    FinishReason.END: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.TOOL_CALLS: "stop",  # no tools on this surface
    FinishReason.LENGTH: "length",
}


def completion_id() -> str:
    return "cmpl-" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def body_of(
    completion: Completion, model: str, *, echo: str = "", id_: str | None = None, created: int | None = None
) -> dict[str, Any]:
    return {
        "id": id_ or completion_id(),
        "object": "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [_choice(echo + completion.text, FINISH_REASONS[completion.finish.reason])],
        "usage": usage_dict(completion.finish.usage),
    }


class ChunkEncoder:
    def __init__(self, model: str, *, id_: str | None = None, created: int | None = None) -> None:
        self._head = {
            "id": id_ or completion_id(),
            "object": "text_completion",
            "created": int(time.time()) if created is None else created,
            "model": model,
        }

    def text(self, text: str) -> bytes:
        return sse_event({**self._head, "choices": [_choice(text, None)]})

    def finish(self, reason: FinishReason) -> bytes:
        return sse_event({**self._head, "choices": [_choice("", FINISH_REASONS[reason])]})

    def usage(self, usage: Usage) -> bytes:
        return sse_event({**self._head, "choices": [], "usage": usage_dict(usage)})


async def encode_stream(
    events: AsyncIterator[Event],
    model: str,
    *,
    include_usage: bool = False,
    echo: str = "",
    id_: str | None = None,
    created: int | None = None,
) -> AsyncIterator[bytes]:
    encoder = ChunkEncoder(model, id_=id_, created=created)
    async for event in events:
        if isinstance(event, TextDelta):
            yield encoder.text(event.text)
        elif isinstance(event, KeepAlive):
            yield KEEPALIVE
        elif isinstance(event, Finished):
            yield encoder.finish(event.reason)
            if include_usage:
                yield encoder.usage(event.usage)
            yield DONE
        elif isinstance(event, Failed):
            yield sse_event(openai_envelope(event.error))
        elif isinstance(event, Started) and echo:  # the prompt, echoed, leads the text
            yield encoder.text(echo)
