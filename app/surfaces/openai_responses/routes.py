"""The Responses surface: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`. Thin: parse,
look up the conversation it continues, call, map, and keep the answer when `store` asks for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from app.core.events import Completion, Event
from app.core.job import Turn
from app.http import openapi_docs as docs
from app.http.body import read_body
from app.http.deps import ApiKey, ChatServiceDep, SettingsDep
from app.http.respond import json_response, respond
from app.surfaces.openai_responses.encode import ResponseEncoder, encode_stream
from app.surfaces.openai_responses.store import MemoryResponseStore, ResponseStore, StoredResponse
from app.surfaces.openai_responses.wire import (
    RESPONSE_PREFIX,
    conversation_of,
    new_item_id,
    output_turns,
    parse_request,
    previous_response_not_found,
    response_body,
    response_not_found,
    to_job,
)

router = APIRouter(prefix="/v1", dependencies=[ApiKey])


async def get_store(request: Request) -> ResponseStore:
    """The app's store (`app.state.responses_store`), made here on first use if the app has none."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "responses_store", None)
    if store is None:
        settings = state.settings
        store = state.responses_store = MemoryResponseStore(
            settings.responses_ttl, settings.responses_max, settings.responses_max_bytes
        )
    return store


StoreDep = Annotated[ResponseStore, Depends(get_store)]


@router.post("/responses", openapi_extra=docs.RESPONSES)
async def create_response(
    request: Request, service: ChatServiceDep, settings: SettingsDep, store: StoreDep
) -> Response:
    body = await read_body(request, settings.max_request_bytes)
    parsed = parse_request(body)
    service.resolve_model(parsed.model)  # an unknown model is a 404 before any other check
    history: tuple[Turn, ...] = ()
    if parsed.previous_response_id is not None:
        previous = await store.get(parsed.previous_response_id)
        if previous is None:
            raise previous_response_not_found(parsed.previous_response_id)
        history = previous.turns
    job = to_job(parsed, history)
    prepared = service.prepare(job)
    response_id, created_at = new_item_id(RESPONSE_PREFIX), int(time.time())
    conversation = conversation_of(job, parsed)

    async def keep(response: dict[str, Any]) -> None:
        if parsed.store:
            turns = (*conversation, *output_turns(response["output"]))
            await store.put(StoredResponse(response_id, response, turns))

    kept: list[dict[str, Any]] = []

    def whole(completion: Completion) -> dict[str, Any]:
        response = response_body(
            parsed, completion, response_id=response_id, created_at=created_at, completed_at=int(time.time())
        )
        kept.append(response)
        return response

    def encode(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        encoder = ResponseEncoder(parsed, response_id=response_id, created_at=created_at)
        return encode_stream(events, encoder, on_final=keep)

    answer = await respond(request, service, prepared, stream=parsed.stream, body=whole, encode=encode)
    for response in kept:  # the JSON is built, not yet sent: stored before the client can ask for it
        await keep(response)
    return answer


@router.get("/responses/{response_id}", openapi_extra=docs.RESPONSE)
async def get_response(response_id: str, store: StoreDep) -> Response:
    record = await store.get(response_id)
    if record is None:
        raise response_not_found(response_id)
    return json_response(record.response)


@router.delete("/responses/{response_id}", openapi_extra=docs.RESPONSE_DELETED)
async def delete_response(response_id: str, store: StoreDep) -> Response:
    if not await store.delete(response_id):
        raise response_not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})
