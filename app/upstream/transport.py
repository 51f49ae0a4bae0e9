"""Two HTTP clients for the upstream behind one small interface.

`Transport.open` sends one request and returns once the status and headers are in; the
`UpstreamStream` it gives reads the body piece by piece and can be closed at any time, also while a
read is blocked (that is how a client that goes away cancels the upstream call).

- `CurlCffiTransport` (default): curl_cffi's AsyncSession with browser impersonation, fully async.
- `CloudscraperTransport`: cloudscraper (requests), synchronous, so every blocking call runs in its
  own bounded thread pool; a semaphore of the same size bounds the open streams, so a stream never
  waits behind others for a thread to read with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Protocol

from app.upstream.failures import FailureKind, UpstreamFailure

READ_SIZE = 65536
ERROR_BODY_LIMIT = 16384


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


class UpstreamStream(Protocol):
    status: int
    headers: Mapping[str, str]  # lower-case names

    async def read(self) -> bytes:
        """The next piece of the body; b"" at a complete end. Raises UpstreamFailure."""
        ...

    async def aclose(self) -> None: ...

    def ready(self) -> bool:
        """Whether `read` would return without waiting."""
        ...


class TransportBusy(Exception):
    """The transport itself is at capacity (not the upstream, not the credential)."""


class Transport(Protocol):
    name: str

    async def open(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamStream:
        """Send the request; return when status and headers are in. Raises UpstreamFailure."""
        ...

    async def aclose(self) -> None: ...


async def read_head(stream: UpstreamStream, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """The start of an error body, enough to recognise a Cloudflare page; failures ignored."""
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(UpstreamFailure, TimeoutError):
        async with asyncio.timeout(5):
            while size < limit:
                piece = await stream.read()
                if not piece:
                    break
                parts.append(piece)
                size += len(piece)
    return b"".join(parts)[:limit]


# --- curl_cffi ---------------------------------------------------------------------------------------
# libcurl's multi interface through curl_cffi's low-level `Curl` and `AsyncCurl`, not its `AsyncSession`:
# the session's streaming call returns only at the first body byte and cannot be aborted before it.
# With our own header callback the status is known when the headers arrive, and `remove_handle` stops a
# transfer at any moment, also while the upstream is silent. Connections are still reused: libcurl keeps
# them in the multi handle's cache.

_END = object()


def _curl_failure(exc: BaseException) -> UpstreamFailure:
    code = getattr(exc, "code", None)
    # libcurl codes: 5/6/7 resolve or connect, 35/60 TLS, 28 time-out, 18/52/56/92 a transfer cut short.
    if code in (5, 6, 7, 35, 60):
        return UpstreamFailure(FailureKind.CONNECT, f"could not connect (curl error {code})")
    if code == 28:
        return UpstreamFailure(FailureKind.TIMEOUT, "timed out (curl error 28)")
    if code in (16, 18, 52, 55, 56, 92):
        return UpstreamFailure(FailureKind.CUT_OFF, f"answer cut off before it completed (curl error {code})")
    return UpstreamFailure(FailureKind.CONNECT, f"transport error (curl error {code})")


class _CurlStream:
    def __init__(self, acurl: Any, curl: Any) -> None:
        self._acurl = acurl
        self._curl = curl
        # Pieces as curl hands them over; `read` takes all that is there at once, so a reader that
        # falls behind catches up in one step instead of one wake-up per network read.
        self._chunks: deque[bytes] = deque()
        self._end: Any = None  # _END, or the exception that ended the transfer
        self._waiter: asyncio.Future[None] | None = None
        self._headers_done = asyncio.Event()
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self._header_lines: dict[str, str] = {}
        self._future: asyncio.Future[Any] | None = None
        self._closed = False

    # Both callbacks run on the event loop thread, inside curl_multi_socket_action.
    def on_header(self, line: bytes) -> int:
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self._header_lines = {}
        elif line in (b"\r\n", b"\n"):
            if self.status >= 200:  # not after a 1xx interim answer
                self.headers = self._header_lines
                self._headers_done.set()
        else:
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                self._header_lines[name.strip().lower()] = value.strip()
        return len(line)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, data: bytes) -> int:
        self._chunks.append(data)
        self._wake()
        return len(data)

    def ready(self) -> bool:
        return self._closed or bool(self._chunks) or self._end is not None

    def start(self) -> None:
        self._future = self._acurl.add_handle(self._curl)
        self._future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is None:
            self._end = _END
        else:
            self._end = future.exception()
        self._wake()
        self._headers_done.set()
        self._cleanup()

    def _cleanup(self) -> None:
        curl, self._curl = self._curl, None
        if curl is not None:
            curl.close()

    async def wait_for_headers(self) -> None:
        await self._headers_done.wait()
        if self.status == 0:  # the transfer ended before any answer: a connect error
            item = self._end
            raise (
                _curl_failure(item)
                if isinstance(item, BaseException)
                else UpstreamFailure(FailureKind.CONNECT, "no answer from the upstream")
            )

    async def read(self) -> bytes:
        if self._closed:
            return b""
        while not self._chunks and self._end is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            return data
        self._closed = True
        if isinstance(self._end, BaseException):
            raise _curl_failure(self._end)
        return b""

    def abort(self) -> None:
        self._closed = True
        future = self._future
        if future is not None and not future.done() and self._curl is not None:
            self._acurl.remove_handle(self._curl)  # cancels the future; _on_done cleans up
        elif future is None:
            self._cleanup()

    async def aclose(self) -> None:
        self.abort()


@functools.cache
def _http_curl_class() -> Any:
    from curl_cffi import Curl

    class HttpCurl(Curl):
        # Curl() allocates a 128 KiB WebSocket receive buffer per handle; we never use WebSockets,
        # and with 1,000 streams open that buffer alone was about 100 MB.
        _WS_RECV_BUFFER_SIZE = 1

    return HttpCurl


class CurlCffiTransport:
    name = "curl_cffi"

    def __init__(self, impersonate: str) -> None:
        from curl_cffi.aio import AsyncCurl
        from curl_cffi.requests.impersonate import resolve_latest_browser_type

        self._acurl: Any = AsyncCurl()
        self._impersonate: str = resolve_latest_browser_type(impersonate)  # type: ignore[no-untyped-call]

    def _build(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> _CurlStream:
        from curl_cffi import CurlOpt

        curl = _http_curl_class()()
        stream = _CurlStream(self._acurl, curl)
        curl.impersonate(self._impersonate, default_headers=True)
        curl.setopt(CurlOpt.URL, url)
        curl.setopt(CurlOpt.POSTFIELDS, body)
        curl.setopt(CurlOpt.POSTFIELDSIZE, len(body))
        curl.setopt(CurlOpt.HTTPHEADER, [f"{k}: {v}".encode() for k, v in headers.items()] + [b"Expect:"])
        curl.setopt(CurlOpt.HEADERFUNCTION, stream.on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, stream.on_body)
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, int(timeouts.connect * 1000))
        curl.setopt(CurlOpt.NOSIGNAL, 1)
        # No cookie engine is enabled, so nothing one account's answer sets reaches another's request.
        return stream

    async def open(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamStream:
        stream = self._build(url, headers, body, timeouts)
        stream.start()
        try:
            async with asyncio.timeout(timeouts.first_byte):
                await stream.wait_for_headers()
        except TimeoutError:
            stream.abort()
            raise UpstreamFailure(FailureKind.TIMEOUT, "no answer before the first-byte time-out") from None
        except BaseException:
            stream.abort()
            raise
        return stream

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._acurl.close()


# --- cloudscraper ---------------------------------------------------------------------------------


def _requests_failure(exc: BaseException) -> UpstreamFailure:
    import requests
    import urllib3.exceptions

    name = type(exc).__name__
    if "Cloudflare" in name:
        return UpstreamFailure(FailureKind.CLOUDFLARE, "blocked by a Cloudflare challenge")
    if isinstance(exc, (requests.exceptions.ConnectTimeout,)):
        return UpstreamFailure(FailureKind.CONNECT, "connect timed out")
    if isinstance(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return UpstreamFailure(FailureKind.TIMEOUT, "upstream went silent past the time-out")
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
        exc, requests.exceptions.ChunkedEncodingError
    ):
        if "Read timed out" in str(exc):
            return UpstreamFailure(FailureKind.TIMEOUT, "upstream went silent past the time-out")
        return UpstreamFailure(FailureKind.CONNECT, f"could not connect ({name})")
    if isinstance(
        exc,
        (
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.IncompleteRead,
            ConnectionError,
            OSError,
        ),
    ):
        return UpstreamFailure(FailureKind.CUT_OFF, f"answer cut off before it completed ({name})")
    return UpstreamFailure(FailureKind.CONNECT, f"transport error ({name})")


class _ScraperStream:
    def __init__(self, transport: CloudscraperTransport, response: Any) -> None:
        self._transport = transport
        self._response = response
        self.status: int = int(response.status_code)
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.items()}
        self._closed = threading.Event()
        self._released = False

    def ready(self) -> bool:
        return self._closed.is_set()  # a read always takes a trip through the thread pool

    def _read_blocking(self) -> bytes:
        if self._closed.is_set():
            return b""
        raw = self._response.raw
        # read1 returns what one read of the socket gives (a whole HTTP chunk at most) instead of
        # waiting for READ_SIZE bytes, so pieces reach the client as they arrive.
        return bytes(raw.read1(READ_SIZE))

    async def read(self) -> bytes:
        if self._closed.is_set():
            return b""
        try:
            data: bytes = await self._transport.run(self._read_blocking)
            return data
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._closed.is_set():
                return b""
            raise _requests_failure(exc) from None

    def _close_blocking(self) -> None:
        # Closing a socket does not wake a recv() blocked in another thread on Linux; shutting it
        # down does. That is what ends a blocked read when the client goes away.
        connection = getattr(self._response.raw, "_connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._closed.set()
        # Not through the pool: every pool thread may be blocked reading, and this unblocks them.
        self._close_blocking()
        self._transport.release()


class CloudscraperTransport:
    name = "cloudscraper"

    def __init__(self, threads: int, slot_wait: float = 5.0) -> None:
        import cloudscraper

        self._scraper: Any = cloudscraper.create_scraper(
            browser={"browser": "chrome", "platform": "windows", "mobile": False}
        )
        # Cookies go in the Cookie header of each request; the shared jar must keep nothing, or a
        # Set-Cookie meant for one account would ride along with the next account's requests.
        self._scraper.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cloudscraper")
        self._slots = asyncio.Semaphore(threads)
        self._threads = threads
        self._slot_wait = slot_wait

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def release(self) -> None:
        self._slots.release()

    def _open_blocking(self, url: str, headers: dict[str, str], body: bytes, timeouts: Timeouts) -> Any:
        return self._scraper.post(
            url,
            headers=headers,
            data=body,
            stream=True,
            allow_redirects=False,
            # The read time-out is the socket's: it bounds the wait for headers and every body read.
            timeout=(timeouts.connect, max(timeouts.first_byte, timeouts.idle)),
        )

    async def open(
        self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamStream:
        try:
            async with asyncio.timeout(self._slot_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise TransportBusy(
                f"the cloudscraper transport holds {self._threads} streams at once (CLOUDSCRAPER_THREADS), "
                "and all are in use"
            ) from None
        try:
            async with asyncio.timeout(timeouts.first_byte):
                future = asyncio.get_running_loop().run_in_executor(
                    self._executor, self._open_blocking, url, dict(headers), body, timeouts
                )
                try:
                    response = await asyncio.shield(future)
                except asyncio.CancelledError:
                    # The thread goes on; close its response when it comes so nothing leaks.
                    future.add_done_callback(_close_late_response)
                    raise
        except TimeoutError:
            self._slots.release()
            raise UpstreamFailure(FailureKind.TIMEOUT, "no answer before the first-byte time-out") from None
        except asyncio.CancelledError:
            self._slots.release()
            raise
        except BaseException as exc:
            self._slots.release()
            raise _requests_failure(exc) from None
        return _ScraperStream(self, response)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._scraper.close()


def _close_late_response(future: Any) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    with contextlib.suppress(Exception):
        future.result().close()


def build_transport(name: str, *, impersonate: str, threads: int, slot_wait: float = 5.0) -> Transport:
    if name == "cloudscraper":
        return CloudscraperTransport(threads, slot_wait)
    return CurlCffiTransport(impersonate)
