"""The Chat Completions surface: `/v1/chat/completions` and `/v1/models`. Thin: parse, call, map."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.config import Settings
from app.core.errors import GatewayError
from app.core.events import Completion, Event
from app.core.service import ChatService
from app.demo.mode import DEMO_OWNER
from app.http import openapi_docs as docs
from app.http.body import read_body
from app.http.deps import ApiKey, ChatServiceDep, SettingsDep
from app.http.respond import json_response, respond
from app.surfaces.openai_chat.decode import decode
from app.surfaces.openai_chat.encode import body_of, encode_stream
from app.surfaces.openai_chat.wire import ChatCompletionRequest, parse_chat_request

router = APIRouter(prefix="/v1", dependencies=[ApiKey])

# Fixed, so /v1/models answers the same every time (clients cache it).
MODEL_CREATED = 1_735_689_600


@router.post("/chat/completions", openapi_extra=docs.CHAT_COMPLETIONS)
async def chat_completions(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    body = await read_body(request, settings.max_request_bytes)
    return await answer_chat(request, service, parse_chat_request(body))


async def answer_chat(
    request: Request, service: ChatService, chat_request: ChatCompletionRequest
) -> Response:
    """A parsed Chat Completions request, answered (JSON, or the stream it asked for); also the
    console's "Try it" (app/console/routes.py)."""
    service.resolve_model(chat_request.model)  # an unknown model is a 404 before any other check
    prepared = service.prepare(decode(chat_request))
    model, include_usage = chat_request.model, chat_request.include_usage

    def whole(completion: Completion) -> dict[str, Any]:
        return body_of(completion, model)

    def encode(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        return encode_stream(events, model, include_usage=include_usage)

    return await respond(
        request, service, prepared, stream=bool(chat_request.stream), body=whole, encode=encode
    )


def _model_card(model_id: str, settings: Settings) -> dict[str, Any]:
    # Demo mode says so wherever a client looks first: its answers are canned (app/demo/mode.py).
    owner = DEMO_OWNER if settings.demo else "gptomni"
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": owner}


@router.get("/models", openapi_extra=docs.MODELS)
async def list_models(settings: SettingsDep) -> Response:
    return json_response({"object": "list", "data": [_model_card(m, settings) for m in settings.model_table]})


@router.get("/models/{model_id:path}", openapi_extra=docs.MODEL)
async def get_model(model_id: str, settings: SettingsDep) -> Response:
    if settings.resolve_model(model_id) is None:
        raise GatewayError(
            404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found"
        )
    return json_response(_model_card(model_id, settings))
