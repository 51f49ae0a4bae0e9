"""The gptomni.ai chat call: the request a browser makes, and its answer as text pieces.

See `shared/upstream/gptomni.md`. One POST to `/api/chatWithText` with `{"prompt": ...}` sent as
text/plain and the credential verbatim in `Cookie`. `GptomniClient.open` returns an `Answer` once the
upstream has said 200; anything else is raised as an `UpstreamFailure`. `GptomniClient.session` asks
the site's NextAuth session endpoint whether a cookie is still signed in (it costs no quota).

Both hand back the answer's `Set-Cookie` values (`Answer.set_cookies`, `SessionState.set_cookies`,
`UpstreamFailure.set_cookies` for an answer that was not 200): the site renews its session cookie
with them. Parsing them and keeping a cookie jar is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

from app.upstream.decode import AnswerDecoder, decoder_for
from app.upstream.failures import FailureKind, UpstreamFailure, classify_response
from app.upstream.transport import Timeouts, Transport, UpstreamStream, read_head

CHAT_PATH = "/api/chatWithText"
SESSION_PATH = "/api/auth/session"
SESSION_BODY_LIMIT = 65536
ACCEPT_LANGUAGE = "zh-CN,zh;q=0.9,en;q=0.8"


USER_AGENT_MAX = 512


def validate_user_agent(value: str) -> str:
    """A User-Agent to send: one line of printable ASCII (the same bytes on both transports),
    stripped; ValueError with a clear message otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError("a User-Agent must not be empty")
    if len(text) > USER_AGENT_MAX:
        raise ValueError(f"a User-Agent is at most {USER_AGENT_MAX} characters")
    if not all(" " <= ch <= "~" for ch in text):
        raise ValueError("a User-Agent is one line of printable ASCII characters")
    return text


def build_headers(base_url: str, cookie: str, user_agent: str | None = None) -> dict[str, str]:
    # Exactly what the site's own fetch() sends; the transport adds the browser's User-Agent unless
    # one is given (cf_clearance is bound to the User-Agent that earned it).
    headers = {
        "Accept": "*/*",
        "Accept-Language": ACCEPT_LANGUAGE,
        "Content-Type": "text/plain;charset=UTF-8",
        "Origin": base_url,
        "Referer": f"{base_url}/zh",
        "Cookie": cookie,
    }
    if user_agent:
        headers["User-Agent"] = validate_user_agent(user_agent)
    return headers


def build_session_headers(base_url: str, cookie: str, user_agent: str | None = None) -> dict[str, str]:
    # What next-auth's client (getSession / useSession) sends from the page: a same-origin GET.
    headers = {
        "Accept": "application/json",
        "Accept-Language": ACCEPT_LANGUAGE,
        "Content-Type": "application/json",
        "Referer": f"{base_url}/zh",
        "Cookie": cookie,
    }
    if user_agent:
        headers["User-Agent"] = validate_user_agent(user_agent)
    return headers


