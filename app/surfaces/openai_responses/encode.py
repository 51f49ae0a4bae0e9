"""The core's events as a Responses stream: `event: <type>` / `data: <json>` pairs, `sequence_number`
rising from 0, in the order the spec and its clients expect.

`response.created` and `response.in_progress` go out when the upstream answers (`Started`). Text opens
a `message` item (`output_item.added`, `content_part.added`, then `output_text.delta`s); a tool call
opens a `function_call` item (arguments streamed as `function_call_arguments.delta`) or, for a custom
tool, a `custom_tool_call` item whose `input` is sent once the call is whole (its JSON arguments have
to be complete to be unwrapped). An item is closed (its `.done` events) when the next one opens or the
answer ends. The end is `response.completed`, or `response.incomplete` when the token limit cut the
answer, as OpenAI does (the openai SDK's `get_final_response()` then raises; Codex reports the reason).

A failure after `Started` is `response.failed`, with the items so far. A failure before it (the
upstream failed after the 200 and keep-alives went out) is a lone `error` event: the openai SDK's
`responses.stream()` helper cannot take a `response.failed` it has no `response.created` for, and it
raises `openai.APIError` with our message when the event's data carries an `error` object, in both
`responses.create(stream=True)` and `responses.stream()`. So the event has the spec's flat fields
(`code`, `message`, `param`) and that `error` object too. Do not drop either without reading why.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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
)
from app.http.sse import KEEPALIVE, named_event
from app.surfaces.openai_responses.wire import (
    MESSAGE_PREFIX,
    ResponsesRequest,
    call_item,
    custom_input,
    finish_status,
    message_item,
    new_item_id,
    response_object,
    text_part,
    usage_dict,
)

# `response.error.code` is an enum in the spec (the SDK types it as a Literal); Codex reads
# `rate_limit_exceeded` and `context_length_exceeded`. Everything else the upstream does is a server error.
_FAILED_CODES = frozenset({"rate_limit_exceeded", "context_length_exceeded", "server_error"})


def failed_error(error: GatewayError) -> dict[str, Any]:
    """`response.error` for a failure in the middle of an answer."""
    if error.code in _FAILED_CODES:
        code = error.code
    else:
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": error.message, "type": error.type}


def error_event_payload(error: GatewayError, sequence_number: int) -> dict[str, Any]:
    """The `error` event: the spec's flat fields, and the `error` object the SDK raises from."""
    return {
        "type": "error",
        "sequence_number": sequence_number,
        "code": error.code or error.type,
        "message": error.message,
        "param": error.param,
        "error": {"type": error.type, "code": error.code, "message": error.message, "param": error.param},
    }


@dataclass
class _Open:
    """The output item being written: its place in `output`, the item, and its text so far."""

    index: int
    item: dict[str, Any]
    call_index: int | None = None  # the core's index of the call, for its argument deltas
    custom: bool = False
    pieces: list[str] = field(default_factory=list)


