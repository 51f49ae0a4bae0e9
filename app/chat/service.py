"""One chat completion, end to end: prompt, credential, upstream answer, OpenAI response.

The rule that shapes this module: nothing is written to the client before the upstream has
answered. Until then a failure is retried on the next credential (up to `upstream_max_attempts`)
and, if every try fails, becomes one HTTP error. Once a stream has started, a failure can only end
it with an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from app.chat.prompt import render_prompt
from app.chat.sse import DONE, KEEPALIVE, ChunkEncoder, completion_body, completion_id, error_event
from app.chat.usage import estimate_prompt_tokens, usage
from app.config import Settings
from app.credentials.pool import Credential, CredentialPool
from app.protocol.openai import ApiError, ChatCompletionRequest
from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.gptomni import Answer, GptomniClient

log = logging.getLogger("gptomni2api.chat")
T = TypeVar("T")

# Failures that say nothing about the credential or the moment: another credential would fare no
# better, so they are not retried.
NOT_RETRIED = frozenset({FailureKind.CLIENT_ERROR})


@dataclass
class Prepared:
    model: str  # as the client named it (echoed back, as OpenAI does)
    prompt: str
    prompt_tokens: int
    include_usage: bool


@dataclass
class Opened:
    """An answer that has given its first piece; `close` frees the credential and the upstream, once."""

    pool: CredentialPool
    credential: Credential
    answer: Answer
    first_text: str | None
    pending: asyncio.Future[str | None] | None = None
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()
        self.pool.release(self.credential)
        with anyio.CancelScope(shield=True):
            await self.answer.aclose()


@dataclass
class StreamPlan:
    """What the route sends: an SSE body, and what frees everything however the body ends."""

    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


def failure_error(failure: UpstreamFailure, tried: int, retry_after: float | None = None) -> ApiError:
    """The HTTP error a client gets when the last credential tried failed this way."""
    if failure.kind is FailureKind.AUTH:
        return ApiError(
            503,
            f"No usable gptomni credential: the upstream rejected the {tried} credential(s) tried "
            f"({failure.status}: expired or signed-out cookie). Add a fresh cookie.",
            type="server_error",
            code="no_usable_credential",
        )
    if failure.kind is FailureKind.RATE_LIMITED:
        wait = failure.retry_after if failure.retry_after is not None else retry_after
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else {}
        return ApiError(
            429,
            f"The upstream is rate limiting every credential tried ({failure.message}).",
            type="rate_limit_error",
            code="upstream_rate_limited",
            headers=headers,
        )
    if failure.kind is FailureKind.CLOUDFLARE:
        return ApiError(
            502,
            f"{failure.message}. The upstream's Cloudflare is challenging this server; see the README's "
            "troubleshooting section.",
            type="upstream_error",
            code="cloudflare_challenge",
        )
    return ApiError(502, failure.message, type="upstream_error", code=f"upstream_{failure.kind.value}")


async def wait_for_disconnect(receive: Callable[[], Awaitable[Any]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(receive: Callable[[], Awaitable[Any]], work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (then None).

    uvicorn does not cancel a handler whose client went away, and Starlette only watches for it
    while a streaming body is being sent; before that, this is what stops the upstream call.
    """

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


