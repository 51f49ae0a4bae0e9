"""Issue 11 end to end: a pool that no bad request can empty, sessions that renew themselves, and an
egress per account. Real processes on loopback (the gateway under uvicorn, the upstream emulator, a
forward proxy), every case on both transports. The emulator counts what reached it (per cookie, per
rotating account, per User-Agent, and the last requests with their headers); the proxy counts what
went through it (per cookie and User-Agent for HTTP, targets for tunnels)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.credentials.pool import credential_id
from tests.conftest import (
    MASTER_KEY,
    SESSION_COOKIE,
    TRANSPORTS,
    Emulator,
    ForwardProxy,
    Gateway,
    gateway_settings,
)
from tests.processes import free_port

ADMIN_KEY = "sk-admin-key-pool-resilience-7777777"
OK = "<<<EMU_REPLY\nok\nEMU_REPLY>>>"
POISON = "[[emu poison]]"

# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxies(workdir: Path) -> Iterator[Callable[..., ForwardProxy]]:
    """A factory of forward proxies (tests/forward_proxy.py), all stopped at the end of the test."""
    started: list[ForwardProxy] = []

    def start(**kwargs: Any) -> ForwardProxy:
        proxy = ForwardProxy(workdir, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def token_of(cookie_value: str) -> str:
    return cookie_value.split(f"{SESSION_COOKIE}=", 1)[1].split(";", 1)[0]


def cookie(tag: str, **emu: Any) -> str:
    """A unique fake cookie (its token is unique too, so an emulator fault can match it alone)."""
    extra = "".join(f"; emu_{k}={v}" for k, v in emu.items())
    return f"{SESSION_COOKIE}={tag}-{uuid.uuid4().hex}{extra}"


def settings(emulator: Emulator, cookies: list[str], transport: str, **extra: str) -> dict[str, str]:
    return gateway_settings(emulator, cookies, UPSTREAM_TRANSPORT=transport, ADMIN_KEY=ADMIN_KEY, **extra)


@dataclass
class Reply:
    status: int
    text: str = ""  # the answer's content (all the deltas of a stream)
    pieces: int = 0  # content deltas of a stream
    error: dict[str, Any] = field(default_factory=dict)


def chat(gateway: Gateway, prompt: str = OK, *, stream: bool = False) -> Reply:
    """One chat completion over httpx; a stream is read to its end."""
    body = {"model": "gptomni", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        raw = r.read().decode()
        content_type = r.headers.get("content-type", "")
    if r.status_code != 200 or "text/event-stream" not in content_type:
        data = json.loads(raw)
        if r.status_code != 200:
            return Reply(r.status_code, error=data["error"])
        return Reply(200, text=data["choices"][0]["message"]["content"] or "")
    reply = Reply(200)
    for line in raw.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: ") :])
        if "error" in event:
            reply.error = event["error"]
            continue
        for choice in event.get("choices", []):
            delta = choice.get("delta", {}).get("content")
            if delta:
                reply.text += delta
                reply.pieces += 1
    return reply


def admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.request(method, f"{gateway.url}/admin{path}", headers=headers, timeout=30, **kwargs)


def listing(gateway: Gateway) -> dict[str, dict[str, Any]]:
    response = admin(gateway, "GET", "/credentials")
    assert response.status_code == 200, response.text
    return {c["id"]: c for c in response.json()["data"]}


def entry(gateway: Gateway, cookie_value: str) -> dict[str, Any]:
    """The admin view of the credential first added with this cookie (its id survives renewals)."""
    return listing(gateway)[credential_id(cookie_value)]


def chats(emulator: Emulator, cookie_value: str) -> int:
    """Chat requests that reached the upstream with this (never renewed) cookie."""
    return int(emulator.stats()["by_cookie"].get(cookie_value, 0))


def session_checks(emulator: Emulator, cookie_value: str) -> int:
    return int(emulator.stats()["session_checks_by_cookie"].get(cookie_value, 0))


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop_gracefully(gateway: Gateway) -> None:
    """SIGTERM, and the app's shutdown ran (where the pool is saved)."""
    gateway.stop()
    assert "Application shutdown complete" in gateway.log_path.read_text()


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- 1. the poison rule ----------------------------------------------------------------------------


