"""`Answer.next_text` over a fake stream: the non-blocking fast path never waits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from app.upstream.decode import RawTextDecoder
from app.upstream.gptomni import Answer
from app.upstream.transport import Timeouts

TIMEOUTS = Timeouts(connect=1, first_byte=1, idle=1)


class FakeStream:
    status = 200
    headers: Mapping[str, str] = {}
    set_cookies: list[str] = []  # noqa: RUF012 - read only

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.arrived = asyncio.Event()
        self.closed = False

    def ready(self) -> bool:
        return bool(self.pieces)

    async def read(self) -> bytes:
        while not self.pieces:
            self.arrived.clear()
            await self.arrived.wait()
        return self.pieces.pop(0)

    async def aclose(self) -> None:
        self.closed = True

    def push(self, data: bytes) -> None:
        self.pieces.append(data)
        self.arrived.set()


def test_half_a_character_gives_empty_text_instead_of_waiting() -> None:
    async def scenario() -> None:
        stream = FakeStream()
        answer = Answer(stream, RawTextDecoder(), TIMEOUTS)
        euro = "€".encode()
        stream.push(euro[:1])
        assert answer.ready()
        assert await asyncio.wait_for(answer.next_text(block=False), 0.1) == ""  # returned at once
        assert not answer.ready()
        assert await asyncio.wait_for(answer.next_text(block=False), 0.1) == ""  # nothing there: no wait
        stream.push(euro[1:] + b"!")
        assert await answer.next_text(block=False) == "€!"

    asyncio.run(scenario())


def test_blocking_read_waits_for_the_rest() -> None:
    async def scenario() -> None:
        stream = FakeStream()
        answer = Answer(stream, RawTextDecoder(), TIMEOUTS)
        stream.push("中".encode()[:2])
        pending = asyncio.ensure_future(answer.next_text())
        await asyncio.sleep(0.05)
        assert not pending.done()  # half a character is not text yet
        stream.push("中".encode()[2:])
        assert await asyncio.wait_for(pending, 1) == "中"

    asyncio.run(scenario())
