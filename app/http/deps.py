"""Typed dependencies: the key check and the long-lived objects built in the lifespan."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.console.session import COOKIE_NAME, CSRF_HEADER, ConsoleSession, csrf_valid, verify_session
from app.core.errors import GatewayError
from app.core.service import ChatService
from app.http.keys import refusal_error, registry_of
from app.keys.registry import KeyRefusal
from app.observability.context import note_key


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, three thread hops per request for what is a few attribute reads.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat_service
    return service


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def keys_match(presented: str | None, expected: str) -> bool:
    # compare_digest on bytes: constant time whatever the input, also for non-ASCII keys.
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def key_error(presented: str | None, *, what: str, placeholder: str, code: str) -> GatewayError:
    """The 401 for a request without the key it needs, saying whether it was missing or wrong."""
    message = (
        f"Missing {what}: send it as 'Authorization: Bearer {placeholder}'."
        if presented is None
        else f"Incorrect {what} provided."
    )
    return GatewayError(401, message, type="invalid_request_error", code=code)


def check_key(request: Request, expected: SecretStr, *, what: str, placeholder: str, code: str) -> None:
    """A 401 unless the request presents `expected`, saying whether the key was missing or wrong."""
    presented = presented_key(request)
    if not keys_match(presented, expected.get_secret_value()):
        raise key_error(presented, what=what, placeholder=placeholder, code=code)


async def require_api_key(request: Request) -> None:
    """The root key (`API_MASTER_KEY`), or a named client key (left on `request.state` for its
    limits and usage); a 401 otherwise. A revoked, disabled or expired key is refused here, so it
    opens no route at all."""
    settings: Settings = request.app.state.settings
    if settings.auth_disabled or settings.api_master_key is None:
        return
    presented = presented_key(request)
    if keys_match(presented, settings.api_master_key.get_secret_value()):
        return
    registry = registry_of(request)
    key = registry.authenticate(presented) if registry is not None and presented else None
    if key is None:
        raise key_error(presented, what="API key", placeholder="<key>", code="invalid_api_key")
    request.state.client_key = key
    note_key(key.name)
    assert registry is not None
    try:
        registry.check_active(key)
    except KeyRefusal as refusal:  # counted by the error handler, as every error answered to a key
        raise refusal_error(refusal) from None


STATE_CHANGING = frozenset({"POST", "PATCH", "PUT", "DELETE"})


async def require_admin_key(request: Request) -> None:
    """The admin surface (`/admin`, `/metrics`): only ADMIN_KEY opens it, never the client key.

    The key comes as a header, or was exchanged for a console session (a signed cookie, see
    `app/console/session.py`); with the session, a change also needs its CSRF token. A key header
    wins over a cookie, so a script's call behaves as it always did."""
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        # The same 404 as any unknown path: an unconfigured admin surface does not announce itself.
        raise StarletteHTTPException(404)
    cookie = request.cookies.get(COOKIE_NAME)
    if presented_key(request) is None and cookie is not None:
        await check_console_session(request, settings, cookie)
        return
    check_key(
        request, settings.admin_key, what="admin key", placeholder="<ADMIN_KEY>", code="invalid_admin_key"
    )


async def live_session(request: Request, settings: Settings, cookie: str | None) -> ConsoleSession | None:
    """The console session the cookie holds, unless it is malformed, forged, expired or signed out."""
    assert settings.admin_key is not None
    session = verify_session(
        settings.admin_key.get_secret_value(), cookie, time.time(), settings.console_session_ttl
    )
    if session is not None and await request.app.state.backend.session_revoked(session.id):
        return None
    return session


async def check_console_session(request: Request, settings: Settings, cookie: str) -> None:
    """A 401 unless the cookie holds a live console session; a 403 for a change without its CSRF token."""
    assert settings.admin_key is not None
    admin_key = settings.admin_key.get_secret_value()
    session = await live_session(request, settings, cookie)
    if session is None:
        raise GatewayError(
            401,
            "The console session has ended or is not valid: sign in again with the admin key.",
            type="invalid_request_error",
            code="invalid_console_session",
        )
    if request.method in STATE_CHANGING and not csrf_valid(
        admin_key, session, request.headers.get(CSRF_HEADER)
    ):
        raise GatewayError(
            403,
            "Missing or wrong X-CSRF-Token: a change made with the console session must carry the "
            "token the sign-in returned.",
            type="permission_error",
            code="invalid_csrf_token",
        )
    request.state.console_session = session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
ApiKey = Depends(require_api_key)
AdminKey = Depends(require_admin_key)