def test_poison_requests_leave_the_pool_whole(transport: str, start_gateway: Any, emulator: Emulator) -> None:
    """20 requests whose prompt always draws a 500 (default settings, three healthy cookies): each a
    502 saying the failure follows the request, none reaching the upstream more than twice; then 30
    normal requests all succeed, round-robin over all three, none resting."""
    cookies = [cookie(f"poison{i}") for i in range(3)]
    gw = start_gateway(settings(emulator, cookies, transport))

    def reached() -> list[int]:
        by_cookie = emulator.stats()["by_cookie"]
        return [int(by_cookie.get(c, 0)) for c in cookies]

    before = sum(reached())
    for i in range(20):
        reply = chat(gw, f"{POISON} poison request {i}", stream=i % 2 == 1)
        assert reply.status == 502, (i, reply)
        assert reply.error["code"] == "upstream_server_error", reply.error
        assert "follows this request" in reply.error["message"], reply.error["message"]
        now = sum(reached())
        assert 1 <= now - before <= 2, f"poison request {i} reached the upstream {now - before} times"
        before = now
    entries = [entry(gw, c) for c in cookies]
    assert all(e["state"] != "invalid" for e in entries), entries
    resting = [e for e in entries if e["state"] != "active"]
    assert resting == [], entries  # a poisoned request is charged to no credential

    start = reached()
    for i in range(30):
        reply = chat(gw, stream=i % 3 == 0)
        assert (reply.status, reply.text) == (200, "ok"), (i, reply)
    spread = [after - was for after, was in zip(reached(), start, strict=True)]
    assert sum(spread) == 30, spread  # no normal request failed over
    entries = [entry(gw, c) for c in cookies]
    assert spread == [10, 10, 10], spread
    assert [(e["state"], e["cooling_until"]) for e in entries] == [("active", None)] * 3, entries


# --- 2. confirm before condemning -------------------------------------------------------------------


def test_a_rejection_condemns_only_a_session_that_has_ended(
    transport: str, start_gateway: Any, emulator: Emulator
) -> None:
    """A 401 with a live session counts as a failure; a 401 whose session ended marks the credential
    invalid (the session endpoint asked both times); a WAF block page is `cloudflare_blocked` and
    never condemns. One attempt per request, so round-robin sends request i to credential i."""
    alive = cookie("alive401", status=401, session="alive")
    ended = cookie("ended401", status=401)  # session=auto: the endpoint says {}
    blocked = cookie("waf")
    emulator.fault(token_of(blocked), waf=1)
    try:
        gw = start_gateway(settings(emulator, [alive, ended, blocked], transport, UPSTREAM_MAX_ATTEMPTS="1"))
        replies = [chat(gw), chat(gw), chat(gw, stream=True)]
        assert [chats(emulator, c) for c in (alive, ended, blocked)] == [1, 1, 1]

        # answered as what it then is (a server error), not "expired cookie, add a fresh one"
        assert replies[0].status == 502, replies[0]
        kept = entry(gw, alive)
        assert kept["state"] in ("active", "cooling"), kept
        assert kept["failures"] == {"server_error": 1}, kept  # counted like a 5xx
        assert session_checks(emulator, alive) >= 1  # it was asked

        assert replies[1].status == 503, replies[1]
        assert entry(gw, ended)["state"] == "invalid"
        assert session_checks(emulator, ended) >= 1

        assert replies[2].status == 502, replies[2]
        assert replies[2].error["code"] == "cloudflare_blocked", replies[2].error
        waf = entry(gw, blocked)
        assert waf["state"] != "invalid" and waf["failures"] == {"cloudflare_blocked": 1}, waf
        # Again, until it would rest for failures: still never invalid.
        for _ in range(3):
            chat(gw)
        assert entry(gw, blocked)["state"] != "invalid"
        assert entry(gw, alive)["state"] != "invalid"
    finally:
        emulator.fault(token_of(blocked))


