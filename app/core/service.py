"""One answer, end to end: prompt, credential, upstream answer, neutral events.

The rule that shapes this module: nothing is written to the client before the upstream has
answered. Until then a failure is retried on the next credential (up to `upstream_max_attempts`)
and, if every try fails, becomes one `GatewayError`. Once a stream has started, a failure can only
end it with a `Failed` event. The surfaces turn what comes out of here into their dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from app.config import Settings
from app.core.draining import Draining, shutting_down
from app.core.errors import GatewayError
from app.core.events import Completion, Event, Failed, Finished, KeepAlive, Started, TextDelta
from app.core.job import Job
from app.core.prompt import PromptTooLong, render_prompt
from app.core.shaping import AnswerShaper, CollectedAnswer
from app.core.tools import (
    render_assistant_tool_calls,
    render_response_format,
    render_tool_result,
    render_tools_instructions,
)
from app.core.usage import estimate_prompt_tokens, usage
from app.credentials.pool import Credential, CredentialPool, CredentialState, PoolSaturated, poison_class
from app.observability.context import note_credential, note_first_byte, note_model, note_upstream_outcome
from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.gptomni import Answer, GptomniClient, SessionState
from app.upstream.transport import TransportBusy

log = logging.getLogger("gptomni2api.chat")
T = TypeVar("T")

# Failures that say nothing about the credential or the moment: another credential would fare no
# better, so they are not retried.
NOT_RETRIED = frozenset({FailureKind.CLIENT_ERROR})
PROBE_PROMPT = "Reply with the single word OK."


@dataclass
class Prepared:
    model: str  # as the client named it (echoed back)
    prompt: str
    prompt_tokens: int
    tool_names: set[str] | None = None  # None: tool calls are not parsed out of the answer
    stops: list[str] | None = None
    max_tokens: int | None = None
    json_mode: bool = False

    def shaper(self) -> AnswerShaper:
        return AnswerShaper(
            tool_names=self.tool_names, stops=self.stops, max_tokens=self.max_tokens, json_mode=self.json_mode
        )


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
    """What the route streams: the answer's events, and what frees everything however the body ends."""

    events: AsyncIterator[Event]
    close: Callable[[], Awaitable[None]]


def failure_error(
    failure: UpstreamFailure, tried: int, retry_after: float | None = None, *, poisoned: bool = False
) -> GatewayError:
    """The HTTP error a client gets when the last credential tried failed this way."""
    if poisoned:
        hint = (
            f" The same failure came from {tried} credentials: it follows this request, so fail-over "
            "stopped and no credential was blamed beyond the first."
        )
        if failure.kind is FailureKind.AUTH:  # not the cookies: the upstream refuses this request
            return GatewayError(
                502, failure.message + "." + hint, type="upstream_error", code="upstream_rejected"
            )
        error = failure_error(failure, tried, retry_after)
        error.message = error.message.rstrip(".") + "." + hint
        return error
    if failure.kind is FailureKind.AUTH:
        return GatewayError(
            503,
            f"No usable gptomni credential: the upstream rejected the {tried} credential(s) tried "
            f"({failure.status}: expired or signed-out cookie). Add a fresh cookie.",
            type="server_error",
            code="no_usable_credential",
        )
    if failure.kind is FailureKind.RATE_LIMITED:
        wait = failure.retry_after if failure.retry_after is not None else retry_after
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else {}
        return GatewayError(
            429,
            f"The upstream is rate limiting every credential tried ({failure.message}).",
            type="rate_limit_error",
            code="upstream_rate_limited",
            headers=headers,
        )
    if failure.kind is FailureKind.CLOUDFLARE_BLOCKED:
        return GatewayError(
            502,
            f"{failure.message}. The upstream's Cloudflare firewall blocked the request, which is often "
            "a rule matching its content; it says nothing about the cookie.",
            type="upstream_error",
            code="cloudflare_blocked",
        )
    if failure.kind is FailureKind.CLOUDFLARE:
        return GatewayError(
            502,
            f"{failure.message}. The upstream's Cloudflare is challenging this server; see the README's "
            "troubleshooting section.",
            type="upstream_error",
            code="cloudflare_challenge",
        )
    return GatewayError(502, failure.message, type="upstream_error", code=f"upstream_{failure.kind.value}")


