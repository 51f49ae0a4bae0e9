"""Both transports against the upstream emulator as a real process: Set-Cookie values, the
User-Agent on the wire, GET, the NextAuth session check, the WAF block page, no cookie kept."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.gptomni import (
    GptomniClient,
    SessionState,
    build_headers,
    parse_session,
    validate_user_agent,
)
from app.upstream.transport import Timeouts, Transport, build_transport
from tests.conftest import TRANSPORTS, Emulator

TIMEOUTS = Timeouts(connect=5, first_byte=10, idle=10)
SESSION_COOKIE = "__Secure-next-auth.session-token"
T = TypeVar("T")


def run_with(transport_name: str, body: Callable[[Transport], Awaitable[T]]) -> T:
    async def scenario() -> T:
        transport = build_transport(transport_name, impersonate="chrome", threads=4)
        try:
            return await body(transport)
        finally:
            await transport.aclose()

    return asyncio.run(scenario())


def client_run(emulator_url: str, transport_name: str, body: Callable[[GptomniClient], Awaitable[T]]) -> T:
    return run_with(transport_name, lambda transport: body(GptomniClient(transport, emulator_url, TIMEOUTS)))


async def answer_text(
    client: GptomniClient, prompt: str, cookie: str, **kwargs: Any
) -> tuple[str, list[str]]:
    answer = await client.open(prompt, cookie, **kwargs)
    parts = []
    try:
        while (text := await answer.next_text()) is not None:
            parts.append(text)
    finally:
        await answer.aclose()
    return "".join(parts), answer.set_cookies


def set_cookie_option(lines: list[str]) -> str:
    return "emu_set_cookie_b64=" + base64.b64encode("\n".join(lines).encode()).decode()


def requests_for(emulator: Emulator, marker: str) -> list[dict[str, Any]]:
    return [r for r in emulator.stats()["last_requests"] if marker in r["cookie"]]


# Three values, one with the comma of an Expires date: requests' joined header could not be split.
ROTATED = [
    f"{SESSION_COOKIE}=eyJNEWTOKEN.1; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly; Secure",
    "cf_clearance=CLEARANCE2; Path=/; Domain=.gptomni.ai; Max-Age=31536000",
    "NEXT_LOCALE=zh; Path=/",
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_set_cookie_of_a_200_answer(emulator: Emulator, transport: str) -> None:
    cookie = f"id=setcookie-200-{transport}; {set_cookie_option(ROTATED)}"
    text, set_cookies = client_run(emulator.url, transport, lambda c: answer_text(c, "hello", cookie))
    assert text.startswith("Hello from the gptomni emulator")
    assert set_cookies == ROTATED


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("option", "kind"),
    [
        ("emu_status=500", FailureKind.SERVER_ERROR),
        ("emu_status=401", FailureKind.AUTH),
        ("emu_cf=1", FailureKind.CLOUDFLARE),
        ("emu_waf=1", FailureKind.CLOUDFLARE_BLOCKED),
    ],
)
def test_set_cookies_of_an_error_answer_ride_on_the_failure(
    emulator: Emulator, transport: str, option: str, kind: FailureKind
) -> None:
    cookie = f"id=setcookie-err-{transport}; {option}; {set_cookie_option(ROTATED)}"
    with pytest.raises(UpstreamFailure) as caught:
        client_run(emulator.url, transport, lambda c: answer_text(c, "hello", cookie))
    assert caught.value.kind is kind
    assert caught.value.set_cookies == ROTATED
    assert "NEWTOKEN" not in repr(caught.value)
    assert "NEWTOKEN" not in caught.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_waf_block_page_is_not_an_auth_failure(emulator: Emulator, transport: str) -> None:
    outcomes: dict[str, tuple[FailureKind, int | None]] = {}

    async def three(client: GptomniClient) -> None:
        for option in ("emu_waf=1", "emu_status=403", "emu_cf=1"):
            try:
                await answer_text(client, "hi", f"id=waf-{transport}; {option}")
            except UpstreamFailure as failure:
                outcomes[option] = (failure.kind, failure.status)

    client_run(emulator.url, transport, three)
    assert outcomes == {
        "emu_waf=1": (FailureKind.CLOUDFLARE_BLOCKED, 403),
        "emu_status=403": (FailureKind.AUTH, 403),
        "emu_cf=1": (FailureKind.CLOUDFLARE, 403),
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_agent_given_replaces_the_transports_own(emulator: Emulator, transport: str) -> None:
    agent = f"Mozilla/5.0 (X11; Linux x86_64) TestBrowser/{transport}"
    marker = f"ua-{transport}"

    async def both(client: GptomniClient) -> None:
        await answer_text(client, "with", f"id={marker}-given", user_agent=agent)
        await answer_text(client, "without", f"id={marker}-default")
        await client.session(f"id={marker}-session", user_agent=agent)

    client_run(emulator.url, transport, both)
    (given,) = requests_for(emulator, f"{marker}-given")
    (default,) = requests_for(emulator, f"{marker}-default")
    (session,) = requests_for(emulator, f"{marker}-session")
    assert given["user_agent"] == agent
    assert session["user_agent"] == agent
    assert default["user_agent"] != agent
    assert "mozilla" in default["user_agent"].lower()  # the transport's browser one, as before


def test_user_agent_is_sent_once_on_the_wire() -> None:
    """The emulator keeps one value per header name; a bare socket sees every header line."""
    with RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok") as server:
        for transport in TRANSPORTS:

            async def send(t: Transport) -> None:
                headers = {"user-agent": "OneAgent/1.0", "Cookie": "a=b"}
                stream = await t.open(server.url, headers, b"{}", TIMEOUTS)
                await stream.aclose()

            run_with(transport, send)
            head = server.heads[-1].lower()
            assert head.count("\r\nuser-agent:") == 1, (transport, head)
            assert "\r\nuser-agent: oneagent/1.0\r\n" in head


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_sends_no_body(emulator: Emulator, transport: str) -> None:
    marker = f"get-{transport}"

    async def get(t: Transport) -> tuple[int, bytes]:
        stream = await t.open(
            emulator.url + "/api/auth/session", {"Cookie": f"id={marker}"}, None, TIMEOUTS, method="GET"
        )
        data = b""
        while piece := await stream.read():
            data += piece
        await stream.aclose()
        return stream.status, data

    status, data = run_with(transport, get)
    assert status == 200
    assert b'"user"' in data
    (seen,) = requests_for(emulator, marker)
    assert seen["method"] == "GET"
    assert seen["raw_body"] == ""
    assert "content-length" not in seen["headers"] or seen["headers"]["content-length"] == "0"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unsupported_method_or_get_with_body(transport: str) -> None:
    async def bad(t: Transport) -> None:
        with pytest.raises(ValueError, match="unsupported method"):
            await t.open("http://127.0.0.1:9/", {}, b"", TIMEOUTS, method="PUT")
        with pytest.raises(ValueError, match="no body"):
            await t.open("http://127.0.0.1:9/", {}, b"x", TIMEOUTS, method="GET")

    run_with(transport, bad)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_cookie_is_kept_between_requests(emulator: Emulator, transport: str) -> None:
    marker = f"nojar-{transport}"
    first = (
        f"id={marker}-a; {set_cookie_option(['leak=FROM-A; Path=/', f'{SESSION_COOKIE}=A-TOKEN; Path=/'])}"
    )

    async def two(client: GptomniClient) -> None:
        await answer_text(client, "one", first)
        await answer_text(client, "two", f"id={marker}-b")
        await client.session(f"id={marker}-c")

    client_run(emulator.url, transport, two)
    (second,) = requests_for(emulator, f"{marker}-b")
    (third,) = requests_for(emulator, f"{marker}-c")
    assert second["cookie"] == f"id={marker}-b"
    assert third["cookie"] == f"id={marker}-c"


# --- the NextAuth session check -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_alive(emulator: Emulator, transport: str) -> None:
    marker = f"session-alive-{transport}"
    state = client_run(emulator.url, transport, lambda c: c.session(f"id={marker}"))
    assert state.alive
    assert state.expires is not None and state.expires.endswith("Z")
    assert state.set_cookies == []
    (seen,) = requests_for(emulator, marker)
    assert (seen["method"], seen["path"]) == ("GET", "/api/auth/session")
    headers = seen["headers"]
    assert headers["accept"] == "application/json"
    assert headers["referer"] == emulator.url + "/zh"
    assert headers["cookie"] == f"id={marker}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_empty_is_not_alive(emulator: Emulator, transport: str) -> None:
    cookie = f"id=session-empty-{transport}; emu_session=empty; {set_cookie_option(ROTATED[:1])}"
    state = client_run(emulator.url, transport, lambda c: c.session(cookie))
    assert state == SessionState(alive=False, expires=None, set_cookies=ROTATED[:1])
    assert "NEWTOKEN" not in repr(state)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_error_is_unanswered(emulator: Emulator, transport: str) -> None:
    cookie = f"id=session-error-{transport}; emu_session=error; {set_cookie_option(ROTATED[1:2])}"
    with pytest.raises(UpstreamFailure) as caught:
        client_run(emulator.url, transport, lambda c: c.session(cookie))
    assert caught.value.kind is FailureKind.SERVER_ERROR
    assert caught.value.status == 500
    assert caught.value.set_cookies == ROTATED[1:2]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_renews_a_rotating_token(emulator: Emulator, transport: str) -> None:
    account = f"rot-{transport}"
    token = f"first-{transport}"

    async def check_twice(client: GptomniClient) -> tuple[SessionState, SessionState, SessionState]:
        first = await client.session(f"emu_rotate={account}; {SESSION_COOKIE}={token}")
        (renewed,) = first.set_cookies
        name, _, rest = renewed.partition("=")
        assert name == SESSION_COOKIE
        new_token = rest.split(";")[0]
        second = await client.session(f"emu_rotate={account}; {SESSION_COOKIE}={new_token}")
        stale = await client.session(f"emu_rotate={account}; {SESSION_COOKIE}=never-issued")
        return first, second, stale

    first, second, stale = client_run(emulator.url, transport, check_twice)
    assert first.alive and second.alive
    assert len(second.set_cookies) == 1 and second.set_cookies != first.set_cookies
    assert not stale.alive


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_through_a_dead_upstream_is_a_connect_failure(transport: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamFailure) as caught:
        client_run(f"http://127.0.0.1:{port}", transport, lambda c: c.session("id=x"))
    assert caught.value.kind is FailureKind.CONNECT


@pytest.mark.parametrize(
    ("body", "alive", "expires"),
    [
        (
            b'{"user":{"name":"A","email":"a@b.c","image":null},"expires":"2026-01-01T00:00:00.000Z"}',
            True,
            "2026-01-01T00:00:00.000Z",
        ),
        (b'{"user":{"name":"A"}}', True, None),
        (b'{"user":{"name":"A"},"expires":12}', True, None),
        (b"{}", False, None),
        (b"null", False, None),  # Auth.js v5 without a session
        (b'{"expires":"2026-01-01T00:00:00.000Z"}', False, None),
        (b'{"user":null}', False, None),
        (b'\xef\xbb\xbf{"user":{"name":"A"}}', True, None),
    ],
)
def test_parse_session(body: bytes, alive: bool, expires: str | None) -> None:
    assert parse_session(body) == (alive, expires)


@pytest.mark.parametrize("body", [b"", b"<html>Sign in</html>", b"[]", b'"user"', b"\xff\xfe", b"{"])
def test_parse_session_refuses_what_is_not_a_session(body: bytes) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        parse_session(body)
    assert caught.value.kind is FailureKind.BAD_RESPONSE


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_answer_that_is_not_json(transport: str) -> None:
    page = b"<!DOCTYPE html><html><body>login</body></html>"
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\n"
        + f"Content-Length: {len(page)}\r\nConnection: close\r\n\r\n".encode()
        + page
    )
    with RawServer(response) as server, pytest.raises(UpstreamFailure) as caught:
        client_run(server.base, transport, lambda c: c.session("id=x"))
    assert caught.value.kind is FailureKind.BAD_RESPONSE
    assert caught.value.status == 200
    assert caught.value.set_cookies == ["a=1"]


# --- compressed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_gzip_body_is_decoded(transport: str) -> None:
    """The browsers' Accept-Encoding asks for gzip; both transports hand back the decoded body."""
    text = "你好, gzip! " * 400
    packed = gzip.compress(text.encode())
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(packed[i : i + 700]), packed[i : i + 700]) for i in range(0, len(packed), 700)
    )
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    with RawServer(response) as server:
        got, _ = client_run(server.base, transport, lambda c: answer_text(c, "hi", "id=gzip"))
    assert got == text


