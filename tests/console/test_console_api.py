"""The console's HTTP side against a real gateway (uvicorn) and the upstream emulator: the page's
security headers, sign-in, the session cookie and its CSRF token on every admin route, expiry, the
traffic numbers and "Try it"; and no admin key, session or cookie in a URL, an answer or the log."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LEAKS, MASTER_KEY, Emulator, Gateway, gateway_settings

ADMIN = "sk-admin-console-api-0123456789"
COOKIE = "session=console-api-cookie-5f3a9c1e7d2b"
COOKIE_NAME = "gptomni2api_console"
PROXY_PASSWORD = "pr0xy-s3cret-pw"

# Every call the console makes, and the rest of the admin API it reaches through the session.
ADMIN_CALLS = [
    ("GET", "/admin/credentials"),
    ("POST", "/admin/credentials"),
    ("PATCH", "/admin/credentials/nope"),
    ("DELETE", "/admin/credentials/nope"),
    ("POST", "/admin/credentials/nope/reset"),
    ("POST", "/admin/credentials/nope/probe"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys/nope"),
    ("PATCH", "/admin/keys/nope"),
    ("DELETE", "/admin/keys/nope"),
    ("GET", "/admin/traffic"),
    ("POST", "/admin/try"),
    ("DELETE", "/admin/session"),
]
CHANGES = [(method, path) for method, path in ADMIN_CALLS if method != "GET"]


@pytest.fixture(scope="module")
def gateway(workdir: Path, emulator: Emulator) -> Iterator[Gateway]:
    gw = Gateway(workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN), name="console-api")
    yield gw
    gw.stop()


def sign_in(gw: Gateway, key: str = ADMIN, **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/admin/session", json={"key": key}, headers=headers, timeout=10)


class Session:
    def __init__(self, gw: Gateway) -> None:
        response = sign_in(gw)
        assert response.status_code == 200, response.text
        self.gw = gw
        self.token = response.cookies[COOKIE_NAME]
        self.csrf: str = response.json()["csrf_token"]

    def call(self, method: str, path: str, *, csrf: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Cookie": f"{COOKIE_NAME}={self.token}", **kwargs.pop("headers", {})}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return httpx.request(method, f"{self.gw.url}{path}", headers=headers, timeout=30, **kwargs)


def test_the_page_and_its_assets_carry_strict_headers(gateway: Gateway) -> None:
    page = httpx.get(f"{gateway.url}/admin/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'for="admin-key">Admin key</label>' in page.text
    for response in (page, httpx.get(f"{gateway.url}/admin/static/console.js", timeout=10)):
        csp = response.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
        assert "unsafe" not in csp and "*" not in csp and "http" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    script = httpx.get(f"{gateway.url}/admin/static/console.js", timeout=10)
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.headers["cache-control"] == "no-cache"
    again = httpx.get(
        f"{gateway.url}/admin/static/console.js",
        headers={"If-None-Match": script.headers["etag"]},
        timeout=10,
    )
    assert again.status_code == 304 and again.content == b""
    redirect = httpx.get(f"{gateway.url}/admin", timeout=10)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/admin/"
    for missing in ("/admin/static/nope.js", "/admin/static/..%2Fsession.py", "/admin/static/%2e%2e"):
        assert httpx.get(f"{gateway.url}{missing}", timeout=10).status_code == 404


def test_the_page_has_no_inline_script_or_style_and_no_other_host() -> None:
    from app.console.routes import ASSETS

    html = ASSETS["index.html"].body.decode()
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert " on" not in html.replace(" one", "").replace(" only", "").replace(" once", "")
    for asset in ASSETS.values():
        text = asset.body.decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text
    assert "localStorage" not in ASSETS["console.js"].body.decode()
    assert "innerHTML" not in ASSETS["console.js"].body.decode()


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_every_call_without_a_session_is_401(gateway: Gateway, method: str, path: str) -> None:
    response = httpx.request(method, f"{gateway.url}{path}", json={}, timeout=10)
    assert response.status_code == 401, response.text
    forged = httpx.request(
        method, f"{gateway.url}{path}", json={}, headers={"Cookie": f"{COOKIE_NAME}=v1.x.9999999999.AAAA"}
    )
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "invalid_console_session"


@pytest.mark.parametrize(("method", "path"), CHANGES)
def test_a_change_with_the_session_needs_its_csrf_token(gateway: Gateway, method: str, path: str) -> None:
    session, other = Session(gateway), Session(gateway)
    for csrf in (None, "", "wrong", other.csrf):
        response = session.call(method, path, csrf=csrf, json={})
        assert response.status_code == 403, (csrf, response.text)
        assert response.json()["error"]["code"] == "invalid_csrf_token"
    assert session.call(method, path, csrf=session.csrf, json={}).status_code not in (401, 403)


def test_sign_in(gateway: Gateway) -> None:
    wrong = sign_in(gateway, "sk-admin-not-the-key-000000000")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert wrong.json()["error"]["code"] == "invalid_admin_key"
    client_key = sign_in(gateway, MASTER_KEY)
    assert client_key.status_code == 401  # the client key never opens the console
    assert httpx.post(f"{gateway.url}/admin/session", timeout=10).status_code == 400
    in_url = httpx.post(f"{gateway.url}/admin/session", params={"key": ADMIN}, timeout=10)
    assert in_url.status_code == 400 and "set-cookie" not in in_url.headers  # never from a URL
    assert httpx.post(f"{gateway.url}/admin/session", json={"key": 1}, timeout=10).status_code == 400

    right = sign_in(gateway)
    assert right.status_code == 200
    assert right.headers["cache-control"] == "no-store"
    body = right.json()
    assert body["signed_in"] is True and body["models"] == ["gptomni"] and body["demo"] is False
    assert body["expires_at"] >= time.time() + 28800 - 60
    assert ADMIN not in right.text
    cookie = right.headers["set-cookie"]
    flags = {part.strip() for part in cookie.split(";")}
    assert {"HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"} <= flags
    assert "Secure" not in flags and ADMIN not in cookie
    behind_tls = sign_in(gateway, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in {part.strip() for part in behind_tls.headers["set-cookie"].split(";")}


def test_a_reload_gets_the_csrf_token_again_and_sign_out_clears_the_cookie(gateway: Gateway) -> None:
    session = Session(gateway)
    assert httpx.get(f"{gateway.url}/admin/session", timeout=10).json() == {"signed_in": False}
    again = session.call("GET", "/admin/session").json()
    assert again["signed_in"] is True and again["csrf_token"] == session.csrf
    out = session.call("DELETE", "/admin/session", csrf=session.csrf)
    assert out.status_code == 200
    flags = {part.strip() for part in out.headers["set-cookie"].split(";")}
    assert f"{COOKIE_NAME}=" in flags and "Max-Age=0" in flags and "Path=/admin" in flags
    # A copy of the signed-out cookie is refused too, not only forgotten by this browser.
    assert session.call("GET", "/admin/credentials").status_code == 401
    assert session.call("GET", "/admin/session").json() == {"signed_in": False}


def test_a_signed_out_session_is_refused_by_every_replica_sharing_redis(
    workdir: Path, emulator: Emulator, start_redis: Any
) -> None:
    shared = gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN, REDIS_URL=start_redis().url)
    first = Gateway(workdir, shared, name="revoke-a")
    second = Gateway(workdir, shared, name="revoke-b")
    try:
        session = Session(first)
        elsewhere = copy.copy(session)  # the same cookie, sent to the other replica
        elsewhere.gw = second
        assert elsewhere.call("GET", "/admin/credentials").status_code == 200
        assert session.call("DELETE", "/admin/session", csrf=session.csrf).status_code == 200
        assert elsewhere.call("GET", "/admin/credentials").status_code == 401
        assert sign_in(second).status_code == 200  # a new sign-in is a new session
    finally:
        first.stop()
        second.stop()


def test_the_session_opens_the_admin_api_and_the_key_still_does(gateway: Gateway) -> None:
    session = Session(gateway)
    listing = session.call("GET", "/admin/credentials")
    assert listing.status_code == 200 and len(listing.json()["data"]) >= 1
    assert COOKIE not in listing.text and "5f3a9c1e" not in listing.text
    added = session.call(
        "POST",
        "/admin/credentials",
        csrf=session.csrf,
        json={
            "cookie": "session=console-api-added-0000000000",
            "proxy": f"http://u:{PROXY_PASSWORD}@127.0.0.1:9",
        },
    )
    assert added.status_code == 201, added.text
    new_id = added.json()["added"][0]["id"]
    shown = session.call("GET", "/admin/credentials").text
    assert PROXY_PASSWORD not in shown and "console-api-added-0000000000" not in shown
    assert session.call("POST", f"/admin/credentials/{new_id}/reset", csrf=session.csrf).status_code == 200
    assert session.call("DELETE", f"/admin/credentials/{new_id}", csrf=session.csrf).status_code == 200
    # A script with the key in a header is unchanged, and a stray cookie does not get in its way.
    by_key = httpx.get(
        f"{gateway.url}/admin/credentials",
        headers={"Authorization": f"Bearer {ADMIN}", "Cookie": f"{COOKIE_NAME}=garbage"},
        timeout=10,
    )
    assert by_key.status_code == 200
    # The key header is checked as always: a wrong one is refused even next to a good session.
    wrong = session.call(
        "GET", "/admin/credentials", headers={"Authorization": "Bearer sk-admin-wrong-00000000"}
    )
    assert wrong.status_code == 401


def test_the_export_of_every_cookie_needs_the_admin_key_not_a_session(gateway: Gateway) -> None:
    refused = Session(gateway).call("GET", "/admin/export")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_key_required"
    assert COOKIE not in refused.text
    exported = httpx.get(
        f"{gateway.url}/admin/export", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert exported.status_code == 200 and COOKIE in exported.text  # the backup itself works with the key


def test_the_session_expires(workdir: Path, emulator: Emulator) -> None:
    gw = Gateway(
        workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN, CONSOLE_SESSION_TTL="2"), name="ttl"
    )
    try:
        session = Session(gw)
        assert "Max-Age=2" in sign_in(gw).headers["set-cookie"]
        assert session.call("GET", "/admin/credentials").status_code == 200
        time.sleep(3.1)
        assert session.call("GET", "/admin/credentials").status_code == 401
        assert session.call("POST", "/admin/credentials", csrf=session.csrf, json={}).status_code == 401
        assert session.call("GET", "/admin/session").json() == {"signed_in": False}
    finally:
        gw.stop()


def test_a_session_ends_when_the_admin_key_changes(workdir: Path, emulator: Emulator) -> None:
    first = Gateway(workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN), name="key-a")
    second = Gateway(
        workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY="sk-admin-rotated-000000000000"), name="key-b"
    )
    try:
        session = Session(first)
        replica = Session(first)
        replica.gw = second
        assert replica.call("GET", "/admin/credentials").status_code == 401
        # Another replica with the same ADMIN_KEY takes the session: no server state.
        third = Gateway(workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN), name="key-a2")
        try:
            session.gw = third
            assert session.call("GET", "/admin/credentials").status_code == 200
            assert session.call("POST", "/admin/credentials/nope/reset", csrf=session.csrf).status_code == 404
        finally:
            third.stop()
    finally:
        first.stop()
        second.stop()


def test_without_admin_key_the_console_is_not_there(workdir: Path, emulator: Emulator) -> None:
    gw = Gateway(workdir, gateway_settings(emulator, [COOKIE]), name="no-admin")
    try:
        for method, path in [
            ("GET", "/admin"),
            ("GET", "/admin/"),
            ("GET", "/admin/static/console.js"),
            ("GET", "/admin/session"),
            ("POST", "/admin/session"),
            *ADMIN_CALLS,
        ]:
            response = httpx.request(method, f"{gw.url}{path}", json={"key": ADMIN}, timeout=10)
            assert response.status_code == 404, (method, path)
    finally:
        gw.stop()


def test_try_it_streams_an_answer_without_a_client_key(gateway: Gateway) -> None:
    session = Session(gateway)
    reply = "<<<EMU_REPLY\nconsole says hello\nEMU_REPLY>>>"
    with httpx.stream(
        "POST",
        f"{gateway.url}/admin/try",
        json={"message": reply},
        headers={"Cookie": f"{COOKIE_NAME}={session.token}", "X-CSRF-Token": session.csrf},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "console says hello"
    assert any(c.get("usage") for c in chunks)
    bad = session.call("POST", "/admin/try", csrf=session.csrf, json={"message": ""})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "message"
    unknown = session.call("POST", "/admin/try", csrf=session.csrf, json={"message": "hi", "model": "nope"})
    assert unknown.status_code == 404


def test_traffic_counts_the_api_not_the_console(workdir: Path, emulator: Emulator) -> None:
    gw = Gateway(workdir, gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN), name="traffic")
    try:
        session = Session(gw)
        client = gw.openai()
        client.chat.completions.create(model="gptomni", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        httpx.post(
            f"{gw.url}/v1/chat/completions", json={}, headers={"Authorization": "Bearer x"}, timeout=10
        )
        for _ in range(3):
            session.call("GET", "/admin/credentials")
        traffic = session.call("GET", "/admin/traffic")
        assert traffic.status_code == 200 and traffic.headers["cache-control"] == "no-store"
        data = traffic.json()
        assert len(data["minutes"]) == 60 and data["streams_in_flight"] == 0
        total = {k: sum(m[k] for m in data["minutes"]) for k in ("ok", "client_error", "upstream_error")}
        assert total == {"ok": 2, "client_error": 1, "upstream_error": 0}
        timed = [m for m in data["minutes"] if m["ttft_p50_ms"] is not None]
        assert timed and all(m["ttft_p99_ms"] >= m["ttft_p50_ms"] >= 0 for m in timed)
        assert max(m["streams_peak"] for m in data["minutes"]) == 1
    finally:
        gw.stop()


def test_no_secret_in_the_log(gateway: Gateway) -> None:
    session = Session(gateway)
    session.call("GET", "/admin/credentials")
    session.call("POST", "/admin/credentials/nope/reset", csrf="wrong")
    sign_in(gateway, "sk-admin-not-the-key-111111111")
    log = gateway.log()
    assert "/admin/session" in log  # the sign-ins were logged, by route
    for secret in (ADMIN, session.token, session.csrf, COOKIE, "sk-admin-not-the-key", PROXY_PASSWORD):
        assert secret not in log
    assert not LEAKS.search(log)
