"""Graceful shutdown, the way Docker stops the container: SIGTERM to `python main.py` while an
answer streams. The stream completes, no new request is taken meanwhile, and the exit code is 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, gateway_settings
from tests.deploy.processes import MainProcess

COOKIE = "session=shutdown-test-cookie-0123456789"
REPLY = " ".join(["A sentence that must not be cut in the middle by a redeploy."] * 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_the_stream_in_flight_finish(emulator: Emulator, workdir: Path, workers: int) -> None:
    gateway = MainProcess(
        workdir,
        gateway_settings(emulator, [COOKIE], WORKERS=str(workers), SHUTDOWN_GRACE_SECONDS="20"),
        name=f"shutdown-w{workers}",
    )
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)
        prompt = f"[[emu duration=3 chunk_size=8]]\n<<<EMU_REPLY\n{REPLY}\nEMU_REPLY>>>"
        stream = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": prompt}], stream=True
        )
        parts: list[str] = []
        finish = None
        signalled_at = None
        for chunk in stream:
            if not chunk.choices:
                continue
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            if signalled_at is None and "".join(parts):
                gateway.proc.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()
                assert_refuses_new_requests(gateway.url)
        assert "".join(parts) == REPLY
        assert finish == "stop"
        assert signalled_at is not None
        assert gateway.proc.wait(20) == 0
        assert "timeout graceful shutdown exceeded" not in gateway.log()
    finally:
        gateway.stop()


def assert_refuses_new_requests(url: str) -> None:
    """Soon after SIGTERM a new connection is refused (or, with workers, never accepted)."""
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=0.5)
        except httpx.TransportError:
            return
        time.sleep(0.05)
    pytest.fail("still taking new requests 2.5 s after SIGTERM")
