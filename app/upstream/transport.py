"""Two HTTP clients for the upstream behind one small interface.

`Transport.open` sends one request and returns once the status and headers are in; the
`UpstreamStream` it gives reads the body piece by piece and can be closed at any time, also while a
read is blocked (that is how a client that goes away cancels the upstream call).

- `CurlCffiTransport` (default): curl_cffi's AsyncSession with browser impersonation, fully async.
- `CloudscraperTransport`: cloudscraper (requests), synchronous, so every blocking call runs in its
  own bounded thread pool; a semaphore of the same size bounds the open streams, so a stream never
  waits behind others for a thread to read with.

Both take a per-request `proxy` (see app/upstream/proxy.py), keep no cookies between requests (each
request's `Cookie` header is all they send; every `Set-Cookie` of the answer is handed back in
`UpstreamStream.set_cookies`), and let a `User-Agent` in the request headers replace their own.
A proxy that cannot be used is a CONNECT failure whose message names the proxy, password masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import re
import socket
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Protocol

from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.proxy import mask_proxy

READ_SIZE = 65536
ERROR_BODY_LIMIT = 16384


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


class UpstreamStream(Protocol):
    status: int
    headers: Mapping[str, str]  # lower-case names; of a repeated header, the last
    set_cookies: list[str]  # the raw value of every Set-Cookie header of the answer, in order

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
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        *,
        method: str = "POST",
        proxy: str | None = None,
    ) -> UpstreamStream:
        """Send the request; return when status and headers are in. Raises UpstreamFailure.

        `method` is GET or POST (`body` None for a GET). `proxy` is a URL that `validate_proxy`
        accepted; None sends directly (or through the environment's proxy, as the clients do).
        """
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


_METHODS = ("GET", "POST")


def _check_method(method: str, body: bytes | None) -> None:
    if method not in _METHODS:
        raise ValueError(f"unsupported method {method!r}: GET or POST")
    if method == "GET" and body:
        raise ValueError("a GET has no body")


def proxy_failure(proxy: str, what: str) -> UpstreamFailure:
    """A proxy that could not be used: a connect failure (fail over), naming the proxy masked."""
    masked = mask_proxy(proxy)
    return UpstreamFailure(FailureKind.CONNECT, f"proxy {masked} {what}", proxy=masked)


def _through_proxy(failure: UpstreamFailure, proxy: str | None) -> UpstreamFailure:
    """The same failure, its message saying which proxy the request went through (the failure is
    not the proxy's: `failure.proxy` stays None)."""
    if proxy is None:
        return failure
    return UpstreamFailure(
        failure.kind,
        f"{failure.detail} (through proxy {mask_proxy(proxy)})",
        status=failure.status,
        retry_after=failure.retry_after,
    )


_PROXY_AUTH_REFUSED = "rejected the proxy credentials (407 Proxy Authentication Required)"


def _tunnel_refused(status: int) -> str:
    if status == 407:
        return _PROXY_AUTH_REFUSED
    return f"refused to open a tunnel to the upstream (CONNECT answered {status})"


# --- curl_cffi ---------------------------------------------------------------------------------------
# libcurl's multi interface through curl_cffi's low-level `Curl` and `AsyncCurl`, not its `AsyncSession`:
# the session's streaming call returns only at the first body byte and cannot be aborted before it.
# With our own header callback the status is known when the headers arrive, and `remove_handle` stops a
# transfer at any moment, also while the upstream is silent. Connections are still reused: libcurl keeps
# them in the multi handle's cache.

_END = object()


# CURLINFO_PROXY_ERROR (CURLproxycode, curl.h) values that say what a SOCKS proxy did.
_CURLPX_CLOSED = 3
_CURLPX_AUTH = {12, 14, 28, 33}  # NO_AUTH, RECV_AUTH, SEND_AUTH, USER_REJECTED
# The REPLY_* codes (the proxy's answer to its CONNECT), REQUEST_FAILED, RESOLVE_HOST:
_CURLPX_UNREACHABLE = {17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27}


def _curl_failure(
    exc: BaseException,
    *,
    proxy: str | None = None,
    connect_code: int = 0,
    proxy_error: int = 0,
    before_answer: bool = False,
) -> UpstreamFailure:
    """A libcurl error as a failure. `connect_code` is the proxy's answer to CONNECT (0: none),
    `proxy_error` libcurl's CURLINFO_PROXY_ERROR, `before_answer` whether no status came yet."""
    code = getattr(exc, "code", None)
    if proxy is not None:
        if connect_code and connect_code != 200:
            # The proxy answered CONNECT with an error (libcurl 8 reports it as error 7 or 56).
            return proxy_failure(proxy, _tunnel_refused(connect_code) + f" (curl error {code})")
        if code == 5:
            return proxy_failure(proxy, "could not be resolved (curl error 5)")
        if code == 7:
            return proxy_failure(proxy, "refused the connection or cannot be reached (curl error 7)")
        if code == 28 and before_answer and connect_code != 200:  # 200: the tunnel was up
            return proxy_failure(proxy, "did not answer in time (curl error 28)")
        if code == 97:
            if proxy_error in _CURLPX_AUTH:
                return proxy_failure(proxy, f"rejected the proxy credentials (curl error 97/{proxy_error})")
            if proxy_error in _CURLPX_UNREACHABLE:
                return proxy_failure(proxy, f"could not reach the upstream (curl error 97/{proxy_error})")
            if proxy_error == _CURLPX_CLOSED:
                return proxy_failure(proxy, "closed the connection during its handshake (curl error 97/3)")
            return proxy_failure(proxy, f"failed its handshake (curl error 97/{proxy_error})")
        if code == 35 and connect_code == 0 and proxy.startswith("https:"):
            return proxy_failure(proxy, "failed the TLS handshake with the proxy (curl error 35)")
        if code in (52, 56) and before_answer and connect_code == 0 and not proxy.startswith("socks"):
            # No tunnel was up: an HTTP proxy forwarding the request (or answering CONNECT) hung up.
            # Through a tunnel or SOCKS the same error would be the upstream's.
            return proxy_failure(proxy, f"closed the connection without an answer (curl error {code})")
        return _through_proxy(_curl_failure(exc, before_answer=before_answer), proxy)
    # libcurl codes: 5/6/7 resolve or connect, 35/60 TLS, 28 time-out, 18/52/56/92 a transfer cut short.
    if code in (5, 6, 7, 35, 60):
        return UpstreamFailure(FailureKind.CONNECT, f"could not connect (curl error {code})")
    if code == 28:
        # Only CONNECTTIMEOUT is set, so a curl time-out is a connect time-out (the first-byte and
        # idle time-outs are ours): a connect failure, as requests' ConnectTimeout is.
        if before_answer:
            return UpstreamFailure(FailureKind.CONNECT, "connect timed out (curl error 28)")
        return UpstreamFailure(FailureKind.TIMEOUT, "timed out (curl error 28)")
    if code in (16, 18, 52, 55, 56, 92):
        return UpstreamFailure(FailureKind.CUT_OFF, f"answer cut off before it completed (curl error {code})")
    return UpstreamFailure(FailureKind.CONNECT, f"transport error (curl error {code})")


class _CurlStream:
    def __init__(self, acurl: Any, curl: Any, proxy: str | None = None) -> None:
        self._acurl = acurl
        self._curl = curl
        self._proxy = proxy
        self._connect_code = 0
        self._proxy_error = 0
        # Pieces as curl hands them over; `read` takes all that is there at once, so a reader that
        # falls behind catches up in one step instead of one wake-up per network read.
        self._chunks: deque[bytes] = deque()
        self._end: Any = None  # _END, or the exception that ended the transfer
        self._waiter: asyncio.Future[None] | None = None
        self._headers_done = asyncio.Event()
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.set_cookies: list[str] = []
        self._header_lines: dict[str, str] = {}
        self._cookie_lines: list[str] = []
        self._future: asyncio.Future[Any] | None = None
        self._closed = False

    # Both callbacks run on the event loop thread, inside curl_multi_socket_action.
    def on_header(self, line: bytes) -> int:
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self._header_lines = {}
            self._cookie_lines = []
        elif line in (b"\r\n", b"\n"):
            if self.status >= 200:  # not after a 1xx interim answer
                self.headers = self._header_lines
                self.set_cookies = self._cookie_lines
                self._headers_done.set()
        else:
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                name = name.strip().lower()
                self._header_lines[name] = value.strip()
                if name == "set-cookie":
                    self._cookie_lines.append(value.strip())
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
            if self._proxy is not None and self._curl is not None:
                from curl_cffi import CurlInfo

                with contextlib.suppress(Exception):
                    self._connect_code = int(self._curl.getinfo(CurlInfo.HTTP_CONNECTCODE))
                    self._proxy_error = int(self._curl.getinfo(CurlInfo.PROXY_ERROR))
        self._wake()
        self._headers_done.set()
        self._cleanup()

    def _cleanup(self) -> None:
        curl, self._curl = self._curl, None
        if curl is not None:
            curl.close()

    def _failure(self, exc: BaseException, *, before_answer: bool) -> UpstreamFailure:
        return _curl_failure(
            exc,
            proxy=self._proxy,
            connect_code=self._connect_code,
            proxy_error=self._proxy_error,
            before_answer=before_answer,
        )

    async def wait_for_headers(self) -> None:
        await self._headers_done.wait()
        if self.status == 0:  # the transfer ended before any answer: a connect error
            item = self._end
            if isinstance(item, BaseException):
                raise self._failure(item, before_answer=True)
            raise _through_proxy(
                UpstreamFailure(FailureKind.CONNECT, "no answer from the upstream"), self._proxy
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
            raise self._failure(self._end, before_answer=False)
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

    def _build(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        method: str,
        proxy: str | None,
    ) -> _CurlStream:
        from curl_cffi import CurlOpt

        curl = _http_curl_class()()
        stream = _CurlStream(self._acurl, curl, proxy)
        # The impersonation's default headers include its browser's User-Agent; a User-Agent in
        # `headers` replaces it (curl-impersonate lets HTTPHEADER override a default header by name).
        curl.impersonate(self._impersonate, default_headers=True)
        # The impersonation's Accept-Encoding header asks for compressed bodies, but only this option
        # has libcurl decode them (curl_cffi's Session sets it too). The header stays the browser's.
        curl.setopt(CurlOpt.ACCEPT_ENCODING, b"gzip, deflate, br, zstd")
        curl.setopt(CurlOpt.URL, url)
        if method == "GET":
            curl.setopt(CurlOpt.HTTPGET, 1)
        else:
            data = body or b""
            curl.setopt(CurlOpt.POSTFIELDS, data)
            curl.setopt(CurlOpt.POSTFIELDSIZE, len(data))
        curl.setopt(CurlOpt.HTTPHEADER, [f"{k}: {v}".encode() for k, v in headers.items()] + [b"Expect:"])
        curl.setopt(CurlOpt.HEADERFUNCTION, stream.on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, stream.on_body)
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, int(timeouts.connect * 1000))
        curl.setopt(CurlOpt.NOSIGNAL, 1)
        # The proxy's answer to CONNECT never reaches the header callback, which would take its
        # "200 Connection established" for the upstream's answer.
        curl.setopt(CurlOpt.SUPPRESS_CONNECT_HEADERS, 1)
        if proxy is not None:
            # libcurl takes user:password from the URL (percent-decoded) and sends them as Basic
            # Proxy-Authorization (HTTP proxies) or SOCKS5 user/password authentication.
            curl.setopt(CurlOpt.PROXY, proxy)
            # A set proxy is used for every host, whatever NO_PROXY in the environment says.
            curl.setopt(CurlOpt.NOPROXY, "")
            # A connection (or tunnel) opened with one proxy user is never reused for another.
            curl.setopt(CurlOpt.PROXY_CREDENTIAL_NO_REUSE, 1)
            if url.startswith("https:") and not proxy.startswith("socks"):
                curl.setopt(CurlOpt.HTTPPROXYTUNNEL, 1)
        # No cookie engine is enabled, so nothing one account's answer sets reaches another's request.
        return stream

    async def open(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        *,
        method: str = "POST",
        proxy: str | None = None,
    ) -> UpstreamStream:
        _check_method(method, body)
        stream = self._build(url, headers, body, timeouts, method, proxy)
        stream.start()
        try:
            async with asyncio.timeout(timeouts.first_byte):
                await stream.wait_for_headers()
        except TimeoutError:
            stream.abort()
            raise _through_proxy(
                UpstreamFailure(FailureKind.TIMEOUT, "no answer before the first-byte time-out"), proxy
            ) from None
        except BaseException:
            stream.abort()
            raise
        if proxy is not None and stream.status == 407:  # an HTTP proxy forwarding a plain-http request
            stream.abort()
            raise proxy_failure(proxy, _PROXY_AUTH_REFUSED)
        return stream

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._acurl.close()


# --- cloudscraper ---------------------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: causes, contexts, urllib3's `reason`, exceptions in args."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 32:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
        stack.extend(x for x in linked if isinstance(x, BaseException))


_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")


def _raised_in(exc: BaseException, function: str) -> bool:
    """Whether `function` (e.g. http.client's `_tunnel`) is on the traceback of `exc`."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def _requests_proxy_failure(exc: BaseException, proxy: str, forwarded: bool) -> UpstreamFailure | None:
    """The failure when `exc` says the proxy could not be used; None when it is about the upstream.

    `forwarded`: the request went to an HTTP proxy in absolute form (a plain-http upstream), so the
    proxy is all that was connected to before the answer."""
    import requests
    import urllib3.exceptions

    chain = list(_causes(exc))
    if isinstance(exc, requests.exceptions.InvalidSchema) and "socks" in str(exc).lower():
        return proxy_failure(proxy, "cannot be used: SOCKS support is missing (pip install PySocks)")
    socks_errors = [e for e in chain if type(e).__module__ == "socks"]
    names = {type(e).__name__ for e in socks_errors}
    # urllib3's NewConnectionError (a refused connection, a name not resolved) is a subclass of
    # ConnectTimeoutError: not a time-out.
    timed_out = any(
        isinstance(e, (TimeoutError, urllib3.exceptions.ConnectTimeoutError))
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    )
    unresolved = any(isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for e in chain)
    if socks_errors:
        if "SOCKS5AuthError" in names:
            return proxy_failure(proxy, "rejected the proxy credentials (SOCKS5 authentication failed)")
        if "SOCKS5Error" in names:
            # PySocks' text for the reply code, e.g. "0x05: Connection refused".
            reply = next(str(e.msg) for e in socks_errors if type(e).__name__ == "SOCKS5Error")  # type: ignore[attr-defined]
            return proxy_failure(proxy, f"could not reach the upstream (SOCKS5 reply {reply})")
        if unresolved:
            return proxy_failure(proxy, "failed: a host name could not be resolved")
        if timed_out:
            return proxy_failure(proxy, "did not answer in time")
        if "ProxyConnectionError" in names:
            return proxy_failure(proxy, "refused the connection or cannot be reached")
        return proxy_failure(proxy, "failed its handshake (SOCKS)")
    tunnel = next((m for e in chain if (m := _TUNNEL_STATUS.search(str(e)))), None)
    if tunnel is not None:
        return proxy_failure(proxy, _tunnel_refused(int(tunnel.group(1))))
    hung_up = any(isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError)) for e in chain)
    if hung_up and any(_raised_in(e, "_tunnel") for e in chain):
        return proxy_failure(proxy, "closed the connection without an answer (to CONNECT)")
    is_proxy_error = isinstance(exc, requests.exceptions.ProxyError) or any(
        isinstance(e, urllib3.exceptions.ProxyError) for e in chain
    )
    if is_proxy_error or isinstance(exc, requests.exceptions.ConnectTimeout):
        # Only the proxy is connected to: any connect failure is the proxy's.
        if unresolved:
            return proxy_failure(proxy, "could not be resolved")
        if timed_out:
            return proxy_failure(proxy, "did not answer in time")
        if hung_up:
            return proxy_failure(proxy, "closed the connection without an answer")
        return proxy_failure(proxy, "refused the connection or cannot be reached")
    if (
        forwarded
        and isinstance(exc, requests.exceptions.ConnectionError)
        and not isinstance(exc, requests.exceptions.Timeout)
        and "Read timed out" not in str(exc)
    ):
        return proxy_failure(proxy, "closed the connection without an answer")
    return None


def _requests_failure(
    exc: BaseException, proxy: str | None = None, *, forwarded: bool = False
) -> UpstreamFailure:
    """`forwarded`: see `_requests_proxy_failure`; only for a failure before the answer."""
    import requests
    import urllib3.exceptions

    if proxy is not None:
        failure = _requests_proxy_failure(exc, proxy, forwarded)
        return failure if failure is not None else _through_proxy(_requests_failure(exc), proxy)
    name = type(exc).__name__
    if name == "CloudflareCode1020":  # cloudscraper's name for Cloudflare's firewall block page
        return UpstreamFailure(
            FailureKind.CLOUDFLARE_BLOCKED, "blocked by Cloudflare's firewall (error 1020, not a challenge)"
        )
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


def _response_set_cookies(response: Any) -> list[str]:
    """Every Set-Cookie value (requests' `headers` joins repeats with ", ", which dates contain)."""
    raw_headers = getattr(response.raw, "headers", None)
    getlist = getattr(raw_headers, "getlist", None)
    if getlist is None:
        return []
    return [str(value) for value in getlist("Set-Cookie")]


class _ScraperStream:
    def __init__(self, transport: CloudscraperTransport, response: Any, proxy: str | None = None) -> None:
        self._transport = transport
        self._response = response
        self._proxy = proxy
        self.status: int = int(response.status_code)
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.items()}
        self.set_cookies: list[str] = _response_set_cookies(response)
        # cloudscraper reads the whole body of a Cloudflare-served 403/429/503 (response.text) to look
        # for its challenges before handing the response back; that body is then here, not in `raw`.
        content = getattr(response, "_content", None)
        consumed = getattr(response, "_content_consumed", False) is True and isinstance(content, bytes)
        self._read_already: bytes | None = content if consumed else None
        self._closed = threading.Event()
        self._released = False

    def ready(self) -> bool:
        # Otherwise a read always takes a trip through the thread pool.
        return self._closed.is_set() or self._read_already is not None

    def _read_blocking(self) -> bytes:
        if self._closed.is_set():
            return b""
        raw = self._response.raw
        # read1 returns what one read of the socket gives (a whole HTTP chunk at most) instead of
        # waiting for READ_SIZE bytes, so pieces reach the client as they arrive. requests opens the
        # response with decode_content=False; a gzip/deflate body (the browser headers ask for one)
        # is decoded here, as libcurl does with CURLOPT_ACCEPT_ENCODING.
        return bytes(raw.read1(READ_SIZE, decode_content=True))

    async def read(self) -> bytes:
        if self._closed.is_set():
            return b""
        if self._read_already is not None:
            data, self._read_already = self._read_already, None
            if not data:
                self._closed.set()
            else:
                self._read_already = b""
            return data
        try:
            piece: bytes = await self._transport.run(self._read_blocking)
            return piece
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._closed.is_set():
                return b""
            raise _requests_failure(exc, self._proxy) from None

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


@functools.cache
def _scraper_class() -> Any:
    import cloudscraper

    class Scraper(cloudscraper.CloudScraper):  # type: ignore[misc]
        # cloudscraper's request() stores the `proxies` of a request on the session, and requests
        # applies a session's proxies to every later request that names none: one account's proxy
        # would carry the next account's traffic. This session never holds any.
        @property
        def proxies(self) -> dict[str, str]:
            return {}

        @proxies.setter
        def proxies(self, value: Any) -> None:
            pass

    return Scraper


class CloudscraperTransport:
    name = "cloudscraper"

    def __init__(self, threads: int, slot_wait: float = 5.0) -> None:
        self._scraper: Any = _scraper_class().create_scraper(
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

    def _open_blocking(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        method: str,
        proxy: str | None,
    ) -> Any:
        # Request headers win over the session's, case-insensitively: a User-Agent given here
        # replaces cloudscraper's browser one.
        return self._scraper.request(
            method,
            url,
            headers=headers,
            data=body,
            stream=True,
            allow_redirects=False,
            # requests takes user:password from the URL (percent-decoded): Basic Proxy-Authorization
            # for HTTP proxies, SOCKS5 user/password authentication (PySocks) for socks5/socks5h.
            proxies=None if proxy is None else {"http": proxy, "https": proxy},
            # The read time-out is the socket's: it bounds the wait for headers and every body read.
            timeout=(timeouts.connect, max(timeouts.first_byte, timeouts.idle)),
        )

    async def open(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        *,
        method: str = "POST",
        proxy: str | None = None,
    ) -> UpstreamStream:
        _check_method(method, body)
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
                    self._executor, self._open_blocking, url, dict(headers), body, timeouts, method, proxy
                )
                try:
                    response = await asyncio.shield(future)
                except asyncio.CancelledError:
                    # The thread goes on; close its response when it comes so nothing leaks.
                    future.add_done_callback(_close_late_response)
                    raise
        except TimeoutError:
            self._slots.release()
            raise _through_proxy(
                UpstreamFailure(FailureKind.TIMEOUT, "no answer before the first-byte time-out"), proxy
            ) from None
        except asyncio.CancelledError:
            self._slots.release()
            raise
        except BaseException as exc:
            self._slots.release()
            forwarded = proxy is not None and url.startswith("http:") and not proxy.startswith("socks")
            raise _requests_failure(exc, proxy, forwarded=forwarded) from None
        stream = _ScraperStream(self, response, proxy)
        if proxy is not None and stream.status == 407:  # an HTTP proxy forwarding a plain-http request
            await stream.aclose()
            raise proxy_failure(proxy, _PROXY_AUTH_REFUSED)
        return stream

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
