"""The load generator: a process of its own that drives one target with many concurrent clients.

It reads one phase per line on stdin (a JSON `Phase`), runs it, and answers with one JSON line on
stdout. bench/run.py starts several of these, gives each a share of the clients and a common start
time, and merges their answers. Every virtual client has its own httpx client and connection, as
real clients would; one shared pool of hundreds of connections costs httpcore O(n) per request and
would make the load generator, not the target, the bottleneck.

Framing "sse" is the gateway's Chat Completions stream: a content chunk is an event whose delta starts
with "content" (the first chunk's delta starts with "role", so it never matches). The other surfaces
have a framing each, found by the same kind of byte search (see `FRAMINGS`): "completions" (a chunk
whose `choices[0].text` is not empty), "messages" (Anthropic: an `event: content_block_delta`) and
"responses" (an `event: response.output_text.delta`). Framing "raw" is the emulator's body: every
byte is content and the first byte is the first token.

A phase with `variants` (the per-surface comparison) has each virtual client take turns: one
request of every variant per round, in a new random order each round, each variant on its own
connection, and a tally per variant.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import ssl
import sys
import time
from collections import Counter
from typing import Any, Literal

import httpx

from bench.procs import raise_fd_limit  # 1,000 streams need more descriptors than some soft limits allow

CONTENT_MARK = b'"delta":{"content":"'
DONE_MARK = b"data: [DONE]"
ERROR_MARK = b'data: {"error"'
MAX_ERROR_KINDS = 8

Framing = Literal["sse", "completions", "messages", "responses", "raw"]
Kind = Literal["stream", "complete", "hold"]


@dataclasses.dataclass(frozen=True)
class Marks:
    """What a surface's stream looks like, as bytes to search for."""

    content: bytes  # begins a piece of answer text
    done: bytes  # the stream's last event
    errors: tuple[bytes, ...]  # an error event
    end_name: str  # the last event, for the error "stream ended without ..."
    # When set, `content` directly followed by `"` is an empty text and does not count (the
    # completions stream ends with a chunk whose text is ""). A mark then counts once the byte after
    # it has come, so one split between two reads is still judged right.
    skip_empty: bool = False


FRAMINGS: dict[str, Marks] = {
    "sse": Marks(CONTENT_MARK, DONE_MARK, (ERROR_MARK,), "[DONE]"),
    "completions": Marks(b'"choices":[{"text":"', DONE_MARK, (ERROR_MARK,), "[DONE]", skip_empty=True),
    "messages": Marks(
        b"event: content_block_delta\n", b"event: message_stop\n", (b"event: error\n",), "message_stop"
    ),
    "responses": Marks(
        b"event: response.output_text.delta\n",
        b"event: response.completed\n",
        (b"event: error\n", b"event: response.failed\n"),
        "response.completed",
    ),
}


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: Kind
    url: str
    headers: dict[str, str]
    body: str
    framing: Framing
    unit: str  # the text the emulator's answer repeats, one piece each
    clients: int
    start_at: float  # time.time() at which every worker starts
    warmup: float  # seconds before the measured window
    duration: float  # the measured window (for "hold": how long the streams are held)
    cut_at_end: bool = False  # end streams still running when the window closes (long streams)
    stagger: float = 0.0  # each client starts at a random moment within this many seconds
    ramp: float = 0.0  # "hold": spread the stream starts over this many seconds
    timeout: float = 60.0
    # Requests to take turns with, each {"name", "url", "headers", "body", "framing"}; the fields
    # above of the same names are then unused. The answer has a tally per name.
    variants: list[dict[str, Any]] | None = None


@dataclasses.dataclass
class Window:
    start: float
    end: float

    @classmethod
    def of(cls, phase: Phase) -> Window:
        begin = time.perf_counter() + (phase.start_at - time.time())
        return cls(begin + phase.warmup, begin + phase.warmup + phase.duration)