def build_body(prompt: str) -> bytes:
    return json.dumps({"prompt": prompt}, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class SessionState:
    """What `GET /api/auth/session` said: a signed-in session (`alive`, with its `expires` as the site
    wrote it), or none (`{}`); `set_cookies` are the answer's raw Set-Cookie values."""

    alive: bool
    expires: str | None = None
    set_cookies: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # the cookies are secrets
        cookies = f"<{len(self.set_cookies)} Set-Cookie values>"
        return f"SessionState(alive={self.alive}, expires={self.expires!r}, set_cookies={cookies})"


def parse_session(body: bytes) -> tuple[bool, str | None]:
    """(alive, expires) from a 200 session body; UpstreamFailure(BAD_RESPONSE) if it is not one.

    next-auth v4 answers `{}` without a session (Auth.js v5: `null`), else `{"user": {...},
    "expires": "..."}`.
    """
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise UpstreamFailure(
            FailureKind.BAD_RESPONSE, "the session endpoint answered 200 with something that is not JSON"
        ) from None
    if data is None:
        return False, None
    if not isinstance(data, dict):
        raise UpstreamFailure(
            FailureKind.BAD_RESPONSE, "the session endpoint answered 200 with JSON that is not an object"
        )
    if not data.get("user"):
        return False, None
    expires = data.get("expires")
    return True, expires if isinstance(expires, str) else None


class Answer:
    """An upstream answer that said 200: its text, piece by piece, then None at a complete end.

    `set_cookies`: the raw Set-Cookie values of the answer's headers."""

    def __init__(self, stream: UpstreamStream, decoder: AnswerDecoder, timeouts: Timeouts) -> None:
        self._stream = stream
        self.set_cookies: list[str] = list(getattr(stream, "set_cookies", []))
        self._decoder = decoder
        self._timeouts = timeouts
        self._got_bytes = False
        self._ended = False

    def ready(self) -> bool:
        """Whether `next_text(block=False)` has something to work on without waiting."""
        return self._ended or self._decoder.done or self._stream.ready()

    async def next_text(self, *, block: bool = True) -> str | None:
        """The next non-empty piece of text; None when the answer is complete.

        With `block=False` it returns "" instead of waiting when what was there made no text yet
        (half a UTF-8 character, half an SSE line), so a caller on the fast path never waits
        without its keep-alive timer.
        """
        while not self._ended:
            if self._decoder.done:  # e.g. an SSE [DONE]: what follows is not answer text
                self._ended = True
                await self.aclose()
                return None
            ready = self._stream.ready()
            if not ready and not block:
                return ""
            timeout = self._timeouts.idle if self._got_bytes else self._timeouts.first_byte
            try:
                if ready:  # no timer needed: the read returns at once
                    data = await self._stream.read()
                else:
                    async with asyncio.timeout(timeout):
                        data = await self._stream.read()
            except TimeoutError:
                what = "between two reads" if self._got_bytes else "before the first byte"
                raise UpstreamFailure(
                    FailureKind.TIMEOUT, f"upstream went silent {what} past the {timeout:g} s time-out"
                ) from None
            if not data:
                self._ended = True
                text = self._decoder.finish()
                return text or None
            self._got_bytes = True
            text = self._decoder.feed(data)
            if text:
                return text
        return None

    async def aclose(self) -> None:
        await self._stream.aclose()


class GptomniClient:
    def __init__(self, transport: Transport, base_url: str, timeouts: Timeouts) -> None:
        self.transport = transport
        self.base_url = base_url
        self.timeouts = timeouts

    async def open(
        self, prompt: str, cookie: str, *, proxy: str | None = None, user_agent: str | None = None
    ) -> Answer:
        """The chat answer once the upstream said 200; UpstreamFailure otherwise (with the failed
        answer's Set-Cookie values in `set_cookies`)."""
        stream = await self.transport.open(
            self.base_url + CHAT_PATH,
            build_headers(self.base_url, cookie, user_agent),
            build_body(prompt),
            self.timeouts,
            proxy=proxy,
        )
        await _raise_unless_200(stream)
        return Answer(stream, decoder_for(stream.headers.get("content-type", "")), self.timeouts)

    async def session(
        self, cookie: str, *, proxy: str | None = None, user_agent: str | None = None
    ) -> SessionState:
        """`GET /api/auth/session`: alive (200, an object with a `user`) or not (`{}`, `null`).

        Anything else (not 200, not JSON, a network failure) raises UpstreamFailure: the check went
        unanswered, which says nothing about the cookie.
        """
        stream = await self.transport.open(
            self.base_url + SESSION_PATH,
            build_session_headers(self.base_url, cookie, user_agent),
            None,
            self.timeouts,
            method="GET",
            proxy=proxy,
        )
        await _raise_unless_200(stream)
        try:
            body = await self._read_body(stream, SESSION_BODY_LIMIT)
        except UpstreamFailure as failure:
            failure.set_cookies = list(stream.set_cookies)
            raise
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
        try:
            alive, expires = parse_session(body)
        except UpstreamFailure as failure:
            failure.status = 200
            failure.set_cookies = list(stream.set_cookies)
            raise
        return SessionState(alive, expires, list(stream.set_cookies))

    async def _read_body(self, stream: UpstreamStream, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        timeout = self.timeouts.first_byte
        while True:
            try:
                async with asyncio.timeout(timeout):
                    piece = await stream.read()
            except TimeoutError:
                raise UpstreamFailure(
                    FailureKind.TIMEOUT, f"the session endpoint went silent past the {timeout:g} s time-out"
                ) from None
            if not piece:
                return b"".join(parts)
            timeout = self.timeouts.idle
            parts.append(piece)
            size += len(piece)
            if size > limit:
                raise UpstreamFailure(
                    FailureKind.BAD_RESPONSE, f"the session endpoint's answer is larger than {limit} bytes"
                )

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _raise_unless_200(stream: UpstreamStream) -> None:
    """Classify a non-200 answer (closing it) and raise it, with its Set-Cookie values."""
    try:
        head = b"" if stream.status == 200 else await read_head(stream)
        failure = classify_response(stream.status, stream.headers, head)
    except BaseException:
        await stream.aclose()
        raise
    if failure is not None:
        failure.set_cookies = list(stream.set_cookies)
        with contextlib.suppress(Exception):
            await stream.aclose()
        raise failure