class ChatService:
    def __init__(self, settings: Settings, pool: CredentialPool, client: GptomniClient) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client

    # --- before any upstream call -------------------------------------------------------------
    def resolve_model(self, name: str) -> str:
        served = self.settings.model_table.get(name)
        if served is None:
            available = ", ".join(sorted(self.settings.model_table))
            raise ApiError(
                404,
                f"The model '{name}' does not exist. Available: {available}.",
                param="model",
                code="model_not_found",
            )
        return served

    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        self.resolve_model(request.model)
        prompt = render_prompt(request.messages, mode=self.settings.prompt_mode)
        return Prepared(
            model=request.model,
            prompt=prompt,
            prompt_tokens=estimate_prompt_tokens(prompt),
            include_usage=request.include_usage,
        )

    # --- credentials and fail-over ------------------------------------------------------------
    def _acquire(self, tried: set[str], last: UpstreamFailure | None) -> Credential | None:
        credential = self.pool.acquire(exclude=tried)
        if credential is not None or last is not None:
            return credential
        if len(self.pool) == 0:
            raise ApiError(
                503,
                "No gptomni credential is configured. Copy your gptomni.ai cookie into "
                "GPTOMNI_CREDENTIALS (see the README) and restart.",
                type="server_error",
                code="no_credentials",
            )
        counts = self.pool.counts()
        recovery = self.pool.next_recovery_in()
        message = (
            f"No usable gptomni credential: {counts['invalid']} invalid (need a new cookie), "
            f"{counts['cooling']} cooling down"
        )
        headers: dict[str, str] = {}
        if recovery is not None:
            message += f" (the next is back in {math.ceil(recovery)} s)"
            headers["Retry-After"] = str(max(1, math.ceil(recovery)))
        raise ApiError(503, message + ".", type="server_error", code="no_usable_credential", headers=headers)

    async def _with_failover(self, attempt: Callable[[Credential], Awaitable[T]]) -> T:
        """Run `attempt` on credentials in turn until one succeeds; fail with the last failure."""
        tried: set[str] = set()
        last: UpstreamFailure | None = None
        for _ in range(self.settings.upstream_max_attempts):
            credential = self._acquire(tried, last)
            if credential is None:
                break
            tried.add(credential.id)
            try:
                return await attempt(credential)
            except UpstreamFailure as failure:
                self.pool.record(credential, failure)
                self.pool.release(credential)
                log.warning("credential %s failed: %s", credential.id, failure.message)
                last = failure
                if failure.kind in NOT_RETRIED:
                    break
            except BaseException:
                self.pool.release(credential)
                raise
        assert last is not None
        raise failure_error(last, len(tried), self.pool.next_recovery_in())

    # --- non-streaming ------------------------------------------------------------------------
    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        async def attempt(credential: Credential) -> str:
            answer = await self.client.open(prepared.prompt, credential.cookie)
            try:
                parts: list[str] = []
                while (text := await answer.next_text()) is not None:
                    parts.append(text)
            finally:
                with anyio.CancelScope(shield=True):
                    await answer.aclose()
            self.pool.record(credential, None)
            self.pool.release(credential)
            return "".join(parts)

        content = await self._with_failover(attempt)
        return completion_body(
            id_=completion_id(),
            created=int(time.time()),
            model=prepared.model,
            content=content,
            finish_reason="stop",
            usage=usage(prepared.prompt_tokens, content),
        )

    # --- streaming ----------------------------------------------------------------------------
    async def open_stream(self, prepared: Prepared) -> Opened:
        """An upstream answer that has given its first piece. Until then, failures fail over."""

        async def attempt(credential: Credential) -> Opened:
            answer = await self.client.open(prepared.prompt, credential.cookie)
            try:
                first_text = await answer.next_text()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await answer.aclose()
                raise
            return Opened(self.pool, credential, answer, first_text)

        return await self._with_failover(attempt)

    async def start_stream(
        self, prepared: Prepared, receive: Callable[[], Awaitable[Any]]
    ) -> StreamPlan | None:
        """Wait up to one keep-alive interval for the upstream's first piece, so that an early
        failure is a real HTTP error. A slower upstream gets the 200 and keep-alive comments
        meanwhile (some transports cannot tell its status before its first byte); a failure after
        that is an SSE error event. None: the client went away first."""
        opening = asyncio.ensure_future(self.open_stream(prepared))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait(
                {opening, watcher},
                timeout=self.settings.keepalive_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            opening.cancel()
            raise
        finally:
            watcher.cancel()  # from here on Starlette watches for the disconnect
        if watcher.done() and not watcher.cancelled() and not opening.done():
            await _cancel(opening)
            return None
        if opening.done():
            opened = opening.result()  # an ApiError here is the HTTP error
            return StreamPlan(self.stream(prepared, opened), opened.close)

        async def close() -> None:
            if not opening.done():
                await _cancel(opening)
            elif not opening.cancelled() and opening.exception() is None:
                await opening.result().close()

        return StreamPlan(self._stream_once_open(prepared, opening), close)

    async def _stream_once_open(
        self, prepared: Prepared, opening: asyncio.Future[Opened]
    ) -> AsyncIterator[bytes]:
        while not opening.done():
            done, _ = await asyncio.wait({opening}, timeout=self.settings.keepalive_interval)
            if not done:
                yield KEEPALIVE
        try:
            opened = opening.result()
        except ApiError as error:
            yield error_event(error.envelope())
            return
        async for piece in self.stream(prepared, opened):
            yield piece

    async def stream(self, prepared: Prepared, opened: Opened) -> AsyncIterator[bytes]:
        """The SSE body for an opened answer. Closing it (client gone) closes the upstream."""
        encoder = ChunkEncoder(prepared.model, include_usage=prepared.include_usage)
        credential, answer = opened.credential, opened.answer
        keepalive = self.settings.keepalive_interval
        completion_chars: list[str] = []
        try:
            yield encoder.role()
            text = opened.first_text
            while text is not None:
                if prepared.include_usage:
                    completion_chars.append(text)
                yield encoder.content(text)
                pending = opened.pending = asyncio.ensure_future(answer.next_text())
                while not pending.done():
                    done, _ = await asyncio.wait({pending}, timeout=keepalive)
                    if not done:
                        yield KEEPALIVE
                opened.pending = None
                try:
                    text = pending.result()
                except UpstreamFailure as failure:
                    self.pool.record(credential, failure)
                    log.warning("stream from credential %s failed: %s", credential.id, failure.message)
                    yield error_event(failure_error(failure, 1).envelope())
                    return
            self.pool.record(credential, None)
            yield encoder.finish("stop")
            if prepared.include_usage:
                yield encoder.usage(usage(prepared.prompt_tokens, "".join(completion_chars)))
            yield DONE
        finally:
            await opened.close()


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
