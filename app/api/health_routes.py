"""Liveness and readiness, public and cheap (no upstream call, no secret).

`/health`: the process serves. `/ready`: it can answer chats, i.e. some credential is active;
503 otherwise, with the counts by state, for load balancers and `docker compose`. With Redis, it
says `degraded` (still 200) while Redis is away and the process serves on its own view."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.credentials.pool import CredentialPool
from app.http import openapi_docs as docs
from app.state.backend import State

router = APIRouter()


@router.get("/health", openapi_extra=docs.HEALTH)
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready", openapi_extra=docs.READY)
async def ready(request: Request) -> Response:
    pool: CredentialPool = request.app.state.pool
    backend: State = request.app.state.backend
    counts = pool.counts()
    is_ready = counts["active"] > 0
    payload: dict[str, Any] = {"status": readiness(is_ready, backend.degraded), "credentials": counts}
    if backend.name != "embedded":  # the embedded answer stays as it was
        payload["state"] = backend.describe()
    return Response(
        orjson.dumps(payload), status_code=200 if is_ready else 503, media_type="application/json"
    )


def readiness(has_active: bool, degraded: bool) -> str:
    """`ready`; `degraded` while the shared state (Redis) is away but chats are still answered from
    this process's view; `not_ready` without an active credential (503)."""
    if not has_active:
        return "not_ready"
    return "degraded" if degraded else "ready"
