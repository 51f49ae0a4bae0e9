"""The HTTP/1.1 server side of `python main.py`, bounded for serving clients directly (no nginx in front).

uvicorn's httptools protocol with four limits added: the request head (request line and headers) is at
most `MAX_HEADER_BYTES` (431 beyond), it must arrive within `HEADER_TIMEOUT` (then the connection is
closed), an idle keep-alive connection closes after `KEEPALIVE_TIMEOUT` (uvicorn's own timer), and past
`MAX_CONNECTIONS` open connections a new one gets a 503 at once, before it has sent anything.

Deliberate choices (read before changing):
- The head is counted by feeding the parser at most the bytes still allowed, so nothing past the limit
  is ever buffered (httptools itself has no limit: it concatenates header values without bound). The
  parser does not say where in a read one request ends, so a pipelined head that starts in the same
  slice as the end of the request before it is counted from the slice's start: slices are 1/16 of
  the limit (at least 512 bytes), and that is the only overcount.
- The head timer runs from the connection's opening, and on a kept-alive connection from the first byte
  after the previous request, to the end of the head (as nginx's `client_header_timeout`); the idle
  time between requests is the keep-alive timeout's. A connection that never completes a head thus
  lives at most `KEEPALIVE_TIMEOUT + HEADER_TIMEOUT`.
- The connection cap answers before reading: waiting for a head would let the refused hold a socket
  for the head timeout. The refused connection is half-closed after the 503 and dropped once the
  client closes, or after `REFUSAL_LINGER` seconds, so the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.config import Settings

log = logging.getLogger("gptomni2api.serving")

# File descriptors kept back from the client connections: the listening sockets, the event loop,
# log and credential files, the metrics files of the workers, DNS and the transports' thread pools.
RESERVED_FDS = 128
# The soft RLIMIT_NOFILE is raised to the hard limit, up to this many (a 1,024 default cannot hold
# the 1,000 streams of the benchmark with their upstream sockets).
FD_LIMIT_TARGET = 65536
# Per connection, at worst: the head being parsed, about twice (a copy while httptools joins the
# pieces of a header), plus the connection's objects and buffers.
CONNECTION_OVERHEAD = 16 * 1024
# The share of the memory limit that client connections may take at worst.
MEMORY_SHARE = 0.5
# The parser is fed at most 1/SLICES_PER_HEAD of MAX_HEADER_BYTES at a time, and at least MIN_SLICE
# bytes (see the docstring): small enough to bound the overcount, large enough for bodies to flow.
SLICES_PER_HEAD = 16
MIN_SLICE = 512
# A refused connection stays open this long at most, for its client to read the answer, and reads
# (and drops) at most this much of what the client still sends.
REFUSAL_LINGER = 1.0
LINGER_BYTES = 1024 * 1024
# Seconds between two log lines about the same kind of refusal.
LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Limits:
    """What the protocol enforces; built from the settings by `server_options`."""

    max_header_bytes: int
    header_timeout: float
    max_connections: int


class HardenedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded, timed request head and a cap on connections."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.head_timer: asyncio.TimerHandle | None = None
        self.awaiting_request = True  # between requests: the next byte may start a head
        self.in_head = False  # a head has begun and is not complete yet
        self.head_bytes = 0
        self.slice = max(MIN_SLICE, limits.max_header_bytes // SLICES_PER_HEAD)

    # --- connection -----------------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        if len(self.connections) >= self.limits.max_connections:
            refuse_connection(transport, self.loop, self.server_state.default_headers)
            refusals.note(
                "connection limit (%d) reached: new connections get 503", self.limits.max_connections
            )
            return
        super().connection_made(transport)
        self.arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.awaiting_request and self.head_timer is None:
            self.arm_head_timer()
        view = memoryview(data)
        start = 0
        while start < len(view):
            step = self.slice
            if self.in_head:
                step = min(step, self.limits.max_header_bytes - self.head_bytes)
            chunk = view[start : start + step]
            start += len(chunk)
            if not self.feed(chunk):
                return
            if self.in_head:
                self.head_bytes += len(chunk)
                if self.head_bytes >= self.limits.max_header_bytes:
                    self.head_too_large()
                    return

    def feed(self, chunk: memoryview) -> bool:
        """Parse `chunk`, as uvicorn's `data_received` would; False when the rest must not be parsed."""
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.awaiting_request = False
        self.in_head = True
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.awaiting_request = True
        super().on_message_complete()

    # --- limits ---------------------------------------------------------------------------------

    def arm_head_timer(self) -> None:
        self.cancel_head_timer()
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timed_out)

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def responding(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.in_head:
            if self.responding():
                # Only line breaks after a request body, while its answer streams: not a head.
                return
            self.transport.close()  # nothing of a request arrived: close quietly, like the keep-alive timer
            return
        timeouts.note(
            "request heads not received within %g s: connections closed", self.limits.header_timeout
        )
        message = f"The request head was not received within {self.limits.header_timeout:g} seconds."
        self.refuse(408, error_body(message, "invalid_request_error", "request_timeout"))

    def head_too_large(self) -> None:
        too_large.note("request heads over %d bytes: 431", self.limits.max_header_bytes)
        message = (
            f"The request line and headers are larger than {self.limits.max_header_bytes} bytes "
            "(MAX_HEADER_BYTES)."
        )
        self.refuse(431, error_body(message, "invalid_request_error", "request_header_fields_too_large"))

    def refuse(self, status: int, body: bytes) -> None:
        """Answer `status` and close; in the middle of another answer, just cut the connection."""
        self.cancel_head_timer()
        if self.responding():
            self.transport.abort()
            return
        # From here the connection is no longer uvicorn's: it is not counted, and its timers are off.
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        self.flow.resume_reading()
        answer_and_linger(
            self.transport, self.loop, response_bytes(status, body, self.server_state.default_headers)
        )


@dataclass(frozen=True)
class HardenedHttpFactory:
    """What uvicorn calls to make each connection's protocol (its `http` option).

    A module-level dataclass, so it pickles into the worker processes that `WORKERS=N` spawns."""

    limits: Limits

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> HardenedHttpProtocol:
        return HardenedHttpProtocol(config, server_state, app_state, _loop, limits=self.limits)


class Lingering(asyncio.Protocol):
    """A refused connection after its answer (half-closed): what the client still sends is read and
    dropped, so that closing does not reset the connection before the client has read the answer.
    Closed when the client closes, after `REFUSAL_LINGER` seconds, or past `LINGER_BYTES`."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.dropped = 0
        self.timer = loop.call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


def answer_and_linger(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, answer: bytes) -> None:
    transport.set_protocol(Lingering(transport, loop))
    transport.write(answer)
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


def refuse_connection(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, default_headers: list[tuple[bytes, bytes]]
) -> None:
    body = error_body(
        "The server is at its connection limit (MAX_CONNECTIONS); retry shortly.",
        "server_error",
        "too_many_connections",
    )
    answer_and_linger(transport, loop, response_bytes(503, body, [*default_headers, (b"retry-after", b"1")]))


def error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def response_bytes(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [STATUS_LINE[status]]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


class RateLimitedLog:
    """A warning per kind of refusal at most every `LOG_INTERVAL`, with the count since the previous
    one: an attack must not flood the log."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.count = 0

    def note(self, message: str, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if self.last is None:
            log.warning(message + " (more are counted and logged every %g s at most)", *args, LOG_INTERVAL)
        elif now - self.last >= LOG_INTERVAL:
            log.warning(message + " (%d in the last %.0f s)", *args, self.count, now - self.last)
        else:
            return
        self.last = now
        self.count = 0


refusals = RateLimitedLog()
timeouts = RateLimitedLog()
too_large = RateLimitedLog()


# --- sizing ----------------------------------------------------------------------------------------


def raise_fd_limit(target: int = FD_LIMIT_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most `target`); the soft limit after.

    Worker processes inherit it. A soft limit already above `target` is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


def memory_limit() -> int | None:
    """Bytes this process may use: the cgroup's limit (a container) or the machine's memory."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    with contextlib.suppress(ValueError, OSError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(limits) if limits else None


def default_max_connections(
    *, max_header_bytes: int = 64 * 1024, fd_limit: int | None = None, memory: int | None = None
) -> int:
    """The connection cap of one process when `MAX_CONNECTIONS` is unset.

    min((fd limit - RESERVED_FDS) // 2, MEMORY_SHARE * memory // (2 * MAX_HEADER_BYTES + 16 KiB)):
    each client connection may hold an upstream socket while it streams, so half the free descriptors;
    and every connection stuck mid-head must fit in half the memory. `fd_limit` and `memory` default
    to the process's soft RLIMIT_NOFILE and `memory_limit()`."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fd_limit == resource.RLIM_INFINITY:
            fd_limit = 1 << 20
    cap = (fd_limit - RESERVED_FDS) // 2
    if memory is None:
        memory = memory_limit()
    if memory is not None:
        cap = min(cap, int(memory * MEMORY_SHARE) // (2 * max_header_bytes + CONNECTION_OVERHEAD))
    return max(1, cap)


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that enforce the limits above.

    Raises the soft fd limit first (see `raise_fd_limit`), then sizes the default cap from it."""
    raise_fd_limit()
    max_connections = settings.max_connections or default_max_connections(
        max_header_bytes=settings.max_header_bytes
    )
    limits = Limits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        max_connections=max_connections,
    )
    log.info(
        "client connections: at most %d per process%s; request heads: %d bytes within %g s; "
        "idle keep-alive: %g s",
        max_connections,
        "" if settings.max_connections else " (MAX_CONNECTIONS unset: sized from the fd limit and memory)",
        settings.max_header_bytes,
        settings.header_timeout,
        settings.keepalive_timeout,
    )
    return {
        "http": HardenedHttpFactory(limits),
        "timeout_keep_alive": settings.keepalive_timeout,
        # uvicorn's own limit answers 503 only once a whole head arrived: the cap above replaces it.
        "limit_concurrency": None,
    }
