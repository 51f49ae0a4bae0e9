"""What the prompt renderer makes of real agent requests: a Claude Code and a Codex request, recorded
from the CLIs themselves (tests/agents/data, see tests/agents/README.md), decoded by their surfaces.

The tools block must hold each tool's name, description and schema once and the calling rules once,
and be no larger than the tools' own compact JSON; MAX_PROMPT_CHARS must drop history, never the
system text, the tools or the last user message."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core import tools
from app.core.job import Job
from app.core.prompt import PromptTooLong, render_prompt
from app.surfaces.anthropic.wire import decode_messages
from app.surfaces.openai_responses.wire import parse_request, to_job

DATA = Path(__file__).resolve().parents[1] / "agents" / "data"


def codex_as_configured(body: bytes) -> bytes:
    """The recording is of a stock Codex, which offers OpenAI's hosted web search; with the README's
    config.toml (`web_search = "disabled"`) Codex sends the same request without it."""
    data = json.loads(body)
    data["tools"] = [tool for tool in data["tools"] if tool.get("type") != "web_search"]
    return json.dumps(data).encode()


def decode_codex(body: bytes) -> Job:
    return to_job(parse_request(body))


AGENTS: dict[str, tuple[str, Callable[[bytes], Job]]] = {
    "claude-code": ("claude_code_request.json", decode_messages),
    "codex": ("codex_request.json", decode_codex),
}


def load(agent: str) -> tuple[dict[str, Any], Job]:
    name, decode = AGENTS[agent]
    body = (DATA / name).read_bytes()
    if agent == "codex":
        body = codex_as_configured(body)
    return json.loads(body), decode(body)


def render(job: Job, max_chars: int | None = None) -> str:
    return render_prompt(
        job.turns,
        instructions=tools.render_tools_instructions(job.tools, job.tool_choice),
        render_tool_calls=tools.render_assistant_tool_calls,
        render_tool_result=tools.render_tool_result,
        max_chars=max_chars,
    )


@pytest.mark.parametrize("agent", list(AGENTS))
def test_tools_block_states_each_tool_once_and_is_no_larger_than_their_json(agent: str) -> None:
    raw, job = load(agent)
    block = tools.render_tools_instructions(job.tools, job.tool_choice)
    assert len(job.tools) >= 8
    for spec in job.tools:
        assert len(re.findall(rf"^- {re.escape(spec.name)}(?::|$)", block, re.MULTILINE)) == 1, spec.name
        if spec.description:
            first_line = spec.description.strip().splitlines()[0]
            assert block.count(first_line) == 1, spec.name
    for rule in ("## Calling tools", "<tool_calls>\n[", "Never write them yourself."):
        assert block.count(rule) == 1
    assert "$schema" not in block
    compact_json = len(json.dumps(raw["tools"], ensure_ascii=False, separators=(",", ":")))
    assert len(block) <= compact_json, (len(block), compact_json)


@pytest.mark.parametrize("agent", list(AGENTS))
def test_max_prompt_chars_drops_history_first(agent: str) -> None:
    _, job = load(agent)
    full = render(job)
    system = [turn.text for turn in job.turns if turn.role == "system"]
    last_user = next(turn.text for turn in reversed(job.turns) if turn.role == "user")
    dropped = [t.text for t in job.turns if t.role not in ("system",) and t.text and t.text != last_user]
    assert dropped, "the recording has history to drop"
    # Room for everything but the oldest droppable turn.
    limit = len(full) - 1
    prompt = render(job, max_chars=limit)
    assert len(prompt) <= limit
    for text in system:
        assert text in prompt
    assert last_user in prompt
    assert tools.render_tools_instructions(job.tools, job.tool_choice) in prompt
    floor = len(render(job, max_chars=10**9)) - sum(len(t) for t in dropped)
    with pytest.raises(PromptTooLong):
        render(job, max_chars=max(1, floor // 2))