# --- 3. the ejection cap and panic mode -------------------------------------------------------------


def test_at_most_half_the_pool_rests_for_failures(
    transport: str, start_gateway: Any, emulator: Emulator
) -> None:
    """FAILURE_THRESHOLD=1, four credentials that all answer 500: at most two ever rest at once, and
    requests keep reaching the other two (their failures counted, their service kept). One attempt
    per request, so that each request charges its credential whatever the poison rule does."""
    cookies = [cookie(f"cap{i}") for i in range(4)]
    for c in cookies:
        emulator.fault(token_of(c), status=500)
    try:
        gw = start_gateway(
            settings(
                emulator,
                cookies,
                transport,
                FAILURE_THRESHOLD="1",
                FAILURE_COOLDOWN="60",
                UPSTREAM_MAX_ATTEMPTS="1",
            )
        )
        most_resting = 0
        for i in range(8):
            reply = chat(gw, stream=i % 2 == 1)
            assert reply.status == 502 and reply.error["code"] == "upstream_server_error", (i, reply)
            states = [entry["state"] for entry in listing(gw).values()]
            assert "invalid" not in states
            most_resting = max(most_resting, states.count("cooling"))
            assert states.count("cooling") <= 2, states
        assert most_resting == 2
        assert all(chats(emulator, c) >= 1 for c in cookies)  # each failed at least once
        serving = [c for c in cookies if entry(gw, c)["state"] == "active"]
        resting = [c for c in cookies if c not in serving]
        assert len(serving) == 2
        assert all(entry(gw, c)["rest_reason"] == "failures" for c in resting)
        assert all(entry(gw, c)["failures"]["server_error"] >= 2 for c in serving)  # counted, kept serving
        before = {c: chats(emulator, c) for c in cookies}
        for i in range(4):
            assert chat(gw, stream=i % 2 == 0).status == 502
        assert all(chats(emulator, c) > before[c] for c in serving)
        assert all(chats(emulator, c) == before[c] for c in resting)
    finally:
        for c in cookies:
            emulator.fault(token_of(c))


def test_panic_mode_serves_from_a_pool_that_rests_entirely(
    transport: str, start_gateway: Any, emulator: Emulator
) -> None:
    """MAX_EJECTED_PERCENT=100: both credentials rest for 500s, yet requests still go upstream
    (a 502 from it, not a 503 from the pool), and once the upstream is well again they get answers;
    /metrics counts the panics. One attempt per request, as above."""
    cookies = [cookie("panic0"), cookie("panic1")]
    for c in cookies:
        emulator.fault(token_of(c), status=500)
    try:
        gw = start_gateway(
            settings(
                emulator,
                cookies,
                transport,
                FAILURE_THRESHOLD="1",
                FAILURE_COOLDOWN="60",
                MAX_EJECTED_PERCENT="100",
                UPSTREAM_MAX_ATTEMPTS="1",
            )
        )
        for _ in range(2):
            assert chat(gw).status == 502
        entries = [entry(gw, c) for c in cookies]
        assert [(e["state"], e["rest_reason"]) for e in entries] == [("cooling", "failures")] * 2, entries
        reached = sum(chats(emulator, c) for c in cookies)
        reply = chat(gw, stream=True)
        assert reply.status == 502 and reply.error["code"] == "upstream_server_error", reply
        assert sum(chats(emulator, c) for c in cookies) > reached  # tried upstream, not refused
    finally:
        for c in cookies:
            emulator.fault(token_of(c))
    assert (chat(gw).status, chat(gw, stream=True).text) == (200, "ok")
    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert metrics.status_code == 200
    (line,) = [x for x in metrics.text.splitlines() if x.startswith("gptomni2api_pool_panics_total")]
    assert float(line.split()[-1]) >= 2, line
    assert "panic mode" in gw.log()


