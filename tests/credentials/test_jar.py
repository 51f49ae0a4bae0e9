"""The cookie jar merge: Set-Cookie into a Cookie header by name, with deletion and expiry."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from app.credentials.jar import (
    apply_set_cookies,
    format_cookie_header,
    is_session_cookie,
    parse_cookie_header,
    parse_set_cookie,
    secret_values,
)

NOW = 1_800_000_000.0
SESSION = "__Secure-next-auth.session-token"
JAR = f"NEXT_LOCALE=zh; {SESSION}=old-token-value-aaaa; _ga=GA1.1.1"


def http_date(at: float) -> str:
    return formatdate(at, usegmt=True)


def test_header_round_trip_keeps_order_and_odd_parts() -> None:
    pairs = parse_cookie_header(" a=1;b = 2 ; flag;; c=x=y ")
    assert pairs == [("a", "1"), ("b", "2"), ("", "flag"), ("c", "x=y")]
    assert format_cookie_header(pairs) == "a=1; b=2; flag; c=x=y"


def test_a_renewed_session_replaces_its_value_in_place() -> None:
    expires = NOW + 30 * 86400
    update = apply_set_cookies(
        JAR, [f"{SESSION}=new-token-value-bbbb; Path=/; Expires={http_date(expires)}; HttpOnly; Secure"], NOW
    )
    assert update.cookie == f"NEXT_LOCALE=zh; {SESSION}=new-token-value-bbbb; _ga=GA1.1.1"
    assert update.changed and update.session_changed
    assert update.session_expires_at == pytest.approx(expires)


def test_max_age_wins_over_expires_and_new_cookies_are_appended() -> None:
    update = apply_set_cookies(
        JAR,
        [f"cf_clearance=abc; Max-Age=3600; Expires={http_date(NOW - 10)}", f"{SESSION}=t2; Max-Age=60"],
        NOW,
    )
    assert update.cookie.endswith("; cf_clearance=abc")
    assert update.session_expires_at == NOW + 60


@pytest.mark.parametrize(
    "deletion",
    [
        f"{SESSION}=; Max-Age=0",
        f"{SESSION}=gone; Expires={http_date(NOW - 1)}",
        f"{SESSION}=",
        "_ga=x; max-age=-1",
    ],
)
def test_deletion_removes_the_cookie(deletion: str) -> None:
    name = deletion.split("=", 1)[0]
    update = apply_set_cookies(JAR, [deletion], NOW)
    assert update.changed
    assert name + "=" not in update.cookie
    assert update.session_changed is (name == SESSION)


def test_the_same_value_again_changes_nothing() -> None:
    update = apply_set_cookies(JAR, ["NEXT_LOCALE=zh; Path=/", "junk without equals", "=nameless"], NOW)
    assert not update.changed
    assert update.cookie == JAR


def test_a_renamed_session_chunk_counts_as_the_session() -> None:
    assert is_session_cookie(SESSION + ".0") and is_session_cookie("next-auth.session-token")
    assert not is_session_cookie("next-auth.csrf-token")
    update = apply_set_cookies("a=1", [f"{SESSION}.0=part1", f"{SESSION}.1=part2"], NOW)
    assert update.cookie == f"a=1; {SESSION}.0=part1; {SESSION}.1=part2"
    assert update.session_changed


def test_two_accounts_never_mix() -> None:
    alice = "acct=alice; " + f"{SESSION}=alice-token-1111"
    bob = "acct=bob; " + f"{SESSION}=bob-token-2222"
    alice2 = apply_set_cookies(alice, [f"{SESSION}=alice-token-3333"], NOW).cookie
    assert bob == "acct=bob; " + f"{SESSION}=bob-token-2222"  # pure: nothing else is touched
    assert "alice" in alice2 and "bob" not in alice2


def test_quoted_values_and_bad_dates() -> None:
    parsed = parse_set_cookie('x="quoted value"; Expires=not a date; Max-Age=abc', NOW)
    assert parsed is not None
    assert (parsed.value, parsed.expires_at, parsed.delete) == ("quoted value", None, False)


def test_secret_values_cover_the_header_and_each_long_value() -> None:
    assert secret_values(JAR) == [JAR, "old-token-value-aaaa"]  # "zh" and "GA1.1.1" are too short


def test_absurd_lifetimes_are_capped_not_an_error() -> None:
    update = apply_set_cookies(
        JAR, [f"{SESSION}=t; Max-Age={'9' * 400}", "x=1; Expires=Fri, 31 Dec 9999 23:59:59 GMT"], NOW
    )
    assert update.cookie.endswith("; x=1")
    assert update.session_expires_at == NOW + 400 * 86400  # a date can still say it
    negative = apply_set_cookies(JAR, [f"{SESSION}=t; Max-Age=-{'9' * 400}"], NOW)
    assert SESSION not in negative.cookie  # deleted, as any negative Max-Age
