"""Liveness and readiness, public and cheap (no upstream call, no secret).

`/health`: the process serves. `/ready`: it can answer chats, i.e. some credential is active;
503 otherwise, with the counts by state, for load balancers and `docker compose`."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.credentials.pool import CredentialPool

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready")
async def ready(request: Request) -> Response:
    pool: CredentialPool = request.app.state.pool
    counts = pool.counts()
    is_ready = counts["active"] > 0
    return Response(
        orjson.dumps({"status": "ready" if is_ready else "not_ready", "credentials": counts}),
        status_code=200 if is_ready else 503,
        media_type="application/json",
    )