# --- 4. sessions that renew themselves --------------------------------------------------------------


def test_a_rotating_session_renews_50_times_and_survives_a_restart(
    transport: str, start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    """Each answer rotates the session token and the old one dies after one more use, so only a
    gateway that takes every Set-Cookie gets past request 3. The id stays, the admin list shows the
    renewal, a graceful stop leaves the latest token in the file, and a restart (the original cookie
    still configured) carries on with it, as one credential."""
    account = f"rot-{uuid.uuid4().hex[:12]}"
    original = Emulator.rotating_cookie(account)
    store = tmp_path / "credentials.json"
    configured = settings(emulator, [original], transport, CREDENTIALS_FILE=str(store))
    gw = start_gateway(configured, name="rotating-1")
    ids: set[str] = set()
    for i in range(50):
        reply = chat(gw, stream=i % 2 == 1)
        assert (reply.status, reply.text) == (200, "ok"), (i, reply)
        if i % 10 == 9:
            ids |= set(listing(gw))
    state = emulator.account(account)
    assert state is not None and state["rotations"] >= 50 and state["rejected"] == 0, state
    assert ids == {credential_id(original)}
    (view,) = listing(gw).values()
    assert view["session_renewed_at"] is not None
    assert abs(parse_time(view["session_renewed_at"]) - time.time()) < 60
    assert view["session_expires_at"] is not None
    assert parse_time(view["session_expires_at"]) > time.time() + 29 * 86_400  # the cookie's Expires
    assert token_of(original) not in json.dumps(view)

    def saved() -> dict[str, Any]:
        (record,) = json.loads(store.read_text())["credentials"]
        return dict(record)

    def current() -> str:
        return str(emulator.stats()["sessions"][account]["current"])

    wait_for(lambda: token_of(saved()["cookie"]) == current(), 3, "the renewals to be saved (within 1 s)")
    assert chat(gw).text == "ok"  # renewed just now: only the save on stop keeps this token
    stop_gracefully(gw)
    assert saved()["id"] == credential_id(original)
    assert token_of(saved()["cookie"]) == current()

    gw2 = start_gateway(configured, name="rotating-2")  # GPTOMNI_CREDENTIALS still holds `original`
    for i in range(3):
        assert chat(gw2, stream=i == 1).text == "ok"
    assert list(listing(gw2)) == [credential_id(original)]  # no duplicate
    state = emulator.account(account)
    assert state is not None and state["rejected"] == 0, state


def test_rotating_accounts_never_see_each_others_cookies(
    transport: str, start_gateway: Any, emulator: Emulator
) -> None:
    names = [f"rotA-{uuid.uuid4().hex[:10]}", f"rotB-{uuid.uuid4().hex[:10]}"]
    gw = start_gateway(settings(emulator, [Emulator.rotating_cookie(n) for n in names], transport))
    for i in range(12):
        reply = chat(gw, stream=i % 4 < 2)
        assert (reply.status, reply.text) == (200, "ok"), (i, reply)
    requests = [r for r in emulator.last_requests() if r["account"] in names]
    assert len(requests) == 12
    tokens: dict[str, list[str]] = {n: [] for n in names}
    for request in requests:
        own, other = request["account"], next(n for n in names if n != request["account"])
        header = request["headers"]["cookie"]
        assert request["status"] == 200, (own, request["status"])
        assert f"emu_rotate={own}" in header and other not in header
        assert header.count(f"{SESSION_COOKIE}=") == 1
        tokens[own].append(token_of(header))
    assert [len(t) for t in tokens.values()] == [6, 6]
    for name, seen in tokens.items():
        assert len(set(seen)) == 6, seen  # a fresh token every time
        assert emulator.account(name)["rejected"] == 0  # type: ignore[index]
    assert not set(tokens[names[0]]) & set(tokens[names[1]])


# --- 5. the background session check ----------------------------------------------------------------


def test_the_session_check_renews_live_sessions_and_condemns_ended_ones(
    transport: str, start_gateway: Any, emulator: Emulator
) -> None:
    """SESSION_CHECK_INTERVAL=1: a session that ends is marked invalid with no chat request sent,
    and a rotating session is kept alive by the checks alone (its first token is long dead when the
    first chat request goes out)."""
    ending = cookie("ending")
    account = f"checked-{uuid.uuid4().hex[:12]}"
    rotating = Emulator.rotating_cookie(account)
    try:
        gw = start_gateway(settings(emulator, [ending, rotating], transport, SESSION_CHECK_INTERVAL="1"))
        wait_for(lambda: session_checks(emulator, ending) >= 1, 5, "a first session check")
        assert entry(gw, ending)["state"] == "active"  # alive: nothing changes
        emulator.fault(token_of(ending), session="empty")  # the account signs out
        wait_for(lambda: entry(gw, ending)["state"] == "invalid", 5, "the ended session to be found")
        assert chats(emulator, ending) == 0  # found out without spending a chat request

        wait_for(lambda: (emulator.account(account) or {}).get("session_checks", 0) >= 2, 5, "two checks")
        view = entry(gw, rotating)
        assert view["state"] == "active" and view["session_renewed_at"] is not None, view
        reply = chat(gw)  # the only active credential; its seed token was rotated away twice
        assert (reply.status, reply.text) == (200, "ok"), reply
        state = emulator.account(account)
        assert state is not None and state["rejected"] == 0, state
    finally:
        emulator.fault(token_of(ending))


# --- 6. egress ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_upstream_proxy_carries_every_request(
    transport: str, scheme: str, start_gateway: Any, emulator: Emulator, proxies: Callable[..., ForwardProxy]
) -> None:
    """UPSTREAM_PROXY with user:password: every upstream request goes through it (answers still
    stream); with the proxy gone, a 502 that names it masked; its password never in a log or the
    admin list."""
    password = f"pw-{uuid.uuid4().hex}"
    proxy = proxies(user="gwuser", password=password)
    only = cookie(f"egress-{scheme}")
    gw = start_gateway(
        settings(
            emulator,
            [only],
            transport,
            UPSTREAM_PROXY=proxy.proxy_url(scheme),
            LOG_LEVEL="debug",
            UPSTREAM_CONNECT_TIMEOUT="3",
        )
    )
    reply = chat(
        gw,
        "[[emu chunk_size=4 delay=0.02]]\n<<<EMU_REPLY\nthrough the proxy, in pieces\nEMU_REPLY>>>",
        stream=True,
    )
    assert (reply.status, reply.text) == (200, "through the proxy, in pieces"), reply
    assert reply.pieces >= 3, reply  # relayed as it came, not in one lump
    for i in range(4):
        assert chat(gw, stream=i % 2 == 0).text == "ok"
    stats = proxy.stats()
    assert chats(emulator, only) == 5
    assert stats["auth_failures"] == 0
    if scheme == "http":  # absolute-URI requests: the proxy sees each one, with its cookie
        assert stats["requests"] == 5 and stats["by_cookie"] == {only: 5}, stats["requests"]
    else:  # tunnels, which may be reused: each leads to the emulator
        assert stats["socks"] >= 1 and stats["requests"] == 0, stats
    assert stats["targets"] and set(stats["targets"]) == {emulator.address}, stats

    proxy.stop()  # a gateway that went around it would still answer
    reply = chat(gw)
    assert reply.status == 502 and reply.error["code"] == "upstream_connect", reply
    assert f"{scheme}://gwuser:***@{proxy.address}" in reply.error["message"], reply.error
    assert password not in json.dumps(listing(gw))
    log = gw.log()
    assert "gwuser:***@" in log  # the failure was logged, masked
    assert password not in log


