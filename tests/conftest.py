"""Real processes on loopback for the end-to-end tests: the upstream emulator and the gateway
(uvicorn serving `main:app`). Each runs in a temporary working directory, so a developer's `.env`
never leaks into a test, and writes its log to a file the tests can read."""

from __future__ import annotations

import base64
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import ROOT, base_env, free_port, stop_process

EMULATOR = ROOT / "app" / "demo" / "emulator.py"
FORWARD_PROXY = ROOT / "tests" / "forward_proxy.py"
SESSION_COOKIE = "__Secure-next-auth.session-token"
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
        stop_process(self.proc, wait=5)
        self._log.close()

    # --- helpers for sessions, Set-Cookie and what reached the upstream ---

    @staticmethod
    def rotating_cookie(account: str, token: str | None = None, extra: str = "") -> str:
        """A cookie string for an account whose NextAuth session token rotates on every answer
        (`emu_rotate=<account>`); the first token the emulator sees for `account` is accepted."""
        token = token or f"seed.{secrets.token_hex(8)}"
        return f"{SESSION_COOKIE}={token}; emu_rotate={account}{extra}"

    @staticmethod
    def set_cookie_option(*lines: str) -> str:
        """The `emu_set_cookie_b64=...` cookie pair that makes each answer carry these Set-Cookie lines."""
        return "emu_set_cookie_b64=" + base64.b64encode("\n".join(lines).encode()).decode()

    def chat(self, prompt: str, cookie: str, **headers: str) -> httpx.Response:
        """One chat request straight to the emulator (not through the gateway)."""
        response = httpx.post(
            f"{self.url}/api/chatWithText",
            json={"prompt": prompt},
            headers={"Cookie": cookie, **headers},
            timeout=10,
        )
        return response

    def session_check(self, cookie: str | None, **headers: str) -> httpx.Response:
        """`GET /api/auth/session` straight to the emulator."""
        if cookie is not None:
            headers["Cookie"] = cookie
        return httpx.get(f"{self.url}/api/auth/session", headers=headers, timeout=5)

    def last_requests(self, path: str | None = "/api/chatWithText") -> list[dict[str, Any]]:
        """The recorded requests (the last 50), oldest first; only those to `path` unless it is None."""
        requests: list[dict[str, Any]] = self.stats()["last_requests"]
        return [r for r in requests if path is None or r["path"] == path]

    def account(self, name: str) -> dict[str, Any] | None:
        """A rotating account's session state: {current, previous, rotations, grace_uses, rejected,
        session_checks}, or None before its first request."""
        state: dict[str, Any] | None = self.stats()["sessions"].get(name)
        return state


class ForwardProxy:
    """tests/forward_proxy.py as a subprocess: an HTTP (absolute-URI and CONNECT) and SOCKS5 proxy on
    one loopback port. `url` is `http://127.0.0.1:PORT`; `proxy_url("socks5")` adds the credentials."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str | None = None,
        password: str | None = None,
        refuse: bool = False,
    ) -> None:
        self.user = user
        self.password = password
        handle, log_name = tempfile.mkstemp(prefix="forward-proxy-", suffix=".log", dir=workdir)
        self.log_path = Path(log_name)
        self._log = open(handle, "w")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, str(FORWARD_PROXY), "--host", "127.0.0.1", "--port", "0"]
        if user is not None and password is not None:
            args += ["--user", user, "--password", password]
        if refuse:
            args.append("--refuse")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log, text=True, env=base_env(), cwd=workdir
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("PROXY_LISTENING"), f"forward proxy did not start: {line!r}"
        self.address = line.split()[1]
        self.host, _, port = self.address.rpartition(":")
        self.port = int(port)
        self.url = f"http://{self.address}"

    def proxy_url(self, scheme: str = "http", *, user: str | None = None, password: str | None = None) -> str:
        """`scheme://[user:password@]host:port`, with this proxy's own credentials unless given others."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        credentials = f"{user}:{password}@" if user is not None and password is not None else ""
        return f"{scheme}://{credentials}{self.address}"

    def stats(self) -> dict[str, Any]:
        """{requests, connects, socks, targets, by_cookie, by_target, by_user_agent, auth_failures,
        connect_failures, connections, connections_total}; not served with refuse=True."""
        response = httpx.get(f"{self.url}/_proxy/stats", timeout=5, trust_env=False)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/_proxy/reset", timeout=5, trust_env=False).raise_for_status()

    def log(self) -> str:
        """What the proxy wrote to stderr (nothing, unless a connection handler failed)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, wait=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
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
            # --no-proxy-headers: the app decides whom to believe (TRUSTED_PROXIES), as under main.py.
            [
                sys.executable,
                "-m",
                "uvicorn",
                "main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-proxy-headers",
            ],
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
        code = stop_process(self.proc, sig, wait=15)
        self._log.close()
        return code

    def openai(self, **kwargs: Any) -> Any:
        import openai

        options: dict[str, Any] = {"max_retries": 0, "timeout": 30.0}
        options.update(kwargs)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=options.pop("api_key", MASTER_KEY), **options)


def access_line(gw: Gateway, request_id: str) -> str:
    """The gateway's access-log line for a request id (it is written as the response ends)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in gw.log().splitlines() if f"request_id={request_id} " in line]
        if lines:
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no access line for {request_id}")


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


# What must never be in a log: the tests' own keys, any key the gateway generates, a session cookie.
LEAKS = re.compile(
    "|".join(
        [
            re.escape(MASTER_KEY),
            r"sk-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])",  # a key the gateway generated
            r"sk-admin-[A-Za-z0-9_-]{8}|admin-key-[A-Za-z0-9_-]{8}|sk-fixed-env-key-",  # the tests' own
            r"next-auth\.session-token=(?!\[redacted\])[^\s;]",
        ]
    )
)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The log grep over the whole run: after the last test, no log file any process wrote (gateways,
    the emulator, nginx, proxies) holds a key or a session cookie."""
    yield
    root = tmp_path_factory.getbasetemp()
    found = []
    for log in root.rglob("*.log"):
        text = log.read_text(errors="replace")
        for match in LEAKS.finditer(text):
            found.append(
                f"{log.relative_to(root)}: ...{text[max(0, match.start() - 60) : match.start()]}<secret>"
            )
    assert not found, "secrets in logs:\n" + "\n".join(found[:20])


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


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Any]:
    """A factory: `start_redis(password=None)` runs a real redis-server (tests/redis_server.py) on a
    free port in this test's temporary directory; all are stopped at the end of the test."""
    from tests.redis_server import RedisServer

    started: list[RedisServer] = []

    def start(password: str | None = None, name: str = "redis") -> RedisServer:
        try:
            server = RedisServer(tmp_path, password=password, name=name)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(start_redis: Any) -> Any:
    """One real redis-server for this test, without a password; `.url` is its REDIS_URL."""
    return start_redis()
