"""What can go wrong upstream, as values: the failure kinds and their classification.

`classify_response` turns an upstream status, headers and the head of its body into a failure
(or None for a usable 200). Messages name the status class only: never a cookie, never the body.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from time import time

_DELTA_SECONDS = re.compile(r"\d{1,9}(?:\.\d+)?")  # not "inf", "nan" or "-5", which float() takes
_CF_BODY = re.compile(rb"cf-chl|_cf_chl_opt|challenge-platform|<title>\s*Just a moment", re.IGNORECASE)
# Cloudflare's own error pages: the WAF's "Sorry, you have been blocked" (title "Attention Required! |
# Cloudflare") and the 1020 "Access denied" page both carry cf-error-details and the Ray ID footer.
_CF_BLOCK_BODY = re.compile(
    rb"Attention Required! \| Cloudflare|Sorry, you have been blocked|cf-error-details|Cloudflare Ray ID",
    re.IGNORECASE,
)


class FailureKind(enum.StrEnum):
    AUTH = "auth"  # 401, or a 403 that is not Cloudflare's: the cookie is rejected
    CLOUDFLARE = "cloudflare"  # a Cloudflare challenge page
    CLOUDFLARE_BLOCKED = "cloudflare_blocked"  # a Cloudflare WAF block page: the request, not the cookie
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    CLIENT_ERROR = "client_error"  # any other 4xx: our request was refused
    CONNECT = "connect"  # could not connect
    TIMEOUT = "timeout"  # no first byte, or silence between bytes, past the configured time
    CUT_OFF = "cut_off"  # the body ended before it was complete
    BAD_RESPONSE = "bad_response"  # a 200 we cannot read, or an error object inside it


class UpstreamFailure(Exception):
    """An upstream call that did not give an answer. Safe to show: holds no secret."""

    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        set_cookies: list[str] | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        # The raw Set-Cookie values of the answer that failed (a site may rotate cookies on an error
        # answer too). Secrets: never part of the message or the repr.
        self.set_cookies: list[str] = list(set_cookies) if set_cookies else []
        # When the failure is the proxy's (it refused, could not be reached, rejected the credentials,
        # could not open the way to the upstream): that proxy, masked (`mask_proxy`). Else None.
        self.proxy = proxy

    @property
    def message(self) -> str:
        if self.status is not None:
            return f"upstream answered {self.status} ({self.status // 100}xx): {self.detail}"
        return f"upstream failure: {self.detail}"

    def __repr__(self) -> str:
        return f"UpstreamFailure({self.kind.value}, status={self.status}, {self.detail!r})"


def is_cloudflare_challenge(status: int, headers: Mapping[str, str], body_head: bytes) -> bool:
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return True
    if status in (403, 429, 503) and headers.get("server", "").lower().startswith("cloudflare"):
        return bool(_CF_BODY.search(body_head))
    return status in (403, 503) and bool(_CF_BODY.search(body_head))


def is_cloudflare_block(status: int, headers: Mapping[str, str], body_head: bytes) -> bool:
    """A Cloudflare WAF block page (403 from Cloudflare with its error page), not a challenge."""
    if status != 403 or is_cloudflare_challenge(status, headers, body_head):
        return False
    from_cloudflare = headers.get("server", "").lower().startswith("cloudflare") or "cf-ray" in headers
    return from_cloudflare and bool(_CF_BLOCK_BODY.search(body_head))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (delta or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time() if now is None else now)
    return max(0.0, seconds)


def classify_response(status: int, headers: Mapping[str, str], body_head: bytes) -> UpstreamFailure | None:
    """None for a 200 answer; otherwise the failure it is. `headers` keys are lower-case."""
    if status == 200:
        return None
    if is_cloudflare_challenge(status, headers, body_head):
        return UpstreamFailure(FailureKind.CLOUDFLARE, "blocked by a Cloudflare challenge", status=status)
    if is_cloudflare_block(status, headers, body_head):
        return UpstreamFailure(
            FailureKind.CLOUDFLARE_BLOCKED,
            "blocked by Cloudflare's firewall (a block page, not a challenge; WAF rules can match the "
            "request itself)",
            status=status,
        )
    if status in (401, 403):
        return UpstreamFailure(
            FailureKind.AUTH, "the credential was rejected (expired cookie?)", status=status
        )
    if status == 429:
        return UpstreamFailure(
            FailureKind.RATE_LIMITED,
            "rate limited",
            status=status,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    if status >= 500:
        return UpstreamFailure(FailureKind.SERVER_ERROR, "server error", status=status)
    if 200 < status < 300:
        return UpstreamFailure(FailureKind.BAD_RESPONSE, "unexpected success status", status=status)
    if 300 <= status < 400:
        # A redirect is how a signed-out session is sent to the login page.
        return UpstreamFailure(FailureKind.AUTH, "redirected (signed out?)", status=status)
    return UpstreamFailure(FailureKind.CLIENT_ERROR, "request refused", status=status)
