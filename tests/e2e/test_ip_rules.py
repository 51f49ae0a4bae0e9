"""`ALLOW_IPS` / `DENY_IPS` on a real gateway: a refused client gets 403 in the dialect of the path it
called, `/health` stays open, and `X-Forwarded-For` moves the client address only when the peer is a
trusted proxy."""

from __future__ import annotations

import re
import secrets
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, access_line, gateway_settings

COOKIE = "session=ip-rules-cookie-0000000000000"
REFUSED = "Your address is not allowed to use this gateway."


def settings(emulator: Emulator, **rules: str) -> dict[str, str]:
    """Every rule spelled out, so nothing from the machine's environment decides for the test."""
    base = {"ALLOW_IPS": "", "DENY_IPS": "", "TRUSTED_PROXIES": "", "MODEL_ALIASES": "claude-*=gptomni"}
    return gateway_settings(emulator, [COOKIE], **(base | rules))


def chat(gw: Gateway, text: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "gptomni", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {MASTER_KEY}", **headers},
        timeout=30,
    )


def messages(gw: Gateway, text: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/messages",
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        },
        headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def reached_upstream(emulator: Emulator, marker: str) -> bool:
    return any(marker in str(request) for request in emulator.last_requests(None))


def test_deny_loopback_refuses_both_dialects_and_keeps_health(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(settings(emulator, DENY_IPS="127.0.0.1/32"))
    marker = f"ip-rules-{secrets.token_hex(4)}"

    refused = chat(gw, marker, **{"X-Request-ID": f"{marker}-chat"})
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json() == {
        "error": {"message": REFUSED, "type": "permission_error", "param": None, "code": "ip_not_allowed"}
    }

    refused = messages(gw, marker)
    assert refused.status_code == 403
    assert refused.json() == {"type": "error", "error": {"type": "permission_error", "message": REFUSED}}

    # what the SDKs make of it: their own permission error, with the message
    with pytest.raises(openai.PermissionDeniedError, match="not allowed"):
        gw.openai().chat.completions.create(model="gptomni", messages=[{"role": "user", "content": marker}])
    claude = anthropic.Anthropic(base_url=gw.url, api_key=MASTER_KEY, max_retries=0, timeout=30.0)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": marker}]
        )
    assert caught.value.body == {"type": "error", "error": {"type": "permission_error", "message": REFUSED}}

    # refused before the key check: a wrong key changes nothing, and nothing reached the upstream
    assert chat(gw, marker, Authorization="Bearer sk-wrong-key-000000000000").status_code == 403
    assert httpx.get(f"{gw.url}/v1/models", timeout=10).status_code == 403
    assert not reached_upstream(emulator, marker)

    health = httpx.get(f"{gw.url}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}

    line = access_line(gw, f"{marker}-chat")
    assert re.search(r"\bstatus=403\b", line) and re.search(r"\bclient=127\.0\.0\.1\b", line), line
    assert MASTER_KEY not in gw.log()


@pytest.mark.parametrize(("allow", "status"), [("10.0.0.0/8", 403), ("127.0.0.0/8", 200)])
def test_an_allow_list(start_gateway: Any, emulator: Emulator, allow: str, status: int) -> None:
    gw: Gateway = start_gateway(settings(emulator, ALLOW_IPS=allow))
    answer = chat(gw, "hello")
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.json()["choices"][0]["message"]["content"]
    else:
        assert answer.json()["error"]["code"] == "ip_not_allowed"
    assert httpx.get(f"{gw.url}/health", timeout=10).status_code == 200


def test_deny_wins_over_allow(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(settings(emulator, ALLOW_IPS="127.0.0.0/8", DENY_IPS="127.0.0.1"))
    assert chat(gw, "hello").status_code == 403


def test_behind_a_trusted_proxy_the_forwarded_client_is_judged(
    start_gateway: Any, emulator: Emulator
) -> None:
    gw: Gateway = start_gateway(settings(emulator, TRUSTED_PROXIES="127.0.0.1", DENY_IPS="198.51.100.0/24"))
    refused = chat(gw, "hello", **{"X-Forwarded-For": "198.51.100.7", "X-Request-ID": "xff-denied"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ip_not_allowed"
    line = access_line(gw, "xff-denied")
    assert re.search(r"\bclient=198\.51\.100\.7\b", line), line

    # a forged left-most entry does not hide the address the proxy appended
    forged = chat(gw, "hello", **{"X-Forwarded-For": "203.0.113.5, 198.51.100.7"})
    assert forged.status_code == 403

    assert chat(gw, "hello", **{"X-Forwarded-For": "203.0.113.5"}).status_code == 200
    assert httpx.get(f"{gw.url}/health", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200


@pytest.mark.parametrize(
    ("rules", "forwarded", "status"),
    [
        ({"DENY_IPS": "198.51.100.0/24"}, "198.51.100.7", 200),  # cannot get itself refused...
        ({"DENY_IPS": "127.0.0.1/32"}, "203.0.113.5", 403),  # ...nor let in
        ({"ALLOW_IPS": "203.0.113.0/24"}, "203.0.113.5", 403),
    ],
)
def test_without_trusted_proxies_a_forged_header_changes_nothing(
    start_gateway: Any, emulator: Emulator, rules: dict[str, str], forwarded: str, status: int
) -> None:
    gw: Gateway = start_gateway(settings(emulator, **rules))
    assert chat(gw, "hello", **{"X-Forwarded-For": forwarded}).status_code == status
