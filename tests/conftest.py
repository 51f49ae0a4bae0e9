"""Real processes on loopback for the end-to-end tests: the upstream emulator and the gateway
(uvicorn serving `main:app`). Each runs in a temporary working directory, so a developer's `.env`
never leaks into a test, and writes its log to a file the tests can read."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import ROOT, base_env, free_port

EMULATOR = ROOT / "tests" / "upstream_emulator.py"
MASTER_KEY = "sk-test-master-key-0123456789"
TRANSPORTS = ("curl_cffi", "cloudscraper")


class Emulator:
    def __init__(self, workdir: Path, *, chunk_delay: float = 0.02) -> None:
        self.log_path = workdir / "emulator.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(EMULATOR),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--chunk-delay",
                str(chunk_delay),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=base_env(),
            cwd=workdir,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("EMULATOR_LISTENING"), f"emulator did not start: {line!r}"
        self.address = line.split()[1]
        self.url = f"http://{self.address}"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_emu/stats", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emu/reset", timeout=5).raise_for_status()

    def fault(self, match: str, **options: Any) -> None:
        """Make every request whose cookie contains `match` behave per `options` ({} clears)."""
        body = {"match": match, "options": {k: str(v) for k, v in options.items()}}
        httpx.post(f"{self.url}/_emu/faults", json=body, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Gateway:
    """`uvicorn main:app` with the given settings, on a free port."""

    def __init__(self, workdir: Path, settings: dict[str, str], *, name: str = "gateway") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("w")
        env = base_env() | settings
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not become ready: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def openai(self, **kwargs: Any) -> Any:
        import openai

        options: dict[str, Any] = {"max_retries": 0, "timeout": 30.0}
        options.update(kwargs)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=options.pop("api_key", MASTER_KEY), **options)


def gateway_settings(emulator: Emulator, cookies: list[str], **extra: str) -> dict[str, str]:
    import json

    settings = {
        "API_MASTER_KEY": MASTER_KEY,
        "GPTOMNI_CREDENTIALS": json.dumps(cookies),
        "GPTOMNI_BASE_URL": emulator.url,
        "LOG_LEVEL": "info",
    }
    settings.update(extra)
    return settings


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def emulator(workdir: Path) -> Iterator[Emulator]:
    emu = Emulator(workdir)
    yield emu
    emu.stop()


@pytest.fixture
def start_gateway(workdir: Path) -> Iterator[Any]:
    """A factory: `start_gateway(settings)` starts one; all are stopped at the end of the test."""
    started: list[Gateway] = []

    def start(settings: dict[str, str], name: str = "gateway") -> Gateway:
        gateway = Gateway(workdir, settings, name=name)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
