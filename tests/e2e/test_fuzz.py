"""Malformed bodies thrown at a running gateway: every one gets a 4xx OpenAI envelope, never a 500.

Bodies are generated from a fixed seed, so a failure reproduces; each is built to be invalid in
at least one field, so a 200 would itself be a bug."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

VALID_MESSAGE = {"role": "user", "content": "hi"}
NASTY_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5e308,
    "",
    "x" * 100_000,
    "\u0000\ud7ff\ufffe",
    [],
    [None],
    {},
    {"a": {"b": {"c": []}}},
    "[DONE]",
    {"$ref": "#"},
]
FIELDS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "n",
    "max_tokens",
    "stop",
    "tools",
    "tool_choice",
]


def bad_messages(rng: random.Random) -> Any:
    choice = rng.randrange(8)
    if choice == 0:
        return [{"role": rng.choice(["", "robot", None, 1]), "content": "hi"}]
    if choice == 1:
        return [{"role": "user", "content": rng.choice([1, 2.5, True, {"text": "x"}])}]
    if choice == 2:
        return [{"role": "user", "content": [rng.choice([1, None, "text", {"no_type": 1}])]}]
    if choice == 3:
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    if choice == 4:
        return [{"role": "user"}]
    if choice == 5:
        return [rng.choice(NASTY_VALUES[:6])]
    if choice == 6:
        return []
    return [{"role": "user", "content": [{"type": "text", "text": rng.choice([None, 5, ["x"]])}]}]


def bodies(seed: int = 20261122, count: int = 240) -> Iterator[bytes]:
    rng = random.Random(seed)
    yield b""
    yield b"not json at all"
    yield b"\xff\xfe\x00 invalid utf-8"
    yield b"null"
    yield b'"a string"'
    yield b"[1, 2, 3]"
    yield b"42"
    yield b"{" * 5000 + b"}" * 5000  # deeper than any parser should follow
    yield b'{"model": "gptomni", "messages": [' + b"[" * 3000 + b"]" * 3000 + b"]}"
    yield b'{"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]'  # truncated
    for _ in range(count):
        body: dict[str, Any] = {"model": "gptomni", "messages": [VALID_MESSAGE]}
        kind = rng.randrange(4)
        if kind == 0:  # one field with a value of the wrong type
            field = rng.choice(FIELDS)
            body[field] = rng.choice([v for v in NASTY_VALUES if not _fits(field, v)])
        elif kind == 1:
            body["messages"] = bad_messages(rng)
        elif kind == 2:  # a required field missing or null
            field = rng.choice(["model", "messages"])
            if rng.random() < 0.5:
                del body[field]
            else:
                body[field] = None
        else:  # an unknown model
            body["model"] = rng.choice(["gpt-5", "x" * 300, "gptomni ", "GPTOMNI"])
        yield json.dumps(body).encode()


def _fits(field: str, value: Any) -> bool:
    """Whether `value` would be a valid value for `field` (those are not bad input)."""
    if value is None:
        return field not in ("model", "messages")
    if field == "stream":
        return isinstance(value, bool)
    if field == "stop":
        return isinstance(value, str) or (
            isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) for v in value)
        )
    if field == "stream_options":
        return isinstance(value, dict) and not value
    if field == "tools":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if field == "tool_choice":
        return isinstance(value, (str, dict))
    if field == "model":
        return value == "gptomni"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field == "temperature":
        return number and 0 <= value <= 2
    if field == "n":
        return value == 1 and number
    if field == "max_tokens":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return False


@pytest.fixture(scope="module")
def gateway(emulator: Emulator, workdir: Any) -> Iterator[Gateway]:
    gw = Gateway(workdir, gateway_settings(emulator, ["session=fuzz-cookie-0000000000"]), name="fuzz")
    yield gw
    gw.stop()


def test_malformed_bodies_get_a_4xx_envelope_never_a_500(gateway: Gateway) -> None:
    seen: dict[int, int] = {}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for body in bodies():
            response = client.post(
                "/v1/chat/completions",
                content=body,
                headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
            )
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert 400 <= response.status_code < 500, (body[:200], response.status_code, response.text[:300])
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, body[:200]
            assert isinstance(error["message"], str) and error["message"]
    assert seen.get(400, 0) > 150  # most are field errors, as built
    assert seen.get(404, 0) > 10  # the unknown models
    assert gateway.proc.poll() is None  # and the service is still up
    assert "Traceback" not in gateway.log()
