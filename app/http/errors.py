"""Every error leaves in the envelope of the surface that served the request.

Surfaces register a renderer for their path prefixes (`register_envelope`); any other path gets the
OpenAI envelope `{"error": {"message", "type", "param", "code"}}`, the gateway's first dialect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.core.errors import GatewayError
from app.http.keys import note_key_error

log = logging.getLogger("gptomni2api.errors")

Renderer = Callable[[GatewayError], Response]

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_envelope(error: GatewayError) -> dict[str, object]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(error: GatewayError) -> Response:
    """The OpenAI envelope, the default."""
    return Response(
        orjson.dumps(openai_envelope(error)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


_ENVELOPES: list[tuple[str, Renderer]] = []


def register_envelope(prefix: str, render: Renderer) -> None:
    """Errors on paths under `prefix` (the path itself or `prefix/...`) are rendered by `render`."""
    _ENVELOPES[:] = [(p, r) for p, r in _ENVELOPES if p != prefix]
    _ENVELOPES.append((prefix, render))
    _ENVELOPES.sort(key=lambda entry: -len(entry[0]))  # the longest prefix wins


def renderer_for(path: str) -> Renderer:
    for prefix, render in _ENVELOPES:
        if path == prefix or path.startswith(prefix + "/"):
            return render
    return error_response


def _render(request: Request, error: GatewayError) -> Response:
    if not getattr(request.state, "key_error_noted", False):
        request.state.key_error_noted = True
        note_key_error(request, error.code or error.type)
    return renderer_for(request.url.path)(error)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _render(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = {404: "Unknown path.", 405: "Method not allowed."}.get(status, str(exc.detail))
    return _render(
        request,
        GatewayError(
            status,
            message,
            type=_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            headers=dict(exc.headers or {}),
        ),
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return _render(request, GatewayError(400, str(first.get("msg", "Invalid request.")), param=param))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return _render(request, GatewayError(500, "Internal error in the gateway.", type="server_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
