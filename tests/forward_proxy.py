"""A loopback forward proxy for the gateway's egress tests: HTTP (absolute-URI and CONNECT) and SOCKS5 on
one port. Stdlib only (asyncio); hand-written, so what it does to the bytes is known exactly.

CLI: python tests/forward_proxy.py [--host 127.0.0.1] --port 0 [--user U --password P] [--refuse]
     Prints exactly one line "PROXY_LISTENING <host>:<port>" once listening; exits 0 on SIGTERM/SIGINT.
     Import: `ForwardProxy(user, password, refuse)` (start/close/port), `serve(...)`, `main(argv)`.

Every connection: the first byte 0x05 makes it SOCKS5, anything else HTTP/1.1.

HTTP, absolute-URI (`POST http://127.0.0.1:8000/api/chatWithText HTTP/1.1`): forwarded in origin-form to
  the authority's host:port (port 80 by default; only http:// here, https goes through CONNECT).
  Request: hop-by-hop headers dropped (Connection and the headers it names, Keep-Alive,
  Proxy-Connection, Proxy-Authorization, TE, Trailer, Upgrade, Expect), `Via: 1.1 forward-proxy` added,
  Host added when missing; the body is relayed with its own framing (Content-Length or chunked, bytes
  untouched). `Expect: 100-continue` is answered by the proxy itself.
  Response: status line and headers as they came (several Set-Cookie stay several lines) minus the
  hop-by-hop ones; the body is relayed with its own framing AS IT ARRIVES: every read from upstream is
  written and drained at once, so chunked answers pass piece by piece. An upstream that cuts the body
  short gets the client's connection cut the same way (FIN for FIN, RST for RST); a client that goes
  away (also while the upstream is silent) closes the upstream connection at once.
  Keep-alive on both sides: the client connection serves request after request; one upstream
  connection per client connection is kept while the target stays the same and the upstream allows it
  (a reused connection found dead before any answer byte is retried once on a fresh one).
  Upstream unreachable -> 502 Bad Gateway (504 when the connect times out, 10 s), text/plain body
  naming "forward-proxy" and the target.
HTTP CONNECT host:port: "HTTP/1.1 200 Connection Established", then a blind byte tunnel (https, or http
  for clients that tunnel it); each direction is half-closed on EOF, a reset on one side aborts both.
  Unreachable -> 502/504 and close.
Proxy auth (--user/--password): HTTP requests and CONNECT need `Proxy-Authorization: Basic
  base64(U:P)`; missing or wrong -> 407 with `Proxy-Authenticate: Basic realm="forward-proxy"` (the
  connection stays open when the request's body could be read, else it closes). SOCKS5 then offers only
  username/password (RFC 1929): a client without it gets method 0xFF, a wrong pair status 0x01; both close.
  Without --user, SOCKS5 takes "no auth" (or username/password with any pair, if that is all offered).
SOCKS5 (RFC 1928): CONNECT only (other commands: reply 0x07); address types IPv4, domain name, IPv6
  (others: 0x08). Failures: refused 0x05, network unreachable 0x03, host unreachable or unresolvable or
  timed out 0x04, anything else 0x01. Success replies with the bound address of the upstream socket.
--refuse: accept, then close every connection at once without reading (a proxy that refuses). Nothing
  is served then, not even the stats.

Not proxied (origin-form requests to the proxy itself, no auth needed):
  GET /_proxy/stats -> {"requests": forwarded HTTP requests, "connects": CONNECT tunnels opened or
    tried, "socks": SOCKS5 CONNECTs tried, "targets": ["host:port", ... the last 200, oldest first, one
    per forwarded request, CONNECT or SOCKS5 CONNECT], "by_cookie": {Cookie header of forwarded HTTP
    requests ("" without one): count} (tunnels record only their target), plus (extra) "by_target"
    {host:port: count}, "by_user_agent" {User-Agent of forwarded HTTP requests: count}, "auth_failures",
    "connect_failures" (upstream connects that failed), "connections" (open now), "connections_total"}
  POST /_proxy/reset -> {"ok": true}: zeroes everything but the live "connections" gauge.
  GET /_proxy/health -> {"ok": true}; any other origin-form request -> 404 JSON.
IPv6 targets are written "[addr]:port".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import errno
import http
import ipaddress
import json
import secrets
import signal
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

REALM = "forward-proxy"
VIA = "1.1 forward-proxy"
CONNECT_TIMEOUT = 10.0

_READ_SIZE = 64 * 1024
_MAX_HEAD = 64 * 1024
_MAX_LINE = 8 * 1024
_MAX_BODY = 64 * 1024 * 1024
_MAX_PIPELINED = 1024 * 1024
_TARGETS = 200
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)

_SOCKS_VERSION = 5
_SOCKS_AUTH_VERSION = 1
_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_METHOD = 0xFF
_CMD_CONNECT = 0x01
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04
_REP_OK = 0x00
_REP_FAILURE = 0x01
_REP_NET_UNREACHABLE = 0x03
_REP_HOST_UNREACHABLE = 0x04
_REP_REFUSED = 0x05
_REP_COMMAND = 0x07
_REP_ATYP = 0x08


class _Closed(Exception):
    """The peer closed the connection (EOF)."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UpstreamEnded(Exception):
    """The upstream connection ended before its answer was complete."""

    def __init__(self, reset: bool) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


