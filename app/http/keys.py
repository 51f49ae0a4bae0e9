"""Named client keys at the HTTP edge: who is calling, whether this request may go, and what it used.

The auth dependency (`app/http/deps.py`) finds the key and leaves it on `request.state`; `admit`
applies its limits once the request's model is known (every surface goes through `respond`), and
the returned admission records the answer's usage and frees its stream slot. The root key
(`API_MASTER_KEY`) and `AUTH_DISABLED` have no key and no limits.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

from fastapi import Request

from app.core.errors import GatewayError
from app.core.events import Event, Failed, Finished
from app.keys.registry import Admission, ClientKey, KeyRefusal, KeyRegistry
from app.observability.context import note_usage

_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


def registry_of(request: Request) -> KeyRegistry | None:
    registry: KeyRegistry | None = getattr(request.app.state, "keys", None)
    return registry


def key_of(request: Request) -> ClientKey | None:
    key: ClientKey | None = getattr(request.state, "client_key", None)
    return key


def refusal_error(refusal: KeyRefusal) -> GatewayError:
    headers = {}
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(refusal.retry_after)))
    return GatewayError(
        refusal.status,
        refusal.message,
        type=_TYPES.get(refusal.status, "invalid_request_error"),
        code=refusal.kind,
        headers=headers,
    )


async def admit(request: Request, model: str) -> Admission | None:
    """The key's admission for one request to `model`; None without a named key. Raises the
    key's refusal (401, 403, 429) as a GatewayError in the caller's dialect."""
    key, registry = key_of(request), registry_of(request)
    if key is None or registry is None:
        return None
    try:
        admission = await registry.admit_shared(key, model)
    except KeyRefusal as refusal:  # counted by the error handler (app/http/errors.py), once
        raise refusal_error(refusal) from None
    request.state.key_admission = admission
    return admission


def note_key_error(request: Request, kind: str) -> None:
    """An error answered to a named key's request, counted once (by its code or type)."""
    key, registry = key_of(request), registry_of(request)
    if key is None or registry is None:
        return
    admission: Admission | None = getattr(request.state, "key_admission", None)
    if admission is not None:
        admission.error(kind)
    else:
        registry.count_error(key, kind)


def record_usage(admission: Admission | None, prompt_tokens: int, completion_tokens: int) -> None:
    note_usage(prompt_tokens, completion_tokens)
    if admission is not None:
        admission.record(prompt_tokens, completion_tokens)


async def tap_usage(events: AsyncIterator[Event], admission: Admission | None) -> AsyncIterator[Event]:
    """The stream's events, unchanged; its usage (or failure) is recorded as it passes."""
    async for event in events:
        if isinstance(event, Finished):
            record_usage(admission, event.usage.prompt_tokens, event.usage.completion_tokens)
        elif isinstance(event, Failed) and admission is not None:
            admission.error(event.error.code or event.error.type)
        yield event
