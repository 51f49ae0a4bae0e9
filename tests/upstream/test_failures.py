"""Classification of upstream outcomes, Cloudflare detection and Retry-After parsing."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from app.upstream.failures import (
    FailureKind,
    UpstreamFailure,
    classify_response,
    is_cloudflare_block,
    is_cloudflare_challenge,
    parse_retry_after,
)

COOKIE = "__Secure-next-auth.session-token=eyJSECRETCOOKIEVALUE0123456789; NEXT_LOCALE=zh"
BODY_SECRET = "BODY-SECRET-TEXT-42"

CF_PAGE = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    b"<script>window._cf_chl_opt={cvId: '3'};</script>"
    b'<script src="/cdn-cgi/challenge-platform/h/b/orchestrate/chl_page/v1"></script></body></html>'
)
CF_HEADERS = {"server": "cloudflare", "content-type": "text/html; charset=UTF-8", "cf-ray": "8a1b2c3d4e-AMS"}
# Cloudflare's WAF block page, as served for a managed-rule or custom-rule block (abridged: head,
# the error details and the footer; the markers sit where they sit on the real page).
WAF_PAGE = b"""<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>Attention Required! | Cloudflare</title>
<meta charset="UTF-8" />
<meta name="robots" content="noindex, nofollow" />
<link rel="stylesheet" id="cf_styles-css" href="/cdn-cgi/styles/cf.errors.css" />
</head>
<body>
  <div id="cf-wrapper">
    <div class="cf-alert cf-alert-error cf-cookie-error" id="cookie-alert">Please enable cookies.</div>
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <div class="cf-wrapper cf-header cf-error-overview">
        <h1 data-translate="block_headline">Sorry, you have been blocked</h1>
        <h2 class="cf-subheadline"><span data-translate="unable_to_access">You are unable to access</span>
        gptomni.ai</h2>
      </div>
      <div class="cf-section cf-wrapper">
        <p data-translate="blocked_why_detail">This website is using a security service to protect itself
        from online attacks. The action you just performed triggered the security solution.</p>
      </div>
      <div class="cf-error-footer cf-wrapper w-240 lg:w-full py-10 sm:py-4 sm:px-8 mx-auto text-center">
        <p class="text-13">
          <span class="cf-footer-item sm:block sm:mb-1">Cloudflare Ray ID:
          <strong class="font-semibold">8e1f2c3d4b5a0001</strong></span>
          <span class="cf-footer-item sm:block sm:mb-1"><span>Performance &amp; security by</span>
          <a rel="noopener noreferrer" href="https://www.cloudflare.com/5xx-error-landing">Cloudflare</a></span>
        </p>
      </div>
    </div>
  </div>
