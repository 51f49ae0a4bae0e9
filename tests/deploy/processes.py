"""Real processes for the deployment tests: nginx with the project's rendered nginx.conf, and the
gateway started the production way (`python main.py`, with its workers and graceful shutdown)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, base_env, free_port
from tests.deploy.render_nginx import SHIPPED, render
from tests.processes import stop_process


def nginx_binary() -> str:
    """Debian's nginx (`.ci/run` installs it). Missing: a skip on a developer's machine, a failure in CI."""
    found = shutil.which("nginx") or next(
        (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs Debian's nginx package")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start: {log.read_text(errors='replace')}")


class Nginx:
    """The real nginx binary, in the foreground, with every runtime path in its own directory."""

    def __init__(self, workdir: Path, upstreams: list[str], *, read_timeout: str | None = None) -> None:
        binary = nginx_binary()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = workdir / f"nginx-{self.port}"
        self.dir.mkdir()
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            render(
                SHIPPED.read_text(),
                upstreams=upstreams,
                listen=f"127.0.0.1:{self.port}",
                runtime_dir=self.dir,
                read_timeout=read_timeout,
            )
        )
        self.log_path = self.dir / "nginx.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.dir), "-e", "stderr", "-c", str(self.conf), "-g", "daemon off;"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        _wait_http(f"{self.url}/_never_proxied_probe", self.proc, self.log_path, "nginx")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class MainProcess:
    """`python main.py [args]`, as the Dockerfile runs it: HOST, PORT, WORKERS from the environment.

    `host=None` leaves HOST unset (demo mode picks its own); `wait=False` returns before it serves
    (`wait_ready()` then, or `proc.wait()` for a start that must fail)."""

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, str],
        *,
        name: str = "main",
        args: tuple[str, ...] = (),
        host: str | None = "127.0.0.1",
        wait: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        env = base_env() | settings | {"PORT": str(self.port)} | ({"HOST": host} if host is not None else {})
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> MainProcess:
        _wait_http(f"{self.url}/health", self.proc, self.log_path, "python main.py")
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = stop_process(self.proc, wait=30)
        self._log.close()
        return code


def refused_starts(env: dict[str, str], cwd: Path, timeout: float = 60) -> list[tuple[int, str, float]]:
    """Start the gateway both ways a deployment does (`python main.py`, `uvicorn main:app`) with
    `env`, each expected to refuse: (exit code, everything it printed, seconds it took) of each."""
    results = []
    for command in ([str(ROOT / "main.py")], ["-m", "uvicorn", "main:app", "--port", str(free_port())]):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, *command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        results.append((result.returncode, result.stdout + result.stderr, time.monotonic() - started))
    return results
