"""The project's own nginx.conf, run by the real nginx in front of two uvicorn processes and the
emulator, driven by the official `openai` SDK (and httpx where headers are under test).

The rendered config differs from the shipped one only in the upstream addresses, the listen port,
the temp paths and a 3 s proxy_read_timeout, so that the silent-upstream test is quick.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, free_port, gateway_settings
from tests.deploy.processes import Nginx

COOKIE = "session=nginx-test-cookie-0123456789abcdef"
REPLY = " ".join(["Streaming through nginx, piece by piece, as the upstream writes it."] * 3)
NGINX_READ_TIMEOUT = 3


def scripted(reply: str, **options: Any) -> str:
    directive = " ".join(f"{k}={v}" for k, v in options.items())
    return f"[[emu {directive}]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"


class Stack:
    def __init__(self, gateways: list[Gateway], nginx: Nginx) -> None:
        self.gateways = gateways
        self.nginx = nginx
        self.url = nginx.url

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        options: dict[str, Any] = {"max_retries": 0, "timeout": 60.0} | kwargs
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=MASTER_KEY, **options)

    def app_log_lines(self, pattern: str, *, expect: int = 0) -> list[list[str]]:
        """Access lines matching `pattern`, per app process, once there are `expect` of them in all.

        The app writes its access line just after the last byte leaves, so the client can be
        a moment ahead of it.
        """
        deadline = time.monotonic() + 5
        while True:
            found = [[ln for ln in gw.log().splitlines() if re.search(pattern, ln)] for gw in self.gateways]
            if sum(map(len, found)) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture(scope="module")
def stack(emulator: Emulator, workdir: Path) -> Iterator[Stack]:
    # nginx runs on loopback here: it is the trusted proxy whose X-Forwarded-For the app believes.
    settings = gateway_settings(emulator, [COOKIE], KEEPALIVE_INTERVAL="1", TRUSTED_PROXIES="127.0.0.1")
    gateways = [Gateway(workdir, settings, name=f"behind-nginx-{i}") for i in (1, 2)]
    nginx = None
    try:
        nginx = Nginx(
            workdir,
            [f"127.0.0.1:{gw.port}" for gw in gateways],
            read_timeout=f"{NGINX_READ_TIMEOUT}s",
        )
        yield Stack(gateways, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        for gw in gateways:
            gw.stop()


def test_paced_answer_arrives_piece_by_piece(stack: Stack) -> None:
    stream = stack.openai().chat.completions.create(
        model="gptomni",
        messages=[{"role": "user", "content": scripted(REPLY, duration=3, chunk_size=8)}],
        stream=True,
    )
    arrivals: list[float] = []
    parts: list[str] = []
    finish = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(parts) == REPLY
    assert finish == "stop"
    # Buffered anywhere, the pieces would arrive together at the end; paced over 3 s, they spread.
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 1.5, "the answer arrived in one lump: something buffers"


def test_stream_is_not_compressed_and_not_buffered(stack: Stack) -> None:
    body = {
        "model": "gptomni",
        "stream": True,
        "messages": [{"role": "user", "content": scripted("x" * 4000, duration=1, chunk_size=500)}],
    }
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Accept-Encoding": "gzip, deflate"}
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in r.headers
        text = "".join(r.iter_text())
    assert text.rstrip().endswith("data: [DONE]")


def test_requests_are_spread_over_both_app_processes(stack: Stack) -> None:
    client = stack.openai()
    ids = [f"spread-{i}-{time.monotonic_ns()}" for i in range(8)]
    for request_id in ids:
        reply = client.chat.completions.create(
            model="gptomni",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"X-Request-ID": request_id},
        )
        assert reply.choices[0].message.content
    served = stack.app_log_lines("request_id=spread-", expect=len(ids))
    assert sum(len(lines) for lines in served) == len(ids)
    assert all(lines for lines in served), f"one app process got nothing: {[len(x) for x in served]}"


def test_upstream_silent_longer_than_nginx_read_timeout_still_streams(stack: Stack) -> None:
    # KEEPALIVE_INTERVAL=1: the app writes a comment every second, so nginx's 3 s read time-out,
    # which is between two reads, never fires, although the upstream says nothing for 6 s.
    started = time.monotonic()
    stream = stack.openai().chat.completions.create(
        model="gptomni",
        messages=[{"role": "user", "content": scripted("Worth the wait.", first_byte_delay=6)}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Worth the wait."
    assert time.monotonic() - started > 2 * NGINX_READ_TIMEOUT - 1


def test_silent_non_streamed_answer_hits_the_read_timeout_as_an_envelope(stack: Stack) -> None:
    # The control for the test above: without keep-alive comments the same silence is a 504.
    with pytest.raises(openai.APIStatusError) as info:
        stack.openai().chat.completions.create(
            model="gptomni",
            messages=[{"role": "user", "content": scripted("Too late.", first_byte_delay=6)}],
        )
    assert info.value.status_code == 504
    assert info.value.response.json()["error"]["code"] == "gateway_timeout"


def test_five_megabyte_body_passes(stack: Stack) -> None:
    content = ("lorem ipsum " * 420_000)[:5_000_000] + "\nlast line of a big prompt"
    reply = stack.openai().chat.completions.create(
        model="gptomni", messages=[{"role": "user", "content": content}]
    )
    assert "last line of a big prompt" in (reply.choices[0].message.content or "")


def test_body_over_the_limit_gets_413_envelope_from_nginx(stack: Stack) -> None:
    request_id = f"too-big-{time.monotonic_ns()}"
    with pytest.raises(openai.APIStatusError) as info:
        stack.openai().chat.completions.create(
            model="gptomni",
            messages=[{"role": "user", "content": "x" * (11 * 1024 * 1024)}],
            extra_headers={"X-Request-ID": request_id},
        )
    response = info.value.response
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"] == request_id
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_too_large"
    # Refused by nginx, before the app read a byte of it.
    assert stack.app_log_lines(f"request_id={request_id}") == [[], []]


def test_request_id_goes_to_the_app_and_back(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    given = f"client-id.{time.monotonic_ns()}"
    response = httpx.get(f"{stack.url}/v1/models", headers={**headers, "X-Request-ID": given}, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == given
    assert sum(map(len, stack.app_log_lines(f"request_id={re.escape(given)} ", expect=1))) == 1

    made = httpx.get(f"{stack.url}/v1/models", headers=headers, timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert sum(map(len, stack.app_log_lines(f"request_id={made} ", expect=1))) == 1

    unsafe = httpx.get(
        f"{stack.url}/v1/models", headers={**headers, "X-Request-ID": 'a b"c' + "x" * 200}, timeout=10
    )
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])


def test_health_passes_through(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_app_down_is_a_502_envelope(workdir: Path) -> None:
    nginx = Nginx(workdir, [f"127.0.0.1:{free_port()}"])
    try:
        response = httpx.get(f"{nginx.url}/v1/models", timeout=10)
    finally:
        nginx.stop()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "gateway_unavailable"
    assert response.headers["x-request-id"]


def test_client_address_reaches_the_app(stack: Stack) -> None:
    # nginx sends the address it saw, replacing what the client wrote; the app believes nginx
    # (TRUSTED_PROXIES: loopback here) and logs that address, never the client's own claim.
    request_id = f"forwarded-{time.monotonic_ns()}"
    headers = {
        "Authorization": f"Bearer {MASTER_KEY}",
        "X-Request-ID": request_id,
        "X-Forwarded-For": "198.51.100.7",
    }
    # The client connects from 127.0.0.2; nginx reaches the app from 127.0.0.1, the trusted proxy.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as client:
        assert client.get(f"{stack.url}/v1/models", headers=headers).status_code == 200
    (line,) = [ln for lines in stack.app_log_lines(f"request_id={request_id} ", expect=1) for ln in lines]
    assert "client=127.0.0.2" in line
    assert "198.51.100.7" not in line