class ResponseEncoder:
    """One streamed response: `feed` each event, get its bytes. `final` is the response object
    once the answer finished (`response.completed` / `response.incomplete`), for the store."""

    def __init__(
        self,
        request: ResponsesRequest,
        *,
        response_id: str,
        created_at: int,
        new_id: Callable[[str], str] = new_item_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request = request
        self.response_id = response_id
        self.created_at = created_at
        self._new_id = new_id
        self._clock = clock
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._open: _Open | None = None
        self._started = False
        self._ended = False
        self.final: dict[str, Any] | None = None

    def feed(self, event: Event) -> bytes:
        if self._ended:
            return b""
        if isinstance(event, KeepAlive):
            return KEEPALIVE
        if isinstance(event, TextDelta):
            return self._start() + self._text(event.text) if event.text else b""
        if isinstance(event, ToolCallDelta):
            return self._start() + self._tool(event)
        if isinstance(event, Started):
            return self._start()
        if isinstance(event, Finished):
            return self._start() + self._finish(event)
        if isinstance(event, Failed):
            return self._fail(event.error)
        return b""

    # --- events ---------------------------------------------------------------------------------
    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return named_event(kind, data)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return response_object(
            self.request,
            response_id=self.response_id,
            created_at=self.created_at,
            status=status,
            output=self._output,
            **fields,
        )

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = self._response("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    # --- items ----------------------------------------------------------------------------------
    def _add(self, item: dict[str, Any], **state: Any) -> bytes:
        self._open = _Open(len(self._output), item, **state)
        self._output.append(item)
        return self._event("response.output_item.added", {"output_index": self._open.index, "item": item})

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open.item["type"] != "message":
            out += self._close()
            out += self._add(message_item(self._new_id(MESSAGE_PREFIX), None, "in_progress"))
            out += self._event("response.content_part.added", self._part_fields(text_part("")))
        assert self._open is not None
        self._open.pieces.append(text)
        return out + self._event(
            "response.output_text.delta",
            {**self._where(), "content_index": 0, "delta": text, "logprobs": []},
        )

    def _tool(self, event: ToolCallDelta) -> bytes:
        out = b""
        if event.id is not None:
            out += self._close()
            custom = event.name in self.request.custom_tools
            item = call_item(event.id, event.name or "", "", custom=custom, status="in_progress")
            out += self._add(item, call_index=event.index, custom=custom)
        current = self._open
        if not event.arguments or current is None or current.call_index != event.index:
            return out  # the core sends a call's arguments right after its first delta
        current.pieces.append(event.arguments)
        if current.custom:
            return out  # unwrapped from the whole arguments when the call closes
        current.item["arguments"] += event.arguments
        return out + self._event(
            "response.function_call_arguments.delta", {**self._where(), "delta": event.arguments}
        )

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open.item["id"], "output_index": self._open.index}

    def _part_fields(self, part: dict[str, Any]) -> dict[str, Any]:
        return {**self._where(), "content_index": 0, "part": part}

    def _close(self, status: str = "completed") -> bytes:
        """The `.done` events of the open item, which takes its final content and `status`."""
        current = self._open
        if current is None:
            return b""
        where = self._where()
        item = current.item
        text = "".join(current.pieces)
        if item["type"] == "message":
            part = text_part(text)
            out = self._event(
                "response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []}
            )
            out += self._event("response.content_part.done", self._part_fields(part))
            item["content"] = [part]
        elif current.custom:
            item["input"] = custom_input(text) if text else ""
            out = b""
            if item["input"]:
                out += self._event("response.custom_tool_call_input.delta", {**where, "delta": item["input"]})
            out += self._event("response.custom_tool_call_input.done", {**where, "input": item["input"]})
        else:
            out = self._event("response.function_call_arguments.done", {**where, "arguments": text})
        item["status"] = status
        self._open = None
        return out + self._event("response.output_item.done", {"output_index": current.index, "item": item})

    # --- the end --------------------------------------------------------------------------------
    def _finish(self, event: Finished) -> bytes:
        status, incomplete = finish_status(event.reason)
        message_status = "incomplete" if event.reason is FinishReason.LENGTH else "completed"
        out = b""
        if self._open is not None and self._open.item["type"] == "message":
            out += self._close(message_status)
        else:
            out += self._close()
        if not self._output:  # an empty answer is still one (empty) message, as when not streamed
            out += self._add(message_item(self._new_id(MESSAGE_PREFIX), None, "in_progress"))
            out += self._event("response.content_part.added", self._part_fields(text_part("")))
            out += self._close(message_status)
        self._ended = True
        self.final = self._response(
            status,
            usage=usage_dict(event.usage),
            incomplete_details=incomplete,
            completed_at=int(self._clock()) if status == "completed" else None,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, {"response": self.final})

    def _fail(self, error: GatewayError) -> bytes:
        self._ended = True
        if not self._started:
            return named_event("error", error_event_payload(error, self._sequence))
        current = self._open
        if current is not None:  # the item cut short, as far as it got, without its .done events
            text = "".join(current.pieces)
            if current.item["type"] == "message":
                current.item["content"] = [text_part(text)]
            elif current.custom:
                current.item["input"] = text
            current.item["status"] = "incomplete"
            self._open = None
        return self._event(
            "response.failed", {"response": self._response("failed", error=failed_error(error))}
        )


async def encode_stream(
    events: AsyncIterator[Event],
    encoder: ResponseEncoder,
    *,
    on_final: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body. `on_final` gets the finished response object before its terminal event is
    sent, so a client that reads `response.completed` can continue from it at once."""
    async for event in events:
        chunk = encoder.feed(event)
        if on_final is not None and isinstance(event, Finished) and encoder.final is not None:
            await on_final(encoder.final)
        if chunk:
            yield chunk
