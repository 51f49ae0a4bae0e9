"""The README's start command, `python main.py`, from a clean directory: it starts on the embedded
defaults (with a key and no cookie), and refuses clearly when it cannot work."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, base_env, free_port

COOKIE = "session=secret-cookie-value-xyz-123456"


def run_main(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py")],
        cwd=tmp_path,
        env=base_env() | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def get_once_up(url: str, what: str, **kwargs: Any) -> httpx.Response:
    """The first answer from a server that is starting (connection refused until it listens)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=1, **kwargs)
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not start")


def test_python_main_starts_without_a_cookie_and_says_how_to_add_one(tmp_path: Path) -> None:
    port = free_port()
    proc = run_main(
        tmp_path, {"API_MASTER_KEY": "sk-start-test-key-000000", "HOST": "127.0.0.1", "PORT": str(port)}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert get_once_up(f"{url}/health", "python main.py").status_code == 200
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-start-test-key-000000"},
            timeout=10,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_credentials"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert "GPTOMNI_CREDENTIALS" in output  # the start-up log says how to add a cookie


def test_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    proc = run_main(tmp_path, {"PORT": str(free_port())})
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "API_MASTER_KEY" in output and "AUTH_DISABLED" in output
    assert "Traceback" not in output


def test_auth_disabled_must_be_explicit_and_then_serves_without_a_key(tmp_path: Path) -> None:
    port = free_port()
    proc = run_main(tmp_path, {"AUTH_DISABLED": "true", "HOST": "127.0.0.1", "PORT": str(port)})
    try:
        assert get_once_up(f"http://127.0.0.1:{port}/v1/models", "AUTH_DISABLED=true").status_code == 200
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert "AUTH_DISABLED" in output  # a warning, not silence


def test_a_broken_credentials_setting_is_a_clear_error_that_hides_the_cookie(tmp_path: Path) -> None:
    proc = run_main(tmp_path, {"API_MASTER_KEY": "sk-x-000000000000", "GPTOMNI_CREDENTIALS": f'["{COOKIE}"'})
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "GPTOMNI_CREDENTIALS" in output
    assert "secret-cookie-value" not in output


def test_settings_come_from_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"API_MASTER_KEY=sk-from-dotenv-0000000\nHOST=127.0.0.1\nPORT={port}\n")
    proc = run_main(tmp_path, {})
    try:
        response = get_once_up(
            f"http://127.0.0.1:{port}/v1/models",
            "python main.py with .env",
            headers={"Authorization": "Bearer sk-from-dotenv-0000000"},
        )
        assert response.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
