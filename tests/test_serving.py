"""app/serving.py: the protocol on a real uvicorn server in the test's event loop, driven over raw loopback
sockets with small limits, and the sizing of the defaults."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import uvicorn

from app.config import Settings
from app.serving import (
    RESERVED_FDS,
    HardenedHttpFactory,
    Limits,
    default_max_connections,
    server_options,
)
from tests.processes import ROOT

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


LIMITS = Limits(max_header_bytes=4096, header_timeout=0.5, max_connections=100)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes what it got (`/`), or streams `n` pieces `delay` seconds apart (`/stream?n=&delay=`)."""
    assert scope["type"] == "http"
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/stream":
        query = dict(pair.split("=") for pair in scope["query_string"].decode().split("&"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(int(query["n"])):
            await asyncio.sleep(float(query["delay"]))
            await send({"type": "http.response.body", "body": b"piece %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = orjson.dumps({"path": scope["path"], "body": size, "headers": len(scope["headers"])})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(limits: Limits = LIMITS, keepalive: float = 5.0) -> AsyncIterator[int]:
    # As server_options() gives them to uvicorn.run (a factory for `http`, seconds as a float).
    options: dict[str, Any] = {"http": HardenedHttpFactory(limits), "timeout_keep_alive": keepalive}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        await task


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response with a content-length (or to the end of the connection)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode().split("\r\n")[:-2]
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        else:
            body = await asyncio.wait_for(self.reader.read(), 5)
        return int(status_line.split()[1]), headers, body

    async def closed_after(self, limit: float) -> tuple[float, bytes]:
        """Seconds until the server closes the connection, and what it sent before."""
        start = time.monotonic()
        data = await asyncio.wait_for(self.reader.read(), limit)
        return time.monotonic() - start, data

    def close(self) -> None:
        self.writer.close()


def head(size: int, path: str = "/") -> bytes:
    """A GET whose head (request line, headers, blank line) is exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: test\r\nX-Pad: ".encode()
    pad = size - len(start) - 4
    assert pad >= 0
    return start + b"p" * pad + b"\r\n\r\n"


# --- head size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [None, 100, 1])
async def test_a_head_at_the_limit_is_served_and_a_byte_more_gets_431(piece: int | None) -> None:
    async with serving() as port:
        for size, status in ((4096, 200), (4097, 431)):
            client = await Client.connect(port)
            data = head(size)
            for at in range(0, len(data), piece or len(data)):
                await client.send(data[at : at + (piece or len(data))])
            got, headers, body = await client.response()
            assert got == status
            if status == 431:
                assert headers["connection"] == "close"
                assert headers["content-type"] == "application/json"
                error = orjson.loads(body)["error"]
                assert error["type"] == "invalid_request_error"
                assert error["code"] == "request_header_fields_too_large"
                assert error["param"] is None
                assert "4096" in error["message"]
                assert await client.reader.read() == b""
            client.close()


async def test_an_endless_header_gets_431_and_the_connection_is_dropped() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        await client.send(b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 4 MiB: the server parses 4 KiB, then reads and drops 1 MiB at most
                await client.send(b"a" * 65536)
        try:
            answer = await asyncio.wait_for(client.reader.read(), 3)
        except ConnectionError:
            answer = b""  # dropped before the answer was read (a reset, or a write that failed on it)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        client.close()
        # The server still serves.
        client = await Client.connect(port)
        await client.send(head(200))
        assert (await client.response())[0] == 200


async def test_a_long_request_line_counts_towards_the_limit() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        await client.send(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await client.response())[0] == 431


async def test_a_body_is_not_counted_as_head_and_the_next_head_is_counted_afresh() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        body = b"b" * 300_000
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        status, _, answer = await client.response()
        assert status == 200
        assert orjson.loads(answer)["body"] == len(body)
        await client.send(head(4096))  # at the limit again, on the same connection
        assert (await client.response())[0] == 200
        await client.send(head(4097))
        assert (await client.response())[0] == 431


async def test_a_chunked_body_is_not_counted_as_head() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"c" * 1000) for _ in range(100)) + b"0\r\n\r\n"
        await client.send(b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        status, _, answer = await client.response()
        assert (status, orjson.loads(answer)["body"]) == (200, 100_000)


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        # The limit is 4,096: a pipelined head may be overcounted by one slice (512 bytes).
        await client.send(head(3500, "/a") + head(3500, "/b") + head(3500, "/c")[:1000])
        await client.send(head(3500, "/c")[1000:])
        paths = [orjson.loads((await client.response())[2])["path"] for _ in range(3)]
        assert paths == ["/a", "/b", "/c"]


# --- time limits -------------------------------------------------------------------------------


async def test_a_trickled_head_gets_408_after_the_header_timeout() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        start = time.monotonic()
        await client.send(b"GET / HTTP/1.1\r\nHost: test\r\n")

        async def trickle() -> None:
            for i in range(100):
                await asyncio.sleep(0.1)
                await client.send(b"X-Line-%d: y\r\n" % i)

        trickling = asyncio.create_task(trickle())
        status, _, body = await client.response()
        elapsed = time.monotonic() - start
        trickling.cancel()
        assert status == 408
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert 0.45 < elapsed < 1.2


async def test_a_silent_new_connection_is_closed_after_the_header_timeout() -> None:
    async with serving() as port:
        client = await Client.connect(port)
        elapsed, data = await client.closed_after(3)
        assert data == b""
        assert 0.45 < elapsed < 1.2


async def test_an_idle_kept_alive_connection_lasts_the_keepalive_timeout_then_has_a_new_head_timeout() -> (
    None
):
    limits = Limits(max_header_bytes=4096, header_timeout=0.3, max_connections=100)
    async with serving(limits, keepalive=1.0) as port:
        client = await Client.connect(port)
        await client.send(head(100))
        assert (await client.response())[0] == 200
        elapsed, data = await client.closed_after(3)
        assert data == b""
        assert 0.95 < elapsed < 1.6  # the keep-alive timeout, not the 0.3 s head timeout

        client = await Client.connect(port)
        await client.send(head(100))
        assert (await client.response())[0] == 200
        await asyncio.sleep(0.6)  # idle past the head timeout: still open
        start = time.monotonic()
        await client.send(b"GET / HTTP/1.1\r\n")  # a head begins: now it has 0.3 s
        status, _, _ = await client.response()
        assert status == 408
        assert 0.25 < time.monotonic() - start < 0.9


async def test_a_streaming_answer_outlives_the_header_timeout() -> None:
    limits = Limits(max_header_bytes=4096, header_timeout=0.2, max_connections=100)
    async with serving(limits, keepalive=0.2) as port:
        client = await Client.connect(port)
        await client.send(b"GET /stream?n=6&delay=0.15 HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.sleep(0.05)
        await client.send(b"\r\n")  # a stray line break, as some clients send after a request
        head_bytes = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head_bytes.startswith(b"HTTP/1.1 200")
        body = await asyncio.wait_for(client.reader.readuntil(b"0\r\n\r\n"), 5)
        assert body.count(b"piece") == 6
        # Then, idle, the keep-alive timeout closes it.
        elapsed, _ = await client.closed_after(3)
        assert elapsed < 1.0


# --- connection cap ----------------------------------------------------------------------------


async def test_connections_over_the_cap_get_a_fast_503() -> None:
    limits = Limits(max_header_bytes=4096, header_timeout=5.0, max_connections=3)
    async with serving(limits) as port:
        held = [await Client.connect(port) for _ in range(3)]
        await asyncio.sleep(0.05)
        start = time.monotonic()
        refused = await Client.connect(port)
        status, headers, body = await refused.response()  # before the client sent anything
        assert time.monotonic() - start < 0.5
        assert status == 503
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        error = orjson.loads(body)["error"]
        assert (error["type"], error["code"]) == ("server_error", "too_many_connections")
        refused.close()

        held.pop().close()
        deadline = time.monotonic() + 2
        while True:  # the server sees the close soon
            client = await Client.connect(port)
            await client.send(head(100))
            status = (await client.response())[0]
            client.close()
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        for client in held:
            client.close()


# --- options and sizing ------------------------------------------------------------------------


def test_server_options_carry_the_settings() -> None:
    settings = Settings(
        auth_disabled=True,
        max_header_bytes=8192,
        header_timeout=3.0,
        keepalive_timeout=7.0,
        max_connections=42,
    )
    options = server_options(settings)
    assert options["timeout_keep_alive"] == 7.0
    assert options["limit_concurrency"] is None
    factory = options["http"]
    assert factory == HardenedHttpFactory(
        Limits(max_header_bytes=8192, header_timeout=3.0, max_connections=42)
    )
    # `WORKERS=N` sends the options to spawned processes.
    assert pickle.loads(pickle.dumps(factory)) == factory


def test_server_options_size_the_cap_when_unset() -> None:
    options = server_options(Settings(auth_disabled=True))
    assert options["http"].limits.max_connections == default_max_connections()


def test_default_cap_is_half_the_free_descriptors_or_what_memory_allows() -> None:
    gib = 1 << 30
    assert default_max_connections(fd_limit=1024, memory=64 * gib) == (1024 - RESERVED_FDS) // 2
    assert default_max_connections(fd_limit=65536, memory=64 * gib) == (65536 - RESERVED_FDS) // 2
    # 1 GiB: half of it over (2 x 64 KiB + 16 KiB) per connection.
    assert default_max_connections(fd_limit=65536, memory=gib) == (gib // 2) // (144 * 1024)
    assert default_max_connections(fd_limit=65536, memory=gib, max_header_bytes=8192) == (gib // 2) // (
        32 * 1024
    )
    assert default_max_connections(fd_limit=100, memory=gib) == 1


def test_default_cap_holds_the_benchmark_on_a_normal_machine() -> None:
    """1,000 streams, each with its upstream socket: a hard fd limit of 4,096 (the smallest common one)
    and 512 MiB of memory are enough."""
    assert default_max_connections(fd_limit=4096, memory=512 << 20) >= 1000


def test_the_soft_fd_limit_is_raised_towards_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard fd limit is too low to lower the soft one under it")
    script = (
        "import resource\n"
        "from app.serving import raise_fd_limit, FD_LIMIT_TARGET\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_fd_limit()\n"
        "want = FD_LIMIT_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_TARGET)\n"
        "assert got == want == resource.getrlimit(resource.RLIMIT_NOFILE)[0], (got, want)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))\n"
        "assert raise_fd_limit(target=300) == want  # never lowered\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)
