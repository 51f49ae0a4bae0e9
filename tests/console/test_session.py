"""The console's session and CSRF tokens: pure functions, no server."""

from __future__ import annotations

import pytest

from app.console.session import (
    COOKIE_NAME,
    ConsoleSession,
    cleared_cookie,
    csrf_token,
    csrf_valid,
    is_https,
    issue_session,
    session_cookie,
    verify_session,
)

KEY = "sk-admin-unit-test-0000000000"
OTHER = "sk-admin-other-key-0000000000"
NOW = 1_800_000_000.0


def test_a_session_verifies_until_it_expires() -> None:
    token, session = issue_session(KEY, NOW, 60)
    assert session.expires_at == int(NOW + 60)
    assert issue_session(KEY, NOW + 0.9, 60)[1].expires_at == int(NOW + 61)  # at least the whole TTL
    assert verify_session(KEY, token, NOW) == session
    assert verify_session(KEY, token, NOW + 59) == session
    assert verify_session(KEY, token, NOW + 60) is None
    assert verify_session(KEY, token, NOW + 3600) is None


def test_a_session_longer_than_the_current_ttl_is_refused() -> None:
    token, session = issue_session(KEY, NOW, 3600)
    assert verify_session(KEY, token, NOW, max_ttl=3600) == session
    assert verify_session(KEY, token, NOW + 10, max_ttl=60) is None  # CONSOLE_SESSION_TTL was lowered
    assert verify_session(KEY, token, NOW + 3540, max_ttl=60) == session


def test_a_replica_whose_clock_is_behind_accepts_a_fresh_session() -> None:
    token, session = issue_session(KEY, NOW, 60)
    assert verify_session(KEY, token, NOW - 30, max_ttl=60) == session  # 30 s behind the signer


def test_each_session_is_new() -> None:
    first, a = issue_session(KEY, NOW, 60)
    second, b = issue_session(KEY, NOW, 60)
    assert first != second and a.id != b.id


def test_another_admin_key_rejects_the_session() -> None:
    token, _ = issue_session(KEY, NOW, 60)
    assert verify_session(OTHER, token, NOW) is None


def test_the_token_does_not_hold_the_admin_key() -> None:
    token, session = issue_session(KEY, NOW, 60)
    assert KEY not in token and KEY not in csrf_token(KEY, session)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace(t.split(".")[2], str(int(t.split(".")[2]) + 3600)),  # a later expiry
        lambda t: t.replace(t.split(".")[1], "someone-else"),  # another id
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature
        lambda t: "v2" + t[2:],
        lambda t: t + ".",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: "",
        lambda t: "v1.x.²³.AAAA",  # digits that int() refuses
        lambda t: t.replace(".", "\u2024"),
        lambda t: t + "x" * 300,
    ],
)
def test_a_tampered_token_is_refused(change: object) -> None:
    token, _ = issue_session(KEY, NOW, 60)
    assert callable(change)
    assert verify_session(KEY, change(token), NOW) is None


def test_none_is_no_session() -> None:
    assert verify_session(KEY, None, NOW) is None


def test_csrf_token_belongs_to_its_session_and_key() -> None:
    _, session = issue_session(KEY, NOW, 60)
    _, other = issue_session(KEY, NOW, 60)
    token = csrf_token(KEY, session)
    assert csrf_valid(KEY, session, token)
    assert not csrf_valid(KEY, other, token)
    assert not csrf_valid(OTHER, session, token)
    assert not csrf_valid(KEY, session, None)
    assert not csrf_valid(KEY, session, "")
    assert not csrf_valid(KEY, session, token + "x")
    assert not csrf_valid(KEY, session, "é" * len(token))  # non-ASCII: refused, not an error


def test_csrf_token_differs_from_the_session_signature() -> None:
    token, session = issue_session(KEY, NOW, 60, session_id="fixed-id")
    assert csrf_token(KEY, session) != token.rsplit(".", 1)[1]
    assert csrf_token(KEY, ConsoleSession("fixed-id", 1)) == csrf_token(KEY, session)  # by id only


def test_the_cookie_is_httponly_strict_and_scoped_to_admin() -> None:
    cookie = session_cookie("v1.abc.1.sig", 28800, secure=False)
    assert cookie.startswith(f"{COOKIE_NAME}=v1.abc.1.sig;")
    parts = {p.strip() for p in cookie.split(";")}
    assert {"HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"} <= parts
    assert "Secure" not in parts
    assert "Secure" in {p.strip() for p in session_cookie("t", 1, secure=True).split(";")}


def test_the_cleared_cookie_expires_at_once() -> None:
    parts = {p.strip() for p in cleared_cookie(secure=True).split(";")}
    assert f"{COOKIE_NAME}=" in parts and "Max-Age=0" in parts and "Secure" in parts


@pytest.mark.parametrize(
    ("scheme", "forwarded", "https"),
    [
        ("https", None, True),
        ("http", None, False),
        ("http", "https", True),
        ("http", "HTTPS, http", True),
        ("http", "http", False),
        ("http", "", False),
        ("http", "http, https", False),  # the first hop is the browser's
    ],
)
def test_is_https(scheme: str, forwarded: str | None, https: bool) -> None:
    assert is_https(scheme, forwarded) is https
