"""The console's HTTP side: its page and assets at `/admin/`, the sign-in that trades the admin key
for a session cookie, the last hour of traffic, and "Try it" (one chat message, streamed back).

Everything else the page shows or changes goes through the admin API (`/admin/credentials`,
`/admin/keys`), which takes the session as it takes the key (`require_admin_key`). Like the rest of
`/admin`, all of it is 404 without ADMIN_KEY.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

from app.api.admin_routes import load_object
from app.config import Settings
from app.console.session import (
    COOKIE_NAME,
    ConsoleSession,
    cleared_cookie,
    csrf_token,
    is_https,
    issue_session,
    session_cookie,
)
from app.core.errors import GatewayError, invalid_request
from app.http.body import read_body
from app.http.deps import AdminKey, ChatServiceDep, SettingsDep, keys_match, live_session
from app.http.respond import json_response
from app.observability.traffic import TrafficBuffer
from app.surfaces.openai_chat.routes import answer_chat
from app.surfaces.openai_chat.wire import parse_chat_request

STATIC = Path(__file__).parent / "static"
SIGN_IN_LIMIT = 4096
TRY_LIMIT = 64 * 1024

# No inline script or style, nothing from another origin, never in a frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

router = APIRouter(prefix="/admin")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path) -> dict[str, Asset]:
    """Every file of the console, read once: the page is small and never changes while running."""
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
                media_type += "; charset=utf-8"
            assets[path.name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


ASSETS = load_assets(STATIC)


def console_on(settings: Settings) -> str:
    """ADMIN_KEY, or the 404 that keeps an unconfigured admin surface silent."""
    if settings.admin_key is None:
        raise StarletteHTTPException(404)
    return settings.admin_key.get_secret_value()


def asset_response(request: Request, name: str, cache_control: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise StarletteHTTPException(404)
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("")
async def console_redirect(settings: SettingsDep) -> Response:
    console_on(settings)
    return RedirectResponse("/admin/", status_code=307)


@router.get("/")
async def console_page(request: Request, settings: SettingsDep) -> Response:
    console_on(settings)
    return asset_response(request, "index.html", "no-store")


@router.get("/static/{name}")
async def console_asset(name: str, request: Request, settings: SettingsDep) -> Response:
    console_on(settings)
    return asset_response(request, name, "no-cache")  # revalidated by ETag: a new version shows at once


def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def session_view(admin_key: str, session: ConsoleSession, settings: Settings) -> dict[str, Any]:
    return {
        "signed_in": True,
        "csrf_token": csrf_token(admin_key, session),
        "expires_at": session.expires_at,
        "models": list(settings.served_models),
        # Demo mode (`python main.py --demo`) answers from the bundled emulator: the page says so.
        "demo": settings.demo,
    }


@router.post("/session")
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    """`{"key": "<ADMIN_KEY>"}` -> the session cookie, and the CSRF token in the body."""
    admin_key = console_on(settings)
    data = load_object(await read_body(request, SIGN_IN_LIMIT), 'Send {"key": "<ADMIN_KEY>"}.')
    presented = data.get("key")
    if not isinstance(presented, str) or not presented:
        raise invalid_request('Send {"key": "<ADMIN_KEY>"}.', param="key")
    if not keys_match(presented, admin_key):
        raise GatewayError(401, "Incorrect admin key provided.", code="invalid_admin_key")
    ttl = settings.console_session_ttl
    token, session = issue_session(admin_key, time.time(), ttl)
    secure = is_https(request.url.scheme, request.headers.get("x-forwarded-proto"))
    response = json_response(session_view(admin_key, session, settings))
    response.headers["Set-Cookie"] = session_cookie(token, max(1, int(ttl)), secure=secure)
    return no_store(response)


@router.get("/session")
async def current_session(request: Request, settings: SettingsDep) -> Response:
    """Whether this browser is signed in, and then the CSRF token again (the page keeps it in memory
    only, so a reload asks here). Not signed in is a 200 too: the page asks this on every load, and
    the answer holds nothing until the cookie is good."""
    admin_key = console_on(settings)
    session = await live_session(request, settings, request.cookies.get(COOKIE_NAME))
    if session is None:
        return no_store(json_response({"signed_in": False}))
    return no_store(json_response(session_view(admin_key, session, settings)))


@router.delete("/session", dependencies=[AdminKey])
async def sign_out(request: Request) -> Response:
    """Sign out: the cookie is cleared, and the session refused from now on by every replica (a copy
    of the cookie included) until it would have expired."""
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    if session is not None:
        await request.app.state.backend.revoke_session(session.id, session.expires_at)
    secure = is_https(request.url.scheme, request.headers.get("x-forwarded-proto"))
    response = json_response({"signed_out": True})
    response.headers["Set-Cookie"] = cleared_cookie(secure=secure)
    return no_store(response)


@router.get("/traffic", dependencies=[AdminKey])
async def traffic(request: Request) -> Response:
    buffer: TrafficBuffer = request.app.state.traffic
    return no_store(json_response(buffer.snapshot()))


TRY_USAGE = 'Send {"message": "...", "model"?: "..."}.'


def try_request_body(data: dict[str, Any], default_model: str) -> bytes:
    """The Chat Completions request "Try it" stands for: one user message, streamed."""
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise invalid_request(TRY_USAGE, param="message")
    model = data.get("model") or default_model
    if not isinstance(model, str):
        raise invalid_request(TRY_USAGE, param="model")
    request = {
        "model": model,
        "messages": [{"role": "user", "content": message}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return orjson.dumps(request)


@router.post("/try", dependencies=[AdminKey])
async def try_it(request: Request, service: ChatServiceDep, settings: SettingsDep) -> Response:
    """One chat message through the pool, answered as a Chat Completions stream."""
    data = load_object(await read_body(request, TRY_LIMIT), TRY_USAGE)
    return await answer_chat(
        request, service, parse_chat_request(try_request_body(data, settings.served_models[0]))
    )
