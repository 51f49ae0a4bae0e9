"""Legacy Completions: `POST /v1/completions`, for older tools that still call it. Thin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.core.events import Completion, Event
from app.http import openapi_docs as docs
from app.http.body import read_body
from app.http.deps import ApiKey, ChatServiceDep, SettingsDep
from app.http.respond import respond
from app.surfaces.completions.encode import body_of, encode_stream
from app.surfaces.completions.wire import decode, parse_completion_request, prompt_text

router = APIRouter(prefix="/v1", dependencies=[ApiKey])


@router.post("/completions", openapi_extra=docs.COMPLETIONS)
async def completions(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    body = await read_body(request, settings.max_request_bytes)
    completion_request = parse_completion_request(body)
    service.resolve_model(completion_request.model)
    prepared = service.prepare(decode(completion_request))
    model = completion_request.model
    echo = prompt_text(completion_request) if completion_request.echo else ""
    include_usage = completion_request.include_usage

    def whole(completion: Completion) -> dict[str, Any]:
        return body_of(completion, model, echo=echo)

    def encode(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        return encode_stream(events, model, include_usage=include_usage, echo=echo)

    stream = bool(completion_request.stream)
    return await respond(request, service, prepared, stream=stream, body=whole, encode=encode)