class _ClientGone(Exception):
    """Writing to the client failed."""


# --- buffered stream ---------------------------------------------------------------------------


class _Stream:
    """Buffered reads and plain writes over one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.reader.read(_READ_SIZE)
        if not data:
            raise _Closed
        self.buf += data

    async def read_until(self, sep: bytes, limit: int, what: str) -> bytes:
        start = 0
        while True:
            index = self.buf.find(sep, start)
            if index >= 0:
                data = bytes(self.buf[:index])
                del self.buf[: index + len(sep)]
                return data
            if len(self.buf) > limit:
                raise _BadRequest(431 if what == "head" else 400, f"{what} too long")
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._fill()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_some(self, limit: int = _READ_SIZE) -> bytes:
        """What is buffered, else the next read; at most `limit` bytes. Raises _Closed at EOF."""
        if not self.buf:
            await self._fill()
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def take_buffer(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def has_more(self) -> bool:
        """Skip stray CRLFs between requests; False when the peer closed cleanly."""
        while True:
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            if self.buf:
                return True
            try:
                await self._fill()
            except (_Closed, ConnectionError, OSError):
                return False

    async def send(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            raise ConnectionResetError("closing")
        self.writer.write(data)
        await self.writer.drain()

    async def wait_gone(self) -> None:
        """Return once the peer closes or resets; bytes it sends meanwhile stay buffered."""
        try:
            while len(self.buf) < _MAX_PIPELINED:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    return
                self.buf += data
        except (ConnectionError, OSError):
            return
        await asyncio.get_running_loop().create_future()

    async def flush(self, seconds: float = 2.0) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.set_write_buffer_limits(high=0)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(seconds):
                await self.writer.drain()

    def close(self, *, reset: bool = False) -> None:
        transport = self.writer.transport
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        else:
            transport.close()


# --- HTTP heads --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Head:
    """A request or status line and its header lines, in order and as spelled."""

    start: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        values = [value for key, value in self.headers if key.lower() == lowered]
        if not values:
            return None
        return ("; " if lowered == "cookie" else ", ").join(values)

    def tokens(self, name: str) -> set[str]:
        value = self.get(name) or ""
        return {token.strip().lower() for token in value.split(",") if token.strip()}

    def encode(self) -> bytes:
        lines = [self.start, *(f"{key}: {value}" for key, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "bad header line")
        headers.append((name, value.strip()))
    return Head(lines[0], headers)


def _text(header_value: str) -> str:
    """A header value read as latin-1 (which round-trips bytes), shown as UTF-8 when it is that."""
    raw = header_value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return header_value


def without_hop_by_hop(head: Head) -> list[tuple[str, str]]:
    drop = _HOP_BY_HOP | head.tokens("connection")
    return [(key, value) for key, value in head.headers if key.lower() not in drop]


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or (with a default port) "host"."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep:
            raise ValueError("bad IPv6 authority")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError("bad authority")
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    if not port_text:
        if default_port is None:
            raise ValueError("port required")
        return host, default_port
    port = int(port_text)
    if not host or not 0 < port < 65536:
        raise ValueError("bad authority")
    return host, port


def format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    close: bool,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    headers = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    if close:
        headers.append(("Connection", "close"))
    return Head(f"HTTP/1.1 {status} {_reason(status)}", headers).encode() + body


def _text_response(status: int, text: str, *, close: bool, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    return _response(status, text.encode() + b"\n", "text/plain; charset=utf-8", close=close, extra=extra)


def _json_response(status: int, obj: object, *, close: bool) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _response(status, body, "application/json", close=close)


async def _read_body(stream: _Stream, head: Head) -> bytes:
    """The message body exactly as framed on the wire (chunk lines included)."""
    if "transfer-encoding" in {key.lower() for key, _ in head.headers}:
        if head.tokens("transfer-encoding") != {"chunked"}:
            raise _BadRequest(501, "unsupported transfer-encoding")
        raw = bytearray()
        while True:
            line = await stream.read_until(b"\r\n", _MAX_LINE, "chunk size line")
            raw += line + b"\r\n"
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size < 0 or len(raw) + size > _MAX_BODY:
                raise _BadRequest(413, "body too large")
            if size == 0:
                while True:
                    trailer = await stream.read_until(b"\r\n", _MAX_LINE, "trailer")
                    raw += trailer + b"\r\n"
                    if not trailer:
                        return bytes(raw)
            raw += await stream.read_exactly(size + 2)
    length_text = head.get("content-length")
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError:
        raise _BadRequest(400, "bad content-length") from None
    if length < 0:
        raise _BadRequest(400, "bad content-length")
    if length > _MAX_BODY:
        raise _BadRequest(413, "body too large")
    return await stream.read_exactly(length)


# --- stats -------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connects = 0
        self.socks = 0
        self.targets: deque[str] = deque(maxlen=_TARGETS)
        self.by_target: dict[str, int] = {}
        self.by_cookie: dict[str, int] = {}
        self.by_user_agent: dict[str, int] = {}
        self.auth_failures = 0
        self.connect_failures = 0
        self.connections_total = 0

    def target(self, target: str) -> None:
        self.targets.append(target)
        self.by_target[target] = self.by_target.get(target, 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connects": self.connects,
            "socks": self.socks,
            "targets": list(self.targets),
            "by_cookie": self.by_cookie,
            "by_target": self.by_target,
            "by_user_agent": self.by_user_agent,
            "auth_failures": self.auth_failures,
            "connect_failures": self.connect_failures,
            "connections": self.connections,
            "connections_total": self.connections_total,
        }


# --- the proxy ---------------------------------------------------------------------------------


class _Upstream:
    """The kept upstream connection of one client connection."""

    def __init__(self, target: tuple[str, int], stream: _Stream) -> None:
        self.target = target
        self.stream = stream


class ForwardProxy:
    """The proxy server; `start()` binds, `close()` stops it and drops every connection."""

    def __init__(self, user: str | None = None, password: str | None = None, refuse: bool = False) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.user = user
        self.password = password
        self.refuse = refuse
        self.stats = Stats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("proxy not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, host, port, backlog=1024, limit=_READ_SIZE, reuse_address=True
        )
        return self.address

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing or self.refuse:
            writer.transport.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        client = _Stream(reader, writer)
        self.stats.connections += 1
        self.stats.connections_total += 1
        try:
            if await client.has_more():
                if client.buf[0] == _SOCKS_VERSION:
                    await self._socks(client)
                else:
                    await self._http(client)
        except _BadRequest as exc:
            with contextlib.suppress(ConnectionError, OSError):
                await client.send(_text_response(exc.status, exc.message, close=True))
        except (_Closed, _ClientGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # shutdown; end normally (see the emulator's note on Python 3.11's start_server)
        except Exception as exc:  # a bug here must not pass for a proxy failure silently
            sys.stderr.write(f"forward-proxy: connection handler failed: {exc!r}\n")
        finally:
            self.stats.connections -= 1
            if self._closing:
                writer.transport.abort()
            else:
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    # --- HTTP ------------------------------------------------------------------------------------

    def _authorized(self, head: Head) -> bool:
        if self.user is None or self.password is None:
            return True
        value = head.get("proxy-authorization") or ""
        scheme, _, encoded = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.user}:{self.password}".encode()
        return secrets.compare_digest(decoded, expected)

    def _challenge(self, close: bool) -> bytes:
        self.stats.auth_failures += 1
        extra = [("Proxy-Authenticate", f'Basic realm="{REALM}"')]
        return _text_response(407, "forward-proxy: proxy authentication required", close=close, extra=extra)

    async def _http(self, client: _Stream) -> None:
        upstream: _Upstream | None = None
        try:
            while await client.has_more():
                head = parse_head(await client.read_until(b"\r\n\r\n", _MAX_HEAD, "head"))
                parts = head.start.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    raise _BadRequest(400, "bad request line")
                method, target, version = parts
                connection = head.tokens("connection") | head.tokens("proxy-connection")
                keep_alive = (
                    "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
                )
                if method == "CONNECT":
                    if upstream is not None:
                        upstream.stream.close()
                        upstream = None
                    await self._connect(client, head, target)
                    return
                if target.startswith("/"):
                    await _read_body(client, head)
                    if not await self._local(client, method, target, keep_alive):
                        return
                    continue
                if not target.lower().startswith("http://"):
                    raise _BadRequest(400, "only http:// URIs are forwarded; use CONNECT for https")
                expects = head.get("expect") or ""
                if not self._authorized(head):
                    if expects.lower() == "100-continue":
                        await client.send(self._challenge(close=True))
                        return
                    await _read_body(client, head)
                    await client.send(self._challenge(close=not keep_alive))
                    if not keep_alive:
                        return
                    continue
                rest = target[len("http://") :]
                end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
                authority, path = rest[:end].rpartition("@")[2], rest[end:]
                path = path if path.startswith("/") else "/" + path
                try:
                    host, port = split_authority(authority, 80)
                except ValueError:
                    raise _BadRequest(400, "bad target authority") from None
                if expects.lower() == "100-continue":
                    await client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(client, head)
                self.stats.requests += 1
                self.stats.target(format_target(host, port))
                cookie = _text(head.get("cookie") or "")
                self.stats.by_cookie[cookie] = self.stats.by_cookie.get(cookie, 0) + 1
                user_agent = head.get("user-agent")
                if user_agent is not None:
                    user_agent = _text(user_agent)
                    self.stats.by_user_agent[user_agent] = self.stats.by_user_agent.get(user_agent, 0) + 1
                headers = without_hop_by_hop(head)
                if not any(key.lower() == "host" for key, _ in headers):
                    headers.insert(0, ("Host", authority))
                headers.append(("Via", VIA))
                outgoing = Head(f"{method} {path} {version}", headers).encode() + body
                if upstream is not None and upstream.target != (host, port):
                    upstream.stream.close()
                    upstream = None
                exchange = _Exchange(self, client, upstream, (host, port), method, outgoing, keep_alive)
                keep_going = await exchange.run()
                upstream = exchange.upstream
                if not keep_going:
                    return
        finally:
            if upstream is not None:
                upstream.stream.close()

    async def _local(self, client: _Stream, method: str, target: str, keep_alive: bool) -> bool:
        path = target.split("?", 1)[0]
        route = (method, path)
        if route == ("GET", "/_proxy/stats"):
            data = _json_response(200, self.stats.as_json(), close=not keep_alive)
        elif route == ("POST", "/_proxy/reset"):
            self.stats.reset()
            data = _json_response(200, {"ok": True}, close=not keep_alive)
        elif route == ("GET", "/_proxy/health"):
            data = _json_response(200, {"ok": True}, close=not keep_alive)
        else:
            data = _json_response(404, {"error": "not found", "path": path}, close=not keep_alive)
        await client.send(data)
        return keep_alive

    async def open(self, host: str, port: int) -> _Stream:
        """A connection to the target; counts a failure in connect_failures and re-raises it."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
        except (OSError, TimeoutError):
            self.stats.connect_failures += 1
            raise
        return _Stream(reader, writer)

    async def _connect(self, client: _Stream, head: Head, target: str) -> None:
        if not self._authorized(head):
            await client.send(self._challenge(close=True))
            return
        try:
            host, port = split_authority(target, None)
        except ValueError:
            raise _BadRequest(400, "CONNECT needs host:port") from None
        self.stats.connects += 1
        self.stats.target(format_target(host, port))
        try:
            upstream = await self.open(host, port)
        except (OSError, TimeoutError) as exc:
            await client.send(_gateway_error(exc, format_target(host, port)))
            return
        try:
            await client.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await _tunnel(client, upstream)
        finally:
            upstream.close()

    # --- SOCKS5 ----------------------------------------------------------------------------------

    async def _socks(self, client: _Stream) -> None:
        _, count = await client.read_exactly(2)
        methods = set(await client.read_exactly(count))
        if self.user is None:
            method = _NO_AUTH if _NO_AUTH in methods else _USER_PASS if _USER_PASS in methods else _NO_METHOD
        else:
            method = _USER_PASS if _USER_PASS in methods else _NO_METHOD
        await client.send(bytes([_SOCKS_VERSION, method]))
        if method == _NO_METHOD:
            self.stats.auth_failures += 1
            return
        if method == _USER_PASS:
            version, user_len = await client.read_exactly(2)
            user = await client.read_exactly(user_len)
            (password_len,) = await client.read_exactly(1)
            password = await client.read_exactly(password_len)
            ok = version == _SOCKS_AUTH_VERSION and (
                self.user is None
                or self.password is None
                or (
                    secrets.compare_digest(user, self.user.encode())
                    & secrets.compare_digest(password, self.password.encode())
                )
            )
            await client.send(bytes([_SOCKS_AUTH_VERSION, 0 if ok else 1]))
            if not ok:
                self.stats.auth_failures += 1
                return
        version, command, _, address_type = await client.read_exactly(4)
        if version != _SOCKS_VERSION:
            return
        if address_type == _ATYP_IPV4:
            host = str(ipaddress.IPv4Address(await client.read_exactly(4)))
        elif address_type == _ATYP_IPV6:
            host = str(ipaddress.IPv6Address(await client.read_exactly(16)))
        elif address_type == _ATYP_DOMAIN:
            (length,) = await client.read_exactly(1)
            host = (await client.read_exactly(length)).decode("utf-8", "replace")
        else:
            await client.send(_socks_reply(_REP_ATYP))
            return
        port = int.from_bytes(await client.read_exactly(2), "big")
        if command != _CMD_CONNECT:
            await client.send(_socks_reply(_REP_COMMAND))
            return
        self.stats.socks += 1
        self.stats.target(format_target(host, port))
        try:
            upstream = await self.open(host, port)
        except (OSError, TimeoutError) as exc:
            await client.send(_socks_reply(_socks_code(exc)))
            return
        try:
            bound = upstream.writer.get_extra_info("sockname")
            await client.send(_socks_reply(_REP_OK, str(bound[0]), int(bound[1])))
            await _tunnel(client, upstream)
        finally:
            upstream.close()


