"""Entry point: `main:app` for uvicorn; `python main.py` runs the server with the configured host,
port and workers."""

from __future__ import annotations

import sys

from app.config import ConfigError, load_settings
from app.server import create_app

try:
    settings = load_settings()
except ConfigError as exc:
    sys.stderr.write(f"gptomni-2api: configuration error: {exc}\n")
    raise SystemExit(2) from None
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
