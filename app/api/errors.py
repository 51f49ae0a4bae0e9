"""Every error leaves as the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.protocol.openai import ApiError

log = logging.getLogger("gptomni2api.errors")

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(error.envelope()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = {404: "Unknown path.", 405: "Method not allowed."}.get(status, str(exc.detail))
    return error_response(
        ApiError(
            status,
            message,
            type=_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            headers=dict(exc.headers or {}),
        )
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(ApiError(400, str(first.get("msg", "Invalid request.")), param=param))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return error_response(ApiError(500, "Internal error in the gateway.", type="server_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
