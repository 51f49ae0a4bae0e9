"""What `/openapi.json` says about each client route beyond what FastAPI can see: the routes read their
bodies raw (each dialect has its own decoder), so the request schema and an example of each request
and answer are written here and handed to the route decorators as `openapi_extra`. The schemas name
the fields most clients send; the decoders accept the rest of each dialect as documented in the README.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
SSE = "text/event-stream"


def documented(
    tag: str,
    *,
    response: Any,
    request: dict[str, Any] | None = None,
    request_schema: dict[str, Any] | None = None,
    stream: str | None = None,
    public: bool = False,
) -> dict[str, Any]:
    """`openapi_extra` for one route: its group on the page, its request body (schema and example),
    its 200 answer as JSON and, for a streaming route, as server-sent events. `public`: no key needed."""
    content: dict[str, Any] = {JSON: {"example": response}}
    if stream is not None:
        content[SSE] = {"schema": {"type": "string"}, "example": stream}
    extra: dict[str, Any] = {"tags": [tag], "responses": {"200": {"content": content}}}
    if request is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": request_schema or {"type": "object"}, "example": request}},
        }
    if public:
        extra["security"] = []
    return extra


def _sse(*events: str) -> str:
    return "".join(f"{event}\n\n" for event in events)


_MESSAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"description": "Text, or a list of content parts.", "type": ["string", "array"]},
        },
    },
}
_TOOLS = {
    "type": "array",
    "description": "Tools the model may call (emulated over the text-only upstream).",
    "items": {"type": "object"},
}
_MODEL = {"type": "string", "description": "A model id from /v1/models, or an alias (MODEL_ALIASES)."}
_STREAM = {"type": "boolean", "default": False, "description": "Answer as server-sent events."}
_TEXT = "Hello! How can I help you today?"
_USER = "Hello!"

MODELS = documented(
    "Models",
    response={
        "object": "list",
        "data": [{"id": "gptomni", "object": "model", "created": 1735689600, "owned_by": "gptomni"}],
    },
)
MODEL = documented(
    "Models", response={"id": "gptomni", "object": "model", "created": 1735689600, "owned_by": "gptomni"}
)

CHAT_COMPLETIONS = documented(
    "OpenAI Chat Completions",
    request_schema={
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": _MODEL,
            "messages": _MESSAGES,
            "stream": _STREAM,
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "tools": _TOOLS,
            "tool_choice": {"description": '"auto", "none", "required" or {"type": "function", ...}'},
            "response_format": {"type": "object", "description": "text, json_object or json_schema"},
            "stop": {"type": ["string", "array"]},
            "max_tokens": {"type": "integer"},
        },
    },
    request={"model": "gptomni", "messages": [{"role": "user", "content": _USER}], "stream": False},
    response={
        "id": "chatcmpl-mP0EKdakMa5PHOYF8DlppZeZ",
        "object": "chat.completion",
        "created": 1796195672,
        "model": "gptomni",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13},
    },
    stream=_sse(
        'data: {"id":"chatcmpl-oQRU","object":"chat.completion.chunk","created":1796195672,"model":"gptomni",'
        '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
        'data: {"id":"chatcmpl-oQRU","object":"chat.completion.chunk","created":1796195672,"model":"gptomni",'
        '"choices":[{"index":0,"delta":{"content":"Hello!"},"finish_reason":null}]}',
        'data: {"id":"chatcmpl-oQRU","object":"chat.completion.chunk","created":1796195672,"model":"gptomni",'
        '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        "data: [DONE]",
    ),
)

MESSAGES = documented(
    "Anthropic Messages",
    request_schema={
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {
            "model": _MODEL,
            "max_tokens": {"type": "integer"},
            "system": {"type": ["string", "array"]},
            "messages": _MESSAGES,
            "stream": _STREAM,
            "tools": _TOOLS,
            "tool_choice": {"type": "object"},
            "stop_sequences": {"type": "array", "items": {"type": "string"}},
        },
    },
    request={"model": "gptomni", "max_tokens": 1024, "messages": [{"role": "user", "content": _USER}]},
    response={
        "id": "msg_mTl1pJ2qGtDzDgyYybcuUCpp",
        "type": "message",
        "role": "assistant",
        "model": "gptomni",
        "content": [{"type": "text", "text": _TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 9},
    },
    stream=_sse(
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_cjZ8","type":"message",'
        '"role":"assistant","model":"gptomni","content":[],"stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":4,"output_tokens":1}}}',
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"text","text":""}}',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"Hello!"}}',
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        '"stop_sequence":null},"usage":{"output_tokens":3}}',
        'event: message_stop\ndata: {"type":"message_stop"}',
    ),
)

COUNT_TOKENS = documented(
    "Anthropic Messages",
    request_schema={
        "type": "object",
        "required": ["model", "messages"],
        "properties": {"model": _MODEL, "system": {"type": ["string", "array"]}, "messages": _MESSAGES},
    },
    request={"model": "gptomni", "messages": [{"role": "user", "content": _USER}]},
    response={"input_tokens": 5},
)

_RESPONSE = {
    "id": "resp_b3902f5e976cfba2ce92f464743ef4b53dfcc7426149396e",
    "object": "response",
    "created_at": 1796195685,
    "status": "completed",
    "model": "gptomni",
    "output": [
        {
            "id": "msg_cced887d6c8b19f7a0618c0cbc3455ac0cb1baf5c0e502f3",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": _TEXT}],
        }
    ],
    "previous_response_id": None,
    "store": True,
    "usage": {"input_tokens": 4, "output_tokens": 9, "total_tokens": 13},
}

RESPONSES = documented(
    "OpenAI Responses",
    request_schema={
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _MODEL,
            "input": {"type": ["string", "array"], "description": "Text, or a list of input items."},
            "instructions": {"type": "string"},
            "previous_response_id": {"type": "string", "description": "Continue a stored response."},
            "store": {"type": "boolean", "default": True},
            "stream": _STREAM,
            "tools": _TOOLS,
        },
    },
    request={"model": "gptomni", "input": _USER},
    response=_RESPONSE,
    stream=_sse(
        'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
        '"response":{"id":"resp_7a8e","object":"response","status":"in_progress","model":"gptomni","output":[]}}',
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":4,'
        '"item_id":"msg_1c2d","output_index":0,"content_index":0,"delta":"Hello!"}',
        'event: response.completed\ndata: {"type":"response.completed","sequence_number":9,'
        '"response":{"id":"resp_7a8e","object":"response","status":"completed","model":"gptomni"}}',
    ),
)
RESPONSE = documented("OpenAI Responses", response=_RESPONSE)
RESPONSE_DELETED = documented(
    "OpenAI Responses", response={"id": _RESPONSE["id"], "object": "response", "deleted": True}
)

COMPLETIONS = documented(
    "Legacy Completions",
    request_schema={
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": _MODEL,
            "prompt": {"type": ["string", "array"]},
            "stream": _STREAM,
            "max_tokens": {"type": "integer"},
            "stop": {"type": ["string", "array"]},
        },
    },
    request={"model": "gptomni", "prompt": "Say hello"},
    response={
        "id": "cmpl-k3gugzafmpjQRX7T4hEhEBuS",
        "object": "text_completion",
        "created": 1796195686,
        "model": "gptomni",
        "choices": [{"text": _TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
    },
    stream=_sse(
        'data: {"id":"cmpl-iCOr","object":"text_completion","created":1796195686,"model":"gptomni",'
        '"choices":[{"text":"Hello!","index":0,"logprobs":null,"finish_reason":null}]}',
        'data: {"id":"cmpl-iCOr","object":"text_completion","created":1796195686,"model":"gptomni",'
        '"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}',
        "data: [DONE]",
    ),
)

HEALTH = documented("Health", response={"status": "ok"}, public=True)
READY = documented(
    "Health",
    response={
        "status": "ready",
        "credentials": {"active": 1, "cooling": 0, "invalid": 0},
        "state": {"backend": "redis", "degraded": False},  # only with REDIS_URL
    },
    public=True,
)
