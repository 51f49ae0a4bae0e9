"""Client IP rules: CIDR matching (IPv4, IPv6, mapped addresses), deny over allow, and the middleware's
answer in the caller's dialect."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

import app.surfaces.anthropic.routes  # noqa: F401 - registers Anthropic's envelope for /v1/messages
from app.http.client_address import parse_networks
from app.http.ip_rules import IpRulesMiddleware, ip_allowed

OFFICE = parse_networks(["10.0.0.0/8", "2001:db8:1::/48", "192.0.2.10"])
BLOCKED = parse_networks(["10.6.6.0/24", "2001:db8:1:bad::/64", "198.51.100.0/24"])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", True),
        ("10.6.6.6", False),  # inside the allow list, but deny wins
        ("192.0.2.10", True),  # a bare address is a /32
        ("192.0.2.11", False),
        ("203.0.113.5", False),  # outside the allow list
        ("198.51.100.7", False),
        ("2001:db8:1::42", True),
        ("2001:db8:1:bad::1", False),  # deny wins for IPv6 too
        ("2001:db8:2::1", False),
        ("[2001:db8:1::42]", True),
        ("::ffff:10.1.2.3", True),  # an IPv4 client on a dual-stack socket is judged as IPv4
        ("::ffff:10.6.6.1", False),
        ("::ffff:203.0.113.5", False),
        ("fe80::1%eth0", False),
    ],
)
def test_allow_and_deny(address: str, expected: bool) -> None:
    assert ip_allowed(address, OFFICE, BLOCKED) is expected


@pytest.mark.parametrize("address", ["127.0.0.1", "203.0.113.5", "::1", "2001:db8::1", "::ffff:1.2.3.4"])
def test_an_empty_allow_list_allows_everyone_not_denied(address: str) -> None:
    assert ip_allowed(address, [], []) is True
    assert ip_allowed(address, [], BLOCKED) is True
    assert ip_allowed(address, [], parse_networks([address.removeprefix("::ffff:")])) is False


def test_deny_only() -> None:
    deny = parse_networks(["127.0.0.1/32"])
    assert ip_allowed("127.0.0.1", [], deny) is False
    assert ip_allowed("::ffff:127.0.0.1", [], deny) is False
    assert ip_allowed("127.0.0.2", [], deny) is True


def test_an_ipv6_rule_for_mapped_addresses_applies_too() -> None:
    deny = parse_networks(["::ffff:198.51.100.0/120"])
    assert ip_allowed("::ffff:198.51.100.9", [], deny) is False
    assert ip_allowed("198.51.100.9", [], deny) is True  # an IPv6 rule names no IPv4 client


def test_an_ipv4_rule_does_not_match_an_ipv6_client() -> None:
    assert ip_allowed("::1", parse_networks(["127.0.0.0/8"]), []) is False
    assert ip_allowed("::1", parse_networks(["::1"]), []) is True


@pytest.mark.parametrize("address", [None, "", "testclient", "not-an-address", "10.0.0.1.5", "/tmp/sock"])
def test_an_unreadable_address_is_refused_once_a_rule_exists(address: str | None) -> None:
    assert ip_allowed(address, OFFICE, []) is False
    assert ip_allowed(address, [], BLOCKED) is False
    assert ip_allowed(address, [], []) is True


# --- the middleware, as plain ASGI ---------------------------------------------------------------


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def call(
    middleware: IpRulesMiddleware, path: str, client: tuple[str, int] | None, kind: str = "http"
) -> list[Message]:
    scope: dict[str, Any] = {
        "type": kind,
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"x-forwarded-for", b"10.1.2.3")],
        "client": client,
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def answer(sent: list[Message]) -> tuple[int, Any]:
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, (body if body == b"inner" else orjson.loads(body))


def test_no_rules_passes_everything_through() -> None:
    middleware = IpRulesMiddleware(_inner, allow=[], deny=[])
    assert middleware.enabled is False
    assert answer(call(middleware, "/v1/chat/completions", None)) == (200, b"inner")


def test_a_refused_client_gets_an_openai_403() -> None:
    middleware = IpRulesMiddleware(_inner, allow=[], deny=["127.0.0.1/32"])
    status, body = answer(call(middleware, "/v1/chat/completions", ("127.0.0.1", 5555)))
    assert status == 403
    assert body == {
        "error": {
            "message": "Your address is not allowed to use this gateway.",
            "type": "permission_error",
            "param": None,
            "code": "ip_not_allowed",
        }
    }


def test_a_refused_client_gets_an_anthropic_403_on_messages() -> None:
    middleware = IpRulesMiddleware(_inner, allow=["10.0.0.0/8"], deny=[])
    status, body = answer(call(middleware, "/v1/messages", ("127.0.0.1", 5555)))
    assert status == 403
    assert body == {
        "type": "error",
        "error": {"type": "permission_error", "message": "Your address is not allowed to use this gateway."},
    }


def test_the_answer_names_neither_the_address_nor_the_rules() -> None:
    middleware = IpRulesMiddleware(_inner, allow=["10.0.0.0/8"], deny=["198.51.100.0/24"])
    sent = call(middleware, "/v1/chat/completions", ("198.51.100.77", 5555))
    raw = b"".join(m.get("body", b"") for m in sent) + repr(sent[0].get("headers")).encode()
    for word in (b"198.51.100", b"10.0.0.0", b"10.1.2.3"):
        assert word not in raw


def test_an_allowed_client_reaches_the_app() -> None:
    middleware = IpRulesMiddleware(_inner, allow=["127.0.0.0/8"], deny=[])
    assert answer(call(middleware, "/v1/chat/completions", ("127.0.0.1", 5555))) == (200, b"inner")


@pytest.mark.parametrize("client", [("127.0.0.1", 5555), None])
def test_health_is_always_open(client: tuple[str, int] | None) -> None:
    middleware = IpRulesMiddleware(_inner, allow=["10.0.0.0/8"], deny=["127.0.0.1"])
    assert answer(call(middleware, "/health", client)) == (200, b"inner")
    assert answer(call(middleware, "/ready", client))[0] == 403


def test_no_client_address_is_refused_when_rules_exist() -> None:
    middleware = IpRulesMiddleware(_inner, allow=[], deny=["198.51.100.0/24"])
    assert answer(call(middleware, "/v1/models", None))[0] == 403


def test_a_refused_websocket_is_closed_before_the_handshake() -> None:
    middleware = IpRulesMiddleware(_inner, allow=[], deny=["127.0.0.1"])
    sent = call(middleware, "/v1/realtime", ("127.0.0.1", 5555), kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]


def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = IpRulesMiddleware(app, allow=[], deny=["127.0.0.1"])

    async def nothing() -> Message:
        return {}

    async def drop(message: Message) -> None:
        return None

    asyncio.run(middleware({"type": "lifespan"}, nothing, drop))
    assert seen == ["lifespan"]
