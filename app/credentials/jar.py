"""One account's cookies: the `Cookie` header the user pasted, kept up to date from `Set-Cookie`.

A gptomni.ai session is a NextAuth session: the site renews its session cookie as it is used. Each
credential keeps its own jar (the header string); `apply_set_cookies` is the pure merge of an answer's
`Set-Cookie` values into it, by cookie name, in place, honouring deletion (`Max-Age=0`, an `Expires`
in the past, an empty value). Domain and path are ignored: every cookie here is for the one site.
Nothing is shared between jars, so one account's cookies never reach another's requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# The longest lifetime taken from a Set-Cookie: 400 days (what browsers cap it at, RFC 6265bis).
MAX_AGE = 400 * 86_400

# NextAuth's session cookie; a large one is split into `.0`, `.1`, ... chunks.
SESSION_COOKIE_NAMES = ("__Secure-next-auth.session-token", "next-auth.session-token")


def is_session_cookie(name: str) -> bool:
    return any(name == base or name.startswith(base + ".") for base in SESSION_COOKIE_NAMES)


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """`a=1; b=2` -> [("a", "1"), ("b", "2")], in order; a part without `=` is kept with no name."""
    pairs: list[tuple[str, str]] = []
    for part in header.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        pairs.append((name.strip(), value.strip()) if sep else ("", part))
    return pairs


def format_cookie_header(pairs: list[tuple[str, str]]) -> str:
    return "; ".join(f"{name}={value}" if name else value for name, value in pairs)


@dataclass(frozen=True)
class SetCookie:
    name: str
    value: str
    expires_at: float | None  # wall-clock seconds; None: a session cookie (no expiry given)
    delete: bool


def parse_set_cookie(header: str, now: float) -> SetCookie | None:
    """One `Set-Cookie` value; None when it names no cookie."""
    first, *attributes = header.split(";")
    name, sep, value = first.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    max_age: float | None = None
    expires: float | None = None
    for attribute in attributes:
        key, _, raw = attribute.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if key == "max-age":
            try:
                max_age = float(max(-1, min(int(raw[:12]), MAX_AGE))) if raw[:1] != "-" else -1.0
            except ValueError:
                continue
        elif key == "expires":
            try:
                expires = min(parsedate_to_datetime(raw).timestamp(), now + MAX_AGE)
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
    # Max-Age wins over Expires (RFC 6265, 5.3).
    expires_at = now + max_age if max_age is not None else expires
    delete = (expires_at is not None and expires_at <= now) or value == ""
    return SetCookie(name, value, expires_at, delete)


@dataclass(frozen=True)
class JarUpdate:
    cookie: str  # the new Cookie header
    changed: bool
    session_changed: bool  # the session cookie was renewed (or removed)
    session_expires_at: float | None  # from the Set-Cookie that renewed it, if it said


def apply_set_cookies(cookie: str, set_cookies: list[str], now: float) -> JarUpdate:
    pairs = parse_cookie_header(cookie)
    changed = session_changed = False
    session_expires_at: float | None = None
    for header in set_cookies:
        update = parse_set_cookie(header, now)
        if update is None:
            continue
        index = next((i for i, (name, _) in enumerate(pairs) if name == update.name), None)
        if update.delete:
            if index is not None:
                del pairs[index]
                changed = True
                session_changed = session_changed or is_session_cookie(update.name)
            continue
        if is_session_cookie(update.name):
            session_expires_at = update.expires_at
        if index is None:
            pairs.append((update.name, update.value))
        elif pairs[index][1] != update.value:
            pairs[index] = (update.name, update.value)
        else:
            continue
        changed = True
        session_changed = session_changed or is_session_cookie(update.name)
    return JarUpdate(format_cookie_header(pairs), changed, session_changed, session_expires_at)


def secret_values(cookie: str) -> list[str]:
    """The values worth redacting from logs: each cookie's value, and the whole header."""
    return [cookie, *(value for _, value in parse_cookie_header(cookie) if len(value) >= 8)]
