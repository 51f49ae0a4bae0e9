"""`/metrics` in Prometheus text format, behind the admin key: off (404) while ADMIN_KEY is unset."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.http.deps import AdminKey
from app.observability.metrics import CONTENT_TYPE, Metrics

router = APIRouter()


@router.get("/metrics", dependencies=[AdminKey])
async def metrics(request: Request) -> Response:
    source: Metrics = request.app.state.metrics
    return Response(source.exposition(), media_type=CONTENT_TYPE)
