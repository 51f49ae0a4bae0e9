"""Malformed bodies for every surface but Chat Completions (tests/e2e/test_fuzz.py covers that one):
valid requests with one value somewhere replaced by a nasty one, plus broken JSON. Each answer is a
2xx or a 4xx in the caller's dialect, never a 5xx, and the service stays up.

Mutations come from a fixed seed, so a failure reproduces."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings


def deep(levels: int) -> Any:
    value: Any = {"type": "string"}
    for _ in range(levels):
        value = {"type": "object", "properties": {"a": value}, "required": ["a"]}
    return value


NASTY: list[Any] = [
    deep(150),  # deeper than the surfaces accept, shallower than the JSON parser refuses
    [["a"], {"b": 1}],  # e.g. as a schema's `required`
    None,
    True,
    0,
    -1,
    1.5e308,
    "",
    "x" * 20_000,
    "\u0000\ud7ff\ufffe",
    [],
    [None],
    [1, "a"],
    {},
    {"type": "image", "source": {}},
    {"type": 5},
    {"a": {"b": {"c": []}}},
    "[DONE]",
]
REPLY = "<<<EMU_REPLY\nok\nEMU_REPLY>>>"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"name": "get_weather", "description": "Weather.", "input_schema": SCHEMA}
VALID: dict[str, dict[str, Any]] = {
    "/v1/messages": {
        "model": "gptomni",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": REPLY}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21"}]},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
    },
    "/v1/messages/count_tokens": {
        "model": "gptomni",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [TOOL],
    },
    "/v1/responses": {
        "model": "gptomni",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": REPLY}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "21"},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}],
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "max_output_tokens": 100,
        "store": False,
    },
    "/v1/completions": {"model": "gptomni", "prompt": REPLY, "max_tokens": 20, "stop": ["END"]},
}


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value where another value could stand."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, (*prefix, index))


def mutated(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(body)
    path = rng.choice(list(paths_of(out)))
    holder: Any = out
    for key in path[:-1]:
        holder = holder[key]
    if rng.random() < 0.15 and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = copy.deepcopy(rng.choice(NASTY))
    return out


def bodies(path: str, seed: int = 20261202, count: int = 120) -> Iterator[bytes]:
    yield b""
    yield b"not json"
    yield b"\xff\xfe\x00"
    yield b"[1, 2]"
    yield b"null"
    yield b"{" * 3000 + b"}" * 3000
    rng = random.Random(f"{seed}{path}")
    for _ in range(count):
        yield json.dumps(mutated(VALID[path], rng)).encode()


def assert_envelope(path: str, response: httpx.Response, body: bytes) -> None:
    data = response.json()
    if path.startswith("/v1/messages"):
        assert data["type"] == "error", body[:200]
        assert set(data["error"]) == {"type", "message"}, body[:200]
        assert data["error"]["message"], body[:200]
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}, body[:200]
        assert data["error"]["message"], body[:200]


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    gw = Gateway(
        workdir, gateway_settings(emulator, ["session=fuzz-surfaces-00000000"]), name="fuzz-surfaces"
    )
    yield gw
    gw.stop()


@pytest.mark.parametrize("path", list(VALID))
def test_mutated_bodies_never_get_a_5xx(gateway: Gateway, path: str) -> None:
    seen: dict[int, int] = {}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert client.post(path, json=VALID[path], headers={"x-api-key": MASTER_KEY}).status_code == 200
        for body in bodies(path):
            response = client.post(
                path, content=body, headers={"x-api-key": MASTER_KEY, "Content-Type": "application/json"}
            )
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (body[:300], response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert_envelope(path, response, body)
    assert sum(n for status, n in seen.items() if status >= 400) > 20, seen  # the mutations do bite
    assert gateway.proc.poll() is None
    assert "Traceback" not in gateway.log()