class RawServer:
    """A loopback socket server that records each request head and answers with fixed bytes."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.heads: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        port = self._sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/api/chatWithText"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                self.heads.append(data.partition(b"\r\n\r\n")[0].decode("latin-1") + "\r\n")
                conn.sendall(self.response)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_1020_access_denied_page_is_blocked(transport: str) -> None:
    """cloudscraper raises its own CloudflareCode1020 for this page; curl sees the page itself."""
    page = (
        b"<!DOCTYPE html><html><head><title>Access denied | gptomni.ai used Cloudflare to restrict access"
        b'</title></head><body><div id="cf-wrapper"><div id="cf-error-details" class="p-0"><h1>'
        b'<span class="inline-block">Access denied</span><span class="cf-error-code">1020</span></h1>'
        b"<p>Cloudflare Ray ID: <strong>8e1f2c3d4b5a0003</strong></p></div></div></body></html>"
    )
    response = (
        b"HTTP/1.1 403 Forbidden\r\nServer: cloudflare\r\nCF-RAY: 8e1f2c3d4b5a0003-SJC\r\n"
        b"Content-Type: text/html; charset=UTF-8\r\n"
        + f"Content-Length: {len(page)}\r\nConnection: close\r\n\r\n".encode()
        + page
    )
    with RawServer(response) as server, pytest.raises(UpstreamFailure) as caught:
        client_run(server.base, transport, lambda c: answer_text(c, "hi", "id=1020"))
    assert caught.value.kind is FailureKind.CLOUDFLARE_BLOCKED


@pytest.mark.parametrize(
    ("value", "result"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0.0.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0.0.0",
        ),
        ("  Agent/1.0  ", "Agent/1.0"),
        ("", "empty"),
        ("   ", "empty"),
        ("Agent/1.0\r\nX-Injected: 1", "printable ASCII"),
        ("Agent/1.0\n", "Agent/1.0"),  # a trailing newline is only whitespace
        ("Agent\t/1.0", "printable ASCII"),
        ("Agent/1.0 ü", "printable ASCII"),
        ("A" * 513, "at most 512"),
    ],
)
def test_validate_user_agent(value: str, result: str) -> None:
    if result[0].isupper():
        assert validate_user_agent(value) == result
    else:
        with pytest.raises(ValueError, match=result):
            validate_user_agent(value)
    if "\r" in value:
        with pytest.raises(ValueError, match="printable"):
            build_headers("https://gptomni.ai", "a=b", value)
