"""Outbound proxy URLs: checking one, showing one without its password, and naming its secret.

A proxy is `scheme://[user[:password]@]host[:port]` with scheme http, https, socks5 (the proxy's
client resolves the upstream's name) or socks5h (the proxy resolves it). `validate_proxy` gives the
form both transports are handed: the scheme in lower case and the port always written out (curl and
requests do not agree on a missing port's default), user and password as written (percent-encoded
where they hold `@`, `:` or `/`).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, unquote, urlsplit

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def _split(url: str) -> SplitResult:
    return urlsplit(url.strip())


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def validate_proxy(url: str) -> str:
    """The proxy URL in normal form, or ValueError saying what is wrong (without the password)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a proxy URL is required, e.g. http://user:password@host:3128")
    if _UNSAFE.search(url.strip()):
        raise ValueError("a proxy URL must not contain spaces or control characters")
    text = url.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in PROXY_SCHEMES:
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise ValueError(
            f"proxy URL has {shown}: use one of http://, https://, socks5://, socks5h:// "
            "(e.g. socks5://user:password@host:1080)"
        )
    try:
        parts = _split(text)
    except ValueError:  # its message may quote the whole netloc, password included
        raise ValueError("proxy URL cannot be read: check the host (an IPv6 address goes in [ ])") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            "a proxy URL is scheme://[user:password@]host:port and nothing more; "
            "percent-encode any '/', '?', '#' or '@' in the user name or password"
        )
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", netloc
    if "@" in userinfo:
        raise ValueError("proxy URL has an '@' in its user name or password: percent-encode it as %40")
    user, colon, password = userinfo.partition(":")
    if at and not user:
        raise ValueError("proxy URL has a password but no user name (write user:password@)")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise ValueError(f"proxy URL has a bad port (1-65535): {mask_proxy(text)}") from None
    if not host:
        raise ValueError(f"proxy URL has no host: {mask_proxy(text)}")
    if hostport.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"proxy URL has a bad IPv6 address: {mask_proxy(text)}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"proxy URL has a bad host name: {mask_proxy(text)}")
    if port == 0:
        raise ValueError(f"proxy URL has a bad port (1-65535): {mask_proxy(text)}")
    if port is None:
        if hostport.endswith(":"):
            raise ValueError(f"proxy URL has an empty port: {mask_proxy(text)}")
        port = DEFAULT_PORTS[scheme]
    credentials = ""
    if user:
        credentials = user + (":" + password if colon else "") + "@"
    return f"{scheme}://{credentials}{_host_text(host.lower())}:{port}"


def mask_proxy(url: str | None) -> str:
    """`scheme://user:***@host:port`, or `scheme://host:port` without a user; never the password.

    Never raises: whatever cannot be read is left out.
    """
    if not url:
        return "(no proxy)"
    text = url.strip()
    try:
        parts = _split(text)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            # '/', '?' or '#' in an unencoded password: the split cannot be trusted.
            return "(unreadable proxy URL)"
        scheme = parts.scheme.lower() or "?"
        host = parts.hostname or "?"
        try:
            port: int | None = parts.port
        except ValueError:
            port = None
        userinfo, at, _ = parts.netloc.rpartition("@")
    except ValueError:
        return "(unreadable proxy URL)"
    user = userinfo.partition(":")[0] if at else ""
    if _UNSAFE.search(user) or len(user) > 256:
        user = "?"
    if _UNSAFE.search(host) or len(host) > 256:
        host = "?"
    shown = f"{scheme}://"
    if at:
        shown += f"{user}:***@"
    shown += _host_text(host)
    if port is not None:
        shown += f":{port}"
    return shown


def proxy_secret(url: str | None) -> str | None:
    """The password in a proxy URL as written there (None if it has none), to redact from logs.

    When it is percent-encoded, its decoded form may also show up somewhere: see `proxy_secrets`.
    """
    if not url:
        return None
    try:
        userinfo, at, _ = _split(url).netloc.rpartition("@")
    except ValueError:
        return None
    if not at:
        return None
    password = userinfo.partition(":")[2]
    return password or None


def proxy_secrets(url: str | None) -> list[str]:
    """Every form of the proxy's password worth redacting: as written, and percent-decoded."""
    secret = proxy_secret(url)
    if secret is None:
        return []
    decoded = unquote(secret)
    return [secret] if decoded == secret else [secret, decoded]
