"""What every program that starts the gateway or the emulator as a child needs: the repository root,
a free loopback port, and an environment with no gateway setting leaking in from the machine.
Shared by the tests and the benchmark; no pytest import, so `bench/` can use it too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """The machine's environment without anything that configures the gateway."""
    prefixes = (
        "API_",
        "GPTOMNI_",
        "UPSTREAM_",
        "AUTH_",
        "ADMIN_",
        "CREDENTIAL",
        "MODEL_",
        "SERVED_",
        "ALLOW_IPS",
        "DENY_IPS",
        "TRUSTED_PROXIES",
    )
    settings = {name.upper() for name in Settings.model_fields}  # DEMO, REDIS_URL, HOST, PORT, ...
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in settings}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, wait: float = 10) -> int:
    """Send `sig` (if it still runs), give it `wait` seconds to exit, then kill it; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
