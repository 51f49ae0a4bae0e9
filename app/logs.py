"""Logging set-up, with every registered secret (keys, cookies) redacted from every log line.

Redaction sits on the handlers, so it also covers uvicorn's own loggers and tracebacks. Code that
learns a new secret (a cookie added at run time) registers it with `register_secret`.
"""

from __future__ import annotations

import logging
import sys

REDACTED = "[redacted]"
_secrets: set[str] = set()
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "gptomni2api")


def register_secret(secret: str | None) -> None:
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def unregister_secret(secret: str | None) -> None:
    """A secret that no longer is one (a session value the site has replaced)."""
    if secret:
        _secrets.discard(secret)


def redact(text: str) -> str:
    # Longest first, so a cookie is not half-replaced by a shorter secret inside it.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_gptomni", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._gptomni = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("gptomni2api").setLevel(level.upper())
    for name in _LOGGERS:
        for each in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in each.filters):
                each.addFilter(RedactingFilter())
