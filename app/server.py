"""`create_app()`: the FastAPI app, with its long-lived parts built once in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import health_routes, openai_routes
from app.api.errors import install_error_handlers
from app.chat.service import ChatService
from app.config import Settings, load_settings
from app.credentials.pool import CredentialPool
from app.logs import configure_logging, register_secret
from app.upstream.gptomni import GptomniClient
from app.upstream.transport import Timeouts, build_transport

log = logging.getLogger("gptomni2api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    if settings.api_master_key is not None:
        register_secret(settings.api_master_key.get_secret_value())
    for cookie in settings.gptomni_credentials:
        register_secret(cookie)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)  # uvicorn set up its handlers after import
        transport = build_transport(
            settings.upstream_transport,
            impersonate=settings.curl_impersonate,
            threads=settings.cloudscraper_threads,
        )
        timeouts = Timeouts(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_idle_timeout,
        )
        client = GptomniClient(transport, settings.gptomni_base_url, timeouts)
        pool = CredentialPool(settings.gptomni_credentials)
        app.state.pool = pool
        app.state.chat_service = ChatService(settings, pool, client)
        if settings.auth_disabled:
            log.warning("AUTH_DISABLED=true: the API answers anyone who can reach it")
        if len(pool) == 0:
            log.warning(
                "No gptomni credential configured: chat requests will get 503. Sign in at gptomni.ai, copy "
                "the Cookie header of a chatWithText request, and set GPTOMNI_CREDENTIALS='[\"<cookie>\"]'."
            )
        log.info(
            "serving models %s with %d credential(s) via %s -> %s",
            ", ".join(settings.model_table),
            len(pool),
            transport.name,
            settings.gptomni_base_url,
        )
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(title="gptomni-2api", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health_routes.router)
    app.include_router(openai_routes.router)
    return app
