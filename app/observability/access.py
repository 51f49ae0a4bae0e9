"""The access middleware: a request id in and out, one structured log line and the metrics per request.

A pure ASGI middleware on purpose: Starlette's BaseHTTPMiddleware runs the app in another task and
pipes the body through a queue, which delays streamed pieces and hides the client's disconnect.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import RequestInfo, bind_request, request_id_from, unbind_request
from app.observability.metrics import Metrics
from app.observability.traffic import TrafficBuffer

log = logging.getLogger("gptomni2api.access")

REQUEST_ID_HEADER = b"x-request-id"
# Probed every few seconds by Docker and Nginx, and by Prometheus: at info they would drown the log.
QUIET_ROUTES = frozenset({"/health", "/metrics"})


def route_template(scope: Scope) -> str | None:
    """The matched route's template (`/v1/models/{model_id:path}`), never the raw path: bounded."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def counts_as_traffic(route: str | None) -> bool:
    """The API's requests (and the console's "Try it"), for the console's charts; not the console's
    own polling, the health probes, the docs, or paths that match no route."""
    return route is not None and (route.startswith("/v1/") or route == "/admin/try")


def with_request_id(headers: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != REQUEST_ID_HEADER]
    return [*kept, (REQUEST_ID_HEADER, request_id.encode("ascii"))]


def carries_content(body: bytes) -> bool:
    """False for an SSE comment (`: keep-alive`): it says the gateway waits, not that an answer came."""
    return bool(body) and not body.startswith(b":")


def _logfmt_value(value: Any) -> str:
    text = "-" if value is None else str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        # One request, one line: a control character must not start a forged one.
        escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
        return f'"{escaped}"'
    return text


def time_to_first_token(info: RequestInfo) -> float | None:
    """Seconds to the first piece of a chat answer (a request that resolved a model); else None."""
    if info.model is None or info.first_byte_at is None:
        return None
    return max(0.0, info.first_byte_at - info.started_at)


def _ms(start: float, end: float | None) -> int | None:
    return None if end is None else round((end - start) * 1000)


def access_fields(info: RequestInfo, finished_at: float, client: str | None) -> dict[str, Any]:
    return {
        "request_id": info.request_id,
        "method": info.method,
        "route": info.route or "unmatched",
        "status": info.status,
        "model": info.model,
        "credential": info.credential_id,
        "upstream": info.upstream_outcome,
        "ttfb_ms": _ms(info.started_at, info.first_byte_at),
        "duration_ms": _ms(info.started_at, finished_at),
        "bytes": info.bytes_sent,
        "stream": info.streaming,
        "key": info.key_name,
        "client": client,
    }


def format_access_line(fields: dict[str, Any]) -> str:
    """`key=value` pairs (logfmt): one line a person reads and a log pipeline parses."""
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, traffic: TrafficBuffer | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        info = RequestInfo(request_id=request_id_from(headers.get("x-request-id")), method=scope["method"])
        token = bind_request(info)

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                raw = list(message.get("headers", []))
                message["headers"] = with_request_id(raw, info.request_id)
                content_type = Headers(raw=raw).get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    info.streaming = True
                    self.metrics.stream_started()
                    if self.traffic is not None:
                        self.traffic.stream_started()
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                info.bytes_sent += len(body)
                if info.first_byte_at is None and carries_content(body):
                    info.first_byte_at = time.monotonic()
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        except BaseException:
            if info.status is None:
                info.status = 500  # what the outer error handler will answer
            raise
        finally:
            finished_at = time.monotonic()
            info.route = route_template(scope)
            if info.streaming:
                self.metrics.stream_ended()
                if self.traffic is not None:
                    self.traffic.stream_ended()
            self.metrics.observe(info, finished_at)
            if self.traffic is not None and counts_as_traffic(info.route):
                self.traffic.record(info.status or 500, time_to_first_token(info))
            client = scope.get("client")
            line = format_access_line(access_fields(info, finished_at, client[0] if client else None))
            log.log(logging.DEBUG if info.route in QUIET_ROUTES else logging.INFO, line)
            unbind_request(token)