</body>
</html>
"""
# Error 1020 ("Access denied"): a firewall rule, same error-page template, another title.
ACCESS_DENIED_PAGE = b"""<!DOCTYPE html>
<html class="no-js" lang="en-US"><head>
<title>Access denied | gptomni.ai used Cloudflare to restrict access</title>
<meta charset="UTF-8" /></head><body>
<div id="cf-wrapper"><div id="cf-error-details" class="p-0">
<header class="mx-auto pt-10 lg:pt-6 lg:px-8 w-240 lg:w-full mb-8">
<h1 class="inline-block sm:block sm:mb-2 font-light text-60 lg:text-4xl text-black-dark leading-tight mr-2">
<span class="inline-block">Access denied</span>
<span class="code-label">Error code 1020</span></h1></header>
<div class="cf-error-footer cf-wrapper"><p class="text-13">
<span class="cf-footer-item sm:block sm:mb-1">Cloudflare Ray ID: <strong>8e1f2c3d4b5a0002</strong></span>
</p></div></div></div></body></html>
"""
# The WAF's block headers: Cloudflare's, with no cf-mitigated (that one marks a challenge).
WAF_HEADERS = {"server": "cloudflare", "content-type": "text/html; charset=UTF-8", "cf-ray": "8e1f2c3d-SJC"}

CASES = [
    # (id, status, headers, body head, kind or None)
    ("200", 200, {"content-type": "text/plain"}, b"hello", None),
    ("200 mentioning cf-chl", 200, {"server": "cloudflare"}, b"the cf-chl markers are...", None),
    ("401", 401, {}, b'{"error":"unauthorized"}', FailureKind.AUTH),
    ("403 json", 403, {"content-type": "application/json"}, b'{"error":"forbidden"}', FailureKind.AUTH),
    ("403 cf server no markers", 403, {"server": "cloudflare"}, b'{"error":"forbidden"}', FailureKind.AUTH),
    ("403 cf page", 403, CF_HEADERS, CF_PAGE, FailureKind.CLOUDFLARE),
    (
        "403 title only",
        403,
        {"server": "cloudflare"},
        b"<title>Just a moment...</title>",
        FailureKind.CLOUDFLARE,
    ),
    ("403 cf-chl marker", 403, {}, b'<div id="cf-chl-widget-x"></div>', FailureKind.CLOUDFLARE),
    ("403 cf-mitigated", 403, {"cf-mitigated": "challenge"}, b"", FailureKind.CLOUDFLARE),
    ("403 cf-mitigated case", 403, {"cf-mitigated": "Challenge"}, b"{}", FailureKind.CLOUDFLARE),
    ("503 cf page", 503, CF_HEADERS, CF_PAGE, FailureKind.CLOUDFLARE),
    ("503 cf marker no server", 503, {}, b"<html>challenge-platform</html>", FailureKind.CLOUDFLARE),
    ("429 cf page", 429, CF_HEADERS, CF_PAGE, FailureKind.CLOUDFLARE),
    ("403 waf block page", 403, WAF_HEADERS, WAF_PAGE, FailureKind.CLOUDFLARE_BLOCKED),
    ("403 waf cf-ray only", 403, {"cf-ray": "8e1f-LHR"}, WAF_PAGE, FailureKind.CLOUDFLARE_BLOCKED),
    ("403 waf server only", 403, {"server": "cloudflare"}, WAF_PAGE, FailureKind.CLOUDFLARE_BLOCKED),
    ("403 1020 access denied", 403, WAF_HEADERS, ACCESS_DENIED_PAGE, FailureKind.CLOUDFLARE_BLOCKED),
    ("403 waf head only", 403, WAF_HEADERS, WAF_PAGE[:300], FailureKind.CLOUDFLARE_BLOCKED),
    (
        "403 challenge with ray footer",
        403,
        CF_HEADERS,
        CF_PAGE + b"Cloudflare Ray ID",
        FailureKind.CLOUDFLARE,
    ),
    (
        "403 waf page cf-mitigated",
        403,
        WAF_HEADERS | {"cf-mitigated": "challenge"},
        WAF_PAGE,
        FailureKind.CLOUDFLARE,
    ),
    (
        "403 json via cloudflare",
        403,
        WAF_HEADERS | {"content-type": "application/json"},
        b'{"message":"Forbidden"}',
        FailureKind.AUTH,
    ),
    ("403 block page not from cloudflare", 403, {"server": "nginx"}, WAF_PAGE, FailureKind.AUTH),
    ("401 waf page", 401, WAF_HEADERS, WAF_PAGE, FailureKind.AUTH),
    ("503 waf page", 503, WAF_HEADERS, WAF_PAGE, FailureKind.SERVER_ERROR),
    ("503 plain", 503, {"server": "nginx"}, b"<html>Service Unavailable</html>", FailureKind.SERVER_ERROR),
    ("500", 500, {}, b"Internal Server Error", FailureKind.SERVER_ERROR),
    ("502 cf server no markers", 502, {"server": "cloudflare"}, b"Bad gateway", FailureKind.SERVER_ERROR),
    ("500 mentioning cf-chl", 500, {}, b"cf-chl", FailureKind.SERVER_ERROR),
    ("429", 429, {"retry-after": "7"}, b"Too Many Requests", FailureKind.RATE_LIMITED),
    ("302", 302, {"location": "/api/auth/signin"}, b"", FailureKind.AUTH),
    ("307", 307, {"location": "/zh/login"}, b"", FailureKind.AUTH),
    ("400", 400, {}, b'{"error":"bad request"}', FailureKind.CLIENT_ERROR),
    ("404", 404, {}, b"Not Found", FailureKind.CLIENT_ERROR),
    ("413", 413, {}, b"", FailureKind.CLIENT_ERROR),
    ("204", 204, {}, b"", FailureKind.BAD_RESPONSE),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_classify_response(
    status: int, headers: dict[str, str], body: bytes, kind: FailureKind | None
) -> None:
    failure = classify_response(status, headers, body)
    if kind is None:
        assert failure is None
        return
    assert failure is not None
    assert failure.kind is kind
    assert failure.status == status
    assert f"{status} ({status // 100}xx)" in failure.message


@pytest.mark.parametrize(
    "status", [case[1] for case in CASES if case[4] is not None], ids=[case[0] for case in CASES if case[4]]
)
def test_messages_reveal_neither_body_nor_cookie(status: int) -> None:
    headers = {
        "set-cookie": COOKIE,
        "cookie": COOKIE,
        "x-debug": BODY_SECRET,
        "retry-after": "3",
        "location": f"/login?token={BODY_SECRET}",
    }
    body = f"<html>{BODY_SECRET} {COOKIE}</html>".encode()
    failure = classify_response(status, headers, body)
    assert failure is not None
    for text in (failure.message, failure.detail, str(failure), repr(failure)):
        assert BODY_SECRET not in text
        assert "SECRETCOOKIEVALUE" not in text
        assert "session-token" not in text


def test_rate_limited_retry_after_seconds() -> None:
    failure = classify_response(429, {"retry-after": "7"}, b"")
    assert failure is not None
    assert failure.kind is FailureKind.RATE_LIMITED
    assert failure.retry_after == 7.0


def test_rate_limited_retry_after_http_date() -> None:
    header = formatdate(time.time() + 120, usegmt=True)
    failure = classify_response(429, {"retry-after": header}, b"")
    assert failure is not None
    assert failure.retry_after is not None
    assert 110 <= failure.retry_after <= 121


@pytest.mark.parametrize("headers", [{}, {"retry-after": "soon"}, {"retry-after": ""}])
def test_rate_limited_without_readable_retry_after(headers: dict[str, str]) -> None:
    failure = classify_response(429, headers, b"")
    assert failure is not None
    assert failure.kind is FailureKind.RATE_LIMITED
    assert failure.retry_after is None


def test_non_rate_limit_failures_carry_no_retry_after() -> None:
    failure = classify_response(503, {"retry-after": "7"}, b"down")
    assert failure is not None
    assert failure.retry_after is None


NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("120", 120.0),
        (formatdate(NOW + 90, usegmt=True), 90.0),
        ("Tue, 14 Nov 2023 22:15:00 GMT", 100.0),
        (formatdate(NOW - 90, usegmt=True), 0.0),  # a date in the past: retry now
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "Mon, 99 Foo 2023 25:61:00 GMT", "7 seconds", "inf"],
)
def test_parse_retry_after_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (403, {"cf-mitigated": "challenge"}, b"", True),
        (200, {"cf-mitigated": "challenge"}, b"", True),
        (403, {"server": "cloudflare"}, b"<title>\n  Just a moment...</title>", True),
        (503, {}, b"_cf_chl_opt", True),
        (403, {"server": "cloudflare"}, b"forbidden", False),
        (401, {}, b"cf-chl", False),
        (403, {}, b"just a moment please, we are busy", False),
    ],
)
def test_is_cloudflare_challenge(status: int, headers: dict[str, str], body: bytes, expected: bool) -> None:
    assert is_cloudflare_challenge(status, headers, body) is expected


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (403, WAF_HEADERS, WAF_PAGE, True),
        (403, {"cf-ray": "x"}, b"<h1>Sorry, you have been blocked</h1>", True),
        (403, {"server": "cloudflare"}, b'<div id="cf-error-details">', True),
        (403, {"server": "cloudflare"}, b"attention required! | cloudflare", True),
        (403, WAF_HEADERS, CF_PAGE, False),  # a challenge is not a block
        (403, WAF_HEADERS | {"cf-mitigated": "challenge"}, WAF_PAGE, False),
        (403, {}, WAF_PAGE, False),  # not served by Cloudflare
        (403, WAF_HEADERS, b'{"message":"Forbidden"}', False),
        (401, WAF_HEADERS, WAF_PAGE, False),
        (200, WAF_HEADERS, WAF_PAGE, False),
    ],
)
def test_is_cloudflare_block(status: int, headers: dict[str, str], body: bytes, expected: bool) -> None:
    assert is_cloudflare_block(status, headers, body) is expected


def test_block_message_says_it_is_not_the_cookie() -> None:
    failure = classify_response(403, WAF_HEADERS, WAF_PAGE)
    assert failure is not None
    assert failure.kind.value == "cloudflare_blocked"
    assert "block page" in failure.message
    assert "expired" not in failure.message


def test_set_cookies_ride_along_but_never_show() -> None:
    secret = "__Secure-next-auth.session-token=eyJROTATEDSECRET; Path=/; HttpOnly"
    failure = UpstreamFailure(FailureKind.AUTH, "rejected", status=401, set_cookies=[secret])
    assert failure.set_cookies == [secret]
    for text in (failure.message, failure.detail, str(failure), repr(failure)):
        assert "ROTATEDSECRET" not in text
    assert UpstreamFailure(FailureKind.TIMEOUT, "slow").set_cookies == []


def test_failure_without_status() -> None:
    failure = UpstreamFailure(FailureKind.TIMEOUT, "no first byte within 60 s")
    assert failure.message == "upstream failure: no first byte within 60 s"
    assert failure.status is None
    assert failure.retry_after is None
    assert "timeout" in repr(failure)
