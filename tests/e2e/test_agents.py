"""Real agent CLIs against the real gateway: Claude Code on `/v1/messages`, Codex on `/v1/responses`.

The CLIs are the npm packages pinned in tests/agents/package.json (`.ci/run` installs them with
`npm ci`); a missing one fails the test with how to install it, it is never skipped. The emulator plays
the model: `<<<EMU_REPLY ... EMU_REPLY>>>` in the prompt scripts its answer, `<<<EMU_REPLY@N ...` the
answer once N tool results came back, so a single prompt scripts a whole tool round trip.

Every run is offline and leaves the machine alone: a temporary HOME (and CLAUDE_CONFIG_DIR / CODEX_HOME
under it), a temporary working directory, an environment built from scratch (nothing inherited but PATH),
telemetry, update checks and other non-essential traffic off by the CLIs' documented settings, no
retries, and a hard timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings
from tests.processes import ROOT

AGENTS = ROOT / "tests" / "agents"
BIN = AGENTS / "node_modules" / ".bin"
PINNED = json.loads((AGENTS / "package.json").read_text())["dependencies"]
INSTALL_HINT = (
    "install the pinned CLIs with `(cd tests/agents && npm ci --no-audit --no-fund)` (.ci/run does)"
)
COOKIE = "session=agents-cookie-0123456789"
# Claude Code asks for claude-opus-*/claude-sonnet-*/claude-haiku-*, Codex for gpt-5.*.
MODEL_ALIASES = "claude-*=gptomni,gpt-5*=gptomni"
CODEX_MODEL = "gpt-5.5"
RUN_TIMEOUT = 180.0
KEY_ENV = "GATEWAY_API_KEY"

# Claude Code: its documented switches for telemetry, error reports, auto-update, /bug, and every other
# request that is not the model call itself (CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC covers the rest:
# release notes, model capabilities, grove...). No retries, so a gateway error shows at once.
CLAUDE_OFFLINE = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
    "API_TIMEOUT_MS": "120000",
}

# Codex: the config.toml the README gives users (its Codex section), so that what we tell people to
# paste is what runs here, with the gateway's address put in. The test adds what a test needs:
# no approvals, no sandbox (the echo command runs unsandboxed: the test is about the gateway, and
# Codex's bundled bubblewrap needs user namespaces that a CI container may not have), no retries, so
# an error shows at once, and no OpenTelemetry export, history file or stored login.
README_CODEX = re.search(
    r"\*\*The Codex CLI\*\*.*?```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL
)
assert README_CODEX is not None, "the README lost its Codex config.toml"
TEST_TOP_LEVEL = """\
approval_policy = "never"
sandbox_mode = "danger-full-access"
cli_auth_credentials_store = "file"
"""
TEST_PROVIDER_KEYS = """\
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 120000
"""
TEST_TABLES = """
[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"
log_user_prompt = false

[history]
persistence = "none"
"""


def codex_config(base_url: str) -> str:
    readme = README_CODEX.group(1) if README_CODEX else ""
    assert readme.rstrip().splitlines()[-1].startswith("supports_websockets"), "provider table last"
    assert f'env_key = "{KEY_ENV}"' in readme and f'model = "{CODEX_MODEL}"' in readme
    config = readme.replace('base_url = "http://localhost:8000/v1"', f'base_url = "{base_url}"')
    assert config != readme, "the README's base_url changed"
    return TEST_TOP_LEVEL + config + TEST_PROVIDER_KEYS + TEST_TABLES


@dataclass
class Run:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    log_from: int = 0  # the gateway log's length when the CLI started

    def describe(self, gateway: Gateway | None = None) -> str:
        parts = [
            f"command: {' '.join(self.argv[:2])} ... (exit {self.returncode})",
            f"stdout:\n{self.stdout[-4000:]}",
            f"stderr:\n{self.stderr[-4000:]}",
        ]
        if gateway is not None:
            parts.append(f"gateway log during the run:\n{gateway.log()[self.log_from :][-6000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Path) -> Iterator[Gateway]:
    settings = gateway_settings(emulator, [COOKIE], MODEL_ALIASES=MODEL_ALIASES)
    gw = Gateway(workdir, settings, name="agents")
    yield gw
    gw.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A throwaway HOME with a working directory inside; the CLIs write only here."""
    (tmp_path / "home" / "tmp").mkdir(parents=True)
    (tmp_path / "home" / "work").mkdir()
    return tmp_path / "home"


def cli(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {INSTALL_HINT}", pytrace=False)
    return path


def base_env(home: Path) -> dict[str, str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the agent CLIs need Node.js (>= 20)", pytrace=False)
    path = os.pathsep.join([str(Path(node).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return {
        "PATH": path,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }


def run(argv: list[str], env: dict[str, str], cwd: Path, gateway: Gateway | None = None) -> Run:
    log_from = len(gateway.log()) if gateway is not None else 0
    try:
        done = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        timed_out = Run(argv, None, out, err, log_from)
        pytest.fail(f"timed out after {RUN_TIMEOUT}s\n" + timed_out.describe(gateway), pytrace=False)
    return Run(argv, done.returncode, done.stdout, done.stderr, log_from)


def claude(prompt: str, home: Path, gateway: Gateway, *extra: str) -> Run:
    env = base_env(home) | CLAUDE_OFFLINE
    env |= {
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": MASTER_KEY,
    }
    argv = [str(cli("claude")), "-p", prompt, "--output-format", "json", *extra]
    return run(argv, env, home / "work", gateway)


def claude_result(outcome: Run, gateway: Gateway) -> dict[str, Any]:
    assert outcome.returncode == 0, outcome.describe(gateway)
    try:
        result: dict[str, Any] = json.loads(outcome.stdout)
    except ValueError:
        pytest.fail("claude did not print one JSON object\n" + outcome.describe(gateway), pytrace=False)
    assert result.get("is_error") is False, outcome.describe(gateway)
    return result


def codex(prompt: str, home: Path, gateway: Gateway) -> tuple[Run, Path]:
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(f"{gateway.url}/v1"))
    env = base_env(home) | {"CODEX_HOME": str(codex_home), KEY_ENV: MASTER_KEY}
    last = home / "last-message.txt"
    argv = [
        str(cli("codex")),
        "exec",
        "--strict-config",
        "--skip-git-repo-check",
        "--ephemeral",
        "--color",
        "never",
        "--output-last-message",
        str(last),
        prompt,
    ]
    return run(argv, env, home / "work", gateway), last


ACCESS_STATUS = re.compile(r"gptomni2api\.access: .*?route=(?P<route>\S+) status=(?P<status>\d+)")


def assert_all_requests_succeeded(gateway: Gateway, outcome: Run) -> None:
    """No access-log line of the CLI's run has a status other than 2xx.

    A CLI may work around an error (Claude Code re-sends without what was refused), so a green run can
    still hide a request the gateway refused: every request a CLI makes must succeed."""
    refused = [
        line
        for line in gateway.log()[outcome.log_from :].splitlines()
        if (found := ACCESS_STATUS.search(line)) and not found["status"].startswith("2")
    ]
    assert not refused, (
        "the gateway refused requests that the CLI then worked around:\n"
        + "\n".join(refused)
        + "\n"
        + outcome.describe(gateway)
    )


def prompts_with(emulator: Emulator, marker: str) -> list[dict[str, Any]]:
    """The upstream requests of this test (its marker is in the user's prompt), oldest first."""
    requests: list[dict[str, Any]] = emulator.stats()["last_requests"]
    return [r for r in requests if r["prompt"] is not None and marker in r["prompt"]]


def tool_call_block(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_calls>\n{json.dumps([{'name': name, 'arguments': arguments}])}\n</tool_calls>"


def scripted(task: str, *turns: str) -> str:
    """A prompt: the task, then the emulator's answer for turn 0, 1, ... (after that many tool results)."""
    blocks = [f"<<<EMU_REPLY@{n}\n{text}\nEMU_REPLY>>>" for n, text in enumerate(turns)]
    return "\n".join([task, *blocks])


def tool_result_pattern(output_line: str) -> re.Pattern[str]:
    """A rendered tool result whose output has this line."""
    inside = r"(?:(?!</?tool_result).)*?"  # never across another result's tags
    return re.compile(
        rf'<tool_result id="(?P<id>[^"]*)"[^>]*>{inside}^{re.escape(output_line)}${inside}</tool_result>',
        re.DOTALL | re.MULTILINE,
    )


def test_pinned_cli_versions_run_offline(home: Path) -> None:
    env = base_env(home) | CLAUDE_OFFLINE | {"CLAUDE_CONFIG_DIR": str(home / ".claude")}
    env["CODEX_HOME"] = str(home / ".codex")
    (home / ".codex").mkdir()
    for name, package in (("claude", "@anthropic-ai/claude-code"), ("codex", "@openai/codex")):
        outcome = run([str(cli(name)), "--version"], env, home / "work")
        assert outcome.returncode == 0, outcome.describe()
        assert PINNED[package] in outcome.stdout, (
            f"{name} is not the pinned {PINNED[package]}: {INSTALL_HINT}"
        )


def test_claude_code_prints_the_emulator_answer(home: Path, gateway: Gateway, emulator: Emulator) -> None:
    marker = f"agents-{uuid.uuid4().hex[:12]}"
    reply = f"Hello from the emulator, through Claude Code ({marker})."
    outcome = claude(f"Say hello.\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>", home, gateway)
    result = claude_result(outcome, gateway)
    assert result["result"] == reply, outcome.describe(gateway)
    upstream = prompts_with(emulator, marker)
    assert len(upstream) == 1, upstream
    assert "Say hello." in upstream[0]["prompt"]
    assert_all_requests_succeeded(gateway, outcome)


def test_claude_code_runs_a_tool_and_sends_its_result_back(
    home: Path, gateway: Gateway, emulator: Emulator
) -> None:
    marker = f"agents-{uuid.uuid4().hex[:12]}"
    final = f"The command printed its greeting ({marker})."
    call = tool_call_block("Bash", {"command": "echo hi-from-tool", "description": "Print a greeting"})
    prompt = scripted(f"Run the greeting command ({marker}).", call, final)
    outcome = claude(prompt, home, gateway, "--allowedTools", "Bash")
    result = claude_result(outcome, gateway)
    upstream = prompts_with(emulator, marker)
    assert [r["tool_results"] for r in upstream] == [0, 1], outcome.describe(gateway)
    second = upstream[1]["prompt"]
    found = tool_result_pattern("hi-from-tool").search(second)
    assert found is not None, f"no tool result with the echo output in the second prompt:\n{second[-3000:]}"
    assert f'"id": "{found["id"]}"' in second, "the tool result's id is not the id of the call it answers"
    assert result["result"] == final, outcome.describe(gateway)
    assert_all_requests_succeeded(gateway, outcome)


def test_codex_prints_the_emulator_answer(home: Path, gateway: Gateway, emulator: Emulator) -> None:
    marker = f"agents-{uuid.uuid4().hex[:12]}"
    reply = f"Hello from the emulator, through Codex ({marker})."
    outcome, last = codex(f"Say hello.\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>", home, gateway)
    assert outcome.returncode == 0, outcome.describe(gateway)
    assert outcome.stdout.strip() == reply, outcome.describe(gateway)
    assert last.read_text().strip() == reply
    upstream = prompts_with(emulator, marker)
    assert len(upstream) == 1, upstream
    assert "Say hello." in upstream[0]["prompt"]
    assert_all_requests_succeeded(gateway, outcome)


def test_codex_runs_a_tool_and_sends_its_result_back(
    home: Path, gateway: Gateway, emulator: Emulator
) -> None:
    marker = f"agents-{uuid.uuid4().hex[:12]}"
    final = f"The command printed its greeting ({marker})."
    call = tool_call_block("exec_command", {"cmd": "echo hi-from-tool"})
    outcome, _ = codex(scripted(f"Run the greeting command ({marker}).", call, final), home, gateway)
    upstream = prompts_with(emulator, marker)
    assert [r["tool_results"] for r in upstream] == [0, 1], outcome.describe(gateway)
    second = upstream[1]["prompt"]
    found = tool_result_pattern("hi-from-tool").search(second)
    assert found is not None, f"no tool result with the echo output in the second prompt:\n{second[-3000:]}"
    assert f'"id": "{found["id"]}"' in second, "the tool result's id is not the id of the call it answers"
    assert outcome.returncode == 0, outcome.describe(gateway)
    assert outcome.stdout.strip() == final, outcome.describe(gateway)
    assert_all_requests_succeeded(gateway, outcome)