class _Exchange:
    """One forwarded request and its response, watched for the client going away."""

    def __init__(
        self,
        proxy: ForwardProxy,
        client: _Stream,
        upstream: _Upstream | None,
        target: tuple[str, int],
        method: str,
        outgoing: bytes,
        keep_alive: bool,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.target = target
        self.method = method
        self.outgoing = outgoing
        self.keep_alive = keep_alive

    async def run(self) -> bool:
        """True when the client connection can serve another request."""
        work = asyncio.ensure_future(self._exchange())
        watcher = asyncio.ensure_future(self.client.wait_gone())
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, watcher):
                task.cancel()
            await asyncio.wait((work, watcher))
        if work.cancelled():  # the client went away first
            self._drop_upstream(reset=False)
            return False
        exc = work.exception()
        if exc is None:
            return work.result()
        self._drop_upstream(reset=False)
        if isinstance(exc, _UpstreamEnded):
            await self.client.flush()
            self.client.close(reset=exc.reset)
            return False
        if isinstance(exc, (_ClientGone, _Closed, ConnectionError, OSError)):
            return False
        raise exc

    def _drop_upstream(self, *, reset: bool) -> None:
        if self.upstream is not None:
            self.upstream.stream.close(reset=reset)
            self.upstream = None

    async def _write_client(self, data: bytes) -> None:
        try:
            await self.client.send(data)
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc

    async def _send_and_read_head(self) -> Head | None:
        """Send the request (retrying once when a reused connection proves dead); the response head,
        or None when the client was answered with the proxy's own error."""
        for attempt in range(2):
            reused = self.upstream is not None and attempt == 0
            if self.upstream is None:
                try:
                    stream = await self.proxy.open(*self.target)
                except (OSError, TimeoutError) as exc:
                    await self._write_client(_gateway_error(exc, format_target(*self.target)))
                    return None
                self.upstream = _Upstream(self.target, stream)
            upstream = self.upstream.stream
            try:
                await upstream.send(self.outgoing)
                raw = await upstream.read_until(b"\r\n\r\n", _MAX_HEAD, "head")
            except (_Closed, ConnectionError, OSError) as exc:
                self._drop_upstream(reset=False)
                if reused:
                    continue
                text = f"forward-proxy: upstream {format_target(*self.target)} closed without answering"
                await self._write_client(_text_response(502, text, close=True))
                raise _ClientGone from exc
            except _BadRequest as exc:
                self._drop_upstream(reset=False)
                text = f"forward-proxy: bad answer from upstream {format_target(*self.target)}"
                await self._write_client(_text_response(502, text, close=True))
                raise _ClientGone from exc
            return parse_head(raw)
        raise AssertionError("unreachable")

    async def _exchange(self) -> bool:
        head = await self._send_and_read_head()
        if head is None:
            return self.keep_alive
        assert self.upstream is not None
        upstream = self.upstream.stream
        status = _status_of(head)
        while 100 <= status < 200 and status != 101:
            await self._write_client(Head(head.start, without_hop_by_hop(head)).encode())
            head = parse_head(await self._read_upstream_head(upstream))
            status = _status_of(head)
        if status == 101:  # never asked for: Upgrade is dropped from every request
            self._drop_upstream(reset=False)
            text = f"forward-proxy: upstream {format_target(*self.target)} switched protocols"
            await self._write_client(_text_response(502, text, close=True))
            return False
        has_te = any(key.lower() == "transfer-encoding" for key, _ in head.headers)
        length_text = head.get("content-length")
        if self.method == "HEAD" or status in (204, 304):
            framing, length = "none", 0
        elif has_te:
            framing, length = "chunked", 0
        elif length_text is not None:
            try:
                framing, length = "length", int(length_text)
            except ValueError:
                raise _UpstreamEnded(reset=False) from None
        else:
            framing, length = "eof", 0
        keep_client = self.keep_alive and framing != "eof"
        reusable = (
            framing != "eof"
            and "close" not in head.tokens("connection")
            and head.start.startswith("HTTP/1.1")
        )
        headers = without_hop_by_hop(head)
        if not keep_client:
            headers.append(("Connection", "close"))
        await self._write_client(Head(head.start, headers).encode())
        if framing == "length":
            await self._relay_length(upstream, length)
        elif framing == "chunked":
            await self._relay_chunked(upstream)
        elif framing == "eof":
            await self._relay_to_eof(upstream)
        if not reusable:
            self._drop_upstream(reset=False)
        return keep_client

    async def _read_upstream_head(self, upstream: _Stream) -> bytes:
        try:
            return await upstream.read_until(b"\r\n\r\n", _MAX_HEAD, "head")
        except _Closed:
            raise _UpstreamEnded(reset=False) from None
        except (ConnectionError, OSError):
            raise _UpstreamEnded(reset=True) from None

    async def _read_upstream(self, upstream: _Stream, limit: int) -> bytes:
        try:
            return await upstream.read_some(limit)
        except _Closed:
            raise _UpstreamEnded(reset=False) from None
        except (ConnectionError, OSError):
            raise _UpstreamEnded(reset=True) from None

    async def _relay_length(self, upstream: _Stream, length: int) -> None:
        remaining = length
        while remaining:
            piece = await self._read_upstream(upstream, min(remaining, _READ_SIZE))
            await self._write_client(piece)
            remaining -= len(piece)

    async def _relay_to_eof(self, upstream: _Stream) -> None:
        while True:
            try:
                piece = await self._read_upstream(upstream, _READ_SIZE)
            except _UpstreamEnded as exc:
                if exc.reset:
                    raise
                return
            await self._write_client(piece)

    async def _relay_chunked(self, upstream: _Stream) -> None:
        """Chunk framing passed through verbatim, each read written on at once."""
        while True:
            try:
                line = await upstream.read_until(b"\r\n", _MAX_LINE, "chunk size line")
            except _Closed:
                raise _UpstreamEnded(reset=False) from None
            except (ConnectionError, OSError):
                raise _UpstreamEnded(reset=True) from None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _UpstreamEnded(reset=False) from None
            out = line + b"\r\n"
            if size == 0:
                await self._write_client(out)
                while True:
                    try:
                        trailer = await upstream.read_until(b"\r\n", _MAX_LINE, "trailer")
                    except _Closed:
                        raise _UpstreamEnded(reset=False) from None
                    except (ConnectionError, OSError):
                        raise _UpstreamEnded(reset=True) from None
                    await self._write_client(trailer + b"\r\n")
                    if not trailer:
                        return
            remaining = size + 2  # the data and its CRLF
            while remaining:
                piece = await self._read_upstream(upstream, min(remaining, _READ_SIZE))
                await self._write_client(out + piece)
                out = b""
                remaining -= len(piece)


