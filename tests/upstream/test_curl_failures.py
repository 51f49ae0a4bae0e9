"""libcurl's error codes (with CURLINFO_HTTP_CONNECTCODE and CURLINFO_PROXY_ERROR) as failures.

The codes are the ones observed against tests/forward_proxy.py (see test_transport_proxy.py, which
checks the same failures end to end); this table pins the mapping of the rarer ones as well."""

from __future__ import annotations

import pytest

from app.upstream.failures import FailureKind
from app.upstream.transport import _curl_failure

PROXY = "http://alice:Pr0xyS3cret@proxy.example:3128"
SOCKS = "socks5h://alice:Pr0xyS3cret@proxy.example:1080"
HTTPS_PROXY = "https://alice:Pr0xyS3cret@proxy.example:443"


class CurlError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"curl: ({code}) Failed to connect to proxy.example port 3128")
        self.code = code


@pytest.mark.parametrize(
    ("code", "proxy", "connect_code", "proxy_error", "before", "kind", "says"),
    [
        # No proxy: as before, but a time-out before any answer is the connect time-out it is.
        (7, None, 0, 0, True, FailureKind.CONNECT, "could not connect (curl error 7)"),
        (6, None, 0, 0, True, FailureKind.CONNECT, "could not connect (curl error 6)"),
        (28, None, 0, 0, True, FailureKind.CONNECT, "connect timed out (curl error 28)"),
        (28, None, 0, 0, False, FailureKind.TIMEOUT, "timed out (curl error 28)"),
        (56, None, 0, 0, False, FailureKind.CUT_OFF, "cut off"),
        (52, None, 0, 0, True, FailureKind.CUT_OFF, "cut off"),
        # The proxy's own failures.
        (5, PROXY, 0, 0, True, FailureKind.CONNECT, "could not be resolved (curl error 5)"),
        (7, PROXY, 0, 0, True, FailureKind.CONNECT, "refused the connection or cannot be reached"),
        (7, SOCKS, 0, 0, True, FailureKind.CONNECT, "refused the connection or cannot be reached"),
        (28, PROXY, 0, 0, True, FailureKind.CONNECT, "did not answer in time"),
        (7, PROXY, 407, 0, True, FailureKind.CONNECT, "rejected the proxy credentials (407"),
        (56, PROXY, 407, 0, True, FailureKind.CONNECT, "rejected the proxy credentials (407"),
        (
            7,
            PROXY,
            502,
            0,
            True,
            FailureKind.CONNECT,
            "refused to open a tunnel to the upstream (CONNECT answered 502)",
        ),
        (56, PROXY, 403, 0, True, FailureKind.CONNECT, "CONNECT answered 403"),
        (52, PROXY, 0, 0, True, FailureKind.CONNECT, "closed the connection without an answer"),
        (56, PROXY, 0, 0, True, FailureKind.CONNECT, "closed the connection without an answer"),
        (97, SOCKS, 0, 33, True, FailureKind.CONNECT, "rejected the proxy credentials (curl error 97/33)"),
        (97, SOCKS, 0, 12, True, FailureKind.CONNECT, "rejected the proxy credentials"),
        (97, SOCKS, 0, 19, True, FailureKind.CONNECT, "could not reach the upstream (curl error 97/19)"),
        (97, SOCKS, 0, 21, True, FailureKind.CONNECT, "could not reach the upstream"),
        (97, SOCKS, 0, 27, True, FailureKind.CONNECT, "could not reach the upstream"),
        (97, SOCKS, 0, 3, True, FailureKind.CONNECT, "closed the connection during its handshake"),
        (97, SOCKS, 0, 15, True, FailureKind.CONNECT, "failed its handshake (curl error 97/15)"),
        (35, HTTPS_PROXY, 0, 0, True, FailureKind.CONNECT, "failed the TLS handshake with the proxy"),
        # Through a tunnel that was up, the failure is the upstream's; the message names the way.
        (28, PROXY, 200, 0, True, FailureKind.CONNECT, "connect timed out (curl error 28) (through proxy"),
        (35, PROXY, 200, 0, True, FailureKind.CONNECT, "could not connect (curl error 35) (through proxy"),
        (
            52,
            PROXY,
            200,
            0,
            True,
            FailureKind.CUT_OFF,
            "cut off before it completed (curl error 52) (through",
        ),
        (
            52,
            SOCKS,
            0,
            0,
            True,
            FailureKind.CUT_OFF,
            "(through proxy socks5h://alice:***@proxy.example:1080)",
        ),
        (18, PROXY, 0, 0, False, FailureKind.CUT_OFF, "(through proxy http://alice:***@proxy.example:3128)"),
        (92, SOCKS, 0, 0, False, FailureKind.CUT_OFF, "cut off"),
    ],
)
def test_curl_failure(
    code: int,
    proxy: str | None,
    connect_code: int,
    proxy_error: int,
    before: bool,
    kind: FailureKind,
    says: str,
) -> None:
    failure = _curl_failure(
        CurlError(code), proxy=proxy, connect_code=connect_code, proxy_error=proxy_error, before_answer=before
    )
    assert failure.kind is kind
    assert says in failure.message
    assert "Pr0xyS3cret" not in failure.message + repr(failure)
    assert failure.status is None
    if proxy is not None and "(through proxy" not in failure.message:
        assert failure.proxy is not None and failure.proxy in failure.message  # the proxy's own failure
        assert failure.message.startswith(f"upstream failure: proxy {failure.proxy} ")
    else:
        assert failure.proxy is None