async def wait_for_disconnect(receive: Callable[[], Awaitable[Any]]) -> None:
    """Returns once `receive` reports that the client went away."""
    while (await receive())["type"] != "http.disconnect":
        pass


class ChatService:
    def __init__(self, settings: Settings, pool: CredentialPool, client: GptomniClient) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.draining = Draining()
        self._background: set[asyncio.Future[Any]] = set()

    # --- before any upstream call -------------------------------------------------------------
    def resolve_model(self, name: str) -> str:
        served = self.settings.resolve_model(name)
        if served is None:
            available = ", ".join(sorted(self.settings.model_table))
            raise GatewayError(
                404,
                f"The model '{name}' does not exist. Available: {available}.",
                param="model",
                code="model_not_found",
            )
        return served

    def prepare(self, job: Job, *, fit: bool = True) -> Prepared:
        """The prompt and answer shaping for a job; a GatewayError(400) if the prompt cannot fit.

        `fit=False` renders the whole conversation whatever MAX_PROMPT_CHARS says (to count it)."""
        note_model(self.resolve_model(job.model))
        names = {tool.name for tool in job.tools}
        tool_names = names if names and job.tool_choice.mode != "none" else None
        instructions = [render_response_format(job.output)]
        if tool_names is not None:
            instructions.insert(0, render_tools_instructions(job.tools, job.tool_choice))
        try:
            prompt = render_prompt(
                job.turns,
                mode=self.settings.prompt_mode,
                instructions="\n\n".join(i for i in instructions if i),
                render_tool_calls=render_assistant_tool_calls,
                render_tool_result=render_tool_result,
                max_chars=self.settings.max_prompt_chars if fit else None,
            )
        except PromptTooLong as exc:
            raise GatewayError(
                400,
                f"The conversation does not fit MAX_PROMPT_CHARS={exc.limit}: the system text, the tools "
                f"and the last user message alone need {exc.length} characters.",
                code="context_length_exceeded",
            ) from None
        return Prepared(
            model=job.model,
            prompt=prompt,
            prompt_tokens=estimate_prompt_tokens(prompt),
            tool_names=tool_names,
            stops=[s for s in job.stops if s] or None,
            max_tokens=job.max_tokens,
            json_mode=job.output.kind != "text",
        )

    # --- credentials and fail-over ------------------------------------------------------------
    async def _acquire(self, tried: set[str], last: UpstreamFailure | None) -> Credential | None:
        try:
            credential = await self.pool.acquire_wait(tried, self.settings.rate_limit_wait)
        except PoolSaturated as exc:
            retry_after = max(1, math.ceil(exc.retry_after))
            raise GatewayError(
                429,
                f"Every gptomni credential is at its rate limit (CREDENTIAL_RATE_LIMIT="
                f"{self.settings.credential_rate_limit}, MAX_STREAMS_PER_CREDENTIAL="
                f"{self.settings.max_streams_per_credential}). Retry in {retry_after} s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after)},
            ) from None
        if credential is not None or last is not None:
            return credential
        if len(self.pool) == 0:
            raise GatewayError(
                503,
                "No gptomni credential is configured. Either add your gptomni.ai cookie: set "
                "GPTOMNI_CREDENTIALS (see the README) and restart, or add it without a restart through "
                "the admin API (POST /admin/credentials) or the console at /admin/; or try the gateway "
                "first with canned answers: restart it with `python main.py --demo`.",
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
        raise GatewayError(
            503, message + ".", type="server_error", code="no_usable_credential", headers=headers
        )

    async def _with_failover(self, attempt: Callable[[Credential], Awaitable[T]]) -> T:
        """Run `attempt` on credentials in turn until one succeeds; fail with the last failure.

        A failure that may follow the request (`poison_class`: a 5xx, cut-off, time-out, 401 or
        non-challenge 403) is charged to its credential only once the next try does not repeat it.
        When it does, the failure follows the request: fail-over ends there and no credential is
        charged, so one bad prompt, however often sent, puts no credential to rest."""
        tried: set[str] = set()
        seen: set[str] = set()
        last: UpstreamFailure | None = None
        deferred: tuple[Credential, UpstreamFailure] | None = None
        try:
            for _ in range(self.settings.upstream_max_attempts):
                credential = await self._acquire(tried, last)
                if credential is None:
                    break
                tried.add(credential.id)
                note_credential(credential.id)
                try:
                    result = await attempt(credential)
                except TransportBusy as busy:
                    self.pool.release(credential)  # not the credential's fault: nothing recorded
                    raise GatewayError(
                        503,
                        f"The gateway is at capacity: {busy}.",
                        type="server_error",
                        code="transport_saturated",
                        headers={"Retry-After": "1"},
                    ) from None
                except UpstreamFailure as failure:
                    self.pool.release(credential)
                    note_upstream_outcome(failure.kind.value)
                    last = failure
                    kind = poison_class(failure)
                    if kind is not None and kind in seen:
                        deferred = None  # it follows the request: nobody is charged
                        log.warning(
                            "credential %s failed as the one before it (%s): the failure follows the "
                            "request, so it is charged to no credential and fail-over stops",
                            credential.id,
                            failure.message,
                        )
                        raise failure_error(
                            failure, len(tried), self.pool.next_recovery_in(), poisoned=True
                        ) from None
                    if deferred is not None:
                        earlier, deferred = deferred, None
                        await self._charge(*earlier)
                    if kind is not None:
                        seen.add(kind)
                        deferred = (credential, failure)
                    else:
                        last = await self._charge(credential, failure)
                    log.warning("credential %s failed: %s", credential.id, failure.message)
                    if failure.kind in NOT_RETRIED:
                        break
                except BaseException:
                    self.pool.release(credential)
                    raise
                else:
                    if deferred is not None:
                        # The next credential answered: the failure was the first one's, charged now
                        # (before the next request can pick that credential again). If the client
                        # goes away during a session check, the charge still completes, and the
                        # answer nobody will read is closed, so its credential's slot is freed.
                        charge = self._spawn(self._charge(*deferred))
                        try:
                            await asyncio.shield(charge)
                        except asyncio.CancelledError:
                            if isinstance(result, Opened):
                                await result.close()
                            raise
                    return result
        except asyncio.CancelledError:
            raise  # the next try's outcome is unknown: nobody is charged
        except BaseException:
            if deferred is not None:
                self._spawn(self._charge(*deferred))  # e.g. a 429 from the pool: it stands
            raise
        if deferred is not None:  # no credential was left to try: it was the credential's
            charged = await self._charge(*deferred)
            if last is deferred[1]:
                last = charged
        assert last is not None
        raise failure_error(last, len(tried), self.pool.next_recovery_in())

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run `work` on its own (a deferred charge); kept referenced until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def egress(self, credential: Credential) -> dict[str, Any]:
        """The proxy and User-Agent a credential's requests go out with."""
        default = self.settings.upstream_proxy
        proxy = credential.proxy or (default.get_secret_value() if default is not None else None)
        return {"proxy": proxy, "user_agent": credential.user_agent}

    async def _charge(self, credential: Credential, failure: UpstreamFailure) -> UpstreamFailure:
        """Record a failure against the credential; returns it as recorded. A rejection (401, 403, a
        redirect to sign-in) condemns it only once the site's session endpoint confirms the session
        is gone; otherwise it is recorded (and answered) as the server error it then is."""
        if failure.kind is FailureKind.AUTH:
            failure = await self._confirmed(credential, failure)
        self.pool.record(credential, failure)
        return failure

    async def _open(self, prompt: str, credential: Credential) -> Answer:
        """The upstream's answer on `credential`, with its egress; the answer's Set-Cookie values
        (a failed answer's too: only the answer's head carries them) renew the credential."""
        try:
            answer = await self.client.open(prompt, credential.cookie, **self.egress(credential))
        except UpstreamFailure as failure:
            self.pool.renew(credential, failure.set_cookies)
            raise
        self.pool.renew(credential, answer.set_cookies)
        return answer

    async def _session(self, credential: Credential) -> SessionState:
        """The site's word on `credential`'s session, with its egress; Set-Cookie values as `_open`."""
        try:
            session = await self.client.session(credential.cookie, **self.egress(credential))
        except UpstreamFailure as failure:
            self.pool.renew(credential, failure.set_cookies)
            raise
        self.pool.renew(credential, session.set_cookies)
        return session

    async def _confirmed(self, credential: Credential, failure: UpstreamFailure) -> UpstreamFailure:
        """`failure` when the session is gone; else the same failure counted like a 5xx."""
        try:
            session = await self._session(credential)
        except UpstreamFailure as check:
            why = f"the session check failed too ({check.message})"
        except TransportBusy:
            why = "the session could not be checked (the transport is at capacity)"
        else:
            if not session.alive:
                return failure
            why = "the session is alive"
        return UpstreamFailure(
            FailureKind.SERVER_ERROR,
            f"{failure.detail}, but {why}: counted as a failure, not an expired cookie",
            status=failure.status,
        )

    async def check_session(self, credential: Credential) -> bool | None:
        """Ask the site whether the credential's session lives (renewing its cookie if it does):
        False marks it invalid; None when the check got no answer (nothing changes)."""
        try:
            session = await self._session(credential)
        except UpstreamFailure as failure:
            log.info("session check of credential %s got no answer: %s", credential.id, failure.message)
            return None
        except TransportBusy:
            return None  # the next round tries again
        if not session.alive:
            self.pool.record(
                credential, UpstreamFailure(FailureKind.AUTH, "the session has ended (session check)")
            )
            log.warning("credential %s: its session has ended; it needs a fresh cookie", credential.id)
        return session.alive

    async def check_sessions(self) -> None:
        for credential in self.pool.credentials:
            if credential.state is not CredentialState.INVALID and self.pool.get(credential.id) is not None:
                await self.check_session(credential)

    async def probe(self, credential: Credential) -> UpstreamFailure | None:
        """A tiny request on `credential`; its outcome decides its state (success: active)."""
        try:
            answer = await self._open(PROBE_PROMPT, credential)
            try:
                await answer.next_text()
            finally:
                with anyio.CancelScope(shield=True):
                    await answer.aclose()
        except UpstreamFailure as failure:
            self.pool.record(credential, failure)
            return failure
        self.pool.record(credential, None)
        self.pool.reset(credential)
        return None

    async def probe_invalid(self) -> None:
        for credential in self.pool.credentials:
            if credential.state is CredentialState.INVALID:
                failure = await self.probe(credential)
                log.info("probe of credential %s: %s", credential.id, failure.message if failure else "ok")

    # --- non-streaming ------------------------------------------------------------------------
    async def complete(self, prepared: Prepared) -> Completion:
        async def attempt(credential: Credential) -> tuple[CollectedAnswer, AnswerShaper]:
            answer = await self._open(prepared.prompt, credential)
            shaper, collected = prepared.shaper(), CollectedAnswer()
            try:
                while not shaper.done and (text := await answer.next_text()) is not None:
                    note_first_byte()  # only the first call counts
                    collected.add(shaper.feed(text))
                collected.add(shaper.finish())
            finally:
                with anyio.CancelScope(shield=True):
                    await answer.aclose()  # early, when a stop sequence or the limit ended it
            self.pool.record(credential, None)
            note_upstream_outcome("ok")
            self.pool.release(credential)
            return collected, shaper

        collected, shaper = await self._with_failover(attempt)
        finish = Finished(
            shaper.finish_reason,
            usage(prepared.prompt_tokens, collected.counted_text),
            shaper.stop_sequence,
        )
        return Completion(collected.text, collected.tool_calls, finish)

    # --- streaming ----------------------------------------------------------------------------
    async def open_stream(self, prepared: Prepared) -> Opened:
        """An upstream answer that has given its first piece. Until then, failures fail over."""

        async def attempt(credential: Credential) -> Opened:
            answer = await self._open(prepared.prompt, credential)
            try:
                first_text = await answer.next_text()
                note_first_byte()
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
        drained = self.draining.future()
        try:
            waited: set[asyncio.Future[Any]] = {opening, watcher, drained}
            await asyncio.wait(
                waited, timeout=self.settings.keepalive_interval, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            opening.cancel()
            raise
        finally:
            watcher.cancel()  # from here on Starlette watches for the disconnect
        if watcher.done() and not watcher.cancelled() and not opening.done():
            await _cancel(opening)
            return None
        if drained.done() and not opening.done():
            await _cancel(opening)
            raise shutting_down()  # nothing was sent yet: a real 503
        if opening.done():
            opened = opening.result()  # a GatewayError here is the HTTP error
            return StreamPlan(self.stream(prepared, opened), opened.close)

        async def close() -> None:
            if not opening.done():
                await _cancel(opening)
            elif not opening.cancelled() and opening.exception() is None:
                await opening.result().close()

        return StreamPlan(self._stream_once_open(prepared, opening), close)

    async def _stream_once_open(
        self, prepared: Prepared, opening: asyncio.Future[Opened]
    ) -> AsyncIterator[Event]:
        drained = self.draining.future()
        while not opening.done():
            waiting: set[asyncio.Future[Any]] = {opening, drained}
            done, _ = await asyncio.wait(
                waiting, timeout=self.settings.keepalive_interval, return_when=asyncio.FIRST_COMPLETED
            )
            if drained in done:
                await _cancel(opening)
                yield Failed(shutting_down())
                return
            if not done:
                yield KEEP_ALIVE
        try:
            opened = opening.result()
        except GatewayError as error:
            yield Failed(error)
            return
        async for event in self.stream(prepared, opened):
            yield event

    async def stream(self, prepared: Prepared, opened: Opened) -> AsyncIterator[Event]:
        """The events of an opened answer. Closing it (client gone) closes the upstream."""
        credential, answer = opened.credential, opened.answer
        keepalive = self.settings.keepalive_interval
        counted: list[str] = []  # the text and tool arguments, for the completion token estimate
        shaper = prepared.shaper()
        draining = self.draining
        drained = draining.future()
        try:
            yield STARTED
            text = opened.first_text
            while text is not None:
                if draining.expired:
                    yield Failed(shutting_down())
                    return
                for event in shaper.feed(text):
                    counted.append(event.text if isinstance(event, TextDelta) else event.arguments)
                    yield event
                if shaper.done:
                    break  # a stop sequence or the limit: the upstream is closed below
                try:
                    if answer.ready():
                        # The fast path, once per upstream piece: no task, no timer.
                        text = await answer.next_text(block=False)
                        if text != "":
                            continue
                    pending = opened.pending = asyncio.ensure_future(answer.next_text())
                    while not pending.done():
                        waited: set[asyncio.Future[Any]] = {pending, drained}
                        done, _ = await asyncio.wait(
                            waited, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
                        )
                        if drained in done:
                            yield Failed(shutting_down())
                            return  # the upstream is closed below
                        if not done:
                            yield KEEP_ALIVE
                    opened.pending = None
                    text = pending.result()
                except UpstreamFailure as failure:
                    self.pool.record(credential, failure)
                    note_upstream_outcome(failure.kind.value)
                    log.warning("stream from credential %s failed: %s", credential.id, failure.message)
                    yield Failed(failure_error(failure, 1))
                    return
            for event in shaper.finish():
                counted.append(event.text if isinstance(event, TextDelta) else event.arguments)
                yield event
            self.pool.record(credential, None)
            note_upstream_outcome("ok")
            yield Finished(
                shaper.finish_reason,
                usage(prepared.prompt_tokens, "".join(counted)),
                shaper.stop_sequence,
            )
        finally:
            await opened.close()


STARTED = Started()
KEEP_ALIVE = KeepAlive()


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
