"""The request body, read with a size limit: a 413 before reading a declared oversize body."""

from __future__ import annotations

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
