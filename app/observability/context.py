"""Per-request facts: a mutable `RequestInfo` in a ContextVar, set by the access middleware.

It is mutable on purpose: a streaming body runs in another task with a copy of the context, so
the copy still points at the same object and what the body notes reaches the middleware. Every
`note_*` function is a no-op outside a request (unit tests, start-up code).
"""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass
class RequestInfo:
    request_id: str
    method: str
    started_at: float = field(default_factory=time.monotonic)
    route: str | None = None  # the route template, e.g. /v1/chat/completions; None when unmatched
    status: int | None = None
    model: str | None = None
    credential_id: str | None = None
    first_byte_at: float | None = None
    upstream_outcomes: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    streaming: bool = False
    key_name: str | None = None  # the named client key used, never the key itself
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def upstream_outcome(self) -> str | None:
        """The last upstream call's outcome (after fail-over, the one that decided the answer)."""
        return self.upstream_outcomes[-1] if self.upstream_outcomes else None


_current: ContextVar[RequestInfo | None] = ContextVar("gptomni2api_request", default=None)


def current_request() -> RequestInfo | None:
    return _current.get()


def bind_request(info: RequestInfo) -> Token[RequestInfo | None]:
    return _current.set(info)


def unbind_request(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)


def request_id_from(header: str | None) -> str:
    """The client's `X-Request-ID` when it is safe to log and echo, else a fresh one."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def note_model(name: str) -> None:
    """The served model the request resolved to (bounded: only names in the model table)."""
    if (info := _current.get()) is not None:
        info.model = name


def note_key(name: str) -> None:
    """The name of the client key the request was made with."""
    if (info := _current.get()) is not None:
        info.key_name = name


def note_usage(prompt_tokens: int, completion_tokens: int) -> None:
    """The answer's (estimated) token counts."""
    if (info := _current.get()) is not None:
        info.prompt_tokens, info.completion_tokens = prompt_tokens, completion_tokens


def note_credential(credential_id: str) -> None:
    """The short id of the credential tried; after fail-over the last one wins."""
    if (info := _current.get()) is not None:
        info.credential_id = credential_id


def note_first_byte() -> None:
    """The upstream's first piece of answer arrived; only the first call counts."""
    if (info := _current.get()) is not None and info.first_byte_at is None:
        info.first_byte_at = time.monotonic()


def note_upstream_outcome(kind: str) -> None:
    """One upstream call ended: `ok`, or a failure kind (`FailureKind.value`). Once per call."""
    if (info := _current.get()) is not None:
        info.upstream_outcomes.append(kind)
