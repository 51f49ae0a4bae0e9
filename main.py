"""Entry point: `main:app` for uvicorn; `python main.py [--demo]` runs the server with the configured
host, port and workers."""

from __future__ import annotations

import os
import sys

from app.config import ConfigError, Settings, load_settings
from app.demo.mode import cli_environment
from app.server import create_app

if __name__ == "__main__":
    # `--demo` becomes DEMO=true before the settings load: uvicorn imports `main:app` again, here and
    # in each worker process, and they all read their settings from the environment.
    os.environ.update(cli_environment(sys.argv[1:]))

try:
    app = create_app(load_settings())  # may refuse too: a corrupt credentials file
    settings: Settings = app.state.settings  # as run: demo mode fills in its host and keys
except ConfigError as exc:
    sys.stderr.write(f"gptomni-2api: configuration error: {exc}\n")
    raise SystemExit(2) from None


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    import shutil
    import signal

    import uvicorn

    from app.observability.metrics import prepare_multiprocess
    from app.serving import server_options

    # uvicorn handles SIGTERM (stop accepting, let requests in flight finish) and then raises it
    # again with this handler in place: without it, a clean stop would look like a kill (exit 143).
    signal.signal(signal.SIGTERM, _stopped)
    # Workers are separate processes: their metrics meet in files the workers inherit the place of.
    samples_dir = prepare_multiprocess() if settings.workers > 1 else None
    try:
        uvicorn.run(
            "main:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            # The app believes X-Forwarded-For only from TRUSTED_PROXIES (app/http/client_address.py).
            proxy_headers=False,
            access_log=False,  # the gateway writes its own access line, with the request id and model
            # On SIGTERM uvicorn stops accepting at once, then waits this long for streams in flight.
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            # Bounded request heads, head and keep-alive time limits, a connection cap (app/serving.py).
            **server_options(settings),
        )
    finally:
        if samples_dir is not None:
            shutil.rmtree(samples_dir, ignore_errors=True)
