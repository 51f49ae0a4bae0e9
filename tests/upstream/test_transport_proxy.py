"""Both transports through a real forward proxy (tests/forward_proxy.py, a subprocess) to the upstream
emulator: HTTP forwarding, CONNECT, SOCKS5 and SOCKS5h with credentials; one request's proxy never
carries another's; every way a proxy can fail is a connect failure naming the proxy, password masked."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.gptomni import GptomniClient
from app.upstream.proxy import mask_proxy, validate_proxy
from app.upstream.transport import Timeouts, Transport, build_transport
from tests.conftest import TRANSPORTS, Emulator, ForwardProxy

TIMEOUTS = Timeouts(connect=5, first_byte=15, idle=15)
USER = "alice"
# Characters that must be percent-encoded in the URL: both clients must decode them.
PASSWORD = "S3cr3t:p@ss/w%rd"
T = TypeVar("T")


@pytest.fixture(scope="module")
def auth_proxy(workdir: Path) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(workdir, user=USER, password=PASSWORD)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def open_proxy(workdir: Path) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(workdir)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def refusing_proxy(workdir: Path) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(workdir, refuse=True)
    yield proxy
    proxy.stop()


def url_of(proxy: ForwardProxy, scheme: str = "http", password: str = PASSWORD) -> str:
    if proxy.user is None:
        return validate_proxy(f"{scheme}://{proxy.address}")
    return validate_proxy(f"{scheme}://{proxy.user}:{quote(password, safe='')}@{proxy.address}")


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_run(base_url: str, transport_name: str, body: Callable[[GptomniClient], Awaitable[T]]) -> T:
    async def scenario() -> T:
        transport: Transport = build_transport(transport_name, impersonate="chrome", threads=4)
        try:
            return await body(GptomniClient(transport, base_url, TIMEOUTS))
        finally:
            await transport.aclose()

    return asyncio.run(scenario())


async def ask(client: GptomniClient, cookie: str, proxy: str | None, **kwargs: Any) -> tuple[str, list[str]]:
    answer = await client.open("hello", cookie, proxy=proxy, **kwargs)
    parts = []
    try:
        while (text := await answer.next_text()) is not None:
            parts.append(text)
    finally:
        await answer.aclose()
    return "".join(parts), answer.set_cookies


def seen_by_emulator(emulator: Emulator, marker: str) -> list[dict[str, Any]]:
    return [r for r in emulator.stats()["last_requests"] if marker in r["cookie"]]


def failure_of(base_url: str, transport: str, proxy: str, cookie: str = "id=fails") -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        client_run(base_url, transport, lambda c: ask(c, cookie, proxy))
    failure = caught.value
    for text in (failure.message, failure.detail, str(failure), repr(failure)):
        assert PASSWORD not in text
        assert quote(PASSWORD, safe="") not in text
    return failure


# --- the way through --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_http_proxy_forwards_with_credentials(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str
) -> None:
    marker = f"via-http-{transport}"
    cookie = f"id={marker}; {Emulator.set_cookie_option('a=1; Path=/', 'b=2; Path=/; HttpOnly')}"
    auth_proxy.reset()
    text, set_cookies = client_run(emulator.url, transport, lambda c: ask(c, cookie, url_of(auth_proxy)))
    assert text.startswith("Hello from the gptomni emulator")
    assert set_cookies == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]  # several Set-Cookie, through it
    stats = auth_proxy.stats()
    assert stats["by_cookie"] == {cookie: 1}
    assert stats["auth_failures"] == 0
    (seen,) = seen_by_emulator(emulator, marker)
    assert seen["headers"].get("via") == "1.1 forward-proxy"
    assert "proxy-authorization" not in seen["headers"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_with_credentials(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str, scheme: str
) -> None:
    marker = f"via-{scheme}-{transport}"
    auth_proxy.reset()
    text, _ = client_run(
        emulator.url, transport, lambda c: ask(c, f"id={marker}", url_of(auth_proxy, scheme))
    )
    assert text.startswith("Hello from the gptomni emulator")
    stats = auth_proxy.stats()
    assert stats["socks"] >= 1
    assert stats["targets"][-1] == emulator.address
    assert stats["auth_failures"] == 0
    (seen,) = seen_by_emulator(emulator, marker)
    assert "via" not in seen["headers"]  # a tunnel: the proxy never saw the request


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_socks5h_lets_the_proxy_resolve(emulator: Emulator, auth_proxy: ForwardProxy, transport: str) -> None:
    port = emulator.address.rpartition(":")[2]
    auth_proxy.reset()
    text, _ = client_run(
        f"http://localhost:{port}",
        transport,
        lambda c: ask(c, f"id=socks5h-name-{transport}", url_of(auth_proxy, "socks5h")),
    )
    assert text.startswith("Hello")
    assert auth_proxy.stats()["targets"] == [f"localhost:{port}"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_check_and_user_agent_through_the_proxy(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str
) -> None:
    marker = f"session-via-{transport}"
    cookie = f"id={marker}; {Emulator.set_cookie_option('renewed=1; Path=/')}"
    auth_proxy.reset()
    agent = f"ProxyTestAgent/{transport}"
    state = client_run(
        emulator.url, transport, lambda c: c.session(cookie, proxy=url_of(auth_proxy), user_agent=agent)
    )
    assert state.alive
    assert state.set_cookies == ["renewed=1; Path=/"]
    assert auth_proxy.stats()["by_user_agent"] == {agent: 1}
    (seen,) = seen_by_emulator(emulator, marker)
    assert seen["path"] == "/api/auth/session"
    assert seen["user_agent"] == agent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_request_goes_its_own_way(
    emulator: Emulator, auth_proxy: ForwardProxy, open_proxy: ForwardProxy, transport: str
) -> None:
    """Interleaved on one transport (kept-alive connections and all): proxy A, proxy B, SOCKS via
    A, and none. Each proxy sees only its own requests; the direct one passes through neither."""
    auth_proxy.reset()
    open_proxy.reset()
    ways = {
        "a": url_of(auth_proxy),
        "b": url_of(open_proxy),
        "s": url_of(auth_proxy, "socks5"),
        "d": None,
    }

    async def interleaved(client: GptomniClient) -> None:
        for round_ in range(3):
            for name, proxy in ways.items():
                await ask(client, f"id=iso-{transport}-{name}-{round_}", proxy)

    client_run(emulator.url, transport, interleaved)
    a_cookies = set(auth_proxy.stats()["by_cookie"])
    b_cookies = set(open_proxy.stats()["by_cookie"])
    assert a_cookies == {f"id=iso-{transport}-a-{r}" for r in range(3)}
    assert b_cookies == {f"id=iso-{transport}-b-{r}" for r in range(3)}
    assert auth_proxy.stats()["socks"] >= 1  # curl keeps the SOCKS connection alive between requests
    seen = {r["cookie"]: r["headers"].get("via") for r in seen_by_emulator(emulator, f"iso-{transport}-")}
    assert len(seen) == 12
    for cookie, via in seen.items():
        expected = "1.1 forward-proxy" if cookie.split("-")[2] in ("a", "b") else None
        assert via == expected, cookie


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_wrong_credentials_never_ride_on_a_kept_connection(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str, scheme: str
) -> None:
    """Right, wrong, right on one proxy: the wrong one fails even though a connection opened with the
    right ones may still be open (libcurl PROXY_CREDENTIAL_NO_REUSE; requests pools per proxy URL)."""
    right = url_of(auth_proxy, scheme)
    wrong = url_of(auth_proxy, scheme, password="not-the-password")

    async def three(client: GptomniClient) -> list[str]:
        outcomes = []
        for n, proxy in enumerate((right, wrong, right)):
            try:
                await ask(client, f"id=creds-{scheme}-{transport}-{n}", proxy)
                outcomes.append("ok")
            except UpstreamFailure as failure:
                outcomes.append(failure.kind.value)
        return outcomes

    assert client_run(emulator.url, transport, three) == ["ok", "connect", "ok"]


# --- the ways a proxy fails -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("scheme", "https", "says"),
    [
        ("http", False, "rejected the proxy credentials (407"),  # the 407 answers the forwarded request
        ("http", True, "rejected the proxy credentials (407"),  # the 407 answers CONNECT
        ("socks5", False, "rejected the proxy credentials"),
        ("socks5h", False, "rejected the proxy credentials"),
    ],
)
def test_wrong_credentials(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str, scheme: str, https: bool, says: str
) -> None:
    proxy = url_of(auth_proxy, scheme, password="wrong-password")
    base = emulator.url.replace("http://", "https://") if https else emulator.url
    failure = failure_of(base, transport, proxy)
    assert failure.kind is FailureKind.CONNECT
    assert failure.status is None
    assert says in failure.message
    assert mask_proxy(proxy) in failure.message
    assert failure.proxy == mask_proxy(proxy) == f"{scheme}://{USER}:***@{auth_proxy.address}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("scheme", ["http", "https", "socks5", "socks5h"])
def test_a_proxy_that_is_not_there(emulator: Emulator, transport: str, scheme: str) -> None:
    proxy = validate_proxy(f"{scheme}://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{dead_port()}")
    failure = failure_of(emulator.url, transport, proxy)
    assert failure.kind is FailureKind.CONNECT
    assert failure.message.startswith(f"upstream failure: proxy {mask_proxy(proxy)} refused the connection")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_proxy_whose_name_does_not_resolve(emulator: Emulator, transport: str) -> None:
    proxy = validate_proxy(f"http://{USER}:{quote(PASSWORD, safe='')}@proxy.invalid:3128")
    failure = failure_of(emulator.url, transport, proxy)
    assert failure.kind is FailureKind.CONNECT
    assert f"proxy {mask_proxy(proxy)} could not be resolved" in failure.message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_proxy_that_hangs_up(
    emulator: Emulator, refusing_proxy: ForwardProxy, transport: str, scheme: str
) -> None:
    proxy = url_of(refusing_proxy, scheme)
    failure = failure_of(emulator.url, transport, proxy)
    assert failure.kind is FailureKind.CONNECT
    assert failure.message.startswith(f"upstream failure: proxy {mask_proxy(proxy)} ")
    assert failure.proxy == mask_proxy(proxy)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_tunnel_the_proxy_cannot_open(auth_proxy: ForwardProxy, transport: str) -> None:
    """CONNECT to an upstream that is not there: the proxy answers 502."""
    failure = failure_of(f"https://127.0.0.1:{dead_port()}", transport, url_of(auth_proxy))
    assert failure.kind is FailureKind.CONNECT
    assert "refused to open a tunnel to the upstream (CONNECT answered 502)" in failure.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_socks_cannot_reach_the_upstream(auth_proxy: ForwardProxy, transport: str) -> None:
    failure = failure_of(f"http://127.0.0.1:{dead_port()}", transport, url_of(auth_proxy, "socks5"))
    assert failure.kind is FailureKind.CONNECT
    assert "could not reach the upstream" in failure.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_upstream_error_through_the_proxy_stays_the_upstreams(
    emulator: Emulator, auth_proxy: ForwardProxy, transport: str
) -> None:
    cookie = f"id=err-via-{transport}; emu_status=500; {Emulator.set_cookie_option('x=1')}"
    failure = failure_of(emulator.url, transport, url_of(auth_proxy), cookie)
    assert failure.kind is FailureKind.SERVER_ERROR
    assert failure.status == 500
    assert failure.set_cookies == ["x=1"]
    assert failure.proxy is None  # not the proxy's failure