class BodyScanner:
    """Reads a body piece by piece: content chunks, content units (`unit` occurrences, a measure of
    content that does not depend on how it was chunked), and whether the stream ended well."""

    def __init__(self, framing: Framing, unit: str) -> None:
        self.framing = framing
        self.marks = FRAMINGS.get(framing)
        self.unit = unit.encode()
        self.content = False  # any content yet
        self.done = False
        self.error = False
        self._tail = b""
        marks = self.marks or FRAMINGS["sse"]
        longest = max(len(mark) for mark in (marks.content, marks.done, *marks.errors, self.unit))
        self._keep = longest if marks.skip_empty else longest - 1

    def _count(self, data: bytes, mark: bytes) -> int:
        # Prefixed with fewer bytes of the past than the mark has, so no mark is counted twice.
        return (self._tail[len(self._tail) - len(mark) + 1 :] + data).count(mark)

    def _count_not_empty(self, data: bytes, mark: bytes) -> int:
        """Marks not directly followed by `"`, each counted once the byte after it is here: with as
        many bytes of the past as the mark has, a mark that ended the last read counts now."""
        seen = self._tail[max(0, len(self._tail) - len(mark)) :] + data
        return seen[:-1].count(mark) - seen.count(mark + b'"')

    def feed(self, data: bytes) -> tuple[int, int]:
        """(content chunks, content units) in this piece of the body."""
        if self.marks is None:  # raw
            self.content = self.content or bool(data)
            units = self._count(data, self.unit)
            self._tail = (self._tail + data)[-self._keep :]
            return units, units
        marks = self.marks
        if marks.skip_empty:
            chunks = self._count_not_empty(data, marks.content) if data else 0
        else:
            chunks = self._count(data, marks.content)
        units = self._count(data, self.unit)
        self.done = self.done or self._count(data, marks.done) > 0
        self.error = self.error or any(self._count(data, mark) > 0 for mark in marks.errors)
        self.content = self.content or chunks > 0
        self._tail = (self._tail + data)[-self._keep :]
        return chunks, units


@dataclasses.dataclass
class Tally:
    ttft: list[float] = dataclasses.field(default_factory=list)  # seconds, requests begun in the window
    latency: list[float] = dataclasses.field(default_factory=list)
    completed: int = 0  # requests that ended well inside the window
    chunks: int = 0  # content chunks received inside the window
    units: int = 0  # content units received inside the window
    errors: Counter[str] = dataclasses.field(default_factory=Counter)

    def error(self, kind: str) -> None:
        self.errors[kind[:120]] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "ttft": self.ttft,
            "latency": self.latency,
            "completed": self.completed,
            "chunks": self.chunks,
            "units": self.units,
            "errors": dict(self.errors.most_common(MAX_ERROR_KINDS)),
            "error_count": sum(self.errors.values()),
        }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _new_client(phase: Phase, tls: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(phase.timeout, connect=10.0),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,
        verify=tls,
    )


async def _one_stream(client: httpx.AsyncClient, phase: Phase, window: Window, tally: Tally) -> None:
    began = time.perf_counter()
    first: float | None = None
    scanner = BodyScanner(phase.framing, phase.unit)
    try:
        async with client.stream("POST", phase.url, content=phase.body, headers=phase.headers) as response:
            if response.status_code != 200:
                await response.aread()
                tally.error(f"HTTP {response.status_code}")
                return
            async for data in response.aiter_raw():
                now = time.perf_counter()
                chunks, units = scanner.feed(data)
                if first is None and scanner.content:
                    first = now
                if window.start <= now < window.end:
                    tally.chunks += chunks
                    tally.units += units
                elif phase.cut_at_end and now >= window.end:
                    return  # a long stream cut when the window closes is not an error
            ended = time.perf_counter()
    except httpx.HTTPError as exc:
        tally.error(_describe(exc))
        return
    if scanner.error:
        tally.error("SSE error event")
    elif scanner.marks is not None and not scanner.done:
        tally.error(f"stream ended without {scanner.marks.end_name}")
    elif first is None:
        tally.error("no content")
    elif window.start <= began:
        # A stream begun in the window counts for TTFT if its first token came in the window too;
        # for completions and latency only if it also ended in the window.
        if first < window.end:
            tally.ttft.append(first - began)
        if ended < window.end:
            tally.latency.append(ended - began)
            tally.completed += 1


async def _one_completion(client: httpx.AsyncClient, phase: Phase, window: Window, tally: Tally) -> None:
    began = time.perf_counter()
    try:
        response = await client.post(phase.url, content=phase.body, headers=phase.headers)
    except httpx.HTTPError as exc:
        tally.error(_describe(exc))
        return
    ended = time.perf_counter()
    if response.status_code != 200:
        tally.error(f"HTTP {response.status_code}")
    elif phase.framing == "sse" and b'"choices"' not in response.content:
        tally.error("no choices in the completion")
    elif window.start <= ended < window.end:
        tally.completed += 1
        tally.latency.append(ended - began)


async def _closed_loop(phase: Phase, window: Window, tally: Tally, tls: ssl.SSLContext) -> None:
    """One virtual client: a request, then the next, until the window closes."""
    one = _one_stream if phase.kind == "stream" else _one_completion
    async with _new_client(phase, tls) as client:
        # Staggered starts, so that clients of long streams do not all start (and end) together.
        stagger = random.uniform(0.0, phase.stagger)
        await asyncio.sleep(max(0.0, window.start - phase.warmup + stagger - time.perf_counter()))
        while time.perf_counter() < window.end:
            await one(client, phase, window, tally)