def test_a_proxy_and_user_agent_per_credential(
    transport: str, start_gateway: Any, emulator: Emulator, proxies: Callable[..., ForwardProxy]
) -> None:
    """A credential added with a proxy and a User-Agent sends through that proxy with that agent;
    the others go direct with the default browser agent (or one set by PATCH); PATCH can take the
    proxy away again."""
    proxy = proxies()
    plain, patched = cookie("egress-plain"), cookie("egress-patched")
    gw = start_gateway(settings(emulator, [plain, patched], transport))
    proxied = cookie("egress-proxied")
    agent = f"Mozilla/5.0 (X11; Linux x86_64) ProxiedAccount/{uuid.uuid4().hex[:8]}"
    patched_agent = f"Mozilla/5.0 (Macintosh) PatchedAccount/{uuid.uuid4().hex[:8]}"
    added = admin(
        gw, "POST", "/credentials", json={"cookie": proxied, "proxy": proxy.url, "user_agent": agent}
    )
    assert added.status_code == 201, added.text
    (view,) = added.json()["added"]
    assert (view["proxy"], view["user_agent"]) == (proxy.url, agent)
    changed = admin(gw, "PATCH", f"/credentials/{credential_id(patched)}", json={"user_agent": patched_agent})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["proxy"], changed.json()["user_agent"]) == (None, patched_agent)

    for i in range(6):  # round-robin: two each
        assert chat(gw, stream=i % 2 == 1).text == "ok"
    stats = proxy.stats()
    assert stats["by_cookie"] == {proxied: 2} and stats["requests"] == 2, stats["requests"]
    assert stats["by_user_agent"] == {agent: 2}, stats
    agents: dict[str, set[str]] = {}
    vias: dict[str, set[str | None]] = {}
    for request in emulator.last_requests():
        if request["cookie"] in (plain, patched, proxied):
            agents.setdefault(request["cookie"], set()).add(request["user_agent"])
            vias.setdefault(request["cookie"], set()).add(request["headers"].get("via"))
    assert agents[proxied] == {agent}
    assert agents[patched] == {patched_agent}
    (default,) = agents[plain]
    assert default.startswith("Mozilla/5.0") and default not in (agent, patched_agent)
    assert vias == {plain: {None}, patched: {None}, proxied: {"1.1 forward-proxy"}}

    cleared = admin(gw, "PATCH", f"/credentials/{credential_id(proxied)}", json={"proxy": None})
    assert (cleared.json()["proxy"], cleared.json()["user_agent"]) == (None, agent)
    for _ in range(3):
        assert chat(gw).text == "ok"
    assert proxy.stats()["requests"] == 2  # direct now
    assert chats(emulator, proxied) == 3


