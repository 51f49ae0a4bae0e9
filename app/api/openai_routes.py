"""The OpenAI surface: `/v1/chat/completions` and `/v1/models`. Thin: parse, call, map."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import ApiKey, ChatServiceDep, SettingsDep
from app.chat.service import run_until_disconnect
from app.protocol.openai import ApiError, parse_chat_request

router = APIRouter(prefix="/v1", dependencies=[ApiKey])

# Fixed, so /v1/models answers the same every time (clients cache it).
MODEL_CREATED = 1_735_689_600
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


class SSEResponse(StreamingResponse):
    """A stream whose upstream is released however it ends, even if no byte of it was sent."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large
        parts.append(piece)
    return b"".join(parts)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


@router.post("/chat/completions")
async def chat_completions(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    body = await read_body(request, settings.max_request_bytes)
    chat_request = parse_chat_request(body)
    prepared = service.prepare(chat_request)
    if not chat_request.stream:
        completion = await run_until_disconnect(request.receive, service.complete(prepared))
        if completion is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return _json(completion)
    plan = await service.start_stream(prepared, request.receive)
    if plan is None:
        return Response(status_code=499)
    return SSEResponse(plan.body, plan.close)


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "gptomni"}


@router.get("/models")
async def list_models(settings: SettingsDep) -> Response:
    return _json({"object": "list", "data": [_model_card(m) for m in settings.model_table]})


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, settings: SettingsDep) -> Response:
    if model_id not in settings.model_table:
        raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return _json(_model_card(model_id))
