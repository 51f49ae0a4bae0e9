"""The request body, read with a size limit (a 413 before reading a declared oversize body), and the
nesting limit for the JSON in it."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.core.errors import GatewayError


async def read_body(request: Request, limit: int) -> bytes:
    too_large = GatewayError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large
        parts.append(piece)
    return b"".join(parts)


# Deeper JSON than any real request needs. The parser takes 1024 levels, but surfaces echo parts of
# a request back (tool schemas) and the encoder refuses more than 254: a limit well below both keeps a
# deep body a 400 instead of a failed response.
MAX_JSON_DEPTH = 100


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (no recursion)."""
    level: list[Any] = [value]
    depth = 0
    while level:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return False
