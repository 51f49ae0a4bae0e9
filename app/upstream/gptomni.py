"""The gptomni.ai chat call: the request a browser makes, and its answer as text pieces.

See `shared/upstream/gptomni.md`. One POST to `/api/chatWithText` with `{"prompt": ...}` sent as
text/plain and the credential verbatim in `Cookie`. `GptomniClient.open` returns an `Answer` once the
upstream has said 200; anything else is raised as an `UpstreamFailure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from app.upstream.decode import AnswerDecoder, decoder_for
from app.upstream.failures import FailureKind, UpstreamFailure, classify_response
from app.upstream.transport import Timeouts, Transport, UpstreamStream, read_head

CHAT_PATH = "/api/chatWithText"


def build_headers(base_url: str, cookie: str) -> dict[str, str]:
    # Exactly what the site's own fetch() sends; the transport adds the browser's User-Agent.
    return {
        "Accept": "*/*",
        "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8",
        "Content-Type": "text/plain;charset=UTF-8",
        "Origin": base_url,
        "Referer": f"{base_url}/zh",
        "Cookie": cookie,
    }


def build_body(prompt: str) -> bytes:
    return json.dumps({"prompt": prompt}, ensure_ascii=False).encode("utf-8")


class Answer:
    """An upstream answer that said 200: its text, piece by piece, then None at a complete end."""

    def __init__(self, stream: UpstreamStream, decoder: AnswerDecoder, timeouts: Timeouts) -> None:
        self._stream = stream
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

    async def open(self, prompt: str, cookie: str) -> Answer:
        stream = await self.transport.open(
            self.base_url + CHAT_PATH, build_headers(self.base_url, cookie), build_body(prompt), self.timeouts
        )
        try:
            head = b"" if stream.status == 200 else await read_head(stream)
            failure = classify_response(stream.status, stream.headers, head)
        except BaseException:
            await stream.aclose()
            raise
        if failure is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()
            raise failure
        return Answer(stream, decoder_for(stream.headers.get("content-type", "")), self.timeouts)

    async def aclose(self) -> None:
        await self.transport.aclose()
