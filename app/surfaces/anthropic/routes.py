"""The Anthropic surface: `POST /v1/messages` and `/v1/messages/count_tokens`. Thin: read, decode, answer.

Errors on these paths leave in Anthropic's envelope. Query parameters (Claude Code sends
`?beta=true`) and the `anthropic-version` / `anthropic-beta` headers are accepted and change nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.core.errors import GatewayError
from app.core.events import Completion, Event
from app.http import openapi_docs as docs
from app.http.body import read_body
from app.http.deps import ApiKey, ChatServiceDep, SettingsDep
from app.http.errors import register_envelope
from app.http.respond import json_response, respond
from app.surfaces.anthropic.encode import encode_stream
from app.surfaces.anthropic.wire import decode_count_tokens, decode_messages, error_envelope, message_body

PREFIX = "/v1/messages"

router = APIRouter(dependencies=[ApiKey])


def render_error(error: GatewayError) -> Response:
    status, body = error_envelope(error)
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=error.headers
    )


register_envelope(PREFIX, render_error)


@router.post(PREFIX, openapi_extra=docs.MESSAGES)
async def create_message(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    job = decode_messages(await read_body(request, settings.max_request_bytes))
    prepared = service.prepare(job)

    def body(completion: Completion) -> object:
        return message_body(completion, model=job.model)

    def encode(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        return encode_stream(events, model=job.model, input_tokens=prepared.prompt_tokens)

    return await respond(request, service, prepared, stream=job.stream, body=body, encode=encode)


@router.post(PREFIX + "/count_tokens", openapi_extra=docs.COUNT_TOKENS)
async def count_tokens(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    job = decode_count_tokens(await read_body(request, settings.max_request_bytes))
    # The whole conversation is counted: a client counts to decide what to drop itself.
    return json_response({"input_tokens": service.prepare(job, fit=False).prompt_tokens})