def test_a_dead_proxy_fails_over_then_is_named(
    transport: str, start_gateway: Any, emulator: Emulator, proxies: Callable[..., ForwardProxy]
) -> None:
    """Two credentials behind dead proxies (one that hangs up at once, one port where nothing
    listens): requests fail over to the healthy credential; once it is gone, a 502 whose message
    names the proxy, password masked."""
    refusing = proxies(refuse=True)
    password = f"pw-{uuid.uuid4().hex}"
    healthy, behind_refusing, behind_nothing = cookie("dp-ok"), cookie("dp-refused"), cookie("dp-nothing")
    dead = {
        behind_refusing: f"http://user:{password}@{refusing.address}",
        behind_nothing: f"socks5://user:{password}@127.0.0.1:{free_port()}",
    }
    gw = start_gateway(
        settings(
            emulator,
            [healthy],
            transport,
            LOG_LEVEL="debug",
            FAILURE_THRESHOLD="10",
            UPSTREAM_CONNECT_TIMEOUT="3",
        )
    )
    body = {"cookies": [{"cookie": c, "proxy": p} for c, p in dead.items()]}
    added = admin(gw, "POST", "/credentials", json=body)
    assert added.status_code == 201 and len(added.json()["added"]) == 2, added.text
    assert password not in added.text
    masked = {c: p.replace(password, "***") for c, p in dead.items()}
    for c in dead:
        assert entry(gw, c)["proxy"] == masked[c]

    for i in range(2):  # the healthy one, then both dead ones in turn before it
        reply = chat(gw, stream=i == 1)
        assert (reply.status, reply.text) == (200, "ok"), reply
    assert chats(emulator, healthy) == 2
    for c in dead:
        view = entry(gw, c)
        assert chats(emulator, c) == 0
        assert view["failures"] == {"connect": 1}, view
        assert masked[c] in view["last_error"], view

    assert admin(gw, "DELETE", f"/credentials/{credential_id(healthy)}").status_code == 200
    for stream in (False, True):
        reply = chat(gw, stream=stream)
        assert reply.status == 502 and reply.error["code"] == "upstream_connect", reply
        assert any(m in reply.error["message"] for m in masked.values()), reply.error
        assert "user:***@127.0.0.1:" in reply.error["message"]
        assert password not in reply.error["message"]
    assert password not in json.dumps(listing(gw))
    assert password not in gw.log()