def _status_of(head: Head) -> int:
    parts = head.start.split(" ", 2)
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        raise _UpstreamEnded(reset=False) from None


def _gateway_error(exc: BaseException, target: str) -> bytes:
    if isinstance(exc, TimeoutError):
        return _text_response(504, f"forward-proxy: connecting to {target} timed out", close=True)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return _text_response(502, f"forward-proxy: cannot connect to {target}: {reason}", close=True)


def _socks_code(exc: BaseException) -> int:
    if isinstance(exc, ConnectionRefusedError):
        return _REP_REFUSED
    if isinstance(exc, (TimeoutError, socket.gaierror)):
        return _REP_HOST_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return _REP_NET_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno == errno.EHOSTUNREACH:
        return _REP_HOST_UNREACHABLE
    return _REP_FAILURE


def _socks_reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        address = ipaddress.IPv4Address(0)
    address_type = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
    return bytes([_SOCKS_VERSION, code, 0, address_type]) + address.packed + port.to_bytes(2, "big")


async def _copy(source: _Stream, target: _Stream) -> bool:
    """Copy until EOF (then half-close the target): True; False on a reset or a write error."""
    try:
        pending = source.take_buffer()
        if pending:
            await target.send(pending)
        while True:
            data = await source.reader.read(_READ_SIZE)
            if not data:
                break
            await target.send(data)
    except (ConnectionError, OSError):
        return False
    transport = target.writer.transport
    if not transport.is_closing():
        if target.writer.can_write_eof():
            with contextlib.suppress(ConnectionError, OSError):
                target.writer.write_eof()
        else:
            transport.close()
    return True


