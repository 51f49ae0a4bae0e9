"""Named client keys end to end, with the official `openai` and `anthropic` SDKs: create, use, watch
the usage rise, revoke; per-key rpm, model allow-list and expiry; keys survive a restart; nothing
secret in the log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

ADMIN = "sk-admin-keys-test-000000000000"
COOKIE = "session=keys-test-cookie-00000000000"
REPLY = "<<<EMU_REPLY\nhello from a named key\nEMU_REPLY>>>"


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{gw.url}/admin{path}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10, **kwargs
    )


def create(gw: Gateway, **fields: Any) -> dict[str, Any]:
    response = admin(gw, "POST", "/keys", json=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def listed(gw: Gateway, key_id: str) -> dict[str, Any]:
    response = admin(gw, "GET", f"/keys/{key_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def chat(gw: Gateway, key: str, model: str = "gptomni") -> Any:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": REPLY}])


def message(gw: Gateway, key: str) -> Any:
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=30)
    return client.messages.create(
        model="gptomni", max_tokens=64, messages=[{"role": "user", "content": REPLY}]
    )


def test_a_key_is_created_used_counted_and_revoked(
    start_gateway: Any, emulator: Emulator, workdir: Path
) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN))
    made = create(gw, name="alice")
    secret = made["key"]
    assert secret.startswith("sk-") and made["prefix"] != secret and secret[-10:] not in made["prefix"]
    assert "key" not in listed(gw, made["id"])  # shown once, never again

    assert chat(gw, secret).choices[0].message.content == "hello from a named key"
    assert message(gw, secret).content[0].text == "hello from a named key"  # x-api-key, Anthropic SDK
    usage = listed(gw, made["id"])["usage"]
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert listed(gw, made["id"])["last_used"] is not None

    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text
    assert 'gptomni2api_key_requests_total{key="alice",status="200"} 2.0' in metrics
    assert secret not in metrics

    assert admin(gw, "DELETE", f"/keys/{made['id']}").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        chat(gw, secret)
    with pytest.raises(anthropic.AuthenticationError):
        message(gw, secret)
    assert chat(gw, MASTER_KEY).choices[0].message.content  # the root key always works

    log = gw.log()
    assert "key=alice" in log  # the access log names the key
    assert f"audit: POST /admin/keys target={made['id']} status=201 outcome=ok" in log
    assert f"audit: DELETE /admin/keys/{{key_id}} target={made['id']} status=200 outcome=ok" in log
    for leaked in (secret, MASTER_KEY, ADMIN, COOKIE):
        assert leaked not in log


def test_rpm_is_per_key_and_answered_in_each_dialect(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN))
    limited = create(gw, name="limited", rpm=3)["key"]
    other = create(gw, name="other")["key"]
    for _ in range(3):
        chat(gw, limited)
    with pytest.raises(openai.RateLimitError) as info:
        chat(gw, limited)
    assert info.value.response.headers["retry-after"].isdigit()
    assert info.value.body["code"] == "key_rate_limited"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError):
        message(gw, limited)
    assert chat(gw, other).choices[0].message.content  # another key is unaffected
    errors = listed(gw, admin(gw, "GET", "/keys").json()["data"][0]["id"])["usage"]["errors"]
    assert errors.get("key_rate_limited") == 2


def test_models_streams_expiry_and_disable(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(
        gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN, MODEL_ALIASES="gpt-4o=gptomni")
    )
    only = create(gw, name="only-gptomni", models=["gptomni"])
    assert chat(gw, only["key"]).choices
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gw, only["key"], model="gpt-4o")
    assert denied.value.body["code"] == "model_not_allowed"  # type: ignore[index]

    soon = create(gw, name="soon", expires_at=time.time() + 1.5)
    assert chat(gw, soon["key"]).choices
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError) as expired:
        chat(gw, soon["key"])
    assert expired.value.body["code"] == "key_expired"  # type: ignore[index]

    assert admin(gw, "PATCH", f"/keys/{only['id']}", json={"disabled": True}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        chat(gw, only["key"])
    assert (
        admin(gw, "PATCH", f"/keys/{only['id']}", json={"disabled": False, "models": None}).status_code == 200
    )
    assert chat(gw, only["key"], model="gpt-4o").choices

    bad = admin(gw, "POST", "/keys", json={"name": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    assert admin(gw, "PATCH", "/keys/key_nope", json={"rpm": 1}).status_code == 404


def test_max_streams_holds_back_a_second_stream(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN))
    key = create(gw, name="one-at-a-time", max_streams=1)["key"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)
    slow = "[[emu duration=2 chunk_size=4]]\n<<<EMU_REPLY\n" + "slow " * 20 + "\nEMU_REPLY>>>"
    stream = client.chat.completions.create(
        model="gptomni", messages=[{"role": "user", "content": slow}], stream=True
    )
    pieces = iter(stream)
    next(pieces)
    with pytest.raises(openai.RateLimitError) as info:
        chat(gw, key)
    assert info.value.body["code"] == "key_streams_exhausted"  # type: ignore[index]
    for _ in pieces:
        pass
    assert chat(gw, key).choices  # the slot is free again once the stream ended


def test_keys_survive_a_restart_and_env_keys_work(
    start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    fixed = "sk-fixed-env-key-0000000000000000"
    settings = gateway_settings(
        emulator, [COOKIE], ADMIN_KEY=ADMIN, CREDENTIALS_FILE=str(tmp_path / "creds.json"), API_KEYS=fixed
    )
    gw: Gateway = start_gateway(settings, name="keys-before")
    made = create(gw, name="kept", rpm=100)
    chat(gw, made["key"])
    assert (
        fixed not in (tmp_path / "creds.json").read_text()
        and made["key"] not in (tmp_path / "creds.json").read_text()
    )
    gw.stop()
    again: Gateway = start_gateway(settings, name="keys-after")
    assert chat(again, made["key"]).choices
    kept = listed(again, made["id"])
    assert (kept["name"], kept["rpm"]) == ("kept", 100)
    assert kept["usage"]["requests"] >= 1
    assert chat(again, fixed).choices
    env = [k for k in admin(again, "GET", "/keys").json()["data"] if k["source"] == "env"]
    assert [k["name"] for k in env] == ["env-1"] and env[0]["usage"]["requests"] == 1
    assert admin(again, "DELETE", f"/keys/{env[0]['id']}").status_code == 409


@pytest.mark.parametrize("expires_at", [1e15, "9999-12-31T23:59:59-12:00", -5, "next tuesday"])
def test_an_expiry_out_of_range_is_a_400_and_nothing_is_made(
    start_gateway: Any, emulator: Emulator, expires_at: Any
) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN))
    response = admin(gw, "POST", "/keys", json={"name": "far-future", "expires_at": expires_at})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "expires_at"
    assert admin(gw, "GET", "/keys").json()["data"] == []
