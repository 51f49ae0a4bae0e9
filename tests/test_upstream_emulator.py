"""End-to-end checks of the gptomni upstream emulator: a real subprocess driven by httpx over loopback."""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

EMULATOR = Path(__file__).resolve().parent.parent / "app" / "demo" / "emulator.py"
COOKIE = "session=abc"
PREFIX = "Hello from the gptomni emulator. You said: "


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(EMULATOR), "--port", "0", "--chunk-delay", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("EMULATOR_LISTENING 127.0.0.1:"), line
        yield "http://" + line.split(" ", 1)[1]
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as c:
        yield c


def chat_request(client: httpx.Client, prompt: str, cookie: str | None = COOKIE) -> httpx.Request:
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    if cookie is not None:
        headers["Cookie"] = cookie
    return client.build_request(
        "POST", "/api/chatWithText", content=json.dumps({"prompt": prompt}), headers=headers
    )


def chat_pieces(
    client: httpx.Client, prompt: str, cookie: str = COOKIE
) -> tuple[httpx.Response, list[bytes]]:
    response = client.send(chat_request(client, prompt, cookie), stream=True)
    try:
        return response, list(response.iter_raw())
    finally:
        response.close()


def stats(client: httpx.Client) -> dict[str, Any]:
    result: dict[str, Any] = client.get("/_emu/stats").json()
    return result