# --- 7. admin API validation ---------------------------------------------------------------------


def test_the_admin_api_checks_egress_fields_and_keeps_them(
    transport: str, start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    store = tmp_path / "credentials.json"
    existing = cookie("validate")
    configured = settings(emulator, [existing], transport, CREDENTIALS_FILE=str(store))
    gw = start_gateway(configured, name="validate-1")
    password = f"pw-{uuid.uuid4().hex}"
    new = cookie("validate-new")
    refused = [
        ({"cookie": new, "proxy": "ftp://proxy.example:21"}, "proxy"),
        ({"cookie": new, "proxy": f"http://user:{password}@proxy.example:99999"}, "proxy"),
        ({"cookie": new, "proxy": 3128}, "proxy"),
        ({"cookie": new, "user_agent": "Mozilla/5.0\r\nX-Injected: 1"}, "user_agent"),
        ({"cookie": new, "user_agent": "x" * 5000}, "user_agent"),
        ({"cookies": [existing, {"cookie": new, "proxy": "proxy.example:3128"}]}, "cookies[1].proxy"),
        ({"cookies": [{"cookie": new, "user_agent": "Bad\tAgent"}]}, "cookies[0].user_agent"),
    ]
    for body, param in refused:
        response = admin(gw, "POST", "/credentials", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (body, error)
        assert password not in response.text
    assert list(listing(gw)) == [credential_id(existing)]  # nothing was added

    unknown = admin(gw, "PATCH", "/credentials/0123456789", json={"proxy": None})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "credential_not_found"
    path = f"/credentials/{credential_id(existing)}"
    for body, param in [
        ({"proxy": "socks4://proxy.example:1080"}, "proxy"),
        ({"user_agent": "two\nlines"}, "user_agent"),
        ({"colour": "blue"}, "colour"),
    ]:
        response = admin(gw, "PATCH", path, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text

    agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) ValidateTest/1.0"
    given = f"SOCKS5://user:{password}@Proxy.Example:1080"
    patched = admin(gw, "PATCH", path, json={"proxy": given, "user_agent": agent})
    assert patched.status_code == 200, patched.text
    added = admin(
        gw, "POST", "/credentials", json={"cookie": new, "proxy": f"http://user:{password}@10.0.0.7"}
    )
    assert added.status_code == 201, added.text
    for text in (patched.text, added.text, json.dumps(listing(gw))):
        assert password not in text
    shown = {i: (v["proxy"], v["user_agent"]) for i, v in listing(gw).items()}
    expected = {
        credential_id(existing): ("socks5://user:***@proxy.example:1080", agent),
        credential_id(new): ("http://user:***@10.0.0.7:80", None),
    }
    assert shown == expected
    stop_gracefully(gw)
    assert password in store.read_text()  # the file must keep it to use it
    gw2 = start_gateway(configured, name="validate-2")
    assert {i: (v["proxy"], v["user_agent"]) for i, v in listing(gw2).items()} == expected
    assert password not in gw2.log()
