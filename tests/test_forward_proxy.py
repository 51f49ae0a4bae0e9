"""The loopback forward proxy (tests/forward_proxy.py) as a real subprocess, driven by httpx, curl and
raw sockets in front of the real upstream emulator: HTTP forwarding, CONNECT, SOCKS5, auth, streaming,
--refuse."""

from __future__ import annotations

import http.server
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FORWARD_PROXY, Emulator, ForwardProxy
from tests.processes import base_env, free_port

PREFIX = "Hello from the gptomni emulator. You said: "
USER, PASSWORD = "alice", "s3cret-pw"
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = Emulator(tmp_path_factory.mktemp("proxy-emu"), chunk_delay=0.01)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    started = ForwardProxy(tmp_path_factory.mktemp("proxy"))
    yield started
    started.stop()
    assert started.log() == ""


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    started = ForwardProxy(tmp_path_factory.mktemp("auth-proxy"), user=USER, password=PASSWORD)
    yield started
    started.stop()


@pytest.fixture
def fresh(emu: Emulator, proxy: ForwardProxy) -> None:
    emu.reset()
    proxy.reset()


def chat_body(prompt: str) -> bytes:
    return json.dumps({"prompt": prompt}).encode()


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=base_env(),
    )


def curl_chat(emu: Emulator, prompt: str, cookie: str, *proxy_args: str) -> subprocess.CompletedProcess[str]:
    return curl(
        *proxy_args,
        "-H",
        f"Cookie: {cookie}",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        json.dumps({"prompt": prompt}),
        f"{emu.url}/api/chatWithText",
    )


# --- HTTP forwarding ---------------------------------------------------------------------------


def test_script_announces_one_line_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(FORWARD_PROXY), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PROXY_LISTENING 127.0.0.1:")
    port = int(line.split(":")[-1])
    assert httpx.get(f"http://127.0.0.1:{port}/_proxy/health", trust_env=False).json() == {"ok": True}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    assert (proc.returncode, out, err) == (0, "", "")
    bad = subprocess.run(
        [sys.executable, str(FORWARD_PROXY), "--user", "u"], capture_output=True, text=True, env=base_env()
    )
    assert bad.returncode == 2
    assert "go together" in bad.stderr


@pytest.mark.usefixtures("fresh")
def test_httpx_forwards_absolute_uri_requests(emu: Emulator, proxy: ForwardProxy) -> None:
    headers = {"Cookie": "sid=forwarded", "User-Agent": "egress-test/1.0"}
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        response = client.post(f"{emu.url}/api/chatWithText", content=chat_body("via proxy"), headers=headers)
    assert response.status_code == 200
    assert response.text == PREFIX + "via proxy"
    assert response.headers["transfer-encoding"] == "chunked"
    stats = proxy.stats()
    assert (stats["requests"], stats["connects"], stats["socks"]) == (1, 0, 0)
    assert stats["targets"] == [emu.address]
    assert stats["by_cookie"] == {"sid=forwarded": 1}
    assert stats["by_target"] == {emu.address: 1}
    assert stats["by_user_agent"] == {"egress-test/1.0": 1}
    (seen,) = emu.last_requests()
    assert seen["cookie"] == "sid=forwarded"
    assert seen["user_agent"] == "egress-test/1.0"
    assert seen["headers"]["via"] == "1.1 forward-proxy"
    assert seen["headers"]["host"] == emu.address
    for hop in ("proxy-connection", "proxy-authorization", "connection"):
        assert hop not in seen["headers"]


@pytest.mark.usefixtures("fresh")
def test_keep_alive_on_both_sides(emu: Emulator, proxy: ForwardProxy) -> None:
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        for index in range(3):
            response = client.post(
                f"{emu.url}/api/chatWithText", content=chat_body(f"n{index}"), headers={"Cookie": "sid=ka"}
            )
            assert response.text == PREFIX + f"n{index}"
    stats = proxy.stats()
    assert stats["requests"] == 3
    assert stats["connections_total"] == 2  # the client's one connection, and this stats call
    assert len({r["conn"] for r in emu.last_requests()}) == 1  # one upstream connection, reused