async def _tunnel(client: _Stream, upstream: _Stream) -> None:
    """Blind bytes both ways until both directions ended; a reset on either side aborts both."""
    tasks = [asyncio.ensure_future(_copy(client, upstream)), asyncio.ensure_future(_copy(upstream, client))]
    try:
        for next_done in asyncio.as_completed(tasks):
            if not await next_done:
                for stream in (client, upstream):
                    stream.close(reset=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


# --- entry points ------------------------------------------------------------------------------


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    user: str | None = None,
    password: str | None = None,
    refuse: bool = False,
) -> None:
    """Run until cancelled; announces the bound address on stdout once listening."""
    proxy = ForwardProxy(user=user, password=password, refuse=refuse)
    bound_host, bound_port = await proxy.start(host, port)
    sys.stdout.write(f"PROXY_LISTENING {format_target(bound_host, bound_port)}\n")
    sys.stdout.flush()
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await proxy.close()


async def _serve_until_signal(args: argparse.Namespace) -> None:
    task = asyncio.ensure_future(serve(args.host, args.port, args.user, args.password, args.refuse))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="loopback HTTP + SOCKS5 forward proxy (see module docstring)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", help="require this proxy user (HTTP Basic and SOCKS5 RFC 1929)")
    parser.add_argument("--password", help="the password that goes with --user")
    parser.add_argument("--refuse", action="store_true", help="accept, then close every connection at once")
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    asyncio.run(_serve_until_signal(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