async def _taking_turns(
    variants: dict[str, Phase], window: Window, tallies: dict[str, Tally], tls: ssl.SSLContext
) -> None:
    """One virtual client taking turns between variants: every round one request of each, in a new
    random order (so that none always follows the same other: what a request leaves behind in the
    gateway lands on the next one), each on a connection of its own, until the window closes."""
    names = list(variants)
    first = variants[names[0]]
    one = _one_stream if first.kind == "stream" else _one_completion
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(_new_client(first, tls)) for name in names}
        await asyncio.sleep(max(0.0, window.start - first.warmup - time.perf_counter()))
        while time.perf_counter() < window.end:
            for name in random.sample(names, len(names)):
                await one(clients[name], variants[name], window, tallies[name])


async def run_load(phase: Phase) -> dict[str, Any]:
    window = Window.of(phase)
    tls = ssl.create_default_context()
    # Stragglers (a short stream still running when the window closes) get a little grace.
    grace = phase.timeout if not phase.cut_at_end else 5.0
    if phase.variants:
        variants = {
            v["name"]: dataclasses.replace(
                phase,
                url=v["url"],
                headers=v["headers"],
                body=v["body"],
                framing=v["framing"],
                variants=None,
            )
            for v in phase.variants
        }
        tallies = {name: Tally() for name in variants}
        loops = [_taking_turns(variants, window, tallies, tls) for _ in range(phase.clients)]
    else:
        tallies = {"": Tally()}
        loops = [_closed_loop(phase, window, tallies[""], tls) for _ in range(phase.clients)]
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, window.end - time.perf_counter()) + grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            next(iter(tallies.values())).error(_describe(exc))
    if phase.variants:
        result: dict[str, Any] = {"variants": {name: t.as_json() for name, t in tallies.items()}}
    else:
        result = tallies[""].as_json()
    result["stragglers"] = len(pending)
    return result


# --- hold: many streams open at once ---------------------------------------------------------------


@dataclasses.dataclass
class HeldStream:
    state: str = "connecting"  # connecting | waiting (200, no content yet) | streaming | ended | error
    ttft: float | None = None
    streaming_at: float | None = None  # perf_counter() at the first content
    error: str | None = None


async def _hold_one(stream: HeldStream, phase: Phase, start: float, tls: ssl.SSLContext) -> None:
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    scanner = BodyScanner(phase.framing, phase.unit)
    began = time.perf_counter()
    try:
        async with (
            _new_client(phase, tls) as client,
            client.stream("POST", phase.url, content=phase.body, headers=phase.headers) as response,
        ):
            if response.status_code != 200:
                stream.state, stream.error = "error", f"HTTP {response.status_code}"
                return
            stream.state = "waiting"
            async for data in response.aiter_raw():
                scanner.feed(data)
                if scanner.content and stream.ttft is None:
                    stream.streaming_at = time.perf_counter()
                    stream.ttft = stream.streaming_at - began
                    stream.state = "streaming"
                if scanner.error:
                    stream.state, stream.error = "error", "SSE error event"
                    return
        stream.state = "ended"
    except httpx.HTTPError as exc:
        stream.state, stream.error = "error", _describe(exc)


async def run_hold(phase: Phase) -> dict[str, Any]:
    """Open `clients` streams (spread over `ramp`), hold them for the window, then close them all.

    Every second of the window, the number of streams that are streaming is sampled: its minimum is
    how many were held at once."""
    window = Window.of(phase)
    start = window.start - phase.warmup
    streams = [HeldStream() for _ in range(phase.clients)]
    tls = ssl.create_default_context()
    tasks = []
    for index, stream in enumerate(streams):
        own_start = start + phase.ramp * index / max(1, phase.clients)
        tasks.append(asyncio.ensure_future(_hold_one(stream, phase, own_start, tls)))
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    streaming_samples: list[int] = []
    while (now := time.perf_counter()) < window.end:
        streaming_samples.append(sum(1 for s in streams if s.state == "streaming"))
        await asyncio.sleep(min(1.0, window.end - now))
    states = Counter(s.state for s in streams)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    errors = Counter(s.error for s in streams if s.error)
    started = [s.streaming_at - start for s in streams if s.streaming_at is not None]
    return {
        "states": dict(states),
        "streaming_after": max(started) if len(started) == len(streams) else None,
        "streaming_min": min(streaming_samples, default=0),
        "streaming_samples": streaming_samples,
        "ttft": [s.ttft for s in streams if s.ttft is not None],
        "errors": dict(errors.most_common(MAX_ERROR_KINDS)),
        "error_count": sum(errors.values()) + states.get("ended", 0),
    }


# --- process entry -------------------------------------------------------------------------------


async def serve(lines: Any) -> None:
    loop = asyncio.get_running_loop()
    sys.stdout.write("LOADGEN_READY\n")
    sys.stdout.flush()
    while line := await loop.run_in_executor(None, lines.readline):
        phase = Phase(**json.loads(line))
        result = await (run_hold(phase) if phase.kind == "hold" else run_load(phase))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main() -> int:
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(sys.stdin))
    else:
        uvloop.run(serve(sys.stdin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