@pytest.mark.usefixtures("fresh")
def test_chunked_answers_stream_through_piece_by_piece(emu: Emulator, proxy: ForwardProxy) -> None:
    prompt = "[[emu chunk_size=4 delay=0.3]]\n<<<EMU_REPLY\naaaabbbbccccdddd\nEMU_REPLY>>>"
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        request = client.build_request(
            "POST", f"{emu.url}/api/chatWithText", content=chat_body(prompt), headers={"Cookie": "sid=s"}
        )
        start = time.monotonic()
        response = client.send(request, stream=True)
        arrivals: list[tuple[float, bytes]] = []
        for piece in response.iter_raw():
            arrivals.append((time.monotonic() - start, piece))
        response.close()
    assert b"".join(piece for _, piece in arrivals) == b"aaaabbbbccccdddd"
    first_at = arrivals[0][0]
    last_at = arrivals[-1][0]
    assert first_at < 0.25, arrivals  # the first piece did not wait for the rest
    assert last_at >= 0.8, arrivals
    assert len(arrivals) >= 3, arrivals


@pytest.mark.usefixtures("fresh")
def test_several_set_cookie_headers_stay_several(emu: Emulator, proxy: ForwardProxy) -> None:
    lines = ["a=1; Path=/; HttpOnly", "b=2; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    cookie = "sid=jar; " + emu.set_cookie_option(*lines)
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        response = client.post(
            f"{emu.url}/api/chatWithText", content=chat_body("hi"), headers={"Cookie": cookie}
        )
        assert response.headers.get_list("set-cookie") == lines
        rotating = emu.rotating_cookie("proxy-rot")
        renewed = client.post(
            f"{emu.url}/api/chatWithText", content=chat_body("hi"), headers={"Cookie": rotating}
        )
        assert renewed.headers["set-cookie"].startswith("__Secure-next-auth.session-token=emu.")


@pytest.mark.usefixtures("fresh")
def test_chunked_request_body_and_expect_continue(emu: Emulator, proxy: ForwardProxy) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"prompt": "chun'
        yield b'ked"}'

    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        response = client.post(f"{emu.url}/api/chatWithText", content=body(), headers={"Cookie": "sid=c"})
    assert response.text == PREFIX + "chunked"
    if CURL is not None:
        start = time.monotonic()
        result = curl_chat(emu, "expecting", "sid=e", "-x", proxy.url, "-H", "Expect: 100-continue")
        assert result.stdout == PREFIX + "expecting"
        assert time.monotonic() - start < 0.9  # the proxy answered 100 itself: no wait for curl's 1 s


@pytest.mark.usefixtures("fresh")
@pytest.mark.parametrize("mode", ["fin", "rst"])
def test_a_cut_upstream_answer_is_cut_for_the_client(emu: Emulator, proxy: ForwardProxy, mode: str) -> None:
    received = bytearray()
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        request = client.build_request(
            "POST",
            f"{emu.url}/api/chatWithText",
            content=chat_body(f"[[emu cut=5 cut_mode={mode}]] hi"),
            headers={"Cookie": "sid=cut"},
        )
        response = client.send(request, stream=True)
        with pytest.raises(httpx.TransportError):
            for piece in response.iter_raw():
                received += piece
        response.close()
    if mode == "fin":
        assert bytes(received) == PREFIX.encode()[:5]
    assert proxy.stats()["requests"] == 1


@pytest.mark.usefixtures("fresh")
def test_a_client_going_away_reaches_the_upstream(emu: Emulator, proxy: ForwardProxy) -> None:
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        request = client.build_request(
            "POST",
            f"{emu.url}/api/chatWithText",
            content=chat_body("[[emu duration=5]] slow"),
            headers={"Cookie": "sid=gone"},
        )
        response = client.send(request, stream=True)
        reads = response.iter_raw()
        assert next(reads)
        response.close()
    wait_for_disconnects(emu, 1)
    with (
        httpx.Client(proxy=proxy.url, timeout=0.3, trust_env=False) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(
            f"{emu.url}/api/chatWithText",
            content=chat_body("[[emu first_byte_delay=5]]"),
            headers={"Cookie": "sid=silent"},
        )
    wait_for_disconnects(emu, 2)


def wait_for_disconnects(emu: Emulator, expected: int) -> None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        stats = emu.stats()
        if stats["disconnects"] >= expected:
            assert stats["in_flight"] == 0
            return
        time.sleep(0.02)
    raise AssertionError(f"the upstream saw no disconnect: {emu.stats()['disconnects']}")


@pytest.mark.usefixtures("fresh")
def test_unreachable_targets_answer_502_naming_the_proxy(proxy: ForwardProxy) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        response = client.get(f"http://{dead}/api/chatWithText")
    assert response.status_code == 502
    assert response.text.startswith(f"forward-proxy: cannot connect to {dead}")
    raw = exchange_raw(proxy.port, f"CONNECT {dead} HTTP/1.1\r\nHost: {dead}\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    stats = proxy.stats()
    assert (stats["requests"], stats["connects"], stats["connect_failures"]) == (1, 1, 2)
    assert stats["targets"] == [dead, dead]


@pytest.mark.usefixtures("fresh")
def test_local_endpoints_and_reset(emu: Emulator, proxy: ForwardProxy) -> None:
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        client.post(f"{emu.url}/api/chatWithText", content=chat_body("x"), headers={"Cookie": "sid=r"})
    assert proxy.stats()["requests"] == 1
    direct = httpx.Client(base_url=proxy.url, timeout=5, trust_env=False)
    with direct:
        assert direct.get("/_proxy/health").json() == {"ok": True}
        assert direct.get("/elsewhere").status_code == 404
        assert direct.post("/_proxy/reset").json() == {"ok": True}
        stats = direct.get("/_proxy/stats").json()
    assert {key: stats[key] for key in ("requests", "connects", "socks", "targets", "by_cookie")} == {
        "requests": 0,
        "connects": 0,
        "socks": 0,
        "targets": [],
        "by_cookie": {},
    }
    assert stats["connections"] == 1  # the live gauge survives the reset


@pytest.mark.usefixtures("fresh")
def test_targets_keep_the_last_200(emu: Emulator, proxy: ForwardProxy) -> None:
    with httpx.Client(proxy=proxy.url, timeout=10, trust_env=False) as client:
        for index in range(205):
            url = (
                f"http://localhost:{emu.address.split(':')[1]}/_emu/health"
                if index >= 5
                else f"{emu.url}/_emu/health"
            )
            client.get(url)
    stats = proxy.stats()
    assert stats["requests"] == 205
    assert len(stats["targets"]) == 200
    assert all(target.startswith("localhost:") for target in stats["targets"])
    assert stats["by_target"] == {emu.address: 5, f"localhost:{emu.address.split(':')[1]}": 200}
    assert stats["by_cookie"] == {"": 205}


# --- CONNECT -----------------------------------------------------------------------------------


def exchange_raw(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = bytearray()
        while True:
            piece = sock.recv(65536)
            if not piece:
                return bytes(received)
            received += piece
            if not until_close and b"\r\n\r\n" in received:
                return bytes(received)


@needs_curl
@pytest.mark.usefixtures("fresh")
def test_curl_through_http_proxy_forwarding_and_tunnelling(emu: Emulator, proxy: ForwardProxy) -> None:
    forwarded = curl_chat(emu, "curl forward", "sid=cf", "-x", proxy.url)
    assert (forwarded.returncode, forwarded.stdout) == (0, PREFIX + "curl forward")
    tunnelled = curl_chat(emu, "curl tunnel", "sid=ct", "-p", "-x", proxy.url)
    assert (tunnelled.returncode, tunnelled.stdout) == (0, PREFIX + "curl tunnel")
    stats = proxy.stats()
    assert (stats["requests"], stats["connects"]) == (1, 1)
    assert stats["by_cookie"] == {"sid=cf": 1}  # a tunnel records only its target
    assert stats["targets"] == [emu.address, emu.address]
    via = [r["headers"].get("via") for r in emu.last_requests()]
    assert via == ["1.1 forward-proxy", None]


@pytest.mark.usefixtures("fresh")
def test_connect_tunnel_streams_and_half_closes(emu: Emulator, proxy: ForwardProxy) -> None:
    prompt = "[[emu chunk_size=4 delay=0.3]]\n<<<EMU_REPLY\naaaabbbbcccc\nEMU_REPLY>>>"
    body = chat_body(prompt)
    request = (
        f"POST /api/chatWithText HTTP/1.1\r\nHost: {emu.address}\r\nCookie: sid=tun\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        # The request rides in the same write as the CONNECT: bytes buffered past it must be tunnelled.
        sock.sendall(f"CONNECT {emu.address} HTTP/1.1\r\nHost: {emu.address}\r\n\r\n".encode() + request)
        start = time.monotonic()
        arrivals = read_all_timed(sock, start)
    data = b"".join(piece for _, piece in arrivals)
    assert data.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert data.endswith(b"0\r\n\r\n")
    body_pieces = [at for at, piece in arrivals if b"aaaa" in piece or b"bbbb" in piece or b"cccc" in piece]
    assert body_pieces[0] < 0.25
    assert arrivals[-1][0] >= 0.55
    assert proxy.stats()["connects"] == 1


def read_all_timed(sock: socket.socket, start: float) -> list[tuple[float, bytes]]:
    arrivals: list[tuple[float, bytes]] = []
    while True:
        piece = sock.recv(65536)
        if not piece:
            return arrivals
        arrivals.append((time.monotonic() - start, piece))


@pytest.mark.usefixtures("fresh")
def test_a_client_leaving_a_tunnel_reaches_the_upstream(emu: Emulator, proxy: ForwardProxy) -> None:
    body = chat_body("[[emu duration=5]] slow")
    request = (
        f"POST /api/chatWithText HTTP/1.1\r\nHost: {emu.address}\r\nCookie: sid=tg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(f"CONNECT {emu.address} HTTP/1.1\r\n\r\n".encode() + request)
    received = b""
    while b"\r\n\r\nHTTP/1.1 200 OK" not in received:
        received += sock.recv(65536)
    sock.close()
    wait_for_disconnects(emu, 1)


# --- HTTPS through CONNECT and SOCKS5 ----------------------------------------------------------


class _TlsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"tls ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "tls=1; Secure")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local https:// origin with a throwaway self-signed certificate (made with the openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TlsHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("fresh")
def test_https_through_connect_with_httpx(tls_origin: str, proxy: ForwardProxy) -> None:
    with httpx.Client(proxy=proxy.url, verify=False, timeout=10, trust_env=False) as client:
        response = client.get(tls_origin + "/x")
    assert (response.status_code, response.text) == (200, "tls ok")
    assert response.headers["set-cookie"] == "tls=1; Secure"
    stats = proxy.stats()
    assert (stats["requests"], stats["connects"]) == (0, 1)
    assert stats["targets"] == [tls_origin.removeprefix("https://")]


@needs_curl
@pytest.mark.usefixtures("fresh")
def test_https_through_socks5_with_curl(tls_origin: str, proxy: ForwardProxy) -> None:
    result = curl("-k", "--socks5-hostname", proxy.address, tls_origin + "/y")
    assert (result.returncode, result.stdout) == (0, "tls ok")
    assert proxy.stats()["socks"] == 1


# --- SOCKS5 ------------------------------------------------------------------------------------


@needs_curl
@pytest.mark.usefixtures("fresh")
def test_curl_through_socks5_by_address_and_by_name(emu: Emulator, proxy: ForwardProxy) -> None:
    by_address = curl_chat(emu, "socks ip", "sid=s1", "--socks5", proxy.address)
    assert (by_address.returncode, by_address.stdout) == (0, PREFIX + "socks ip")
    port = emu.address.split(":")[1]
    by_name = curl(
        "--socks5-hostname",
        proxy.address,
        "-H",
        "Cookie: sid=s2",
        "--data-binary",
        json.dumps({"prompt": "socks name"}),
        f"http://localhost:{port}/api/chatWithText",
    )
    assert (by_name.returncode, by_name.stdout) == (0, PREFIX + "socks name")
    stats = proxy.stats()
    assert (stats["requests"], stats["connects"], stats["socks"]) == (0, 0, 2)
    assert stats["targets"] == [emu.address, f"localhost:{port}"]
    assert stats["by_cookie"] == {}
    assert [r["cookie"] for r in emu.last_requests()] == ["sid=s1", "sid=s2"]


def socks_open(
    port: int, *, methods: bytes = b"\x00", credentials: tuple[bytes, bytes] | None = None
) -> tuple[socket.socket, int]:
    """Greet (and authenticate); the socket and the method the proxy chose."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(bytes([5, len(methods)]) + methods)
    reply = recv_exactly(sock, 2)
    assert reply[0] == 5
    if reply[1] == 2 and credentials is not None:
        user, password = credentials
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        status = recv_exactly(sock, 2)
        assert status[0] == 1
        if status[1] != 0:
            return sock, -1
    return sock, reply[1]


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError(f"closed after {data!r}")
        data += piece
    return data


def socks_request(sock: socket.socket, command: int, address_type: int, address: bytes, port: int) -> bytes:
    """Send a request; the reply's first 4 bytes plus its bound address and port."""
    sock.sendall(bytes([5, command, 0, address_type]) + address + port.to_bytes(2, "big"))
    head = recv_exactly(sock, 4)
    size = {1: 4, 4: 16}[head[3]]
    return head + recv_exactly(sock, size + 2)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.usefixtures("fresh")
def test_socks5_ipv6_target(proxy: ForwardProxy) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
        server.bind(("::1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        sock, method = socks_open(proxy.port)
        assert method == 0
        with sock:
            reply = socks_request(sock, 1, 4, ipaddress.IPv6Address("::1").packed, port)
            assert reply[:4] == bytes([5, 0, 0, 4])  # bound address is the upstream socket's, IPv6
            peer, _ = server.accept()
            with peer:
                sock.sendall(b"ping")
                assert recv_exactly(peer, 4) == b"ping"
                peer.sendall(b"pong")
                assert recv_exactly(sock, 4) == b"pong"
    assert proxy.stats()["targets"] == [f"[::1]:{port}"]


@pytest.mark.usefixtures("fresh")
def test_socks5_refusals(proxy: ForwardProxy) -> None:
    loopback = bytes([127, 0, 0, 1])
    cases = [
        ((2, 1, loopback, 80), 0x07),  # BIND: command not supported
        ((3, 1, loopback, 80), 0x07),  # UDP ASSOCIATE
        ((1, 1, loopback, free_port()), 0x05),  # connection refused
        ((1, 3, b"\x14no-such-host.invalid", 80), 0x04),  # cannot resolve
    ]
    for (command, address_type, address, port), code in cases:
        sock, _ = socks_open(proxy.port)
        with sock:
            assert socks_request(sock, command, address_type, address, port)[1] == code
    sock, _ = socks_open(proxy.port)
    with sock:
        sock.sendall(bytes([5, 1, 0, 9]))
        assert recv_exactly(sock, 2) == bytes([5, 8])  # address type not supported
    sock, method = socks_open(proxy.port, methods=b"\x01")  # GSSAPI only
    with sock:
        assert method == 0xFF
        assert sock.recv(1) == b""
    stats = proxy.stats()
    assert stats["socks"] == 2  # only the CONNECTs count
    assert stats["connect_failures"] == 2
    assert stats["auth_failures"] == 1


# --- proxy authentication ----------------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
def test_http_proxy_basic_auth(emu: Emulator, auth_proxy: ForwardProxy) -> None:
    auth_proxy.reset()
    target = f"{emu.url}/api/chatWithText"
    with httpx.Client(proxy=auth_proxy.proxy_url(), timeout=10, trust_env=False) as client:
        ok = client.post(target, content=chat_body("authed"), headers={"Cookie": "sid=a"})
    assert ok.text == PREFIX + "authed"
    for proxy_url in (
        auth_proxy.url,
        auth_proxy.proxy_url(password="wrong"),
        auth_proxy.proxy_url(user="bob"),
    ):
        with httpx.Client(proxy=proxy_url, timeout=10, trust_env=False) as client:
            refused = client.post(target, content=chat_body("x"), headers={"Cookie": "sid=b"})
            assert refused.status_code == 407
            assert refused.headers["proxy-authenticate"] == 'Basic realm="forward-proxy"'
            # The connection stays usable after a 407 whose body was read.
            assert client.get(f"{emu.url}/_emu/health").status_code == 407
    stats = auth_proxy.stats()
    assert stats["requests"] == 1
    assert stats["auth_failures"] == 6
    assert stats["by_cookie"] == {"sid=a": 1}
    assert [r["cookie"] for r in emu.last_requests()] == ["sid=a"]
    (seen,) = emu.last_requests()
    assert "proxy-authorization" not in seen["headers"]


@needs_curl
@pytest.mark.usefixtures("fresh")
def test_connect_and_socks5_auth_with_curl(emu: Emulator, auth_proxy: ForwardProxy) -> None:
    auth_proxy.reset()
    tunnel_ok = curl_chat(emu, "t", "sid=t", "-p", "-x", auth_proxy.proxy_url())
    assert (tunnel_ok.returncode, tunnel_ok.stdout) == (0, PREFIX + "t")
    tunnel_refused = curl_chat(emu, "t", "sid=t", "-p", "-x", auth_proxy.url, "-w", "%{http_connect}")
    assert tunnel_refused.returncode != 0
    assert tunnel_refused.stdout.endswith("407")
    socks_ok = curl_chat(emu, "s", "sid=s", "-x", auth_proxy.proxy_url("socks5"))
    assert (socks_ok.returncode, socks_ok.stdout) == (0, PREFIX + "s")
    socks_wrong = curl_chat(emu, "s", "sid=s", "-x", auth_proxy.proxy_url("socks5", password="nope"))
    assert socks_wrong.returncode != 0
    socks_none = curl_chat(emu, "s", "sid=s", "--socks5", auth_proxy.address)
    assert socks_none.returncode != 0
    stats = auth_proxy.stats()
    assert (stats["connects"], stats["socks"], stats["auth_failures"]) == (1, 1, 3)
    assert [r["cookie"] for r in emu.last_requests()] == ["sid=t", "sid=s"]


@pytest.mark.usefixtures("fresh")
def test_socks5_auth_raw(auth_proxy: ForwardProxy) -> None:
    sock, method = socks_open(auth_proxy.port, methods=b"\x00")
    with sock:
        assert method == 0xFF  # no-auth is not on offer when a user is set
    sock, method = socks_open(auth_proxy.port, methods=b"\x00\x02", credentials=(b"alice", b"bad"))
    with sock:
        assert method == -1
        assert sock.recv(1) == b""
    sock, method = socks_open(
        auth_proxy.port, methods=b"\x00\x02", credentials=(USER.encode(), PASSWORD.encode())
    )
    with sock:
        assert method == 2
        assert socks_request(sock, 1, 1, bytes([127, 0, 0, 1]), free_port())[1] == 0x05


# --- --refuse ----------------------------------------------------------------------------------


def test_a_refusing_proxy_closes_every_connection(tmp_path: Path, emu: Emulator) -> None:
    refusing = ForwardProxy(tmp_path, refuse=True)
    try:
        emu.reset()
        with (
            httpx.Client(proxy=refusing.url, timeout=5, trust_env=False) as client,
            pytest.raises(httpx.TransportError),
        ):
            client.post(f"{emu.url}/api/chatWithText", content=chat_body("x"), headers={"Cookie": "sid=x"})
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{refusing.url}/_proxy/stats", timeout=5, trust_env=False)
        if CURL is not None:
            for args in (("-x", refusing.url), ("-p", "-x", refusing.url), ("--socks5", refusing.address)):
                assert curl_chat(emu, "x", "sid=x", *args).returncode != 0, args
        assert emu.stats()["requests"] == 0
    finally:
        refusing.stop()
    assert refusing.proc.returncode == 0


# --- the gateway's own HTTP clients ------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
def test_curl_cffi_through_the_proxy(emu: Emulator, auth_proxy: ForwardProxy, scheme: str) -> None:
    from curl_cffi import requests as curl_requests

    auth_proxy.reset()
    response = curl_requests.post(
        f"{emu.url}/api/chatWithText",
        data=chat_body(f"[[emu chunk_size=4]] cffi {scheme}"),
        headers={"Cookie": f"sid={scheme}"},
        proxy=auth_proxy.proxy_url(scheme),
        impersonate="chrome",
        timeout=10,
    )
    assert (response.status_code, response.text) == (200, PREFIX + f"cffi {scheme}")
    stats = auth_proxy.stats()
    forwarded = scheme == "http"
    assert (stats["requests"], stats["socks"]) == ((1, 0) if forwarded else (0, 1))
    assert stats["by_cookie"] == ({f"sid={scheme}": 1} if forwarded else {})
    assert [r["cookie"] for r in emu.last_requests()] == [f"sid={scheme}"]


@pytest.mark.usefixtures("fresh")
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_requests_through_the_proxy(emu: Emulator, auth_proxy: ForwardProxy, scheme: str) -> None:
    import requests

    if scheme.startswith("socks"):
        pytest.importorskip("socks", reason="requests needs PySocks for SOCKS proxies")
    auth_proxy.reset()
    response = requests.post(
        f"{emu.url}/api/chatWithText",
        data=chat_body(f"requests {scheme}"),
        headers={"Cookie": f"sid=rq-{scheme}"},
        proxies={"http": auth_proxy.proxy_url(scheme)},
        timeout=10,
    )
    assert (response.status_code, response.text) == (200, PREFIX + f"requests {scheme}")
    assert emu.last_requests()[-1]["cookie"] == f"sid=rq-{scheme}"
    stats = auth_proxy.stats()
    assert stats["requests" if scheme == "http" else "socks"] == 1
