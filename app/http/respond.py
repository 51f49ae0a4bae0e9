"""One answer as an HTTP response, for any surface: JSON when whole, SSE when streamed.

The surface brings its body builder and its stream encoder; this owns the disconnect handling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from starlette.responses import Response

from app.core.draining import Draining, shutting_down
from app.core.events import Completion, Event
from app.core.service import ChatService, Prepared, wait_for_disconnect
from app.http.keys import admit, record_usage, tap_usage
from app.http.sse import SSEResponse

T = TypeVar("T")
CLIENT_GONE = 499  # nobody reads it; the access log records it


async def run_until_disconnect(
    receive: Callable[[], Awaitable[Any]], work: Awaitable[T], draining: Draining | None = None
) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (then None), or if the server's
    grace period for a stop runs out first (then a 503 `server_shutting_down`).

    uvicorn does not cancel a handler whose client went away, and Starlette only watches for it
    while a streaming body is being sent; before that, this is what stops the upstream call.
    """

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    waited: set[asyncio.Future[Any]] = {task, watcher}
    if draining is not None:
        waited.add(draining.future())
    try:
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if draining is not None and draining.expired and not task.done():
            raise shutting_down()  # the work is cancelled below
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def respond(
    request: Request,
    service: ChatService,
    prepared: Prepared,
    *,
    stream: bool,
    body: Callable[[Completion], Any],
    encode: Callable[[AsyncIterator[Event]], AsyncIterator[bytes]],
) -> Response:
    admission = await admit(request, prepared.model)  # a named key's limits, now that the model is known
    released = False
    try:
        if not stream:
            completion = await run_until_disconnect(
                request.receive, service.complete(prepared), service.draining
            )
            if completion is None:
                return Response(status_code=CLIENT_GONE)
            usage = completion.finish.usage
            record_usage(admission, usage.prompt_tokens, usage.completion_tokens)
            return json_response(body(completion))
        plan = await service.start_stream(prepared, request.receive)
        if plan is None:
            return Response(status_code=CLIENT_GONE)

        async def close() -> None:
            try:
                await plan.close()
            finally:
                if admission is not None:
                    admission.release()

        released = True  # from here on, the stream's end frees the key's slot
        return SSEResponse(encode(tap_usage(plan.events, admission)), close)
    finally:
        if admission is not None and not released:
            admission.release()
