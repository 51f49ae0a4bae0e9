"""Liveness: `/health` answers while the process serves. Public and cheap: no upstream call."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
