"""The audit trail: one log line per admin change (POST, PATCH, DELETE under /admin), with the route,
the target ids and the outcome. Ids only: never a cookie, a key or a proxy password.

Routes that create something name its id in `request.state.audit_targets`; otherwise the target is
the id in the path.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.deps import STATE_CHANGING

log = logging.getLogger("gptomni2api.audit")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")  # ids only: anything else in a path cannot forge a log line


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in STATE_CHANGING
            or not (scope["path"] == "/admin" or scope["path"].startswith("/admin/"))
        ):
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            log.info(audit_line(scope, status))


def audit_line(scope: Scope, status: int) -> str:
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    state = scope.get("state") or {}
    targets = state.get("audit_targets")
    if targets is None:
        params = scope.get("path_params") or {}
        targets = [str(v) for v in params.values()]
    outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
    if status in (401, 404) and not state.get("audit_targets"):
        targets = []  # not let in, or nothing there: what the path says is the caller's, not a target
    shown = ",".join(_SAFE.sub("?", str(t))[:64] for t in targets) if targets else "-"
    return f"audit: {scope['method']} {route} target={shown} status={status} outcome={outcome}"
