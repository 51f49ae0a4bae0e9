"""Proxy URLs: the normal form both transports get, the masked form shown, the secret to redact."""

from __future__ import annotations

import re

import pytest

from app.upstream.proxy import mask_proxy, proxy_secret, proxy_secrets, validate_proxy

PASSWORD = "Pr0xyS3cret"


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://127.0.0.1:3128", "http://127.0.0.1:3128"),
        ("  http://proxy.example.com:8080/ ", "http://proxy.example.com:8080"),
        ("HTTP://Proxy.Example.COM:8080", "http://proxy.example.com:8080"),
        ("https://proxy.example.com:8443", "https://proxy.example.com:8443"),
        ("socks5://10.0.0.2:1080", "socks5://10.0.0.2:1080"),
        ("socks5h://user:pw@gate.example.net:7000", "socks5h://user:pw@gate.example.net:7000"),
        (f"http://alice:{PASSWORD}@p.example:3128", f"http://alice:{PASSWORD}@p.example:3128"),
        ("http://al%40ice:p%3Aw%2Fd@p.example:3128", "http://al%40ice:p%3Aw%2Fd@p.example:3128"),
        ("http://alice@p.example:3128", "http://alice@p.example:3128"),
        ("http://alice:@p.example:3128", "http://alice:@p.example:3128"),
        ("http://[::1]:3128", "http://[::1]:3128"),
        ("socks5://u:p@[2001:db8::7]:1080", "socks5://u:p@[2001:db8::7]:1080"),
        ("http://my_proxy:3128", "http://my_proxy:3128"),
        ("http://p.example:3128\n", "http://p.example:3128"),
        # A missing port is written out: libcurl's default (1080) is not requests' (80 for http).
        ("http://p.example", "http://p.example:80"),
        ("https://p.example", "https://p.example:443"),
        ("socks5://p.example", "socks5://p.example:1080"),
        ("socks5h://p.example", "socks5h://p.example:1080"),
    ],
)
def test_validate_gives_the_normal_form(url: str, normal: str) -> None:
    assert validate_proxy(url) == normal
    assert validate_proxy(normal) == normal  # stable


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "required"),
        ("   ", "required"),
        ("127.0.0.1:3128", "no scheme"),
        ("ftp://p.example:21", "'ftp://'"),
        ("socks4://p.example:1080", "'socks4://'"),
        ("socks://p.example:1080", "'socks://'"),
        ("http://", "no host"),
        (f"http://:{PASSWORD}@p.example:3128", "no user name"),
        ("http://p.example:0", "bad port"),
        ("http://p.example:65536", "bad port"),
        ("http://p.example:port", "bad port"),
        ("http://p.example:", "empty port"),
        ("http://-p-.example:3128", "bad host"),
        ("http://p..example:3128", "bad host"),
        ("http://[not-v6]:3128", "cannot be read"),
        ("http://p.example:3128/path", "nothing more"),
        ("http://p.example:3128?x=1", "nothing more"),
        (f"http://alice:{PASSWORD}/x@p.example:3128", "percent-encode"),
        (f"http://alice:{PASSWORD}#x@p.example:3128", "percent-encode"),
        (f"http://alice:{PASSWORD}@x@p.example:3128", "%40"),
        ("http://p example:3128", "spaces"),
        ("http://p.exa\tmple:3128", "control characters"),
    ],
)
def test_validate_rejects_with_a_clear_message(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        validate_proxy(url)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"http://alice:{PASSWORD}@p.example:3128", "http://alice:***@p.example:3128"),
        (f"socks5h://bob:{PASSWORD}@[::1]:1080", "socks5h://bob:***@[::1]:1080"),
        ("socks5://p.example:1080", "socks5://p.example:1080"),
        ("http://alice@p.example:3128", "http://alice:***@p.example:3128"),
        (f"HTTPS://alice:{PASSWORD}@P.Example:8443", "https://alice:***@p.example:8443"),
        ("http://p.example", "http://p.example"),
        (None, "(no proxy)"),
        ("", "(no proxy)"),
        # Unencoded '/', '#' or '?' in a password: the URL cannot be split safely, so nothing of it.
        (f"http://alice:{PASSWORD}/x@p.example:3128", "(unreadable proxy URL)"),
        ("http://alice:1234#5@p.example:3128", "(unreadable proxy URL)"),
        ("http://[broken:3128", "(unreadable proxy URL)"),
    ],
)
def test_mask_never_shows_the_password(url: str | None, masked: str) -> None:
    assert mask_proxy(url) == masked
    assert PASSWORD not in mask_proxy(url)


def test_secret_is_the_password_as_written() -> None:
    assert proxy_secret(f"http://alice:{PASSWORD}@p.example:3128") == PASSWORD
    assert proxy_secret("socks5://u:p%40ss@p.example:1080") == "p%40ss"
    assert proxy_secrets("socks5://u:p%40ss@p.example:1080") == ["p%40ss", "p@ss"]
    assert proxy_secrets(f"http://alice:{PASSWORD}@p.example:3128") == [PASSWORD]
    for url in (
        "http://p.example:3128",
        "http://alice@p.example:3128",
        "http://alice:@p.example:1",
        None,
        "",
    ):
        assert proxy_secret(url) is None
        assert proxy_secrets(url) == []
