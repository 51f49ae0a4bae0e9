"""`/metrics` in Prometheus text format, behind the admin key: off (404) while ADMIN_KEY is unset."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api.deps import SettingsDep, keys_match, presented_key
from app.observability.metrics import CONTENT_TYPE, Metrics
from app.protocol.openai import ApiError

router = APIRouter()


def require_admin_key(request: Request, settings: SettingsDep) -> None:
    if settings.admin_key is None:
        # The same 404 as any unknown path: an unconfigured admin surface does not announce itself.
        raise StarletteHTTPException(404)
    presented = presented_key(request)
    if not keys_match(presented, settings.admin_key.get_secret_value()):
        message = (
            "Missing admin key: send it as 'Authorization: Bearer <ADMIN_KEY>'."
            if presented is None
            else "Incorrect admin key provided."
        )
        raise ApiError(401, message, type="authentication_error", code="invalid_admin_key")


@router.get("/metrics")
async def metrics(request: Request, settings: SettingsDep) -> Response:
    require_admin_key(request, settings)
    source: Metrics = request.app.state.metrics
    return Response(source.exposition(), media_type=CONTENT_TYPE)
