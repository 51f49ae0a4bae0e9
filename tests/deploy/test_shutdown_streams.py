"""A stop whose grace period is shorter than the answers in flight: SIGTERM to `python main.py`
with SHUTDOWN_GRACE_SECONDS=1 while 10 answers stream, in three dialects. Each client gets a clean
end in its own dialect (an error event saying the server is shutting down), none a cut body."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MASTER_KEY, Emulator, gateway_settings
from tests.deploy.processes import MainProcess

COOKIE = "session=drain-test-cookie-0123456789"
SLOW = "[[emu duration=20 chunk_size=4]]\n<<<EMU_REPLY\n" + "word " * 200 + "\nEMU_REPLY>>>"
HEADERS = {"Authorization": f"Bearer {MASTER_KEY}", "anthropic-version": "2023-06-01"}
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "/v1/chat/completions",
        {"model": "gptomni", "stream": True, "messages": [{"role": "user", "content": SLOW}]},
    ),
    (
        "/v1/messages",
        {
            "model": "gptomni",
            "max_tokens": 4096,
            "stream": True,
            "messages": [{"role": "user", "content": SLOW}],
        },
    ),
    ("/v1/responses", {"model": "gptomni", "stream": True, "input": SLOW}),
]


def read_stream(
    url: str, path: str, body: dict[str, Any], started: threading.Event, out: dict[str, Any]
) -> None:
    try:
        with httpx.stream("POST", url + path, json=body, headers=HEADERS, timeout=30) as response:
            out["status"] = response.status_code
            raw = b""
            for piece in response.iter_raw():
                raw += piece
                if b"word" in raw:
                    started.set()
            out["raw"] = raw.decode()
    except httpx.HTTPError as exc:  # a cut body: what must not happen
        out["error"] = repr(exc)


def clean_end(path: str, raw: str) -> bool:
    """Whether the stream ends with its dialect's error event for a server that is shutting down."""
    events = [e for e in raw.strip().split("\n\n") if e and not e.startswith(":")]
    last = events[-1]
    data = json.loads(last.split("data: ", 1)[1])
    if path == "/v1/chat/completions":
        return bool(data["error"]["code"] == "server_shutting_down")
    if path == "/v1/messages":
        return last.startswith("event: error") and data["error"]["type"] == "overloaded_error"
    return (
        last.startswith("event: response.failed") and "shutting down" in data["response"]["error"]["message"]
    )


def test_streams_past_the_grace_end_with_an_error_event_in_their_dialect(
    emulator: Emulator, workdir: Path
) -> None:
    gateway = MainProcess(
        workdir, gateway_settings(emulator, [COOKIE], SHUTDOWN_GRACE_SECONDS="1"), name="drain"
    )
    try:
        results: list[tuple[str, dict[str, Any]]] = []
        threads = []
        events = []
        for index in range(10):
            path, body = REQUESTS[index % len(REQUESTS)]
            out: dict[str, Any] = {}
            started = threading.Event()
            results.append((path, out))
            events.append(started)
            thread = threading.Thread(target=read_stream, args=(gateway.url, path, body, started, out))
            thread.start()
            threads.append(thread)
        for started in events:
            assert started.wait(15), "a stream did not start"
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(20)
        assert time.monotonic() - signalled < 10
        for path, out in results:
            assert "error" not in out, (path, out.get("error"))
            assert out["status"] == 200
            assert "word" in out["raw"]
            assert clean_end(path, out["raw"]), (path, out["raw"][-400:])
        assert gateway.proc.wait(15) == 0
        assert "timeout graceful shutdown exceeded" not in gateway.log()  # nothing left to cut
    finally:
        gateway.stop()


def test_a_stream_still_waiting_for_the_upstream_gets_a_clean_503(emulator: Emulator, workdir: Path) -> None:
    gateway = MainProcess(
        workdir, gateway_settings(emulator, [COOKIE], SHUTDOWN_GRACE_SECONDS="1"), name="drain-early"
    )
    try:
        body = {
            "model": "gptomni",
            "stream": True,
            "messages": [{"role": "user", "content": "[[emu first_byte_delay=6]]\nhi"}],
        }
        out: dict[str, Any] = {}

        def call() -> None:
            out["response"] = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=30
            )

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the request is in, the upstream still silent
        gateway.proc.send_signal(signal.SIGTERM)
        thread.join(20)
        response = out["response"]
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "server_shutting_down"
        assert response.headers["retry-after"] == "1"
        assert gateway.proc.wait(15) == 0
        assert "timeout graceful shutdown exceeded" not in gateway.log()
    finally:
        gateway.stop()
