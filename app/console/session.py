"""Console sessions without server state: a signed token in an `HttpOnly` cookie, and its CSRF token.

Any replica behind the proxy can check a session, because the signing keys are derived from
ADMIN_KEY alone; changing ADMIN_KEY ends every session. A token is `v1.<id>.<expiry>.<mac>`: a random
id, the expiry in epoch seconds, and an HMAC-SHA256 over both. The CSRF token is an HMAC of the id
under a second derived key, so it cannot be forged from the cookie's value nor the other way round.
Signing out is the one piece of state: the session's id is refused until its expiry, through the state
backend (app/state/backend.py: Redis for every replica, else this process; app/http/deps.py checks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass

COOKIE_NAME = "gptomni2api_console"
CSRF_HEADER = "x-csrf-token"
VERSION = "v1"
_SESSION_LABEL = b"gptomni2api console session v1"
_CSRF_LABEL = b"gptomni2api console csrf v1"
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{1,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    expires_at: int  # epoch seconds


def _derive(admin_key: str, label: bytes) -> bytes:
    return hmac.new(admin_key.encode(), label, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(admin_key: str, session_id: str, expires_at: int) -> str:
    message = f"{VERSION}.{session_id}.{expires_at}".encode()
    return _b64(hmac.new(_derive(admin_key, _SESSION_LABEL), message, hashlib.sha256).digest())


def issue_session(
    admin_key: str, now: float, ttl: float, session_id: str | None = None
) -> tuple[str, ConsoleSession]:
    """A new session good for `ttl` seconds from `now`, and the cookie value that carries it."""
    # Rounded up: a session lasts at least `ttl` seconds (truncating could leave it a moment).
    session = ConsoleSession(session_id or _b64(secrets.token_bytes(18)), math.ceil(now + ttl))
    token = f"{VERSION}.{session.id}.{session.expires_at}.{_mac(admin_key, session.id, session.expires_at)}"
    return token, session


# Seconds a replica's clock may be behind the one that signed a session (a lowered TTL still bites).
CLOCK_SKEW = 60


def verify_session(
    admin_key: str, token: str | None, now: float, max_ttl: float | None = None
) -> ConsoleSession | None:
    """The session a cookie value carries, or None when it is malformed, forged or expired; with
    `max_ttl`, also when it would outlive that many seconds from now (the TTL was lowered since)."""
    match = _TOKEN.fullmatch(token) if token else None
    if match is None:
        return None
    session_id, expires_at, mac = match.group(1), int(match.group(2)), match.group(3)
    if not hmac.compare_digest(mac.encode(), _mac(admin_key, session_id, expires_at).encode()):
        return None
    if expires_at <= now or (max_ttl is not None and expires_at > now + max_ttl + CLOCK_SKEW):
        return None
    return ConsoleSession(session_id, expires_at)


def csrf_token(admin_key: str, session: ConsoleSession) -> str:
    """The token every state-changing call of this session must carry in `X-CSRF-Token`."""
    return _b64(hmac.new(_derive(admin_key, _CSRF_LABEL), session.id.encode(), hashlib.sha256).digest())


def csrf_valid(admin_key: str, session: ConsoleSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        presented.encode(), csrf_token(admin_key, session).encode()
    )


def session_cookie(token: str, max_age: int, *, secure: bool) -> str:
    """The `Set-Cookie` value: only this path, never sent cross-site, never readable by scripts."""
    flags = f"{COOKIE_NAME}={token}; Max-Age={max_age}; Path=/admin; HttpOnly; SameSite=Strict"
    return flags + ("; Secure" if secure else "")


def cleared_cookie(*, secure: bool) -> str:
    return session_cookie("", 0, secure=secure)


def is_https(scheme: str, forwarded_proto: str | None) -> bool:
    """Whether the browser reached us over https: directly, or through a proxy that says so.

    `X-Forwarded-Proto` is taken from anyone: believing a forged `https` only adds `Secure`, which
    costs the forger their own session and nobody else anything."""
    if scheme == "https":
        return True
    return forwarded_proto is not None and forwarded_proto.split(",")[0].strip().lower() == "https"
