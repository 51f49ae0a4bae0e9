"""The README's quick start on a fresh machine: a copy of the repository (what git tracks, plus new
files not ignored), where the README's first command, run exactly as written, makes a clean virtual
environment, installs what is needed into it and starts the gateway in demo mode, which answers a
chat call. The
second command must be the one `.ci/run` ends with."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.demo.mode import DEMO_API_KEY
from tests.conftest import ROOT, base_env, free_port

README = ROOT / "README.md"


def quick_start_commands(readme: str) -> list[str]:
    """The ```bash blocks of the README's "## Quick start" section, in order."""
    match = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, re.DOTALL | re.MULTILINE)
    assert match, "README has no '## Quick start' section"
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", match.group(1), re.DOTALL)]


def test_the_quick_start_is_two_commands_and_the_second_is_what_ci_runs() -> None:
    commands = quick_start_commands(README.read_text())
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands), "each is one command line"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == commands[1]


def copy_of_the_repository(target: Path) -> Path:
    """What a clone would hold: tracked files (as in the working tree) and new files not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() and not name.startswith(".hypothesis/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.timeout(900)
def test_the_first_command_on_a_fresh_clone_answers_a_chat_in_demo_mode(tmp_path: Path) -> None:
    command = quick_start_commands(README.read_text())[0]
    clone = copy_of_the_repository(tmp_path / "clone")
    port = free_port()
    env = {
        k: v
        for k, v in base_env().items()
        if k not in ("PYTHONPATH", "HOST", "PORT", "DEMO", "WORKERS", "PYTHONHOME", "VIRTUAL_ENV")
    }
    # `python3` is this machine's Python, outside any virtual environment the tests run in.
    python_dir = tmp_path / "python"
    python_dir.mkdir()
    (python_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env["PATH"] = f"{python_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PORT"] = str(port)
    log_path = tmp_path / "quickstart.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the whole group (bash, pip, the gateway) is stopped at the end
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600  # pip may have to download everything
            while True:
                assert proc.poll() is None, f"exited with {proc.returncode}: {log_path.read_text()[-4000:]}"
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            answer = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "gptomni", "messages": [{"role": "user", "content": "hi from a fresh clone"}]},
                headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            text = answer.json()["choices"][0]["message"]["content"]
            assert "canned" in text and text.endswith("hi from a fresh clone")
            output = log_path.read_text()
            assert "DEMO MODE" in output
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
    # What it needed went into the clean virtual environment the command made, from requirements.txt.
    assert list((clone / ".venv").glob("lib/python3*/site-packages/fastapi_offline"))
