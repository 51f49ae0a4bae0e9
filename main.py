"""Entry point: `main:app` for uvicorn; `python main.py` runs the server with the configured host,
port and workers."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from app.config import Settings
from app.server import create_app


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Name the setting and the problem, never the value: it may be a cookie or a key.
        for error in exc.errors(include_input=False, include_url=False):
            name = "_".join(str(p) for p in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            sys.stderr.write(f"gptomni-2api: configuration error: {name + ': ' if name else ''}{message}\n")
        raise SystemExit(2) from None


settings = _load_settings()
app = create_app(settings)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        "main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        proxy_headers=True,
        forwarded_allow_ips="*",
    )
