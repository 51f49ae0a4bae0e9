"""`/docs`: the API reference, Swagger UI over `/openapi.json`, served whole from here.

Its assets come from the pinned `fastapi-offline` package (Swagger UI 5) and are served under
`/docs/assets/`, so the page asks no other host for anything and works on an offline server; its
Content-Security-Policy holds the browser to that. The admin API stays out of `/openapi.json`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse, Response

from app.core.errors import GatewayError

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
ASSET_PATH = "/docs/assets/"
OPENAPI_URL = "/openapi.json"

DESCRIPTION = (
    "The gateway's client API: OpenAI Chat Completions, Anthropic Messages, OpenAI Responses and "
    "legacy Completions over the gptomni.ai web chat. Authorize with your `API_MASTER_KEY` or a "
    "client key (in demo mode, `python main.py --demo`: `sk-demo-gptomni-2api`). With "
    '`"stream": true` an answer comes as server-sent events, shown here once it has ended. '
    "The admin API (`/admin`) is not listed: see the README."
)
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "Anthropic style"},
}
# The groups on the page, in this order (app/http/openapi_docs.py puts each route in one).
TAGS = [
    {"name": "OpenAI Chat Completions", "description": "`/v1/chat/completions`: the OpenAI SDK, most tools."},
    {"name": "Anthropic Messages", "description": "`/v1/messages`: the Anthropic SDK, Claude Code."},
    {"name": "OpenAI Responses", "description": "`/v1/responses`: Codex-style clients; stored, continuable."},
    {"name": "Legacy Completions", "description": "`/v1/completions`: a prompt in, text out."},
    {"name": "Models", "description": "What to put in `model` (aliases are accepted too)."},
    {"name": "Health", "description": "For load balancers; no key needed."},
]
SWAGGER_PARAMETERS = {
    "validatorUrl": None,  # the default sends the spec to an online validator
    "displayRequestDuration": True,
    "defaultModelsExpandDepth": -1,
}

router = APIRouter(include_in_schema=False)


@cache
def docs_page() -> tuple[bytes, str]:
    """The page's HTML, and the Content-Security-Policy that allows its one inline script and
    nothing from any other origin."""
    page = get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title="gptomni-2api API reference",
        swagger_js_url=ASSET_PATH + "swagger-ui-bundle.js",
        swagger_css_url=ASSET_PATH + "swagger-ui.css",
        swagger_favicon_url=ASSET_PATH + "favicon.png",
        swagger_ui_parameters=SWAGGER_PARAMETERS,
    )
    html = bytes(page.body)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", html, re.DOTALL)
    )
    policy = (
        "default-src 'none'; "
        f"script-src 'self' {hashes}; "
        "style-src 'self' 'unsafe-inline'; "  # Swagger UI sets style attributes
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return html, policy


@router.get("/docs")
async def docs() -> Response:
    html, policy = docs_page()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": policy,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(ASSET_PATH + "{name}")
async def docs_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise GatewayError(404, f"No such file: {ASSET_PATH}{name}", code="not_found")
    return FileResponse(
        ASSETS_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


def with_security(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema FastAPI made, plus the description and how to authorize (the key check is a plain
    dependency, which FastAPI cannot describe). Idempotent."""
    schema.setdefault("info", {})["description"] = DESCRIPTION
    schema["tags"] = TAGS
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{"bearer": []}, {"x-api-key": []}]
    return schema


def install(app: FastAPI) -> None:
    """`/docs` and its assets, and the authorization in `/openapi.json`."""
    app.include_router(router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return with_security(generate())

    app.openapi = openapi  # type: ignore[method-assign]