@pytest.mark.parametrize(
    "command",
    [
        # -S: no site-packages at all, so it runs on the standard library alone (and without uvloop).
        ["-S", str(EMULATOR)],
        ["-m", "app.demo.emulator"],
    ],
    ids=["by-path-stdlib-only", "as-module"],
)
def test_runs_by_path_on_the_stdlib_alone_and_as_a_module(command: list[str]) -> None:
    root = EMULATOR.parent.parent.parent
    proc = subprocess.Popen(
        [sys.executable, *command, "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("EMULATOR_LISTENING 127.0.0.1:"), line
        cookie = {"Cookie": "emu_demo=1"}
        answer = httpx.post(
            f"http://{line.split()[1]}/api/chatWithText", json={"prompt": "hi"}, headers=cookie
        )
        assert answer.status_code == 200 and "canned" in answer.text  # the demo option
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_default_raw_reply_streams_in_pieces(client: httpx.Client) -> None:
    response, pieces = chat_pieces(client, "first line\n  second line  \n\n")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    assert len(pieces) > 3
    assert all(len(piece) <= 16 for piece in pieces)
    assert b"".join(pieces).decode() == PREFIX + "second line"


def test_default_reply_ignores_directives_and_truncates(client: httpx.Client) -> None:
    long_line = "x" * 300
    response = client.send(chat_request(client, f"{long_line}\n[[emu chunk_size=64]]\n"))
    assert response.text == PREFIX + "x" * 200


def test_scripted_reply_round_trips_unicode(client: httpx.Client) -> None:
    reply = '你好，世界 🌍👩‍💻\n{"json": [1, 2]} {{braces}}\n\nend 😀'
    prompt = (
        "<<<EMU_REPLY\nan older turn\nEMU_REPLY>>>\n[[emu status=500]]\n"
        f"user: go\n[[emu chunk_size=5]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>\n"
    )
    response, pieces = chat_pieces(client, prompt)
    assert response.status_code == 200
    assert len(pieces) > 5
    assert b"".join(pieces).decode("utf-8") == reply


TOOL_CALL_REPLY = '<tool_calls>\n[{"name": "Bash", "arguments": {"command": "echo hi"}}]\n</tool_calls>'
SCRIPT = (
    f"Run it.\n<<<EMU_REPLY@0\n{TOOL_CALL_REPLY}\nEMU_REPLY>>>\n"
    "<<<EMU_REPLY@1\nThe tool said hi.\nEMU_REPLY>>>\n"
    "<<<EMU_REPLY@2\nTwo results.\nEMU_REPLY>>>\n"
)
# What the gateway's tool instructions say about results: mentions the tag, is no result.
TOOL_RULES = 'System: # Tools\n- Results come back in a later message as <tool_result id="..."> blocks.'


def tool_result(call_id: str, text: str) -> str:
    return f'Tool: <tool_result id="{call_id}" name="Bash">\n{text}\n</tool_result>'


def transcript(*blocks: str) -> str:
    return "\n\n".join(blocks)


@pytest.mark.parametrize(
    ("results", "expected"),
    [(0, TOOL_CALL_REPLY), (1, "The tool said hi."), (2, "Two results.")],
)
def test_numbered_reply_follows_the_tool_results(client: httpx.Client, results: int, expected: str) -> None:
    blocks = [TOOL_RULES, f"User: {SCRIPT}"]
    for index in range(results):
        blocks += [f"Assistant: {TOOL_CALL_REPLY}", tool_result(f"call_{index}", "hi")]
    response = client.send(chat_request(client, transcript(*blocks)))
    assert response.status_code == 200
    assert response.text == expected


def test_numbered_reply_picks_the_last_copy_of_a_repeated_script(client: httpx.Client) -> None:
    first = SCRIPT.replace("The tool said hi.", "stale copy")
    prompt = transcript(
        f"User: {first}",
        f"Assistant: {TOOL_CALL_REPLY}",
        tool_result("call_0", "hi"),
        f"User: again\n{SCRIPT}",
    )
    assert client.send(chat_request(client, prompt)).text == "The tool said hi."


def test_numbered_reply_falls_back_to_the_plain_block_then_the_default(client: httpx.Client) -> None:
    three = transcript(f"User: {SCRIPT}", *(tool_result(f"c{i}", "x") for i in range(3)))
    assert client.send(chat_request(client, three)).text == PREFIX + "</tool_result>"
    with_plain = three + "\n<<<EMU_REPLY\nplain wins\nEMU_REPLY>>>"
    assert client.send(chat_request(client, with_plain)).text == "plain wins"
    # A plain block never shadows a numbered one that matches.
    no_results = f"<<<EMU_REPLY\nplain\nEMU_REPLY>>>\n{SCRIPT}<<<EMU_REPLY\nlater plain\nEMU_REPLY>>>"
    assert client.send(chat_request(client, no_results)).text == TOOL_CALL_REPLY


def test_numbered_blocks_are_removed_from_the_default_reply(client: httpx.Client) -> None:
    prompt = "the line\n<<<EMU_REPLY@5\nnot this turn\nEMU_REPLY>>>\n"
    assert client.send(chat_request(client, prompt)).text == PREFIX + "the line"


def test_stats_count_the_tool_results(client: httpx.Client) -> None:
    client.post("/_emu/reset")
    client.send(chat_request(client, transcript(TOOL_RULES, "User: hi", tool_result("a", "1"))))
    client.post("/api/chatWithText", content=b"{}", headers={"Cookie": COOKIE})
    last = stats(client)["last_requests"]
    assert [request["tool_results"] for request in last] == [1, None]


def test_reply_b64_and_repeat(client: httpx.Client) -> None:
    encoded = base64.b64encode("héllo ".encode()).decode()
    response = client.send(chat_request(client, f"[[emu reply_b64={encoded} repeat=3 delay=0]]"))
    assert response.text == "héllo héllo héllo "


def test_split_utf8_breaks_per_read_decoding(client: httpx.Client) -> None:
    reply = "a中文😀b"
    _, pieces = chat_pieces(client, f"[[emu split_utf8=1 delay=0.005]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>")
    undecodable = 0
    for piece in pieces:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable >= 3
    assert b"".join(pieces).decode("utf-8") == reply


def test_sse_with_crlf(client: httpx.Client) -> None:
    reply = 'Hi 你好, "quoted"\nnext'
    prompt = f"[[emu format=sse eol=crlf chunk_size=4]]\n<<<EMU_REPLY\n{reply}\nEMU_REPLY>>>"
    response, pieces = chat_pieces(client, prompt)
    assert response.headers["content-type"] == "text/event-stream"
    body = b"".join(pieces).decode()
    assert body.endswith("data: [DONE]\r\n\r\n")
    events = body.split("\r\n\r\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event.replace("\r\n", "") for event in events)
    texts = [json.loads(event[6:])["text"] for event in events[:-1]]
    assert texts[0] == "Hi 你"
    assert "".join(texts) == reply
    assert "你" in body  # ensure_ascii=False


def test_json_format(client: httpx.Client) -> None:
    response = client.send(chat_request(client, "[[emu format=json]] ping"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.json() == {"text": PREFIX + "ping"}


@pytest.mark.parametrize(
    ("status", "content_type", "check"),
    [
        (401, "application/json", lambda r: r.json() == {"error": "Unauthorized"}),
        (403, "application/json", lambda r: r.json() == {"message": "Forbidden"}),
        (429, "application/json", lambda r: r.json() == {"error": "Too Many Requests"}),
        (500, "text/html", lambda r: "<html>" in r.text and "500" in r.text),
        (418, "application/json", lambda r: r.json() == {"error": "I'm a Teapot"}),
    ],
)
def test_status_option(client: httpx.Client, status: int, content_type: str, check: Any) -> None:
    response = client.send(chat_request(client, f"[[emu status={status} retry_after=7]]"))
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    assert check(response)
    assert response.headers.get("retry-after") == ("7" if status == 429 else None)
    assert "cf-mitigated" not in response.headers


def test_cloudflare_challenge(client: httpx.Client) -> None:
    for prompt, status in (("[[emu cf=1]]", 403), ("[[emu cf=1 status=503]]", 503)):
        response = client.send(chat_request(client, prompt))
        assert response.status_code == status
        assert response.headers["server"] == "cloudflare"
        assert response.headers["cf-mitigated"] == "challenge"
        assert response.headers["cf-ray"]
        assert response.headers["content-type"] == "text/html; charset=UTF-8"
        assert "<title>Just a moment...</title>" in response.text
        assert "window._cf_chl_opt" in response.text
        assert "/cdn-cgi/challenge-platform/" in response.text


def test_cookie_options_override_prompt(client: httpx.Client) -> None:
    prompt = "[[emu status=500]] hi"
    assert client.send(chat_request(client, prompt)).status_code == 500
    cookie = "session=abc; emu_status=429; emu_retry_after=3"
    response = client.send(chat_request(client, prompt, cookie=cookie))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert client.send(chat_request(client, prompt, cookie=COOKIE + "; emu_status=200")).status_code == 200


def test_last_directive_wins(client: httpx.Client) -> None:
    response = client.send(chat_request(client, "[[emu status=401]]\nlater\n[[emu format=json]]"))
    assert response.status_code == 200
    assert response.json() == {"text": PREFIX + "later"}


def test_request_validation(client: httpx.Client) -> None:
    assert client.send(chat_request(client, "hi", cookie=None)).json() == {"error": "Unauthorized"}
    assert client.send(chat_request(client, "hi", cookie="")).status_code == 401
    bad = client.post("/api/chatWithText", content=b'{"text": 1}', headers={"Cookie": COOKIE})
    assert (bad.status_code, bad.json()) == (400, {"error": "bad request"})
    assert client.post("/api/chatWithText", content=b"\xff", headers={"Cookie": COOKIE}).status_code == 400
    option = client.send(chat_request(client, "[[emu nope=1]]"))
    assert (option.status_code, option.json()["error"]) == (400, "bad emu option")
    assert client.get("/nowhere").status_code == 404
    assert client.get("/api/chatWithText").status_code == 404


def test_chunked_request_body(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"prompt": "chun'
        yield 'ked 好"}'.encode()

    response = client.post("/api/chatWithText", content=body(), headers={"Cookie": COOKIE})
    assert response.text == PREFIX + "chunked 好"


def read_into(response: httpx.Response, received: bytearray) -> None:
    for piece in response.iter_raw():
        received += piece


@pytest.mark.parametrize("cut", [0, 5, 20])
def test_cut_leaves_incomplete_chunked_body(client: httpx.Client, cut: int) -> None:
    response = client.send(chat_request(client, f"[[emu cut={cut}]] hi"), stream=True)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        read_into(response, received)
    response.close()
    assert bytes(received) == (PREFIX + "hi").encode()[:cut]


def test_cut_with_reset(client: httpx.Client) -> None:
    with pytest.raises(httpx.TransportError):
        client.send(chat_request(client, "[[emu cut=10 cut_mode=rst]] hi")).read()


def test_body_delay(client: httpx.Client) -> None:
    start = time.monotonic()
    with client.stream("POST", "/api/chatWithText", json={"prompt": "[[emu body_delay=0.4]]"}) as r:
        pass  # no Cookie: the answer comes at once
    assert r.status_code == 401
    response = client.send(chat_request(client, "[[emu body_delay=0.4 chunk_size=1000]] x"), stream=True)
    headers_at = time.monotonic() - start
    body = response.read()
    body_at = time.monotonic() - start
    assert headers_at < 0.25
    assert body_at >= 0.4
    assert body.decode() == PREFIX + "x"


def wait_for_disconnects(client: httpx.Client, expected: int) -> float:
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        current = stats(client)
        if current["disconnects"] >= expected:
            assert current["in_flight"] == 0
            return float(current["disconnect_times"][-1])
        time.sleep(0.02)
    raise AssertionError(f"no disconnect recorded: {stats(client)}")


def test_client_closing_mid_stream_is_a_disconnect(client: httpx.Client, base_url: str) -> None:
    client.post("/_emu/reset")
    with httpx.Client(base_url=base_url, timeout=5) as other:
        response = other.send(chat_request(other, "[[emu duration=5]] slow"), stream=True)
        reads = response.iter_raw()  # kept: a collected generator would close the response
        assert next(reads)
        assert stats(client)["in_flight"] == 1
        closed_at = time.monotonic()
        response.close()
    assert wait_for_disconnects(client, 1) - closed_at < 0.5
    assert stats(client)["completed"] == 0


def test_client_leaving_during_silence_is_a_disconnect(client: httpx.Client, base_url: str) -> None:
    client.post("/_emu/reset")
    with httpx.Client(base_url=base_url, timeout=0.2) as other, pytest.raises(httpx.ReadTimeout):
        other.send(chat_request(other, "[[emu first_byte_delay=5]]"))
    wait_for_disconnects(client, 1)


def test_stats_and_reset(client: httpx.Client) -> None:
    assert client.post("/_emu/reset").json() == {"ok": True}
    for cookie in ("a=1", "a=1", "b=2; emu_status=401"):
        client.send(chat_request(client, "count me", cookie=cookie))
    client.send(chat_request(client, "no cookie", cookie=None))
    current = stats(client)
    assert current["requests"] == 4
    assert current["by_cookie"] == {"a=1": 2, "b=2; emu_status=401": 1, "": 1}
    assert current["completed"] == 4
    assert current["in_flight"] == 0
    assert current["max_in_flight"] == 1
    assert len(current["request_times"]["a=1"]) == 2
    assert current["request_times"]["a=1"][0] <= current["now"]
    last = current["last_requests"][0]
    assert last["prompt"] == "count me"
    assert last["cookie"] == "a=1"
    assert last["headers"]["content-type"] == "text/plain;charset=UTF-8"
    assert json.loads(last["raw_body"]) == {"prompt": "count me"}
    assert client.post("/_emu/reset").json() == {"ok": True}
    current = stats(client)
    assert (current["requests"], current["by_cookie"], current["last_requests"]) == (0, {}, [])
    assert client.get("/_emu/health").json() == {"ok": True}


def test_keep_alive_reuses_one_connection(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=5) as one:
        one.post("/_emu/reset")
        first = one.send(chat_request(one, "[[emu format=sse]] one"))
        second = one.send(chat_request(one, "two"))
        assert first.status_code == second.status_code == 200
        assert second.text == PREFIX + "two"
        current = stats(one)
    assert current["connections_total"] == 0  # every request above rode the pre-reset connection
    assert len({request["conn"] for request in current["last_requests"]}) == 1


# --- NextAuth sessions, Set-Cookie, WAF, poison ------------------------------------------------

SESSION_COOKIE = "__Secure-next-auth.session-token"
ROTATION_RE = re.compile(
    r"__Secure-next-auth\.session-token=(emu\.[0-9a-f]{32}); Path=/; Expires=([^;]+); HttpOnly; Secure; "
    r"SameSite=Lax"
)


def rotating(account: str, token: str, extra: str = "") -> str:
    return f"{SESSION_COOKIE}={token}; emu_rotate={account}; NEXT_LOCALE=en{extra}"


def new_token(response: httpx.Response) -> str:
    """The token of the one rotation Set-Cookie on the response; checks its attributes."""
    rotations = [ROTATION_RE.fullmatch(v) for v in response.headers.get_list("set-cookie")]
    matches = [m for m in rotations if m]
    assert len(matches) == 1, response.headers.get_list("set-cookie")
    expires = email.utils.parsedate_to_datetime(matches[0].group(2)).timestamp()
    assert abs(expires - (time.time() + 30 * 86_400)) < 60
    assert matches[0].group(2).endswith(" GMT")
    return matches[0].group(1)


def chat(
    client: httpx.Client, prompt: str, cookie: str | None = COOKIE, stream: bool = False
) -> httpx.Response:
    return client.send(chat_request(client, prompt, cookie), stream=stream)


def session(client: httpx.Client, cookie: str | None, **headers: str) -> httpx.Response:
    if cookie is not None:
        headers["Cookie"] = cookie
    return client.get("/api/auth/session", headers=headers)


def test_rotating_session_renews_on_every_answer_and_honours_one_grace_use(client: httpx.Client) -> None:
    account = "rot-chat"
    first = chat(client, "hi", cookie=rotating(account, "first-ever"))
    assert first.status_code == 200
    t1 = new_token(first)
    second = chat(client, "hi", cookie=rotating(account, t1))
    assert second.status_code == 200
    t2 = new_token(second)
    assert len({t1, t2, "first-ever"}) == 3
    # t1 is the previous token now: good for one more use, which renews again.
    grace = chat(client, "hi", cookie=rotating(account, t1))
    assert grace.status_code == 200
    t3 = new_token(grace)
    for stale in (t1, "first-ever", "made-up"):
        rejected = chat(client, "hi", cookie=rotating(account, stale))
        assert (rejected.status_code, rejected.json()) == (401, {"error": "Unauthorized"})
        assert "set-cookie" not in rejected.headers
    no_session = chat(client, "hi", cookie=f"emu_rotate={account}")
    assert no_session.status_code == 401
    # t2 became the previous token when t3 was issued: one more use, then gone.
    assert chat(client, "hi", cookie=rotating(account, t2)).status_code == 200
    assert chat(client, "hi", cookie=rotating(account, t2)).status_code == 401
    state = stats(client)["sessions"][account]
    assert state["rotations"] == 4
    assert state["grace_uses"] == 2
    assert state["rejected"] == 5
    assert state["previous"] is not None
    assert state["current"] not in (t1, t2, t3)


def test_rotation_happens_only_on_answers_that_are_200(client: httpx.Client) -> None:
    account = "rot-status"
    token = new_token(chat(client, "hi", cookie=rotating(account, "seed")))
    for prompt in ("[[emu status=500]]", "[[emu status=429]]", "[[emu cf=1]]", "[[emu waf=1]]"):
        response = chat(client, prompt, cookie=rotating(account, token))
        assert response.status_code != 200
        assert "set-cookie" not in response.headers
    # Still the current token: nothing rotated, and the same token keeps working.
    assert stats(client)["sessions"][account]["current"] == token
    cut = chat(client, "[[emu cut=3]] hi", cookie=rotating(account, token), stream=True)
    assert cut.status_code == 200
    assert new_token(cut)  # the renewal rides on the 200 head, before the body is cut
    cut.close()


def test_session_endpoint_for_a_rotating_account(client: httpx.Client) -> None:
    account = "rot-session"
    alive = session(client, rotating(account, "seed-token"))
    assert alive.status_code == 200
    body = alive.json()
    assert body["user"]["name"] == account
    assert body["user"]["email"].endswith("@users.emulator.invalid")
    expires = datetime.datetime.fromisoformat(body["expires"].replace("Z", "+00:00"))
    assert abs(expires.timestamp() - (time.time() + 30 * 86_400)) < 60
    token = new_token(alive)
    # The session endpoint renews like a chat answer; the chat sees the renewed token.
    answer = chat(client, "hi", cookie=rotating(account, token))
    assert answer.status_code == 200
    assert session(client, rotating(account, new_token(answer))).json()["user"]["name"] == account
    for cookie in (rotating(account, "wrong"), f"emu_rotate={account}", None, ""):
        signed_out = session(client, cookie)
        assert (signed_out.status_code, signed_out.json()) == (200, {})
        assert "set-cookie" not in signed_out.headers


def test_session_endpoint_for_plain_cookies_and_its_stats(client: httpx.Client) -> None:
    client.post("/_emu/reset")
    alive = session(client, "sid=plain-1", **{"User-Agent": "probe/1.0"})
    assert alive.status_code == 200
    assert alive.json()["user"]["name"] == "Emulator User"
    assert "set-cookie" not in alive.headers
    empty = "sid=plain-2; emu_session=empty"
    assert session(client, empty).json() == {}
    assert chat(client, "hi", cookie=empty).status_code == 401
    client.post("/_emu/faults", json={"match": "plain-3", "options": {"session": "error"}})
    broken = session(client, "sid=plain-3")
    assert broken.status_code == 500
    assert broken.headers["content-type"] == "text/html"
    assert chat(client, "hi", cookie="sid=plain-3").status_code == 200
    # A cookie whose chat answers 401 models an expired cookie unless its session is said alive;
    # a WAF block says nothing about the session.
    assert session(client, "sid=plain-4; emu_status=401").json() == {}
    for options in ("emu_status=401; emu_session=alive", "emu_waf=1"):
        assert "user" in session(client, f"sid=plain-4; {options}").json()
    assert session(client, "sid=x; emu_session=bogus").status_code == 400
    current = stats(client)
    assert current["session_checks"] == 7
    assert current["session_checks_by_cookie"]["sid=plain-1"] == 1
    assert current["requests"] == 2  # the two chat calls only
    checks = [r for r in current["last_requests"] if r["path"] == "/api/auth/session"]
    assert [(r["method"], r["cookie"], r["status"]) for r in checks[:3]] == [
        ("GET", "sid=plain-1", 200),
        ("GET", empty, 200),
        ("GET", "sid=plain-3", 500),
    ]
    assert checks[0]["user_agent"] == "probe/1.0"
    assert checks[0]["prompt"] is None
    assert current["by_user_agent"]["probe/1.0"] == 1
    client.post("/_emu/reset")


def test_set_cookie_b64_sends_each_line_as_its_own_header(client: httpx.Client) -> None:
    lines = [
        "cf_clearance=new-clearance; Path=/; Domain=.gptomni.ai; Secure; HttpOnly",
        "NEXT_LOCALE=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "__Host-next-auth.csrf-token=abc%7Cdef; Path=/; Secure",
    ]
    encoded = base64.b64encode("\r\n".join(lines).encode()).decode()
    cookie = f"sid=jar; emu_set_cookie_b64={encoded}"
    ok = chat(client, "hi", cookie=cookie)
    assert ok.status_code == 200
    assert ok.headers.get_list("set-cookie") == lines
    refused = chat(client, "[[emu status=401]]", cookie=cookie)
    assert (refused.status_code, refused.headers.get_list("set-cookie")) == (401, lines)
    assert session(client, cookie).headers.get_list("set-cookie") == lines
    # With a rotating account the extra lines come first, then the renewal.
    rot = client.send(
        chat_request(client, "hi", cookie=rotating("rot-jar", "seed", f"; emu_set_cookie_b64={encoded}"))
    )
    assert rot.headers.get_list("set-cookie")[:3] == lines
    assert new_token(rot)
    # Also as a fault or a prompt option; a value that is no base64 is a bad option.
    one = base64.b64encode(b"a=1; Path=/").decode()
    assert chat(client, f"[[emu set_cookie_b64={one}]]").headers["set-cookie"] == "a=1; Path=/"
    assert chat(client, "[[emu set_cookie_b64=%%%]]").status_code == 400


def test_waf_block_page_is_no_challenge(client: httpx.Client) -> None:
    from app.upstream.failures import classify_response, is_cloudflare_challenge

    response = chat(client, "[[emu waf=1]] DROP TABLE users;")
    assert response.status_code == 403
    assert response.headers["server"] == "cloudflare"
    assert re.fullmatch(r"[0-9a-f]{16}-SJC", response.headers["cf-ray"])
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    page = response.text
    assert "<title>Attention Required! | Cloudflare</title>" in page
    assert "Sorry, you have been blocked" in page
    assert 'id="cf-error-details"' in page
    assert f'Cloudflare Ray ID: <strong class="font-semibold">{response.headers["cf-ray"][:16]}' in page
    assert "cf-mitigated" not in response.headers
    for marker in ("cf-chl", "_cf_chl_opt", "challenge-platform", "Just a moment"):
        assert marker.lower() not in page.lower()
    headers = {name.lower(): value for name, value in response.headers.items()}
    assert not is_cloudflare_challenge(403, headers, response.content)
    failure = classify_response(403, headers, response.content[:2048])
    assert failure is not None
    assert failure.kind.value != "cloudflare"
    # Also as a cookie option or a fault.
    assert chat(client, "hi", cookie="sid=w; emu_waf=1").status_code == 403


def test_poison_answers_500_whatever_the_cookie(client: httpx.Client) -> None:
    for prompt in ("[[emu poison]]", "[[emu poison]]\nthen\n[[emu format=json]]", "x [[emu  poison ]] y"):
        for cookie in (COOKIE, "sid=p; emu_status=200", "sid=p; emu_poison=0; emu_format=sse"):
            response = chat(client, prompt, cookie=cookie)
            assert response.status_code == 500, (prompt, cookie)
            assert response.headers["content-type"] == "text/html"
            assert "500" in response.text
    client.post("/_emu/faults", json={"match": "poisoned-by-fault", "options": {"poison": "1"}})
    assert chat(client, "hi", cookie="sid=poisoned-by-fault").status_code == 500
    client.post("/_emu/faults", json={"match": "poisoned-by-fault", "options": {}})
    assert chat(client, "hi", cookie="sid=poisoned-by-fault").status_code == 200
    # A signed-out account still gets its 401 first; a poisoned answer renews no token.
    assert chat(client, "[[emu poison]]", cookie=rotating("rot-p", "t")).status_code == 500
    assert chat(client, "[[emu poison]]", cookie=rotating("rot-p", "u")).status_code == 401
    assert stats(client)["sessions"]["rot-p"]["rotations"] == 0


def test_last_requests_show_the_user_agent_cookie_and_status(client: httpx.Client) -> None:
    client.post("/_emu/reset")
    headers = {"User-Agent": "Mozilla/5.0 (emu test) Chrome/124", "Cookie": "sid=ua"}
    client.post("/api/chatWithText", json={"prompt": "hi"}, headers=headers)
    client.post("/api/chatWithText", json={"prompt": "[[emu status=503]]"}, headers={"Cookie": "sid=ua2"})
    first, second = stats(client)["last_requests"]
    assert first["headers"]["user-agent"] == first["user_agent"] == headers["User-Agent"]
    assert first["headers"]["cookie"] == first["cookie"] == "sid=ua"
    assert (first["status"], first["account"]) == (200, None)
    assert second["user_agent"].startswith("python-httpx/")
    assert second["status"] == 503
    assert stats(client)["by_user_agent"][headers["User-Agent"]] == 1


def test_reset_forgets_the_tokens(client: httpx.Client) -> None:
    account = "rot-reset"
    token = new_token(chat(client, "hi", cookie=rotating(account, "a")))
    assert stats(client)["by_account"][account] == 1
    client.post("/_emu/reset")
    assert account not in stats(client)["sessions"]
    # After a reset any token is the first one seen again.
    assert chat(client, "hi", cookie=rotating(account, "anything")).status_code == 200
    assert chat(client, "hi", cookie=rotating(account, token)).status_code == 401
    assert chat(client, "hi", cookie=rotating("bad name!", "x")).status_code == 400
