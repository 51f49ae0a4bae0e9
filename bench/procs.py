"""The processes a benchmark run starts: the upstream emulator, the gateway (uvicorn, one worker),
optionally Nginx in front, and the load-generator workers; and what is read from /proc about them
(CPU time, resident memory).

Gateways start the way tests/conftest.py starts them: `python -m uvicorn main:app`, in a temporary
working directory (so no `.env` leaks in), configured only through the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.processes import ROOT, base_env, free_port, stop_process

EMULATOR = ROOT / "app" / "demo" / "emulator.py"
MASTER_KEY = "sk-bench-master-key-0123456789"
COOKIES = ["session=bench-cookie-aaaaaaaaaaaaaaaa", "session=bench-cookie-bbbbbbbbbbbbbbbb"]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> None:
    """Lift this process's soft descriptor limit; the processes it starts inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps the child (and every thread it starts) on `cpus`."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    stop_process(proc, sig, wait=15)


# --- /proc -----------------------------------------------------------------------------------------


def with_children(pid: int) -> list[int]:
    """The process and its descendants (nginx's workers are children of its master)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                pids += with_children(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (anything but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where /proc does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Polls a process's VmRSS in a thread; `peak_kb` is the largest value seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, memory_kb(self.pid).get("VmRSS", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the processes ---------------------------------------------------------------------------------


class Emulator:
    """app/demo/emulator.py in its fast mode: no pause between pieces."""

    def __init__(self, workdir: Path, *, chunk_size: int, cpus: set[int] | None = None) -> None:
        self._log = (workdir / "emulator.log").open("w")
        fast_mode = ("--chunk-delay", "0", "--chunk-size", str(chunk_size))
        self.proc = subprocess.Popen(
            [sys.executable, str(EMULATOR), "--host", "127.0.0.1", "--port", "0", *fast_mode],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=base_env(),
            cwd=workdir,
            preexec_fn=pinned(cpus),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("EMULATOR_LISTENING"):
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = f"http://{line.split()[1]}"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_emu/stats", timeout=10, trust_env=False)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def wait_idle(self, timeout: float) -> int:
        """Wait until no answer is in flight; the number still in flight when time ran out."""
        deadline = time.monotonic() + timeout
        in_flight = -1  # unknown: the emulator did not answer in time
        while True:
            with contextlib.suppress(httpx.HTTPError):
                in_flight = int(self.stats()["in_flight"])
            if in_flight == 0 or time.monotonic() >= deadline:
                return in_flight
            time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class Gateway:
    """`uvicorn main:app` from `app_dir`, one worker, default event loop and HTTP parser, on a free
    port. `app_dir` may be another checkout, to measure a revision against another."""

    def __init__(
        self,
        workdir: Path,
        emulator_url: str,
        transport: str,
        app_dir: Path = ROOT,
        cpus: set[int] | None = None,
        *,
        name: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self.name = name or f"gateway-{transport}"
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"
        self.log_path = workdir / f"{self.name}.log"
        self._log = self.log_path.open("w")
        env = base_env() | {
            "API_MASTER_KEY": MASTER_KEY,
            "GPTOMNI_CREDENTIALS": json.dumps(COOKIES),
            "GPTOMNI_BASE_URL": emulator_url,
            "UPSTREAM_TRANSPORT": transport,
            "PYTHONPATH": str(app_dir),
            **(settings or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            preexec_fn=pinned(cpus),
        )
        wait_http_ok(f"{self.url}/health", self.proc, self.log_path)

    def log_problems(self) -> int:
        """Lines in the gateway's log that report an error or a traceback."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback"))

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class Nginx:
    """Nginx in front of the gateway (or of several replicas: `upstreams` a list of host:port): the
    project's nginx.conf as tests/deploy/render_nginx.py renders it for loopback when both exist,
    else a minimal streaming proxy."""

    MINIMAL = """
worker_processes 1;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    upstream app {{ {servers} keepalive 32; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""

    def __init__(
        self,
        workdir: Path,
        upstreams: str | list[str],
        name: str,
        app_dir: Path = ROOT,
        cpus: set[int] | None = None,
    ) -> None:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        directory = workdir / f"nginx-{name}"
        directory.mkdir()
        listen = f"127.0.0.1:{free_port()}"
        self.url = f"http://{listen}"
        servers = [
            u.removeprefix("http://") for u in ([upstreams] if isinstance(upstreams, str) else upstreams)
        ]
        config = directory / "nginx.conf"
        config.write_text(self._render(app_dir, servers, listen, directory))
        self.proc = subprocess.Popen(
            [binary, "-p", str(directory), "-e", "stderr", "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,  # the shipped config logs every request to stdout
            stderr=(directory / "stderr.log").open("w"),
            preexec_fn=pinned(cpus),
        )
        wait_http_ok(f"{self.url}/health", self.proc, directory / "stderr.log")

    def _render(self, app_dir: Path, servers: list[str], listen: str, directory: Path) -> str:
        shipped = app_dir / "nginx.conf"
        renderer = ROOT / "tests" / "deploy" / "render_nginx.py"
        if shipped.exists() and renderer.exists():
            self.config = str(shipped)
            command = [sys.executable, str(renderer), "--source", str(shipped)]
            for server in servers:
                command += ["--upstream", server]
            command += ["--listen", listen, "--runtime-dir", str(directory)]
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout
        self.config = "minimal"
        temp = "".join(f"{name}_temp_path {directory / name};\n" for name in ("client_body", "proxy"))
        head = f"pid {directory / 'nginx.pid'};\n" + ("user root;\n" if os.geteuid() == 0 else "")
        upstream = " ".join(f"server {server};" for server in servers)
        return head + self.MINIMAL.format(servers=upstream, listen=listen).replace(
            "http {\n", "http {\n" + temp
        )

    def stop(self) -> None:
        _stop(self.proc, signal.SIGQUIT)


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def wait_http_ok(url: str, proc: subprocess.Popen[Any], log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer: {_tail(log_path)}")


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-2000:]
    return ""


class LoadWorkers:
    """`python -m bench.loadgen` processes, each given a share of the clients of every phase."""

    def __init__(self, count: int, workdir: Path, cpus: set[int] | None = None) -> None:
        self._log = (workdir / "loadgen.log").open("w")
        self.procs: list[subprocess.Popen[str]] = []
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
                env=base_env(),
                cwd=ROOT,
                preexec_fn=pinned(cpus),
            )
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "LOADGEN_READY":
                raise RuntimeError(f"load generator did not start: {line!r}")
        self._busy: list[subprocess.Popen[str]] = []

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def start(self, phase: dict[str, Any], clients: int) -> None:
        """Send a phase to the workers, `clients` split between them as evenly as they go."""
        count = len(self.procs)
        self._busy = []
        for index, proc in enumerate(self.procs):
            share = clients // count + (1 if index < clients % count else 0)
            if share == 0:
                continue
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(phase | {"clients": share}) + "\n")
            proc.stdin.flush()
            self._busy.append(proc)

    def collect(self) -> list[dict[str, Any]]:
        results = []
        for proc in self._busy:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator {proc.pid} exited with {proc.poll()}")
            results.append(json.loads(line))
        self._busy = []
        return results

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for proc in self.procs:
            _stop(proc)
        self._log.close()
